//! C2SP tlog-tiles (<https://c2sp.org/tlog-tiles>) with tile height 8: the Merkle tree served
//! as static "tiles" of up to 256 consecutive hashes, and the entries as "entry bundles".
//!
//! Tile `n` at level `l` holds the hashes of tree level `8 * l`, nodes `n * 256 ..
//! n * 256 + width`: level-0 tiles hold leaf hashes, and each hash in a level-`l` tile is the
//! root of a *full* level-`(l - 1)` tile. A full tile holds 256 hashes (8,192 bytes); the right
//! edge of each level is a partial tile of `floor(size / 256^l) mod 256` hashes, served at a
//! path ending `.p/<width>`. Entry bundle `n` holds the entries of level-0 tile `n`.
//!
//! Everything here is computed from the stored hashes of [`super::merkle`]; parsing a request
//! path is strict (one canonical path per tile) because it faces the internet.

use std::fmt::Write as _;
use std::ops::Range;

use super::merkle::{read, stored_hash_index, Hash, HashReader, TreeError, MAX_TREE_SIZE};

/// Tree levels per tile level: 256-hash tiles.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes (or entries) in a full tile (or bundle).
pub const FULL_TILE_WIDTH: u16 = 1 << TILE_HEIGHT;
/// Bytes in a full hash tile.
pub const FULL_TILE_BYTES: usize = FULL_TILE_WIDTH as usize * super::merkle::HASH_SIZE;
/// The highest tile level a path may name (tlog-tiles allows 0 to 63).
pub const MAX_TILE_LEVEL: u8 = 63;
/// Tile indexes are below this: a level-0 tile past it would hold leaves beyond
/// [`MAX_TREE_SIZE`], so no tree of ours has it.
pub const TILE_INDEX_LIMIT: u64 = MAX_TREE_SIZE >> TILE_HEIGHT;
/// The longest path [`Tile::parse_path`] looks at. The longest canonical path,
/// `tile/entries/` + six index groups + `.p/255`, is 48 bytes.
pub const MAX_TILE_PATH_LEN: usize = 64;
/// The largest entry an entry bundle can hold (its length is a big-endian `u16`).
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;

/// What a tile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TileKind {
    /// Merkle tree hashes at tile level `0..=63` (tree level `8 * level`).
    Hashes(u8),
    /// An entry bundle: the entries behind the same-numbered level-0 tile.
    Entries,
}

/// A tile or entry bundle: kind, index within its level, and width (1 to 256; 256 is full).
///
/// Constructed only through checked constructors, so every `Tile` has a canonical path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tile {
    kind: TileKind,
    index: u64,
    width: u16,
}

/// A tile that cannot exist (or not in the given tree).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    /// Tile level above [`MAX_TILE_LEVEL`].
    #[error("tile level {0} is above {MAX_TILE_LEVEL}")]
    Level(u8),
    /// Width outside `1..=256`.
    #[error("tile width {0} is not between 1 and {FULL_TILE_WIDTH}")]
    Width(u16),
    /// Index at or above [`TILE_INDEX_LIMIT`].
    #[error("tile index {0} is beyond the largest possible tree")]
    Index(u64),
    /// The tile's hashes (or entries) are not all in the tree of this size.
    #[error("tile {path} is not part of a tree of size {size}")]
    NotInTree {
        /// The tile's path.
        path: String,
        /// The tree size.
        size: u64,
    },
    /// An entry bundle was given where a hash tile is needed.
    #[error("an entry bundle holds entries, not stored hashes")]
    NotHashTile,
}

