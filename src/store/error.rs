//! The store's error taxonomy: every failure of a backend is one [`StoreError`], and
//! [`StoreError::class`] is the one place that decides what the caller does about it.
//!
//! - [`ErrorClass::Transient`]: back off and retry the same batch; nothing was committed.
//! - [`ErrorClass::Message`]: the content of a message caused it; split the batch to isolate it.
//! - [`ErrorClass::Fatal`]: neither retrying nor isolating helps; stop without committing.
//!
//! The backends say what kind of failure theirs is ([`PgError::class`], [`LmdbError::class`]);
//! the matches are exhaustive, so a new kind of failure must be classified where it is added.

use super::lmdb::LmdbError;
use super::postgres::PgError;

/// How the caller should react to a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Back off and retry the same batch; nothing was committed.
    Transient,
    /// Caused by the content of a message: split the batch to isolate it.
    Message,
    /// Neither retrying nor isolating helps: fail loudly without committing.
    Fatal,
}

/// A storage failure. [`StoreError::is_retriable`] tells the ingest loop whether to back off and retry
/// the same batch (nothing committed) or to isolate the message that caused it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Lmdb(#[from] LmdbError),
    /// A blocking LMDB task panicked or was cancelled: a bug, never a data problem.
    #[error("LMDB worker task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub fn is_retriable(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// Transient (retry the batch), Message (isolate the message that causes it) or Fatal (stop
    /// without committing).
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Postgres(e) => e.class(),
            StoreError::Lmdb(e) => e.class(),
            StoreError::Task(_) => ErrorClass::Fatal,
        }
    }

    /// A transient failure that lasts until someone acts: LMDB's map at `lmdb.max_map_size`, or
    /// its filesystem full. Retrying is still right (nothing is committed meanwhile), but an
    /// operator must be told.
    pub fn needs_operator(&self) -> bool {
        match self {
            StoreError::Lmdb(e) => e.needs_operator(),
            StoreError::Postgres(_) | StoreError::Task(_) => false,
        }
    }

    /// A short stable label for metrics and logs (`retries by cause`).
    pub fn cause(&self) -> &'static str {
        match self {
            StoreError::Postgres(e) => e.cause(),
            StoreError::Lmdb(e) => e.cause(),
            StoreError::Task(_) => "lmdb_task",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::PgErrorKind;

    fn pg(kind: PgErrorKind) -> StoreError {
        StoreError::Postgres(PgError {
            kind,
            message: String::new(),
        })
    }

    #[test]
    fn every_failure_has_one_class() {
        let cases = [
            (pg(PgErrorKind::Connection), ErrorClass::Transient),
            (pg(PgErrorKind::PoolTimeout), ErrorClass::Transient),
            (pg(PgErrorKind::Serialization), ErrorClass::Transient),
            (pg(PgErrorKind::Resources), ErrorClass::Transient),
            (pg(PgErrorKind::Data), ErrorClass::Message),
            (pg(PgErrorKind::Schema), ErrorClass::Fatal),
            (pg(PgErrorKind::Other), ErrorClass::Fatal),
            (
                StoreError::Lmdb(LmdbError::MapAtLimit { size: 1 }),
                ErrorClass::Transient,
            ),
            (
                StoreError::Lmdb(LmdbError::NoSpace(String::new())),
                ErrorClass::Transient,
            ),
            (
                StoreError::Lmdb(LmdbError::Io(String::new())),
                ErrorClass::Transient,
            ),
            (
                StoreError::Lmdb(LmdbError::Fatal(String::new())),
                ErrorClass::Fatal,
            ),
            (StoreError::Task(String::new()), ErrorClass::Fatal),
        ];
        for (e, class) in cases {
            assert_eq!(e.class(), class, "{e:?}");
            assert_eq!(e.is_retriable(), class == ErrorClass::Transient, "{e:?}");
        }
    }

    #[test]
    fn only_a_full_lmdb_needs_an_operator() {
        assert!(StoreError::Lmdb(LmdbError::MapAtLimit { size: 1 }).needs_operator());
        assert!(StoreError::Lmdb(LmdbError::NoSpace(String::new())).needs_operator());
        assert!(!StoreError::Lmdb(LmdbError::Io(String::new())).needs_operator());
        assert!(!pg(PgErrorKind::Resources).needs_operator());
        assert!(!StoreError::Task(String::new()).needs_operator());
    }
}
