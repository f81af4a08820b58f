//! `nekhebet-store serve`: the HTTP read API as a process — opens the store for reading (LMDB
//! without writing to it, so it runs beside a worker; only the LMDB mirror writes, in short
//! transactions), serves until SIGINT/SIGTERM, then finishes the requests in flight (at most
//! `shutdown.timeout_ms`).

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;
use crate::store::Store;

pub async fn command(config: &Config) -> anyhow::Result<ExitCode> {
    let store = Store::open_for(config, crate::store::Access::Read)
        .await
        .context("opening the store")?;
    let shutdown = super::ingest::shutdown_on_signals();
    let serving = crate::serve::start(config, store, shutdown).await?;
    let scheme = if serving.tls { "https" } else { "http" };
    // On stdout, for scripts and tests started with port 0.
    println!("listening on {scheme}://{}", serving.addr);
    std::io::stdout().flush()?;
    serving.done.await.context("the server task failed")?;
    tracing::info!("serve: stopped");
    Ok(ExitCode::SUCCESS)
}
