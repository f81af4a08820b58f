//! LMDB failures: heed's errors sorted into what the caller can do about them. A full map is kept
//! apart ([`TxnError::MapFull`]) so the write path can grow the map and retry.

use crate::store::error::ErrorClass;

/// An LMDB failure.
#[derive(Debug, thiserror::Error)]
pub enum LmdbError {
    /// The map is full and already at `lmdb.max_map_size`: an operator must raise the limit.
    #[error("LMDB map is full at {size} bytes (lmdb.max_map_size); raise it")]
    MapAtLimit { size: u64 },
    /// The filesystem refused a write (disk full, quota): waits for space.
    #[error("LMDB cannot write to its files: {0}")]
    NoSpace(String),
    /// The environment's files cannot be written at all: permission denied, a read-only
    /// filesystem, or an IO error with space left (a failing disk). Retrying does not help; an
    /// operator must act. The message names the path.
    #[error("LMDB cannot write its files: {0}")]
    Unwritable(String),
    /// Any other IO error on the environment's files.
    #[error("LMDB IO error: {0}")]
    Io(String),
    /// Corruption, version mismatch, bad configuration: retrying does not help.
    #[error("LMDB error: {0}")]
    Fatal(String),
}

impl LmdbError {
    /// What the caller does about it (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            // Waiting is right for both: space may be freed, the operator may raise the limit;
            // nothing is committed meanwhile.
            LmdbError::MapAtLimit { .. } | LmdbError::NoSpace(_) => ErrorClass::Transient,
            LmdbError::Io(_) => ErrorClass::Transient,
            LmdbError::Unwritable(_) | LmdbError::Fatal(_) => ErrorClass::Fatal,
        }
    }

    pub fn is_retriable(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// Transient, but only until someone acts: the map at `lmdb.max_map_size`, or the filesystem
    /// full.
    pub fn needs_operator(&self) -> bool {
        match self {
            LmdbError::MapAtLimit { .. } | LmdbError::NoSpace(_) => true,
            LmdbError::Io(_) | LmdbError::Unwritable(_) | LmdbError::Fatal(_) => false,
        }
    }

    pub fn cause(&self) -> &'static str {
        match self {
            LmdbError::MapAtLimit { .. } => "lmdb_map_full",
            LmdbError::NoSpace(_) => "lmdb_no_space",
            LmdbError::Io(_) => "lmdb_io",
            LmdbError::Unwritable(_) => "lmdb_unwritable",
            LmdbError::Fatal(_) => "lmdb_fatal",
        }
    }
}

/// Internal: a heed error, with "map full" and "map resized" kept apart so the caller can grow
/// the map, or adopt the size another process gave it, and retry.
pub(super) enum TxnError {
    MapFull,
    /// Another process grew the map beyond ours (MDB_MAP_RESIZED): adopt its size.
    MapResized,
    Other(LmdbError),
}

impl From<heed::Error> for TxnError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => TxnError::MapFull,
            heed::Error::Mdb(heed::MdbError::MapResized) => TxnError::MapResized,
            heed::Error::Io(io) => match io.raw_os_error() {
                // ENOSPC, EDQUOT: space may come back.
                Some(28) | Some(122) => TxnError::Other(LmdbError::NoSpace(io.to_string())),
                // EPERM, EACCES, EROFS: it will not, by itself.
                Some(1) | Some(13) | Some(30) => {
                    TxnError::Other(LmdbError::Unwritable(io.to_string()))
                }
                _ => TxnError::Other(LmdbError::Io(io.to_string())),
            },
            heed::Error::Mdb(m) => TxnError::Other(LmdbError::Fatal(m.to_string())),
            heed::Error::Encoding(e) | heed::Error::Decoding(e) => {
                TxnError::Other(LmdbError::Fatal(e.to_string()))
            }
            heed::Error::EnvAlreadyOpened => {
                TxnError::Other(LmdbError::Fatal("environment already opened".into()))
            }
        }
    }
}

impl From<heed::Error> for LmdbError {
    fn from(e: heed::Error) -> Self {
        match TxnError::from(e) {
            TxnError::MapFull => LmdbError::MapAtLimit { size: 0 },
            TxnError::MapResized => {
                LmdbError::Io("another process resized the map; retry adopts its size".into())
            }
            TxnError::Other(e) => e,
        }
    }
}
