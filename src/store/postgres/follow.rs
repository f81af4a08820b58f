//! Following the store in commit order: every row of `events`, each exactly once, in an order that
//! never changes — what the LMDB mirror, the transparency log's integrator and the read API's
//! stream build on.
//!
//! `events.seq` is not that order: seq values are taken before commit, so with concurrent
//! transactions a lower seq can become visible after a higher one. Every row carries `txid`, the id
//! of the transaction that inserted it (migration 0007). The **horizon** is
//! `pg_snapshot_xmin(pg_current_snapshot())`: every transaction with an id below it has finished
//! (committed or rolled back), so no row with a `txid` below the horizon can ever appear again.
//! A follower reads only rows below a horizon, in `(txid, seq)` order, and remembers the last
//! [`CommitPos`] it took: the next read starts after it. Nothing is skipped (a row below the
//! horizon is visible now and forever; a row at or above it is read in a later round) and nothing
//! moves (rows below a horizon form a prefix of every later reading).
//!
//! The price: a transaction that stays open holds the horizon back, so followers wait for the
//! oldest running writer (a batch lasts milliseconds; a hand-opened transaction that inserted
//! something, or a prepared transaction, delays them until it ends). Rows stored before migration
//! 0007 have `txid` 0 and come first, in seq order.

use uuid::Uuid;

use super::{PgError, PgStore};

/// A row's place in commit order: its inserting transaction's id, then its seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitPos {
    pub txid: i64,
    pub seq: i64,
}

impl CommitPos {
    /// Before every row.
    pub const START: CommitPos = CommitPos {
        txid: -1,
        seq: i64::MIN,
    };
}

/// One row of `events` as a follower sees it (the envelope bytes are read separately, by seq,
/// only when the follower needs them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    pub pos: CommitPos,
    pub id: Uuid,
    pub content_hash: String,
}

impl PgStore {
    /// The current horizon: every transaction with an id below it has finished.
    pub async fn commit_horizon(&self) -> Result<i64, PgError> {
        let client = self.pool().get().await?;
        let row = client
            .query_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Up to `limit` rows after `after` and below `horizon`, in commit order.
    pub async fn follow(
        &self,
        after: CommitPos,
        horizon: i64,
        limit: i64,
    ) -> Result<Vec<Followed>, PgError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT txid, seq, id, content_hash FROM events
                 WHERE (txid, seq) > ($1, $2) AND txid < $3
                 ORDER BY txid, seq
                 LIMIT $4",
                &[&after.txid, &after.seq, &horizon, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Followed {
                pos: CommitPos {
                    txid: r.get(0),
                    seq: r.get(1),
                },
                id: r.get(2),
                content_hash: r.get(3),
            })
            .collect())
    }

    /// How many rows lie after `after` (below no horizon: also those not settled yet).
    pub async fn count_after(&self, after: CommitPos) -> Result<i64, PgError> {
        let client = self.pool().get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM events WHERE (txid, seq) > ($1, $2)",
                &[&after.txid, &after.seq],
            )
            .await?;
        Ok(row.get(0))
    }
}
