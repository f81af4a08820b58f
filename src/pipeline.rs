//! The checks every message goes through before it reaches a store, shared by the Kafka worker
//! and `import`: strict decode, structural validation and, when `verify.enabled`, signature
//! verification exactly as nekhebet-core does it (which includes the structural checks), under a
//! panic net ([`Checker::check_each`]): a decoder bug some input triggers rejects that message
//! (`internal_error`) instead of losing it or taking the process down.
//! Pure CPU work: callers run it off the async runtime.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::{Config, ConfigError, VerifySettings};
use crate::envelope::{self, Envelope, Limits, Rejection};
use crate::reason::Reason;
use crate::telemetry::names;
use crate::verify::{Verifier, VerifyConfig};

/// Decodes, validates and verifies messages.
pub struct Checker {
    limits: Limits,
    verifier: Option<Verifier>,
    /// `replay_guard.retention`: envelopes issued before it are rejected (their nonce may be
    /// cleaned up already, so the replay guard could not tell a replay).
    replay_window: Option<std::time::Duration>,
}

impl Checker {
    pub fn from_config(config: &Config) -> Result<Checker, ConfigError> {
        Ok(Checker {
            limits: Limits {
                max_message_bytes: config.limits.max_message_bytes,
            },
            verifier: if config.verify.enabled {
                Some(
                    Verifier::new(verify_config(&config.verify)?)
                        .exact_batches(!config.verify.batch_equations),
                )
            } else {
                None
            },
            replay_window: config.replay_guard.retention,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn verifies(&self) -> bool {
        self.verifier.is_some()
    }

    /// One verdict per message, in order; `None` is a Kafka tombstone (`null_value`). A panic in
    /// the checks is caught: the batch is checked again message by message, and a message that
    /// panics on its own is rejected as `internal_error`.
    pub fn check_each(
        &self,
        values: &[Option<Bytes>],
        now: DateTime<Utc>,
    ) -> Vec<Result<Envelope, Rejection>> {
        use std::panic::{catch_unwind, AssertUnwindSafe};
        let run = |vs: &[Option<Bytes>]| -> Vec<Result<Envelope, Rejection>> {
            let present: Vec<Bytes> = vs.iter().filter_map(Clone::clone).collect();
            let mut checked = self.check(present, now).into_iter();
            vs.iter()
                .map(|v| match v {
                    None => Err(Rejection::new(
                        Reason::NullValue,
                        "Kafka message without a value (tombstone)",
                    )),
                    Some(_) => checked.next().unwrap_or_else(|| {
                        Err(Rejection::new(
                            Reason::InternalError,
                            "no verdict for this message",
                        ))
                    }),
                })
                .collect()
        };
        match catch_unwind(AssertUnwindSafe(|| run(values))) {
            Ok(v) => v,
            Err(_) => values
                .iter()
                .map(|v| {
                    match catch_unwind(AssertUnwindSafe(|| run(std::slice::from_ref(v)))) {
                        Ok(mut one) => one.pop().unwrap_or_else(|| {
                            Err(Rejection::new(Reason::InternalError, "no verdict"))
                        }),
                        Err(p) => {
                            let what = panic_text(&*p);
                            tracing::error!(panic = %what, "message check panicked; rejecting the message");
                            Err(Rejection::new(
                                Reason::InternalError,
                                format!("message check panicked: {what}"),
                            ))
                        }
                    }
                })
                .collect(),
        }
    }

    /// One verdict per message, in order. Signatures of a batch are verified together (Ed25519
    /// batch equations across cores).
    pub fn check(&self, raw: Vec<Bytes>, now: DateTime<Utc>) -> Vec<Result<Envelope, Rejection>> {
        let started = std::time::Instant::now();
        let decoded: Vec<Result<Envelope, Rejection>> = raw
            .into_iter()
            .map(|b| envelope::decode(b, &self.limits).map_err(|e| e.rejection()))
            .collect();
        metrics::histogram!(names::STAGE_SECONDS, "stage" => "decode")
            .record(started.elapsed().as_secs_f64());
        let started = std::time::Instant::now();
        let mut verdicts = self.validate_or_verify(decoded, now);
        if let Some(window) = self.replay_window {
            for v in &mut verdicts {
                if let Ok(env) = v {
                    if let Some(rejection) = outside_window(env, window, now) {
                        *v = Err(rejection);
                    }
                }
            }
        }
        let stage = if self.verifier.is_some() {
            "verify"
        } else {
            "validate"
        };
        metrics::histogram!(names::STAGE_SECONDS, "stage" => stage)
            .record(started.elapsed().as_secs_f64());
        verdicts
    }

    fn validate_or_verify(
        &self,
        decoded: Vec<Result<Envelope, Rejection>>,
        now: DateTime<Utc>,
    ) -> Vec<Result<Envelope, Rejection>> {
        match &self.verifier {
            None => decoded
                .into_iter()
                .map(|r| {
                    let env = r?;
                    envelope::validate(&env).map_err(|e| e.rejection())?;
                    Ok(env)
                })
                .collect(),
            Some(verifier) => {
                let ok: Vec<&Envelope> = decoded.iter().filter_map(|r| r.as_ref().ok()).collect();
                let mut verdicts = verifier.verify_batch(&ok, now).into_iter();
                decoded
                    .into_iter()
                    .map(|r| {
                        let env = r?;
                        // One verdict per decoded envelope, in the same order.
                        match verdicts.next() {
                            Some(Ok(())) => Ok(env),
                            Some(Err(rejection)) => Err(rejection),
                            // verify_batch returns one verdict per input; this arm cannot run.
                            None => Err(Rejection::new(
                                Reason::StructureInvalid,
                                "no verification verdict",
                            )),
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Builds the verifier's configuration, reading `verify.keys_file` if set. Keys must be base64 of
/// 32 bytes; an error names the key_id.
pub fn verify_config(settings: &VerifySettings) -> Result<VerifyConfig, ConfigError> {
    let mut raw = settings.keys.clone();
    if let Some(path) = &settings.keys_file {
        #[derive(serde::Deserialize)]
        struct KeysFile {
            keys: std::collections::BTreeMap<String, Vec<String>>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Load(format!(
                "verify.keys_file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        let parsed: KeysFile = toml::from_str(&text).map_err(|e| {
            ConfigError::Load(format!("verify.keys_file {}: expected a [keys] table of key_id = [\"base64 public key\", …]: {e}", path.display()))
        })?;
        for (k, v) in parsed.keys {
            raw.entry(k).or_default().extend(v);
        }
    }
    let keys = if raw.is_empty() {
        None
    } else {
        let mut keys: HashMap<String, Vec<[u8; 32]>> = HashMap::new();
        for (key_id, list) in raw {
            for b64 in list {
                let bytes = envelope::decode_base64(&b64).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
                    ConfigError::Load(format!(
                        "configuration: `verify.keys.{key_id}` = {b64:?}: expected base64 of a 32-byte Ed25519 public key"
                    ))
                })?;
                keys.entry(key_id.clone()).or_default().push(bytes);
            }
        }
        Some(keys)
    };
    Ok(VerifyConfig {
        clock_skew_s: settings.clock_skew_s,
        event_types: settings.event_types.clone(),
        keys,
    })
}

/// `outside_replay_window` when `env` was issued longer than `window` before `now`.
fn outside_window(
    env: &Envelope,
    window: std::time::Duration,
    now: DateTime<Utc>,
) -> Option<Rejection> {
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let oldest = now.checked_sub_signed(window)?;
    (env.header.issued_at_ts < oldest).then(|| {
        Rejection::new(
            Reason::OutsideReplayWindow,
            format!(
                "issued_at {} is older than the replay window (replay_guard.retention = {}): its nonce may already be cleaned up",
                env.header.issued_at,
                humantime::format_duration(window.to_std().unwrap_or_default())
            ),
        )
    })
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
