//! Helpers to drive the worker and the CLI in tests: run `ingest` in-process until it caught up,
//! publish exact bytes to a topic, run the `nekhebet-store` binary, and sign envelopes as a named
//! producer would.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use nekhebet_store::config::Config;
use nekhebet_store::dev::signing::{sign, EnvelopeSpec};
use nekhebet_store::ingest::{self, IngestOptions, IngestReport};
use nekhebet_store::store::Store;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::kafka as k;

/// Runs the worker in-process until every assigned partition is committed up to the high
/// watermark it had when assigned; panics after two minutes.
pub async fn ingest_until_caught_up(config: &Config) -> IngestReport {
    try_ingest_until_caught_up(config)
        .await
        .expect("the worker failed")
}

/// [`ingest_until_caught_up`], returning the worker's error instead of panicking on it.
pub async fn try_ingest_until_caught_up(config: &Config) -> anyhow::Result<IngestReport> {
    let store = Store::open(config).await.expect("open store");
    tokio::time::timeout(
        Duration::from_secs(120),
        ingest::run(
            config,
            store,
            IngestOptions {
                until_caught_up: true,
                ..IngestOptions::default()
            },
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the worker did not catch up within 120 s")
}

/// Publishes `(key, value)` pairs in order (acks=all, idempotent) and returns each one's
/// (partition, offset). A message larger than librdkafka's default needs `max_bytes`.
pub async fn publish(
    topic: &str,
    messages: &[(Vec<u8>, Vec<u8>)],
    max_bytes: Option<usize>,
) -> Vec<(i32, i64)> {
    let mut cfg = nekhebet_store::kafka::producer_config(&k::brokers(), &BTreeMap::new());
    if let Some(max) = max_bytes {
        cfg.set("message.max.bytes", max.to_string());
    }
    let producer: FutureProducer = cfg.create().expect("producer");
    let mut out = Vec::with_capacity(messages.len());
    for (key, value) in messages {
        let record = FutureRecord::<[u8], [u8]>::to(topic)
            .key(&key[..])
            .payload(&value[..]);
        let d = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("publish");
        out.push((d.partition, d.offset));
    }
    out
}

/// Runs the `nekhebet-store` binary with `args` and extra environment; captures its output.
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nekhebet-store"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NEKHEBET_FAILPOINT")
        .output()
        .expect("run nekhebet-store")
}

/// `cli`, with the store settings of a test database and LMDB directory.
pub fn cli_on(db_url: &str, lmdb: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_on(
        env!("CARGO_BIN_EXE_nekhebet-store"),
        db_url,
        lmdb,
        args,
        env,
    )
}

/// [`cli_on`] for the development binary (`produce`, `bench-ceiling`).
pub fn dev_cli_on(db_url: &str, lmdb: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_on(env!("CARGO_BIN_EXE_nekhebet-dev"), db_url, lmdb, args, env)
}

fn run_on(bin: &str, db_url: &str, lmdb: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let lmdb = lmdb.display().to_string();
    Command::new(bin)
        .args(args)
        .env("NEKHEBET_POSTGRES__URL", db_url)
        .env("NEKHEBET_LMDB__PATH", &lmdb)
        .envs(env.iter().copied())
        .env_remove("NEKHEBET_FAILPOINT")
        .output()
        .expect("run the binary")
}

/// `import FILE` on a test database and LMDB directory.
pub fn import_file(db_url: &str, lmdb: &Path, file: &Path) -> Output {
    let file = file.display().to_string();
    cli_on(db_url, lmdb, &["import", &file], &[])
}

/// The value of an outcome row in `import`'s summary (`stored      12`).
pub fn summary_count(stdout: &str, row: &str) -> Option<u64> {
    stdout.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == row).then(|| parts.next()?.parse().ok())?
    })
}

/// Messages a run rejected with the reason whose code is `code`.
pub fn rejected(report: &IngestReport, code: &str) -> u64 {
    report
        .rejected_by_reason
        .iter()
        .filter(|(r, _)| r.as_str() == code)
        .map(|(_, n)| *n)
        .sum()
}

/// A producer: a key_id and its Ed25519 key. Every envelope gets a fresh nonce and id unless the
/// spec says otherwise.
pub struct Producer {
    pub key_id: String,
    pub key: SigningKey,
    n: u64,
}

impl Producer {
    pub fn new(key_id: &str, seed: u8) -> Producer {
        Producer {
            key_id: key_id.to_string(),
            key: SigningKey::from_bytes(&[seed; 32]),
            n: 0,
        }
    }

    /// The spec of this producer's next envelope (fresh id and nonce, a payload of its own).
    pub fn next_spec(&mut self) -> EnvelopeSpec {
        self.n += 1;
        EnvelopeSpec {
            event_type: "omen.observed".into(),
            source: "node-test".into(),
            key_id: self.key_id.clone(),
            payload: serde_json::json!({ "producer": self.key_id, "n": self.n, "salt": uuid::Uuid::new_v4().to_string() }),
            issued_at: None,
            expires_at: None,
            nonce: Some(nonce()),
            id: Some(uuid::Uuid::new_v4()),
        }
    }

    pub fn sign(&self, spec: &EnvelopeSpec) -> Vec<u8> {
        sign(spec, &self.key)
    }

    /// The next envelope, signed.
    pub fn next(&mut self) -> Vec<u8> {
        let spec = self.next_spec();
        self.sign(&spec)
    }
}

/// A fresh 64-hex-digit nonce.
pub fn nonce() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The reference Python venv's interpreter (`scripts/pyenv`: nekhebet-store 4.0.0, lmdb,
/// psycopg2), created on first use.
pub fn python() -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pyenv"))
        .output()
        .expect("scripts/pyenv");
    assert!(
        out.status.success(),
        "scripts/pyenv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("scripts/pyenv prints the venv's python")
        .to_string()
}

/// Runs a Python snippet with the reference venv; panics with its stderr if it fails.
pub fn run_python(code: &str) {
    let out = Command::new(python())
        .args(["-c", code])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
