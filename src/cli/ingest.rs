//! `nekhebet-store ingest`: the worker as a process — opens the store, serves `/metrics`,
//! `/healthz` and `/readyz` on `telemetry.listen`, turns SIGINT/SIGTERM into the worker's shutdown
//! signal, runs the transparency log's integrator beside [`crate::ingest::run`] and prints its
//! outcome table.

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::{self, IngestOptions};
use crate::store::Store;

/// `nekhebet-store ingest` arguments (the CLI adds this as a subcommand).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct IngestArgs {
    /// Exit once every assigned partition is committed up to the high watermark it had when it was
    /// assigned (back-fills, the demo, benchmarks), instead of running until SIGINT/SIGTERM.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Print the final report as one JSON object instead of the table (benchmarks).
    #[arg(long)]
    pub report_json: bool,
}

/// The `ingest` command: opens the store, serves /metrics, /healthz and /readyz on
/// `telemetry.listen`, runs the worker until SIGINT/SIGTERM (or until caught up), prints the
/// outcome table. Exit code 0 after a graceful stop; an error (non-zero) when the worker had to
/// stop on a failure it cannot retry.
pub async fn command(args: IngestArgs, config: &Config) -> anyhow::Result<std::process::ExitCode> {
    let store = Store::open(config).await.context("opening the store")?;
    let tlog = crate::transparency::Setup::load(config)?;
    let shutdown = shutdown_on_signals();
    let health = crate::telemetry::Health::new(store.clone());
    // Cancelled when the worker stops, so the process ends with it (the cursor is consistent
    // between any two of its transactions).
    let mirror_stop = shutdown.child_token();
    let mirror = crate::store::mirror::spawn(&store, config.lmdb.mirror_rate, mirror_stop.clone());
    if let Some((status, _)) = &mirror {
        health.watch_mirror(status.clone());
    }
    if !config.telemetry.listen.is_empty() {
        let handle = crate::telemetry::install_metrics()?;
        let addr = crate::telemetry::serve(
            &config.telemetry.listen,
            handle,
            health.clone(),
            shutdown.child_token(),
        )
        .await?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics, health on /healthz and /readyz");
    }
    let integrator = start_integrator(tlog, &store, &health, &shutdown);
    let report = ingest::run(
        config,
        store,
        IngestOptions {
            until_caught_up: args.until_caught_up,
            group_joined: Some(health.consumer_joined.clone()),
            kafka_problem: Some(health.kafka_problem.clone()),
        },
        shutdown,
    )
    .await;
    if let Some(integrator) = integrator {
        if args.until_caught_up && report.is_ok() {
            // What this run stored goes into a published checkpoint before the process ends.
            integrator
                .finish(std::time::Duration::from_millis(config.shutdown.timeout_ms))
                .await;
        } else {
            integrator.stop().await;
        }
    }
    mirror_stop.cancel();
    if let Some((_, task)) = mirror {
        task.await.context("the LMDB mirror task failed")?;
    }
    let report = report?;
    if args.report_json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The transparency log's integrator beside the worker (or `serve`), when the log is on and the
/// store has PostgreSQL.
pub fn start_integrator(
    setup: Option<crate::transparency::Setup>,
    store: &Store,
    health: &crate::telemetry::Health,
    shutdown: &CancellationToken,
) -> Option<crate::transparency::Handle> {
    let setup = setup?;
    let Some(pg) = store.postgres() else {
        tracing::warn!("tlog: the transparency log lives in PostgreSQL; store.mode = \"lmdb\" has none: no log is built");
        return None;
    };
    Some(crate::transparency::integrator::spawn(
        setup,
        pg.clone(),
        health.tlog.clone(),
        shutdown,
    ))
}

/// Used by the `ingest` command: a shutdown token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        t.cancel();
    });
    token
}
