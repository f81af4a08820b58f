//! RFC 6962 tree hashes, inclusion proofs (PATH, section 2.1.1) and consistency proofs
//! (SUBPROOF, section 2.1.2) computed from the stored hashes of [`super::merkle`], and their
//! checkers. The algorithms mirror Go's `golang.org/x/mod/sumdb/tlog` (`TreeHash`,
//! `ProveRecord`, `CheckRecord`, `ProveTree`, `CheckTree`), so both produce identical proofs.
//!
//! Each function makes at most one [`HashReader::read_hashes`] call, for just the stored hashes
//! it needs, so a database-backed reader costs one round trip.

use super::merkle::{
    check_size, node_hash, read, stored_hash_index, Hash, HashReader, RangeError, TreeError,
    EMPTY_TREE_HASH,
};

/// Why a proof was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The sizes or indexes are invalid.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The proof has the wrong number of hashes for these sizes/indexes.
    #[error("proof has {got} hashes, {want} expected")]
    WrongLength {
        /// Hashes in the proof.
        got: usize,
        /// Hashes a proof for these sizes/indexes has.
        want: usize,
    },
    /// The proof does not lead to the given root(s).
    #[error("invalid transparency proof: the hashes do not match")]
    Mismatch,
}

/// The largest power of two below `n` (`n >= 2`), and its log2: where RFC 6962 splits a
/// subtree of `n` leaves.
fn split(n: u64) -> (u64, u32) {
    debug_assert!(n >= 2);
    let level = 63 - (n - 1).leading_zeros();
    (1 << level, level)
}

/// Appends the stored indexes whose hashes combine into the hash of leaves `[lo, hi)`:
/// the maximal complete subtrees, left to right.
fn sub_tree_index(mut lo: u64, hi: u64, need: &mut Vec<u64>) {
    while lo < hi {
        let (k, level) = split(hi - lo + 1);
        debug_assert_eq!(lo & (k - 1), 0);
        need.push(stored_hash_index(level, lo >> level));
        lo += k;
    }
}

/// Consumes from `hashes` the hashes [`sub_tree_index`] listed for `[lo, hi)` and combines
/// them right to left into the subtree's hash.
fn sub_tree_hash(mut lo: u64, hi: u64, hashes: &mut &[Hash]) -> Hash {
    let mut count = 0;
    while lo < hi {
        lo += split(hi - lo + 1).0;
        count += 1;
    }
    let (mine, rest) = hashes.split_at(count);
    *hashes = rest;
    let (last, init) = mine.split_last().expect("a non-empty range has a subtree");
    init.iter().rev().fold(*last, |h, left| node_hash(left, &h))
}

/// The root hash of the tree of the first `size` leaves (Go's `TreeHash`): one read of at most
/// `1 + log2(size)` stored hashes.
pub fn tree_hash<R: HashReader + ?Sized>(size: u64, r: &R) -> Result<Hash, TreeError<R::Error>> {
    check_size(size)?;
    if size == 0 {
        return Ok(EMPTY_TREE_HASH);
    }
    let mut indexes = Vec::new();
    sub_tree_index(0, size, &mut indexes);
    let hashes = read(r, &indexes)?;
    let mut rest = hashes.as_slice();
    let h = sub_tree_hash(0, size, &mut rest);
    debug_assert!(rest.is_empty());
    Ok(h)
}

/// The stored indexes an inclusion proof for leaf `n` in `[lo, hi)` needs, in proof order
/// reversed by level (deepest sibling first), following RFC 6962 section 2.1.1's PATH.
fn inclusion_index(lo: u64, hi: u64, n: u64, need: &mut Vec<u64>) {
    debug_assert!(lo <= n && n < hi);
    if lo + 1 == hi {
        return;
    }
    let (k, _) = split(hi - lo);
    if n < lo + k {
        inclusion_index(lo, lo + k, n, need);
        sub_tree_index(lo + k, hi, need);
    } else {
        sub_tree_index(lo, lo + k, need);
        inclusion_index(lo + k, hi, n, need);
    }
}

/// Builds PATH(n, D[lo:hi]) from the hashes [`inclusion_index`] listed.
fn inclusion_proof(lo: u64, hi: u64, n: u64, hashes: &mut &[Hash], proof: &mut Vec<Hash>) {
    if lo + 1 == hi {
        // The verifier knows the leaf hash itself.
        return;
    }
    let (k, _) = split(hi - lo);
    // Walk down towards n; the sibling subtree not taken joins the proof after the deeper
    // hashes, so the proof lists hashes bottom-up as RFC 6962 specifies.
    let sibling = if n < lo + k {
        inclusion_proof(lo, lo + k, n, hashes, proof);
        sub_tree_hash(lo + k, hi, hashes)
    } else {
        let sibling = sub_tree_hash(lo, lo + k, hashes);
        inclusion_proof(lo + k, hi, n, hashes, proof);
        sibling
    };
    proof.push(sibling);
}

