//! RFC 6962 Merkle tree hashing over the log's *stored hashes*.
//!
//! The tree is the RFC 6962 (section 2.1) Merkle Tree Hash over SHA-256:
//! a leaf hashes as `SHA-256(0x00 || entry)`, an interior node as
//! `SHA-256(0x01 || left || right)`, and the empty tree as `SHA-256("")`.
//!
//! Hashes are stored in the dense linear order of Go's `golang.org/x/mod/sumdb/tlog`
//! (Crosby and Wallach, "Efficient Data Structures for Tamper-Evident Logging", 3.3):
//! appending leaf `n` writes, at [`stored_hash_index`]`(0, n)` onwards, the leaf hash followed
//! by the hash of every complete subtree that leaf closes (one per trailing 1 bit of `n`).
//! The layout never rewrites a stored hash, so a store can keep it append-only, and every
//! tree hash and proof ([`super::proof`]) needs at most about `2 log2(n)` stored hashes, read
//! through a [`HashReader`].
//!
//! Tree sizes and leaf indexes are `u64`, bounded by [`MAX_TREE_SIZE`] (2^62) so that every
//! stored-hash index stays below 2^63 and fits a PostgreSQL `bigint`.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Size of a [`Hash`] in bytes.
pub const HASH_SIZE: usize = 32;

/// The largest tree size (number of leaves) this module accepts. Every stored-hash index of a
/// tree this size is below `2 * MAX_TREE_SIZE = 2^63`, so it fits an `i64`/`bigint`.
pub const MAX_TREE_SIZE: u64 = 1 << 62;

/// A SHA-256 hash: a leaf hash, an interior node hash or a tree root.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; HASH_SIZE]);

/// The root of the empty tree: SHA-256 of the empty string (RFC 6962 section 2.1).
pub const EMPTY_TREE_HASH: Hash = Hash([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);

/// A string that is not the standard base64 encoding of exactly 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed hash: not the canonical standard base64 of 32 bytes")]
pub struct ParseHashError;

impl Hash {
    /// The hash's bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_SIZE] {
        &self.0
    }

    /// Standard base64 with padding (the checkpoint's root line, Go's `Hash.String`).
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Parses standard padded base64 of exactly 32 bytes. Non-canonical encodings (stray
    /// trailing bits) are rejected, so one hash has exactly one text form.
    pub fn from_base64(s: &str) -> Result<Hash, ParseHashError> {
        // 32 bytes are always 44 characters; checking first bounds the work on hostile input.
        if s.len() != 44 {
            return Err(ParseHashError);
        }
        let bytes = BASE64.decode(s).map_err(|_| ParseHashError)?;
        let bytes: [u8; HASH_SIZE] = bytes.try_into().map_err(|_| ParseHashError)?;
        Ok(Hash(bytes))
    }
}

impl From<[u8; HASH_SIZE]> for Hash {
    fn from(bytes: [u8; HASH_SIZE]) -> Self {
        Hash(bytes)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_base64())
    }
}

/// A log entry: the 32-byte SHA-256 of a stored envelope's bytes (see [`envelope_entry`]).
pub type Entry = [u8; HASH_SIZE];

/// The log entry for a stored envelope: SHA-256 of its exact stored (wire) bytes.
///
/// The log commits to the digest rather than the envelope itself so that entry bundles stay
/// small and fixed-size, while anyone holding the envelope can still recompute its leaf:
/// `leaf_hash(&envelope_entry(bytes))`.
pub fn envelope_entry(envelope_bytes: &[u8]) -> Entry {
    Sha256::digest(envelope_bytes).into()
}

/// RFC 6962 leaf hash: `SHA-256(0x00 || entry)` (Go's `tlog.RecordHash`).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(entry);
    Hash(h.finalize().into())
}

