//! `dlq redrive`: re-publishes selected dead letters to where they came from, so the worker
//! decides them again once their cause is fixed.
//!
//! Progress lives in Kafka, as a consumer group's committed offsets on the dead-letter topic
//! (the tool never joins the group: it assigns and commits). An unfiltered run uses
//! `<kafka.group_id>.redrive`; a run with `--reason R` uses `<kafka.group_id>.redrive.R`, so
//! re-driving one reason does not pass over the letters of the others. A letter counts as re-driven
//! when it is below the committed offset of either group that covers it (the unfiltered one, or
//! the one of its reason), and every run skips those: each letter is re-driven once. Commits follow
//! each published batch; a crash between a publish and its commit re-drives that batch again
//! (at-least-once, like the dead-letter topic itself), which the worker's redelivery and
//! idempotency checks absorb.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use super::letter::{self, Filter, Letter, Range, SINK_HEADERS};
use crate::cli::positions::blocking;
use crate::config::Config;
use crate::kafka::group;
use crate::partition::Partition;

/// The header a re-driven message carries: which run re-published it, when, and from where.
pub const H_REDRIVE: &str = "nekhebet.redrive";

/// Letters published (and acknowledged) before the group's offsets are committed.
const BATCH: usize = 200;

/// What a run does with one letter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Redrive,
    /// Below the committed offset of this group: a run of it re-drove (or passed over) it.
    Already(String),
    /// The DLQ kept only the first KiB of its key and value.
    Truncated {
        key_bytes: u64,
        value_bytes: u64,
    },
    /// No `nekhebet.source.*` headers: not a letter of this worker.
    NoSource,
    /// Another reason than `--reason`.
    OtherReason,
    /// Dead-lettered before `--since`.
    BeforeSince,
}

#[derive(Debug, Default)]
struct Tally {
    redriven: u64,
    already: u64,
    truncated: u64,
    no_source: u64,
    other_reason: u64,
    before_since: u64,
}

pub async fn run(
    config: &Config,
    topic: &str,
    filter: &Filter,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let Some(whole) = super::whole_topic(config, topic).await? else {
        anyhow::bail!("dead-letter topic {topic} does not exist");
    };
    let base = format!("{}.redrive", config.kafka.group_id);
    let own_group = match &filter.reason {
        Some(r) => format!("{base}.{r}"),
        None => base.clone(),
    };
    let partitions: Vec<Partition> = whole.keys().map(|p| Partition::new(topic, *p)).collect();
    let own = Progress::read(config, &own_group, &partitions).await?;
    let mut others = Others::new(config, &base, filter.reason.is_some(), &partitions).await?;
    // From the group's committed offset (or the start), to the end as it is now: letters that fail
    // again during this run land after it and wait for the next run.
    let ranges: BTreeMap<i32, Range> = whole
        .iter()
        .map(|(p, r)| {
            let committed = own.offsets.get(&Partition::new(topic, *p)).copied();
            let from = committed.map_or(r.from, |c| c.max(r.from));
            (
                *p,
                Range {
                    from,
                    until: r.until,
                },
            )
        })
        .collect();

    let run_id = Uuid::new_v4();
    println!(
        "{} {topic} with group {own_group} (run {run_id}){}",
        if dry_run {
            "dry run of the re-drive of"
        } else {
            "re-driving"
        },
        describe_ranges(&ranges)
    );
    let producer: FutureProducer =
        crate::kafka::letter_producer_config(&config.kafka, config.limits.max_message_bytes)
            .create()
            .map_err(crate::kafka::redact_error)
            .context("creating the Kafka producer")?;
    let reader = group::range_reader(&config.kafka, "nekhebet-store-redrive")
        .context("creating the Kafka client")?;
    let mut letters = letter::read(reader, topic, ranges);
    let mut tally = Tally::default();
    let mut batch: Vec<Letter> = Vec::new();
    // Per partition, the offset after the last letter read: what the group commits.
    let mut read_to: BTreeMap<Partition, i64> = BTreeMap::new();
    let stamp = Stamp::new(run_id);

    loop {
        let next = letters.recv().await;
        let end = next.is_none();
        if let Some(l) = next {
            let l = l.with_context(|| format!("reading {topic}"))?;
            read_to.insert(l.at.partition.clone(), l.at.offset + 1);
            let verdict = judge(&l, filter, &mut others).await?;
            report(&l, &verdict, dry_run, &mut tally);
            if verdict == Verdict::Redrive {
                batch.push(l);
            }
        }
        if batch.len() >= BATCH || (end && !batch.is_empty()) {
            if !dry_run {
                publish(&producer, &batch, &stamp).await?;
            }
            batch.clear();
            if !dry_run {
                own.commit(&read_to).await?;
            }
        }
        if end {
            break;
        }
    }
    if !dry_run && !read_to.is_empty() {
        // Letters read after the last publish (all skipped) are done too.
        own.commit(&read_to).await?;
    }
    let verb = if dry_run {
        "would re-drive"
    } else {
        "re-driven"
    };
    println!(
        "summary: {verb} {}, already re-driven {}, skipped {} (truncated {}, not a letter of ours {}), not \
         selected {} (other reasons {}, before --since {})",
        tally.redriven,
        tally.already,
        tally.truncated + tally.no_source,
        tally.truncated,
        tally.no_source,
        tally.other_reason + tally.before_since,
        tally.other_reason,
        tally.before_since
    );
    if dry_run {
        println!("dry run: nothing was published, nothing committed");
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_ranges(ranges: &BTreeMap<i32, Range>) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|(p, r)| format!("partition {p}: offsets {} to {}", r.from, r.until))
        .collect();
    format!(": {}", parts.join(", "))
}

