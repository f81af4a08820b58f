//! `nekhebet-store bench-ceiling FILE`: the physical ceiling the worker is compared with — binary
//! COPY of the same rows into `replay_guard` + `events` (same schema and indexes, ONE transaction),
//! then ONE LMDB write transaction of the same blobs in the configured layout. Prints JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures::pin_mut;
use heed::types::Bytes as RawBytes;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::config::{Config, LmdbLayout};
use crate::envelope::{self, Limits};
use crate::store::PgStore;

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
    let started = Instant::now();
    let tx = client.transaction().await?;
    {
        let sink = tx
            .copy_in("COPY replay_guard (key_id, nonce, issued_at) FROM STDIN (FORMAT binary)")
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ]);
        pin_mut!(writer);
        for e in &envs {
            let h = &e.header;
            writer
                .as_mut()
                .write(&[&h.key_id, &h.nonce, &h.issued_at_ts])
                .await?;
        }
        writer.finish().await?;
    }
    {
        let sink = tx
            .copy_in(
                "COPY events (id, event_type, issued_at, source, content_hash, envelope, key_id, nonce) \
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let types = [
            Type::UUID,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::BYTEA,
            Type::TEXT,
            Type::TEXT,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for e in &envs {
            let h = &e.header;
            let blob: &[u8] = &e.bytes;
            let row: [&(dyn ToSql + Sync); 8] = [
                &h.id,
                &h.event_type,
                &h.issued_at_ts,
                &h.source,
                &h.payload_hash,
                &blob,
                &h.key_id,
                &h.nonce,
            ];
            writer.as_mut().write(&row).await?;
        }
        writer.finish().await?;
    }
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
            "layout": format!("{:?}", config.lmdb.layout).to_lowercase(),
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
    match config.lmdb.layout {
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
