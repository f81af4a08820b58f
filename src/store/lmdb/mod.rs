//! LMDB repository (heed), in nekhebet-store 4.0's layout so its Python `LMDBEventRepository` reads
//! what we write:
//! - `events`: content hash (hex, ASCII) → envelope bytes
//! - `replay_guard`: `"{key_id}:{nonce}"` → issued_at (written in LMDB-only mode, where LMDB is the
//!   replay guard; in hybrid mode PostgreSQL is)
//!
//! and databases of ours, which Python never opens:
//! - `ids`: event id (16 bytes) → content hash, so `get(id)` is a B-tree lookup, not Python's scan
//! - `offsets`: `topic \0 partition(be i32)` → highest applied offset (be i64)
//! - `guard_claims`, `key_pins` (LMDB-only mode): who claimed each `replay_guard` entry (the
//!   envelope's SHA-256, to tell an exact repeat from a replay) and when it was stored (retention);
//!   the public keys each key_id is pinned to
//! - `blobs` (append layout): PostgreSQL's `events.seq` (be i64, positive) → envelope bytes,
//!   written with MDB_APPEND: pages fill left to right, nothing is rewritten, so the rate holds
//!   when the file no longer fits in memory (random hash keys do not: every insert touches a
//!   random page)
//!
//! Our databases are typed (`codecs`: heed key/value codecs, whose byte layouts are the ones
//! above); Python's stay plain bytes.
//!
//! Every LMDB call runs on the blocking pool, never on the async runtime. A full map is grown
//! (doubled, up to `lmdb.max_map_size`) and the transaction retried.

mod codecs;
mod error;
mod progress;
mod reader;
mod repair;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use heed::types::{Bytes, Str};
use heed::{BytesEncode, Database, Env, EnvFlags, EnvOpenOptions, PutFlags, RoTxn, RwTxn, WithTls};
use uuid::Uuid;

use self::codecs::{BeI64, Claim, IdKey, PartitionKey, PublicKeys};
use self::error::TxnError;
use super::plan::{digests, highest_offsets, plan_batch, Held};
use super::{AppliedOffsets, Item, Outcome, Saved, StoreError};
use crate::config::LmdbConfig;
use crate::partition::{Partition, Position};

pub use self::error::LmdbError;
pub use self::reader::BlobKey;

type KvIter<'t> = Box<dyn Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>> + 't>;

struct Dbs {
    /// Append layout: `events.seq` → envelope bytes.
    blobs: Database<BeI64, Bytes>,
    /// nekhebet-store 4.0's: content hash → envelope bytes.
    events: Database<Bytes, Bytes>,
    /// nekhebet-store 4.0's: `"{key_id}:{nonce}"` → issued_at.
    replay: Database<Bytes, Bytes>,
    /// Event id → content hash.
    ids: Database<IdKey, Str>,
    /// Partition → highest applied offset.
    offsets: Database<PartitionKey, BeI64>,
    /// LMDB-only: `"{key_id}:{nonce}"` → who claimed it, when.
    claims: Database<Bytes, Claim>,
    /// LMDB-only: key_id → pinned public keys.
    pins: Database<Str, PublicKeys>,
}

struct Inner {
    env: Env<WithTls>,
    dbs: Dbs,
    /// Held shared by every transaction and exclusively by a resize: LMDB allows changing the map
    /// size only while this process has no transaction open.
    gate: RwLock<()>,
    max_map_size: u64,
    /// LMDB-only mode: this store is the replay guard and the id index.
    standalone: bool,
    /// LMDB-only mode: bind each key_id to the first public key seen for it.
    pin_keys: bool,
    /// The environment directory (to tell a full filesystem from other IO errors).
    path: PathBuf,
}

/// The LMDB repository. Cheap to clone.
#[derive(Clone)]
pub struct LmdbStore {
    inner: Arc<Inner>,
}

/// Blob writes and offset advances for one hybrid batch.
#[derive(Debug, Default, Clone)]
pub struct BlobBatch {
    /// (content hash, envelope bytes); an existing key is left alone.
    pub blobs: Vec<(String, bytes::Bytes)>,
    /// (topic, partition, highest applied offset).
    pub offsets: Vec<Position>,
}

