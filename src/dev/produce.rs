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
//!
//! The messages come from the generator (`generate.rs`, whose [`Kind`] and [`Poison`] are
//! re-exported here); this module publishes them and counts what the broker acknowledged.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use uuid::Uuid;

use super::generate::Generator;
pub use super::generate::{Kind, Poison, DEV_KEYS, EVENT_TYPES};
use crate::envelope;

/// Deliveries awaited at most at once (librdkafka queues more internally).
const MAX_PENDING: usize = 20_000;

/// With `--rate`: how far ahead of its due time a message may be sent (see `run`).
const PACE_TICK: Duration = Duration::from_millis(5);

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

    let mut gen = Generator::new(opts.seed, opts.file.as_deref())?;
    if opts.duplicate_ratio + opts.replay_ratio + opts.repeat_ratio == 0.0 {
        gen = gen.without_originals();
    }
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
            // Paced in bursts: on waking, the messages due within the next PACE_TICK go out
            // together (up to that much early). One wake-up per message (librdkafka's threads
            // woken with it) cost more CPU than publishing, on the cores the worker under test
            // uses in the latency bench.
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() + PACE_TICK {
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            }
        }
        let slot = slots.len();
        // Only a caller that asked for the records gets them: holding every message until the
        // end would make a long paced run (the latency bench's) fault in fresh memory throughout.
        let (kept_key, kept_value) = if opts.keep_records {
            (key.clone(), value.clone())
        } else {
            (Bytes::new(), Bytes::new())
        };
        slots.push(Some(ProducedRecord {
            kind,
            key: kept_key,
            value: kept_value,
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
