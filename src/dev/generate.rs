//! The generator behind `produce`: signed Nekhebet v4 envelopes from development keys (or the
//! lines of a JSONL file), and from earlier ones the duplicates, replays and repeats of a mix,
//! plus poison. No Kafka here: [`super::produce`] publishes what it makes, and its module docs
//! say what each [`Kind`] should become once ingested.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::dev::signing::{self, EnvelopeSpec};
use crate::envelope::{self, Limits};

/// Event types the generator uses (nekhebet-core's registered ones, as in the sample set).
pub const EVENT_TYPES: &[&str] = &[
    "omen.observed",
    "observation.recorded",
    "anubis.weighed",
    "charon.transported",
    "osiris.remembered",
];

/// Development signing keys: `dev-<seed>-0` … `dev-<seed>-3`. Each seed is a different set of
/// producers, with key_ids of their own: the store pins a key_id to the first key it sees.
pub const DEV_KEYS: usize = 4;

/// How many earlier valid envelopes are remembered as originals for duplicates and replays.
const ORIGINALS_POOL: usize = 2048;

/// What a message was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Valid,
    Duplicate,
    /// Another envelope on an earlier message's `(key_id, nonce)`, signed by its key.
    Replay,
    /// An earlier message again, byte for byte (a producer's retry): expect `redelivered`.
    Repeat,
    Poison(Poison),
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Duplicate => "duplicate",
            Kind::Replay => "replay",
            Kind::Repeat => "repeat",
            Kind::Poison(p) => p.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Poison {
    TruncatedJson,
    BadNonce,
    NotJson,
    EmptyValue,
}

impl Poison {
    pub const ALL: [Poison; 4] = [
        Poison::TruncatedJson,
        Poison::BadNonce,
        Poison::NotJson,
        Poison::EmptyValue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Poison::TruncatedJson => "poison_truncated_json",
            Poison::BadNonce => "poison_bad_nonce",
            Poison::NotJson => "poison_not_json",
            Poison::EmptyValue => "poison_empty_value",
        }
    }
}

/// An earlier valid message, kept for duplicates and replays.
struct Original {
    key: Bytes,
    value: Bytes,
    event_type: String,
    source: String,
    payload: Value,
    key_id: String,
    nonce: String,
    /// Its signing key, when the generator made it (a file's lines come without theirs).
    signer: Option<SigningKey>,
}

/// A generated message: what it is meant to be, Kafka key, value, envelope id.
type Generated = (Kind, Bytes, Bytes, Option<Uuid>);

/// Where valid messages come from.
enum Source {
    Generated {
        seq: u64,
    },
    File {
        lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
        line_no: u64,
    },
}

pub(super) struct Generator {
    pub(super) rng: StdRng,
    pub(super) keys: Vec<(String, SigningKey)>,
    originals: VecDeque<Original>,
    /// Whether earlier envelopes are kept for duplicates, replays and repeats. A mix without them
    /// does not need them, and parsing every line's payload would cost a paced producer (which
    /// shares the worker's cores in the latency bench) more CPU than publishing it.
    remember: bool,
    source: Source,
    limits: Limits,
}