/// The RFC 6962 inclusion proof (audit path) that leaf `index` is in the tree of `size`
/// leaves (Go's `ProveRecord(size, index, r)`), bottom-up.
pub fn prove_inclusion<R: HashReader + ?Sized>(
    index: u64,
    size: u64,
    r: &R,
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    check_size(size)?;
    if index >= size {
        return Err(RangeError::IndexNotInTree { index, size }.into());
    }
    let mut indexes = Vec::new();
    inclusion_index(0, size, index, &mut indexes);
    let hashes = read(r, &indexes)?;
    let mut rest = hashes.as_slice();
    let mut proof = Vec::new();
    inclusion_proof(0, size, index, &mut rest, &mut proof);
    debug_assert!(rest.is_empty());
    Ok(proof)
}

/// How many hashes PATH(n, D[lo:hi]) has.
fn inclusion_len(mut lo: u64, mut hi: u64, n: u64) -> usize {
    let mut len = 0;
    while lo + 1 < hi {
        let (k, _) = split(hi - lo);
        if n < lo + k {
            hi = lo + k;
        } else {
            lo += k;
        }
        len += 1;
    }
    len
}

/// Runs an inclusion proof: the root of `[lo, hi)` it implies for leaf `n` hashing to `leaf`.
/// `proof` holds exactly this subtree's hashes (bottom-up), so its last hash is the sibling
/// at this level.
fn run_inclusion(proof: &[Hash], lo: u64, hi: u64, n: u64, leaf: Hash) -> Hash {
    let Some((sibling, deeper)) = proof.split_last() else {
        return leaf;
    };
    let (k, _) = split(hi - lo);
    if n < lo + k {
        node_hash(&run_inclusion(deeper, lo, lo + k, n, leaf), sibling)
    } else {
        node_hash(sibling, &run_inclusion(deeper, lo + k, hi, n, leaf))
    }
}

/// Checks that `proof` shows leaf `index`, hashing to `leaf`, is in the tree of `size` leaves
/// with root `root` (Go's `CheckRecord(proof, size, root, index, leaf)`).
pub fn check_inclusion(
    proof: &[Hash],
    index: u64,
    leaf: &Hash,
    size: u64,
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(RangeError::IndexNotInTree { index, size }.into());
    }
    // Checking the length up front lets the recursion trust it, and names the failure.
    let want = inclusion_len(0, size, index);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    if run_inclusion(proof, 0, size, index, *leaf) == *root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// The stored indexes a consistency proof from `old` leaves within `[lo, hi)` needs
/// (RFC 6962 section 2.1.2's SUBPROOF).
fn consistency_index(lo: u64, hi: u64, old: u64, need: &mut Vec<u64>) {
    debug_assert!(lo < old && old <= hi);
    if old == hi {
        // The old tree's own root needs no hash; any other complete subtree does.
        if lo != 0 {
            sub_tree_index(lo, hi, need);
        }
        return;
    }
    let (k, _) = split(hi - lo);
    if old <= lo + k {
        consistency_index(lo, lo + k, old, need);
        sub_tree_index(lo + k, hi, need);
    } else {
        sub_tree_index(lo, lo + k, need);
        consistency_index(lo + k, hi, old, need);
    }
}

/// Builds SUBPROOF(old, D[lo:hi]) from the hashes [`consistency_index`] listed.
fn consistency_proof(lo: u64, hi: u64, old: u64, hashes: &mut &[Hash], proof: &mut Vec<Hash>) {
    if old == hi {
        if lo != 0 {
            proof.push(sub_tree_hash(lo, hi, hashes));
        }
        return;
    }
    let (k, _) = split(hi - lo);
    let sibling = if old <= lo + k {
        consistency_proof(lo, lo + k, old, hashes, proof);
        sub_tree_hash(lo + k, hi, hashes)
    } else {
        let sibling = sub_tree_hash(lo, lo + k, hashes);
        consistency_proof(lo + k, hi, old, hashes, proof);
        sibling
    };
    proof.push(sibling);
}

