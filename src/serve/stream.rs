//! `GET /v1/stream?from=<position>`: Server-Sent Events (`text/event-stream`) of every stored
//! envelope in commit order from a position, then live, as batches commit.
//!
//! **Order and positions.** The store's commit order ([`crate::store::postgres::follow`]): every
//! event exactly once, in an order that never changes, never skipping one whose transaction
//! committed after a later seq's. An event's position is `<txid>-<seq>` (its inserting
//! transaction's id and its seq), sent as the SSE `id:`. `from=0` (or no `from`) starts before the
//! first event. A client resumes after the last event it processed with `from=<that id>` or the
//! `Last-Event-ID` header (what EventSource sends when it reconnects; it wins over `from`).
//!
//! **Frames.** `id: <position>`, then the envelope bytes as `data:` lines (split at LF: an SSE
//! client joins them with LF, which gives the exact bytes back), then an empty line. SSE cannot
//! carry a CR, so an envelope containing one (JSON allows it as whitespace) is sent as
//! `event: base64` with its exact bytes in standard base64 on one `data:` line. While idle, a
//! `: keep-alive` comment every 15 s.
//!
//! **Memory.** The connection pulls the body: a page of at most [`PAGE`] events (and about 1 MiB:
//! the page shrinks for large envelopes) is read, checked and framed while the previous one is
//! written (and the rows of the one after it located meanwhile), and nothing further until that
//! one was handed over, so a slow client holds two pages, a client that stops reading is cut by
//! `serve.write_timeout_ms`, and no PostgreSQL connection is held between pages. At most
//! `serve.max_concurrent_streams` are open; more get 503 `busy`.
//!
//! **Live.** One task per server reads the commit horizon every `serve.stream_poll_ms` while a
//! stream is open and wakes the streams when it moved (a write transaction finished); a woken
//! stream reads what became visible below it. Polling one cheap query, rather than `LISTEN`,
//! keeps the write path free of notifications and works for every writer of the database.
//!
//! **Bytes.** As `get` reads them ([`crate::store::read`]): LMDB's blob in hybrid mode (one read
//! transaction a page), PostgreSQL's when LMDB lacks it or it fails its check; every envelope is
//! checked against its content hash and id before it is sent. When the authority's copy fails
//! (or the store fails) the stream ends without its last frame (logged, counted): the client
//! reconnects from the last `id:` it got.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::error::{clip, ApiError};
use super::AppState;
use crate::store::postgres::{CommitPos, Followed, PgStore};
use crate::store::Store;

/// Events a page holds at most.
pub const PAGE: i64 = 500;
/// About the bytes a page holds: pages shrink for large envelopes, so that a stream keeps about
/// this much in memory whatever their size.
const PAGE_BYTES: usize = 1 << 20;
/// The first page's events, before the envelopes' size is known.
const FIRST_PAGE: i64 = 64;
/// A comment this often while nothing is sent, so that proxies keep the connection.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_FRAME: &[u8] = b": keep-alive\n\n";

/// A position as a client writes it: `0` (the start) or `<txid>-<seq>` from an `id:` line.
pub fn parse_position(s: &str) -> Result<CommitPos, String> {
    const EXPECTED: &str =
        "expected 0 (the start) or an event's position <txid>-<seq> as its id: line gave it";
    if s == "0" {
        return Ok(CommitPos::START);
    }
    let number = |part: &str| {
        (!part.is_empty() && part.len() <= 19 && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<i64>().ok())
            .flatten()
    };
    let (txid, seq) = s.split_once('-').ok_or(EXPECTED)?;
    match (number(txid), number(seq)) {
        (Some(txid), Some(seq)) => Ok(CommitPos { txid, seq }),
        _ => Err(EXPECTED.into()),
    }
}

/// The position a client resumes after.
pub fn format_position(pos: CommitPos) -> String {
    format!("{}-{}", pos.txid, pos.seq)
}

