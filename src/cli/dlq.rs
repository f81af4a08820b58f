//! `nekhebet-store dlq inspect|redrive`: what is in the dead-letter topics, and putting letters
//! back into their source topic once their cause is fixed (a key registered, a limit raised).

mod letter;
mod redrive;

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use super::positions::blocking;
use super::table::{Align, Table};
use crate::config::Config;
use crate::kafka::group;
use letter::{Filter, Letter, Range};

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// Counts by reason, then the dead letters (reason, detail, source position, time, sizes).
    /// Reads without a consumer group: nothing is committed, workers are not disturbed.
    Inspect {
        /// The dead-letter topic; default: the dead-letter topic of each configured source topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only letters with this reason code (docs/reasons.md).
        #[arg(long)]
        reason: Option<String>,
        /// Only letters dead-lettered at or after this RFC 3339 instant.
        #[arg(long)]
        since: Option<String>,
        /// At most this many letters listed (the counts cover every selected letter).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON lines: one `"kind":"counts"` object per topic, then one `"kind":"letter"` object
        /// per letter.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters to their source topic and partition (original key, value and
    /// headers, plus a `nekhebet.redrive` header naming the run), so they go through the worker
    /// again. Progress is committed for the consumer group `<kafka.group_id>.redrive` (with
    /// `--reason R`: `<kafka.group_id>.redrive.R`) after each published batch: a run can be
    /// resumed, and a letter is re-driven once — a run skips letters the other kind of run
    /// already re-drove. Letters read but not selected by `--since` are passed over for good by
    /// the run's group. Truncated letters (the DLQ refused the full one) are listed and never
    /// re-driven: their bytes are incomplete. A letter written to the topic after the run started
    /// (one that failed again) waits for the next run.
    Redrive {
        /// The dead-letter topic.
        #[arg(long)]
        topic: String,
        /// Only letters with this reason code.
        #[arg(long)]
        reason: Option<String>,
        /// Only letters dead-lettered at or after this RFC 3339 instant.
        #[arg(long)]
        since: Option<String>,
        /// List what would be re-driven; publish and commit nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(command: DlqCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::Inspect {
            topic,
            reason,
            since,
            limit,
            json,
        } => {
            let filter = Filter::new(reason, since.as_deref())?;
            let topics = match topic {
                Some(t) => vec![(t, true)],
                None => crate::dlq::dlq_topics(config)
                    .into_iter()
                    .map(|t| (t, false))
                    .collect(),
            };
            for (topic, named) in topics {
                inspect(config, &topic, named, &filter, limit, json).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive {
            topic,
            reason,
            since,
            dry_run,
        } => {
            let filter = Filter::new(reason, since.as_deref())?;
            redrive::run(config, &topic, &filter, dry_run).await
        }
    }
}

/// Every partition of `topic` from its low to its high watermark; `None` when the topic does not
/// exist.
async fn whole_topic(config: &Config, topic: &str) -> anyhow::Result<Option<BTreeMap<i32, Range>>> {
    let consumer = std::sync::Arc::new(
        group::tool_consumer(&config.kafka, None, "nekhebet-store-dlq")
            .context("creating the Kafka client")?,
    );
    let t = topic.to_string();
    let partitions = blocking(consumer.clone(), move |c| match group::partitions(c, &t) {
        Ok(p) => Ok(Some(p)),
        Err(e) if group::is_unknown_topic(&e) => Ok(None),
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| anyhow::anyhow!("Kafka: cannot list the partitions of {topic}: {e}"))?;
    let Some(partitions) = partitions else {
        return Ok(None);
    };
    let t = topic.to_string();
    let ranges = blocking(consumer, move |c| {
        partitions
            .into_iter()
            .map(|p| {
                let (low, high) = group::watermarks(c, &t, p)?;
                Ok::<_, rdkafka::error::KafkaError>((
                    p,
                    Range {
                        from: low,
                        until: high,
                    },
                ))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
    })
    .await
    .map_err(|e| anyhow::anyhow!("Kafka: cannot read the watermarks of {topic}: {e}"))?;
    Ok(Some(ranges))
}

#[derive(Serialize)]
struct Counts<'a> {
    kind: &'static str,
    dlq_topic: &'a str,
    letters: u64,
    selected: u64,
    by_reason: &'a BTreeMap<String, u64>,
}

async fn inspect(
    config: &Config,
    topic: &str,
    named: bool,
    filter: &Filter,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let Some(ranges) = whole_topic(config, topic).await? else {
        if named {
            anyhow::bail!("dead-letter topic {topic} does not exist");
        }
        if !json {
            println!("{topic}: no such topic (nothing dead-lettered yet)");
        }
        return Ok(());
    };
    let reader = group::range_reader(&config.kafka, "nekhebet-store-dlq")
        .context("creating the Kafka client")?;
    let mut letters = letter::read(reader, topic, ranges);
    let (mut total, mut selected) = (0u64, 0u64);
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let mut listed: Vec<Letter> = Vec::new();
    while let Some(l) = letters.recv().await {
        let l = l.with_context(|| format!("reading {topic}"))?;
        total += 1;
        if !filter.matches(&l) {
            continue;
        }
        selected += 1;
        *by_reason.entry(l.reason.clone()).or_default() += 1;
        if listed.len() < limit {
            listed.push(l);
        }
    }
    if json {
        let counts = Counts {
            kind: "counts",
            dlq_topic: topic,
            letters: total,
            selected,
            by_reason: &by_reason,
        };
        println!("{}", serde_json::to_string(&counts)?);
        for l in &listed {
            println!("{}", serde_json::to_string(&l.summary())?);
        }
        return Ok(());
    }
    println!("dead-letter topic {topic}: {total} letters, {selected} selected");
    let mut counts = Table::new(&[("reason", Align::Left), ("letters", Align::Right)]);
    for (reason, n) in &by_reason {
        counts.row(vec![reason.clone(), n.to_string()]);
    }
    println!("{}\n", counts.render());
    println!("{}", letters_table(&listed).render());
    if selected > listed.len() as u64 {
        println!(
            "… {} more selected letters not listed (raise --limit)",
            selected - listed.len() as u64
        );
    }
    println!();
    Ok(())
}

fn letters_table(letters: &[Letter]) -> Table {
    let mut t = Table::new(&[
        ("letter", Align::Left),
        ("time", Align::Left),
        ("reason", Align::Left),
        ("source", Align::Left),
        ("key/value bytes", Align::Right),
        ("detail", Align::Left),
    ]);
    for l in letters {
        let s = l.summary();
        let sizes = match l.truncated {
            Some((k, v)) => format!("{}/{} of {k}/{v} (truncated)", s.key_bytes, s.value_bytes),
            None => format!("{}/{}", s.key_bytes, s.value_bytes),
        };
        t.row(vec![
            format!("{}/{}", l.at.partition.number, l.at.offset),
            l.timestamp.map_or_else(
                || "-".into(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
            l.reason.clone(),
            l.source
                .as_ref()
                .map_or_else(|| "-".into(), ToString::to_string),
            sizes,
            shorten(&l.detail, 60),
        ]);
    }
    t
}

/// `s` cut to `max` characters with an ellipsis (the table stays readable; JSON has it whole).
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}