/// The RFC 6962 consistency proof that the tree of `new_size` leaves extends the tree of
/// `old_size` leaves (Go's `ProveTree(new_size, old_size, r)`). Needs
/// `1 <= old_size <= new_size`; equal sizes give an empty proof.
pub fn prove_consistency<R: HashReader + ?Sized>(
    old_size: u64,
    new_size: u64,
    r: &R,
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    check_size(new_size)?;
    if old_size == 0 || old_size > new_size {
        return Err(RangeError::BadConsistencySizes { old_size, new_size }.into());
    }
    let mut indexes = Vec::new();
    consistency_index(0, new_size, old_size, &mut indexes);
    let hashes = read(r, &indexes)?;
    let mut rest = hashes.as_slice();
    let mut proof = Vec::new();
    consistency_proof(0, new_size, old_size, &mut rest, &mut proof);
    debug_assert!(rest.is_empty());
    Ok(proof)
}

/// How many hashes SUBPROOF(old, D[lo:hi]) has.
fn consistency_len(mut lo: u64, mut hi: u64, old: u64) -> usize {
    let mut len = 0;
    while old != hi {
        let (k, _) = split(hi - lo);
        if old <= lo + k {
            hi = lo + k;
        } else {
            lo += k;
        }
        len += 1;
    }
    len + usize::from(lo != 0)
}

/// Runs a consistency proof over `[lo, hi)`: the (old, new) hashes of that subtree it implies,
/// given the old tree's root `old_root`. `proof` holds exactly this subtree's hashes.
fn run_consistency(proof: &[Hash], lo: u64, hi: u64, old: u64, old_root: Hash) -> (Hash, Hash) {
    if old == hi {
        // Common ground: the subtree is complete in both trees. At lo == 0 it is the old tree
        // itself, whose root the verifier already has; elsewhere the proof supplies it.
        return match proof.first() {
            Some(h) if lo != 0 => (*h, *h),
            _ => (old_root, old_root),
        };
    }
    let (sibling, deeper) = proof.split_last().expect("length checked by the caller");
    let (k, _) = split(hi - lo);
    if old <= lo + k {
        // The old tree ends in the left half: the right half exists only in the new tree.
        let (old_h, new_h) = run_consistency(deeper, lo, lo + k, old, old_root);
        (old_h, node_hash(&new_h, sibling))
    } else {
        // The left half is complete in both trees and supplied by the proof.
        let (old_h, new_h) = run_consistency(deeper, lo + k, hi, old, old_root);
        (node_hash(sibling, &old_h), node_hash(sibling, &new_h))
    }
}

