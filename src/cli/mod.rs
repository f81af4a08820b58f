//! Command-line interface: argument parsing and the small commands. `main.rs` only calls [`main`].

mod audit;
mod dlq;
mod import;
pub mod ingest;
pub mod keys;
mod offsets;
mod positions;
pub mod reconcile;
pub mod replay_guard;
mod serve;
mod status;
mod table;
mod tlog;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::config::Config;
use crate::store::read::Key;
use crate::store::{PgStore, Store};

#[derive(Parser, Debug)]
#[command(
    name = "nekhebet-store",
    version,
    about = "Kafka ingestion worker and append-only store for signed Nekhebet v4 envelopes"
)]
pub struct Cli {
    /// A TOML configuration file (layered over config/default.toml; NEKHEBET_* variables override it).
    #[arg(long, global = true, env = "NEKHEBET_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the ingestion worker until SIGINT/SIGTERM (or --until-caught-up).
    Ingest(ingest::IngestArgs),
    /// Apply the embedded PostgreSQL migrations (idempotent).
    Migrate,
    /// Import JSONL envelopes (one a line) through the same batch path as the worker.
    Import(import::ImportArgs),
    /// Print the stored envelope bytes of an event (exit 1 if absent), read as `serve` reads them:
    /// LMDB first, PostgreSQL when LMDB lacks the blob or it fails the check against the content
    /// hash.
    Get {
        /// Event id (UUID).
        #[arg(required_unless_present = "hash")]
        id: Option<Uuid>,
        /// Look up by content hash (the payload hash) instead.
        #[arg(long, conflicts_with = "id")]
        hash: Option<String>,
    },
    /// Verify envelopes offline exactly as nekhebet-core 4.0 does: one wire envelope a line in,
    /// one JSON verdict a line out, in input order; a summary on stderr. Exit 0 when the input
    /// could be read, whatever the verdicts.
    Verify {
        /// The instant to judge expiry and clock skew at (RFC 3339); default now.
        #[arg(long)]
        at: Option<String>,
        /// JSONL file; `-` or nothing reads standard input.
        file: Option<PathBuf>,
    },
    /// Replay-guard maintenance.
    #[command(name = "replay-guard", subcommand)]
    ReplayGuard(replay_guard::ReplayGuardCommand),
    /// The public keys each key_id is pinned to (without a key registry): list, pin, unpin.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Compare PostgreSQL and LMDB (missing blobs, orphans, differing bytes), either LMDB layout;
    /// `--repair` writes PostgreSQL's bytes for missing and differing blobs. Exit 1 when
    /// inconsistent and not repaired.
    Reconcile {
        #[arg(long)]
        repair: bool,
    },
    /// Serve the HTTP read API on `serve.listen` until SIGINT/SIGTERM: GET /v1/events/{id},
    /// /v1/events/by-hash/{content_hash}, /v1/events (filtered pages), /healthz, /readyz,
    /// /metrics. Runs beside a worker on the same LMDB, or alone.
    Serve,
    /// Print the effective configuration as TOML, secrets masked.
    Config,
    /// The stored offsets of a topic next to Kafka's (`show`), and moving them (`reset`): the way
    /// out after a topic was re-created.
    #[command(subcommand)]
    Offsets(offsets::OffsetsCommand),
    /// The dead-letter topics: what is in them (`inspect`), and re-publishing letters to their
    /// source topic once their cause is fixed (`redrive`).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Where every partition stands (stores, Kafka, lag, owner), events stored, store sizes and,
    /// with `--metrics`, the outcomes of the last minute; `--watch` keeps it on screen.
    Status(status::StatusArgs),
    /// Recompute the transparency log from the store and name every changed, missing or extra
    /// row or blob by id and leaf index; check the checkpoints' roots and signatures, and with
    /// --checkpoint that the log still holds a checkpoint a client kept. Exit 1 on any finding.
    Audit(audit::AuditArgs),
    /// The transparency log's signing key (`keygen`).
    #[command(subcommand)]
    Tlog(tlog::TlogCommand),
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    run_program("nekhebet-store", cli.config.as_deref(), |config| {
        run(cli.command, config)
    })
}

/// The frame of every binary of this crate: loads the configuration (an error names the key and
/// exits 2), sets up logging, runs `body` on a multi-threaded runtime, and turns an error into a
/// message on stderr and exit code 2.
pub fn run_program<F>(
    program: &str,
    config_file: Option<&std::path::Path>,
    body: impl FnOnce(Config) -> F,
) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let config = match Config::load(config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(body(config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{program}: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Ingest(a) => ingest::command(a, &config).await,
        Command::Migrate => {
            let pg = PgStore::connect(&config.postgres)
                .await
                .context("connecting to PostgreSQL")?;
            let applied = pg.migrate().await.context("applying migrations")?;
            if applied.is_empty() {
                println!("schema is up to date");
            }
            for (v, name) in applied {
                println!("applied migration {v:04} {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import(args) => import::run(args, &config).await,
        Command::Get { id, hash } => {
            let key = match (id, hash) {
                (Some(id), _) => Key::Id(id),
                (None, Some(h)) => Key::parse_hash(&h)
                    .map_err(|e| anyhow::anyhow!("--hash {h:?}: expected {e}"))?,
                (None, None) => anyhow::bail!("give an id or --hash"),
            };
            let store = Store::open_for(&config, crate::store::Access::Read)
                .await
                .context("opening the store")?;
            match store.read(&key).await? {
                Some(found) => {
                    std::io::stdout().write_all(&found.bytes)?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("not found: {key}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Verify { at, file } => {
            let at = match at {
                Some(s) => chrono::DateTime::parse_from_rfc3339(&s)
                    .with_context(|| format!("--at {s:?}: expected an RFC 3339 instant such as 2026-11-25T16:24:49.442Z"))?
                    .with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            let verifier =
                crate::verify::Verifier::new(crate::pipeline::verify_config(&config.verify)?);
            let limits = crate::envelope::Limits {
                max_message_bytes: config.limits.max_message_bytes,
            };
            let input: Box<dyn std::io::BufRead> = match &file {
                Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                )),
                _ => Box::new(std::io::BufReader::new(std::io::stdin())),
            };
            let stdout = std::io::stdout();
            let summary = crate::verify::verify_lines(
                input,
                std::io::BufWriter::new(stdout.lock()),
                at,
                &verifier,
                &limits,
            )
            .context("reading the input")?;
            eprintln!(
                "{} lines: {} valid, {} invalid, {} undecodable",
                summary.lines, summary.valid, summary.invalid, summary.undecodable
            );
            for (reason, n) in &summary.by_reason {
                eprintln!("  {reason:<30} {n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile { repair } => reconcile::run(&config, repair).await,
        Command::Serve => serve::command(&config).await,
        Command::ReplayGuard(c) => replay_guard::run(c, &config).await,
        Command::Keys(c) => keys::run(c, &config).await,
        Command::Offsets(c) => offsets::run(c, &config).await,
        Command::Dlq(c) => dlq::run(c, &config).await,
        Command::Status(a) => status::run(a, &config).await,
        Command::Tlog(c) => tlog::run(c, &config),
        Command::Audit(a) => audit::run(a, &config).await,
        Command::Config => {
            let mut shown = config.clone();
            shown.postgres.url = crate::config::redact_url(&shown.postgres.url);
            shown.kafka.properties = crate::config::mask_properties(&shown.kafka.properties);
            println!("{}", toml_dump(&shown)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn toml_dump(config: &Config) -> anyhow::Result<String> {
    Ok(toml::to_string_pretty(config)?)
}