impl LmdbStore {
    /// Opens (creating if needed) the environment at `cfg.path`. `standalone` is LMDB-only mode.
    pub async fn open(cfg: &LmdbConfig, standalone: bool) -> Result<LmdbStore, StoreError> {
        let cfg = cfg.clone();
        run_blocking(move || {
            Self::open_blocking(
                &cfg.path,
                cfg.map_size,
                cfg.max_map_size,
                cfg.sync,
                standalone,
            )
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    fn open_blocking(
        path: &PathBuf,
        map_size: u64,
        max_map_size: u64,
        sync: bool,
        standalone: bool,
    ) -> Result<LmdbStore, LmdbError> {
        Self::open_env(path, map_size, max_map_size, sync, standalone).map_err(|e| match e {
            // Opening is not retried: an environment that cannot be opened names its path.
            LmdbError::Io(m) | LmdbError::Unwritable(m) => LmdbError::Unwritable(format!(
                "{}: {m} (check the directory's permissions and that its filesystem is mounted read-write)",
                path.display()
            )),
            LmdbError::NoSpace(m) => LmdbError::NoSpace(format!("{}: {m}", path.display())),
            other @ (LmdbError::MapAtLimit { .. } | LmdbError::Fatal(_)) => other,
        })
    }

    fn open_env(
        path: &PathBuf,
        map_size: u64,
        max_map_size: u64,
        sync: bool,
        standalone: bool,
    ) -> Result<LmdbStore, LmdbError> {
        std::fs::create_dir_all(path)
            .map_err(|e| LmdbError::Io(format!("creating the directory: {e}")))?;
        let mut opts = EnvOpenOptions::new();
        opts.map_size(page_align(map_size))
            .max_dbs(8)
            .max_readers(256);
        if !sync {
            // SAFETY: NO_SYNC/NO_META_SYNC only trade durability for speed; they do not change
            // memory-safety properties of the environment.
            #[allow(unsafe_code)]
            unsafe {
                opts.flags(EnvFlags::NO_SYNC | EnvFlags::NO_META_SYNC);
            }
        }
        // SAFETY: heed requires the caller to promise that the environment is not opened twice in
        // this process and that its files are not modified behind LMDB's back. Each process opens
        // one `LmdbStore` per path, and other processes (Python readers) go through LMDB too.
        #[allow(unsafe_code)]
        let env = unsafe { opts.open(path) }?;
        let dbs = reader::create_dbs(&env)?;
        Ok(LmdbStore {
            inner: Arc::new(Inner {
                env,
                dbs,
                gate: RwLock::new(()),
                max_map_size,
                standalone,
                pin_keys: false,
                path: path.clone(),
            }),
        })
    }

    /// Runs a write transaction, growing the map and retrying when it is full. `f` must be
    /// idempotent up to its commit (it is re-run from scratch after a resize).
    fn write<T>(
        &self,
        mut f: impl FnMut(&Dbs, &mut RwTxn) -> Result<T, heed::Error>,
    ) -> Result<T, LmdbError> {
        loop {
            let attempt = {
                let _shared = self.inner.gate.read().unwrap_or_else(|p| p.into_inner());
                let mut run = || -> Result<T, TxnError> {
                    let mut wtxn = self.inner.env.write_txn()?;
                    let out = f(&self.inner.dbs, &mut wtxn)?;
                    wtxn.commit()?;
                    Ok(out)
                };
                run()
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(TxnError::Other(e)) => return Err(self.diagnose(e)),
                Err(TxnError::MapFull) => self.grow()?,
                Err(TxnError::MapResized) => self.adopt_map_size()?,
            }
        }
    }

    fn read<T>(
        &self,
        mut f: impl FnMut(&Dbs, &RoTxn<WithTls>) -> Result<T, heed::Error>,
    ) -> Result<T, LmdbError> {
        loop {
            let attempt = {
                let _shared = self.inner.gate.read().unwrap_or_else(|p| p.into_inner());
                let mut run = || -> Result<T, TxnError> {
                    let rtxn = self.inner.env.read_txn()?;
                    Ok(f(&self.inner.dbs, &rtxn)?)
                };
                run()
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(TxnError::MapResized) => self.adopt_map_size()?,
                Err(TxnError::MapFull) => return Err(LmdbError::MapAtLimit { size: 0 }),
                Err(TxnError::Other(e)) => return Err(self.diagnose(e)),
            }
        }
    }

    /// Another process (a second worker, `serve`, an `import`) grew the map beyond this process's
    /// mapping: LMDB answers MDB_MAP_RESIZED until this process adopts the new size, which setting
    /// the size 0 does.
    fn adopt_map_size(&self) -> Result<(), LmdbError> {
        let _exclusive = self.inner.gate.write().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the exclusive gate guarantees no transaction of this process is open.
        #[allow(unsafe_code)]
        unsafe { self.inner.env.resize(0) }?;
        tracing::info!(
            map_size = self.inner.env.info().map_size,
            "LMDB map grown by another process: adopted its size"
        );
        Ok(())
    }

    /// [`LmdbStore::write`] on the blocking pool.
    async fn write_blocking<T: Send + 'static>(
        &self,
        f: impl FnMut(&Dbs, &mut RwTxn) -> Result<T, heed::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        run_blocking(move || this.write(f))
            .await?
            .map_err(StoreError::Lmdb)
    }

    /// [`LmdbStore::read`] on the blocking pool.
    async fn read_blocking<T: Send + 'static>(
        &self,
        f: impl FnMut(&Dbs, &RoTxn<WithTls>) -> Result<T, heed::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        run_blocking(move || this.read(f))
            .await?
            .map_err(StoreError::Lmdb)
    }

    /// LMDB reports a write cut short by a full filesystem as EIO ("short write"), which reads
    /// like a failing disk: an IO error of a write with almost no space left on the environment's
    /// filesystem is [`LmdbError::NoSpace`], so it is named (and waited out) as what it is.
    /// Every IO error names the environment's path. An EIO with space left is a failing disk (or
    /// a filesystem gone read-only under us): [`LmdbError::Unwritable`], which stops the worker.
    fn diagnose(&self, e: LmdbError) -> LmdbError {
        let path = self.inner.path.display();
        match e {
            LmdbError::Io(msg) => match rustix::fs::statvfs(&self.inner.path) {
                Ok(st) if st.f_bavail.saturating_mul(st.f_frsize) < LOW_SPACE => {
                    LmdbError::NoSpace(format!(
                        "{msg}: the filesystem of {path} has {} bytes left",
                        st.f_bavail.saturating_mul(st.f_frsize)
                    ))
                }
                _ if msg.contains("os error 5)") => {
                    LmdbError::Unwritable(format!("{path}: {msg} (with space left: a failing disk?)"))
                }
                _ => LmdbError::Io(format!("{path}: {msg}")),
            },
            LmdbError::Unwritable(msg) => LmdbError::Unwritable(format!(
                "{path}: {msg} (check the directory's permissions and that its filesystem is mounted read-write)"
            )),
            LmdbError::NoSpace(msg) => LmdbError::NoSpace(format!("{path}: {msg}")),
            other @ (LmdbError::MapAtLimit { .. } | LmdbError::Fatal(_)) => other,
        }
    }

    fn grow(&self) -> Result<(), LmdbError> {
        let _exclusive = self.inner.gate.write().unwrap_or_else(|p| p.into_inner());
        let current = self.inner.env.info().map_size as u64;
        if current >= self.inner.max_map_size {
            return Err(LmdbError::MapAtLimit { size: current });
        }
        let next = page_align(current.saturating_mul(2).min(self.inner.max_map_size));
        tracing::warn!(from = current, to = next, "LMDB map full: growing the map");
        // SAFETY: the exclusive gate guarantees no transaction of this process is open.
        #[allow(unsafe_code)]
        unsafe { self.inner.env.resize(next) }?;
        Ok(())
    }

    /// In LMDB-only mode, bind each key_id to the first public key seen for it (see
    /// `PgStore::with_key_pinning`). Call before the store is shared.
    pub fn with_key_pinning(mut self, on: bool) -> LmdbStore {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.pin_keys = on;
        }
        self
    }

