//! The API's errors: a status and a JSON body `{"error": code, "detail": sentence}`, where `code`
//! is stable (clients match on it) and `detail` says what was wrong and what is expected.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::store::read::ReadError;
use crate::store::{ErrorClass, StoreError};

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds, for 503s the client should retry.
    pub retry_after: Option<u32>,
    /// `WWW-Authenticate` for 401s.
    pub challenge: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            challenge: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 503 with `Retry-After`: a bounded resource is taken, or a backend is away for now.
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// A failed store read, phrased for the client; the server's log has the rest.
    pub fn from_read(e: ReadError) -> ApiError {
        match e {
            ReadError::Corrupt { .. } | ReadError::Vanished { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", e.to_string())
            }
            ReadError::Interrupted(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            ReadError::Store(e) => Self::from_store(e),
        }
    }

    pub fn from_store(e: StoreError) -> ApiError {
        tracing::warn!(error = %e, "read failed");
        match e.class() {
            ErrorClass::Transient => Self::unavailable(
                "store_unavailable",
                format!("the store cannot answer now: {e}"),
            ),
            ErrorClass::Message | ErrorClass::Fatal => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                format!("the store failed: {e}"),
            ),
        }
    }
}

/// The JSON body, `error` first.
#[derive(serde::Serialize)]
struct Body<'a> {
    error: &'a str,
    detail: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            detail: &self.detail,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(c) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        response
    }
}

/// No route has this path.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", format!(
        "no route {}: the routes are GET /v1/events, /v1/events/{{id}}, /v1/events/by-hash/{{content_hash}}, /v1/events/{{id}}/proof, /v1/stream, /log/checkpoint, /log/tile/…, /log/consistency, /healthz, /readyz, /metrics",
        clip(uri.path(), 128)
    ))
}

/// The route exists, not with this method.
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed: this API only reads (GET, HEAD)"),
    )
}

/// At most `max` characters of a client's input, to quote it in a detail.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}
