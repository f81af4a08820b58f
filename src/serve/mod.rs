//! `nekhebet-store serve`: the HTTP read API over the store (axum on hyper, HTTP/1.1, optional
//! TLS). Runs beside a worker on the same LMDB (it opens LMDB without writing to it, see
//! [`crate::store::LmdbStore::open_reader`]) or alone, and reads PostgreSQL as a reader
//! (`nekhebet_reader` is enough). In hybrid mode it runs the LMDB mirror
//! ([`crate::store::mirror`]), whose short write transactions are its only writes to LMDB
//! (`lmdb.mirror_rate = 0`: none).
//!
//! | module | owns |
//! |---|---|
//! | `mod` | [`start`]: checks, state, the router |
//! | `auth` | bearer tokens (SHA-256 digests, constant-time), the loopback rule |
//! | `events` | `GET /v1/events/{id}`, `GET /v1/events/by-hash/{content_hash}` |
//! | `gather` | single-event reads answered in pages |
//! | `list` | `GET /v1/events`: filters, keyset pages, the ndjson stream |
//! | `cursor` | the listing's opaque cursor |
//! | `stream` | `GET /v1/stream`: Server-Sent Events in commit order, then live |
//! | `log` | the transparency log: `/log/checkpoint`, `/log/tile/…`, `/log/consistency`, `/v1/events/{id}/proof` |
//! | `health` | `/healthz`, `/readyz`, `/metrics` |
//! | `observe` | URI limit, request timeout, request metrics |
//! | `error` | `{"error": code, "detail": …}` responses |
//! | `server` | the accept loop: connection limit, header timeout, graceful shutdown |
//! | `io` | the write deadline that cuts clients that stop reading |
//! | `tls` | the rustls acceptor from PEM files |

pub mod auth;
mod cursor;
mod error;
mod events;
mod gather;
mod health;
mod io;
mod list;
mod log;
mod observe;
mod server;
mod stream;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::Store;
use crate::telemetry::Health;

pub use events::SERVED_FROM;
pub use list::{MAX_LIMIT, NEXT_CURSOR};
pub use observe::MAX_URI_BYTES;
pub use server::MAX_HEAD_BYTES;
pub use stream::{format_position, parse_position};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    /// Single-event reads, answered in pages.
    gather: gather::Gather,
    /// Single-event reads in progress (`serve.max_concurrent_reads`).
    reads: Arc<Semaphore>,
    /// Listings streaming (`serve.max_concurrent_listings`).
    listings: Arc<Semaphore>,
    /// Streams open (`serve.max_concurrent_streams`).
    streams: Arc<Semaphore>,
    /// The commit horizon, kept by [`stream::watch_horizon`] while a stream is open.
    horizon: Arc<watch::Sender<i64>>,
    /// Ends the streams when the server stops.
    shutdown: CancellationToken,
    metrics: PrometheusHandle,
    /// The store's gauges (pool, LMDB map), refreshed per scrape.
    gauges: Arc<Health>,
}

/// A server that is listening.
pub struct Serving {
    pub addr: SocketAddr,
    pub tls: bool,
    /// Ends once the server has stopped (after `shutdown` and the drain).
    pub done: tokio::task::JoinHandle<()>,
}

/// Checks the configuration against the rules that need files or the store (tokens, TLS files,
/// the loopback rule, listings below the pool), binds `serve.listen` and serves until `shutdown`.
pub async fn start(
    config: &Config,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<Serving> {
    let cfg = &config.serve;
    let addr: SocketAddr = cfg
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("serve.listen = {}: {e}", cfg.listen))?;
    let tokens = Arc::new(auth::Tokens::load(cfg)?);
    auth::check_exposure(addr, &tokens, cfg.allow_anonymous)?;
    let tls = tls::acceptor(cfg)?;
    if store.postgres().is_some() && cfg.max_concurrent_listings >= config.postgres.pool_size {
        anyhow::bail!(
            "serve.max_concurrent_listings = {} must be below postgres.pool_size = {}: each listing holds a connection while it streams, and single-event reads need one too",
            cfg.max_concurrent_listings,
            config.postgres.pool_size
        );
    }
    let horizon = Arc::new(watch::Sender::new(0));
    if let Some(pg) = store.postgres() {
        tokio::spawn(stream::watch_horizon(
            pg.clone(),
            horizon.clone(),
            Duration::from_millis(cfg.stream_poll_ms),
            shutdown.clone(),
        ));
    }
    let tlog = crate::transparency::Setup::load(config)?;
    let gauges = Health::new(store.clone());
    let metrics = crate::telemetry::install_metrics()?;
    let mirror =
        crate::store::mirror::spawn(&store, config.lmdb.mirror_rate, shutdown.child_token());
    if let Some((status, _)) = &mirror {
        gauges.watch_mirror(status.clone());
    }
    let state = AppState {
        gather: gather::Gather::start(store.clone()),
        reads: Arc::new(Semaphore::new(cfg.max_concurrent_reads)),
        listings: Arc::new(Semaphore::new(cfg.max_concurrent_listings)),
        streams: Arc::new(Semaphore::new(cfg.max_concurrent_streams)),
        horizon,
        shutdown: shutdown.clone(),
        metrics,
        gauges,
        store,
    };
    let (state_store, state_gauges) = (state.store.clone(), state.gauges.clone());
    let app = router(
        state,
        tokens.clone(),
        Duration::from_millis(cfg.request_timeout_ms),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("serve.listen = {addr}: cannot listen: {e}"))?;
    let addr = listener.local_addr()?;
    let limits = server::ConnLimits {
        max_connections: cfg.max_connections,
        header_timeout: Duration::from_millis(cfg.header_timeout_ms),
        write_timeout: Duration::from_millis(cfg.write_timeout_ms),
        shutdown_timeout: Duration::from_millis(config.shutdown.timeout_ms),
    };
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        tokens = tokens.len(),
        anonymous = tokens.is_empty(),
        "serve: listening"
    );
    let is_tls = tls.is_some();
    let integrator =
        crate::cli::ingest::start_integrator(tlog, &state_store, &state_gauges, &shutdown);
    let server = server::run(listener, tls, app, limits, shutdown);
    let done = tokio::spawn(async move {
        server.await;
        if let Some(integrator) = integrator {
            integrator.stop().await;
        }
        // The mirror's token is a child of the server's: it is stopping too.
        if let Some((_, task)) = mirror {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the LMDB mirror task failed");
            }
        }
    });
    Ok(Serving {
        addr,
        tls: is_tls,
        done,
    })
}

fn router(state: AppState, tokens: Arc<auth::Tokens>, request_timeout: Duration) -> Router {
    let v1 = Router::new()
        .route("/v1/events", get(list::list))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/events/{id}", events::route(events::By::Id))
        .route(
            "/v1/events/by-hash/{content_hash}",
            events::route(events::By::Hash),
        )
        .route("/v1/events/{id}/proof", get(log::proof))
        .route("/log/checkpoint", get(log::checkpoint))
        .route("/log/tile/{*path}", get(log::tile))
        .route("/log/consistency", get(log::consistency))
        .route_layer(from_fn_with_state(tokens, auth::require));
    let operations = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics));
    v1.merge(operations)
        .route_layer(from_fn_with_state(request_timeout, observe::route))
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(from_fn(observe::record))
        .with_state(state)
}