/// Appends one event's frame (see the module docs).
pub fn frame(out: &mut BytesMut, pos: CommitPos, envelope: &[u8]) {
    if envelope.contains(&b'\r') {
        out.put_slice(b"event: base64\n");
        put_id(out, pos);
        out.put_slice(b"data: ");
        out.put_slice(
            base64::engine::general_purpose::STANDARD
                .encode(envelope)
                .as_bytes(),
        );
        out.put_slice(b"\n\n");
        return;
    }
    put_id(out, pos);
    for line in envelope.split(|b| *b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

fn put_id(out: &mut BytesMut, pos: CommitPos) {
    out.put_slice(b"id: ");
    out.put_slice(format_position(pos).as_bytes());
    out.put_u8(b'\n');
}

/// `from` from the query string; nothing else is accepted.
fn parse_query(query: &str) -> Result<CommitPos, ApiError> {
    let mut from = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "from" if from.is_none() => from = Some(position("from", &value)?),
            "from" => {
                return Err(ApiError::bad_request(
                    "bad_parameter",
                    "from is given more than once",
                ))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!(
                        "unknown parameter {:?}: the only parameter is from",
                        clip(&name, 40)
                    ),
                ))
            }
        }
    }
    Ok(from.unwrap_or(CommitPos::START))
}

fn position(what: &str, value: &str) -> Result<CommitPos, ApiError> {
    parse_position(value).map_err(|why| {
        ApiError::bad_request(
            "bad_position",
            format!("{what} = {:?}: {why}", clip(value, 48)),
        )
    })
}

pub async fn stream(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut from = parse_query(query.as_deref().unwrap_or(""))?;
    if let Some(last) = headers.get("last-event-id") {
        let last = last.to_str().map_err(|_| {
            ApiError::bad_request("bad_position", "Last-Event-ID is not visible ASCII")
        })?;
        from = position("Last-Event-ID", last)?;
    }
    let pg = match &state.store {
        Store::Postgres(pg) => pg.clone(),
        Store::Hybrid(h) => h.pg().clone(),
        Store::Lmdb(_) => return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_supported",
            "the stream follows PostgreSQL's commit order: store.mode = \"hybrid\" or \"postgres\"",
        )),
    };
    let slot = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "busy",
            "every stream slot is open (serve.max_concurrent_streams): retry shortly",
        )
    })?;
    let horizon = pg
        .commit_horizon()
        .await
        .map_err(|e| ApiError::from_store(e.into()))?;
    let follower = Follower {
        store: state.store.clone(),
        pg,
        after: from,
        horizon,
        moved: state.horizon.subscribe(),
        shutdown: state.shutdown.clone(),
        ended: false,
        page_rows: FIRST_PAGE,
        rows_ahead: None,
        page_ahead: None,
        _slot: slot,
    };
    let body = futures::stream::unfold(follower, |mut f| async move {
        let chunk = f.next_chunk().await?;
        Some((chunk, f))
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// One open stream: where it is, and what wakes it.
struct Follower {
    store: Store,
    pg: PgStore,
    after: CommitPos,
    /// Every transaction below it has finished (see `follow`); never decreases.
    horizon: i64,
    moved: watch::Receiver<i64>,
    shutdown: CancellationToken,
    ended: bool,
    /// Events the next page asks for (see [`PAGE_BYTES`]).
    page_rows: i64,
    /// The rows after the page being read ahead, followed meanwhile (aborted with the body).
    rows_ahead: Option<Ahead<Vec<Followed>>>,
    /// The page after the one being written, read meanwhile.
    page_ahead: Option<Ahead<Page>>,
    /// Held while the body lives.
    _slot: OwnedSemaphorePermit,
}

impl Follower {
    /// The next chunk of the body: a page of frames, or a keep-alive; `None` ends the body (on
    /// shutdown, or after an error was returned).
    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.ended {
            return None;
        }
        loop {
            self.horizon = self.horizon.max(*self.moved.borrow_and_update());
            let page = match self.page_ahead.take() {
                Some(task) => finished(task).await.map(Some),
                None => self.page_now().await,
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    self.ended = true;
                    tracing::error!(after = %format_position(self.after), error = %e,
                        "stream: cut short");
                    return Some(Err(std::io::Error::other(e)));
                }
            };
            if let Some(page) = page {
                self.after = page.last;
                self.page_rows = page.next_rows;
                self.read_ahead().await;
                return Some(Ok(page.frames));
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                changed = self.moved.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep(KEEPALIVE) => return Some(Ok(Bytes::from_static(KEEPALIVE_FRAME))),
            }
        }
    }

    /// The next page, followed and read now (nothing was read ahead: the first page, or the
    /// stream caught up); the rows after it are followed meanwhile.
    async fn page_now(&mut self) -> Result<Option<Page>, String> {
        let rows = follow(self.pg.clone(), self.after, self.horizon, self.page_rows).await?;
        let Some(last) = rows.last().map(|r| r.pos) else {
            return Ok(None);
        };
        self.rows_ahead =
            Some(self.spawn(follow(self.pg.clone(), last, self.horizon, self.page_rows)));
        read_rows(self.store.clone(), rows).await.map(Some)
    }

    /// After a page was handed over: the rows followed ahead are read (while that page is
    /// written), and the rows after them followed. Rows found none are not waited for: the next
    /// page is then followed anew, below the horizon of that moment.
    async fn read_ahead(&mut self) {
        let Some(task) = self.rows_ahead.take() else {
            return;
        };
        let rows = match finished(task).await {
            Ok(rows) => rows,
            Err(e) => {
                self.page_ahead = Some(self.spawn(async move { Err(e) }));
                return;
            }
        };
        let Some(last) = rows.last().map(|r| r.pos) else {
            return;
        };
        self.rows_ahead =
            Some(self.spawn(follow(self.pg.clone(), last, self.horizon, self.page_rows)));
        self.page_ahead = Some(self.spawn(read_rows(self.store.clone(), rows)));
    }

    fn spawn<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
    ) -> Ahead<T> {
        AbortOnDropHandle::new(tokio::spawn(work))
    }
}

