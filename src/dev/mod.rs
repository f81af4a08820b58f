//! Development tooling, kept out of what production runs: the `nekhebet-dev` binary's `produce`
//! (signed test traffic, or the lines of a file, to a topic) and `bench-ceiling` (the physical
//! ceiling the benchmarks compare the worker with), and the signer both use. Compiled only with
//! the `dev` cargo feature, which the test suite turns on (a dev-dependency of the crate on
//! itself) and `cargo build --features dev` turns on for the demo and the benchmarks; a plain
//! `cargo build --release` (the Docker image's worker) leaves it out.

pub mod ceiling;
pub mod produce;
pub mod signing;