/// RFC 6962 interior node hash: `SHA-256(0x01 || left || right)` (Go's `tlog.NodeHash`).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 2 * HASH_SIZE];
    buf[0] = 0x01;
    buf[1..1 + HASH_SIZE].copy_from_slice(&left.0);
    buf[1 + HASH_SIZE..].copy_from_slice(&right.0);
    Hash(Sha256::digest(buf).into())
}

/// The position of node `n` at `level` (level 0 = leaves; node `n` at level `l` covers
/// leaves `[n * 2^l, (n + 1) * 2^l)`) in the stored-hash order (Go's `StoredHashIndex`).
///
/// # Panics
/// If the node lies beyond [`MAX_TREE_SIZE`] leaves (`(n + 1) * 2^level > MAX_TREE_SIZE`):
/// callers validate sizes first, and a wrapped index would silently read the wrong hash.
pub fn stored_hash_index(level: u32, n: u64) -> u64 {
    assert!(
        level <= 62 && n < (MAX_TREE_SIZE >> level),
        "stored_hash_index({level}, {n}) is beyond MAX_TREE_SIZE"
    );
    // Level l's node n is stored right after level 0's leaf m = (n + 1) * 2^l - 1, the last
    // leaf it covers, and the l - 1 nodes that leaf completed below it. Leaf m itself is
    // stored at m + m/2 + m/4 + ... = 2m - popcount(m).
    let m = ((n + 1) << level) - 1;
    2 * m - u64::from(m.count_ones()) + u64::from(level)
}

/// The inverse of [`stored_hash_index`]: `(level, n)` of the node stored at `index`
/// (Go's `SplitStoredHashIndex`).
///
/// # Panics
/// If `index` is at or beyond `2 * MAX_TREE_SIZE`.
pub fn split_stored_hash_index(index: u64) -> (u32, u64) {
    assert!(
        index < 2 * MAX_TREE_SIZE,
        "stored hash index {index} is too large"
    );
    // stored_hash_index(0, n) <= 2n, so the leaf whose append wrote `index` is in
    // [index / 2, index / 2 + log2(index)]: walk forward from the lower bound.
    let mut n = index / 2;
    let mut index_n = stored_hash_index(0, n);
    debug_assert!(index_n <= index);
    loop {
        // Appending leaf n + 1 starts right after leaf n's 1 + trailing_ones(n) hashes.
        let next = index_n + 1 + u64::from((n + 1).trailing_zeros());
        if next > index {
            break;
        }
        n += 1;
        index_n = next;
    }
    let level = (index - index_n) as u32;
    (level, n >> level)
}

/// How many hashes are stored for a tree of `size` leaves (Go's `StoredHashCount`).
///
/// # Panics
/// If `size > MAX_TREE_SIZE`.
pub fn stored_hash_count(size: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    // Up to and including the last leaf hash, plus the subtrees that leaf completed.
    stored_hash_index(0, size - 1) + 1 + u64::from((size - 1).trailing_ones())
}

/// Reads stored hashes by index; a PostgreSQL- or LMDB-backed store implements it.
pub trait HashReader {
    /// Why a read failed (IO, a missing hash, ...).
    type Error;

    /// The hashes stored at `indexes`, in the same order: exactly `indexes.len()` hashes, or
    /// an error. The indexes may come in any order (this module mostly asks in increasing
    /// order, which suits range scans).
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, Self::Error>;
}

/// A stored hash index past the end of an in-memory hash list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stored hash {index} is not present ({len} hashes stored)")]
pub struct MissingHash {
    /// The index asked for.
    pub index: u64,
    /// How many hashes are stored.
    pub len: u64,
}

/// An in-memory store: `hashes[i]` is the hash with stored index `i`.
impl HashReader for [Hash] {
    type Error = MissingHash;

    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MissingHash> {
        indexes
            .iter()
            .map(|&index| {
                usize::try_from(index)
                    .ok()
                    .and_then(|i| self.get(i))
                    .copied()
                    .ok_or(MissingHash {
                        index,
                        len: self.len() as u64,
                    })
            })
            .collect()
    }
}