/// Work a stream does ahead of its client, aborted when the body is dropped.
type Ahead<T> = AbortOnDropHandle<Result<T, String>>;

/// What work done ahead came to.
async fn finished<T>(task: Ahead<T>) -> Result<T, String> {
    task.await
        .unwrap_or_else(|e| Err(format!("reading ahead: {e}")))
}

/// A page of frames, ready to write.
struct Page {
    frames: Bytes,
    /// The position of its last event.
    last: CommitPos,
    /// Events the page after it asks for.
    next_rows: i64,
}

/// At most `rows` settled events after `after` (below `horizon`), in commit order.
async fn follow(
    pg: PgStore,
    after: CommitPos,
    horizon: i64,
    rows: i64,
) -> Result<Vec<Followed>, String> {
    pg.follow(after, horizon, rows)
        .await
        .map_err(|e| format!("following the store: {e}"))
}

/// The frames of `rows` (not empty): their envelopes read and checked.
async fn read_rows(store: Store, rows: Vec<Followed>) -> Result<Page, String> {
    let last = rows.last().expect("a page has rows").pos;
    let envelopes = store
        .read_many(&rows)
        .await
        .map_err(|e| format!("reading the page's envelopes: {e}"))?;
    let bytes: usize = envelopes.iter().map(Bytes::len).sum();
    let next_rows = page_rows(bytes, envelopes.len());
    let frames = tokio::task::spawn_blocking(move || {
        let mut out =
            BytesMut::with_capacity(envelopes.iter().map(|e| e.len() + 64).sum::<usize>());
        for (row, envelope) in rows.iter().zip(&envelopes) {
            frame(&mut out, row.pos, envelope);
        }
        out.freeze()
    })
    .await
    .map_err(|e| format!("framing: {e}"))?;
    Ok(Page {
        frames,
        last,
        next_rows,
    })
}

/// The next page's events after one of `rows` envelopes took `bytes`.
fn page_rows(bytes: usize, rows: usize) -> i64 {
    let average = (bytes / rows.max(1)).max(1);
    i64::try_from(PAGE_BYTES / average)
        .unwrap_or(PAGE)
        .clamp(1, PAGE)
}

