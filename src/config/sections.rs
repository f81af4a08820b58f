//! The worker's sections (`store`, `postgres`, `lmdb`, `limits`, `kafka`, `batch`, `verify`,
//! `replay_guard`, `telemetry`, `log`, `shutdown`): their types and documented fields. Their
//! defaults and checks are in [`super::Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{mask_properties, redact_url, LmdbLayout, LogFormat, StoreMode};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub mode: StoreMode,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style URL or key=value string. May hold a password: never log it (see `Debug`).
    /// A `postgres://` URL may carry libpq's `sslmode` (all five modes) and `sslrootcert`
    /// parameters; they must then agree with `sslmode` / `ssl_root_cert` below when those are set.
    pub url: String,
    pub pool_size: usize,
    /// How many batches may be in their PostgreSQL transaction at once (on partition-disjoint
    /// batches, each on its own connection); 1 writes them one after the other.
    pub concurrent_batches: usize,
    /// How long a batch waits for a pooled connection before the attempt counts as a transient failure.
    pub pool_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// TLS to PostgreSQL, libpq's modes (implemented with rustls). Unset: the URL's `sslmode`,
    /// else `verify-full` when `ssl_root_cert` is set, else `prefer` (libpq's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<SslMode>,
    /// PEM file of the CA certificate(s) the server's certificate must chain to. Required by
    /// `verify-ca` and `verify-full`; with `require` it turns on chain verification (as libpq does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_root_cert: Option<PathBuf>,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("concurrent_batches", &self.concurrent_batches)
            .field("pool_timeout_ms", &self.pool_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("sslmode", &self.sslmode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

/// libpq's `sslmode`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain TCP otherwise; the certificate is not checked (no
    /// protection against an active attacker, as with libpq).
    Prefer,
    /// TLS or fail; the certificate is checked only when `ssl_root_cert` is set (then as
    /// `verify-ca`).
    Require,
    /// TLS or fail; the server's certificate must chain to `ssl_root_cert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmdbConfig {
    pub path: PathBuf,
    /// Initial map size in bytes; grown (doubled) whenever a write finds the map full.
    pub map_size: u64,
    /// Upper bound for growth, in bytes: past it, "map full" is reported as a failure.
    pub max_map_size: u64,
    /// Unset: the layout the environment records (a new one: append in hybrid mode, compatible in
    /// LMDB-only mode; one written by nekhebet-store 4.0: compatible). Set: must be the recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<LmdbLayout>,
    /// fsync on every commit (durable). Turning it off trades durability for speed.
    pub sync: bool,
    /// The LMDB mirror (hybrid mode, `ingest` and `serve`): envelopes copied from PostgreSQL per
    /// second at most (and 10× as many rows checked); 0 turns it off.
    pub mirror_rate: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Dead-letter topic; empty means "`<source topic>.dlq`".
    pub dlq_topic: String,
    pub session_timeout_ms: u64,
    /// How long a revoke may wait for the in-flight batches of the revoked partitions; must be shorter
    /// than the session timeout or the group would evict us while we drain.
    pub drain_timeout_ms: u64,
    /// Passed to librdkafka unchanged (security.protocol, sasl.*, ssl.*, fetch tuning…).
    pub properties: BTreeMap<String, String>,
}

/// Secrets in `properties` ([`is_secret_property`]) are masked.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("dlq_topic", &self.dlq_topic)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("drain_timeout_ms", &self.drain_timeout_ms)
            .field("properties", &mask_properties(&self.properties))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger_ms: u64,
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySettings {
    pub enabled: bool,
    /// Check the signatures of a batch with Ed25519 batch equations (about twice as fast) instead
    /// of one by one. Off by default: a key holder can craft a signature with a small-order
    /// component that a batch equation may accept while nekhebet-core (OpenSSL) refuses it.
    pub batch_equations: bool,
    pub clock_skew_s: i64,
    pub event_types: Vec<String>,
    /// key_id → base64 Ed25519 public keys. Empty (and no `keys_file`) means no key registry.
    pub keys: BTreeMap<String, Vec<String>>,
    /// A TOML file with a `[keys]` table of the same shape, merged into `keys`.
    pub keys_file: Option<PathBuf>,
}

/// Replay-guard retention.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayGuardConfig {
    /// The replay window: envelopes issued longer ago than this are rejected at ingest
    /// (`outside_replay_window`), and `replay-guard cleanup` may delete rows older than it, never
    /// younger (a cleaned-up nonce could otherwise be replayed). Unset: the window is unbounded,
    /// every `(key_id, nonce)` is kept forever and cleanup refuses to run without `--force`.
    /// A duration such as `30d`, `12h`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub retention: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the /metrics, /healthz and /readyz endpoints; empty disables them.
    pub listen: String,
    pub log_interval_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    pub timeout_ms: u64,
}
