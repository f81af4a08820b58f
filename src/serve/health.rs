//! `/healthz` (the process answers), `/readyz` (PostgreSQL and LMDB answer: 200, else 503 with
//! what is missing) and `/metrics` (Prometheus text, the process's whole registry). None needs a
//! token: they say nothing about events.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::AppState;

pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut missing = Vec::new();
    if let Some(pg) = state.store.postgres() {
        match tokio::time::timeout(Duration::from_secs(2), pg.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => missing.push(format!("postgres: {e}")),
            Err(_) => missing.push("postgres: no answer within 2 s".to_string()),
        }
    }
    if let Some(lmdb) = state.store.lmdb() {
        if let Err(e) = lmdb.check_readable().await {
            missing.push(format!("lmdb: {e}"));
        }
    }
    let status = if missing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let ready = missing.is_empty();
    (
        status,
        Json(serde_json::json!({ "ready": ready, "missing": missing })),
    )
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.gauges.refresh_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
