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
//! - `meta`: `"layout"` → the layout the environment was created with (`compatible` | `append`),
//!   which every later open keeps ([`layout`])
//! - `mirror`: `"cursor"` → how far the LMDB mirror has copied PostgreSQL, in commit order
//!
//! Our databases are typed (`codecs`: heed key/value codecs, whose byte layouts are the ones
//! above); Python's stay plain bytes.
//!
//! Every LMDB call runs on the blocking pool, never on the async runtime. A full map is grown
//! (doubled, up to `lmdb.max_map_size`) and the transaction retried.
//!
//! | module | owns |
//! |---|---|
//! | `mod` | the environment: opening, write and read transactions, map growth, IO diagnosis |
//! | `dbs` | the named databases, opened or created, and the layout record |
//! | `layout` | which layout an environment opens in, decided without IO |
//! | `blobs` | hybrid mode's blobs in either layout: the batch's writes, lookups, scans |
//! | `standalone` | LMDB-only mode: replay guard, id index, key pins in the batch's transaction |
//! | `mirror` | the mirror's cursor, presence checks and copies |
//! | `reader` | opening beside a writer, reads by [`BlobKey`] |
//! | `progress` | the operator's side of `offsets` (`offsets reset`) |
//! | `repair` | `reconcile`'s scans and replacements |
//! | `codecs` | the typed keys and values, byte for byte |
//! | `error` | [`LmdbError`]: what the caller can do about a failure |

mod blobs;
mod codecs;
mod dbs;
mod error;
pub mod layout;
mod mirror;
mod progress;
mod reader;
mod repair;
mod standalone;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use heed::{BytesEncode, Database, Env, EnvFlags, EnvOpenOptions, PutFlags, RoTxn, RwTxn, WithTls};

use self::dbs::Dbs;
use self::error::TxnError;
use super::{Access, AppliedOffsets, StoreError};
use crate::config::{LmdbConfig, LmdbLayout};
use crate::partition::{Partition, Position};

pub use self::blobs::BlobBatch;
pub use self::error::LmdbError;
pub use self::reader::BlobKey;

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
    /// The layout the environment's blobs are kept in (recorded in it, [`layout`]).
    layout: LmdbLayout,
    /// The environment directory (to tell a full filesystem from other IO errors).
    path: PathBuf,
}

/// The LMDB repository. Cheap to clone.
#[derive(Clone)]
pub struct LmdbStore {
    inner: Arc<Inner>,
}

impl LmdbStore {
    /// Opens (creating if needed) the environment at `cfg.path` to write. `standalone` is
    /// LMDB-only mode.
    pub async fn open(cfg: &LmdbConfig, standalone: bool) -> Result<LmdbStore, StoreError> {
        Self::open_for(cfg, standalone, Access::Write).await
    }

    fn open_blocking(
        cfg: &LmdbConfig,
        standalone: bool,
        access: Access,
    ) -> Result<LmdbStore, LmdbError> {
        let path = &cfg.path;
        Self::open_env(cfg, standalone, access).map_err(|e| match e {
            // Opening is not retried: an environment that cannot be opened names its path.
            LmdbError::Io(m) | LmdbError::Unwritable(m) => LmdbError::Unwritable(format!(
                "{}: {m} (check the directory's permissions and that its filesystem is mounted read-write)",
                path.display()
            )),
            LmdbError::NoSpace(m) => LmdbError::NoSpace(format!("{}: {m}", path.display())),
            LmdbError::Fatal(m) => LmdbError::Fatal(format!("{}: {m}", path.display())),
            other @ LmdbError::MapAtLimit { .. } => other,
        })
    }

    fn open_env(
        cfg: &LmdbConfig,
        standalone: bool,
        access: Access,
    ) -> Result<LmdbStore, LmdbError> {
        let path = &cfg.path;
        std::fs::create_dir_all(path)
            .map_err(|e| LmdbError::Io(format!("creating the directory: {e}")))?;
        let mut opts = EnvOpenOptions::new();
        opts.map_size(page_align(cfg.map_size))
            .max_dbs(MAX_DBS)
            .max_readers(256);
        if !cfg.sync {
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
        let (dbs, layout) = open_dbs_adopting_growth(&env, cfg, standalone, access)?;
        Ok(LmdbStore {
            inner: Arc::new(Inner {
                env,
                dbs,
                gate: RwLock::new(()),
                max_map_size: cfg.max_map_size,
                standalone,
                pin_keys: false,
                layout,
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

    /// The id of the last committed write transaction: how many there were (tests count the
    /// mirror's).
    pub fn last_txn_id(&self) -> u64 {
        self.inner.env.info().last_txn_id as u64
    }

    pub fn is_standalone(&self) -> bool {
        self.inner.standalone
    }

    /// The layout this environment keeps its blobs in (decided and recorded when it was created).
    pub fn layout(&self) -> LmdbLayout {
        self.inner.layout
    }
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

/// Named databases a process may open: ours and nekhebet-store 4.0's (8), with room to grow. A
/// per-process limit, not written in the environment.
const MAX_DBS: u32 = 16;

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

/// [`dbs::open`], adopting a map another process (the worker beside `serve`) grew between this
/// process's open and its first transaction: LMDB answers MDB_MAP_RESIZED to every transaction
/// until the new size is adopted, so a failed open whose next transaction says so is retried after
/// adopting it (no transaction of this process is open on the new environment yet).
fn open_dbs_adopting_growth(
    env: &heed::Env<WithTls>,
    cfg: &LmdbConfig,
    standalone: bool,
    access: Access,
) -> Result<(Dbs, LmdbLayout), LmdbError> {
    let mut attempts = 0;
    loop {
        let err = match dbs::open(env, cfg.layout, standalone, access) {
            Ok(opened) => return Ok(opened),
            Err(e) => e,
        };
        attempts += 1;
        let resized = matches!(
            env.read_txn().map(drop).map_err(TxnError::from),
            Err(TxnError::MapResized)
        );
        if !resized || attempts >= 10 {
            return Err(err);
        }
        // SAFETY: no transaction of this process is open on `env` (it was just opened, and the
        // failed attempt's transactions ended with it).
        #[allow(unsafe_code)]
        unsafe { env.resize(0) }?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::signing::{sign, EnvelopeSpec};
    use crate::envelope::{decode, Limits};
    use crate::store::{Item, Outcome, Saved};
    use heed::types::Bytes;

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
        let cfg = LmdbConfig {
            path: dir.path().to_path_buf(),
            map_size: 1 << 20,
            max_map_size: 1 << 24,
            sync: false,
            ..crate::config::Config::default().lmdb
        };
        let store = LmdbStore::open_blocking(&cfg, true, Access::Write).unwrap();
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
