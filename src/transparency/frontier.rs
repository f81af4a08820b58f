//! The right edge of a Merkle tree: the hashes of its maximal complete subtrees, left to right
//! (one per 1 bit of the size). Pure.
//!
//! Appending a leaf to the frontier yields exactly the stored hashes Go's `sumdb/tlog` writes for
//! that leaf (the leaf hash, then one hash per subtree it completes), and the frontier's fold is
//! the RFC 6962 root of the tree so far. So the integrator and `audit` build the tree leaf by leaf
//! in constant memory (at most 62 hashes) without reading older hashes back; the property tests
//! below hold it to [`crate::tlog::append_stored_hashes`] and [`crate::tlog::tree_hash`], which
//! `tests/tlog_interop.rs` checks against Go.

use crate::tlog::{leaf_hash, node_hash, Entry, Hash, EMPTY_TREE_HASH};

/// The frontier of a tree of [`Frontier::size`] leaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// Complete subtrees' hashes, largest (leftmost) first: `hashes[k]` covers the k-th 1 bit of
    /// `size` from the top.
    hashes: Vec<Hash>,
}

/// Frontier hashes that do not fit the size they were given for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a tree of {size} leaves has {want} complete subtrees, {got} hashes were given")]
pub struct FrontierLength {
    pub size: u64,
    pub want: usize,
    pub got: usize,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The frontier of a tree of `size` leaves from its subtree hashes, largest first (read them
    /// at [`Frontier::stored_hash_indexes`]).
    pub fn from_hashes(size: u64, hashes: Vec<Hash>) -> Result<Frontier, FrontierLength> {
        let want = size.count_ones() as usize;
        if hashes.len() != want {
            return Err(FrontierLength {
                size,
                want,
                got: hashes.len(),
            });
        }
        Ok(Frontier { size, hashes })
    }

    /// Where the stored hashes of the frontier of a tree of `size` leaves are, in the order
    /// [`Frontier::from_hashes`] takes them: for each 1 bit `level` of `size` from the top, the
    /// subtree of `2^level` leaves that bit stands for, node `(size >> level) - 1` at `level`.
    pub fn stored_hash_indexes(size: u64) -> Vec<u64> {
        (0..64u32)
            .rev()
            .filter(|level| size >> level & 1 == 1)
            .map(|level| crate::tlog::stored_hash_index(level, (size >> level) - 1))
            .collect()
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the leaf of `entry`; returns the stored hashes this leaf writes, in storage order
    /// (its leaf hash first, then each subtree it completes, bottom-up).
    pub fn push(&mut self, entry: &Entry) -> Vec<Hash> {
        let mut h = leaf_hash(entry);
        let mut stored = Vec::with_capacity(1 + self.size.trailing_ones() as usize);
        stored.push(h);
        for _ in 0..self.size.trailing_ones() {
            let left = self
                .hashes
                .pop()
                .expect("a 1 bit of the size has its subtree in the frontier");
            h = node_hash(&left, &h);
            stored.push(h);
        }
        self.hashes.push(h);
        self.size += 1;
        stored
    }

    /// The RFC 6962 root of the tree: the subtrees folded right to left.
    pub fn root(&self) -> Hash {
        let Some((last, rest)) = self.hashes.split_last() else {
            return EMPTY_TREE_HASH;
        };
        rest.iter().rev().fold(*last, |h, left| node_hash(left, &h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::{append_stored_hashes, envelope_entry, tree_hash};
    use proptest::prelude::*;

    fn entries(n: u64, salt: u8) -> Vec<Entry> {
        (0..n)
            .map(|i| envelope_entry(&[&i.to_le_bytes()[..], &[salt]].concat()))
            .collect()
    }

    proptest! {
        /// Leaf by leaf, the frontier writes what the core's batch append writes, and its root is
        /// the core's tree hash at every size; rebuilt from its stored hashes at any size, it
        /// continues identically.
        #[test]
        fn the_frontier_is_the_cores_tree(n in 0u64..700, cut in 0u64..700, salt: u8) {
            let entries = entries(n, salt);
            let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
            let stored = append_stored_hashes(0, &leaves, &Vec::new()).unwrap();
            let mut f = Frontier::new();
            let mut written = Vec::new();
            let cut = cut.min(n);
            for (i, e) in entries.iter().enumerate() {
                if i as u64 == cut {
                    let indexes = Frontier::stored_hash_indexes(cut);
                    let hashes = indexes.iter().map(|&x| stored[x as usize]).collect();
                    let rebuilt = Frontier::from_hashes(cut, hashes).unwrap();
                    prop_assert_eq!(&rebuilt, &f);
                }
                prop_assert_eq!(f.root(), tree_hash(i as u64, &stored).unwrap());
                written.extend(f.push(e));
            }
            prop_assert_eq!(f.size(), n);
            prop_assert_eq!(f.root(), tree_hash(n, &stored).unwrap());
            prop_assert_eq!(written, stored);
        }
    }

    #[test]
    fn hashes_must_fit_the_size() {
        assert_eq!(Frontier::new().root(), EMPTY_TREE_HASH);
        assert_eq!(
            Frontier::from_hashes(6, vec![EMPTY_TREE_HASH]),
            Err(FrontierLength {
                size: 6,
                want: 2,
                got: 1
            })
        );
        assert_eq!(Frontier::stored_hash_indexes(0), Vec::<u64>::new());
        // 6 = 4 + 2: node 0 at level 2, node 2 at level 1.
        assert_eq!(
            Frontier::stored_hash_indexes(6),
            vec![
                crate::tlog::stored_hash_index(2, 0),
                crate::tlog::stored_hash_index(1, 2)
            ]
        );
    }
}