impl Generator {
    /// `seed`: the same seed gives the same keys, payloads, nonces, ids and mix. `file`: publish
    /// its lines as the valid messages instead of generated envelopes.
    pub(super) fn new(seed: Option<u64>, file: Option<&Path>) -> anyhow::Result<Generator> {
        let seed = seed.unwrap_or_else(|| rand::thread_rng().next_u64());
        let producers = hex::encode(
            &Sha256::digest(format!("nekhebet-store producers {seed}").as_bytes())[..4],
        );
        let keys = (0..DEV_KEYS)
            .map(|i| {
                let digest =
                    Sha256::digest(format!("nekhebet-store development key {seed}/{i}").as_bytes());
                let mut secret = [0u8; 32];
                secret.copy_from_slice(&digest);
                (
                    format!("dev-{producers}-{i}"),
                    SigningKey::from_bytes(&secret),
                )
            })
            .collect();
        let source = match file {
            Some(p) => Source::File {
                lines: std::io::BufReader::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                )
                .lines(),
                line_no: 0,
            },
            None => Source::Generated { seq: 0 },
        };
        Ok(Generator {
            rng: StdRng::seed_from_u64(seed),
            keys,
            originals: VecDeque::with_capacity(ORIGINALS_POOL),
            remember: true,
            source,
            limits: Limits {
                max_message_bytes: usize::MAX,
            },
        })
    }

    fn nonce(&mut self) -> String {
        let mut b = [0u8; 32];
        self.rng.fill_bytes(&mut b);
        hex::encode(b)
    }

    fn id(&mut self) -> Uuid {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        uuid::Builder::from_random_bytes(b).into_uuid()
    }

    fn key(&mut self) -> (String, SigningKey) {
        let i = self.rng.gen_range(0..self.keys.len());
        self.keys[i].clone()
    }

    /// Keeps no earlier envelopes: for a mix of valid and poison messages only.
    pub(super) fn without_originals(mut self) -> Generator {
        self.remember = false;
        self
    }

    fn remember(&mut self, o: Original) {
        if !self.remember {
            return;
        }
        if self.originals.len() == ORIGINALS_POOL {
            self.originals.pop_front();
        }
        self.originals.push_back(o);
    }

    /// The next message of `kind` (key, value, envelope id). `None` when the file is exhausted.
    pub(super) fn next(&mut self, kind: Kind) -> anyhow::Result<Option<Generated>> {
        // Without an earlier original a duplicate or replay cannot exist yet: send a valid one.
        let kind = match kind {
            Kind::Duplicate | Kind::Replay | Kind::Repeat if self.originals.is_empty() => {
                Kind::Valid
            }
            k => k,
        };
        Ok(match kind {
            Kind::Valid => self.next_valid()?.map(|(k, v, id)| (Kind::Valid, k, v, id)),
            Kind::Duplicate => {
                let i = self.rng.gen_range(0..self.originals.len());
                let (key, event_type, source, payload) = {
                    let o = &self.originals[i];
                    (
                        o.key.clone(),
                        o.event_type.clone(),
                        o.source.clone(),
                        o.payload.clone(),
                    )
                };
                let (key_id, sk) = self.key();
                let id = self.id();
                let spec = EnvelopeSpec {
                    event_type,
                    source,
                    key_id,
                    payload,
                    issued_at: None,
                    expires_at: None,
                    nonce: Some(self.nonce()),
                    id: Some(id),
                };
                Some((
                    Kind::Duplicate,
                    key,
                    Bytes::from(signing::sign(&spec, &sk)),
                    Some(id),
                ))
            }
            Kind::Replay => {
                let i = self.rng.gen_range(0..self.originals.len());
                let seq = self.rng.next_u64();
                let id = self.id();
                let o = &self.originals[i];
                match o.signer.clone() {
                    // Same key_id and nonce, another payload and id, signed by the genuine key:
                    // the replay guard must catch it. Same Kafka key, so it follows the original
                    // in its partition.
                    Some(sk) => {
                        let spec = EnvelopeSpec {
                            event_type: o.event_type.clone(),
                            source: o.source.clone(),
                            key_id: o.key_id.clone(),
                            payload: json!({ "replayed": seq, "of": o.nonce }),
                            issued_at: None,
                            expires_at: None,
                            nonce: Some(o.nonce.clone()),
                            id: Some(id),
                        };
                        let key = o.key.clone();
                        Some((
                            Kind::Replay,
                            key,
                            Bytes::from(signing::sign(&spec, &sk)),
                            Some(id),
                        ))
                    }
                    // A line of a file comes without its key: resend it instead.
                    None => Some((Kind::Repeat, o.key.clone(), o.value.clone(), None)),
                }
            }
            Kind::Repeat => {
                let i = self.rng.gen_range(0..self.originals.len());
                let o = &self.originals[i];
                Some((Kind::Repeat, o.key.clone(), o.value.clone(), None))
            }
            Kind::Poison(p) => {
                let n = self.rng.next_u64();
                let key = Bytes::from(format!("poison-{n:016x}"));
                let value = match p {
                    Poison::TruncatedJson => {
                        let (_, _, spec, sk) = self.generated_spec(n);
                        let full = signing::sign(&spec, &sk);
                        let cut = self.rng.gen_range(1..full.len().max(2) - 1);
                        Bytes::from(full[..cut].to_vec())
                    }
                    Poison::BadNonce => {
                        let (_, _, mut spec, sk) = self.generated_spec(n);
                        spec.nonce = Some("not-a-hex-nonce!".to_string());
                        Bytes::from(signing::sign(&spec, &sk))
                    }
                    Poison::NotJson => Bytes::from(format!("this is not an envelope #{n}")),
                    Poison::EmptyValue => Bytes::new(),
                };
                Some((kind, key, value, None))
            }
        })
    }

    fn generated_spec(&mut self, seq: u64) -> (Bytes, Uuid, EnvelopeSpec, SigningKey) {
        let event_type = EVENT_TYPES[(seq % EVENT_TYPES.len() as u64) as usize];
        let source = format!("node-{}", self.rng.gen_range(0..13));
        let payload = payload_for(event_type, seq, &mut self.rng);
        let (key_id, sk) = self.key();
        let id = self.id();
        let spec = EnvelopeSpec {
            event_type: event_type.to_string(),
            source,
            key_id,
            payload,
            issued_at: None,
            expires_at: None,
            nonce: Some(self.nonce()),
            id: Some(id),
        };
        (Bytes::from(format!("k{seq}")), id, spec, sk)
    }

    fn next_valid(&mut self) -> anyhow::Result<Option<(Bytes, Bytes, Option<Uuid>)>> {
        match &mut self.source {
            Source::Generated { seq } => {
                let s = *seq;
                *seq += 1;
                let (key, id, spec, sk) = self.generated_spec(s);
                let value = Bytes::from(signing::sign(&spec, &sk));
                self.remember(Original {
                    key: key.clone(),
                    value: value.clone(),
                    event_type: spec.event_type,
                    source: spec.source,
                    payload: spec.payload,
                    key_id: spec.key_id,
                    nonce: spec.nonce.unwrap_or_default(),
                    signer: Some(sk),
                });
                Ok(Some((key, value, Some(id))))
            }
            Source::File { lines, line_no } => loop {
                let Some(line) = lines.next() else {
                    return Ok(None);
                };
                *line_no += 1;
                let n = *line_no;
                let line = line.with_context(|| format!("reading line {n}"))?;
                let trimmed = line.trim_end_matches(['\r', '\n']);
                if trimmed.trim().is_empty() {
                    continue;
                }
                let value = Bytes::copy_from_slice(trimmed.as_bytes());
                // Lines that decode are remembered (duplicates re-sign their payload); others are
                // still published as they are — the file is the caller's truth.
                let decoded = envelope::decode(value.clone(), &self.limits).ok();
                let (key, id) = match &decoded {
                    Some(env) => (Bytes::from(env.header.id.to_string()), Some(env.header.id)),
                    None => (Bytes::from(format!("line-{n}")), None),
                };
                if let Some(env) = decoded.filter(|_| self.remember) {
                    if let Ok(payload) = serde_json::from_str::<Value>(env.payload.get()) {
                        self.remember(Original {
                            key: key.clone(),
                            value: value.clone(),
                            event_type: env.header.event_type.clone(),
                            source: env.header.source.clone(),
                            payload,
                            key_id: env.header.key_id.clone(),
                            nonce: env.header.nonce.clone(),
                            signer: None,
                        });
                    }
                }
                return Ok(Some((key, value, id)));
            },
        }
    }
}

