//! The transparency log's tables (migration 0008): what the integrator reads and appends, what
//! `serve` answers tiles, checkpoints and proofs from, and what `audit` streams. The log's logic
//! is in [`crate::transparency`] (IO) and [`crate::tlog`] (pure); this module only moves rows.
//!
//! Functions take a client (deadpool's, for its statement cache) so that the integrator runs them
//! on its own connection (the one holding the advisory lock) and readers on pooled ones.

use chrono::{DateTime, Utc};
use deadpool_postgres::ClientWrapper as Client;
use futures::{Stream, StreamExt};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use super::copy::CopyRows;
use super::follow::CommitPos;
use super::PgError;
use crate::tlog::{Entry, Hash, HASH_SIZE};
use crate::transparency::hashes::locate;

/// The advisory lock the integrator holds (session level) while it appends: one integrator at a
/// time across every process on the database.
pub const INTEGRATOR_LOCK: i64 = 7_390_412_015;

/// The last leaf: the tree's size and the integrator's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    pub size: u64,
    pub cursor: CommitPos,
}

/// An event waiting to be logged, as the integrator reads it: the entry is computed by the server
/// (`sha256(envelope)`), so the envelope bytes never cross the wire and memory stays at 32 bytes
/// an event whatever the envelopes weigh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub pos: CommitPos,
    pub id: Uuid,
    pub entry: Entry,
    /// `events.created_at`: the start of the transaction that stored it (the integration lag's
    /// origin; the commit came a few milliseconds later).
    pub created_at: DateTime<Utc>,
}

/// A leaf to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLeaf {
    pub index: u64,
    pub pos: CommitPos,
    pub id: Uuid,
    pub entry: Entry,
    /// The stored hashes appending it wrote, in order (see migration 0008).
    pub hashes: Vec<Hash>,
}

/// A published checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub size: u64,
    pub root: Hash,
    /// The note text exactly as served.
    pub note: String,
    pub signed: bool,
    pub published_at: DateTime<Utc>,
}

/// Where an event stands in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLeaf {
    /// No such event.
    NoEvent,
    /// Stored, not logged yet.
    Unlogged,
    /// Leaf index.
    Logged(u64),
}

fn as_i64(n: u64) -> i64 {
    // Tree sizes and leaf indexes are below 2^62 (crate::tlog::MAX_TREE_SIZE).
    i64::try_from(n).expect("log positions are below 2^62")
}

fn as_u64(n: i64, what: &str) -> Result<u64, PgError> {
    u64::try_from(n).map_err(|_| corrupt(format!("{what} {n} is negative")))
}

fn corrupt(message: String) -> PgError {
    PgError {
        kind: super::PgErrorKind::Other,
        message: format!("the transparency log's tables hold an impossible value: {message}"),
    }
}

fn hash_of(bytes: &[u8], what: &str) -> Result<Hash, PgError> {
    let array: [u8; HASH_SIZE] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("{what} is {} bytes, not 32", bytes.len())))?;
    Ok(Hash(array))
}

/// Whether this connection's role may append to the log (INSERT on both tables).
pub async fn can_integrate(client: &Client) -> Result<bool, PgError> {
    let row = client
        .query_one(
            "SELECT has_table_privilege('nekhebet_tlog_leaves', 'INSERT')
                AND has_table_privilege('nekhebet_tlog_checkpoints', 'INSERT')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Takes the integrator's advisory lock for this session, without waiting.
pub async fn try_lock(client: &Client) -> Result<bool, PgError> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&INTEGRATOR_LOCK])
        .await?;
    Ok(row.get(0))
}

/// The last leaf, if any.
pub async fn head(client: &Client) -> Result<Option<LogHead>, PgError> {
    let row = client
        .query_opt(
            "SELECT leaf_index, txid, seq FROM nekhebet_tlog_leaves ORDER BY leaf_index DESC LIMIT 1",
            &[],
        )
        .await?;
    row.map(|r| {
        Ok(LogHead {
            size: as_u64(r.get(0), "leaf_index")? + 1,
            cursor: CommitPos {
                txid: r.get(1),
                seq: r.get(2),
            },
        })
    })
    .transpose()
}

