//! Metrics (Prometheus exporter), health endpoints and tracing set-up.

pub mod names;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::{LogConfig, LogFormat};
use crate::store::mirror::MirrorStatus;
use crate::store::Store;

/// Masks an identifier the way nekhebet-core does in logs (key_id, nonce of a caught replay): the
/// first and last 4 characters.
pub fn mask(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len().max(4));
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

/// Sets up `tracing` from `log.level` (or `RUST_LOG`, which wins) and `log.format`. Logs go to
/// stderr so stdout stays free for command output.
pub fn init_tracing(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is not an error worth reporting.
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Installs the global Prometheus recorder (once per process) and returns its handle.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ];
    let records = [
        1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ];
    let bytes = [1e3, 1e4, 1e5, 5e5, 1e6, 2e6, 4e6, 8e6, 16e6, 32e6];
    let page_keys = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(names::BATCH_RECORDS.into()), &records)?
        .set_buckets_for_metric(Matcher::Full(names::BATCH_BYTES.into()), &bytes)?
        .set_buckets_for_metric(Matcher::Full(names::READ_PAGE_KEYS.into()), &page_keys)?
        .install_recorder()?;
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git" => option_env!("NEKHEBET_GIT_HASH").unwrap_or("unknown")).set(1.0);
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// What `/readyz` looks at.
pub struct Health {
    /// Set by the ingest loop once the consumer has joined its group (has an assignment or has
    /// completed a rebalance).
    pub consumer_joined: Arc<AtomicBool>,
    /// Why Kafka refuses the consumer, when it does (set by the consumer's error callback).
    pub kafka_problem: crate::kafka::KafkaProblem,
    /// The transparency log's integrator (a refusal to sign makes the process unready).
    pub tlog: crate::transparency::SharedStatus,
    store: Store,
    /// The LMDB mirror's status, when this process runs one (a detail of `/readyz`).
    mirror: std::sync::OnceLock<MirrorStatus>,
}

impl Health {
    pub fn new(store: Store) -> Arc<Health> {
        Arc::new(Health {
            consumer_joined: Arc::new(AtomicBool::new(false)),
            kafka_problem: Default::default(),
            tlog: Default::default(),
            store,
            mirror: std::sync::OnceLock::new(),
        })
    }

    /// Reports this mirror's lag in `/readyz` (once; a process runs at most one mirror).
    pub fn watch_mirror(&self, status: MirrorStatus) {
        let _ = self.mirror.set(status);
    }

    pub fn mirror(&self) -> Option<&MirrorStatus> {
        self.mirror.get()
    }

    /// `Ok` when ready; otherwise the list of what is missing.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut missing = Vec::new();
        if !self.consumer_joined.load(Ordering::Relaxed) {
            let problem = self
                .kafka_problem
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            missing.push(
                problem.unwrap_or_else(|| "kafka: consumer has not joined its group".to_string()),
            );
        }
        missing.extend(store_readiness(&self.store).await);
        missing.extend(self.tlog.readiness_problem());
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    /// Refreshes the pool and LMDB gauges (called before each scrape).
    pub fn refresh_gauges(&self) {
        if let Some(pg) = self.store.postgres() {
            let s = pg.pool().status();
            metrics::gauge!(names::PG_POOL_SIZE).set(s.size as f64);
            metrics::gauge!(names::PG_POOL_AVAILABLE).set(s.available as f64);
            metrics::gauge!(names::PG_POOL_WAITING).set(s.waiting as f64);
        }
        if let Some(lmdb) = self.store.lmdb() {
            let (map, used) = lmdb.usage();
            metrics::gauge!(names::LMDB_MAP_SIZE).set(map as f64);
            metrics::gauge!(names::LMDB_USED).set(used as f64);
        }
    }
}

/// What of the store does not answer (PostgreSQL within 2 s, LMDB); empty when all do.
pub async fn store_readiness(store: &Store) -> Vec<String> {
    let mut missing = Vec::new();
    if let Some(pg) = store.postgres() {
        match tokio::time::timeout(Duration::from_secs(2), pg.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => missing.push(format!("postgres: {e}")),
            Err(_) => missing.push("postgres: no answer within 2 s".to_string()),
        }
    }
    if let Some(lmdb) = store.lmdb() {
        if let Err(e) = lmdb.ping().await {
            missing.push(format!("lmdb: {e}"));
        }
    }
    missing
}

/// `/readyz`'s answer: 200 `{"ready": true, "missing": []}`, or 503 with what is missing. With an
/// LMDB mirror running, also `"lmdb_mirror_lag_events"`: the PostgreSQL rows this LMDB does not
/// hold yet (`null` before the first count). A detail, not a condition: a replica that is still
/// filling its LMDB serves correct answers (from PostgreSQL where LMDB lacks a blob).
pub fn readiness_response(
    missing: Vec<String>,
    mirror: Option<&MirrorStatus>,
) -> axum::response::Response {
    let status = if missing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let ready = missing.is_empty();
    let mut body = serde_json::json!({ "ready": ready, "missing": missing });
    if let Some(m) = mirror {
        body["lmdb_mirror_lag_events"] = serde_json::json!(m.lag());
    }
    (status, axum::Json(body)).into_response()
}

/// `/metrics`' answer: the gauges refreshed, the registry rendered.
pub fn metrics_response(handle: &PrometheusHandle, health: &Health) -> axum::response::Response {
    health.refresh_gauges();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
        .into_response()
}

#[derive(Clone)]
struct AppState {
    handle: PrometheusHandle,
    health: Arc<Health>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` until `shutdown`. Returns the bound
/// address (useful with port 0) once listening.
pub async fn serve(
    listen: &str,
    handle: PrometheusHandle,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("telemetry.listen = {listen}: cannot bind: {e}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { handle, health });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "telemetry server stopped");
        }
    });
    Ok(addr)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    metrics_response(&state.handle, &state.health)
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    let missing = state.health.readiness().await.err().unwrap_or_default();
    readiness_response(missing, state.health.mirror())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_nekhebet_core() {
        assert_eq!(mask("collector-0"), "coll...or-0");
        assert_eq!(mask("4787d53b6655635cde0bf21ee843fcfe"), "4787...fcfe");
        assert_eq!(mask("short"), "*****");
        assert_eq!(mask("ab"), "****");
    }
}
