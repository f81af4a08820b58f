//! What `reconcile` needs of LMDB beyond the worker's writes: the blobs in key order whatever the
//! layout, and repairs that REPLACE a blob (the worker's writes never overwrite one: a blob that
//! differs from PostgreSQL's is foreign or stale, and PostgreSQL is the authority), and deletions
//! for fault drills.

use heed::types::Bytes;
use heed::Database;

use super::reader::BlobKey;
use super::{LmdbStore, StoreError};

impl LmdbStore {
    /// Up to `limit` (key, blob) pairs after `after` in key order: content hashes in the compatible
    /// layout's `events`, seqs in the append layout's `blobs` (`after` must be of the same kind).
    pub async fn scan_blobs(
        &self,
        after: Option<BlobKey>,
        limit: usize,
        append: bool,
    ) -> Result<Vec<(BlobKey, Vec<u8>)>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            // Both layouts' keys as bytes: hex hashes and big-endian positive seqs both sort as
            // their values do.
            let db: Database<Bytes, Bytes> = if append {
                dbs.blobs.remap_types()
            } else {
                dbs.events
            };
            let start = after.as_ref().map(key_bytes);
            let range = (
                start
                    .as_deref()
                    .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
                std::ops::Bound::Unbounded,
            );
            let mut out = Vec::with_capacity(limit.min(4096));
            for kv in db.range(rtxn, &range)?.take(limit) {
                let (k, v) = kv?;
                out.push((blob_key(k, append)?, v.to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// The SHA-256 of the blob under each key (`None` when absent), in ONE read transaction:
    /// what `audit` compares with the transparency log's entries, without copying the blobs out.
    pub async fn blob_digests(
        &self,
        keys: Vec<BlobKey>,
    ) -> Result<Vec<Option<[u8; 32]>>, StoreError> {
        use sha2::Digest as _;
        self.read_blocking(move |dbs, rtxn| {
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                let blob = match key {
                    BlobKey::Hash(h) => dbs.events.get(rtxn, h.as_bytes())?,
                    BlobKey::Seq(seq) => dbs.blobs.get(rtxn, seq)?,
                };
                out.push(blob.map(|b| sha2::Sha256::digest(b).into()));
            }
            Ok(out)
        })
        .await
    }

    /// Writes PostgreSQL's bytes under these keys, replacing whatever is there, in ONE write
    /// transaction. Returns how many were written.
    pub async fn replace_blobs(
        &self,
        blobs: Vec<(BlobKey, bytes::Bytes)>,
    ) -> Result<usize, StoreError> {
        self.write_blocking(move |dbs, wtxn| {
            for (key, blob) in &blobs {
                match key {
                    BlobKey::Hash(h) => dbs.events.put(wtxn, h.as_bytes(), blob)?,
                    BlobKey::Seq(seq) => dbs.blobs.put(wtxn, seq, blob)?,
                }
            }
            Ok(blobs.len())
        })
        .await
    }

    /// Deletes the blobs under these keys in ONE write transaction; returns how many were there.
    /// For fault drills and their tests: LMDB is a copy, which the mirror's sweep and
    /// `reconcile --repair` complete again from PostgreSQL.
    pub async fn remove_blobs(&self, keys: Vec<BlobKey>) -> Result<usize, StoreError> {
        self.write_blocking(move |dbs, wtxn| {
            let mut removed = 0;
            for key in &keys {
                removed += usize::from(match key {
                    BlobKey::Hash(h) => dbs.events.delete(wtxn, h.as_bytes())?,
                    BlobKey::Seq(seq) => dbs.blobs.delete(wtxn, seq)?,
                });
            }
            Ok(removed)
        })
        .await
    }
}

fn key_bytes(key: &BlobKey) -> Vec<u8> {
    match key {
        BlobKey::Hash(h) => h.as_bytes().to_vec(),
        BlobKey::Seq(seq) => seq.to_be_bytes().to_vec(),
    }
}

fn blob_key(k: &[u8], append: bool) -> Result<BlobKey, heed::Error> {
    if append {
        let seq: [u8; 8] = k
            .try_into()
            .map_err(|e| heed::Error::Decoding(Box::new(e)))?;
        Ok(BlobKey::Seq(i64::from_be_bytes(seq)))
    } else {
        Ok(BlobKey::Hash(String::from_utf8_lossy(k).into_owned()))
    }
}
