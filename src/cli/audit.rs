//! `nekhebet-store audit [--checkpoint FILE] [--vkey KEY]`: the transparency log recomputed from
//! the store ([`crate::transparency::audit`]), every finding printed on stdout as it is found, a
//! progress bar on stderr when it is a terminal. Exit 0 only when everything matches, 1 on any
//! finding, 2 when the audit could not run.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;

use crate::config::{Config, LmdbLayout};
use crate::store::{Access, Store};
use crate::tlog::{Checkpoint, NoteVerifier};
use crate::transparency::audit::{self, Blobs, Checker};
use crate::transparency::{signing, DEFAULT_ORIGIN};

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// A checkpoint a client kept (the signed note as served by /log/checkpoint): the log must
    /// still hold its tree.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The log's verifier key (`NAME+HASH+KEY`, as `tlog keygen` printed it), to check signatures
    /// without the signing key; default: derived from `tlog.signing_key_file`.
    #[arg(long)]
    vkey: Option<String>,
}

pub async fn run(args: AuditArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let verifier = match (&args.vkey, &config.tlog.signing_key_file) {
        (Some(v), _) => Some(NoteVerifier::parse(v.trim()).map_err(|e| {
            anyhow::anyhow!("--vkey: {e}: expected a note verifier key NAME+HASH+BASE64, as `tlog keygen` prints it")
        })?),
        (None, Some(path)) => Some(signing::load_signer(path).map_err(anyhow::Error::msg)?.verifier()),
        (None, None) => None,
    };
    let origin = match (config.tlog.origin.as_str(), &verifier) {
        ("", Some(v)) => v.name().to_string(),
        ("", None) => DEFAULT_ORIGIN.to_string(),
        (o, _) => o.to_string(),
    };
    if verifier.is_none() {
        eprintln!(
            "note: no --vkey and no tlog.signing_key_file: checkpoint signatures are not checked"
        );
    }
    let kept = match &args.checkpoint {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--checkpoint {}", path.display()))?;
            let parsed = match &verifier {
                Some(v) => Checkpoint::open(text.as_bytes(), &origin, std::slice::from_ref(v))
                    .map(|(c, _)| c),
                None => Checkpoint::parse(&format!(
                    "{}\n",
                    text.split_once("\n\n")
                        .map_or(text.as_str(), |(body, _)| body)
                        .trim_end_matches('\n')
                )),
            };
            Some(parsed.map_err(|e| {
                anyhow::anyhow!(
                    "--checkpoint {}: not a checkpoint of {origin} signed by the log's key: {e}",
                    path.display()
                )
            })?)
        }
    };
    let store = Store::open_for(config, Access::Read)
        .await
        .context("opening the store")?;
    let Some(pg) = store.postgres() else {
        anyhow::bail!("audit needs PostgreSQL: the transparency log lives there (store.mode = \"lmdb\" has none)");
    };
    let blobs = match &store {
        Store::Hybrid(h) => Some(Blobs {
            lmdb: h.lmdb(),
            by_seq: h.layout() == LmdbLayout::Append,
        }),
        Store::Postgres(_) | Store::Lmdb(_) => None,
    };
    // A connection of its own: the audit's snapshot transaction lives on it.
    let client = deadpool_postgres::Object::take(
        pg.pool()
            .get()
            .await
            .map_err(crate::store::postgres::PgError::from)?,
    );
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} leaves {per_sec} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    let summary = audit::run(
        &client,
        Checker::new(&origin, verifier, kept),
        blobs,
        |f| match &bar {
            Some(bar) => bar.suspend(|| println!("{f}")),
            None => println!("{f}"),
        },
        |done, total| {
            if let Some(bar) = &bar {
                bar.set_length(total);
                bar.set_position(done);
            }
        },
    )
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "audited {} leaves, {} checkpoints, {} LMDB blobs in {secs:.2} s ({:.0} leaves/s); {} events stored after the last leaf (not integrated yet)",
        summary.leaves,
        summary.checkpoints,
        summary.blobs,
        summary.leaves as f64 / secs.max(1e-9),
        summary.pending
    );
    if summary.findings > 0 {
        println!("{} findings", summary.findings);
        return Ok(ExitCode::from(1));
    }
    println!("ok: {} leaves match the store", summary.leaves);
    Ok(ExitCode::SUCCESS)
}
