//! One look at everything `status` shows, as a serializable document (its field names are the
//! stable `--json` format, documented in README "Operating"), and the collector that takes it.

use serde::Serialize;

use super::scrape::{Outcomes, Scraper};
use crate::cli::positions::{PartitionRow, Probe};
use crate::config::Config;
use crate::kafka::group::Member;
use crate::store::postgres::{tlog, CommitPos, EventCount, PgError, PgStore, TableSizes};
use crate::store::LmdbStore;

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When it was taken (RFC 3339, UTC).
    pub at: String,
    pub group: String,
    pub store_mode: String,
    pub partitions: Vec<PartitionRow>,
    pub members: Vec<MemberView>,
    pub totals: Totals,
    /// From `--metrics`; `null` without it (or before the second scrape).
    pub outcomes: Option<Outcomes>,
    /// What could not be read, as sentences; empty when everything answered.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    /// `topic/partition` of each partition it owns.
    pub partitions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Sum of the partitions' lag.
    pub lag: i64,
    pub events: Option<EventCount>,
    pub postgres: Option<TableSizes>,
    pub lmdb: Option<LmdbSizes>,
    /// The transparency log; `null` when `tlog.enabled` is false (or PostgreSQL did not answer).
    pub tlog: Option<TlogStatus>,
    /// Hybrid mode with the LMDB mirror on: PostgreSQL rows after the mirror's stored cursor in
    /// this LMDB (an upper bound of what it lacks; a running process's
    /// `nekhebet_lmdb_mirror_lag_events` also counts the rows it copied ahead); `null` otherwise.
    pub lmdb_mirror_behind: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlogStatus {
    /// Leaves in the tree (events integrated).
    pub leaves: u64,
    /// Events stored and not yet integrated.
    pub unlogged: i64,
    /// The latest published checkpoint; `null` before the first.
    pub checkpoint: Option<CheckpointStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointStatus {
    pub size: u64,
    pub signed: bool,
    /// Seconds since it was published.
    pub age_seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LmdbSizes {
    /// `data.mdb` on disk.
    pub file_bytes: u64,
    /// Pages in use.
    pub used_bytes: u64,
    /// The map size (the most the file can grow to before the next resize).
    pub map_bytes: u64,
}

/// Takes snapshots of the configured group and topics.
pub struct Collector {
    probe: Probe,
    scraper: Option<Scraper>,
}

impl Collector {
    pub async fn new(config: &Config, metrics: Option<&str>) -> anyhow::Result<Collector> {
        Ok(Collector {
            probe: Probe::open(config, "nekhebet-store-status").await?,
            scraper: metrics.map(Scraper::new).transpose()?,
        })
    }

    pub fn scrapes(&self) -> bool {
        self.scraper.is_some()
    }

    /// A first scrape of the worker's metrics, the start of the outcomes window (a failure shows
    /// up in the snapshot's problems, when the scrape is tried again).
    pub async fn scrape_first(&mut self) {
        if let Some(s) = &mut self.scraper {
            let _ = s.sample().await;
        }
    }

    pub async fn snapshot(&mut self) -> Snapshot {
        self.probe.retry_store().await;
        let config = self.probe.config().clone();
        let mut problems = Vec::new();
        let members = match self.probe.members().await {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{e:#}"));
                Vec::new()
            }
        };
        let mut partitions = Vec::new();
        for topic in &config.kafka.topics {
            let (rows, more) = self.probe.topic(topic, None, &members).await;
            partitions.extend(rows);
            problems.extend(more);
        }
        let totals = self.totals(&config, &partitions, &mut problems).await;
        let outcomes = match &mut self.scraper {
            Some(s) => match s.sample().await {
                Ok(o) => o,
                Err(e) => {
                    problems.push(format!("metrics: {e:#}"));
                    None
                }
            },
            None => None,
        };
        problems.dedup();
        Snapshot {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            group: config.kafka.group_id.clone(),
            store_mode: config.store.mode.to_string(),
            partitions,
            members: members.iter().map(member_view).collect(),
            totals,
            outcomes,
            problems,
        }
    }

    async fn totals(
        &self,
        config: &Config,
        partitions: &[PartitionRow],
        problems: &mut Vec<String>,
    ) -> Totals {
        let mut totals = Totals {
            lag: partitions.iter().filter_map(|p| p.lag).sum(),
            events: None,
            postgres: None,
            lmdb: None,
            tlog: None,
            lmdb_mirror_behind: None,
        };
        let Ok(store) = self.probe.store() else {
            return totals; // reported with the partitions
        };
        if let Some(pg) = store.postgres() {
            match pg.event_count().await {
                Ok(c) => totals.events = Some(c),
                Err(e) => problems.push(format!("PostgreSQL: counting events: {e}")),
            }
            match pg.table_sizes().await {
                Ok(s) => totals.postgres = Some(s),
                Err(e) => problems.push(format!("PostgreSQL: table sizes: {e}")),
            }
            if config.tlog.enabled {
                match tlog_status(pg).await {
                    Ok(t) => totals.tlog = Some(t),
                    Err(e) => problems.push(format!("PostgreSQL: the transparency log: {e}")),
                }
            }
        }
        if let (Some(pg), Some(lmdb)) = (store.postgres(), store.lmdb()) {
            if config.lmdb.mirror_rate > 0 {
                match mirror_behind(pg, lmdb).await {
                    Ok(n) => totals.lmdb_mirror_behind = Some(n),
                    Err(e) => problems.push(format!("the LMDB mirror's position: {e}")),
                }
            }
        }
        if let Some(lmdb) = store.lmdb() {
            if totals.events.is_none() {
                match lmdb.len().await {
                    Ok(n) => {
                        totals.events = Some(EventCount {
                            count: n as i64,
                            exact: true,
                        })
                    }
                    Err(e) => problems.push(format!("LMDB: counting blobs: {e}")),
                }
            }
            let (map_bytes, used_bytes) = lmdb.usage();
            let file = config.lmdb.path.join("data.mdb");
            match std::fs::metadata(&file) {
                Ok(m) => {
                    totals.lmdb = Some(LmdbSizes {
                        file_bytes: m.len(),
                        used_bytes,
                        map_bytes,
                    })
                }
                Err(e) => problems.push(format!("LMDB: {}: {e}", file.display())),
            }
        }
        totals
    }
}

async fn mirror_behind(pg: &PgStore, lmdb: &LmdbStore) -> anyhow::Result<i64> {
    let cursor = lmdb.mirror_cursor().await?.unwrap_or(CommitPos::START);
    Ok(pg.count_after(cursor).await?)
}

async fn tlog_status(pg: &PgStore) -> Result<TlogStatus, PgError> {
    let client = pg.pool().get().await?;
    let head = tlog::head(&client).await?;
    let checkpoint = tlog::latest_checkpoint(&client).await?;
    drop(client);
    let unlogged = pg
        .count_after(head.as_ref().map_or(CommitPos::START, |h| h.cursor))
        .await?;
    Ok(TlogStatus {
        leaves: head.map_or(0, |h| h.size),
        unlogged,
        checkpoint: checkpoint.map(|c| CheckpointStatus {
            size: c.size,
            signed: c.signed,
            age_seconds: (chrono::Utc::now() - c.published_at)
                .num_milliseconds()
                .max(0) as f64
                / 1000.0,
        }),
    })
}

fn member_view(m: &Member) -> MemberView {
    MemberView {
        member_id: m.member_id.clone(),
        client_id: m.client_id.clone(),
        host: m.host.clone(),
        partitions: m.partitions.iter().map(ToString::to_string).collect(),
    }
}
