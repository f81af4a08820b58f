//! Following the store in commit order: every row of `events`, each exactly once, in an order that
//! never changes — what the LMDB mirror, the transparency log's integrator and the read API's
//! stream build on.
//!
//! `events.seq` is not that order: seq values are taken before commit, so with concurrent
//! transactions a lower seq can become visible after a higher one. Every row carries `txid`, the id
//! of the transaction that inserted it (migration 0007). The **horizon** ([`DATABASE_HORIZON`]) is
//! the lowest id of a transaction that may still add rows to this database: every transaction
//! below it has finished (committed or rolled back) or runs in another database, so no row with a
//! `txid` below the horizon can ever appear again.
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

/// This database's horizon, computed from the snapshot `s` of the statement it is part of: the
/// lowest transaction id that may still add rows to `events`.
///
/// `pg_snapshot_xmin` alone is cluster-wide: a write transaction left open
/// in ANY database of the server (another application's, another test's) would hold the log back
/// for as long as it stays open. A transaction writes only the database its session is connected
/// to, so the running transactions of `s` (`pg_snapshot_xip`) that are seen running in ANOTHER
/// database (`pg_stat_activity`, `pg_prepared_xacts`) cannot add rows here and are left out. Every
/// other one counts: those of this database, those that ended since `s` was taken (their rows are
/// not in `s`: they are read in a later round), and those whose database this role may not see
/// (`pg_stat_activity` hides other roles' sessions without `pg_read_all_stats`: the horizon is then
/// the cluster-wide one). Below the result, every transaction has ended before `s` or never will
/// write here, and every later one gets an id ≥ `pg_snapshot_xmax(s)`: the rows below it are
/// visible in `s`, and no other row can join them. Running transactions are compared by the low 32
/// bits of their ids (`xid`), unique among transactions running at once.
pub(super) const DATABASE_HORIZON: &str = "(SELECT LEAST(
        pg_snapshot_xmax(s)::text::bigint,
        (SELECT min(x::text::bigint) FROM pg_snapshot_xip(s) AS x
         WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                           WHERE a.datname <> current_database()
                             AND a.backend_xid::text::bigint = x::text::bigint % 4294967296)
           AND NOT EXISTS (SELECT 1 FROM pg_prepared_xacts p
                           WHERE p.database <> current_database()
                             AND p.transaction::text::bigint = x::text::bigint % 4294967296)))
     FROM pg_current_snapshot() AS s)";

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

/// One row of `events` as a follower sees it: its place in commit order, its identity and its
/// envelope's size (the bytes themselves are read separately, by seq, only when the follower needs
/// them; the size lets it bound what it will hold before it reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    pub pos: CommitPos,
    pub id: Uuid,
    pub content_hash: String,
    /// The envelope's size in bytes (`octet_length`, read without the bytes).
    pub bytes: i64,
}

impl Followed {
    /// Where the row's event is, as a lookup by key would say.
    pub fn located(&self) -> super::Located {
        super::Located {
            id: self.id,
            content_hash: self.content_hash.clone(),
            seq: self.pos.seq,
        }
    }
}

impl CommitPos {
    /// After every row.
    pub const END: CommitPos = CommitPos {
        txid: i64::MAX,
        seq: i64::MAX,
    };

    /// The bound "before every row of a transaction at or above `horizon`": rows below it are the
    /// settled ones ([`PgStore::commit_horizon`]).
    pub fn horizon(horizon: i64) -> CommitPos {
        CommitPos {
            txid: horizon,
            seq: i64::MIN,
        }
    }

    /// The bound "up to and including this position".
    pub fn through(self) -> CommitPos {
        CommitPos {
            txid: self.txid,
            seq: self.seq.saturating_add(1),
        }
    }
}

impl PgStore {
    /// The current horizon: every transaction with an id below it has finished or runs in another
    /// database.
    pub async fn commit_horizon(&self) -> Result<i64, PgError> {
        let client = self.pool().get().await?;
        let row = client
            .query_one(&format!("SELECT {DATABASE_HORIZON}"), &[])
            .await?;
        Ok(row.get(0))
    }

    /// Up to `limit` rows after `after` and below `horizon`, in commit order: the settled rows.
    pub async fn follow(
        &self,
        after: CommitPos,
        horizon: i64,
        limit: i64,
    ) -> Result<Vec<Followed>, PgError> {
        self.rows_between(after, CommitPos::horizon(horizon), limit)
            .await
    }

    /// Up to `limit` rows after `after` and before `before` (exclusive), in commit order, settled
    /// or not: with `before` = [`CommitPos::horizon`] these are [`PgStore::follow`]'s rows; the
    /// LMDB mirror also walks the rows above the horizon, and back over those behind its cursor.
    pub async fn rows_between(
        &self,
        after: CommitPos,
        before: CommitPos,
        limit: i64,
    ) -> Result<Vec<Followed>, PgError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT txid, seq, id, content_hash, octet_length(envelope)::bigint FROM events
                 WHERE (txid, seq) > ($1, $2) AND (txid, seq) < ($3, $4)
                 ORDER BY txid, seq
                 LIMIT $5",
                &[&after.txid, &after.seq, &before.txid, &before.seq, &limit],
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
                bytes: r.get(4),
            })
            .collect())
    }

    /// How many rows lie after `after` (below no horizon: also those not settled yet).
    pub async fn count_after(&self, after: CommitPos) -> Result<i64, PgError> {
        self.count_after_capped(after, i64::MAX).await
    }

    /// [`PgStore::count_after`], counted up to `cap`: the count walks the `(txid, seq)` index, so
    /// its cost is bounded by the cap, not by the size of the store (the mirror's lag gauge).
    pub async fn count_after_capped(&self, after: CommitPos, cap: i64) -> Result<i64, PgError> {
        let client = self.pool().get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM (
                     SELECT 1 FROM events WHERE (txid, seq) > ($1, $2) LIMIT $3
                 ) AS lagging",
                &[&after.txid, &after.seq, &cap],
            )
            .await?;
        Ok(row.get(0))
    }
}
