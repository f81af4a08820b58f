//! `nekhebet-store produce`: publishes signed Nekhebet v4 envelopes (or the lines of a JSONL file)
//! to a Kafka topic, mixed with duplicates, replays and poison, for the demo, tests and benchmarks.
//!
//! What each kind should become once ingested — the report is the expected truth:
//! - `valid`: a new envelope (new payload, key_id/nonce, id) → `stored`.
//! - `duplicate`: the payload of an earlier valid envelope re-signed with a new nonce and id →
//!   `duplicate` (same content hash).
//! - `replay`: the exact bytes of an earlier valid envelope again → `replay` (`seth.caught`).
//! - `poison`: malformed (truncated JSON, bad nonce, not JSON, empty value) → `rejected` (DLQ).
//!
//! A duplicate or replay carries the Kafka key of its original, so it lands on the same partition
//! after it and the expectation holds whatever the partition count.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
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
/// Deliveries awaited at most at once (librdkafka queues more internally).
const MAX_PENDING: usize = 20_000;

#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub topic: String,
    /// Messages to publish, all kinds included. With `file`, 0 means every line once.
    pub count: u64,
    /// Messages per second; `None`: as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Publish these JSONL lines (one wire envelope a line) as the valid messages instead of
    /// generated envelopes.
    pub file: Option<PathBuf>,
    pub duplicate_ratio: f64,
    pub replay_ratio: f64,
    /// Share of exact resends of an earlier message (a producer's retry without idempotence).
    pub repeat_ratio: f64,
    pub poison_ratio: f64,
    /// Create the topic with this many partitions first if it does not exist.
    pub partitions: Option<i32>,
    /// Seed for keys, payloads, nonces, ids and the mix: the same seed gives the same envelopes
    /// (except `issued_at`, which is the current time so verification's clock check passes).
    pub seed: Option<u64>,
    /// Keep every published record in the report (tests compare the stores against them).
    pub keep_records: bool,
    /// Show a progress bar (only drawn when standard error is a terminal).
    pub progress: bool,
}

impl Default for ProduceOptions {
    fn default() -> Self {
        ProduceOptions {
            topic: String::new(),
            count: 1000,
            rate: None,
            file: None,
            duplicate_ratio: 0.0,
            replay_ratio: 0.0,
            repeat_ratio: 0.0,
            poison_ratio: 0.0,
            partitions: None,
            seed: None,
            keep_records: false,
            progress: true,
        }
    }
}

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

/// One published message.
#[derive(Debug, Clone)]
pub struct ProducedRecord {
    pub kind: Kind,
    pub key: Bytes,
    pub value: Bytes,
    /// The envelope id, for valid and duplicate messages.
    pub id: Option<Uuid>,
    pub partition: i32,
    pub offset: i64,
}

/// What was published: the expected outcomes of ingesting it.
#[derive(Debug, Clone, Default)]
pub struct ProduceReport {
    /// Messages published (acknowledged by the broker).
    pub sent: u64,
    /// New envelopes: expect `stored`.
    pub valid: u64,
    /// Expect `duplicate`.
    pub duplicates: u64,
    /// Expect `replay`.
    pub replays: u64,
    /// Expect `redelivered`.
    pub repeats: u64,
    /// Expect `rejected`.
    pub poison: u64,
    pub poison_by_kind: BTreeMap<&'static str, u64>,
    /// key_id → base64 public key of the development keys used.
    pub public_keys: BTreeMap<String, String>,
    pub elapsed: Duration,
    /// Every record, in publish order, when `keep_records` was asked for.
    pub records: Vec<ProducedRecord>,
}

