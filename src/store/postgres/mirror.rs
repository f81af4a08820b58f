//! What the LMDB mirror ([`crate::store::mirror`]) reads of PostgreSQL beyond [`super::follow`]:
//! rows in commit order between two positions with the size of their envelopes (so the mirror can
//! bound what it holds in memory before it reads the bytes), and a capped count of the rows after
//! a position (its lag gauge, cheap at any size of the store).

use uuid::Uuid;

use super::{CommitPos, PgError, PgStore};

/// A row as the mirror sees it: its place in commit order, its identity and its envelope's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRow {
    pub pos: CommitPos,
    pub id: Uuid,
    pub content_hash: String,
    /// The envelope's size in bytes (`octet_length`, read without the bytes themselves).
    pub bytes: i64,
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
    /// Up to `limit` rows after `after` and before `before` (exclusive), in commit order. With
    /// `before` = [`CommitPos::horizon`] these are [`PgStore::follow`]'s rows.
    pub async fn rows_between(
        &self,
        after: CommitPos,
        before: CommitPos,
        limit: i64,
    ) -> Result<Vec<MirrorRow>, PgError> {
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
            .map(|r| MirrorRow {
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

    /// How many rows lie after `after` (settled or not), counted up to `cap`: the count walks the
    /// `(txid, seq)` index, so its cost is bounded by the cap, not by the size of the store.
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
