//! The read side of LMDB, for processes that read an environment another process writes (`serve`
//! and `get` beside a worker): opening it without writing to it, and reads that survive the writer
//! growing the map.
//!
//! - [`LmdbStore::open_reader`] opens existing databases in a read transaction: no write
//!   transaction, so this process never takes the writer's lock nor records a map size of its own
//!   in the environment. Only databases that do not exist yet (a new environment, or one written by
//!   an earlier version) are created ([`super::dbs`]).
//! - A read transaction begun after another process grew the map past this process's mapping
//!   fails with `MDB_MAP_RESIZED`; the read adopts the new size (`mdb_env_set_mapsize(0)` while no
//!   transaction of this process is open) and is retried.

use uuid::Uuid;

use super::{run_blocking, LmdbStore};
use crate::config::{LmdbConfig, LmdbLayout};
use crate::store::{Access, StoreError};

/// Where a blob is kept: under its content hash (compatible layout) or its PostgreSQL `events.seq`
/// (append layout).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum BlobKey {
    Hash(String),
    Seq(i64),
}

impl BlobKey {
    /// The key the event stored as `seq` with `content_hash` has in an environment of `layout`.
    pub fn of(layout: LmdbLayout, seq: i64, content_hash: &str) -> BlobKey {
        match layout {
            LmdbLayout::Compatible => BlobKey::Hash(content_hash.to_owned()),
            LmdbLayout::Append => BlobKey::Seq(seq),
        }
    }
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
        let cfg = cfg.clone();
        run_blocking(move || Self::open_blocking(&cfg, standalone, access))
            .await?
            .map_err(StoreError::Lmdb)
    }

    /// Opens the environment at `cfg.path` for reading beside its writer (see the module docs).
    /// `standalone` is LMDB-only mode.
    pub async fn open_reader(cfg: &LmdbConfig, standalone: bool) -> Result<LmdbStore, StoreError> {
        Self::open_for(cfg, standalone, Access::Read).await
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

    /// The blobs kept under `keys`, in their order, in one read transaction, on the calling
    /// thread: for code on the blocking pool (the read path reads and checks a page in one task).
    pub fn read_blobs(&self, keys: &[BlobKey]) -> Result<Vec<Option<bytes::Bytes>>, StoreError> {
        self.read(|dbs, rtxn| {
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
        .map_err(StoreError::Lmdb)
    }

    /// LMDB-only mode: the content hash of event `id` (the `ids` index).
    pub async fn hash_of_id(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        self.read_blocking(move |dbs, rtxn| Ok(dbs.ids.get(rtxn, &id)?.map(str::to_owned)))
            .await
    }
}
