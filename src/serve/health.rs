//! `/healthz` (the process answers), `/readyz` (PostgreSQL and LMDB answer and the log's integrator
//! does not refuse to sign: 200, else 503 with what is missing; the LMDB mirror's lag as a detail)
//! and `/metrics` (Prometheus text, the process's whole registry), as the
//! worker's telemetry endpoints answer them. None needs a token: they say nothing about events.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::AppState;
use crate::telemetry;

pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut missing = telemetry::store_readiness(&state.store).await;
    missing.extend(state.gauges.tlog.readiness_problem());
    telemetry::readiness_response(missing, state.gauges.mirror())
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    telemetry::metrics_response(&state.metrics, &state.gauges)
}
