//! The transparency-log core, pure (no IO): an RFC 6962 Merkle tree over the stored envelopes,
//! served in the C2SP formats so that existing independent verifiers (Go's
//! `golang.org/x/mod/sumdb/tlog` and `sumdb/note`, and any tlog-tiles client) check it
//! unchanged.
//!
//! Invariants the store wiring this in must keep:
//!
//! - **Gapless leaf indexes.** Leaf `i` is the `i`-th envelope appended (from 0), with no gaps
//!   and no reordering; the tree of size `n` is exactly leaves `0..n`. A leaf, once assigned,
//!   never changes, and neither does any stored hash ([`merkle::stored_hash_index`] layout,
//!   appended by [`merkle::append_stored_hashes`]).
//! - **Entries.** A log entry is the 32-byte SHA-256 of the stored envelope's exact bytes
//!   ([`merkle::envelope_entry`]); its leaf hash is `SHA-256(0x00 || entry)` and interior nodes
//!   `SHA-256(0x01 || left || right)` (RFC 6962). Entry bundles therefore hold 32-byte entries.
//! - **Sizes.** Tree sizes are at most [`merkle::MAX_TREE_SIZE`] (2^62), so stored-hash
//!   indexes fit a signed 64-bit column.
//! - **Checkpoints.** Sign a checkpoint only for a size whose leaves and stored hashes are all
//!   durable (a signed root must stay provable), and keep serving the partial tiles of every
//!   checkpointed size until the full tile exists (tlog-tiles requires it; [`tile::Tile`]
//!   reads them from the same stored hashes).
//!
//! Formats:
//!
//! - [`tile`]: c2sp.org/tlog-tiles, tile height 8 (256 hashes, 8,192 bytes per full tile),
//!   paths `tile/<L>/<N>[.p/<W>]` and `tile/entries/<N>[.p/<W>]`; entry bundles are
//!   big-endian `u16`-length-prefixed entries.
//! - [`merkle`] and [`proof`]: RFC 6962 hashing, Go `sumdb/tlog`'s stored-hash layout, tree
//!   hashes, inclusion and consistency proofs.
//! - [`note`]: c2sp.org/signed-note with Ed25519 keys in Go's `sumdb/note` key formats.
//! - [`checkpoint`]: c2sp.org/tlog-checkpoint (`<origin>\n<size>\n<base64 root>\n[extensions]`).
//!
//! `tests/tlog_interop.rs` checks all of this against Go's implementation both ways.

pub mod checkpoint;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod tile;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use merkle::{
    append_stored_hashes, envelope_entry, leaf_hash, node_hash, split_stored_hash_index,
    stored_hash_count, stored_hash_index, stored_hashes, Entry, Hash, HashReader, MissingHash,
    ParseHashError, RangeError, TreeError, EMPTY_TREE_HASH, HASH_SIZE, MAX_TREE_SIZE,
};
pub use note::{
    is_valid_name, key_hash, open_note, sign_note, KeyError, Note, NoteError, NoteSigner,
    NoteVerifier, Signature,
};
pub use proof::{
    check_consistency, check_inclusion, prove_consistency, prove_inclusion, tree_hash, ProofError,
};
pub use tile::{
    encode_entry_bundle, new_tiles, parse_entry_bundle, partial_width, read_tile, tile_data,
    tiles_for_size, EntryBundleError, ReadTileError, Tile, TileError, TileKind, TilePathError,
    FULL_TILE_BYTES, FULL_TILE_WIDTH, TILE_HEIGHT,
};