/// Why a request path is not a canonical tile path. Names the part that is wrong, never
/// echoes the (untrusted) path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TilePathError {
    /// Longer than any tile path ([`MAX_TILE_PATH_LEN`]).
    #[error("tile path is longer than {MAX_TILE_PATH_LEN} bytes")]
    TooLong,
    /// Does not start with `tile/`.
    #[error("path does not start with \"tile/\"")]
    NotTilePath,
    /// The level is neither `entries` nor a decimal number without leading zeroes.
    #[error("tile level is not \"entries\" or a decimal number without leading zeroes")]
    BadLevel,
    /// The level is above 63.
    #[error("tile level is above {MAX_TILE_LEVEL}")]
    LevelOutOfRange,
    /// No index after the level.
    #[error("tile path has no index")]
    MissingIndex,
    /// An index element is not `xDDD` (before the last) or `DDD` (the last).
    #[error("tile index element {position} is not {expected}")]
    BadIndexElement {
        /// 0-based position of the element.
        position: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// The index has a leading `x000` group (zero-padded beyond its canonical form).
    #[error("tile index has a leading x000 group")]
    NonCanonicalIndex,
    /// The index is beyond any tree of ours.
    #[error("tile index is beyond the largest possible tree")]
    IndexTooLarge,
    /// The width after `.p/` is not a decimal number without leading zeroes.
    #[error("partial tile width is not a decimal number without leading zeroes")]
    BadWidth,
    /// The width after `.p/` is not in `1..=255` (a full tile has no `.p/` suffix).
    #[error("partial tile width is not between 1 and 255")]
    WidthOutOfRange,
}

impl Tile {
    fn new(kind: TileKind, index: u64, width: u16) -> Result<Tile, TileError> {
        if let TileKind::Hashes(level) = kind {
            if level > MAX_TILE_LEVEL {
                return Err(TileError::Level(level));
            }
        }
        if width == 0 || width > FULL_TILE_WIDTH {
            return Err(TileError::Width(width));
        }
        if index >= TILE_INDEX_LIMIT {
            return Err(TileError::Index(index));
        }
        Ok(Tile { kind, index, width })
    }

    /// Hash tile `index` at tile `level` with `width` hashes.
    pub fn hashes(level: u8, index: u64, width: u16) -> Result<Tile, TileError> {
        Tile::new(TileKind::Hashes(level), index, width)
    }

    /// Entry bundle `index` with `width` entries.
    pub fn entries(index: u64, width: u16) -> Result<Tile, TileError> {
        Tile::new(TileKind::Entries, index, width)
    }

    /// Hash tile or entry bundle.
    pub fn kind(&self) -> TileKind {
        self.kind
    }

    /// The tile's index within its level (`N`).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Hashes or entries in the tile (`W`), 1 to 256.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Whether the tile holds fewer than 256 hashes/entries.
    pub fn is_partial(&self) -> bool {
        self.width < FULL_TILE_WIDTH
    }

    /// The entry bundle of a level-0 tile; `None` for other tiles.
    pub fn entry_bundle(&self) -> Option<Tile> {
        match self.kind {
            TileKind::Hashes(0) => Some(Tile {
                kind: TileKind::Entries,
                ..*self
            }),
            TileKind::Hashes(_) | TileKind::Entries => None,
        }
    }

    /// The tree level (`8 * tile level`) of the hashes; 0 for entries.
    fn tree_level(&self) -> u32 {
        match self.kind {
            TileKind::Hashes(level) => TILE_HEIGHT * u32::from(level),
            TileKind::Entries => 0,
        }
    }

    /// The leaf indexes the tile's hashes (or entries) cover: `[start, end)`.
    /// `None` for a tile at so high a level that it covers leaves beyond any `u64`.
    pub fn leaf_range(&self) -> Option<Range<u64>> {
        let first_node = self.index << TILE_HEIGHT;
        let end_node = first_node + u64::from(self.width);
        let shift = self.tree_level();
        // A high tile level shifts past 64 bits (None) or loses bits (shifting back differs):
        // either way the tile lies beyond every tree.
        let end = end_node.checked_shl(shift)?;
        if end >> shift != end_node {
            return None;
        }
        Some((first_node << shift)..end)
    }

    /// Whether the tree of `size` leaves determines the tile's every hash (or entry): true for
    /// its full tiles, its partial right-edge tiles, and the narrower partial tiles of the
    /// smaller trees it extends.
    pub fn is_in_tree(&self, size: u64) -> bool {
        self.leaf_range().is_some_and(|r| r.end <= size)
    }

