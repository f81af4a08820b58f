//! `nekhebet-store reconcile [--repair]`: PostgreSQL (authoritative) against LMDB, as a merge of two
//! streams in LMDB's key order (content hash in the compatible layout, seq in the append layout),
//! so memory stays flat whatever the size of the store. `--repair` writes PostgreSQL's bytes for
//! blobs LMDB lacks AND for blobs whose bytes differ (foreign, stale or corrupt: LMDB is a copy);
//! orphans (blobs PostgreSQL does not hold) are reported, never deleted.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;

use crate::config::{Config, LmdbLayout};
use crate::store::lmdb::BlobKey;
use crate::store::Store;

/// What a comparison found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub compared: u64,
    /// In PostgreSQL, not in LMDB.
    pub missing: Vec<String>,
    /// In LMDB, not in PostgreSQL.
    pub orphans: Vec<String>,
    /// In both, with different bytes.
    pub differing: Vec<String>,
    /// Missing and differing blobs written with PostgreSQL's bytes (`--repair`).
    pub repaired: u64,
}

/// Blobs read from LMDB at a time, and repairs written in one transaction.
const PAGE: usize = 1024;

/// One step of the merge of PostgreSQL's rows with LMDB's, both in key order.
enum Step {
    /// In PostgreSQL only.
    Missing((BlobKey, Vec<u8>)),
    /// In LMDB only.
    Orphan(BlobKey),
    /// In both: PostgreSQL's row and LMDB's bytes.
    Both((BlobKey, Vec<u8>), Vec<u8>),
}

pub async fn run(config: &Config, repair: bool) -> anyhow::Result<ExitCode> {
    let store = Store::open(config).await.context("opening the store")?;
    let report = reconcile(&store, repair).await?;
    let keys = match store.lmdb().map(|l| l.layout()) {
        Some(LmdbLayout::Compatible) => "content hashes (the environment's layout: compatible)",
        Some(LmdbLayout::Append) => "seqs (the environment's layout: append)",
        None => "-",
    };
    println!("keys       {keys}");
    println!("compared   {}", report.compared);
    println!(
        "missing    {} (in PostgreSQL, not in LMDB)",
        report.missing.len()
    );
    println!(
        "orphans    {} (in LMDB, not in PostgreSQL)",
        report.orphans.len()
    );
    println!("differing  {}", report.differing.len());
    println!("repaired   {}", report.repaired);
    for (what, list) in [
        ("missing", &report.missing),
        ("orphan", &report.orphans),
        ("differing", &report.differing),
    ] {
        for h in list.iter().take(20) {
            println!("  {what} {h}");
        }
    }
    let unrepaired = (report.missing.len() + report.differing.len()) as u64 - report.repaired
        + report.orphans.len() as u64;
    Ok(if unrepaired == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Compares the two stores; with `repair`, writes PostgreSQL's bytes for every blob LMDB lacks
/// or holds different bytes for (LMDB is a copy of PostgreSQL, never the authority). Both LMDB
/// layouts: content hashes in `events` (compatible), seqs in `blobs` (append).
pub async fn reconcile(store: &Store, repair: bool) -> anyhow::Result<Report> {
    let crate::store::Store::Hybrid(hybrid) = store else {
        anyhow::bail!("reconcile compares PostgreSQL with LMDB: set store.mode = \"hybrid\"");
    };
    let append = match hybrid.layout() {
        LmdbLayout::Compatible => false,
        LmdbLayout::Append => true,
    };
    let (pg, lmdb) = (hybrid.pg(), hybrid.lmdb());
    let (total, _) = pg.counts().await?;
    let bar = progress(total as u64);

    let mut report = Report::default();
    let mut pg_rows = if append {
        let rows = pg.stream_by_seq().await?;
        rows.map(|r| r.map(|(seq, b)| (BlobKey::Seq(seq), b)))
            .boxed()
    } else {
        let rows = pg.stream_by_hash().await?;
        rows.map(|r| r.map(|(h, b)| (BlobKey::Hash(h), b))).boxed()
    };
    let mut page: VecDeque<(BlobKey, Vec<u8>)> = VecDeque::new();
    let mut after: Option<BlobKey> = None;
    let mut lmdb_done = false;
    let mut repairs: Vec<(BlobKey, bytes::Bytes)> = Vec::new();

    let mut next_pg = pg_rows.next().await.transpose()?;
    loop {
        if page.is_empty() && !lmdb_done {
            let chunk = lmdb.scan_blobs(after.clone(), PAGE, append).await?;
            lmdb_done = chunk.len() < PAGE;
            after = chunk.last().map(|c| c.0.clone());
            page.extend(chunk);
        }
        let step = match (next_pg.take(), page.pop_front()) {
            (None, None) => break,
            (Some(p), None) => Step::Missing(p),
            (None, Some(l)) => Step::Orphan(l.0),
            (Some(p), Some(l)) => match p.0.cmp(&l.0) {
                Ordering::Less => {
                    page.push_front(l);
                    Step::Missing(p)
                }
                Ordering::Greater => {
                    next_pg = Some(p);
                    Step::Orphan(l.0)
                }
                Ordering::Equal => Step::Both(p, l.1),
            },
        };
        match step {
            Step::Orphan(key) => {
                report.orphans.push(key.to_string());
                continue; // PostgreSQL's row (if any) is still next
            }
            Step::Missing((key, bytes)) => {
                report.missing.push(key.to_string());
                repairs.push((key, bytes.into()));
            }
            Step::Both((key, pg_bytes), lmdb_bytes) => {
                report.compared += 1;
                if pg_bytes != lmdb_bytes {
                    report.differing.push(key.to_string());
                    repairs.push((key, pg_bytes.into()));
                }
            }
        }
        next_pg = pg_rows.next().await.transpose()?;
        bar.inc(1);
        if repair && repairs.len() >= PAGE {
            report.repaired += lmdb.replace_blobs(std::mem::take(&mut repairs)).await? as u64;
        }
    }
    if repair && !repairs.is_empty() {
        report.repaired += lmdb.replace_blobs(repairs).await? as u64;
    }
    bar.finish_and_clear();
    Ok(report)
}

fn progress(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}