impl std::fmt::Display for ProduceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.sent as f64 / self.elapsed.as_secs_f64().max(1e-3);
        writeln!(
            f,
            "published {} messages in {:.1}s ({rate:.0}/s)",
            self.sent,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  valid      {:>8}  (expect stored)", self.valid)?;
        writeln!(f, "  duplicate  {:>8}  (expect duplicate)", self.duplicates)?;
        writeln!(f, "  replay     {:>8}  (expect replay)", self.replays)?;
        writeln!(f, "  repeat     {:>8}  (expect redelivered)", self.repeats)?;
        write!(
            f,
            "  poison     {:>8}  (expect rejected → DLQ)",
            self.poison
        )?;
        for (k, n) in &self.poison_by_kind {
            write!(f, "\n    {k:<24} {n}")?;
        }
        Ok(())
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

struct Generator {
    rng: StdRng,
    keys: Vec<(String, SigningKey)>,
    originals: VecDeque<Original>,
    source: Source,
    limits: Limits,
}

impl Generator {
    fn new(opts: &ProduceOptions) -> anyhow::Result<Generator> {
        let seed = opts.seed.unwrap_or_else(|| rand::thread_rng().next_u64());
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
        let source = match &opts.file {
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

    fn remember(&mut self, o: Original) {
        if self.originals.len() == ORIGINALS_POOL {
            self.originals.pop_front();
        }
        self.originals.push_back(o);
    }

    /// The next message of `kind` (key, value, envelope id). `None` when the file is exhausted.
    fn next(&mut self, kind: Kind) -> anyhow::Result<Option<Generated>> {
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
                if let Some(env) = decoded {
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

/// Publishes according to `opts` and returns what was sent once every message is acknowledged.
pub async fn run(
    opts: ProduceOptions,
    brokers: &str,
    properties: &BTreeMap<String, String>,
) -> anyhow::Result<ProduceReport> {
    for (name, r) in [
        ("duplicate ratio", opts.duplicate_ratio),
        ("replay ratio", opts.replay_ratio),
        ("repeat ratio", opts.repeat_ratio),
        ("poison ratio", opts.poison_ratio),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&r),
            "{name} must be between 0 and 1, got {r}"
        );
    }
    anyhow::ensure!(
        opts.duplicate_ratio + opts.replay_ratio + opts.repeat_ratio + opts.poison_ratio <= 1.0,
        "duplicate + replay + repeat + poison ratios must not exceed 1"
    );
    if let Some(r) = opts.rate {
        anyhow::ensure!(
            r > 0.0 && r.is_finite(),
            "rate must be a positive number of messages per second"
        );
    }
    anyhow::ensure!(!opts.topic.is_empty(), "a topic is required");
    anyhow::ensure!(
        opts.count > 0 || opts.file.is_some(),
        "count must be at least 1"
    );
    if let Some(p) = opts.partitions {
        crate::kafka::ensure_topics(brokers, properties, &[(opts.topic.as_str(), p)])
            .await
            .with_context(|| format!("creating topic {}", opts.topic))?;
    }

    let mut gen = Generator::new(&opts)?;
    let mut report = ProduceReport {
        public_keys: gen
            .keys
            .iter()
            .map(|(id, k)| {
                (
                    id.clone(),
                    envelope::encode_base64(k.verifying_key().as_bytes()),
                )
            })
            .collect(),
        ..ProduceReport::default()
    };
    let producer: FutureProducer = crate::kafka::producer_config(brokers, properties)
        .create()
        .map_err(crate::kafka::redact_error)
        .context("creating the Kafka producer")?;

    let bar = if opts.progress && std::io::stderr().is_terminal() {
        let bar = if opts.count > 0 {
            indicatif::ProgressBar::new(opts.count)
        } else {
            indicatif::ProgressBar::no_length()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };

    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut slots: Vec<Option<ProducedRecord>> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut i: u64 = 0;
    loop {
        if opts.count > 0 && i >= opts.count {
            break;
        }
        let r: f64 = gen.rng.gen();
        let kind = if r < opts.poison_ratio {
            Kind::Poison(Poison::ALL[gen.rng.gen_range(0..Poison::ALL.len())])
        } else if r < opts.poison_ratio + opts.duplicate_ratio {
            Kind::Duplicate
        } else if r < opts.poison_ratio + opts.duplicate_ratio + opts.replay_ratio {
            Kind::Replay
        } else if r < opts.poison_ratio
            + opts.duplicate_ratio
            + opts.replay_ratio
            + opts.repeat_ratio
        {
            Kind::Repeat
        } else {
            Kind::Valid
        };
        let Some((kind, key, value, id)) = gen.next(kind)? else {
            break;
        };
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        }
        let slot = slots.len();
        slots.push(Some(ProducedRecord {
            kind,
            key: key.clone(),
            value: value.clone(),
            id,
            partition: -1,
            offset: -1,
        }));
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&opts.topic).key(&key[..]);
            // An empty value is sent as an empty (not null) value: a tombstone is a different
            // message, and the empty-value poison is meant to be exactly that.
            record = record.payload(&value[..]);
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(async move { (slot, delivery.await) });
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match pending.next().await {
                        Some(done) => settle(done, &mut slots, &mut report, &mut failures, &bar),
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => anyhow::bail!("publishing to {}: {e}", opts.topic),
            }
        }
        while pending.len() >= MAX_PENDING {
            if let Some(done) = pending.next().await {
                settle(done, &mut slots, &mut report, &mut failures, &bar);
            }
        }
        i += 1;
    }
    while let Some(done) = pending.next().await {
        settle(done, &mut slots, &mut report, &mut failures, &bar);
    }
    if let Err(e) = producer.flush(Duration::from_secs(30)) {
        failures.push(format!("flush: {e}"));
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report.elapsed = started.elapsed();
    if !failures.is_empty() {
        anyhow::bail!(
            "{} message(s) not acknowledged by the broker (first: {})",
            failures.len(),
            failures[0]
        );
    }
    if opts.keep_records {
        report.records = slots.into_iter().flatten().collect();
    }
    Ok(report)
}

type Delivered = (
    usize,
    Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
);

fn settle(
    (slot, result): Delivered,
    slots: &mut [Option<ProducedRecord>],
    report: &mut ProduceReport,
    failures: &mut Vec<String>,
    bar: &Option<indicatif::ProgressBar>,
) {
    match result {
        Ok(Ok(delivery)) => {
            if let Some(rec) = slots.get_mut(slot).and_then(Option::as_mut) {
                rec.partition = delivery.partition;
                rec.offset = delivery.offset;
                report.sent += 1;
                match rec.kind {
                    Kind::Valid => report.valid += 1,
                    Kind::Duplicate => report.duplicates += 1,
                    Kind::Replay => report.replays += 1,
                    Kind::Repeat => report.repeats += 1,
                    Kind::Poison(p) => {
                        report.poison += 1;
                        *report.poison_by_kind.entry(p.as_str()).or_default() += 1;
                    }
                }
            }
            if let Some(b) = bar {
                b.inc(1);
            }
        }
        Ok(Err((e, _))) => failures.push(e.to_string()),
        Err(_) => failures.push("producer dropped".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64) -> ProduceOptions {
        ProduceOptions {
            topic: "t".into(),
            seed: Some(seed),
            ..ProduceOptions::default()
        }
    }

    #[test]
    fn generated_envelopes_decode_validate_and_are_about_1_4_kb() {
        let mut g = Generator::new(&opts(1)).unwrap();
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
        let mut g = Generator::new(&opts(2)).unwrap();
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
        let mut g = Generator::new(&opts(3)).unwrap();
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
        let mut g = Generator::new(&opts(4)).unwrap();
        assert_eq!(g.next(Kind::Replay).unwrap().unwrap().0, Kind::Valid);
    }

    #[test]
    fn every_poison_is_rejected_by_the_checks() {
        let mut g = Generator::new(&opts(5)).unwrap();
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
        let mut a = Generator::new(&opts(9)).unwrap();
        let mut b = Generator::new(&opts(9)).unwrap();
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

/// `nekhebet-store produce` arguments (the CLI adds this as a subcommand).
#[derive(clap::Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Topic to publish to.
    #[arg(long)]
    pub topic: String,
    /// Messages to publish, duplicates, replays and poison included (with --file: 0 = every line).
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Messages per second (default: as fast as the broker acknowledges).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Publish the lines of this JSONL file (one wire envelope a line) as the valid messages.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Share of messages that re-sign an earlier payload with a new nonce and id (→ duplicate).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_ratio: f64,
    /// Share of messages that reuse an earlier envelope's (key_id, nonce) for another envelope,
    /// signed by its key (→ replay, seth.caught).
    #[arg(long, default_value_t = 0.0)]
    pub replay_ratio: f64,
    /// Share of messages that resend an earlier envelope byte for byte, as a producer retrying
    /// without idempotence does (→ redelivered).
    #[arg(long, default_value_t = 0.0)]
    pub repeat_ratio: f64,
    /// Share of malformed messages: truncated JSON, bad nonce, not JSON, empty value (→ DLQ).
    #[arg(long, default_value_t = 0.0)]
    pub poison_ratio: f64,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Seed for the generated keys, envelopes and mix (reproducible runs).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl From<ProduceArgs> for ProduceOptions {
    fn from(a: ProduceArgs) -> Self {
        ProduceOptions {
            topic: a.topic,
            count: a.count,
            rate: a.rate,
            file: a.file,
            duplicate_ratio: a.duplicate_ratio,
            replay_ratio: a.replay_ratio,
            repeat_ratio: a.repeat_ratio,
            poison_ratio: a.poison_ratio,
            partitions: a.partitions,
            seed: a.seed,
            keep_records: false,
            progress: true,
        }
    }
}

/// The `produce` command: publishes, prints the report (expected outcomes) and exits 0.
pub async fn command(
    args: ProduceArgs,
    config: &crate::config::Config,
) -> anyhow::Result<std::process::ExitCode> {
    let report = run(args.into(), &config.kafka.brokers, &config.kafka.properties).await?;
    println!("{report}");
    Ok(std::process::ExitCode::SUCCESS)
}