    /// The stored-hash indexes whose hashes, in this order, make up this hash tile, for a tree
    /// of `size` leaves: fetch them (e.g. with one [`HashReader::read_hashes`]) and
    /// concatenate, or use [`read_tile`].
    pub fn stored_hash_indexes(&self, size: u64) -> Result<Vec<u64>, TileError> {
        if self.kind == TileKind::Entries {
            return Err(TileError::NotHashTile);
        }
        if size > MAX_TREE_SIZE || !self.is_in_tree(size) {
            return Err(TileError::NotInTree {
                path: self.path(),
                size,
            });
        }
        let level = self.tree_level();
        let first = self.index << TILE_HEIGHT;
        Ok((first..first + u64::from(self.width))
            .map(|n| stored_hash_index(level, n))
            .collect())
    }

    /// The tile's path below the log prefix: `tile/<L>/<N>[.p/<W>]` or
    /// `tile/entries/<N>[.p/<W>]`, with `N` in zero-padded 3-digit groups, all but the last
    /// prefixed `x` (1234067 is `x001/x234/067`).
    pub fn path(&self) -> String {
        let mut path = String::with_capacity(32);
        match self.kind {
            TileKind::Hashes(level) => write!(path, "tile/{level}/"),
            TileKind::Entries => write!(path, "tile/entries/"),
        }
        .expect("writing to a String");
        let mut groups = Vec::with_capacity(7);
        let mut n = self.index;
        loop {
            groups.push(n % 1000);
            n /= 1000;
            if n == 0 {
                break;
            }
        }
        for (i, group) in groups.iter().rev().enumerate() {
            let x = if i + 1 < groups.len() { "x" } else { "" };
            let slash = if i + 1 < groups.len() { "/" } else { "" };
            write!(path, "{x}{group:03}{slash}").expect("writing to a String");
        }
        if self.is_partial() {
            write!(path, ".p/{}", self.width).expect("writing to a String");
        }
        path
    }

    /// Parses a request path (below the log prefix, no leading `/`) into a tile, accepting
    /// exactly the canonical paths [`Tile::path`] produces.
    pub fn parse_path(path: &str) -> Result<Tile, TilePathError> {
        if path.len() > MAX_TILE_PATH_LEN {
            return Err(TilePathError::TooLong);
        }
        let rest = path
            .strip_prefix("tile/")
            .ok_or(TilePathError::NotTilePath)?;
        let (level, rest) = rest.split_once('/').ok_or(TilePathError::MissingIndex)?;
        let kind = if level == "entries" {
            TileKind::Entries
        } else {
            let level = parse_decimal(level, 2).ok_or(TilePathError::BadLevel)?;
            if level > u64::from(MAX_TILE_LEVEL) {
                return Err(TilePathError::LevelOutOfRange);
            }
            TileKind::Hashes(level as u8)
        };

        // At most 7 groups (a u64 has 20 digits); 8 collected means too many.
        let mut elements: Vec<&str> = rest.splitn(9, '/').collect();
        let mut width = FULL_TILE_WIDTH;
        if let [.., last_index, w] = elements.as_slice() {
            if let Some(stripped) = last_index.strip_suffix(".p") {
                let w = parse_decimal(w, 3).ok_or(TilePathError::BadWidth)?;
                if w == 0 || w >= u64::from(FULL_TILE_WIDTH) {
                    return Err(TilePathError::WidthOutOfRange);
                }
                width = w as u16;
                elements.pop();
                *elements.last_mut().expect("two elements matched") = stripped;
            }
        }
        if elements.len() > 7 {
            return Err(TilePathError::IndexTooLarge);
        }

        let mut index: u64 = 0;
        let last = elements.len() - 1;
        for (position, element) in elements.iter().enumerate() {
            let (digits, expected) = if position < last {
                let digits = element.strip_prefix('x').unwrap_or("");
                (digits, "x followed by 3 digits")
            } else {
                (*element, "3 digits")
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TilePathError::BadIndexElement { position, expected });
            }
            if position == 0 && position < last && digits == "000" {
                return Err(TilePathError::NonCanonicalIndex);
            }
            let group: u64 = digits.parse().expect("3 ASCII digits");
            index = index
                .checked_mul(1000)
                .and_then(|i| i.checked_add(group))
                .ok_or(TilePathError::IndexTooLarge)?;
        }
        if index >= TILE_INDEX_LIMIT {
            return Err(TilePathError::IndexTooLarge);
        }
        // The level and width were range-checked above.
        let tile = Tile { kind, index, width };
        // Belt and braces, as Go's ParseTilePath: only the canonical spelling is accepted.
        if tile.path() != path {
            return Err(TilePathError::NonCanonicalIndex);
        }
        Ok(tile)
    }
}

