//! Shared helpers for integration tests against the real local services (`scripts/services up`).
#![allow(dead_code)]

pub mod dlq;
pub mod faults;
pub mod kafka;
pub mod pg;
pub mod samples;
pub mod worker;

/// A save the test knows nothing in is refused: its outcomes.
pub trait Committed<T> {
    fn committed(self) -> T;
}

impl<T> Committed<T> for nekhebet_store::store::Saved<T> {
    #[track_caller]
    fn committed(self) -> T {
        match self {
            nekhebet_store::store::Saved::Committed(t) => t,
            nekhebet_store::store::Saved::Refused(r) => panic!("refused: {r:?}"),
        }
    }
}