    /// LMDB-only save: replay guard, idempotency, pins and offsets in ONE write transaction,
    /// decided by the same plan as PostgreSQL's ([`plan_batch`]).
    pub async fn save_batch(&self, items: Vec<Item>) -> Result<Saved<Vec<Outcome>>, StoreError> {
        let pin_keys = self.inner.pin_keys;
        let digests = digests(&items);
        self.write_blocking(move |dbs, wtxn| {
            // What LMDB holds of the batch's keys (owned: the writes below need the transaction).
            let mut redelivered = Vec::with_capacity(items.len());
            let mut claims = Vec::new();
            let mut hashes = Vec::new();
            let mut ids = Vec::new();
            let mut pins = Vec::new();
            for item in &items {
                let h = &item.envelope.header;
                redelivered.push(match &item.pos {
                    Some(pos) => dbs
                        .offsets
                        .get(wtxn, &pos.partition)?
                        .is_some_and(|a| pos.offset <= a),
                    None => false,
                });
                let rk = guard_key(&h.key_id, &h.nonce);
                if dbs.replay.get(wtxn, &rk)?.is_some() {
                    let claim = dbs.claims.get(wtxn, &rk)?.map(|(digest, _)| digest);
                    claims.push(((h.key_id.as_str(), h.nonce.as_str()), claim));
                }
                if dbs.events.get(wtxn, h.payload_hash.as_bytes())?.is_some() {
                    hashes.push(h.payload_hash.as_str());
                }
                if let Some(stored) = dbs.ids.get(wtxn, &h.id)? {
                    ids.push((h.id, stored.to_string()));
                }
                if pin_keys {
                    if let Some(keys) = dbs.pins.get(wtxn, &h.key_id)? {
                        pins.push((h.key_id.as_str(), keys));
                    }
                }
            }
            let held = Held {
                keys: claims.into_iter().collect(),
                hashes: hashes.into_iter().collect(),
                ids: ids.iter().map(|(id, hash)| (*id, hash.as_str())).collect(),
                pins: pin_keys.then(|| pins.into_iter().collect()),
            };
            let plan = plan_batch(&items, &digests, &redelivered, &held);
            let refusals = plan.refusals();
            if !refusals.is_empty() {
                // Nothing written: the caller dead-letters them, then saves the rest again.
                return Ok(Saved::Refused(refusals));
            }
            let stored_at = chrono::Utc::now().timestamp_micros();
            for &i in &plan.guard_rows {
                let h = &items[i].envelope.header;
                let rk = guard_key(&h.key_id, &h.nonce);
                dbs.replay.put(wtxn, &rk, h.issued_at.as_bytes())?;
                dbs.claims.put(wtxn, &rk, &(digests[i], stored_at))?;
            }
            for &i in &plan.event_rows {
                let (h, blob) = (&items[i].envelope.header, &items[i].envelope.bytes);
                put_new(
                    dbs.events,
                    wtxn,
                    PutFlags::NO_OVERWRITE,
                    h.payload_hash.as_bytes(),
                    blob,
                )?;
                dbs.ids.put(wtxn, &h.id, &h.payload_hash)?;
            }
            for (key_id, key) in &plan.new_pins {
                dbs.pins.put(wtxn, key_id, &vec![*key])?;
            }
            write_offsets(dbs, wtxn, &highest_offsets(&items))?;
            Ok(Saved::Committed(plan.outcomes().unwrap_or_default()))
        })
        .await
    }

