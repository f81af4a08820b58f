//! `nekhebet-store import [FILE|-]`: JSONL envelopes through the worker's batch path.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;

use crate::config::Config;
use crate::pipeline::Checker;
use crate::store::{Item, Outcome, Store};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// JSONL file, one wire envelope a line; `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
    /// Envelopes per batch (one PostgreSQL and one LMDB transaction each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
}

/// Per-outcome and per-reason tallies of an import.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub outcomes: BTreeMap<Outcome, u64>,
    pub rejected: BTreeMap<crate::reason::Reason, u64>,
    pub lines: u64,
}

pub async fn run(args: ImportArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let store = Store::open(config).await.context("opening the store")?;
    let checker = Arc::new(Checker::from_config(config)?);
    let input: Box<dyn BufRead + Send> = match &args.file {
        Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        _ => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let progress = if std::io::stderr().is_terminal() {
        let total = args
            .file
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len());
        let bar = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::no_length(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };

    let summary = import(
        input,
        &store,
        checker,
        args.batch_size as usize,
        |bytes, s| {
            if let Some(bar) = &progress {
                bar.inc(bytes);
                bar.set_message(format!("{} lines", s.lines));
            }
        },
    )
    .await?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    println!("lines       {}", summary.lines);
    for o in Outcome::ALL {
        println!(
            "{:<11} {}",
            o.as_str(),
            summary.outcomes.get(&o).copied().unwrap_or(0)
        );
    }
    let rejected: u64 = summary.rejected.values().sum();
    println!("{:<11} {}", "rejected", rejected);
    for (reason, n) in &summary.rejected {
        println!("  {reason:<30} {n}");
    }
    Ok(if rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads lines, checks them in batches and saves each batch. Rejected lines are reported on stderr
/// with their line number and never stop the import.
pub async fn import(
    mut input: Box<dyn BufRead + Send>,
    store: &Store,
    checker: Arc<Checker>,
    batch_size: usize,
    mut on_progress: impl FnMut(u64, &ImportSummary),
) -> anyhow::Result<ImportSummary> {
    let mut summary = ImportSummary::default();
    let mut eof = false;
    while !eof {
        let mut lines: Vec<(u64, Bytes)> = Vec::with_capacity(batch_size);
        let mut read_bytes = 0u64;
        while lines.len() < batch_size {
            let mut buf = Vec::new();
            let n = input.read_until(b'\n', &mut buf).context("reading input")?;
            if n == 0 {
                eof = true;
                break;
            }
            read_bytes += n as u64;
            summary.lines += 1;
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are layout, not messages
            }
            lines.push((summary.lines, Bytes::from(buf)));
        }
        if lines.is_empty() {
            continue;
        }
        let numbers: Vec<u64> = lines.iter().map(|l| l.0).collect();
        let raw: Vec<Bytes> = lines.into_iter().map(|l| l.1).collect();
        let c = checker.clone();
        let verdicts =
            tokio::task::spawn_blocking(move || c.check(raw, chrono::Utc::now())).await?;
        let mut items = Vec::with_capacity(verdicts.len());
        for (line, verdict) in numbers.iter().zip(verdicts) {
            match verdict {
                Ok(envelope) => items.push(Item {
                    envelope,
                    pos: None,
                }),
                Err(r) => {
                    eprintln!("line {line}: rejected ({}): {}", r.reason, r.detail);
                    *summary.rejected.entry(r.reason).or_default() += 1;
                }
            }
        }
        if !items.is_empty() {
            let outcomes = save_with_retry(store, &items).await?;
            for (item, o) in items.iter().zip(outcomes) {
                match o {
                    Ok(o) => *summary.outcomes.entry(o).or_default() += 1,
                    Err(detail) => {
                        eprintln!(
                            "event {}: refused by the store: {detail}",
                            item.envelope.header.id
                        );
                        *summary
                            .rejected
                            .entry(crate::reason::Reason::StoreRejected)
                            .or_default() += 1;
                    }
                }
            }
        }
        on_progress(read_bytes, &summary);
    }
    Ok(summary)
}

async fn save_with_retry(
    store: &Store,
    items: &[Item],
) -> anyhow::Result<Vec<Result<Outcome, String>>> {
    let mut delay = std::time::Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match store.save_batch_isolating(items).await {
            Ok(o) => return Ok(o),
            Err(e) if e.is_retriable() && attempt < 8 => {
                tracing::warn!(error = %e, attempt, "transient store failure; retrying the batch");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
                attempt += 1;
            }
            Err(e) => return Err(e).context("saving a batch"),
        }
    }
}
