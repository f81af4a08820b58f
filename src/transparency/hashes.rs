//! The pure core's computations ([`crate::tlog`]: tree hashes, proofs, tiles) over stored hashes
//! that live in PostgreSQL.
//!
//! The core reads through a synchronous [`HashReader`] and each of its functions asks for all the
//! hashes it needs in one call. [`compute`] runs a function against a [`Prefetched`] reader that
//! answers what it holds and reports what it lacks; the lacking hashes are fetched (one query) and
//! the function runs again. Two rounds suffice; the core stays free of IO and of async.
//!
//! Where a stored hash lives: the hashes appended with leaf `m` are kept in that leaf's row
//! (migration 0008), so stored hash index `stored_hash_index(level, n)` is in leaf
//! `((n + 1) << level) - 1` at position `level` ([`locate`]).

use std::collections::HashMap;
use std::future::Future;

use crate::tlog::{split_stored_hash_index, Hash, HashReader, RangeError, TreeError};

/// The leaf whose row holds stored hash `index`, and its position among that row's hashes.
pub fn locate(index: u64) -> (u64, usize) {
    let (level, n) = split_stored_hash_index(index);
    (((n + 1) << level) - 1, level as usize)
}

/// Stored hashes fetched so far.
#[derive(Debug, Default)]
pub struct Prefetched {
    hashes: HashMap<u64, Hash>,
}

/// The stored hash indexes a [`Prefetched`] reader was asked for and does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lacking(pub Vec<u64>);

impl HashReader for Prefetched {
    type Error = Lacking;

    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, Lacking> {
        let lacking: Vec<u64> = indexes
            .iter()
            .copied()
            .filter(|i| !self.hashes.contains_key(i))
            .collect();
        if !lacking.is_empty() {
            return Err(Lacking(lacking));
        }
        Ok(indexes.iter().map(|i| self.hashes[i]).collect())
    }
}

/// Why [`compute`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError<E> {
    /// The sizes or indexes asked for are not valid (the caller's input).
    #[error(transparent)]
    Range(#[from] RangeError),
    /// Fetching stored hashes failed.
    #[error(transparent)]
    Fetch(E),
    /// The store answered, but not with the hashes asked for (missing rows: a damaged log).
    #[error("the log's stored hashes are incomplete: {0}")]
    Incomplete(String),
}

/// Runs `f` (a pure-core computation) with the stored hashes it needs, fetched by `fetch` (which
/// returns exactly one hash per index, in order).
pub async fn compute<T, E, Fut>(
    fetch: impl Fn(Vec<u64>) -> Fut,
    f: impl Fn(&Prefetched) -> Result<T, TreeError<Lacking>>,
) -> Result<T, ComputeError<E>>
where
    Fut: Future<Output = Result<Vec<Hash>, E>>,
{
    let mut prefetched = Prefetched::default();
    // Each core function reads once: the second round has everything. The third is slack.
    for _ in 0..3 {
        match f(&prefetched) {
            Ok(t) => return Ok(t),
            Err(TreeError::Range(e)) => return Err(ComputeError::Range(e)),
            Err(TreeError::ShortRead { want, got }) => {
                return Err(ComputeError::Incomplete(format!(
                    "{got} hashes for {want} indexes"
                )))
            }
            Err(TreeError::Read(Lacking(indexes))) => {
                let hashes = fetch(indexes.clone()).await.map_err(ComputeError::Fetch)?;
                if hashes.len() != indexes.len() {
                    return Err(ComputeError::Incomplete(format!(
                        "{} hashes fetched for {} indexes",
                        hashes.len(),
                        indexes.len()
                    )));
                }
                prefetched.hashes.extend(indexes.into_iter().zip(hashes));
            }
        }
    }
    Err(ComputeError::Incomplete(
        "a computation kept asking for more stored hashes".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::{
        append_stored_hashes, envelope_entry, leaf_hash, prove_consistency, prove_inclusion,
        stored_hash_count, stored_hash_index, tree_hash,
    };

    fn stored(n: u64) -> Vec<Hash> {
        let leaves: Vec<Hash> = (0..n)
            .map(|i| leaf_hash(&envelope_entry(&i.to_be_bytes())))
            .collect();
        append_stored_hashes(0, &leaves, &Vec::new()).unwrap()
    }

    #[test]
    fn every_stored_hash_is_in_the_row_of_the_leaf_that_wrote_it() {
        // Leaf m's row holds stored_hash_index(0, m) and the 1 + trailing_ones(m) - 1 after it.
        for m in 0..2000u64 {
            let first = stored_hash_index(0, m);
            let count = stored_hash_count(m + 1) - first;
            assert_eq!(count, 1 + u64::from(m.trailing_ones()));
            for pos in 0..count {
                assert_eq!(locate(first + pos), (m, pos as usize), "leaf {m} pos {pos}");
            }
        }
    }

    #[tokio::test]
    async fn computations_over_fetched_hashes_equal_the_in_memory_ones() {
        let all = stored(777);
        let fetches = std::sync::atomic::AtomicUsize::new(0);
        let fetch = |indexes: Vec<u64>| {
            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let hashes: Vec<Hash> = indexes.iter().map(|&i| all[i as usize]).collect();
            async move { Ok::<_, std::convert::Infallible>(hashes) }
        };
        let root = compute(fetch, |r| tree_hash(777, r)).await.unwrap();
        assert_eq!(root, tree_hash(777, &all).unwrap());
        let proof = compute(fetch, |r| prove_inclusion(300, 777, r))
            .await
            .unwrap();
        assert_eq!(proof, prove_inclusion(300, 777, &all).unwrap());
        let proof = compute(fetch, |r| prove_consistency(13, 777, r))
            .await
            .unwrap();
        assert_eq!(proof, prove_consistency(13, 777, &all).unwrap());
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 3);
        let bad = compute(fetch, |r| prove_inclusion(900, 777, r)).await;
        assert!(matches!(bad, Err(ComputeError::Range(_))), "{bad:?}");
        let short = compute(
            |_| async { Ok::<_, std::convert::Infallible>(vec![]) },
            |r| tree_hash(5, r),
        )
        .await;
        assert!(
            matches!(short, Err(ComputeError::Incomplete(_))),
            "{short:?}"
        );
    }
}
