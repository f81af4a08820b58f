//! Reading what the batches stored: envelopes by id, content hash or seq, metadata and applied
//! offsets. Large results ([`PgStore::iter_by_type`], [`PgStore::stream_by_hash`]) are streamed
//! from the server, so they never sit in memory.

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, RowStream};
use uuid::Uuid;

use super::{PgError, PgStore};
use crate::partition::Partition;
use crate::store::{AppliedOffsets, EventMetadata};

impl PgStore {
    /// Highest applied offset per partition, as recorded with the batches.
    pub async fn applied_offsets(
        &self,
        partitions: &[Partition],
    ) -> Result<AppliedOffsets, PgError> {
        let client = self.pool.get().await?;
        let topics: Vec<&str> = partitions.iter().map(|p| &*p.topic).collect();
        let parts: Vec<i32> = partitions.iter().map(|p| p.number).collect();
        let rows = client
            .query(
                "SELECT topic, partition, applied_offset FROM nekhebet_consumer_offsets
                 WHERE (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                &[&topics, &parts],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (Partition::new(r.get::<_, &str>(0), r.get(1)), r.get(2)))
            .collect())
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Vec<u8>>, PgError> {
        let sql = "SELECT envelope FROM events WHERE id = $1";
        self.row_for(sql, &id, |r| r.get(0)).await
    }

    pub async fn get_by_hash(&self, hash: &str) -> Result<Option<Vec<u8>>, PgError> {
        let sql = "SELECT envelope FROM events WHERE content_hash = $1";
        self.row_for(sql, &hash, |r| r.get(0)).await
    }

    /// `seq` of the event with this id (append layout lookups).
    pub async fn seq_by_id(&self, id: Uuid) -> Result<Option<i64>, PgError> {
        let sql = "SELECT seq FROM events WHERE id = $1";
        self.row_for(sql, &id, |r| r.get(0)).await
    }

    /// `seq` of the event with this content hash (append layout lookups).
    pub async fn seq_by_hash(&self, hash: &str) -> Result<Option<i64>, PgError> {
        let sql = "SELECT seq FROM events WHERE content_hash = $1";
        self.row_for(sql, &hash, |r| r.get(0)).await
    }

    /// The seqs of those content hashes PostgreSQL holds: where an append-layout LMDB keeps their
    /// blobs.
    pub async fn seqs_of_hashes(&self, hashes: &[String]) -> Result<Vec<i64>, PgError> {
        let sql = "SELECT seq FROM events WHERE content_hash = ANY($1)";
        self.rows_for(sql, hashes, |r| r.get(0)).await
    }

    /// (seq, envelope) of those seqs: the blobs an append-layout LMDB lacks after a crash between
    /// the two commits.
    pub async fn envelopes_by_seq(&self, seqs: &[i64]) -> Result<Vec<(i64, Vec<u8>)>, PgError> {
        let sql = "SELECT seq, envelope FROM events WHERE seq = ANY($1)";
        self.rows_for(sql, seqs, |r| (r.get(0), r.get(1))).await
    }

    pub async fn get_metadata(&self, id: Uuid) -> Result<Option<EventMetadata>, PgError> {
        let sql =
            "SELECT id, event_type, issued_at, source, content_hash FROM events WHERE id = $1";
        self.row_for(sql, &id, |r| EventMetadata {
            id: r.get(0),
            event_type: r.get(1),
            issued_at: r.get(2),
            source: r.get(3),
            content_hash: r.get(4),
        })
        .await
    }

    /// Envelope bytes for those content hashes that PostgreSQL holds (used to heal LMDB).
    pub async fn envelopes_by_hash(
        &self,
        hashes: &[String],
    ) -> Result<Vec<(String, Vec<u8>)>, PgError> {
        let sql = "SELECT content_hash, envelope FROM events WHERE content_hash = ANY($1)";
        self.rows_for(sql, hashes, |r| (r.get(0), r.get(1))).await
    }

    /// Envelopes of one type ordered by `issued_at`, streamed from the server (a portal), so a large
    /// result never sits in memory.
    pub async fn iter_by_type(
        &self,
        event_type: &str,
        limit: Option<i64>,
    ) -> Result<impl Stream<Item = Result<Vec<u8>, PgError>>, PgError> {
        let client = self.pool.get().await?;
        let limit = limit.unwrap_or(i64::MAX);
        let rows = client
            .query_raw(
                "SELECT envelope FROM events WHERE event_type = $1 ORDER BY issued_at ASC LIMIT $2",
                [&event_type as &(dyn ToSql + Sync), &limit],
            )
            .await?;
        Ok(stream_rows(client, rows, |r| r.get(0)))
    }

    /// Deletes replay-guard rows issued AND stored before `older_than`; returns how many.
    pub async fn cleanup_replay_guard(&self, older_than: DateTime<Utc>) -> Result<u64, PgError> {
        let client = self.pool.get().await?;
        // Both times: `issued_at` is the producer's (a key holder can backdate it), `stored_at`
        // ours. A row goes only when both are older than the cutoff, so an envelope that could
        // still claim the nonce is refused by the replay window instead (see the cleanup command).
        Ok(client
            .execute(
                "DELETE FROM replay_guard WHERE stored_at < $1 AND issued_at < $1",
                &[&older_than],
            )
            .await?)
    }

    /// Counts of events and replay-guard rows (for summaries and tests).
    pub async fn counts(&self) -> Result<(i64, i64), PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM replay_guard)",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Every (content_hash, envelope) pair in byte order of the hash (the order of LMDB's keys),
    /// streamed from the server so the whole table never sits in memory.
    pub async fn stream_by_hash(
        &self,
    ) -> Result<impl Stream<Item = Result<(String, Vec<u8>), PgError>>, PgError> {
        let sql = r#"SELECT content_hash, envelope FROM events ORDER BY content_hash COLLATE "C""#;
        self.stream_all(sql, |r| (r.get(0), r.get(1))).await
    }

