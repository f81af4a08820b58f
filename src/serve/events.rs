//! `GET /v1/events/{id}` and `GET /v1/events/by-hash/{content_hash}`: one event's envelope, the
//! bytes exactly as received, through the store's one read path (checked against the content
//! hash). `ETag` is the quoted content hash; `If-None-Match` naming it answers 304 without reading
//! the bytes. Events never change, so clients may cache them for good.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};

use super::error::{clip, ApiError};
use super::AppState;
use crate::store::read::{Key, ReadError};

/// Which copy a response carries (`lmdb` or `postgres`): for operators and tests.
pub const SERVED_FROM: &str = "nekhebet-served-from";

/// How the route names the event.
#[derive(Debug, Clone, Copy)]
pub enum By {
    Id,
    Hash,
}

impl By {
    fn key(self, raw: &str) -> Result<Key, ApiError> {
        let (parsed, code) = match self {
            By::Id => (Key::parse_id(raw), "bad_id"),
            By::Hash => (Key::parse_hash(raw), "bad_hash"),
        };
        parsed.map_err(|e| ApiError::bad_request(code, format!("{:?}: {e}", clip(raw, 80))))
    }
}

/// `GET` of one event named by its id or content hash (the route's one path parameter).
pub fn route(by: By) -> MethodRouter<AppState> {
    get(
        move |State(state): State<AppState>, Path(raw): Path<String>, headers: HeaderMap| async move {
            one(&state, by.key(&raw)?, &headers).await
        },
    )
}

async fn one(state: &AppState, key: Key, headers: &HeaderMap) -> Result<Response, ApiError> {
    // Bounded: each read may hold one of LMDB's reader slots.
    let _slot = state
        .reads
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("shutting_down", "the server is stopping"))?;
    if let Some(tags) = headers.get(header::IF_NONE_MATCH) {
        let hash = present(state.store.content_hash_of(&key).await, &key)?;
        if names_hash(tags, &hash) {
            return Ok((StatusCode::NOT_MODIFIED, cache_headers(&hash)).into_response());
        }
    }
    let found = present(state.gather.read(key.clone()).await, &key)?;
    Ok((
        cache_headers(&found.content_hash),
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static(SERVED_FROM),
                HeaderValue::from_static(found.origin.name()),
            ),
        ],
        found.bytes,
    )
        .into_response())
}

/// What a read found, or 404 when the store holds no such event.
fn present<T>(read: Result<Option<T>, ReadError>, key: &Key) -> Result<T, ApiError> {
    read.map_err(ApiError::from_read)?
        .ok_or_else(|| ApiError::not_found(format!("no {key} in the store")))
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