/// Checks that `proof` shows the tree of `new_size` leaves with root `new_root` extends the
/// tree of `old_size` leaves with root `old_root` (Go's
/// `CheckTree(proof, new_size, new_root, old_size, old_root)`).
pub fn check_consistency(
    proof: &[Hash],
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(RangeError::BadConsistencySizes { old_size, new_size }.into());
    }
    let want = consistency_len(0, new_size, old_size);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (old_h, new_h) = run_consistency(proof, 0, new_size, old_size, *old_root);
    if old_h == *old_root && new_h == *new_root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::merkle::tests::{build, leaves};
    use crate::tlog::merkle::{
        append_stored_hashes, leaf_hash, MissingHash, HASH_SIZE, MAX_TREE_SIZE,
    };
    use proptest::prelude::*;
    use sha2::{Digest as _, Sha256};

    /// RFC 6962's MTH straight from the definition, to check the stored-hash machinery against.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_TREE_HASH,
            1 => leaves[0],
            n => {
                let k = split(n as u64).0 as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn h(hex_str: &str) -> Hash {
        Hash(hex::decode(hex_str).unwrap().try_into().unwrap())
    }

    #[test]
    fn rfc6962_reference_tree() {
        // The Certificate Transparency reference vectors (leaves and roots of sizes 1 to 8).
        let data = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let leaves: Vec<Hash> = data
            .iter()
            .map(|d| leaf_hash(&hex::decode(d).unwrap()))
            .collect();
        let stored = build(&leaves);
        assert_eq!(tree_hash(0, &stored).unwrap(), EMPTY_TREE_HASH);
        assert_eq!(EMPTY_TREE_HASH, Hash(Sha256::digest(b"").into()));
        for (size, root) in (1..).zip(roots) {
            assert_eq!(tree_hash(size, &stored).unwrap(), h(root), "size {size}");
        }
        let proof = prove_inclusion(0, 8, &stored).unwrap();
        let want = [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ];
        assert_eq!(proof, want.map(h));
    }

    #[test]
    fn every_proof_up_to_300() {
        let all = leaves(300, 0);
        let stored = build(&all);
        let roots: Vec<Hash> = (0..=300).map(|n| naive_root(&all[..n])).collect();
        for size in 0..=300u64 {
            let root = tree_hash(size, &stored).unwrap();
            assert_eq!(root, roots[size as usize], "tree hash of size {size}");
            for index in 0..size {
                let leaf = &all[index as usize];
                let proof = prove_inclusion(index, size, &stored).unwrap();
                assert_eq!(check_inclusion(&proof, index, leaf, size, &root), Ok(()));
                let other = &all[(index as usize + 1) % all.len()];
                assert_eq!(
                    check_inclusion(&proof, index, other, size, &root),
                    Err(ProofError::Mismatch)
                );
                if size > 1 {
                    let wrong_root = &roots[size as usize - 1];
                    assert_eq!(
                        check_inclusion(&proof, index, leaf, size, wrong_root),
                        Err(ProofError::Mismatch)
                    );
                }
            }
            for old in 1..=size {
                let proof = prove_consistency(old, size, &stored).unwrap();
                let old_root = &roots[old as usize];
                assert_eq!(
                    check_consistency(&proof, old, old_root, size, &root),
                    Ok(()),
                    "{old} -> {size}"
                );
                if old > 1 {
                    let wrong = &roots[old as usize - 1];
                    assert!(check_consistency(&proof, old, wrong, size, &root).is_err());
                    assert!(check_consistency(&proof, old, old_root, size, wrong).is_err());
                }
            }
        }
    }

    #[test]
    fn reader_errors_and_bad_inputs() {
        let all = leaves(10, 2);
        let stored = build(&all);
        // A store missing the hashes the request needs says so rather than inventing a root.
        let short = &stored[..5];
        assert!(matches!(
            tree_hash(10, short),
            Err(TreeError::Read(MissingHash { len: 5, .. }))
        ));
        struct Liar;
        impl HashReader for Liar {
            type Error = std::convert::Infallible;
            fn read_hashes(&self, _: &[u64]) -> Result<Vec<Hash>, Self::Error> {
                Ok(vec![Hash::default()])
            }
        }
        assert!(matches!(
            tree_hash(10, &Liar),
            Err(TreeError::ShortRead { want: 2, got: 1 })
        ));
        assert!(matches!(
            prove_inclusion(10, 10, &stored),
            Err(TreeError::Range(RangeError::IndexNotInTree { .. }))
        ));
        assert!(matches!(
            prove_consistency(0, 10, &stored),
            Err(TreeError::Range(RangeError::BadConsistencySizes { .. }))
        ));
        assert!(matches!(
            prove_consistency(11, 10, &stored),
            Err(TreeError::Range(RangeError::BadConsistencySizes { .. }))
        ));
        assert!(matches!(
            tree_hash(MAX_TREE_SIZE + 1, &stored),
            Err(TreeError::Range(RangeError::TreeTooLarge { .. }))
        ));
        let root = tree_hash(10, &stored).unwrap();
        let proof = prove_inclusion(3, 10, &stored).unwrap();
        assert_eq!(
            check_inclusion(&proof[1..], 3, &all[3], 10, &root),
            Err(ProofError::WrongLength { got: 3, want: 4 })
        );
        assert!(check_inclusion(&proof, 10, &all[3], 10, &root).is_err());
        assert!(check_consistency(&[], 0, &root, 10, &root).is_err());
        assert_eq!(check_consistency(&[], 10, &root, 10, &root), Ok(()));
        assert!(check_consistency(&[root], 10, &root, 10, &root).is_err());
    }

    proptest! {
        #[test]
        fn proofs_in_larger_trees(size in 1u64..3000, a in any::<u64>(), b in any::<u64>(),
                                  flip in 0usize..64, bit in 0u8..8) {
            let all = leaves(size, 3);
            let mut stored = Vec::new();
            stored.extend(append_stored_hashes(0, &all, &stored).unwrap());
            let root = tree_hash(size, &stored).unwrap();
            prop_assert_eq!(root, naive_root(&all));

            let index = a % size;
            let mut proof = prove_inclusion(index, size, &stored).unwrap();
            prop_assert!(check_inclusion(&proof, index, &all[index as usize], size, &root).is_ok());
            if !proof.is_empty() {
                // Any single flipped bit in the proof breaks it.
                let i = flip % proof.len();
                proof[i].0[flip % HASH_SIZE] ^= 1 << bit;
                prop_assert_eq!(
                    check_inclusion(&proof, index, &all[index as usize], size, &root),
                    Err(ProofError::Mismatch)
                );
            }

            let old = 1 + b % size;
            let old_root = naive_root(&all[..old as usize]);
            let mut proof = prove_consistency(old, size, &stored).unwrap();
            prop_assert!(check_consistency(&proof, old, &old_root, size, &root).is_ok());
            if !proof.is_empty() {
                let i = flip % proof.len();
                proof[i].0[flip % HASH_SIZE] ^= 1 << bit;
                prop_assert!(check_consistency(&proof, old, &old_root, size, &root).is_err());
            }
        }
    }
}