async fn judge(l: &Letter, filter: &Filter, others: &mut Others) -> anyhow::Result<Verdict> {
    if filter.reason.as_ref().is_some_and(|r| *r != l.reason) {
        return Ok(Verdict::OtherReason);
    }
    if !filter.matches(l) {
        return Ok(Verdict::BeforeSince);
    }
    if let Some(group) = others.handled(l).await? {
        return Ok(Verdict::Already(group));
    }
    if let Some((key_bytes, value_bytes)) = l.truncated {
        return Ok(Verdict::Truncated {
            key_bytes,
            value_bytes,
        });
    }
    if l.source.is_none() {
        return Ok(Verdict::NoSource);
    }
    Ok(Verdict::Redrive)
}

/// One line per letter the operator should know about; counts for all.
fn report(l: &Letter, v: &Verdict, dry_run: bool, tally: &mut Tally) {
    let at = &l.at;
    match v {
        Verdict::Redrive => {
            tally.redriven += 1;
            let to = l
                .source
                .as_ref()
                .map(|s| s.partition.to_string())
                .unwrap_or_default();
            let verb = if dry_run {
                "would re-drive"
            } else {
                "re-drive"
            };
            println!("{verb:<14}  {at} → {to}  {}", l.reason);
        }
        Verdict::Already(group) => {
            tally.already += 1;
            println!(
                "{:<14}  {at}  {} (below the committed offset of {group})",
                "already", l.reason
            );
        }
        Verdict::Truncated {
            key_bytes,
            value_bytes,
        } => {
            tally.truncated += 1;
            println!(
                "{:<14}  {at}  {}: truncated — the dead-letter topic kept only the first {} bytes \
                 of its {key_bytes}-byte key and {value_bytes}-byte value; re-publish the original \
                 from its producer",
                "skip",
                l.reason,
                crate::dlq::TRUNCATED_BYTES
            );
        }
        Verdict::NoSource => {
            tally.no_source += 1;
            println!(
                "{:<14}  {at}: no nekhebet.source.* headers — not a dead letter of this worker",
                "skip"
            );
        }
        Verdict::OtherReason => tally.other_reason += 1,
        Verdict::BeforeSince => tally.before_since += 1,
    }
}

/// The `nekhebet.redrive` header's value for one letter: JSON naming the run, the time and the
/// letter it came from.
struct Stamp {
    run: Uuid,
    at: String,
}