/// Keeps `moved` at the commit horizon while a stream listens: one query every `poll`, and
/// nothing while no stream is open.
pub async fn watch_horizon(
    pg: PgStore,
    moved: Arc<watch::Sender<i64>>,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        if moved.receiver_count() == 0 {
            continue;
        }
        match pg.commit_horizon().await {
            Ok(h) => {
                failing = false;
                moved.send_if_modified(|v| {
                    let grew = h > *v;
                    *v = (*v).max(h);
                    grew
                });
            }
            // Logged once per outage: the streams wait, and resume when it answers again.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "stream: the commit horizon cannot be read; live streams wait");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What an SSE client (the WHATWG algorithm) makes of a body: (event type, id, data) per
    /// dispatched event.
    fn parse_sse(body: &[u8]) -> Vec<(String, String, Vec<u8>)> {
        let text = std::str::from_utf8(body).unwrap();
        let mut events = Vec::new();
        let (mut kind, mut id, mut data) = (String::new(), String::new(), Vec::<u8>::new());
        let mut has_data = false;
        for line in text.split('\n') {
            if line.is_empty() {
                if has_data {
                    data.pop(); // the last LF
                    events.push((
                        std::mem::take(&mut kind),
                        id.clone(),
                        std::mem::take(&mut data),
                    ));
                }
                has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = value.to_owned(),
                "id" => id = value.to_owned(),
                "data" => {
                    data.extend_from_slice(value.as_bytes());
                    data.push(b'\n');
                    has_data = true;
                }
                other => panic!("unexpected field {other}"),
            }
        }
        events
    }

    fn decoded(kind: &str, data: Vec<u8>) -> Vec<u8> {
        match kind {
            "" => data,
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(&data)
                .unwrap(),
            other => panic!("unexpected event type {other}"),
        }
    }

    #[test]
    fn positions_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_position("0"), Ok(CommitPos::START));
        let p = CommitPos { txid: 812, seq: 33 };
        assert_eq!(parse_position(&format_position(p)), Ok(p));
        assert_eq!(parse_position("0-5"), Ok(CommitPos { txid: 0, seq: 5 }));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1--1",
            "+1-2",
            "1-2-3",
            "a-1",
            "1-1e3",
            " 1-2",
            "00",
            "1",
            "99999999999999999999-1",
        ] {
            assert!(parse_position(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pages_hold_about_a_mebibyte_whatever_the_envelopes_size() {
        assert_eq!(page_rows(64 * 1400, 64), PAGE);
        assert_eq!(page_rows(10 * 32 * 1024, 10), 32);
        assert_eq!(page_rows(8 << 20, 1), 1);
        assert_eq!(page_rows(0, 0), PAGE);
    }

    #[test]
    fn keepalives_are_comments_a_client_ignores() {
        assert!(parse_sse(KEEPALIVE_FRAME).is_empty());
    }

    proptest! {
        /// Whatever bytes an envelope holds (JSON whitespace included: LF, CR, CRLF, spaces at a
        /// line's start, empty lines, a trailing LF), a client gets exactly them back, with the
        /// event's position as its id.
        #[test]
        fn a_client_gets_every_envelope_back_byte_for_byte(
            envelopes in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![
                    Just(b'\n'), Just(b'\r'), Just(b' '), Just(b':'), Just(b'{'), Just(b'a'), Just(b'"')
                ], 0..40),
                1..8),
            txid in 0i64..1_000_000,
        ) {
            let mut out = BytesMut::new();
            let envelopes: Vec<Vec<u8>> = envelopes.into_iter().map(|mut e| { e.insert(0, b'{'); e }).collect();
            for (i, e) in envelopes.iter().enumerate() {
                frame(&mut out, CommitPos { txid, seq: i as i64 + 1 }, e);
                out.put_slice(KEEPALIVE_FRAME);
            }
            let events = parse_sse(&out);
            prop_assert_eq!(events.len(), envelopes.len());
            for (i, ((kind, id, data), sent)) in events.into_iter().zip(&envelopes).enumerate() {
                prop_assert_eq!(id, format!("{txid}-{}", i + 1));
                prop_assert_eq!(&decoded(&kind, data), sent);
                prop_assert_eq!(kind == "base64", sent.contains(&b'\r'));
            }
        }
    }
}