/// Up to `limit` events after `after` in commit order, each settled for good: below this
/// database's horizon ([`super::follow::DATABASE_HORIZON`], from this statement's own snapshot), so its rows are
/// visible now and no other row can join them (see `follow.rs`).
pub async fn pending(
    client: &Client,
    after: CommitPos,
    limit: i64,
) -> Result<Vec<Pending>, PgError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT txid, seq, id, sha256(envelope), created_at FROM events
             WHERE (txid, seq) > ($1, $2)
               AND txid < {}
             ORDER BY txid, seq
             LIMIT $3",
            super::follow::DATABASE_HORIZON
        ))
        .await?;
    let rows = client
        .query(&stmt, &[&after.txid, &after.seq, &limit])
        .await?;
    rows.iter()
        .map(|r| {
            let digest: &[u8] = r.get(3);
            Ok(Pending {
                pos: CommitPos {
                    txid: r.get(0),
                    seq: r.get(1),
                },
                id: r.get(2),
                entry: hash_of(digest, "sha256(envelope)")?.0,
                created_at: r.get(4),
            })
        })
        .collect()
}

const COPY_LEAVES_SQL: &str =
    "COPY nekhebet_tlog_leaves (leaf_index, seq, txid, id, entry, hashes) \
     FROM STDIN (FORMAT binary)";
const COPY_LEAVES_TYPES: [Type; 6] = [
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::UUID,
    Type::BYTEA,
    Type::BYTEA,
];

/// Appends `leaves` in ONE transaction: all of them or none (a crash leaves the tree at a step
/// boundary). The primary key and the unique seq make a second writer's leaves collide rather
/// than interleave.
pub async fn append(client: &mut Client, leaves: &[NewLeaf]) -> Result<(), PgError> {
    let tx = client.transaction().await?;
    let mut copy = CopyRows::new(&COPY_LEAVES_TYPES);
    for leaf in leaves {
        let hashes: Vec<u8> = leaf.hashes.iter().flat_map(|h| h.0).collect();
        let entry: &[u8] = &leaf.entry;
        copy.push(&[
            &as_i64(leaf.index),
            &leaf.pos.seq,
            &leaf.pos.txid,
            &leaf.id,
            &entry,
            &hashes,
        ])?;
    }
    copy.send(&tx, COPY_LEAVES_SQL).await?;
    crate::failpoint::hit("tlog_step_before_commit");
    tx.commit().await?;
    crate::failpoint::hit("tlog_step_after_commit");
    Ok(())
}

/// The stored hashes at `indexes` (each in its leaf's row), in order; a hash whose leaf is absent
/// is left out, which the caller reports as an incomplete log.
pub async fn stored_hashes(client: &Client, indexes: &[u64]) -> Result<Vec<Hash>, PgError> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let places: Vec<(u64, usize)> = indexes.iter().map(|&i| locate(i)).collect();
    let leaves: Vec<i64> = places.iter().map(|&(leaf, _)| as_i64(leaf)).collect();
    let stmt = client
        .prepare_cached(
            "SELECT leaf_index, hashes FROM nekhebet_tlog_leaves WHERE leaf_index = ANY($1)",
        )
        .await?;
    let rows = client.query(&stmt, &[&leaves]).await?;
    let by_leaf: std::collections::HashMap<i64, Vec<u8>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut out = Vec::with_capacity(indexes.len());
    for (leaf, pos) in places {
        let Some(hashes) = by_leaf.get(&as_i64(leaf)) else {
            continue;
        };
        let at = pos * HASH_SIZE;
        let bytes = hashes.get(at..at + HASH_SIZE).ok_or_else(|| {
            corrupt(format!(
                "leaf {leaf} holds {} stored hashes, position {pos} was asked for",
                hashes.len() / HASH_SIZE
            ))
        })?;
        out.push(hash_of(bytes, "a stored hash")?);
    }
    Ok(out)
}

