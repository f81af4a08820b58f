//! `nekhebet-store reconcile [--repair]`: PostgreSQL (authoritative) against LMDB, as a merge of two
//! streams in content-hash order, so memory stays flat whatever the size of the store.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;

use crate::config::Config;
use crate::store::lmdb::BlobBatch;
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
    pub repaired: u64,
}

pub async fn run(config: &Config, repair: bool) -> anyhow::Result<ExitCode> {
    let store = Store::open(config).await.context("opening the store")?;
    let report = reconcile(&store, repair).await?;
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
    let unrepaired = report.missing.len() as u64 - report.repaired
        + report.orphans.len() as u64
        + report.differing.len() as u64;
    Ok(if unrepaired == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Compares the two stores; with `repair`, writes PostgreSQL's bytes for every missing blob.
pub async fn reconcile(store: &Store, repair: bool) -> anyhow::Result<Report> {
    let crate::store::Store::Hybrid(hybrid) = store else {
        anyhow::bail!("reconcile compares PostgreSQL with LMDB: set store.mode = \"hybrid\"");
    };
    if hybrid.layout() != crate::config::LmdbLayout::Compatible {
        anyhow::bail!("reconcile supports lmdb.layout = \"compatible\" only (the append layout heals itself from PostgreSQL's seq on redelivery)");
    }
    let (pg, lmdb) = (hybrid.pg(), hybrid.lmdb());
    let (total, _) = pg.counts().await?;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    let mut report = Report::default();
    let mut pg_rows = Box::pin(pg.stream_by_hash().await?);
    let mut page: std::collections::VecDeque<(String, Vec<u8>)> = Default::default();
    let mut after: Option<String> = None;
    let mut lmdb_done = false;
    let mut repairs = BlobBatch::default();

    let mut next_pg = pg_rows.next().await.transpose()?;
    loop {
        if page.is_empty() && !lmdb_done {
            let chunk = lmdb.scan(after.clone(), 1024).await?;
            lmdb_done = chunk.len() < 1024;
            after = chunk.last().map(|c| c.0.clone());
            page.extend(chunk);
        }
        let next_lmdb = page.front();
        match (&next_pg, next_lmdb) {
            (None, None) => break,
            (Some((h, bytes)), None) => {
                report.missing.push(h.clone());
                repairs
                    .blobs
                    .push((h.clone(), bytes::Bytes::from(bytes.clone())));
                next_pg = pg_rows.next().await.transpose()?;
                bar.inc(1);
            }
            (None, Some(_)) => {
                if let Some((h, _)) = page.pop_front() {
                    report.orphans.push(h);
                }
            }
            (Some((ph, pbytes)), Some((lh, lbytes))) => match ph.as_str().cmp(lh.as_str()) {
                std::cmp::Ordering::Less => {
                    report.missing.push(ph.clone());
                    repairs
                        .blobs
                        .push((ph.clone(), bytes::Bytes::from(pbytes.clone())));
                    next_pg = pg_rows.next().await.transpose()?;
                    bar.inc(1);
                }
                std::cmp::Ordering::Greater => {
                    if let Some((h, _)) = page.pop_front() {
                        report.orphans.push(h);
                    }
                }
                std::cmp::Ordering::Equal => {
                    report.compared += 1;
                    if pbytes != lbytes {
                        report.differing.push(ph.clone());
                    }
                    page.pop_front();
                    next_pg = pg_rows.next().await.transpose()?;
                    bar.inc(1);
                }
            },
        }
        if repair && repairs.blobs.len() >= 1000 {
            report.repaired += lmdb.put_blobs(std::mem::take(&mut repairs)).await? as u64;
        }
    }
    if repair && !repairs.blobs.is_empty() {
        report.repaired += lmdb.put_blobs(repairs).await? as u64;
    }
    bar.finish_and_clear();
    Ok(report)
}
