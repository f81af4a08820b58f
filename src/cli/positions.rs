//! Where each partition stands, from every side at once: the stores' applied offsets (PostgreSQL
//! and LMDB), the group's committed offset, the watermarks, the lag and the owner. `offsets` and
//! `status` both read it through a [`Probe`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::consumer::BaseConsumer;
use serde::Serialize;

use super::table::{opt, Align, Table};
use crate::config::Config;
use crate::ingest::ledger::resume_offset;
use crate::kafka::group::{self, Member};
use crate::partition::Partition;
use crate::store::Store;

/// One partition, as every side sees it. Offsets are Kafka offsets; `None` where a side has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionRow {
    pub topic: String,
    pub partition: i32,
    /// Highest offset applied in PostgreSQL (`nekhebet_consumer_offsets`).
    pub postgres_applied: Option<i64>,
    /// Highest offset applied in LMDB (its `offsets` database).
    pub lmdb_applied: Option<i64>,
    /// The group's committed offset: the next offset to read.
    pub kafka_committed: Option<i64>,
    /// First offset the partition still holds.
    pub low: Option<i64>,
    /// The offset the next message will get.
    pub high: Option<i64>,
    /// Where a worker resumes: the later of the stores' applied offset + 1 and the committed offset.
    pub next: Option<i64>,
    /// Messages a worker still has to read: `high − next` (`high − low` with no offset anywhere).
    pub lag: Option<i64>,
    /// The stores hold offsets at or beyond the partition's end: the topic was re-created (or this
    /// is another cluster), and the worker refuses to start on it.
    pub beyond_end: bool,
    /// The group member that owns the partition, `client_id@host`.
    pub owner: Option<String>,
}

/// The sides a [`Probe`] could not read, as sentences for the operator.
pub type Problems = Vec<String>;

/// Reads the stores and Kafka for the configured group.
pub struct Probe {
    config: Config,
    store: Result<Store, String>,
    /// An LMDB read failed: the environment is opened again before the next look. A worker that
    /// grew the map past this process's mapping makes every read fail (MDB_MAP_RESIZED) until then.
    lmdb_failed: AtomicBool,
    kafka: Arc<BaseConsumer>,
}

impl Probe {
    /// Opens the configured store and a Kafka client with the group's id (it never joins). A store
    /// that cannot be opened is remembered as a problem ([`Probe::store`] reports it, `status`
    /// shows it and tries again on the next refresh).
    pub async fn open(config: &Config, client_id: &str) -> anyhow::Result<Probe> {
        let kafka = group::tool_consumer(&config.kafka, Some(&config.kafka.group_id), client_id)
            .map_err(|e| anyhow::anyhow!("creating the Kafka client: {e}"))?;
        Ok(Probe {
            config: config.clone(),
            store: open_store(config).await,
            lmdb_failed: AtomicBool::new(false),
            kafka: Arc::new(kafka),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The open store, or why it could not be opened.
    pub fn store(&self) -> anyhow::Result<&Store> {
        self.store.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Opens the store again if the last attempt failed (PostgreSQL was down, say) or an LMDB read
    /// failed since.
    pub async fn retry_store(&mut self) {
        if self.store.is_err() || self.lmdb_failed.swap(false, Ordering::SeqCst) {
            // The old environment must be closed first: heed opens a path once per process.
            self.store = Err("reopening".into());
            self.store = open_store(&self.config).await;
        }
    }

    pub fn kafka(&self) -> Arc<BaseConsumer> {
        self.kafka.clone()
    }

    /// The group's members, with the partitions each owns.
    pub async fn members(&self) -> anyhow::Result<Vec<Member>> {
        let group_id = self.config.kafka.group_id.clone();
        blocking(self.kafka.clone(), move |c| group::members(c, &group_id))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "describing consumer group {}: {e}",
                    self.config.kafka.group_id
                )
            })
    }

    /// Every partition of `topic` (or only `only`) that Kafka or a store knows, with what each
    /// side says. What could not be read is left `None` and explained in the problems.
    pub async fn topic(
        &self,
        topic: &str,
        only: Option<i32>,
        members: &[Member],
    ) -> (Vec<PartitionRow>, Problems) {
        let mut problems = Problems::new();
        let name = topic.to_string();
        let in_kafka = blocking(self.kafka.clone(), move |c| group::partitions(c, &name))
            .await
            .unwrap_or_else(|e| {
                problems.push(format!("Kafka: cannot list the partitions of {topic}: {e}"));
                Vec::new()
            });
        let stored = self.stored(topic, &mut problems).await;
        let numbers: BTreeSet<i32> = in_kafka
            .iter()
            .copied()
            .chain(stored.postgres.keys().copied())
            .chain(stored.lmdb.keys().copied())
            .filter(|n| only.is_none_or(|o| o == *n))
            .collect();
        if let Some(o) = only {
            if !numbers.contains(&o) {
                problems.push(format!(
                    "partition {o} of {topic}: Kafka does not have it and no store holds an offset for it"
                ));
            }
        }
        let partitions: Vec<Partition> =
            numbers.iter().map(|n| Partition::new(topic, *n)).collect();

        let marks = self.watermarks(&partitions, &mut problems).await;
        let committed = {
            let ps = partitions.clone();
            match blocking(self.kafka.clone(), move |c| group::committed(c, &ps)).await {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!(
                        "Kafka: cannot read the committed offsets of group {}: {e}",
                        self.config.kafka.group_id
                    ));
                    BTreeMap::new()
                }
            }
        };
        // The stores' resume point as the worker computes it (hybrid: the lower of the two).
        let applied = match self.store() {
            Ok(store) => match store.applied_offsets(&partitions).await {
                Ok(a) => a,
                Err(e) => {
                    problems.push(format!("cannot read the stores' applied offsets: {e}"));
                    Default::default()
                }
            },
            Err(_) => Default::default(),
        };

