//! PostgreSQL failures and their classification: SQLSTATE codes and client-side failures become
//! a [`PgErrorKind`], which decides the [`ErrorClass`] (retry the batch, isolate a message, or
//! stop). A unique violation on one of the indexes a batch looked up before its COPY
//! ([`RACED_CONSTRAINTS`]) means another writer committed the same key in between: retried, not
//! dead-lettered.

use crate::store::error::ErrorClass;

/// What kind of PostgreSQL failure this is, which decides what the ingest loop does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgErrorKind {
    /// Connection refused, reset or closed; server starting up or shutting down.
    Connection,
    /// No pooled connection became available in time.
    PoolTimeout,
    /// Serialization failure or deadlock: the transaction may simply be retried.
    Serialization,
    /// The server is read-only (25006: a standby, or a primary demoted by a failover): retried on
    /// a new connection, which may reach the new primary.
    ReadOnly,
    /// Out of connections, disk, memory; lock or statement timeout.
    Resources,
    /// The data of one message is refused (invalid text, constraint violation…): isolate it.
    Data,
    /// Missing table or column, permission denied: configuration or migration problem; stop.
    Schema,
    /// Anything else; treated as fatal rather than guessed at.
    Other,
}

impl PgErrorKind {
    pub fn class(self) -> ErrorClass {
        match self {
            PgErrorKind::Connection
            | PgErrorKind::PoolTimeout
            | PgErrorKind::Serialization
            | PgErrorKind::ReadOnly
            | PgErrorKind::Resources => ErrorClass::Transient,
            PgErrorKind::Data => ErrorClass::Message,
            PgErrorKind::Schema | PgErrorKind::Other => ErrorClass::Fatal,
        }
    }
}

/// A PostgreSQL failure. Its message never contains the connection URL or its password.
#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL ({kind:?}): {message}")]
pub struct PgError {
    pub kind: PgErrorKind,
    pub message: String,
}

impl PgError {
    pub fn is_retriable(&self) -> bool {
        self.kind.class() == ErrorClass::Transient
    }

    pub fn class(&self) -> ErrorClass {
        self.kind.class()
    }

    pub fn cause(&self) -> &'static str {
        match self.kind {
            PgErrorKind::Connection => "postgres_connection",
            PgErrorKind::PoolTimeout => "postgres_pool_timeout",
            PgErrorKind::Serialization => "postgres_serialization",
            PgErrorKind::ReadOnly => "postgres_read_only",
            PgErrorKind::Resources => "postgres_resources",
            PgErrorKind::Data => "postgres_data",
            PgErrorKind::Schema => "postgres_schema",
            PgErrorKind::Other => "postgres_other",
        }
    }
}

/// The unique indexes a batch looks up before its COPY (every unique constraint of `events` and
/// `replay_guard` the plan decides on): a violation of one of them means the database holds a key
/// the batch did not look up (a blind COPY), or another writer committed it between the lookup and
/// the COPY; either way the batch is saved again with lookups, which decide it right.
/// `idx_events_seq` is not among them: a clash there is a sequence reset, not a race.
pub(crate) const RACED_CONSTRAINTS: [&str; 3] = [
    "replay_guard_pkey",
    "idx_events_content_hash",
    "events_pkey",
];

fn kind_of_sqlstate(code: &str, constraint: Option<&str>) -> PgErrorKind {
    match code {
        "23505" if constraint.is_some_and(|c| RACED_CONSTRAINTS.contains(&c)) => {
            PgErrorKind::Serialization
        }
        "40001" | "40P01" => PgErrorKind::Serialization,
        "25006" => PgErrorKind::ReadOnly,
        "57P01" | "57P02" | "57P03" | "57P05" => PgErrorKind::Connection,
        "55P03" | "57014" => PgErrorKind::Resources,
        "42501" => PgErrorKind::Schema,
        c if c.starts_with("08") => PgErrorKind::Connection,
        c if c.starts_with("53") => PgErrorKind::Resources,
        c if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => PgErrorKind::Data,
        c if c.starts_with("42") || c.starts_with("3F") => PgErrorKind::Schema,
        _ => PgErrorKind::Other,
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let mut message = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(c) = db.constraint() {
                message.push_str(&format!(", constraint {c}"));
            }
            return PgError {
                kind: kind_of_sqlstate(db.code().code(), db.constraint()),
                message,
            };
        }
        // No server error: the connection failed or closed under us (or a client-side conversion
        // error, which our typed statements do not produce).
        // tokio-postgres puts the useful part ("Connection refused") in the source chain.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        let kind = if e.is_closed()
            || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
            || text.contains("timed out")
            || text.contains("connect")
        {
            PgErrorKind::Connection
        } else {
            PgErrorKind::Other
        };
        PgError {
            kind,
            message: text,
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{HookError, PoolError, TimeoutType};
        match e {
            PoolError::Timeout(TimeoutType::Wait) => PgError {
                kind: PgErrorKind::PoolTimeout,
                message: "timed out waiting for a pooled connection".into(),
            },
            PoolError::Timeout(TimeoutType::Create) | PoolError::Timeout(TimeoutType::Recycle) => {
                PgError {
                    kind: PgErrorKind::Connection,
                    message: "timed out connecting to PostgreSQL".into(),
                }
            }
            PoolError::Backend(e) => e.into(),
            PoolError::Closed => PgError {
                kind: PgErrorKind::Other,
                message: "the connection pool is closed".into(),
            },
            PoolError::NoRuntimeSpecified => PgError {
                kind: PgErrorKind::Other,
                message: "the connection pool has no runtime".into(),
            },
            PoolError::PostCreateHook(HookError::Backend(e)) => e.into(),
            PoolError::PostCreateHook(HookError::Message(m)) => PgError {
                kind: PgErrorKind::Connection,
                message: m.into_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_database_after_a_failover_is_transient() {
        // 25006 read_only_sql_transaction: a replica promoted, or the old primary demoted.
        assert_eq!(
            kind_of_sqlstate("25006", None).class(),
            ErrorClass::Transient
        );
    }

    #[test]
    fn sqlstates_are_classified() {
        assert_eq!(
            kind_of_sqlstate("40001", None).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            kind_of_sqlstate("57P01", None).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            kind_of_sqlstate("08006", None).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            kind_of_sqlstate("53300", None).class(),
            ErrorClass::Transient
        );
        assert_eq!(kind_of_sqlstate("22021", None).class(), ErrorClass::Message);
        assert_eq!(kind_of_sqlstate("23505", None).class(), ErrorClass::Message);
        assert_eq!(kind_of_sqlstate("42P01", None).class(), ErrorClass::Fatal);
        assert_eq!(kind_of_sqlstate("42501", None).class(), ErrorClass::Fatal);
        assert_eq!(kind_of_sqlstate("XX000", None).class(), ErrorClass::Fatal);
        // Another writer won a race on a key the batch had looked up: retry, do not dead-letter.
        for c in RACED_CONSTRAINTS {
            assert_eq!(
                kind_of_sqlstate("23505", Some(c)).class(),
                ErrorClass::Transient
            );
        }
        // A unique index the plan does not decide on (a sequence reset): not a race.
        assert_eq!(
            kind_of_sqlstate("23505", Some("idx_events_seq")).class(),
            ErrorClass::Message
        );
    }
}
