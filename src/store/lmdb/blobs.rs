//! Hybrid mode's blobs: the envelope bytes PostgreSQL holds, written by the batch's LMDB
//! transaction (with the batch's offsets) in either layout, and looked up by key.
//!
//! - compatible layout: `events`, content hash → envelope bytes (nekhebet-store 4.0's);
//! - append layout: `blobs`, PostgreSQL's `events.seq` → envelope bytes, appended (MDB_APPEND)
//!   while the seqs increase.
//!
//! Invariant: a blob, once written, is never overwritten by these writes (NO_OVERWRITE: an
//! existing key keeps its bytes); only `reconcile --repair` replaces one ([`super::repair`]).

use heed::{PutFlags, RoTxn, WithTls};

use super::{put_new, write_offsets, Dbs, LmdbStore};
use crate::config::LmdbLayout;
use crate::partition::Position;
use crate::store::StoreError;

type KvIter<'t> = Box<dyn Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>> + 't>;

/// Blob writes and offset advances for one hybrid batch.
#[derive(Debug, Default, Clone)]
pub struct BlobBatch {
    /// (content hash, envelope bytes); an existing key is left alone.
    pub blobs: Vec<(String, bytes::Bytes)>,
    /// (topic, partition, highest applied offset).
    pub offsets: Vec<Position>,
}

impl LmdbStore {
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

    pub async fn get_by_hash(&self, hash: String) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
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

    /// Number of blobs in the environment's layout (`events` or `blobs`).
    pub async fn len(&self) -> Result<u64, StoreError> {
        let layout = self.layout();
        self.read_blocking(move |dbs, rtxn| match layout {
            LmdbLayout::Compatible => dbs.events.len(rtxn),
            LmdbLayout::Append => dbs.blobs.len(rtxn),
        })
        .await
    }

    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }
}