impl HashReader for Vec<Hash> {
    type Error = MissingHash;

    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MissingHash> {
        self.as_slice().read_hashes(indexes)
    }
}

/// Sizes or indexes that do not describe a valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// A tree size above [`MAX_TREE_SIZE`].
    #[error("tree size {size} exceeds the maximum {MAX_TREE_SIZE}")]
    TreeTooLarge {
        /// The size given.
        size: u64,
    },
    /// A leaf index at or beyond the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexNotInTree {
        /// The leaf index given.
        index: u64,
        /// The tree size given.
        size: u64,
    },
    /// A consistency proof needs `1 <= old_size <= new_size` (as Go's `ProveTree`).
    #[error("no consistency proof from size {old_size} to size {new_size}: need 1 <= old <= new")]
    BadConsistencySizes {
        /// The older (smaller) size given.
        old_size: u64,
        /// The newer size given.
        new_size: u64,
    },
}

/// Why computing from stored hashes failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError<E> {
    /// The sizes or indexes asked for are invalid.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The [`HashReader`] broke its contract.
    #[error("hash reader returned {got} hashes for {want} indexes")]
    ShortRead {
        /// Hashes asked for.
        want: usize,
        /// Hashes returned.
        got: usize,
    },
    /// The [`HashReader`] failed.
    #[error("reading stored hashes")]
    Read(#[source] E),
}

/// Reads `indexes` and insists on the contract (one hash per index).
pub(crate) fn read<R: HashReader + ?Sized>(
    r: &R,
    indexes: &[u64],
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = r.read_hashes(indexes).map_err(TreeError::Read)?;
    if hashes.len() != indexes.len() {
        return Err(TreeError::ShortRead {
            want: indexes.len(),
            got: hashes.len(),
        });
    }
    Ok(hashes)
}

pub(crate) fn check_size(size: u64) -> Result<(), RangeError> {
    if size > MAX_TREE_SIZE {
        return Err(RangeError::TreeTooLarge { size });
    }
    Ok(())
}

/// The stored hashes to write when appending leaf `n` (the tree currently has `n` leaves):
/// `leaf` followed by the hash of each subtree it completes, to be stored from
/// `stored_hash_index(0, n)` on (Go's `StoredHashesForRecordHash`). Reads up to `log2(n)`
/// earlier hashes from `r`.
pub fn stored_hashes<R: HashReader + ?Sized>(
    n: u64,
    leaf: Hash,
    r: &R,
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    append_stored_hashes(n, &[leaf], r)
}

