//! `GET /v1/events/{id}` and `GET /v1/events/by-hash/{content_hash}`: one event's envelope, the
//! bytes exactly as received, through the store's one read path (checked against the content
//! hash). `ETag` is the quoted content hash; `If-None-Match` naming it answers 304 without reading
//! the bytes. Events never change, so clients may cache them for good.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{clip, ApiError};
use super::AppState;
use crate::store::read::{Key, Origin};

/// Which copy a response carries (`lmdb` or `postgres`): for operators and tests.
pub const SERVED_FROM: &str = "nekhebet-served-from";

pub async fn by_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = Key::parse_id(&id)
        .map_err(|e| ApiError::bad_request("bad_id", format!("{:?}: {e}", clip(&id, 64))))?;
    one(&state, key, &headers).await
}

pub async fn by_hash(
    State(state): State<AppState>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = Key::parse_hash(&hash)
        .map_err(|e| ApiError::bad_request("bad_hash", format!("{:?}: {e}", clip(&hash, 80))))?;
    one(&state, key, &headers).await
}

async fn one(state: &AppState, key: Key, headers: &HeaderMap) -> Result<Response, ApiError> {
    // Bounded: each read may hold one of LMDB's reader slots.
    let _slot = state
        .reads
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("shutting_down", "the server is stopping"))?;
    if let Some(tags) = headers.get(header::IF_NONE_MATCH) {
        let hash = state
            .store
            .content_hash_of(&key)
            .await
            .map_err(ApiError::from_read)?
            .ok_or_else(|| absent(&key))?;
        if names_hash(tags, &hash) {
            return Ok((StatusCode::NOT_MODIFIED, cache_headers(&hash)).into_response());
        }
    }
    let found = state
        .store
        .read(&key)
        .await
        .map_err(ApiError::from_read)?
        .ok_or_else(|| absent(&key))?;
    let origin = match found.origin {
        Origin::Lmdb => "lmdb",
        Origin::Postgres => "postgres",
    };
    Ok((
        cache_headers(&found.content_hash),
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static(SERVED_FROM),
                HeaderValue::from_static(origin),
            ),
        ],
        found.bytes,
    )
        .into_response())
}

fn absent(key: &Key) -> ApiError {
    ApiError::not_found(format!("no {key} in the store"))
}

fn cache_headers(hash: &str) -> [(header::HeaderName, HeaderValue); 2] {
    let etag =
        HeaderValue::from_str(&format!("\"{hash}\"")).unwrap_or(HeaderValue::from_static("\"\""));
    [
        (header::ETAG, etag),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=31536000, immutable"),
        ),
    ]
}

/// Whether an `If-None-Match` value names this content hash's ETag (weak comparison, RFC 9110
/// §13.1.2), or is `*`.
fn names_hash(tags: &HeaderValue, hash: &str) -> bool {
    let Ok(tags) = tags.to_str() else {
        return false;
    };
    tags.split(',').map(str::trim).any(|t| {
        t == "*"
            || t.strip_prefix("W/")
                .unwrap_or(t)
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                == Some(hash)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_names_the_hash_weakly_or_with_a_star() {
        let h = "ab".repeat(32);
        let v = |s: String| HeaderValue::from_str(&s).unwrap();
        assert!(names_hash(&v(format!("\"{h}\"")), &h));
        assert!(names_hash(&v(format!("W/\"{h}\"")), &h));
        assert!(names_hash(&v(format!("\"x\", \"{h}\"")), &h));
        assert!(names_hash(&v("*".into()), &h));
        assert!(
            !names_hash(&v(h.clone()), &h),
            "unquoted is not an entity tag"
        );
        assert!(!names_hash(&v("\"cd\"".into()), &h));
    }
}
