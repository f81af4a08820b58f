//! Middleware around every request: the URI length limit, the request timeout, and the metrics
//! (requests and latency by route template and status).

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::telemetry::names;

/// The longest request target (path and query) accepted, in bytes; longer is 414.
pub const MAX_URI_BYTES: usize = 4096;

/// The route template a response was produced by (a response extension).
#[derive(Clone, Copy)]
struct RouteLabel(&'static str);

/// Outermost: refuses over-long URIs, records the request's count and latency, adds
/// `X-Content-Type-Options: nosniff`.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    let mut response = if target > MAX_URI_BYTES {
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {target} bytes; at most {MAX_URI_BYTES} are accepted"),
        )
        .into_response()
    } else {
        next.run(request).await
    };
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or("unmatched", |r| r.0);
    let status = response.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, "route" => route, "status" => status.clone())
        .increment(1);
    metrics::histogram!(names::HTTP_REQUEST_SECONDS, "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// On each route: labels the response with the route's template, and answers 503 `timeout` when
/// the response head is not ready within `serve.request_timeout_ms`.
pub async fn route(
    State(timeout): State<Duration>,
    path: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let label = route_label(path.as_str());
    let mut response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(r) => r,
        Err(_) => ApiError::unavailable(
            "timeout",
            format!(
                "no answer within serve.request_timeout_ms ({} ms)",
                timeout.as_millis()
            ),
        )
        .into_response(),
    };
    response.extensions_mut().insert(RouteLabel(label));
    response
}

/// Route templates as `'static` labels (a fixed set: metric cardinality stays bounded).
fn route_label(path: &str) -> &'static str {
    const ROUTES: [&str; 11] = [
        "/v1/events",
        "/v1/stream",
        "/v1/events/{id}",
        "/v1/events/by-hash/{content_hash}",
        "/v1/events/{id}/proof",
        "/log/checkpoint",
        "/log/tile/{*path}",
        "/log/consistency",
        "/healthz",
        "/readyz",
        "/metrics",
    ];
    ROUTES.into_iter().find(|r| *r == path).unwrap_or("other")
}