/// The stored hashes to write when appending `leaves` to a tree of `start` leaves, in storage
/// order from `stored_hash_index(0, start)` on, with one read of the (at most about
/// `log2(start)`) older hashes the batch depends on. Equivalent to calling
/// [`stored_hashes`] per leaf, but the batch's own hashes never round-trip through the store.
pub fn append_stored_hashes<R: HashReader + ?Sized>(
    start: u64,
    leaves: &[Hash],
    r: &R,
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    if leaves.is_empty() {
        return Ok(Vec::new());
    }
    let end = start.saturating_add(leaves.len() as u64);
    check_size(end)?;
    let base = stored_hash_index(0, start);
    // The left siblings each new leaf's completed subtrees consume, where they predate the
    // batch. Appending leaf n completes one subtree per trailing 1 bit of n; the sibling at
    // level i is node (n >> i) - 1 of that level.
    let mut older = BTreeMap::new();
    for n in start..end {
        for i in 0..n.trailing_ones() {
            let index = stored_hash_index(i, (n >> i) - 1);
            if index < base {
                older.insert(index, Hash::default());
            }
        }
    }
    let indexes: Vec<u64> = older.keys().copied().collect();
    for (slot, hash) in older.values_mut().zip(read(r, &indexes)?) {
        *slot = hash;
    }

    let mut out = Vec::with_capacity((stored_hash_count(end) - base) as usize);
    for (n, leaf) in (start..end).zip(leaves) {
        let mut h = *leaf;
        out.push(h);
        for i in 0..n.trailing_ones() {
            let index = stored_hash_index(i, (n >> i) - 1);
            let left = match index.checked_sub(base) {
                Some(offset) => out[offset as usize],
                None => older[&index],
            };
            h = node_hash(&left, &h);
            out.push(h);
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Go's StoredHashIndex loop, to check the closed form against.
    fn go_stored_hash_index(level: u32, mut n: u64) -> u64 {
        for _ in 0..level {
            n = 2 * n + 1;
        }
        let mut i = 0;
        while n > 0 {
            i += n;
            n >>= 1;
        }
        i + u64::from(level)
    }

    pub(crate) fn leaves(count: u64, salt: u8) -> Vec<Hash> {
        (0..count)
            .map(|i| leaf_hash(&envelope_entry(&[&i.to_be_bytes()[..], &[salt]].concat())))
            .collect()
    }

    /// Stored hashes of a tree, appended one leaf at a time as Go's StoredHashes does.
    pub(crate) fn build(leaves: &[Hash]) -> Vec<Hash> {
        let mut stored = Vec::new();
        for (n, leaf) in leaves.iter().enumerate() {
            assert_eq!(stored.len() as u64, stored_hash_index(0, n as u64));
            let new = stored_hashes(n as u64, *leaf, &stored).unwrap();
            stored.extend(new);
            assert_eq!(stored.len() as u64, stored_hash_count(n as u64 + 1));
        }
        stored
    }

    #[test]
    fn stored_hash_index_layout() {
        for level in 0..8 {
            for n in 0..300 {
                let index = stored_hash_index(level, n);
                assert_eq!(index, go_stored_hash_index(level, n), "({level}, {n})");
                assert_eq!(split_stored_hash_index(index), (level, n));
            }
        }
        // Every index is some node's, in order: appending leaf n stores its hash, then its
        // completed subtrees bottom-up.
        let mut index = 0;
        for n in 0..1000u64 {
            for level in 0..=n.trailing_ones() {
                assert_eq!(split_stored_hash_index(index), (level, n >> level));
                index += 1;
            }
        }
        let big = MAX_TREE_SIZE - 1;
        assert_eq!(split_stored_hash_index(stored_hash_index(0, big)), (0, big));
        assert_eq!(split_stored_hash_index(stored_hash_index(61, 1)), (61, 1));
        assert!(stored_hash_count(MAX_TREE_SIZE) <= 2 * MAX_TREE_SIZE);
    }

    #[test]
    #[should_panic(expected = "beyond MAX_TREE_SIZE")]
    fn stored_hash_index_refuses_to_wrap() {
        stored_hash_index(0, MAX_TREE_SIZE);
    }

    #[test]
    fn batch_append_matches_one_at_a_time() {
        let all = leaves(700, 1);
        let one_by_one = build(&all);
        for batch in [1, 2, 3, 7, 64, 255, 256, 257, 700] {
            let mut stored: Vec<Hash> = Vec::new();
            for (i, chunk) in all.chunks(batch).enumerate() {
                let start = (i * batch) as u64;
                stored.extend(append_stored_hashes(start, chunk, &stored).unwrap());
            }
            assert_eq!(stored, one_by_one, "batch {batch}");
        }
        assert_eq!(append_stored_hashes(5, &[], &one_by_one).unwrap(), vec![]);
    }

    #[test]
    fn hash_base64() {
        let hash = leaf_hash(b"x");
        assert_eq!(Hash::from_base64(&hash.to_base64()), Ok(hash));
        assert_eq!(hash.to_string(), hash.to_base64());
        // Wrong length, missing padding, non-canonical trailing bits, whitespace.
        let b64 = hash.to_base64();
        for bad in [
            &b64[..43],
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",
            " AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "",
        ] {
            assert_eq!(Hash::from_base64(bad), Err(ParseHashError), "{bad:?}");
        }
    }
}