impl Stamp {
    fn new(run: Uuid) -> Stamp {
        Stamp {
            run,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    fn for_letter(&self, l: &Letter) -> String {
        serde_json::json!({
            "run": self.run.to_string(),
            "at": self.at,
            "from": l.at.to_string(),
            "reason": l.reason,
        })
        .to_string()
    }
}

/// Publishes a batch to the letters' source partitions and waits for every acknowledgement.
async fn publish(producer: &FutureProducer, batch: &[Letter], stamp: &Stamp) -> anyhow::Result<()> {
    let sends = batch.iter().map(|l| async move {
        let Some(source) = &l.source else {
            return Ok(()); // judged NoSource before; never in a batch
        };
        let redrive = stamp.for_letter(l);
        let mut headers = OwnedHeaders::new_with_capacity(l.headers.len() + 1);
        for (k, v) in &l.headers {
            if !SINK_HEADERS.contains(&k.as_str()) && k != H_REDRIVE {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
        }
        headers = headers.insert(Header {
            key: H_REDRIVE,
            value: Some(redrive.as_str()),
        });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&source.partition.topic)
            .partition(source.partition.number)
            .headers(headers);
        if let Some(k) = l.key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = l.value.as_deref() {
            record = record.payload(v);
        }
        producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| (l, e))
    });
    for result in join_all(sends).await {
        if let Err((l, e)) = result {
            anyhow::bail!(
                "publishing {} back to {}: {e}. Nothing of this batch was committed: the next run \
                 re-drives the batch again (the worker stores nothing twice)",
                l.at,
                l.source
                    .as_ref()
                    .map(|s| s.partition.to_string())
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// A group's committed offsets on the dead-letter topic.
struct Progress {
    group: String,
    consumer: Arc<BaseConsumer>,
    offsets: BTreeMap<Partition, i64>,
}

impl Progress {
    async fn read(
        config: &Config,
        group: &str,
        partitions: &[Partition],
    ) -> anyhow::Result<Progress> {
        let consumer = Arc::new(
            group::tool_consumer(&config.kafka, Some(group), "nekhebet-store-redrive")
                .context("creating the Kafka client")?,
        );
        let ps = partitions.to_vec();
        let offsets = blocking(consumer.clone(), move |c| group::committed(c, &ps))
            .await
            .map_err(|e| {
                anyhow::anyhow!("Kafka: reading the committed offsets of group {group}: {e}")
            })?;
        Ok(Progress {
            group: group.to_string(),
            consumer,
            offsets,
        })
    }

    fn covers(&self, l: &Letter) -> bool {
        self.offsets
            .get(&l.at.partition)
            .is_some_and(|c| l.at.offset < *c)
    }

    async fn commit(&self, read_to: &BTreeMap<Partition, i64>) -> anyhow::Result<()> {
        let offsets: Vec<(Partition, i64)> = read_to.iter().map(|(p, o)| (p.clone(), *o)).collect();
        blocking(self.consumer.clone(), move |c| group::commit(c, &offsets))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "Kafka: committing the progress of group {}: {e}. The letters published so far \
                     are re-driven again by the next run (the worker stores nothing twice)",
                    self.group
                )
            })
    }
}

/// The groups of the other kind of run, whose progress also marks letters as re-driven: for a
/// `--reason` run the unfiltered group; for an unfiltered run the group of each letter's reason
/// (read the first time a reason shows up).
struct Others {
    config: Config,
    base: String,
    partitions: Vec<Partition>,
    /// Filtered run: the unfiltered group.
    unfiltered: Option<Progress>,
    /// Unfiltered run: reason → its group's progress.
    by_reason: BTreeMap<String, Progress>,
}

impl Others {
    async fn new(
        config: &Config,
        base: &str,
        filtered: bool,
        partitions: &[Partition],
    ) -> anyhow::Result<Others> {
        let unfiltered = if filtered {
            Some(Progress::read(config, base, partitions).await?)
        } else {
            None
        };
        Ok(Others {
            config: config.clone(),
            base: base.to_string(),
            partitions: partitions.to_vec(),
            unfiltered,
            by_reason: BTreeMap::new(),
        })
    }

    /// The group under whose committed offset `l` lies, if any.
    async fn handled(&mut self, l: &Letter) -> anyhow::Result<Option<String>> {
        if let Some(u) = &self.unfiltered {
            return Ok(u.covers(l).then(|| u.group.clone()));
        }
        if l.reason.is_empty() {
            return Ok(None);
        }
        if !self.by_reason.contains_key(&l.reason) {
            let group = format!("{}.{}", self.base, l.reason);
            let progress = Progress::read(&self.config, &group, &self.partitions).await?;
            self.by_reason.insert(l.reason.clone(), progress);
        }
        Ok(self
            .by_reason
            .get(&l.reason)
            .filter(|p| p.covers(l))
            .map(|p| p.group.clone()))
    }
}
