//! `nekhebet-store import [FILE|-]`: JSONL envelopes through the worker's batch path.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dlq::DlqError;
use crate::envelope::Rejection;
use crate::ingest::apply::{Applied, Applier, Fate, RetryPolicy, Sink};
use crate::partition::Position;
use crate::pipeline::Checker;
use crate::store::{Outcome, Store};

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

/// Reads lines, checks them in batches and applies each batch the way the worker does (one
/// implementation: [`crate::ingest::apply`]). Rejected lines are reported on stderr with their line
/// number and never stop the import.
pub async fn import(
    mut input: Box<dyn BufRead + Send>,
    store: &Store,
    checker: Arc<Checker>,
    batch_size: usize,
    mut on_progress: impl FnMut(u64, &ImportSummary),
) -> anyhow::Result<ImportSummary> {
    let mut summary = ImportSummary::default();
    let mut applier = Applier::new(
        store.clone(),
        RetryPolicy {
            attempts: Some(8),
            ..RetryPolicy::default()
        },
        CancellationToken::new(),
        None,
    );
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
        let values: Vec<Option<Bytes>> = lines.into_iter().map(|l| Some(l.1)).collect();
        let c = checker.clone();
        let verdicts =
            tokio::task::spawn_blocking(move || c.check_each(&values, chrono::Utc::now())).await?;
        let sink = Lines { numbers: &numbers };
        let Applied {
            fates,
            saved,
            mut report,
        } = applier
            .apply(verdicts, &sink)
            .await
            .context("saving a batch")?;
        let mut written = 0;
        applier
            .write_lmdb(&saved, &mut written, Ok(()), &mut report)
            .await
            .context("saving a batch to LMDB")?;
        for fate in fates {
            match fate {
                Fate::Done(o) => *summary.outcomes.entry(o).or_default() += 1,
                Fate::Rejected(r) => *summary.rejected.entry(r).or_default() += 1,
                Fate::Pending | Fate::Abandoned => {
                    anyhow::bail!("internal error: a line was left without an outcome")
                }
            }
        }
        on_progress(read_bytes, &summary);
    }
    Ok(summary)
}

/// A batch of input lines: all ours; a refused line is reported with its number.
struct Lines<'a> {
    numbers: &'a [u64],
}

impl Sink for Lines<'_> {
    fn owns(&self, _: usize) -> bool {
        true
    }

    fn position(&self, _: usize) -> Option<&Position> {
        None
    }

    fn value(&self, _: usize) -> Option<&Bytes> {
        None
    }

    async fn reject(&self, refused: &[(usize, &Rejection)]) -> Vec<Result<(), DlqError>> {
        refused
            .iter()
            .map(|(i, r)| {
                eprintln!(
                    "line {}: rejected ({}): {}",
                    self.numbers[*i], r.reason, r.detail
                );
                Ok(())
            })
            .collect()
    }
}
