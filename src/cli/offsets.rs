//! `nekhebet-store offsets show|reset`: the stored offsets of a topic next to Kafka's, and the
//! documented way to move them all at once — after a topic was deleted and re-created (the worker
//! stops and names this command), or to skip or re-read part of a topic on purpose.
//!
//! A reset sets, per partition, the next offset to read: the stores' applied offset becomes
//! `next − 1` (PostgreSQL and LMDB, whichever the store mode has) and the group's committed offset
//! becomes `next`. It refuses while the group has members (a running worker would overwrite it
//! with its next commit and keep its own idea of where it is), and changes nothing without `--yes`.

use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use serde::Serialize;

use super::positions::{self, blocking, PartitionRow, Probe};
use super::table::{opt, Align, Table};
use crate::config::{Config, StoreMode};
use crate::kafka::group;
use crate::partition::{Partition, Position};

#[derive(clap::Subcommand, Debug)]
pub enum OffsetsCommand {
    /// Per partition: the applied offset in PostgreSQL and LMDB, the group's committed offset,
    /// the low and high watermarks, where a worker resumes, the lag and the owner.
    Show {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: Option<i32>,
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Make a worker of the group read `--to` next: earliest (the low watermark), latest (the high
    /// watermark) or an OFFSET. Sets the stores' applied offsets to that − 1 and commits it for the
    /// group. Refused while the group has members; prints the change and applies it only with
    /// `--yes`. Run it as the database owner (as `migrate`), or a role with UPDATE and INSERT on
    /// nekhebet_consumer_offsets.
    Reset {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: Option<i32>,
        #[arg(long)]
        to: Target,
        /// Apply the change (without it: a dry run).
        #[arg(long)]
        yes: bool,
    },
}

/// Where a reset points a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Earliest,
    Latest,
    Offset(i64),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        match s {
            "earliest" => Ok(Target::Earliest),
            "latest" => Ok(Target::Latest),
            n => match n.parse::<i64>() {
                Ok(o) if o >= 0 => Ok(Target::Offset(o)),
                _ => Err(format!(
                    "{s:?}: expected earliest, latest or an offset (a number ≥ 0)"
                )),
            },
        }
    }
}

impl Target {
    /// The next offset to read in a partition holding `[low, high)`.
    fn next(self, low: i64, high: i64) -> Result<i64, String> {
        match self {
            Target::Earliest => Ok(low),
            Target::Latest => Ok(high),
            Target::Offset(o) if (low..=high).contains(&o) => Ok(o),
            Target::Offset(o) => Err(format!(
                "offset {o} is outside what the partition holds ({low} to {high}): a worker would \
                 skip to the earliest offset (below) or wait for messages that may never come \
                 (above)"
            )),
        }
    }
}

pub async fn run(command: OffsetsCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        OffsetsCommand::Show {
            topic,
            partition,
            json,
        } => show(config, &topic, partition, json).await,
        OffsetsCommand::Reset {
            topic,
            partition,
            to,
            yes,
        } => reset(config, &topic, partition, to, yes).await,
    }
}

#[derive(Serialize)]
struct ShowDocument<'a> {
    topic: &'a str,
    group: &'a str,
    store_mode: String,
    partitions: &'a [PartitionRow],
    problems: &'a [String],
}