/// A ~0.4–1.1 KB payload whose shape depends on the event type (envelopes of ~1.4 KB on average,
/// like the sample set).
fn payload_for(event_type: &str, seq: u64, rng: &mut StdRng) -> Value {
    let note_len = rng.gen_range(300..1000);
    let note: String = (0..note_len)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz      "[rng.gen_range(0..32)]))
        .collect();
    let reading = (rng.gen_range(0.0..100.0f64) * 1000.0).round() / 1000.0;
    match event_type {
        "omen.observed" => json!({
            "seq": seq, "sensor": format!("s-{}", seq % 97), "reading": reading, "unit": "celsius",
            "location": {"lat": rng.gen_range(-90.0..90.0f64), "lon": rng.gen_range(-180.0..180.0f64)},
            "tags": ["omen", format!("zone-{}", seq % 7)], "note": note,
        }),
        "observation.recorded" => json!({
            "seq": seq, "observer": format!("obs-{}", seq % 31), "subject": format!("subject-{}", seq % 1009),
            "measurements": [{"name": "a", "value": reading}, {"name": "b", "value": rng.gen_range(0..10_000)}],
            "note": note,
        }),
        "anubis.weighed" => json!({
            "seq": seq, "subject": format!("soul-{seq}"), "heart_grams": rng.gen_range(200..400),
            "feather_grams": 1, "verdict": if rng.gen_bool(0.5) { "light" } else { "heavy" }, "note": note,
        }),
        "charon.transported" => json!({
            "seq": seq, "from": "bank-east", "to": "bank-west", "passengers": rng.gen_range(1..12),
            "fare_obols": rng.gen_range(1..3), "note": note,
        }),
        _ => json!({
            "seq": seq, "memory_id": format!("m-{seq}"), "subject": format!("subject-{}", seq % 1009),
            "strength": reading, "note": note,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_envelopes_decode_validate_and_are_about_1_4_kb() {
        let mut g = Generator::new(Some(1), None).unwrap();
        let limits = Limits {
            max_message_bytes: 1 << 20,
        };
        let mut total = 0;
        for _ in 0..200 {
            let (kind, _k, v, id) = g.next(Kind::Valid).unwrap().unwrap();
            assert_eq!(kind, Kind::Valid);
            let env = envelope::decode(v.clone(), &limits).unwrap();
            envelope::validate(&env).unwrap();
            assert_eq!(Some(env.header.id), id);
            total += v.len();
        }
        let avg = total / 200;
        assert!((1100..1800).contains(&avg), "average envelope {avg} bytes");
    }

    #[test]
    fn duplicate_keeps_payload_hash_and_key_but_not_nonce_or_id() {
        let mut g = Generator::new(Some(2), None).unwrap();
        let limits = Limits {
            max_message_bytes: 1 << 20,
        };
        let (_, k0, v0, _) = g.next(Kind::Valid).unwrap().unwrap();
        let (kind, k1, v1, _) = g.next(Kind::Duplicate).unwrap().unwrap();
        assert_eq!(kind, Kind::Duplicate);
        let (a, b) = (
            envelope::decode(v0, &limits).unwrap(),
            envelope::decode(v1, &limits).unwrap(),
        );
        envelope::validate(&b).unwrap();
        assert_eq!(k0, k1);
        assert_eq!(a.header.payload_hash, b.header.payload_hash);
        assert_ne!(a.header.nonce, b.header.nonce);
        assert_ne!(a.header.id, b.header.id);
    }

    #[test]
    fn a_replay_is_another_envelope_on_the_same_nonce_and_a_repeat_the_same_bytes() {
        let limits = Limits {
            max_message_bytes: 1 << 20,
        };
        let mut g = Generator::new(Some(3), None).unwrap();
        let (_, k0, v0, _) = g.next(Kind::Valid).unwrap().unwrap();
        let (kind, k1, v1, _) = g.next(Kind::Replay).unwrap().unwrap();
        assert_eq!(kind, Kind::Replay);
        assert_eq!(k0, k1, "same Kafka key: same partition, after the original");
        let (a, b) = (
            envelope::decode(v0.clone(), &limits).unwrap(),
            envelope::decode(v1, &limits).unwrap(),
        );
        envelope::validate(&b).unwrap();
        assert_eq!(
            (&a.header.key_id, &a.header.nonce),
            (&b.header.key_id, &b.header.nonce)
        );
        assert_eq!(a.public_key, b.public_key, "signed by the genuine key");
        assert_ne!(a.header.payload_hash, b.header.payload_hash);
        assert_ne!(a.header.id, b.header.id);
        let (kind, k2, v2, _) = g.next(Kind::Repeat).unwrap().unwrap();
        assert_eq!(kind, Kind::Repeat);
        assert_eq!((k0, v0), (k2, v2));
    }

    #[test]
    fn first_duplicate_or_replay_falls_back_to_valid() {
        let mut g = Generator::new(Some(4), None).unwrap();
        assert_eq!(g.next(Kind::Replay).unwrap().unwrap().0, Kind::Valid);
    }

    #[test]
    fn every_poison_is_rejected_by_the_checks() {
        let mut g = Generator::new(Some(5), None).unwrap();
        let limits = Limits {
            max_message_bytes: 1 << 20,
        };
        for p in Poison::ALL {
            for _ in 0..20 {
                let (_, _, v, _) = g.next(Kind::Poison(p)).unwrap().unwrap();
                let bad = match envelope::decode(v, &limits) {
                    Err(_) => true,
                    Ok(env) => envelope::validate(&env).is_err(),
                };
                assert!(bad, "{p:?} passed the checks");
            }
        }
    }

    #[test]
    fn same_seed_same_keys_and_payloads() {
        let mut a = Generator::new(Some(9), None).unwrap();
        let mut b = Generator::new(Some(9), None).unwrap();
        let limits = Limits {
            max_message_bytes: 1 << 20,
        };
        let (_, _, va, ia) = a.next(Kind::Valid).unwrap().unwrap();
        let (_, _, vb, ib) = b.next(Kind::Valid).unwrap().unwrap();
        assert_eq!(ia, ib);
        let (ea, eb) = (
            envelope::decode(va, &limits).unwrap(),
            envelope::decode(vb, &limits).unwrap(),
        );
        assert_eq!(ea.header.payload_hash, eb.header.payload_hash);
        assert_eq!(ea.header.nonce, eb.header.nonce);
        assert_eq!(ea.public_key, eb.public_key);
    }
}