/// The hashes of one tile: tree level `level` (a multiple of 8), nodes `first .. first + width`,
/// each stored in the row of the last leaf it covers at position `level`. Fewer than `width`
/// when leaves are missing.
pub async fn tile_hashes(
    client: &Client,
    level: u32,
    first: u64,
    width: u16,
) -> Result<Vec<Hash>, PgError> {
    let leaves: Vec<i64> = (first..first + u64::from(width))
        .map(|n| as_i64(((n + 1) << level) - 1))
        .collect();
    let from = i32::try_from(level as usize * HASH_SIZE + 1).expect("tile levels are small");
    let stmt = client
        .prepare_cached(
            "SELECT substring(hashes FROM $2 FOR 32) FROM nekhebet_tlog_leaves
             WHERE leaf_index = ANY($1) ORDER BY leaf_index",
        )
        .await?;
    client
        .query(&stmt, &[&leaves, &from])
        .await?
        .iter()
        .map(|r| hash_of(r.get(0), "a tile hash"))
        .collect()
}

/// The entries of leaves `start .. end`, in order (fewer when leaves are missing).
pub async fn entries(client: &Client, start: u64, end: u64) -> Result<Vec<Entry>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT entry FROM nekhebet_tlog_leaves
             WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index",
        )
        .await?;
    client
        .query(&stmt, &[&as_i64(start), &as_i64(end)])
        .await?
        .iter()
        .map(|r| Ok(hash_of(r.get(0), "an entry")?.0))
        .collect()
}

/// Publishes a checkpoint.
pub async fn insert_checkpoint(
    client: &Client,
    size: u64,
    root: &Hash,
    note: &str,
    signed: bool,
) -> Result<(), PgError> {
    let root: &[u8] = &root.0;
    client
        .execute(
            "INSERT INTO nekhebet_tlog_checkpoints (size, root, note, signed) VALUES ($1, $2, $3, $4)",
            &[&as_i64(size), &root, &note, &signed],
        )
        .await?;
    Ok(())
}

fn checkpoint_of(r: &Row) -> Result<StoredCheckpoint, PgError> {
    Ok(StoredCheckpoint {
        size: as_u64(r.get(0), "checkpoint size")?,
        root: hash_of(r.get(1), "a checkpoint root")?,
        note: r.get(2),
        signed: r.get(3),
        published_at: r.get(4),
    })
}

/// The latest published checkpoint.
pub async fn latest_checkpoint(client: &Client) -> Result<Option<StoredCheckpoint>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT size, root, note, signed, published_at FROM nekhebet_tlog_checkpoints
             ORDER BY size DESC LIMIT 1",
        )
        .await?;
    client
        .query_opt(&stmt, &[])
        .await?
        .map(|r| checkpoint_of(&r))
        .transpose()
}

/// Checkpoints larger than `size` (an audit: checkpoints beyond the leaves present).
pub async fn checkpoints_above(
    client: &Client,
    size: u64,
) -> Result<Vec<StoredCheckpoint>, PgError> {
    client
        .query(
            "SELECT size, root, note, signed, published_at FROM nekhebet_tlog_checkpoints
             WHERE size > $1 ORDER BY size",
            &[&as_i64(size)],
        )
        .await?
        .iter()
        .map(checkpoint_of)
        .collect()
}

/// Where event `id` stands in the log.
pub async fn leaf_of_event(client: &Client, id: Uuid) -> Result<EventLeaf, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT l.leaf_index FROM events e
             LEFT JOIN nekhebet_tlog_leaves l ON l.seq = e.seq WHERE e.id = $1",
        )
        .await?;
    Ok(match client.query_opt(&stmt, &[&id]).await? {
        None => EventLeaf::NoEvent,
        Some(r) => match r.get::<_, Option<i64>>(0) {
            None => EventLeaf::Unlogged,
            Some(i) => EventLeaf::Logged(as_u64(i, "leaf_index")?),
        },
    })
}