    /// Hybrid save: the blobs PostgreSQL holds, and the batch's offsets, in ONE write transaction.
    /// Existing keys are kept (no overwrite). Returns how many blobs were newly written.
    pub async fn put_blobs(&self, batch: BlobBatch) -> Result<usize, StoreError> {
        self.write_blocking(move |dbs, wtxn| {
            let mut written = 0;
            for (hash, blob) in &batch.blobs {
                let flags = PutFlags::NO_OVERWRITE;
                written += usize::from(put_new(dbs.events, wtxn, flags, hash.as_bytes(), blob)?);
            }
            write_offsets(dbs, wtxn, &batch.offsets)?;
            Ok(written)
        })
        .await
    }

    /// Append layout: writes blobs under their PostgreSQL seq and advances offsets, in ONE write
    /// transaction. Seqs above the last key are appended (MDB_APPEND: no B-tree search); a seq at
    /// or below it (a heal, or a batch whose seqs were taken before an earlier one's) is put only
    /// if absent. Returns how many blobs were written.
    pub async fn append_blobs(
        &self,
        mut blobs: Vec<(i64, bytes::Bytes)>,
        offsets: Vec<Position>,
    ) -> Result<usize, StoreError> {
        blobs.sort_unstable_by_key(|b| b.0);
        blobs.dedup_by_key(|b| b.0);
        self.write_blocking(move |dbs, wtxn| {
            let last = dbs.blobs.last(wtxn)?.map(|(seq, _)| seq);
            let mut written = 0;
            for (seq, blob) in &blobs {
                let flags = if last.is_none_or(|l| *seq > l) {
                    PutFlags::APPEND
                } else {
                    PutFlags::NO_OVERWRITE
                };
                written += usize::from(put_new(dbs.blobs, wtxn, flags, seq, blob)?);
            }
            write_offsets(dbs, wtxn, &offsets)?;
            Ok(written)
        })
        .await
    }

