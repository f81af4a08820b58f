//! The LMDB side of the mirror ([`crate::store::mirror`]): its cursor, which blobs are present, and
//! its writes.
//!
//! The cursor (`mirror`: `"cursor"` → a [`CommitPos`]) lives in the environment it describes and
//! moves in the same write transaction as the blobs it covers, so a crash, a restored copy of the
//! directory or an OS crash under `lmdb.sync = false` leave a cursor no further than the blobs.
//!
//! Invariants: every PostgreSQL row at or before the stored cursor (in commit order) has its blob
//! in this environment (unless its bytes failed their check, or a blob was deleted behind LMDB's
//! back — the mirror's sweep finds those); the stored cursor never moves backwards (two processes
//! mirroring one environment each store only what they confirmed, the later of the two wins); a
//! blob is never overwritten.

use heed::PutFlags;

use super::reader::BlobKey;
use super::{put_new, LmdbStore};
use crate::store::postgres::CommitPos;
use crate::store::StoreError;

/// The key of the cursor in `mirror`.
const CURSOR: &str = "cursor";

impl LmdbStore {
    /// The mirror's stored cursor (`None`: it never stored one — a new environment, or one
    /// written before the mirror existed).
    pub async fn mirror_cursor(&self) -> Result<Option<CommitPos>, StoreError> {
        self.read_blocking(|dbs, rtxn| dbs.mirror.get(rtxn, CURSOR))
            .await
    }

    /// Whether each blob is present, in order, in ONE read transaction.
    pub async fn present(&self, keys: Vec<BlobKey>) -> Result<Vec<bool>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            keys.iter()
                .map(|key| {
                    Ok(match key {
                        BlobKey::Hash(h) => dbs.events.get(rtxn, h.as_bytes())?.is_some(),
                        BlobKey::Seq(seq) => dbs.blobs.get(rtxn, seq)?.is_some(),
                    })
                })
                .collect()
        })
        .await
    }

    /// Writes blobs the environment lacks (an existing one is kept) and, with `cursor`, advances
    /// the stored cursor to it unless it is already further, in ONE write transaction. Returns how
    /// many blobs were written and the stored cursor after the write.
    pub async fn mirror_write(
        &self,
        mut blobs: Vec<(BlobKey, bytes::Bytes)>,
        cursor: Option<CommitPos>,
    ) -> Result<(usize, Option<CommitPos>), StoreError> {
        // Increasing seqs above the last one are appended (no B-tree search, pages filled left to
        // right), as the batches' own writes are.
        blobs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.write_blocking(move |dbs, wtxn| {
            let last = dbs.blobs.last(wtxn)?.map(|(seq, _)| seq);
            let mut written = 0;
            for (key, blob) in &blobs {
                written += usize::from(match key {
                    BlobKey::Hash(h) => {
                        let flags = PutFlags::NO_OVERWRITE;
                        put_new(dbs.events, wtxn, flags, h.as_bytes(), blob)?
                    }
                    BlobKey::Seq(seq) => {
                        let flags = if last.is_none_or(|l| *seq > l) {
                            PutFlags::APPEND
                        } else {
                            PutFlags::NO_OVERWRITE
                        };
                        put_new(dbs.blobs, wtxn, flags, seq, blob)?
                    }
                });
            }
            let stored = dbs.mirror.get(wtxn, CURSOR)?;
            let after = match (stored, cursor) {
                (Some(s), Some(c)) if s >= c => Some(s),
                (_, Some(c)) => {
                    dbs.mirror.put(wtxn, CURSOR, &c)?;
                    Some(c)
                }
                (s, None) => s,
            };
            Ok((written, after))
        })
        .await
    }
}
