//! Command-line interface: argument parsing and the small commands. `main.rs` only calls [`main`].

mod dlq;
mod import;
pub mod ingest;
mod offsets;
mod positions;
pub mod reconcile;
mod status;
mod table;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::config::Config;
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
    /// Print the stored envelope bytes of an event (exit 1 if absent).
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
    ReplayGuard(ReplayGuardCommand),
    /// Compare PostgreSQL and LMDB (missing blobs, orphans, differing bytes); `--repair` copies
    /// missing blobs from PostgreSQL. Exit 1 when inconsistent and not repaired.
    Reconcile {
        #[arg(long)]
        repair: bool,
    },
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
}

#[derive(Subcommand, Debug)]
pub enum ReplayGuardCommand {
    /// Delete replay-guard entries issued before a duration ago (30d, 12h, 90m, 45s) or an RFC 3339
    /// instant, in every configured store.
    ///
    /// Trade-off: once an entry is deleted, the same (key_id, nonce) is accepted again. Envelopes
    /// that carry `expires_at` are still refused by verification once expired, but for envelopes
    /// WITHOUT `expires_at` the replay window reopens: keep the retention longer than any replay
    /// you must catch.
    Cleanup {
        #[arg(long)]
        older_than: String,
    },
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
            let store = Store::open(&config).await.context("opening the store")?;
            let blob = match (id, hash) {
                (Some(id), _) => store.get(id).await?,
                (None, Some(h)) => store.get_by_hash(&h).await?,
                (None, None) => anyhow::bail!("give an id or --hash"),
            };
            match blob {
                Some(b) => {
                    std::io::stdout().write_all(&b)?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("not found");
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
        Command::ReplayGuard(ReplayGuardCommand::Cleanup { older_than }) => {
            let cutoff = parse_cutoff(&older_than, chrono::Utc::now())?;
            let store = Store::open(&config).await.context("opening the store")?;
            if let Some(pg) = store.postgres() {
                println!(
                    "postgres: deleted {} replay-guard rows issued before {cutoff}",
                    pg.cleanup_replay_guard(cutoff).await?
                );
            }
            if let Some(lmdb) = store.lmdb() {
                let iso = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                println!(
                    "lmdb: deleted {} replay-guard entries issued before {iso}",
                    lmdb.cleanup_replay_guard(iso.clone()).await?
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Offsets(c) => offsets::run(c, &config).await,
        Command::Dlq(c) => dlq::run(c, &config).await,
        Command::Status(a) => status::run(a, &config).await,
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

/// `30d`, `12h`, `90m`, `45s` before `now`, or an RFC 3339 instant.
pub fn parse_cutoff(
    s: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("--older-than {s:?}: expected a duration like 30d, 12h, 90m, 45s or an RFC 3339 instant"))?;
    let d = match unit {
        "d" => chrono::Duration::days(n),
        "h" => chrono::Duration::hours(n),
        "m" => chrono::Duration::minutes(n),
        "s" => chrono::Duration::seconds(n),
        _ => anyhow::bail!("--older-than {s:?}: expected a duration like 30d, 12h, 90m, 45s or an RFC 3339 instant"),
    };
    Ok(now - d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-31T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_cutoff("1d", now).unwrap().to_rfc3339(),
            "2026-01-30T00:00:00+00:00"
        );
        assert_eq!(
            parse_cutoff("2026-01-01T00:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-01-01T00:00:00+00:00"
        );
        assert!(parse_cutoff("soon", now).is_err());
        assert!(parse_cutoff("5y", now).is_err());
    }
}