    /// Append layout: which of these seqs have no blob.
    pub async fn missing_seqs(&self, seqs: Vec<i64>) -> Result<Vec<i64>, StoreError> {
        self.absent(seqs, |dbs, rtxn, seq| {
            Ok(dbs.blobs.get(rtxn, seq)?.is_some())
        })
        .await
    }

    /// Append layout: the highest seq held (0 when empty).
    pub async fn last_seq(&self) -> Result<i64, StoreError> {
        self.read_blocking(move |dbs, rtxn| Ok(dbs.blobs.last(rtxn)?.map_or(0, |(seq, _)| seq)))
            .await
    }

    /// Append layout: the blob stored under `seq`.
    pub async fn get_seq(&self, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_blocking(move |dbs, rtxn| Ok(dbs.blobs.get(rtxn, &seq)?.map(<[u8]>::to_vec)))
            .await
    }

    /// Which of these content hashes have no blob.
    pub async fn missing(&self, hashes: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.absent(hashes, |dbs, rtxn, h| {
            Ok(dbs.events.get(rtxn, h.as_bytes())?.is_some())
        })
        .await
    }

    /// The keys of `keys` that `held` does not find, in order.
    async fn absent<K: Clone + Send + 'static>(
        &self,
        keys: Vec<K>,
        held: fn(&Dbs, &RoTxn<WithTls>, &K) -> heed::Result<bool>,
    ) -> Result<Vec<K>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let mut absent = Vec::new();
            for key in &keys {
                if !held(dbs, rtxn, key)? {
                    absent.push(key.clone());
                }
            }
            Ok(absent)
        })
        .await
    }

    pub async fn applied_offsets(
        &self,
        partitions: Vec<Partition>,
    ) -> Result<AppliedOffsets, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let mut out = AppliedOffsets::new();
            for partition in &partitions {
                if let Some(o) = dbs.offsets.get(rtxn, partition)? {
                    out.insert(partition.clone(), o);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn get_by_hash(&self, hash: String) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            Ok(dbs.events.get(rtxn, hash.as_bytes())?.map(<[u8]>::to_vec))
        })
        .await
    }

    /// By id through the `ids` index (maintained in LMDB-only mode; hybrid reads go through
    /// PostgreSQL's metadata instead).
    pub async fn get(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let Some(hash) = dbs.ids.get(rtxn, &id)? else {
                return Ok(None);
            };
            Ok(dbs.events.get(rtxn, hash.as_bytes())?.map(<[u8]>::to_vec))
        })
        .await
    }

    /// Every (content hash, blob) pair in key order, by pages, for reconcile and tests.
    pub async fn scan(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let mut out = Vec::with_capacity(limit.min(4096));
            let iter: KvIter<'_> = match &after {
                Some(a) => {
                    let start = std::ops::Bound::Excluded(a.as_bytes());
                    Box::new(
                        dbs.events
                            .range(rtxn, &(start, std::ops::Bound::Unbounded))?,
                    )
                }
                None => Box::new(dbs.events.iter(rtxn)?),
            };
            for kv in iter.take(limit) {
                let (k, v) = kv?;
                out.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// Append layout: up to `limit` blobs with a seq above `after`, in seq order.
    pub async fn scan_seqs(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let mut out = Vec::with_capacity(limit.min(4096));
            let start = match after {
                Some(a) => std::ops::Bound::Excluded(a),
                None => std::ops::Bound::Unbounded,
            };
            for kv in dbs
                .blobs
                .range(rtxn, &(start, std::ops::Bound::Unbounded))?
                .take(limit)
            {
                let (seq, v) = kv?;
                out.push((seq, v.to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// Deletes replay-guard entries issued AND stored before `older_than` (the stored time is in
    /// `guard_claims`). An entry without a claim (nekhebet-store 4.0's) has no stored time: it is
    /// kept unless `force`. ISO-8601 `issued_at` strings compare in time order, as in Python's
    /// `cleanup_replay_guard`.
    pub async fn cleanup_replay_guard(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
        force: bool,
    ) -> Result<u64, StoreError> {
        let iso = older_than.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let cutoff_us = older_than.timestamp_micros();
        self.write_blocking(move |dbs, wtxn| {
            let mut stale = Vec::new();
            for kv in dbs.replay.iter(wtxn)? {
                let (k, v) = kv?;
                if v < iso.as_bytes() {
                    stale.push(k.to_vec());
                }
            }
            let mut deleted = 0;
            for k in &stale {
                let stored_before = match dbs.claims.get(wtxn, k)? {
                    Some((_, stored_at)) => stored_at < cutoff_us,
                    None => force,
                };
                if stored_before {
                    dbs.replay.delete(wtxn, k)?;
                    dbs.claims.delete(wtxn, k)?;
                    deleted += 1;
                }
            }
            Ok(deleted)
        })
        .await
    }

    /// LMDB-only mode: the pinned keys of every key_id, or of one.
    pub async fn pins(
        &self,
        key_id: Option<String>,
    ) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let mut out = Vec::new();
            for kv in dbs.pins.iter(rtxn)? {
                let (k, keys) = kv?;
                if key_id.as_deref().is_none_or(|want| want == k) {
                    out.extend(keys.into_iter().map(|key| (k.to_string(), key)));
                }
            }
            Ok(out)
        })
        .await
    }

    /// LMDB-only mode: pins (`add`) or unpins a key for `key_id`; whether anything changed.
    pub async fn set_pin(
        &self,
        key_id: String,
        key: [u8; 32],
        add: bool,
    ) -> Result<bool, StoreError> {
        self.write_blocking(move |dbs, wtxn| {
            let mut keys = dbs.pins.get(wtxn, &key_id)?.unwrap_or_default();
            let had = keys.contains(&key);
            match (add, had) {
                (true, false) => keys.push(key),
                (false, true) => keys.retain(|k| *k != key),
                (true, true) | (false, false) => return Ok(false),
            }
            if keys.is_empty() {
                dbs.pins.delete(wtxn, &key_id)?;
            } else {
                dbs.pins.put(wtxn, &key_id, &keys)?;
            }
            Ok(true)
        })
        .await
    }

    /// Number of blobs in `events`.
    pub async fn len(&self) -> Result<u64, StoreError> {
        self.read_blocking(move |dbs, rtxn| dbs.events.len(rtxn))
            .await
    }

    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }

    /// Whether a read transaction can begin (readiness), adopting a map another process grew.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read_blocking(|_, _| Ok(())).await
    }

    /// (map size, bytes in use) for the gauges.
    pub fn usage(&self) -> (u64, u64) {
        let info = self.inner.env.info();
        let stat = self.inner.env.stat();
        let used = (info.last_page_number as u64 + 1) * stat.page_size as u64;
        (info.map_size as u64, used)
    }

    pub fn is_standalone(&self) -> bool {
        self.inner.standalone
    }
}

