//! `nekhebet-dev`: development tooling (test traffic, the benchmark ceiling), built only with the
//! `dev` feature so that production builds of the worker do not carry it. See `dev`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nekhebet_store::dev::{ceiling, limit, produce};

// The worker's allocator, so that the bench's measured costs are the worker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "nekhebet-dev",
    version,
    about = "Development tooling for nekhebet-store: test traffic and the benchmark helpers"
)]
struct Cli {
    /// A TOML configuration file (layered over config/default.toml; NEKHEBET_* variables override it).
    #[arg(long, global = true, env = "NEKHEBET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish signed development envelopes (or the lines of a JSONL file) to Kafka.
    Produce(produce::ProduceArgs),
    /// Benchmark helper: binary COPY + one LMDB transaction of a JSONL file (the ceiling), into an
    /// empty database.
    #[command(name = "bench-ceiling")]
    BenchCeiling(ceiling::CeilingArgs),
    /// Benchmark helper: the CPU cost per envelope of each piece of work the worker cannot skip,
    /// measured alone (decode, canonicalize + hash, Ed25519, LMDB puts, binary COPY, consume).
    #[command(name = "bench-limit")]
    BenchLimit(limit::LimitArgs),
    /// Benchmark helper: delete topics (the benchmarks' own).
    #[command(name = "delete-topics")]
    DeleteTopics(limit::DeleteTopicsArgs),
}

fn main() -> ExitCode {
    nekhebet_store::alloc::configure();
    let cli = Cli::parse();
    nekhebet_store::cli::run_program("nekhebet-dev", cli.config.as_deref(), |config| async move {
        match cli.command {
            Command::Produce(a) => produce::command(a, &config).await,
            Command::BenchCeiling(a) => ceiling::run(a, &config).await,
            Command::BenchLimit(a) => limit::run(a, &config).await,
            Command::DeleteTopics(a) => limit::delete_topics(a, &config).await,
        }
    })
}
