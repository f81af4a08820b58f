//! The transparency log over HTTP (README "Tamper evidence"), in C2SP tlog-tiles layout:
//!
//! - `GET /log/checkpoint`: the latest published checkpoint, the note text exactly as signed.
//! - `GET /log/tile/<L>/<N>[.p/<W>]`: hash tiles; `GET /log/tile/entries/<N>[.p/<W>]`: entry
//!   bundles (each entry, the 32-byte SHA-256 of an envelope, prefixed by its uint16 big-endian
//!   length).
//! - `GET /log/consistency?from=<size>&to=<size>`: the RFC 6962 consistency proof.
//! - `GET /v1/events/{id}/proof`: the event's leaf index, the latest checkpoint and the RFC 6962
//!   inclusion proof of its leaf against that checkpoint's root.
//!
//! Invariants: everything answered is within the latest PUBLISHED checkpoint (tiles, proofs and
//! sizes beyond it are refused with 404 and the size), so what a client verifies is what a
//! checkpoint commits to; leaves never change, so full tiles are immutable and cached for a year,
//! while partial tiles and the checkpoint are `no-cache`. Input that is not a canonical tile path or
//! a valid size gets 400 naming what is wrong, never echoing more than a clipped prefix. The log's
//! tables are read as `nekhebet_reader` may read them; these routes sit behind the same bearer
//! tokens as `/v1`.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{clip, ApiError};
use super::AppState;
use crate::store::postgres::tlog::{self, EventLeaf, StoredCheckpoint};
use crate::store::postgres::PgError;
use crate::store::StoreError;
use crate::tlog::{
    encode_entry_bundle, prove_consistency, prove_inclusion, tile_data, Hash, Tile, TileKind,
    FULL_TILE_WIDTH, TILE_HEIGHT,
};
use crate::transparency::hashes::{compute, ComputeError};

/// Full tiles never change: a year, immutable.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// The checkpoint and partial tiles are superseded: revalidate every time.
const NO_CACHE: &str = "no-cache";

type Client = deadpool_postgres::Object;

async fn client(state: &AppState) -> Result<Client, ApiError> {
    let Some(pg) = state.store.postgres() else {
        return Err(ApiError::not_found(
            "this store has no transparency log: it lives in PostgreSQL (store.mode = \"lmdb\" has none)",
        ));
    };
    pg.pool().get().await.map_err(|e| pg_error(e.into()))
}

fn pg_error(e: PgError) -> ApiError {
    ApiError::from_store(StoreError::from(e))
}

fn compute_error(e: ComputeError<PgError>) -> ApiError {
    match e {
        ComputeError::Fetch(e) => pg_error(e),
        ComputeError::Range(e) => ApiError::bad_request("bad_range", e.to_string()),
        ComputeError::Incomplete(m) => {
            tracing::error!("the transparency log's tables are incomplete: {m}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "log_damaged",
                format!("the log's stored hashes are incomplete ({m}): `nekhebet-store audit` says where"),
            )
        }
    }
}

/// The latest published checkpoint, or 404 while there is none.
async fn latest(client: &Client) -> Result<StoredCheckpoint, ApiError> {
    tlog::latest_checkpoint(client)
        .await
        .map_err(pg_error)?
        .ok_or_else(|| {
            ApiError::not_found(
                "no checkpoint has been published yet (the log is empty, or its integrator has not run)",
            )
        })
}

fn text(body: String, cache: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        body,
    )
        .into_response()
}

/// `GET /log/checkpoint`.
pub async fn checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    let client = client(&state).await?;
    let c = latest(&client).await?;
    Ok(text(c.note, NO_CACHE, "text/plain; charset=utf-8"))
}

/// `GET /log/tile/{*path}`.
pub async fn tile(
    State(state): State<AppState>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    let path = format!("tile/{rest}");
    let tile = Tile::parse_path(&path).map_err(|e| {
        ApiError::bad_request(
            "bad_tile_path",
            format!(
                "{:?}: {e}; expected tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>] (C2SP tlog-tiles)",
                clip(&path, 80)
            ),
        )
    })?;
    let client = client(&state).await?;
    let size = latest(&client).await?.size;
    if !tile.is_in_tree(size) {
        return Err(ApiError::not_found(format!(
            "tile {} is not part of the tree of the latest checkpoint (size {size})",
            tile.path()
        )));
    }
    let range = tile.leaf_range().expect("a tile in the tree has leaves");
    let body = match tile.kind() {
        TileKind::Hashes(level) => {
            let level = u32::from(level) * TILE_HEIGHT;
            let first = tile.index() << TILE_HEIGHT;
            let hashes = tlog::tile_hashes(&client, level, first, tile.width())
                .await
                .map_err(pg_error)?;
            if hashes.len() != usize::from(tile.width()) {
                return Err(compute_error(ComputeError::Incomplete(format!(
                    "tile {}: {} of {} hashes",
                    tile.path(),
                    hashes.len(),
                    tile.width()
                ))));
            }
            tile_data(&hashes)
        }
        TileKind::Entries => {
            let entries = tlog::entries(&client, range.start, range.end)
                .await
                .map_err(pg_error)?;
            if entries.len() as u64 != range.end - range.start {
                return Err(compute_error(ComputeError::Incomplete(format!(
                    "bundle {}: {} of {} entries",
                    tile.path(),
                    entries.len(),
                    range.end - range.start
                ))));
            }
            encode_entry_bundle(&entries).expect("32-byte entries fit a bundle")
        }
    };
    let cache = if tile.width() == FULL_TILE_WIDTH {
        IMMUTABLE
    } else {
        NO_CACHE
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        body,
    )
        .into_response())
}

