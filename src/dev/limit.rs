//! `nekhebet-dev bench-limit`: the CPU cost per envelope of each piece of work no implementation
//! of the worker can skip, each measured alone (issue 17 §2). `benches/ingest_bench.py` runs every
//! part on the data of its run and adds them up: the machine's limit = cores ÷ the CPU-seconds per
//! envelope of all of them.
//!
//! - `cpu FILE`: decode + structural validation; canonical header + canonical payload + SHA-256;
//!   the exact Ed25519 check (cofactorless `verify`, the key decompressed once per key as the
//!   worker caches it); and, for comparison, the worker's whole `Verifier::verify` one envelope at
//!   a time. Each on one thread, timed by that thread's CPU clock.
//! - `lmdb FILE --layout L --dir D`: the blobs put into a fresh LMDB environment in batches (one
//!   synced write transaction per batch, as the worker does), on one thread.
//! - `copy FILE`: binary COPY of the rows into `replay_guard` and `events` (the worker's own
//!   statements, with Kafka positions) in batches, one transaction each, into a FRESH database;
//!   reports the CPU the PostgreSQL backend spent (its `/proc/<pid>/schedstat`) and this client's.
//! - `consume --topic T --count N`: reads N messages from the start of every partition of T with
//!   the worker's consumer settings (assigned, no group, no commit) and does nothing with them.
//!
//! Each part prints one JSON object. CPU clocks: `/proc/thread-self/schedstat` (nanoseconds of
//! this thread on a CPU, user + system), the sum over `/proc/self/task/*` for the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use heed::types::Bytes as RawBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::canonical;
use crate::config::Config;
use crate::envelope::{self, Envelope, Header, Limits};
use crate::partition::Position;
use crate::store::{postgres, PgStore};
use crate::verify::{Verifier, VerifyConfig};

#[derive(Args, Debug)]
pub struct LimitArgs {
    #[command(subcommand)]
    pub part: Part,
}