/// One leaf as `audit` sees it: the leaf's row, the event row at its seq (if any), and the
/// checkpoint published for the tree that ends with it (if any).
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub index: u64,
    pub seq: i64,
    pub id: Uuid,
    pub entry: Vec<u8>,
    pub hashes: Vec<u8>,
    pub event: Option<AuditEvent>,
    pub checkpoint: Option<(Vec<u8>, String, bool)>,
}

/// The event row of a leaf.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub id: Uuid,
    pub content_hash: String,
    pub envelope: Vec<u8>,
}

/// The leaves `start .. end` with their events and checkpoints, streamed in leaf order (one row
/// in memory at a time). Run inside the audit's REPEATABLE READ transaction.
pub async fn audit_rows(
    client: &Client,
    start: u64,
    end: u64,
) -> Result<impl Stream<Item = Result<AuditRow, PgError>>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT l.leaf_index, l.seq, l.id, l.entry, l.hashes,
                    e.id, e.content_hash, e.envelope, c.root, c.note, c.signed
             FROM nekhebet_tlog_leaves l
             LEFT JOIN events e ON e.seq = l.seq
             LEFT JOIN nekhebet_tlog_checkpoints c ON c.size = l.leaf_index + 1
             WHERE l.leaf_index >= $1 AND l.leaf_index < $2
             ORDER BY l.leaf_index",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 2] = [&as_i64(start), &as_i64(end)];
    let rows = client.query_raw(&stmt, params).await?;
    Ok(rows.map(|r| {
        let r = r?;
        let event = r.get::<_, Option<Uuid>>(5).map(|id| AuditEvent {
            id,
            content_hash: r.get(6),
            envelope: r.get(7),
        });
        let checkpoint = r
            .get::<_, Option<Vec<u8>>>(8)
            .map(|root| (root, r.get(9), r.get(10)));
        Ok(AuditRow {
            index: as_u64(r.get(0), "leaf_index")?,
            seq: r.get(1),
            id: r.get(2),
            entry: r.get(3),
            hashes: r.get(4),
            event,
            checkpoint,
        })
    }))
}

/// Events at or before `cursor` in commit order that have no leaf: rows the integrator passed and
/// that are not in the log (inserted behind its back with an old `txid`, or whose leaf row is
/// gone). `(id, seq, txid)`, streamed.
pub async fn unlogged_before(
    client: &Client,
    cursor: CommitPos,
) -> Result<impl Stream<Item = Result<(Uuid, i64, i64), PgError>>, PgError> {
    let params: [&(dyn ToSql + Sync); 2] = [&cursor.txid, &cursor.seq];
    let rows = client
        .query_raw(
            "SELECT e.id, e.seq, e.txid FROM events e
             WHERE (e.txid, e.seq) <= ($1, $2)
               AND NOT EXISTS (SELECT 1 FROM nekhebet_tlog_leaves l WHERE l.seq = e.seq)
             ORDER BY e.txid, e.seq",
            params,
        )
        .await?;
    Ok(rows.map(|r| {
        let r = r?;
        Ok((r.get(0), r.get(1), r.get(2)))
    }))
}

/// How many events lie after `cursor` in commit order (not logged yet).
pub async fn count_after(client: &Client, cursor: CommitPos) -> Result<u64, PgError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM events WHERE (txid, seq) > ($1, $2)",
            &[&cursor.txid, &cursor.seq],
        )
        .await?;
    as_u64(row.get(0), "count")
}

/// Which of these content hashes (compatible LMDB layout) or seqs (append layout) `events`
/// holds.
pub async fn present_hashes(client: &Client, hashes: &[String]) -> Result<Vec<String>, PgError> {
    Ok(client
        .query(
            "SELECT content_hash FROM events WHERE content_hash = ANY($1)",
            &[&hashes],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// See [`present_hashes`].
pub async fn present_seqs(client: &Client, seqs: &[i64]) -> Result<Vec<i64>, PgError> {
    Ok(client
        .query("SELECT seq FROM events WHERE seq = ANY($1)", &[&seqs])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
