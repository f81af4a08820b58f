//! `GET /v1/events?event_type=&source=&key_id=&issued_after=&issued_before=&limit=&cursor=`:
//! `application/x-ndjson`, one envelope a line (the exact bytes), oldest first by `issued_at` then
//! id. `limit` (default 100, at most 10,000) rows a page; when more follow, the header
//! `Nekhebet-Next-Cursor` holds the cursor of the next page (pass it as `cursor` with the same
//! filters). Unknown or repeated parameters are refused, so a misspelt filter never silently
//! widens a listing.
//!
//! The page streams from a PostgreSQL portal ([`crate::store::postgres::Listing`]); each chunk's
//! envelopes are checked against their content hashes on the blocking pool before they are sent.
//! A failing envelope (or a failing query) ends the response without its last chunk, so the
//! client sees an incomplete response rather than a short page it could take for the whole.
//! At most `serve.max_concurrent_listings` stream at once; more are answered 503 `busy`.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::error::{clip, ApiError};
use super::{cursor, AppState};
use crate::store::postgres::{ListFilter, ListQuery, Listed};
use crate::store::read::check;
use crate::telemetry::names;

/// Rows a page holds unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit`.
pub const MAX_LIMIT: u32 = 10_000;
/// The longest text filter value, in bytes.
const MAX_FILTER_BYTES: usize = 256;
/// The header with the next page's cursor.
pub const NEXT_CURSOR: &str = "nekhebet-next-cursor";

pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse(query.as_deref().unwrap_or(""))?;
    let Some(pg) = state.store.postgres() else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "not_supported",
            "listing needs PostgreSQL's indexes: store.mode = \"hybrid\" or \"postgres\"",
        ));
    };
    let slot = state.listings.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "busy",
            "every listing slot is streaming (serve.max_concurrent_listings): retry shortly",
        )
    })?;
    let listing = pg
        .list(query)
        .await
        .map_err(|e| ApiError::from_store(e.into()))?;
    let next = listing.next.as_ref().map(cursor::encode);
    let body = listing.chunks().then(|chunk| async move {
        let chunk = chunk.map_err(|e| {
            tracing::error!(error = %e, "listing failed while streaming: response cut short");
            std::io::Error::other(e.to_string())
        })?;
        tokio::task::spawn_blocking(move || lines(chunk))
            .await
            .map_err(std::io::Error::other)?
    });
    // The slot is held as long as the body streams.
    let body = body.map(move |chunk| {
        let _held = &slot;
        chunk
    });
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(body),
    )
        .into_response();
    if let Some(next) = next.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(NEXT_CURSOR), next);
    }
    Ok(response)
}

/// A chunk of checked envelopes as ndjson; an error when one fails its check.
fn lines(chunk: Vec<Listed>) -> std::io::Result<bytes::Bytes> {
    let mut out = Vec::with_capacity(chunk.iter().map(|e| e.envelope.len() + 1).sum());
    for e in chunk {
        if let Err(detail) = check(&e.envelope, Some(e.id), &e.content_hash) {
            metrics::counter!(names::READ_CHECK_FAILURES, "store" => "postgres").increment(1);
            tracing::error!(id = %e.id, content_hash = %e.content_hash, %detail,
                "the store's own copy fails its hash: listing cut short");
            return Err(std::io::Error::other(format!(
                "event {}: the store's own copy fails its hash",
                e.id
            )));
        }
        out.extend_from_slice(&e.envelope);
        out.push(b'\n');
    }
    Ok(out.into())
}

/// The query string as a listing, or a 400 naming the parameter.
pub fn parse(query: &str) -> Result<ListQuery, ApiError> {
    let mut filter = ListFilter::default();
    let mut after = None;
    let mut limit = None;
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if seen.iter().any(|s| *s == name) {
            return Err(bad(&name, "is given more than once"));
        }
        seen.push(name.to_string());
        match name.as_ref() {
            "event_type" => filter.event_type = Some(text(&name, &value)?),
            "source" => filter.source = Some(text(&name, &value)?),
            "key_id" => filter.key_id = Some(text(&name, &value)?),
            "issued_after" => filter.issued_after = Some(instant(&name, &value)?),
            "issued_before" => filter.issued_before = Some(instant(&name, &value)?),
            "limit" => {
                limit = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            bad(&name, &format!("= {:?}: expected an integer from 1 to {MAX_LIMIT}", clip(&value, 32)))
                        })?,
                )
            }
            "cursor" => {
                after = Some(cursor::decode(&value).map_err(|why| {
                    ApiError::bad_request(
                        "bad_cursor",
                        format!("cursor {:?}: {why}; pass the Nekhebet-Next-Cursor header of the previous page unchanged", clip(&value, 40)),
                    )
                })?)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!(
                        "unknown parameter {:?}: the parameters are event_type, source, key_id, issued_after, issued_before, limit, cursor",
                        clip(&name, 40)
                    ),
                ))
            }
        }
    }
    Ok(ListQuery {
        filter,
        after,
        limit: limit.unwrap_or(DEFAULT_LIMIT),
    })
}

fn bad(name: &str, why: &str) -> ApiError {
    ApiError::bad_request("bad_parameter", format!("{} {why}", clip(name, 40)))
}

fn text(name: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > MAX_FILTER_BYTES {
        return Err(bad(
            name,
            &format!("must be 1 to {MAX_FILTER_BYTES} bytes long"),
        ));
    }
    Ok(value.to_owned())
}

fn instant(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            bad(
                name,
                &format!(
                    "= {:?}: expected an RFC 3339 instant such as 2026-11-25T16:24:49.442Z",
                    clip(value, 40)
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(q: &str) -> &'static str {
        parse(q).unwrap_err().code
    }

    #[test]
    fn parameters_are_parsed_and_checked() {
        let q = parse(
            "event_type=omen.observed&source=a%20b&limit=7&issued_after=2026-01-01T00:00:00Z",
        )
        .unwrap();
        assert_eq!(q.filter.event_type.as_deref(), Some("omen.observed"));
        assert_eq!(q.filter.source.as_deref(), Some("a b"));
        assert_eq!(q.limit, 7);
        assert!(q.filter.issued_after.is_some() && q.after.is_none());
        assert_eq!(parse("").unwrap().limit, DEFAULT_LIMIT);
        for limit in ["0", "10001", "10^12", "1000000000000", "-1", "", "1e3"] {
            assert_eq!(code(&format!("limit={limit}")), "bad_parameter", "{limit}");
        }
        assert_eq!(parse("limit=10000").unwrap().limit, 10_000);
        assert_eq!(code("cursor=abc"), "bad_cursor");
        assert_eq!(code("evnt_type=x"), "unknown_parameter");
        assert_eq!(code("source=a&source=b"), "bad_parameter");
        assert_eq!(code("issued_before=yesterday"), "bad_parameter");
        assert_eq!(code("key_id="), "bad_parameter");
        assert_eq!(
            code(&format!("key_id={}", "k".repeat(257))),
            "bad_parameter"
        );
    }
}
