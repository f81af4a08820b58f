//! The read side of LMDB, for processes that read an environment another process writes (`serve`
//! and `get` beside a worker): opening it without writing to it, and reads that survive the writer
//! growing the map.
//!
//! - [`LmdbStore::open_reader`] opens existing databases in a read transaction: no write
//!   transaction, so this process never takes the writer's lock nor records a map size of its own
//!   in the environment. Only databases that do not exist yet (a new environment) are created.
//! - A read transaction begun after another process grew the map past this process's mapping
//!   fails with `MDB_MAP_RESIZED`; the read adopts the new size (`mdb_env_set_mapsize(0)` while no
//!   transaction of this process is open) and is retried.

use std::sync::{Arc, RwLock};

use heed::{Env, EnvOpenOptions, WithTls};
use uuid::Uuid;

use super::{page_align, run_blocking, Dbs, Inner, LmdbError, LmdbStore};
use crate::config::LmdbConfig;
use crate::store::{Access, StoreError};

/// Where a blob is kept: under its content hash (compatible layout) or its PostgreSQL `events.seq`
/// (append layout).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum BlobKey {
    Hash(String),
    Seq(i64),
}

impl std::fmt::Display for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobKey::Hash(h) => f.write_str(h),
            BlobKey::Seq(seq) => write!(f, "seq {seq}"),
        }
    }
}

impl LmdbStore {
    /// [`LmdbStore::open`] or [`LmdbStore::open_reader`], as `access` says.
    pub async fn open_for(
        cfg: &LmdbConfig,
        standalone: bool,
        access: Access,
    ) -> Result<LmdbStore, StoreError> {
        match access {
            Access::Write => Self::open(cfg, standalone).await,
            Access::Read => Self::open_reader(cfg, standalone).await,
        }
    }

    /// Opens the environment at `cfg.path` for reading beside its writer (see the module docs).
    /// `standalone` is LMDB-only mode.
    pub async fn open_reader(cfg: &LmdbConfig, standalone: bool) -> Result<LmdbStore, StoreError> {
        let cfg = cfg.clone();
        run_blocking(move || open_reader_blocking(&cfg, standalone))
            .await?
            .map_err(StoreError::Lmdb)
    }

    /// The blob kept under `key`.
    pub async fn read_blob(&self, key: BlobKey) -> Result<Option<bytes::Bytes>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let blob = match &key {
                BlobKey::Hash(h) => dbs.events.get(rtxn, h.as_bytes())?,
                BlobKey::Seq(seq) => dbs.blobs.get(rtxn, seq)?,
            };
            Ok(blob.map(bytes::Bytes::copy_from_slice))
        })
        .await
    }

    /// The blobs kept under `keys`, in their order, in one read transaction (the stream reads a
    /// page of events at once).
    pub async fn read_blobs(
        &self,
        keys: Vec<BlobKey>,
    ) -> Result<Vec<Option<bytes::Bytes>>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            keys.iter()
                .map(|key| {
                    let blob = match key {
                        BlobKey::Hash(h) => dbs.events.get(rtxn, h.as_bytes())?,
                        BlobKey::Seq(seq) => dbs.blobs.get(rtxn, seq)?,
                    };
                    Ok(blob.map(bytes::Bytes::copy_from_slice))
                })
                .collect()
        })
        .await
    }

    /// LMDB-only mode: the content hash of event `id` (the `ids` index).
    pub async fn hash_of_id(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        self.read_blocking(move |dbs, rtxn| Ok(dbs.ids.get(rtxn, &id)?.map(str::to_owned)))
            .await
    }
}

fn open_reader_blocking(cfg: &LmdbConfig, standalone: bool) -> Result<LmdbStore, LmdbError> {
    let path = &cfg.path;
    std::fs::create_dir_all(path)
        .map_err(|e| LmdbError::Io(format!("creating {}: {e}", path.display())))?;
    let mut opts = EnvOpenOptions::new();
    opts.map_size(page_align(cfg.map_size))
        .max_dbs(8)
        .max_readers(256);
    // SAFETY: as in `LmdbStore::open_blocking`: one environment per path in this process, and
    // other processes change its files only through LMDB.
    #[allow(unsafe_code)]
    let env = unsafe { opts.open(path) }?;
    let dbs = match existing_dbs(&env)? {
        Some(dbs) => dbs,
        None => {
            tracing::info!(path = %path.display(), "LMDB environment lacks databases: creating them");
            create_dbs(&env)?
        }
    };
    Ok(LmdbStore {
        inner: Arc::new(Inner {
            env,
            dbs,
            gate: RwLock::new(()),
            max_map_size: cfg.max_map_size,
            standalone,
            pin_keys: false,
            path: path.clone(),
        }),
    })
}

/// Every database, opened in a read transaction, if they all exist.
fn existing_dbs(env: &Env<WithTls>) -> Result<Option<Dbs>, heed::Error> {
    let rtxn = env.read_txn()?;
    let (
        Some(blobs),
        Some(events),
        Some(replay),
        Some(ids),
        Some(offsets),
        Some(claims),
        Some(pins),
    ) = (
        env.open_database(&rtxn, Some("blobs"))?,
        env.open_database(&rtxn, Some("events"))?,
        env.open_database(&rtxn, Some("replay_guard"))?,
        env.open_database(&rtxn, Some("ids"))?,
        env.open_database(&rtxn, Some("offsets"))?,
        env.open_database(&rtxn, Some("guard_claims"))?,
        env.open_database(&rtxn, Some("key_pins"))?,
    )
    else {
        return Ok(None);
    };
    // Committing a read transaction keeps the handles it opened for later transactions.
    rtxn.commit()?;
    Ok(Some(Dbs {
        blobs,
        events,
        replay,
        ids,
        offsets,
        claims,
        pins,
    }))
}

/// Every database, created where missing, in one write transaction (the writer's open, and a
/// reader's of a new environment).
pub(super) fn create_dbs(env: &Env<WithTls>) -> Result<Dbs, heed::Error> {
    let mut wtxn = env.write_txn()?;
    let dbs = Dbs {
        blobs: env.create_database(&mut wtxn, Some("blobs"))?,
        events: env.create_database(&mut wtxn, Some("events"))?,
        replay: env.create_database(&mut wtxn, Some("replay_guard"))?,
        ids: env.create_database(&mut wtxn, Some("ids"))?,
        offsets: env.create_database(&mut wtxn, Some("offsets"))?,
        claims: env.create_database(&mut wtxn, Some("guard_claims"))?,
        pins: env.create_database(&mut wtxn, Some("key_pins"))?,
    };
    wtxn.commit()?;
    Ok(dbs)
}
