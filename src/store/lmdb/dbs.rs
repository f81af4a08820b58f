//! The environment's named databases, opened or created, and its layout decided and recorded
//! ([`super::layout`]) — once per process, when the store is opened.
//!
//! - A writer (the worker, `import`, `reconcile`, …) opens them in ONE write transaction: it creates
//!   what is missing and records the layout if the environment has no record yet.
//! - A reader (`get`, `serve`) opens them in a read transaction and writes nothing when they all
//!   exist; an environment that lacks some (a new one, or one written by an earlier version) gets
//!   them, and its layout record, in a write transaction.
//!
//! The layout is decided inside the transaction that records it, so two processes opening a new
//! environment at once cannot record two layouts: the second one's write transaction sees the
//! first one's record.

use heed::types::{Bytes, Str};
use heed::{Database, Env, RoTxn, WithTls};

use super::codecs::{BeI64, Claim, CommitOrder, IdKey, PartitionKey, PublicKeys};
use super::layout::{self, Found};
use super::LmdbError;
use crate::config::LmdbLayout;
use crate::store::Access;

/// Every named database of the environment (heed handles: valid for every later transaction).
pub(super) struct Dbs {
    /// Append layout: `events.seq` → envelope bytes.
    pub blobs: Database<BeI64, Bytes>,
    /// nekhebet-store 4.0's: content hash → envelope bytes.
    pub events: Database<Bytes, Bytes>,
    /// nekhebet-store 4.0's: `"{key_id}:{nonce}"` → issued_at.
    pub replay: Database<Bytes, Bytes>,
    /// Event id → content hash.
    pub ids: Database<IdKey, Str>,
    /// Partition → highest applied offset.
    pub offsets: Database<PartitionKey, BeI64>,
    /// LMDB-only: `"{key_id}:{nonce}"` → who claimed it, when.
    pub claims: Database<Bytes, Claim>,
    /// LMDB-only: key_id → pinned public keys.
    pub pins: Database<Str, PublicKeys>,
    /// The environment's own facts: `"layout"` → the layout it was created with.
    pub meta: Database<Str, Str>,
    /// The LMDB mirror's state: `"cursor"` → its place in PostgreSQL's commit order.
    pub mirror: Database<Str, CommitOrder>,
}

/// Opens the databases and decides the layout (see the module docs). `configured` is
/// `lmdb.layout`; `standalone` is LMDB-only mode.
pub(super) fn open(
    env: &Env<WithTls>,
    configured: Option<LmdbLayout>,
    standalone: bool,
    access: Access,
) -> Result<(Dbs, LmdbLayout), LmdbError> {
    let decide = |found: &Found| {
        layout::decide(found, configured, standalone).map_err(|e| LmdbError::Fatal(e.to_string()))
    };
    if access == Access::Read {
        let rtxn = env.read_txn()?;
        if let Some(dbs) = existing(env, &rtxn)? {
            let decision = decide(&found(env, &rtxn)?)?;
            // Committing a read transaction keeps the handles it opened for later transactions.
            rtxn.commit()?;
            return Ok((dbs, decision.layout));
        }
        drop(rtxn);
        tracing::info!("LMDB environment lacks databases: creating them");
    }
    let mut wtxn = env.write_txn()?;
    let decision = decide(&found(env, &wtxn)?)?;
    let dbs = Dbs {
        blobs: env.create_database(&mut wtxn, Some("blobs"))?,
        events: env.create_database(&mut wtxn, Some("events"))?,
        replay: env.create_database(&mut wtxn, Some("replay_guard"))?,
        ids: env.create_database(&mut wtxn, Some("ids"))?,
        offsets: env.create_database(&mut wtxn, Some("offsets"))?,
        claims: env.create_database(&mut wtxn, Some("guard_claims"))?,
        pins: env.create_database(&mut wtxn, Some("key_pins"))?,
        meta: env.create_database(&mut wtxn, Some("meta"))?,
        mirror: env.create_database(&mut wtxn, Some("mirror"))?,
    };
    if decision.record {
        let name = layout::name(decision.layout);
        dbs.meta.put(&mut wtxn, layout::RECORD_KEY, name)?;
        tracing::info!(layout = name, "LMDB environment: layout recorded");
    }
    wtxn.commit()?;
    Ok((dbs, decision.layout))
}

/// Every database, if they all exist.
fn existing(env: &Env<WithTls>, rtxn: &RoTxn) -> Result<Option<Dbs>, heed::Error> {
    let (
        Some(blobs),
        Some(events),
        Some(replay),
        Some(ids),
        Some(offsets),
        Some(claims),
        Some(pins),
        Some(meta),
        Some(mirror),
    ) = (
        env.open_database(rtxn, Some("blobs"))?,
        env.open_database(rtxn, Some("events"))?,
        env.open_database(rtxn, Some("replay_guard"))?,
        env.open_database(rtxn, Some("ids"))?,
        env.open_database(rtxn, Some("offsets"))?,
        env.open_database(rtxn, Some("guard_claims"))?,
        env.open_database(rtxn, Some("key_pins"))?,
        env.open_database(rtxn, Some("meta"))?,
        env.open_database(rtxn, Some("mirror"))?,
    )
    else {
        return Ok(None);
    };
    Ok(Some(Dbs {
        blobs,
        events,
        replay,
        ids,
        offsets,
        claims,
        pins,
        meta,
        mirror,
    }))
}

/// What the environment holds that decides its layout: the record, and where blobs are.
fn found(env: &Env<WithTls>, txn: &RoTxn) -> Result<Found, heed::Error> {
    let meta: Option<Database<Str, Str>> = env.open_database(txn, Some("meta"))?;
    let events: Option<Database<Bytes, Bytes>> = env.open_database(txn, Some("events"))?;
    let blobs: Option<Database<Bytes, Bytes>> = env.open_database(txn, Some("blobs"))?;
    let record = match meta {
        Some(meta) => meta.get(txn, layout::RECORD_KEY)?.map(str::to_owned),
        None => None,
    };
    Ok(Found {
        record,
        events_db: events.is_some(),
        events: events.map(|db| db.len(txn)).transpose()?.unwrap_or(0),
        blobs: blobs.map(|db| db.len(txn)).transpose()?.unwrap_or(0),
    })
}