/// A decimal number of at most `max_digits` ASCII digits without leading zeroes.
fn parse_decimal(s: &str, max_digits: usize) -> Option<u64> {
    let canonical = !s.is_empty()
        && s.len() <= max_digits
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().expect("checked digits"))
}

/// The width of the partial tile at tile `level` for a tree of `size` leaves:
/// `floor(size / 256^level) mod 256`; 0 when that level has no partial tile.
pub fn partial_width(level: u8, size: u64) -> u16 {
    let shift = TILE_HEIGHT * u32::from(level);
    size.checked_shr(shift)
        .map_or(0, |nodes| (nodes % 256) as u16)
}

/// The hash tiles to publish when the tree grows from `old_size` to `new_size` leaves
/// (Go's `tlog.NewTiles(8, old, new)`): the full tiles completed since `old_size` and the
/// partial right-edge tile of each level whose node count changed, lowest level first.
/// Their entry bundles are [`Tile::entry_bundle`] of the level-0 ones.
pub fn new_tiles(old_size: u64, new_size: u64) -> Vec<Tile> {
    let mut tiles = Vec::new();
    for level in 0..=MAX_TILE_LEVEL {
        let shift = TILE_HEIGHT * u32::from(level);
        let Some(new_nodes) = new_size.checked_shr(shift).filter(|&n| n > 0) else {
            break;
        };
        let old_nodes = old_size.checked_shr(shift).unwrap_or(0);
        if old_nodes >= new_nodes {
            continue;
        }
        let kind = TileKind::Hashes(level);
        for index in (old_nodes >> TILE_HEIGHT)..(new_nodes >> TILE_HEIGHT) {
            tiles.push(Tile {
                kind,
                index,
                width: FULL_TILE_WIDTH,
            });
        }
        let width = (new_nodes % u64::from(FULL_TILE_WIDTH)) as u16;
        if width > 0 {
            tiles.push(Tile {
                kind,
                index: new_nodes >> TILE_HEIGHT,
                width,
            });
        }
    }
    tiles
}

/// Every hash tile of the tree of `size` leaves: full tiles and the partial right edge.
/// About `size / 255` tiles: servers publishing incrementally want [`new_tiles`].
pub fn tiles_for_size(size: u64) -> Vec<Tile> {
    new_tiles(0, size)
}

/// Tile bytes: the hashes concatenated in order.
pub fn tile_data(hashes: &[Hash]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.0).collect()
}