/// The key of `replay_guard` (nekhebet-store 4.0's) and `guard_claims`.
fn guard_key(key_id: &str, nonce: &str) -> Vec<u8> {
    format!("{key_id}:{nonce}").into_bytes()
}

/// Puts `key` unless it is there already (MDB_KEYEXIST, which is also MDB_APPEND's answer for a
/// key not above the last): whether it was written.
fn put_new<'a, KC, DC>(
    db: Database<KC, DC>,
    wtxn: &mut RwTxn,
    flags: PutFlags,
    key: &'a KC::EItem,
    value: &'a DC::EItem,
) -> Result<bool, heed::Error>
where
    KC: BytesEncode<'a>,
    DC: BytesEncode<'a>,
{
    match db.put_with_flags(wtxn, flags, key, value) {
        Ok(()) => Ok(true),
        Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Advances stored offsets (never backwards).
fn write_offsets(dbs: &Dbs, wtxn: &mut RwTxn, offsets: &[Position]) -> Result<(), heed::Error> {
    for Position { partition, offset } in offsets {
        let current = dbs.offsets.get(wtxn, partition)?;
        if current.is_none_or(|c| c < *offset) {
            dbs.offsets.put(wtxn, partition, offset)?;
        }
    }
    Ok(())
}

/// Free space under which an IO error of a write transaction is taken for a full filesystem: twice
/// the largest batch (`batch.max_bytes` defaults to 8 MiB), so a write that needed more than what
/// was left counts.
const LOW_SPACE: u64 = 16 << 20;

fn page_align(size: u64) -> usize {
    const PAGE: u64 = 4096;
    size.div_ceil(PAGE).saturating_mul(PAGE) as usize
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::signing::{sign, EnvelopeSpec};
    use crate::envelope::{decode, Limits};

    fn item(pos: Position) -> Item {
        let spec = EnvelopeSpec {
            event_type: "omen.observed".into(),
            source: "test".into(),
            key_id: "k".into(),
            payload: serde_json::json!({ "n": 1 }),
            issued_at: None,
            expires_at: None,
            nonce: None,
            id: None,
        };
        let bytes = sign(&spec, &ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
        let limits = Limits {
            max_message_bytes: 1 << 20,
        };
        Item {
            envelope: decode(bytes.into(), &limits).expect("valid envelope"),
            pos: Some(pos),
        }
    }

    /// The typed databases write and read the bytes earlier versions wrote (and Python reads).
    #[tokio::test]
    async fn the_on_disk_layout_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            LmdbStore::open_blocking(&dir.path().to_path_buf(), 1 << 20, 1 << 24, false, true)
                .unwrap();
        let item = item(Position::new("t", 3, 41));
        let h = item.envelope.header.clone();
        let envelope = item.envelope.bytes.clone();
        assert_eq!(
            store.save_batch(vec![item]).await.unwrap(),
            Saved::Committed(vec![Outcome::Stored])
        );
        let blob = bytes::Bytes::from_static(b"blob");
        let advanced = vec![Position::new("t", 3, 42)];
        store
            .append_blobs(vec![(258, blob)], advanced)
            .await
            .unwrap();

        // What we wrote, read as plain bytes.
        let (env, dbs) = (&store.inner.env, &store.inner.dbs);
        let raw = |rtxn: &RoTxn<WithTls>, db: Database<Bytes, Bytes>, key: &[u8]| {
            db.get(rtxn, key).unwrap().map(<[u8]>::to_vec)
        };
        let rtxn = env.read_txn().unwrap();
        let offsets = dbs.offsets.remap_types::<Bytes, Bytes>();
        let ids = dbs.ids.remap_types::<Bytes, Bytes>();
        let blobs = dbs.blobs.remap_types::<Bytes, Bytes>();
        assert_eq!(
            raw(&rtxn, offsets, b"t\0\0\0\0\x03"),
            Some(42i64.to_be_bytes().to_vec())
        );
        assert_eq!(
            raw(&rtxn, ids, h.id.as_bytes()),
            Some(h.payload_hash.as_bytes().to_vec())
        );
        assert_eq!(
            raw(&rtxn, dbs.events, h.payload_hash.as_bytes()),
            Some(envelope.to_vec())
        );
        let guard_key = format!("{}:{}", h.key_id, h.nonce);
        assert_eq!(
            raw(&rtxn, dbs.replay, guard_key.as_bytes()),
            Some(h.issued_at.as_bytes().to_vec())
        );
        assert_eq!(
            raw(&rtxn, blobs, &258i64.to_be_bytes()),
            Some(b"blob".to_vec())
        );
        drop(rtxn);

        // Bytes written as earlier versions did, read through the typed databases.
        let mut wtxn = env.write_txn().unwrap();
        offsets
            .put(&mut wtxn, b"old\0\0\0\0\x00", &7i64.to_be_bytes())
            .unwrap();
        blobs.put(&mut wtxn, &5i64.to_be_bytes(), b"old").unwrap();
        wtxn.commit().unwrap();
        let old = Partition::new("old", 0);
        let applied = store.applied_offsets(vec![old.clone()]).await.unwrap();
        assert_eq!(applied.get(&old), Some(&7));
        assert_eq!(
            store.get_seq(5).await.unwrap().as_deref(),
            Some(&b"old"[..])
        );
        assert_eq!(store.last_seq().await.unwrap(), 258);
        assert_eq!(store.missing_seqs(vec![5, 6, 258]).await.unwrap(), [6]);
        assert_eq!(
            store.get(h.id).await.unwrap().as_deref(),
            Some(&envelope[..])
        );
    }
}