/// `from` and `to` of `/log/consistency`; anything else, or either twice, is refused.
fn sizes(query: &str) -> Result<(Option<String>, Option<String>), ApiError> {
    let (mut from, mut to) = (None, None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "from" => &mut from,
            "to" => &mut to,
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!(
                        "unknown parameter {:?}: the parameters are from and to",
                        clip(&name, 40)
                    ),
                ))
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(ApiError::bad_request(
                "bad_size",
                format!("{name} is given more than once"),
            ));
        }
    }
    Ok((from, to))
}

fn size_param(name: &str, value: Option<&str>) -> Result<u64, ApiError> {
    let value = value.ok_or_else(|| {
        ApiError::bad_request(
            "bad_size",
            format!(
                "{name} is missing: expected ?from=<size>&to=<size>, tree sizes with 1 ≤ from ≤ to"
            ),
        )
    })?;
    value.parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            "bad_size",
            format!(
                "{name}={:?}: expected a tree size (a decimal integer ≥ 1)",
                clip(value, 40)
            ),
        )
    })
}

#[derive(serde::Serialize)]
struct ConsistencyBody {
    from: u64,
    to: u64,
    proof: Vec<String>,
}

/// `GET /log/consistency?from=&to=`.
pub async fn consistency(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (from, to) = sizes(query.as_deref().unwrap_or(""))?;
    let from = size_param("from", from.as_deref())?;
    let to = size_param("to", to.as_deref())?;
    if from == 0 || from > to {
        return Err(ApiError::bad_request(
            "bad_size",
            format!("from={from}, to={to}: expected 1 ≤ from ≤ to"),
        ));
    }
    let client = client(&state).await?;
    let size = latest(&client).await?.size;
    if to > size {
        return Err(ApiError::not_found(format!(
            "to={to} is beyond the latest checkpoint (size {size})"
        )));
    }
    let proof = compute(
        |indexes: Vec<u64>| {
            let client = &client;
            async move { tlog::stored_hashes(client, &indexes).await }
        },
        |r| prove_consistency(from, to, r),
    )
    .await
    .map_err(compute_error)?;
    Ok(json(&ConsistencyBody {
        from,
        to,
        proof: proof.iter().map(Hash::to_base64).collect(),
    }))
}

fn json<T: serde::Serialize>(body: &T) -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE))],
        axum::Json(body),
    )
        .into_response()
}

#[derive(serde::Serialize)]
struct ProofBody {
    index: u64,
    checkpoint: String,
    proof: Vec<String>,
}

/// `GET /v1/events/{id}/proof`.
pub async fn proof(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::parse_str(&raw).map_err(|e| {
        ApiError::bad_request(
            "bad_id",
            format!("{:?}: {e}: expected a UUID", clip(&raw, 80)),
        )
    })?;
    let client = client(&state).await?;
    let index = match tlog::leaf_of_event(&client, id).await.map_err(pg_error)? {
        EventLeaf::NoEvent => return Err(ApiError::not_found(format!("no event {id}"))),
        EventLeaf::Unlogged => return Err(not_yet(id, "is stored but not yet in the log")),
        EventLeaf::Logged(i) => i,
    };
    let c = latest(&client).await?;
    if index >= c.size {
        return Err(not_yet(
            id,
            &format!(
                "is leaf {index}, beyond the latest checkpoint (size {})",
                c.size
            ),
        ));
    }
    let proof = compute(
        |indexes: Vec<u64>| {
            let client = &client;
            async move { tlog::stored_hashes(client, &indexes).await }
        },
        |r| prove_inclusion(index, c.size, r),
    )
    .await
    .map_err(compute_error)?;
    Ok(json(&ProofBody {
        index,
        checkpoint: c.note,
        proof: proof.iter().map(Hash::to_base64).collect(),
    }))
}

/// 404 with `Retry-After`: the event will be in a checkpoint within seconds.
fn not_yet(id: uuid::Uuid, why: &str) -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            "not_yet_logged",
            format!("event {id} {why}: retry in a second"),
        )
    }
}