/// Why [`read_tile`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadTileError<E> {
    /// The tile is not a hash tile of this tree.
    #[error(transparent)]
    Tile(#[from] TileError),
    /// Reading its hashes failed.
    #[error(transparent)]
    Tree(#[from] TreeError<E>),
}

/// The bytes of hash tile `tile` of the tree of `size` leaves, read from stored hashes.
pub fn read_tile<R: HashReader + ?Sized>(
    tile: &Tile,
    size: u64,
    r: &R,
) -> Result<Vec<u8>, ReadTileError<R::Error>> {
    let indexes = tile.stored_hash_indexes(size)?;
    Ok(tile_data(&read(r, &indexes)?))
}

/// Why entries cannot form, or bytes are not, an entry bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryBundleError {
    /// A bundle holds 1 to 256 entries.
    #[error("an entry bundle holds 1 to 256 entries, not {0}")]
    Count(usize),
    /// An entry longer than a `u16` length prefix can express.
    #[error("entry {index} is {len} bytes, more than {MAX_ENTRY_LEN}")]
    EntryTooLong {
        /// Position of the entry in the bundle.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// The bytes end inside a length prefix or an entry.
    #[error("entry bundle is truncated at byte {offset}")]
    Truncated {
        /// Where the incomplete length or entry starts.
        offset: usize,
    },
}

/// An entry bundle: each entry as a big-endian `u16` length followed by its bytes
/// (our entries are the 32-byte [`super::merkle::Entry`]).
pub fn encode_entry_bundle<E: AsRef<[u8]>>(entries: &[E]) -> Result<Vec<u8>, EntryBundleError> {
    if entries.is_empty() || entries.len() > usize::from(FULL_TILE_WIDTH) {
        return Err(EntryBundleError::Count(entries.len()));
    }
    let total: usize = entries.iter().map(|e| 2 + e.as_ref().len()).sum();
    let mut out = Vec::with_capacity(total);
    for (index, entry) in entries.iter().enumerate() {
        let entry = entry.as_ref();
        let len = u16::try_from(entry.len()).map_err(|_| EntryBundleError::EntryTooLong {
            index,
            len: entry.len(),
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(entry);
    }
    Ok(out)
}

/// Splits an entry bundle into its entries (borrowed from `data`).
pub fn parse_entry_bundle(data: &[u8]) -> Result<Vec<&[u8]>, EntryBundleError> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        if entries.len() == usize::from(FULL_TILE_WIDTH) {
            return Err(EntryBundleError::Count(entries.len() + 1));
        }
        let truncated = EntryBundleError::Truncated { offset };
        let len_bytes = data.get(offset..offset + 2).ok_or(truncated)?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        entries.push(data.get(offset + 2..offset + 2 + len).ok_or(truncated)?);
        offset += 2 + len;
    }
    if entries.is_empty() {
        return Err(EntryBundleError::Count(0));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::merkle::{
        append_stored_hashes, envelope_entry, leaf_hash, node_hash, EMPTY_TREE_HASH,
    };
    use crate::tlog::proof::tree_hash;
    use proptest::prelude::*;

    fn root_of(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_TREE_HASH,
            1 => leaves[0],
            n => {
                let k = (n - 1).next_power_of_two() / 2;
                let k = if k == 0 { 1 } else { k };
                node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
            }
        }
    }

    fn hashes(data: &[u8]) -> Vec<Hash> {
        data.chunks(32)
            .map(|c| Hash(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn paths() {
        let t = Tile::hashes(4, 1_234_067, 256).unwrap();
        assert_eq!(t.path(), "tile/4/x001/x234/067");
        assert_eq!(
            Tile::hashes(0, 1_234_067, 1).unwrap().path(),
            "tile/0/x001/x234/067.p/1"
        );
        assert_eq!(
            Tile::hashes(63, 0, 255).unwrap().path(),
            "tile/63/000.p/255"
        );
        assert_eq!(
            Tile::entries(1000, 256).unwrap().path(),
            "tile/entries/x001/000"
        );
        assert_eq!(
            Tile::entries(999, 17).unwrap().path(),
            "tile/entries/999.p/17"
        );
        for path in [
            "tile/4/x001/x234/067",
            "tile/0/000",
            "tile/0/000.p/1",
            "tile/entries/x001/000.p/255",
            "tile/63/x018/x014/x398/x509/x481/983",
        ] {
            assert_eq!(Tile::parse_path(path).unwrap().path(), path);
        }
    }

    #[test]
    fn hostile_paths() {
        use TilePathError as E;
        let digits = |position| E::BadIndexElement {
            position,
            expected: "3 digits",
        };
        let x_digits = |position| E::BadIndexElement {
            position,
            expected: "x followed by 3 digits",
        };
        let cases: &[(&str, TilePathError)] = &[
            ("", E::NotTilePath),
            ("/tile/0/000", E::NotTilePath),
            ("tiles/0/000", E::NotTilePath),
            ("tile/0", E::MissingIndex),
            ("tile/", E::MissingIndex),
            ("tile//000", E::BadLevel),
            ("tile/00/000", E::BadLevel),
            ("tile/+1/000", E::BadLevel),
            ("tile/-1/000", E::BadLevel),
            ("tile/data/000", E::BadLevel),
            ("tile/100/000", E::BadLevel),
            ("tile/64/000", E::LevelOutOfRange),
            ("tile/0/", digits(0)),
            ("tile/0/1", digits(0)),
            ("tile/0/0001", digits(0)),
            ("tile/0/x000", digits(0)),
            ("tile/0/+01", digits(0)),
            ("tile/0/\u{0660}\u{0660}\u{0660}", digits(0)),
            ("tile/0/000.p", digits(0)),
            ("tile/0/000/", x_digits(0)),
            ("tile/0/001/000", x_digits(0)),
            ("tile/0/X001/000", x_digits(0)),
            ("tile/0/x1234/000", x_digits(0)),
            ("tile/0/x001//000", x_digits(1)),
            ("tile/8/0/000", x_digits(0)),
            ("tile/0/000.p/1/", x_digits(0)),
            ("tile/0/x000/001", E::NonCanonicalIndex),
            ("tile/0/x000/x001/001", E::NonCanonicalIndex),
            ("tile/0/000.p/", E::BadWidth),
            ("tile/0/000.p/01", E::BadWidth),
            ("tile/0/000.p/+1", E::BadWidth),
            ("tile/0/000.p/1000", E::BadWidth),
            ("tile/0/000.p/0", E::WidthOutOfRange),
            ("tile/0/000.p/256", E::WidthOutOfRange),
            ("tile/0/x018/x014/x398/x509/x481/984", E::IndexTooLarge),
            ("tile/0/x999/x999/x999/x999/x999/x999/999", E::IndexTooLarge),
            (
                "tile/0/x001/x001/x001/x001/x001/x001/x001/000",
                E::IndexTooLarge,
            ),
            (
                "tile/0/x001/x001/x001/x001/x001/x001/x001/x001/x001/x001/x001/000",
                E::TooLong,
            ),
        ];
        for (path, want) in cases {
            assert_eq!(Tile::parse_path(path), Err(*want), "{path:?}");
        }
    }

    #[test]
    fn spec_examples() {
        // tlog-tiles: "a tree of size 70,000 will be represented by 273 full level 0 tiles, one
        // partial level 0 tile of width 112, one full level 1 tile, one partial level 1 tile of
        // width 17, and one partial level 2 tile of width 1."
        let tiles = tiles_for_size(70_000);
        let count = |level, full: bool| {
            tiles
                .iter()
                .filter(|t| t.kind() == TileKind::Hashes(level) && t.is_partial() != full)
                .count()
        };
        assert_eq!(
            (count(0, true), count(1, true), count(2, true)),
            (273, 1, 0)
        );
        let partial: Vec<(TileKind, u64, u16)> = tiles
            .iter()
            .filter(|t| t.is_partial())
            .map(|t| (t.kind(), t.index(), t.width()))
            .collect();
        assert_eq!(
            partial,
            [
                (TileKind::Hashes(0), 273, 112),
                (TileKind::Hashes(1), 1, 17),
                (TileKind::Hashes(2), 0, 1)
            ]
        );
        assert_eq!(tiles.len(), 273 + 1 + 1 + 1 + 1);
        assert_eq!(
            (0..4).map(|l| partial_width(l, 70_000)).collect::<Vec<_>>(),
            [112, 17, 1, 0]
        );
        // "a tree of size 256 will be represented by a full level 0 tile and a partial level 1
        // tile of width 1."
        assert_eq!(
            tiles_for_size(256),
            [
                Tile::hashes(0, 0, 256).unwrap(),
                Tile::hashes(1, 0, 1).unwrap()
            ]
        );
        assert_eq!(new_tiles(255, 256), tiles_for_size(256));
        assert!(new_tiles(256, 256).is_empty());
        assert!(tiles_for_size(0).is_empty());
        assert_eq!(new_tiles(256, 257), [Tile::hashes(0, 1, 1).unwrap()]);
        assert_eq!(
            Tile::hashes(0, 3, 7).unwrap().entry_bundle(),
            Some(Tile::entries(3, 7).unwrap())
        );
        assert_eq!(Tile::hashes(1, 3, 7).unwrap().entry_bundle(), None);
    }

    #[test]
    fn tile_contents_from_stored_hashes() {
        let size = 70_000u64;
        let leaves: Vec<Hash> = (0..size)
            .map(|i| leaf_hash(&envelope_entry(&i.to_le_bytes())))
            .collect();
        let stored = append_stored_hashes(0, &leaves, &Vec::new()).unwrap();
        for tile in tiles_for_size(size) {
            let data = read_tile(&tile, size, &stored).unwrap();
            assert_eq!(data.len(), usize::from(tile.width()) * 32);
            let got = hashes(&data);
            let range = tile.leaf_range().unwrap();
            let span = (range.end - range.start) / u64::from(tile.width());
            // Each hash is the root of the `span` leaves below it.
            for (i, h) in got.iter().enumerate() {
                let lo = (range.start + i as u64 * span) as usize;
                assert_eq!(
                    *h,
                    root_of(&leaves[lo..lo + span as usize]),
                    "{}",
                    tile.path()
                );
            }
        }
        // The level-2 hash of the first 65,536 leaves is the tree hash of that size.
        let top = read_tile(&Tile::hashes(2, 0, 1).unwrap(), size, &stored).unwrap();
        assert_eq!(hashes(&top)[0], tree_hash(65_536, &stored).unwrap());
        // A full tile is 8,192 bytes.
        let full = read_tile(&Tile::hashes(0, 5, 256).unwrap(), size, &stored).unwrap();
        assert_eq!(full.len(), FULL_TILE_BYTES);
        // The narrower partial tile of an earlier checkpoint is still determined and served.
        let old = Tile::hashes(0, 273, 5).unwrap();
        assert!(old.is_in_tree(size));
        assert_eq!(read_tile(&old, size, &stored).unwrap(), {
            let wide = read_tile(&Tile::hashes(0, 273, 112).unwrap(), size, &stored).unwrap();
            wide[..5 * 32].to_vec()
        });
    }

    #[test]
    fn tiles_outside_the_tree() {
        let stored = append_stored_hashes(0, &[Hash::default(); 300], &Vec::new()).unwrap();
        for tile in [
            Tile::hashes(0, 1, 45).unwrap(),
            Tile::hashes(0, 1, 256).unwrap(),
            Tile::hashes(1, 0, 2).unwrap(),
            Tile::hashes(2, 0, 1).unwrap(),
            Tile::hashes(63, 0, 1).unwrap(),
            Tile::hashes(7, TILE_INDEX_LIMIT - 1, 256).unwrap(),
        ] {
            assert!(!tile.is_in_tree(300), "{}", tile.path());
            assert!(matches!(
                tile.stored_hash_indexes(300),
                Err(TileError::NotInTree { size: 300, .. })
            ));
            assert!(matches!(
                read_tile(&tile, 300, &stored),
                Err(ReadTileError::Tile(TileError::NotInTree { .. }))
            ));
        }
        assert_eq!(Tile::hashes(63, 0, 1).unwrap().leaf_range(), None);
        assert!(Tile::hashes(0, 1, 44).unwrap().is_in_tree(300));
        assert_eq!(
            Tile::entries(0, 1).unwrap().stored_hash_indexes(300),
            Err(TileError::NotHashTile)
        );
        assert_eq!(Tile::hashes(64, 0, 1), Err(TileError::Level(64)));
        assert_eq!(Tile::hashes(0, 0, 0), Err(TileError::Width(0)));
        assert_eq!(Tile::entries(0, 257), Err(TileError::Width(257)));
        assert_eq!(
            Tile::entries(TILE_INDEX_LIMIT, 1),
            Err(TileError::Index(TILE_INDEX_LIMIT))
        );
    }

    #[test]
    fn entry_bundles() {
        let entries: Vec<[u8; 32]> = (0u8..3).map(|i| envelope_entry(&[i])).collect();
        let bundle = encode_entry_bundle(&entries).unwrap();
        assert_eq!(bundle.len(), 3 * 34);
        assert_eq!(&bundle[..2], &[0, 32]);
        let parsed = parse_entry_bundle(&bundle).unwrap();
        assert_eq!(parsed, entries.iter().map(|e| &e[..]).collect::<Vec<_>>());

        let varied: Vec<Vec<u8>> = vec![vec![], vec![7; 300], vec![1]];
        let bundle = encode_entry_bundle(&varied).unwrap();
        assert_eq!(&bundle[..4], &[0, 0, 1, 44]);
        assert_eq!(parse_entry_bundle(&bundle).unwrap(), varied);

        let none: [&[u8]; 0] = [];
        assert_eq!(encode_entry_bundle(&none), Err(EntryBundleError::Count(0)));
        assert_eq!(
            encode_entry_bundle(&vec![[0u8; 32]; 257]),
            Err(EntryBundleError::Count(257))
        );
        assert_eq!(
            encode_entry_bundle(&[vec![0u8; 65_536]]),
            Err(EntryBundleError::EntryTooLong {
                index: 0,
                len: 65_536
            })
        );
        assert_eq!(parse_entry_bundle(&[]), Err(EntryBundleError::Count(0)));
        assert_eq!(
            parse_entry_bundle(&[0, 32, 1]),
            Err(EntryBundleError::Truncated { offset: 0 })
        );
        assert_eq!(
            parse_entry_bundle(&[0, 0, 0]),
            Err(EntryBundleError::Truncated { offset: 2 })
        );
        assert_eq!(
            parse_entry_bundle(&[0, 0].repeat(257)),
            Err(EntryBundleError::Count(257))
        );
    }

    fn any_tile() -> impl Strategy<Value = Tile> {
        let kind = prop_oneof![
            (0..=MAX_TILE_LEVEL).prop_map(TileKind::Hashes),
            Just(TileKind::Entries)
        ];
        let index = prop_oneof![0..2000u64, 0..TILE_INDEX_LIMIT];
        (kind, index, 1..=FULL_TILE_WIDTH).prop_map(|(kind, index, width)| Tile {
            kind,
            index,
            width,
        })
    }

    proptest! {
        #[test]
        fn path_round_trip(tile in any_tile()) {
            let path = tile.path();
            prop_assert!(path.len() <= 48);
            prop_assert_eq!(Tile::parse_path(&path), Ok(tile));
        }

        #[test]
        fn arbitrary_paths_never_panic(s in "tile/[0-9a-z./x]{0,40}") {
            if let Ok(tile) = Tile::parse_path(&s) {
                prop_assert_eq!(tile.path(), s);
            }
        }

        #[test]
        fn new_tiles_compose(a in 0u64..200_000, b in 0u64..200_000, c in 0u64..200_000) {
            let mut sizes = [a, b, c];
            sizes.sort_unstable();
            let [a, b, c] = sizes;
            // Publishing a -> b -> c publishes every full tile of c exactly once, plus
            // partial tiles, and c's right edge is always among the last step's tiles.
            let mut published: Vec<Tile> = new_tiles(0, a);
            published.extend(new_tiles(a, b));
            let last = new_tiles(b, c);
            published.extend(last.iter().copied());
            let full = |tiles: &[Tile]| {
                let mut full: Vec<Tile> =
                    tiles.iter().copied().filter(|t| !t.is_partial()).collect();
                full.sort();
                full
            };
            let mut published_full = full(&published);
            let count = published_full.len();
            published_full.dedup();
            prop_assert_eq!(published_full.len(), count);
            prop_assert_eq!(published_full, full(&tiles_for_size(c)));
            for t in tiles_for_size(c).into_iter().filter(|t| t.is_partial()) {
                prop_assert!(b == c || last.contains(&t) || new_tiles(0, b).contains(&t));
            }
            for t in &published {
                prop_assert!(t.is_in_tree(c));
            }
        }
    }
}
