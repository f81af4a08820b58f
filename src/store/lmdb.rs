//! LMDB repository (heed), in nekhebet-store 4.0's layout so its Python `LMDBEventRepository` reads
//! what we write:
//! - `events`: content hash (hex, ASCII) → envelope bytes
//! - `replay_guard`: `"{key_id}:{nonce}"` → issued_at (written in LMDB-only mode, where LMDB is the
//!   replay guard; in hybrid mode PostgreSQL is)
//!
//! and databases of ours, which Python never opens:
//! - `ids`: event id (16 bytes) → content hash, so `get(id)` is a B-tree lookup, not Python's scan
//! - `offsets`: `topic \0 partition(be i32)` → highest applied offset (be i64)
//! - `blobs` (append layout): PostgreSQL's `events.seq` (be u64) → envelope bytes, written with
//!   MDB_APPEND: pages fill left to right, nothing is rewritten, so the rate holds when the file
//!   no longer fits in memory (random hash keys do not: every insert touches a random page)
//!
//! Every LMDB call runs on the blocking pool, never on the async runtime. A full map is grown
//! (doubled, up to `lmdb.max_map_size`) and the transaction retried.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, PutFlags, RoTxn, RwTxn, WithTls};
use uuid::Uuid;

use super::{AppliedOffsets, Item, Outcome, StoreError};
use crate::config::LmdbConfig;
use crate::partition::{Partition, Position};

/// An LMDB failure.
#[derive(Debug, thiserror::Error)]
pub enum LmdbError {
    /// The map is full and already at `lmdb.max_map_size`: an operator must raise the limit.
    #[error("LMDB map is full at {size} bytes (lmdb.max_map_size); raise it")]
    MapAtLimit { size: u64 },
    /// The filesystem refused a write (disk full, quota): waits for space.
    #[error("LMDB cannot write to its files: {0}")]
    NoSpace(String),
    /// Any other IO error on the environment's files.
    #[error("LMDB IO error: {0}")]
    Io(String),
    /// Corruption, version mismatch, bad configuration: retrying does not help.
    #[error("LMDB error: {0}")]
    Fatal(String),
}

impl LmdbError {
    pub fn is_retriable(&self) -> bool {
        match self {
            // Waiting is right for both: space may be freed, the operator may raise the limit;
            // nothing is committed meanwhile.
            LmdbError::MapAtLimit { .. } | LmdbError::NoSpace(_) => true,
            LmdbError::Io(_) => true,
            LmdbError::Fatal(_) => false,
        }
    }

    pub fn cause(&self) -> &'static str {
        match self {
            LmdbError::MapAtLimit { .. } => "lmdb_map_full",
            LmdbError::NoSpace(_) => "lmdb_no_space",
            LmdbError::Io(_) => "lmdb_io",
            LmdbError::Fatal(_) => "lmdb_fatal",
        }
    }
}

/// Internal: a heed error, with "map full" kept apart so the caller can grow and retry.
enum TxnError {
    MapFull,
    Other(LmdbError),
}

impl From<heed::Error> for TxnError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => TxnError::MapFull,
            heed::Error::Io(io) => match io.raw_os_error() {
                Some(28) | Some(122) => TxnError::Other(LmdbError::NoSpace(io.to_string())),
                _ => TxnError::Other(LmdbError::Io(io.to_string())),
            },
            heed::Error::Mdb(m) => TxnError::Other(LmdbError::Fatal(m.to_string())),
            heed::Error::Encoding(e) | heed::Error::Decoding(e) => {
                TxnError::Other(LmdbError::Fatal(e.to_string()))
            }
            heed::Error::EnvAlreadyOpened => {
                TxnError::Other(LmdbError::Fatal("environment already opened".into()))
            }
        }
    }
}

impl From<heed::Error> for LmdbError {
    fn from(e: heed::Error) -> Self {
        match TxnError::from(e) {
            TxnError::MapFull => LmdbError::MapAtLimit { size: 0 },
            TxnError::Other(e) => e,
        }
    }
}

type Db = Database<Bytes, Bytes>;
type KvIter<'t> = Box<dyn Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>> + 't>;