#[derive(Subcommand, Debug)]
pub enum Part {
    /// Decode, canonicalize + hash and Ed25519 verification, one thread, CPU per envelope.
    Cpu {
        /// JSONL envelopes (the same data the worker ingests).
        file: PathBuf,
        /// Use at most this many envelopes (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// LMDB puts of the blobs in batches, one synced write transaction per batch.
    Lmdb {
        file: PathBuf,
        #[arg(long, value_enum)]
        layout: Layout,
        /// A directory that does not exist yet (created, left for the caller to remove).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 4000)]
        batch: usize,
    },
    /// Binary COPY into replay_guard + events in batches (NEKHEBET_POSTGRES__URL: a fresh database).
    Copy {
        file: PathBuf,
        #[arg(long, default_value_t = 4000)]
        batch: usize,
        /// The topic name written into the rows' Kafka positions.
        #[arg(long, default_value = "bench")]
        topic: String,
        /// Partitions the rows' positions are spread over.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Consume-only pass: read COUNT messages of TOPIC from the beginning, do nothing with them.
    Consume {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Layout {
    Compatible,
    Append,
}

pub async fn run(args: LimitArgs, config: &Config) -> anyhow::Result<std::process::ExitCode> {
    let out = match args.part {
        Part::Cpu { file, limit } => {
            tokio::task::spawn_blocking(move || cpu(&file, limit)).await??
        }
        Part::Lmdb {
            file,
            layout,
            dir,
            batch,
        } => tokio::task::spawn_blocking(move || lmdb(&file, layout, &dir, batch)).await??,
        Part::Copy {
            file,
            batch,
            topic,
            partitions,
        } => copy(config, &file, batch, &topic, partitions).await?,
        Part::Consume { topic, count } => {
            let config = config.clone();
            tokio::task::spawn_blocking(move || consume(&config, &topic, count)).await??
        }
    };
    println!("{out}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// Nanoseconds this thread has run (user + system): the first field of its schedstat.
fn thread_cpu_ns() -> u64 {
    read_schedstat(Path::new("/proc/thread-self/schedstat")).unwrap_or(0)
}

/// Nanoseconds all live threads of this process have run.
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| read_schedstat(&t.path().join("schedstat")))
        .sum()
}

fn read_schedstat(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `f` and returns its result with the CPU seconds this thread spent in it.
fn on_cpu<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let before = thread_cpu_ns();
    let r = f();
    (r, (thread_cpu_ns() - before) as f64 / 1e9)
}

fn read_lines(file: &Path) -> anyhow::Result<Vec<Bytes>> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let lines: Vec<Bytes> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(Bytes::copy_from_slice)
        .collect();
    anyhow::ensure!(!lines.is_empty(), "no line in {}", file.display());
    Ok(lines)
}

fn decode_all(file: &Path) -> anyhow::Result<Vec<Envelope>> {
    let limits = Limits::default();
    let envs: Vec<Envelope> = read_lines(file)?
        .into_iter()
        .filter_map(|l| envelope::decode(l, &limits).ok())
        .collect();
    anyhow::ensure!(
        !envs.is_empty(),
        "no decodable envelope in {}",
        file.display()
    );
    Ok(envs)
}

fn per(seconds: f64, n: usize) -> f64 {
    seconds / n.max(1) as f64
}

fn cpu(file: &Path, limit: usize) -> anyhow::Result<serde_json::Value> {
    let mut raw = read_lines(file)?;
    if limit > 0 && raw.len() > limit {
        raw.truncate(limit);
    }
    let n = raw.len();
    let limits = Limits::default();

    // 1. decode + structural validation (what the worker does with verification off).
    let (envs, decode_s) = on_cpu(|| {
        raw.iter()
            .map(|b| {
                let e = envelope::decode(b.clone(), &limits).ok()?;
                envelope::validate(&e).ok()?;
                Some(e)
            })
            .collect::<Option<Vec<Envelope>>>()
    });
    let envs = envs.context("the file holds an envelope that does not decode or validate")?;

    // 2. canonical header (the signed message) + canonical payload + SHA-256 (the content hash).
    let (headers, canonical_s) = on_cpu(|| {
        envs.iter()
            .map(|e| {
                let h = envelope::canonical_header(&e.header).ok()?;
                let hash = canonical::payload_hash(e.payload.get()).ok()?;
                (hash == e.header.payload_hash).then_some(h)
            })
            .collect::<Option<Vec<Vec<u8>>>>()
    });
    let headers = headers
        .context("an envelope's header does not canonicalize or its payload hash differs")?;

    // 3. the exact Ed25519 check over the canonical header, keys decompressed once.
    let mut keys: HashMap<[u8; 32], VerifyingKey> = HashMap::new();
    let (valid, ed25519_s) = on_cpu(|| {
        envs.iter()
            .zip(&headers)
            .filter(|(e, msg)| {
                let key = match keys.get(&e.public_key) {
                    Some(k) => *k,
                    None => match VerifyingKey::from_bytes(&e.public_key) {
                        Ok(k) => *keys.entry(e.public_key).or_insert(k),
                        Err(_) => return false,
                    },
                };
                key.verify(msg, &Signature::from_bytes(&e.signature))
                    .is_ok()
            })
            .count()
    });
    anyhow::ensure!(valid == n, "{} of {n} signatures do not verify", n - valid);

    // For comparison: the worker's verifier, all checks, one envelope at a time.
    let verifier = Verifier::new(VerifyConfig::default());
    let now = chrono::Utc::now();
    let (full_ok, verifier_s) = on_cpu(|| {
        envs.iter()
            .filter(|e| verifier.verify(e, now).is_ok())
            .count()
    });

    Ok(serde_json::json!({
        "envelopes": n,
        "decode_validate_s_per_envelope": per(decode_s, n),
        "canonical_hash_s_per_envelope": per(canonical_s, n),
        "ed25519_verify_s_per_envelope": per(ed25519_s, n),
        "verifier_verify_s_per_envelope": per(verifier_s, n),
        "verifier_accepted": full_ok,
        "public_keys": keys.len(),
        "avg_envelope_bytes": raw.iter().map(|b| b.len()).sum::<usize>() / n,
    }))
}

fn lmdb(
    file: &Path,
    layout: Layout,
    dir: &Path,
    batch: usize,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        !dir.exists(),
        "{} exists: the LMDB part needs a fresh directory",
        dir.display()
    );
    let envs = decode_all(file)?;
    std::fs::create_dir_all(dir)?;
    let mut opts = heed::EnvOpenOptions::new();
    opts.map_size(64 << 30).max_dbs(8);
    // SAFETY: a fresh directory of the benchmark's own, opened once in this process.
    #[allow(unsafe_code)]
    let env = unsafe { opts.open(dir) }?;
    let mut wtxn = env.write_txn()?;
    let name = match layout {
        Layout::Compatible => "events",
        Layout::Append => "blobs",
    };
    let db: heed::Database<RawBytes, RawBytes> = env.create_database(&mut wtxn, Some(name))?;
    wtxn.commit()?;

    let batch = batch.max(1);
    let started = Instant::now();
    let before = thread_cpu_ns();
    let mut seq: u64 = 0;
    for chunk in envs.chunks(batch) {
        let mut wtxn = env.write_txn()?;
        for e in chunk {
            seq += 1;
            match layout {
                Layout::Compatible => db.put_with_flags(
                    &mut wtxn,
                    heed::PutFlags::NO_OVERWRITE,
                    e.header.payload_hash.as_bytes(),
                    &e.bytes,
                )?,
                Layout::Append => db.put_with_flags(
                    &mut wtxn,
                    heed::PutFlags::APPEND,
                    &seq.to_be_bytes(),
                    &e.bytes,
                )?,
            }
        }
        wtxn.commit()?;
    }
    let cpu_s = (thread_cpu_ns() - before) as f64 / 1e9;
    let wall_s = started.elapsed().as_secs_f64();
    let n = envs.len();
    Ok(serde_json::json!({
        "layout": format!("{layout:?}").to_lowercase(),
        "puts": n,
        "batch": batch,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "cpu_s_per_envelope": per(cpu_s, n),
    }))
}

async fn copy(
    config: &Config,
    file: &Path,
    batch: usize,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<serde_json::Value> {
    let envs = decode_all(file)?;
    let pg = PgStore::connect(&config.postgres)
        .await
        .context("connecting to PostgreSQL")?;
    pg.migrate().await?;
    let mut client = pg.pool().get().await?;
    let held: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM events)", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        !held,
        "the database already holds events: the COPY part needs a fresh database"
    );
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let backend_stat = PathBuf::from(format!("/proc/{backend}/schedstat"));
    let backend_local = read_schedstat(&backend_stat).is_some();

    let partitions = partitions.max(1);
    let positions: Vec<Position> = (0..envs.len())
        .map(|i| {
            Position::new(
                topic,
                i as i32 % partitions,
                i as i64 / i64::from(partitions),
            )
        })
        .collect();
    let batch = batch.max(1);
    let started = Instant::now();
    let client_before = process_cpu_ns();
    let backend_before = read_schedstat(&backend_stat).unwrap_or(0);
    let digests = crate::store::plan::envelope_digests(&envs);
    for ((chunk, pos), digests) in envs
        .chunks(batch)
        .zip(positions.chunks(batch))
        .zip(digests.chunks(batch))
    {
        let tx = client.transaction().await?;
        let guard: Vec<(&Header, &crate::store::plan::Digest)> =
            chunk.iter().map(|e| &e.header).zip(digests).collect();
        postgres::copy_guard(&tx, &guard).await?;
        let seqs = postgres::next_seqs(&tx, chunk.len()).await?;
        let rows: Vec<(&Envelope, Option<&Position>, i64)> = chunk
            .iter()
            .zip(pos)
            .zip(seqs)
            .map(|((e, p), seq)| (e, Some(p), seq))
            .collect();
        postgres::copy_events(&tx, &rows).await?;
        tx.commit().await?;
    }
    let backend_s =
        read_schedstat(&backend_stat).unwrap_or(0) as f64 / 1e9 - backend_before as f64 / 1e9;
    let client_s = (process_cpu_ns() - client_before) as f64 / 1e9;
    let wall_s = started.elapsed().as_secs_f64();
    let n = envs.len();
    Ok(serde_json::json!({
        "rows": n,
        "batch": batch,
        "wall_s": wall_s,
        "backend_pid": backend,
        "backend_on_this_machine": backend_local,
        "backend_cpu_s": if backend_local { serde_json::json!(backend_s) } else { serde_json::Value::Null },
        "backend_cpu_s_per_row": if backend_local { serde_json::json!(per(backend_s, n)) } else { serde_json::Value::Null },
        "client_cpu_s": client_s,
        "client_cpu_s_per_row": per(client_s, n),
    }))
}

fn consume(config: &Config, topic: &str, count: u64) -> anyhow::Result<serde_json::Value> {
    let mut kafka = config.kafka.clone();
    kafka.group_id = format!("bench-limit-consume-{}", std::process::id());
    let consumer: BaseConsumer = crate::kafka::consumer_config(&kafka)
        .create()
        .map_err(crate::kafka::redact_error)
        .context("creating the consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .context("reading the topic's metadata")?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not found"))?;
    anyhow::ensure!(!t.partitions().is_empty(), "topic {topic} has no partition");
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let started = Instant::now();
    let cpu_before = process_cpu_ns();
    let deadline = started + Duration::from_secs(600);
    let (mut n, mut bytes) = (0u64, 0u64);
    while n < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "read {n} of {count} messages in 600 s"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            // Detached from librdkafka as the worker's consumer thread does.
            let value = m.payload().map(Bytes::copy_from_slice);
            let key = m.key().map(Bytes::copy_from_slice);
            bytes += value.map_or(0, |v| v.len() as u64) + key.map_or(0, |k| k.len() as u64);
            n += 1;
        }
    }
    let cpu_s = (process_cpu_ns() - cpu_before) as f64 / 1e9;
    let wall_s = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "messages": n,
        "bytes": bytes,
        "wall_s": wall_s,
        "client_cpu_s": cpu_s,
        "client_cpu_s_per_message": cpu_s / n.max(1) as f64,
    }))
}

/// `nekhebet-dev delete-topics NAME…`: deletes the topics the benchmarks created.
#[derive(Args, Debug)]
pub struct DeleteTopicsArgs {
    /// Topics to delete; a topic that does not exist is not an error.
    #[arg(required = true)]
    pub topics: Vec<String>,
}

pub async fn delete_topics(
    args: DeleteTopicsArgs,
    config: &Config,
) -> anyhow::Result<std::process::ExitCode> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::admin_config(&config.kafka.brokers, &config.kafka.properties)
            .create()
            .map_err(crate::kafka::redact_error)?;
    let names: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut failed = Vec::new();
    for r in admin.delete_topics(&names, &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => failed.push(format!("{name}: {code}")),
        }
    }
    anyhow::ensure!(failed.is_empty(), "cannot delete {}", failed.join(", "));
    Ok(std::process::ExitCode::SUCCESS)
}
