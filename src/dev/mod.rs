//! Development tooling, kept out of what production runs: the `nekhebet-dev` binary's `produce`
//! (signed test traffic, or the lines of a file, to a topic), `bench-ceiling` (the sequential
//! ceiling the benchmarks compare the worker with), `bench-limit` (the CPU cost per envelope of
//! each piece of unavoidable work, issue 17 §2), `delete-topics`, and the signer they use.
//! Compiled only with the `dev` cargo feature, which the test suite turns on (a dev-dependency of
//! the crate on itself) and `cargo build --features dev` turns on for the demo and the benchmarks;
//! a plain `cargo build --release` (the Docker image's worker) leaves it out.
//!
//! `produce` publishes (the Kafka side, its report and CLI arguments); what it publishes comes
//! from `generate` (keys, payload shapes, duplicates, replays, repeats, poison).

pub mod ceiling;
mod generate;
pub mod limit;
pub mod produce;
pub mod signing;