struct Dbs {
    blobs: Db,
    events: Db,
    replay: Db,
    ids: Db,
    offsets: Db,
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

fn offset_key(p: &Partition) -> Vec<u8> {
    let mut k = Vec::with_capacity(p.topic.len() + 5);
    k.extend_from_slice(p.topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&p.number.to_be_bytes());
    k
}

fn read_offset(v: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(v.try_into().ok()?))
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
        std::fs::create_dir_all(path)
            .map_err(|e| LmdbError::Io(format!("creating {}: {e}", path.display())))?;
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
        let mut wtxn = env.write_txn()?;
        let dbs = Dbs {
            blobs: env.create_database(&mut wtxn, Some("blobs"))?,
            events: env.create_database(&mut wtxn, Some("events"))?,
            replay: env.create_database(&mut wtxn, Some("replay_guard"))?,
            ids: env.create_database(&mut wtxn, Some("ids"))?,
            offsets: env.create_database(&mut wtxn, Some("offsets"))?,
        };
        wtxn.commit()?;
        Ok(LmdbStore {
            inner: Arc::new(Inner {
                env,
                dbs,
                gate: RwLock::new(()),
                max_map_size,
                standalone,
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
            }
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Dbs, &RoTxn<WithTls>) -> Result<T, heed::Error>,
    ) -> Result<T, LmdbError> {
        let _shared = self.inner.gate.read().unwrap_or_else(|p| p.into_inner());
        let rtxn = self.inner.env.read_txn()?;
        Ok(f(&self.inner.dbs, &rtxn)?)
    }

    /// LMDB reports a write cut short by a full filesystem as EIO ("short write"), which reads
    /// like a failing disk: an IO error of a write with almost no space left on the environment's
    /// filesystem is [`LmdbError::NoSpace`], so it is named (and waited out) as what it is.
    fn diagnose(&self, e: LmdbError) -> LmdbError {
        let LmdbError::Io(msg) = e else { return e };
        match rustix::fs::statvfs(&self.inner.path) {
            Ok(st) if st.f_bavail.saturating_mul(st.f_frsize) < LOW_SPACE => {
                LmdbError::NoSpace(format!(
                    "{msg}: the filesystem of {} has {} bytes left",
                    self.inner.path.display(),
                    st.f_bavail.saturating_mul(st.f_frsize)
                ))
            }
            _ => LmdbError::Io(msg),
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

    /// LMDB-only save: replay guard, idempotency and offsets in ONE write transaction.
    pub async fn save_batch(&self, items: Vec<Item>) -> Result<Vec<Outcome>, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.write(|dbs, wtxn| {
                let mut outcomes = Vec::with_capacity(items.len());
                for item in &items {
                    let h = &item.envelope.header;
                    if let Some(pos) = &item.pos {
                        let k = offset_key(&pos.partition);
                        if dbs
                            .offsets
                            .get(wtxn, &k)?
                            .and_then(read_offset)
                            .is_some_and(|a| pos.offset <= a)
                        {
                            outcomes.push(Outcome::Redelivered);
                            continue;
                        }
                    }
                    let rk = format!("{}:{}", h.key_id, h.nonce);
                    if dbs.replay.get(wtxn, rk.as_bytes())?.is_some() {
                        outcomes.push(Outcome::Replay);
                    } else {
                        dbs.replay
                            .put(wtxn, rk.as_bytes(), h.issued_at.as_bytes())?;
                        match dbs.events.put_with_flags(
                            wtxn,
                            PutFlags::NO_OVERWRITE,
                            h.payload_hash.as_bytes(),
                            &item.envelope.bytes,
                        ) {
                            Ok(()) => {
                                dbs.ids
                                    .put(wtxn, h.id.as_bytes(), h.payload_hash.as_bytes())?;
                                outcomes.push(Outcome::Stored);
                            }
                            Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => {
                                outcomes.push(Outcome::Duplicate)
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    if let Some(pos) = &item.pos {
                        let k = offset_key(&pos.partition);
                        dbs.offsets.put(wtxn, &k, &pos.offset.to_be_bytes())?;
                    }
                }
                Ok(outcomes)
            })
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    /// Hybrid save: the blobs PostgreSQL holds, and the batch's offsets, in ONE write transaction.
    /// Existing keys are kept (no overwrite). Returns how many blobs were newly written.
    pub async fn put_blobs(&self, batch: BlobBatch) -> Result<usize, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.write(|dbs, wtxn| {
                let mut written = 0;
                for (hash, blob) in &batch.blobs {
                    match dbs.events.put_with_flags(
                        wtxn,
                        PutFlags::NO_OVERWRITE,
                        hash.as_bytes(),
                        blob,
                    ) {
                        Ok(()) => written += 1,
                        Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => {}
                        Err(e) => return Err(e),
                    }
                }
                write_offsets(dbs, wtxn, &batch.offsets)?;
                Ok(written)
            })
        })
        .await?
        .map_err(StoreError::Lmdb)
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
        let this = self.clone();
        run_blocking(move || {
            this.write(|dbs, wtxn| {
                let last = dbs.blobs.last(wtxn)?.and_then(|(k, _)| read_offset(k));
                let mut written = 0;
                for (seq, blob) in &blobs {
                    let flags = if last.is_none_or(|l| *seq > l) {
                        PutFlags::APPEND
                    } else {
                        PutFlags::NO_OVERWRITE
                    };
                    match dbs
                        .blobs
                        .put_with_flags(wtxn, flags, &seq.to_be_bytes(), blob)
                    {
                        Ok(()) => written += 1,
                        Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => {}
                        Err(e) => return Err(e),
                    }
                }
                write_offsets(dbs, wtxn, &offsets)?;
                Ok(written)
            })
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    /// Append layout: which of these seqs have no blob.
    pub async fn missing_seqs(&self, seqs: Vec<i64>) -> Result<Vec<i64>, StoreError> {
        self.absent(
            seqs,
            |dbs| dbs.blobs,
            |seq| Cow::Owned(seq.to_be_bytes().to_vec()),
        )
        .await
    }

    /// Append layout: the highest seq held (0 when empty).
    pub async fn last_seq(&self) -> Result<i64, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.read(|dbs, rtxn| {
                Ok(dbs
                    .blobs
                    .last(rtxn)?
                    .and_then(|(k, _)| read_offset(k))
                    .unwrap_or(0))
            })
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    /// Append layout: the blob stored under `seq`.
    pub async fn get_seq(&self, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.read(|dbs, rtxn| Ok(dbs.blobs.get(rtxn, &seq.to_be_bytes())?.map(<[u8]>::to_vec)))
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    /// Which of these content hashes have no blob.
    pub async fn missing(&self, hashes: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.absent(hashes, |dbs| dbs.events, |h| Cow::Borrowed(h.as_bytes()))
            .await
    }

    /// The keys of `keys` that have no value in the database `db` picks, in order.
    async fn absent<K: Send + 'static>(
        &self,
        keys: Vec<K>,
        db: fn(&Dbs) -> Db,
        key_bytes: fn(&K) -> Cow<'_, [u8]>,
    ) -> Result<Vec<K>, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.read(|dbs, rtxn| {
                let db = db(dbs);
                let mut absent = Vec::new();
                for key in keys {
                    if db.get(rtxn, &key_bytes(&key))?.is_none() {
                        absent.push(key);
                    }
                }
                Ok(absent)
            })
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    pub async fn applied_offsets(
        &self,
        partitions: Vec<Partition>,
    ) -> Result<AppliedOffsets, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.read(|dbs, rtxn| {
                let mut out = AppliedOffsets::new();
                for partition in partitions {
                    if let Some(o) = dbs
                        .offsets
                        .get(rtxn, &offset_key(&partition))?
                        .and_then(read_offset)
                    {
                        out.insert(partition, o);
                    }
                }
                Ok(out)
            })
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    pub async fn get_by_hash(&self, hash: String) -> Result<Option<Vec<u8>>, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.read(|dbs, rtxn| Ok(dbs.events.get(rtxn, hash.as_bytes())?.map(<[u8]>::to_vec)))
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    /// By id through the `ids` index (maintained in LMDB-only mode; hybrid reads go through
    /// PostgreSQL's metadata instead).
    pub async fn get(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.read(|dbs, rtxn| {
                let Some(hash) = dbs.ids.get(rtxn, id.as_bytes())? else {
                    return Ok(None);
                };
                Ok(dbs.events.get(rtxn, hash)?.map(<[u8]>::to_vec))
            })
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    /// Every (content hash, blob) pair in key order, by pages, for reconcile and tests.
    pub async fn scan(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.read(|dbs, rtxn| {
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
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    /// Deletes replay-guard entries issued before `older_than_iso` (ISO-8601 strings compare in time
    /// order, as in Python's `cleanup_replay_guard`).
    pub async fn cleanup_replay_guard(&self, older_than_iso: String) -> Result<u64, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            this.write(|dbs, wtxn| {
                let mut stale = Vec::new();
                for kv in dbs.replay.iter(wtxn)? {
                    let (k, v) = kv?;
                    if v < older_than_iso.as_bytes() {
                        stale.push(k.to_vec());
                    }
                }
                for k in &stale {
                    dbs.replay.delete(wtxn, k)?;
                }
                Ok(stale.len() as u64)
            })
        })
        .await?
        .map_err(StoreError::Lmdb)
    }

    /// Number of blobs in `events`.
    pub async fn len(&self) -> Result<u64, StoreError> {
        let this = self.clone();
        run_blocking(move || this.read(|dbs, rtxn| dbs.events.len(rtxn)))
            .await?
            .map_err(StoreError::Lmdb)
    }

    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let this = self.clone();
        run_blocking(move || this.read(|_, _| Ok(())))
            .await?
            .map_err(StoreError::Lmdb)
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

/// Advances stored offsets (never backwards).
fn write_offsets(dbs: &Dbs, wtxn: &mut RwTxn, offsets: &[Position]) -> Result<(), heed::Error> {
    for Position { partition, offset } in offsets {
        let k = offset_key(partition);
        let current = dbs.offsets.get(wtxn, &k)?.and_then(read_offset);
        if current.is_none_or(|c| c < *offset) {
            dbs.offsets.put(wtxn, &k, &offset.to_be_bytes())?;
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