async fn show(
    config: &Config,
    topic: &str,
    partition: Option<i32>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let probe = Probe::open(config, "nekhebet-store-offsets").await?;
    let (members, mut problems) = match probe.members().await {
        Ok(m) => (m, Vec::new()),
        Err(e) => (Vec::new(), vec![format!("{e:#}")]),
    };
    let (rows, more) = probe.topic(topic, partition, &members).await;
    problems.extend(more);
    if json {
        let doc = ShowDocument {
            topic,
            group: &config.kafka.group_id,
            store_mode: config.store.mode.to_string(),
            partitions: &rows,
            problems: &problems,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "topic {topic}, group {}, store {}",
            config.kafka.group_id, config.store.mode
        );
        println!(
            "{}",
            positions::table(&rows, |r| r.partition.to_string()).render()
        );
        for r in rows.iter().filter(|r| r.beyond_end) {
            println!(
                "partition {}: the stores hold offsets at or beyond its end (high watermark {}): \
                 the topic was re-created? see `nekhebet-store offsets reset --help`",
                r.partition,
                opt(r.high)
            );
        }
    }
    for p in &problems {
        eprintln!("problem: {p}");
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One partition's change.
struct Change {
    row: PartitionRow,
    next: i64,
}

async fn reset(
    config: &Config,
    topic: &str,
    partition: Option<i32>,
    to: Target,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let probe = Probe::open(config, "nekhebet-store-offsets").await?;
    let store = probe.store()?.clone();
    let group_id = &config.kafka.group_id;
    let members = probe.members().await.with_context(|| {
        format!(
            "cannot tell whether a worker of group {group_id} is running, so nothing was changed"
        )
    })?;
    if !members.is_empty() {
        let who: Vec<String> = members.iter().map(|m| m.label()).collect();
        eprintln!(
            "refused: consumer group {group_id} has {} active member(s): {}. Stop the workers of \
             the group first (a running worker keeps its own position and would commit over the \
             reset); nothing was changed.",
            members.len(),
            who.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    let (rows, problems) = probe.topic(topic, partition, &members).await;
    if !problems.is_empty() {
        anyhow::bail!(
            "nothing was changed, because not every side could be read:\n  {}",
            problems.join("\n  ")
        );
    }
    let changes = rows
        .into_iter()
        .map(|row| {
            let (Some(low), Some(high)) = (row.low, row.high) else {
                anyhow::bail!(
                    "partition {} of {topic} is not in Kafka (only a store remembers it): nothing \
                     to reset it to; nothing was changed (reset the others one by one with \
                     --partition)",
                    row.partition
                );
            };
            let next = to.next(low, high).map_err(|e| {
                anyhow::anyhow!("partition {}: {e}; nothing was changed", row.partition)
            })?;
            Ok(Change { row, next })
        })
        .collect::<anyhow::Result<Vec<Change>>>()?;

    println!(
        "reset of topic {topic} for group {group_id} (store {}): the next offset to read becomes",
        config.store.mode
    );
    println!("{}", change_table(config.store.mode, &changes).render());
    if !yes {
        println!("dry run: nothing was changed; add --yes to apply");
        return Ok(ExitCode::SUCCESS);
    }

    let applied: Vec<Position> = changes
        .iter()
        .map(|c| Position::new(topic, c.row.partition, c.next - 1))
        .collect();
    if let Some(pg) = store.postgres() {
        pg.set_applied_offsets(&applied).await.context(
            "PostgreSQL: setting the applied offsets failed and nothing was changed anywhere (the \
             reset needs UPDATE and INSERT on nekhebet_consumer_offsets: run it as the database \
             owner)",
        )?;
        println!("PostgreSQL: applied offsets set");
    }
    if let Some(lmdb) = store.lmdb() {
        lmdb.set_offsets(applied.clone()).await.with_context(|| {
            format!(
                "LMDB ({}): setting the applied offsets (PostgreSQL was already changed: run the \
                 same command again)",
                config.lmdb.path.display()
            )
        })?;
        println!("LMDB: applied offsets set");
    }
    let commits: Vec<(Partition, i64)> = changes
        .iter()
        .map(|c| (Partition::new(topic, c.row.partition), c.next))
        .collect();
    blocking(probe.kafka(), move |c| group::commit(c, &commits))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "Kafka: committing the offsets of group {group_id}: {e} (the stores were already \
                 changed: run the same command again once the group is empty)"
            )
        })?;
    println!("Kafka: committed for group {group_id}");
    Ok(ExitCode::SUCCESS)
}

fn change_table(mode: StoreMode, changes: &[Change]) -> Table {
    let mut t = Table::new(&[
        ("partition", Align::Right),
        ("low", Align::Right),
        ("high", Align::Right),
        ("postgres applied", Align::Right),
        ("lmdb applied", Align::Right),
        ("committed", Align::Right),
    ]);
    let (has_pg, has_lmdb) = match mode {
        StoreMode::Hybrid => (true, true),
        StoreMode::Postgres => (true, false),
        StoreMode::Lmdb => (false, true),
    };
    let moved = |now: Option<i64>, new: i64| format!("{} → {new}", opt(now));
    for c in changes {
        let r = &c.row;
        t.row(vec![
            r.partition.to_string(),
            opt(r.low),
            opt(r.high),
            if has_pg {
                moved(r.postgres_applied, c.next - 1)
            } else {
                "-".into()
            },
            if has_lmdb {
                moved(r.lmdb_applied, c.next - 1)
            } else {
                "-".into()
            },
            moved(r.kafka_committed, c.next),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!("earliest".parse(), Ok(Target::Earliest));
        assert_eq!("latest".parse(), Ok(Target::Latest));
        assert_eq!("42".parse(), Ok(Target::Offset(42)));
        assert!("-1".parse::<Target>().is_err());
        assert!("first".parse::<Target>().is_err());
        assert_eq!(Target::Earliest.next(5, 9), Ok(5));
        assert_eq!(Target::Latest.next(5, 9), Ok(9));
        assert_eq!(Target::Offset(9).next(5, 9), Ok(9));
        assert!(Target::Offset(4).next(5, 9).is_err());
        assert!(Target::Offset(10).next(5, 9).is_err());
    }
}
