//! nekhebet-store: a Kafka ingestion worker and append-only store for signed Nekhebet v4 envelopes.
//!
//! The pure core (`envelope`, `canonical`, `verify`, `batch`) does no IO; the edges (`store`,
//! `ingest`, `dlq`, `telemetry`) own their errors and say which ones are retriable.
#![deny(unsafe_code)]

pub mod alloc;
pub mod batch;
pub mod canonical;
pub mod cli;
pub mod config;
#[cfg(any(test, feature = "dev"))]
pub mod dev;
pub mod dlq;
pub mod envelope;
pub mod failpoint;
pub mod ingest;
pub mod kafka;
pub mod partition;
pub mod pipeline;
pub mod reason;
pub mod serve;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod test_data;
pub mod tlog;
pub mod transparency;
pub mod verify;
