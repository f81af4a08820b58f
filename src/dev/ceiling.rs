//! `nekhebet-store bench-ceiling FILE`: the physical ceiling the worker is compared with — the
//! worker's binary COPY of the same rows into `replay_guard` + `events` (same schema and indexes,
//! ONE transaction instead of one per batch, no Kafka),
//! then ONE LMDB write transaction of the same blobs in the configured layout. Prints JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use heed::types::Bytes as RawBytes;

use crate::config::{Config, LmdbLayout};
use crate::envelope::{self, Envelope, Header, Limits};
use crate::partition::Position;
use crate::store::{postgres, PgStore};

#[derive(Args, Debug)]
pub struct CeilingArgs {
    /// JSONL envelopes (the same data the worker ingests).
    pub file: PathBuf,
}

pub async fn run(args: CeilingArgs, config: &Config) -> anyhow::Result<std::process::ExitCode> {
    let text =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let limits = Limits {
        max_message_bytes: config.limits.max_message_bytes,
    };
    let envs: Vec<_> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| envelope::decode(Bytes::copy_from_slice(l), &limits).ok())
        .collect();
    anyhow::ensure!(
        !envs.is_empty(),
        "no decodable envelope in {}",
        args.file.display()
    );

    let pg = PgStore::connect(&config.postgres)
        .await
        .context("connecting to PostgreSQL")?;
    pg.migrate().await?;
    let mut client = pg.pool().get().await?;
    // The ceiling writes rows nothing verified: never into a database that holds a store.
    let held: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM events LIMIT 1) e) \
                  + (SELECT count(*) FROM (SELECT 1 FROM replay_guard LIMIT 1) g)",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(
        held == 0,
        "bench-ceiling writes unverified rows: it only runs against an empty database, and this \
         one holds events or replay-guard rows (point postgres.url at a fresh database)"
    );
    let started = Instant::now();
    let tx = client.transaction().await?;
    // The worker's own COPY statements, so the ceiling writes exactly the rows it would.
    let digests = crate::store::plan::envelope_digests(&envs);
    let guard: Vec<(&Header, &crate::store::plan::Digest)> =
        envs.iter().map(|e| &e.header).zip(&digests).collect();
    postgres::copy_guard(&tx, &guard).await?;
    let seqs = postgres::next_seqs(&tx, envs.len()).await?;
    let rows: Vec<(&Envelope, Option<&Position>, i64)> = envs
        .iter()
        .zip(seqs)
        .map(|(e, seq)| (e, None, seq))
        .collect();
    postgres::copy_events(&tx, &rows).await?;
    tx.commit().await?;
    let pg_seconds = started.elapsed().as_secs_f64();

    let lmdb_seconds = lmdb_one_txn(config, &envs)?;
    let rows = envs.len() as f64;
    let total = pg_seconds + lmdb_seconds;
    println!(
        "{}",
        serde_json::json!({
            "rows": envs.len(),
            "postgres_seconds": pg_seconds,
            "lmdb_seconds": lmdb_seconds,
            "postgres_rows_per_s": rows / pg_seconds,
            "lmdb_puts_per_s": rows / lmdb_seconds,
            "ceiling_per_s": rows / total,
            "layout": crate::store::lmdb::layout::name(layout(config)),
        })
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// One synced write transaction of all blobs into a fresh environment, in the configured layout.
fn lmdb_one_txn(config: &Config, envs: &[crate::envelope::Envelope]) -> anyhow::Result<f64> {
    std::fs::create_dir_all(&config.lmdb.path)?;
    let mut opts = heed::EnvOpenOptions::new();
    opts.map_size(64 << 30).max_dbs(8);
    // SAFETY: a fresh directory of the benchmark's own, opened once in this process.
    #[allow(unsafe_code)]
    let env = unsafe { opts.open(&config.lmdb.path) }?;
    let started = Instant::now();
    let mut wtxn = env.write_txn()?;
    match layout(config) {
        LmdbLayout::Compatible => {
            let db: heed::Database<RawBytes, RawBytes> =
                env.create_database(&mut wtxn, Some("events"))?;
            for e in envs {
                db.put_with_flags(
                    &mut wtxn,
                    heed::PutFlags::NO_OVERWRITE,
                    e.header.payload_hash.as_bytes(),
                    &e.bytes,
                )?;
            }
        }
        LmdbLayout::Append => {
            let db: heed::Database<RawBytes, RawBytes> =
                env.create_database(&mut wtxn, Some("blobs"))?;
            for (seq, e) in envs.iter().enumerate() {
                db.put_with_flags(
                    &mut wtxn,
                    heed::PutFlags::APPEND,
                    &(seq as u64 + 1).to_be_bytes(),
                    &e.bytes,
                )?;
            }
        }
    }
    wtxn.commit()?;
    Ok(started.elapsed().as_secs_f64())
}

/// The configured layout, else the one a new hybrid environment gets.
fn layout(config: &Config) -> LmdbLayout {
    config
        .lmdb
        .layout
        .unwrap_or(crate::store::lmdb::layout::for_new_environment(false))
}