        let rows = partitions
            .iter()
            .map(|p| {
                let (low, high) = match marks.get(p) {
                    Some((l, h)) => (Some(*l), Some(*h)),
                    None => (None, None),
                };
                let stores_applied = applied.get(p).copied();
                let kafka_committed = committed.get(p).copied();
                let next = resume_offset(stores_applied, kafka_committed).or(low);
                let beyond_end = matches!((stores_applied, high), (Some(a), Some(h)) if a >= h);
                PartitionRow {
                    topic: topic.to_string(),
                    partition: p.number,
                    postgres_applied: stored.postgres.get(&p.number).copied(),
                    lmdb_applied: stored.lmdb.get(&p.number).copied(),
                    kafka_committed,
                    low,
                    high,
                    next,
                    lag: match (high, next) {
                        (Some(h), Some(n)) => Some((h - n).max(0)),
                        _ => None,
                    },
                    beyond_end,
                    owner: members
                        .iter()
                        .find(|m| m.partitions.contains(p))
                        .map(Member::label),
                }
            })
            .collect();
        (rows, problems)
    }

    /// The stores' offsets of `topic`, each side on its own (PostgreSQL, LMDB).
    async fn stored(&self, topic: &str, problems: &mut Problems) -> StoredOffsets {
        let mut out = StoredOffsets::default();
        let store = match self.store() {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{e:#}"));
                return out;
            }
        };
        if let Some(pg) = store.postgres() {
            match pg.topic_offsets(topic).await {
                Ok(o) => out.postgres = o,
                Err(e) => problems.push(format!(
                    "PostgreSQL: cannot read nekhebet_consumer_offsets: {e}"
                )),
            }
        }
        if let Some(lmdb) = store.lmdb() {
            match lmdb.topic_offsets(topic.to_string()).await {
                Ok(o) => out.lmdb = o,
                Err(e) => {
                    self.lmdb_failed.store(true, Ordering::SeqCst);
                    problems.push(format!(
                        "LMDB ({}): cannot read the offsets database: {e}",
                        self.config.lmdb.path.display()
                    ))
                }
            }
        }
        out
    }

    async fn watermarks(
        &self,
        partitions: &[Partition],
        problems: &mut Problems,
    ) -> BTreeMap<Partition, (i64, i64)> {
        let ps = partitions.to_vec();
        let results = blocking(self.kafka.clone(), move |c| {
            Ok::<_, std::convert::Infallible>(
                ps.into_iter()
                    .map(|p| {
                        let r = group::watermarks(c, &p.topic, p.number);
                        (p, r)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap_or_else(|e| {
            problems.push(format!("Kafka: cannot read the watermarks: {e}"));
            Vec::new()
        });
        let mut out = BTreeMap::new();
        for (p, r) in results {
            match r {
                Ok(m) => {
                    out.insert(p, m);
                }
                Err(e) => problems.push(format!("Kafka: cannot read the watermarks of {p}: {e}")),
            }
        }
        out
    }
}

/// The rows as a table; `label` names each row's partition (`0`, or `topic/0` across topics).
pub fn table(rows: &[PartitionRow], label: fn(&PartitionRow) -> String) -> Table {
    let mut t = Table::new(&[
        ("partition", Align::Right),
        ("postgres", Align::Right),
        ("lmdb", Align::Right),
        ("committed", Align::Right),
        ("low", Align::Right),
        ("high", Align::Right),
        ("next", Align::Right),
        ("lag", Align::Right),
        ("owner", Align::Left),
    ]);
    for r in rows {
        t.row(vec![
            label(r),
            opt(r.postgres_applied),
            opt(r.lmdb_applied),
            opt(r.kafka_committed),
            opt(r.low),
            opt(r.high),
            opt(r.next),
            opt(r.lag),
            r.owner.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

#[derive(Default)]
struct StoredOffsets {
    postgres: BTreeMap<i32, i64>,
    lmdb: BTreeMap<i32, i64>,
}

async fn open_store(config: &Config) -> Result<Store, String> {
    Store::open(config)
        .await
        .map_err(|e| format!("cannot open the store ({}): {e}", config.store.mode))
}

/// Runs a blocking Kafka call on the blocking pool.
pub async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    consumer: Arc<BaseConsumer>,
    f: impl FnOnce(&BaseConsumer) -> Result<T, E> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(move || f(&consumer)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the Kafka call did not finish: {e}")),
    }
}
