//! Sizes for `status`: how many events, and how much disk the ingest tables take.

use super::{PgError, PgStore};

/// Below this many rows (PostgreSQL's own estimate) `status` counts events exactly; above, a
/// `count(*)` every refresh would scan a large table, and the planner's estimate is close enough.
const EXACT_COUNT_BELOW: f32 = 200_000.0;

/// The number of events, and whether it was counted or estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EventCount {
    pub count: i64,
    pub exact: bool,
}

/// Bytes on disk, indexes and TOAST included (`pg_total_relation_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TableSizes {
    pub events_bytes: i64,
    pub replay_guard_bytes: i64,
}

impl PgStore {
    /// Events stored: exact while the table is small, else the planner's estimate
    /// (`pg_class.reltuples`, kept by autovacuum/ANALYZE).
    pub async fn event_count(&self) -> Result<EventCount, PgError> {
        let client = self.pool().get().await?;
        // reltuples is -1 for a table never analyzed: count it.
        let estimate: f32 = client
            .query_one(
                "SELECT reltuples FROM pg_class WHERE oid = 'events'::regclass",
                &[],
            )
            .await?
            .get(0);
        if estimate >= EXACT_COUNT_BELOW {
            return Ok(EventCount {
                count: estimate as i64,
                exact: false,
            });
        }
        let count: i64 = client
            .query_one("SELECT count(*) FROM events", &[])
            .await?
            .get(0);
        Ok(EventCount { count, exact: true })
    }

    pub async fn table_sizes(&self) -> Result<TableSizes, PgError> {
        let client = self.pool().get().await?;
        let row = client
            .query_one(
                "SELECT pg_total_relation_size('events'), pg_total_relation_size('replay_guard')",
                &[],
            )
            .await?;
        Ok(TableSizes {
            events_bytes: row.get(0),
            replay_guard_bytes: row.get(1),
        })
    }
}
