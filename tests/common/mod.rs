//! Shared helpers for integration tests against the real local services (`scripts/services up`).
#![allow(dead_code)]

pub mod faults;
pub mod kafka;
pub mod pg;
pub mod worker;