    /// Every row of `sql` (without parameters) mapped by `row`, streamed from the server.
    pub(super) async fn stream_all<T>(
        &self,
        sql: &str,
        row: fn(Row) -> T,
    ) -> Result<impl Stream<Item = Result<T, PgError>>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query_raw(sql, std::iter::empty::<&(dyn ToSql + Sync)>())
            .await?;
        Ok(stream_rows(client, rows, row))
    }

    /// The row `sql` finds for `key` (its `$1`), if any, mapped by `row`.
    async fn row_for<T>(
        &self,
        sql: &str,
        key: &(dyn ToSql + Sync),
        row: fn(Row) -> T,
    ) -> Result<Option<T>, PgError> {
        let client = self.pool.get().await?;
        Ok(client.query_opt(sql, &[key]).await?.map(row))
    }

    /// The rows `sql` finds for `keys` (its `$1`, an array), mapped by `row`. No keys: no rows,
    /// without asking the server.
    async fn rows_for<K: ToSql + Sync, T>(
        &self,
        sql: &str,
        keys: &[K],
        row: fn(Row) -> T,
    ) -> Result<Vec<T>, PgError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await?;
        let rows = client.query(sql, &[&keys]).await?;
        Ok(rows.into_iter().map(row).collect())
    }
}

/// The rows of a portal, mapped by `row`, holding the pooled client as long as the stream lives.
fn stream_rows<T>(
    client: deadpool_postgres::Object,
    rows: RowStream,
    row: fn(Row) -> T,
) -> impl Stream<Item = Result<T, PgError>> {
    // The pooled client must live as long as the stream.
    futures::stream::unfold(
        (client, Box::pin(rows)),
        move |(client, mut s)| async move {
            let next = s.next().await?;
            Some((next.map(row).map_err(PgError::from), (client, s)))
        },
    )
}
