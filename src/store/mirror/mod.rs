//! The LMDB mirror: makes every LMDB environment of a hybrid store a complete copy of PostgreSQL,
//! whatever it started from (an empty directory, an old copy restored from a backup, one that lost
//! blobs), while the worker keeps writing its own batches. It runs as a background task in
//! `ingest` and in `serve` (`lmdb.mirror_rate` envelopes a second; 0 turns it off).
//!
//! It follows PostgreSQL in commit order ([`PgStore::commit_horizon`], [`PgStore::rows_between`]:
//! every row exactly once, none missed when a lower seq commits after a higher one), a page at a
//! time, and for each page:
//! 1. checks which blobs LMDB holds, in ONE read transaction (append layout: by seq; compatible:
//!    by content hash);
//! 2. cuts the missing ones into small copies ([`plan::copies`]: at most [`COPY_ROWS`] envelopes
//!    and [`COPY_BYTES`] bytes), each paced ([`pace::Pace`]: `lmdb.mirror_rate` envelopes copied a
//!    second, and [`CHECKS_PER_COPY`] times as many rows checked), so the single LMDB writer is
//!    never held long and the worker's batches keep their throughput;
//! 3. reads only those envelopes from PostgreSQL, checks each against its content hash and event
//!    id ([`crate::store::read::check`]: bad bytes are never copied, they are logged and skipped),
//!    and writes them with the cursor in ONE LMDB write transaction ([`LmdbStore::mirror_write`]).
//!
//! Invariants: the cursor lives in the environment it describes and moves only in the transaction
//! that wrote the blobs it covers, so a crash, a kill or a restored old copy never skip a row (a
//! restored copy brings its own, older cursor back); an existing blob is never overwritten; memory
//! is bounded by one page of row metadata and one copy of envelopes.
//!
//! A page whose rows were all present (in a worker, its own batches: most pages) moves the cursor
//! in memory only; that cursor is stored at most every [`CURSOR_EVERY`] (and at shutdown). With
//! `lmdb.sync` every stored cursor is an fsync of the single LMDB writer the worker's batches need:
//! one a page would cost the write path more than the mirror's own work. A crash forgets at most
//! that second of confirmations, which the next run checks again; nothing it covers was copied.
//!
//! The cursor moves only over settled rows (below the horizon). A transaction left open anywhere
//! in the PostgreSQL cluster holds the horizon back; meanwhile the mirror also walks the rows
//! committed above it (**ahead**: passes over every row after the cursor, paced, at most one
//! starting per second, without moving the cursor), so the LMDB stays complete; a row that
//! commits late is found by the next pass, and the cursor passes it once the horizon does.
//!
//! Blobs lost behind the cursor (deleted by hand, or a copy of the directory taken while a writer
//! ran) are found by the **sweep**: once the mirror has caught up it re-reads the rows before its
//! cursor, a page at a time at the same pace, and copies what is missing without moving the
//! cursor; a pass starts when the mirror starts and then [`SWEEP_PAUSE`] after the previous one ends.
//!
//! Two processes on one environment (a worker and a `serve`) may both mirror it: both only add
//! missing blobs, and the stored cursor keeps the further of the two.

pub mod pace;
pub mod plan;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use self::pace::Pace;
use self::plan::Row;
use super::lmdb::BlobKey;
use super::postgres::{CommitPos, Followed};
use super::{ErrorClass, LmdbStore, PgStore, StoreError};
use crate::config::LmdbLayout;
use crate::telemetry::names;

/// Rows of PostgreSQL's commit order read per page (ids and hashes, no envelope bytes).
pub const PAGE_ROWS: i64 = 1000;
/// Envelopes per LMDB write transaction at most: short enough that the worker's batch, which
/// needs the same single writer, waits at most a few milliseconds.
pub const COPY_ROWS: usize = 256;
/// Envelope bytes per LMDB write transaction at most (a larger single envelope is copied alone).
pub const COPY_BYTES: u64 = 4 << 20;
/// Rows checked for presence per unit of `lmdb.mirror_rate` (one unit = one envelope copied).
pub const CHECKS_PER_COPY: u64 = 10;
/// How long the mirror waits when it has nothing to do.
const IDLE: Duration = Duration::from_secs(1);
/// A cursor moved over pages that needed no copy is stored at most this often.
pub const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// Between two sweeps of the rows before the cursor. A pass re-reads every row PostgreSQL holds
/// (paced, but a steady load on PostgreSQL for a large store), to find what someone removed by
/// hand: the pass when the mirror starts finds what was lost while it was not running, and one an
/// hour bounds how long a loss goes unnoticed in a process that runs for weeks.
pub const SWEEP_PAUSE: Duration = Duration::from_secs(3600);
/// The lag is counted up to this many rows (an index walk bounded by it), refreshed at most every
/// [`LAG_EVERY`] while copying and every idle round otherwise.
pub const LAG_CAP: i64 = 10_000_000;
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Back-off after a failure: doubled up to the maximum, reset by a round that succeeds.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the mirror reports while it runs (readiness, gauges). Cheap to clone.
#[derive(Clone, Debug)]
pub struct MirrorStatus {
    /// PostgreSQL rows after the furthest the mirror has copied or confirmed (capped at
    /// [`LAG_CAP`]); -1 before the first count.
    lag: Arc<AtomicI64>,
}

impl Default for MirrorStatus {
    fn default() -> Self {
        MirrorStatus {
            lag: Arc::new(AtomicI64::new(-1)),
        }
    }
}

impl MirrorStatus {
    /// Rows not yet in this LMDB, as last counted (`None`: not counted yet).
    pub fn lag(&self) -> Option<i64> {
        let lag = self.lag.load(Ordering::Relaxed);
        (lag >= 0).then_some(lag)
    }

    fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
    }
}

/// The mirror of one hybrid store's LMDB.
pub struct Mirror {
    pg: PgStore,
    lmdb: LmdbStore,
    rate: u32,
    status: MirrorStatus,
}

/// Starts `store`'s mirror (see [`super::Store::mirror`]) as a task that runs until `shutdown`:
/// its status and the task, or `None` when there is nothing to mirror.
pub fn spawn(
    store: &super::Store,
    rate: u32,
    shutdown: CancellationToken,
) -> Option<(MirrorStatus, tokio::task::JoinHandle<()>)> {
    let mirror = store.mirror(rate)?;
    let status = mirror.status();
    Some((status, tokio::spawn(mirror.run(shutdown))))
}

/// What [`Mirror::copy_page`] did with a page.
enum Page {
    /// Every row was present: nothing written, the cursor not stored.
    Present,
    /// This many blobs written, each copy with its cursor (when advancing).
    Copied(usize),
    /// Shutdown came first: the copies written so far stored their cursor, no further.
    Interrupted,
}

impl Page {
    fn written(&self) -> usize {
        match self {
            Page::Copied(n) => *n,
            Page::Present | Page::Interrupted => 0,
        }
    }
}

/// What a round found to do.
enum Round {
    /// It copied or checked rows: go on at once (the pace still applies).
    Busy,
    /// Nothing to copy and no sweep due: wait.
    Idle,
}

impl Mirror {
    /// `rate`: envelopes copied (and rows re-checked by the sweep) a second, at least 1.
    pub fn new(pg: PgStore, lmdb: LmdbStore, rate: u32) -> Mirror {
        Mirror {
            pg,
            lmdb,
            rate: rate.max(1),
            status: MirrorStatus::default(),
        }
    }

    pub fn status(&self) -> MirrorStatus {
        self.status.clone()
    }

    /// Runs until `shutdown`, or until a failure that retrying cannot help (logged at ERROR; the
    /// process goes on without its mirror and the lag gauge shows it).
    pub async fn run(self, shutdown: CancellationToken) {
        let started = Instant::now();
        let mut state = State {
            pace: Pace::new(self.rate, started),
            sweep: Some(CommitPos::START),
            next_sweep: started,
            ahead: None,
            ahead_due: started,
            ahead_high: CommitPos::START,
            lag_counted: None,
            confirmed: None,
            cursor_stored: started,
        };
        let mut backoff = BACKOFF_MIN;
        tracing::info!(rate = self.rate, layout = ?self.lmdb.layout(), "LMDB mirror: started");
        loop {
            let wait = match self.round(&mut state, &shutdown).await {
                Ok(Round::Busy) => {
                    backoff = BACKOFF_MIN;
                    Duration::ZERO
                }
                Ok(Round::Idle) => {
                    backoff = BACKOFF_MIN;
                    IDLE
                }
                Err(e) => match e.class() {
                    ErrorClass::Transient | ErrorClass::Message => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                            "LMDB mirror: failed, retrying");
                        let wait = backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        wait
                    }
                    ErrorClass::Fatal => {
                        tracing::error!(error = %e,
                            "LMDB mirror: stopped (this LMDB is no longer completed from PostgreSQL until the process restarts)");
                        return;
                    }
                },
            };
            if shutdown.is_cancelled() || !sleep(wait, &shutdown).await {
                if let Err(e) = self.store_cursor(&mut state).await {
                    tracing::warn!(error = %e,
                        "LMDB mirror: the last confirmed cursor was not stored (the next run checks those rows again)");
                }
                tracing::info!("LMDB mirror: stopped");
                return;
            }
        }
    }

    /// One page of the follow, else one page of the rows above the horizon, else one page of the
    /// sweep.
    async fn round(
        &self,
        state: &mut State,
        shutdown: &CancellationToken,
    ) -> Result<Round, StoreError> {
        if state.cursor_stored.elapsed() >= CURSOR_EVERY {
            self.store_cursor(state).await?;
        }
        let stored = self.lmdb.mirror_cursor().await?.unwrap_or(CommitPos::START);
        let cursor = stored.max(state.confirmed.unwrap_or(CommitPos::START));
        let horizon = CommitPos::horizon(self.pg.commit_horizon().await?);
        let rows = self.pg.rows_between(cursor, horizon, PAGE_ROWS).await?;
        if let Some(last) = rows.last().map(|r| r.pos) {
            self.count_lag(cursor, state, false).await?;
            let copied = self
                .copy_page(&rows, true, &mut state.pace, shutdown)
                .await?;
            match copied {
                Page::Present => state.confirmed = Some(last),
                // Stored with the last copy.
                Page::Copied(_) => state.confirmed = None,
                // Stored as far as the copies written went.
                Page::Interrupted => {}
            }
            return Ok(Round::Busy);
        }
        // Caught up with the settled rows. Rows committed above the horizon (a transaction left
        // open anywhere in the cluster holds it back) are copied ahead, the cursor staying put:
        // the LMDB stays complete while the cursor waits, and a row that commits late below
        // them is still taken by the follow once the horizon passes it.
        // A pass walks every row above the cursor (a row committing late below the ones
        // already copied is found by the next pass); passes start at most every [`IDLE`].
        self.count_lag(cursor, state, false).await?;
        if let Some(from) = state
            .ahead
            .or_else(|| (Instant::now() >= state.ahead_due).then_some(CommitPos::START))
        {
            let rows = self
                .pg
                .rows_between(from.max(cursor), CommitPos::END, PAGE_ROWS)
                .await?;
            if let Some(last) = rows.last().map(|r| r.pos) {
                self.copy_page(&rows, false, &mut state.pace, shutdown)
                    .await?;
                state.ahead = Some(last);
                state.ahead_high = state.ahead_high.max(last);
                return Ok(Round::Busy);
            }
            state.ahead = None;
            state.ahead_due = Instant::now() + IDLE;
        }
        // Nothing new: the count is cheap and the readiness detail wants it exact.
        self.count_lag(cursor, state, true).await?;
        let Some(after) = state.sweep else {
            if Instant::now() >= state.next_sweep {
                state.sweep = Some(CommitPos::START);
                return Ok(Round::Busy);
            }
            return Ok(Round::Idle);
        };
        let rows = self
            .pg
            .rows_between(after, cursor.through(), PAGE_ROWS)
            .await?;
        let Some(last) = rows.last().map(|r| r.pos) else {
            state.sweep = None;
            state.next_sweep = Instant::now() + SWEEP_PAUSE;
            metrics::counter!(names::LMDB_MIRROR_SWEEPS).increment(1);
            tracing::info!(
                next_in_s = SWEEP_PAUSE.as_secs(),
                "LMDB mirror: a sweep of the rows behind the cursor is done"
            );
            return Ok(Round::Idle);
        };
        let copied = self
            .copy_page(&rows, false, &mut state.pace, shutdown)
            .await?
            .written();
        if copied > 0 {
            tracing::warn!(
                copied,
                "LMDB mirror: blobs missing behind the cursor (lost or deleted) copied back"
            );
        }
        state.sweep = Some(last);
        Ok(Round::Busy)
    }

    /// The rows after the furthest the mirror has copied or confirmed (the cursor, or the rows
    /// copied ahead of it): an estimate that misses only the rows committing late below the rows
    /// copied ahead, which the next pass copies.
    /// Counted when `now`, else at most every [`LAG_EVERY`].
    async fn count_lag(
        &self,
        cursor: CommitPos,
        state: &mut State,
        now: bool,
    ) -> Result<(), StoreError> {
        if !now && state.lag_counted.is_some_and(|at| at.elapsed() < LAG_EVERY) {
            return Ok(());
        }
        let seen = cursor.max(state.ahead_high);
        let lag = self.pg.count_after_capped(seen, LAG_CAP).await?;
        if lag == 0 && self.status.lag() != Some(0) {
            tracing::info!(cursor = ?cursor, "LMDB mirror: caught up, this LMDB holds every row");
        }
        self.status.set_lag(lag);
        metrics::gauge!(crate::telemetry::names::LMDB_MIRROR_LAG).set(lag as f64);
        state.lag_counted = Some(Instant::now());
        Ok(())
    }

    /// Copies the page's rows LMDB lacks; with `advance`, moves the stored cursor over the page
    /// (the follow), else leaves it (rows above the horizon, the sweep). Returns how many blobs
    /// were written, or that none was needed (the caller keeps the cursor in memory), or that
    /// shutdown came first.
    async fn copy_page(
        &self,
        rows: &[Followed],
        advance: bool,
        pace: &mut Pace,
        shutdown: &CancellationToken,
    ) -> Result<Page, StoreError> {
        // Checking is far cheaper than copying (ids from an index, one LMDB read transaction):
        // CHECKS_PER_COPY rows checked cost one unit of the rate.
        let wait = pace.take(rows.len() as u64 / CHECKS_PER_COPY, Instant::now());
        if !sleep(wait, shutdown).await {
            return Ok(Page::Interrupted);
        }
        let layout = self.lmdb.layout();
        let keys = rows
            .iter()
            .map(|r| BlobKey::of(layout, r.pos.seq, &r.content_hash))
            .collect();
        let present = self.lmdb.present(keys).await?;
        let plan_rows: Vec<Row> = rows
            .iter()
            .zip(present)
            .map(|(r, present)| Row {
                pos: r.pos,
                bytes: u64::try_from(r.bytes).unwrap_or(0),
                present,
            })
            .collect();
        let copies = plan::copies(&plan_rows, COPY_ROWS, COPY_BYTES);
        if copies.is_empty() {
            return Ok(Page::Present);
        }
        let mut written = 0;
        for copy in copies {
            let wait = pace.take(copy.rows.len() as u64, Instant::now());
            if !sleep(wait, shutdown).await {
                return Ok(Page::Interrupted);
            }
            let wanted: Vec<&Followed> = copy.rows.iter().map(|&i| &rows[i]).collect();
            let blobs = self.read_checked(layout, wanted).await?;
            let (n, stored) = self
                .lmdb
                .mirror_write(blobs, advance.then_some(copy.cursor))
                .await?;
            tracing::debug!(written = n, cursor = ?stored, advance, "LMDB mirror: copied");
            written += n;
        }
        Ok(Page::Copied(written))
    }

    /// Stores the cursor confirmed in memory, if any (see the module docs).
    async fn store_cursor(&self, state: &mut State) -> Result<(), StoreError> {
        if let Some(cursor) = state.confirmed {
            self.lmdb.mirror_write(Vec::new(), Some(cursor)).await?;
            state.confirmed = None;
        }
        state.cursor_stored = Instant::now();
        Ok(())
    }

    /// The envelopes of `rows` from PostgreSQL, each checked against its content hash and id;
    /// those that fail are logged and left out (never copied).
    async fn read_checked(
        &self,
        layout: LmdbLayout,
        rows: Vec<&Followed>,
    ) -> Result<Vec<(BlobKey, Bytes)>, StoreError> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.pos.seq).collect();
        let mut bytes: HashMap<i64, Vec<u8>> =
            self.pg.envelopes_by_seq(&seqs).await?.into_iter().collect();
        let wanted: Vec<(BlobKey, Followed, Option<Bytes>)> = rows
            .into_iter()
            .map(|r| {
                (
                    BlobKey::of(layout, r.pos.seq, &r.content_hash),
                    r.clone(),
                    bytes.remove(&r.pos.seq).map(Bytes::from),
                )
            })
            .collect();
        // Canonicalizing and hashing a copy's envelopes is CPU work: off the async runtime.
        tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .filter_map(|(key, row, bytes)| {
                    let Some(bytes) = bytes else {
                        tracing::warn!(seq = row.pos.seq, id = %row.id,
                            "LMDB mirror: row gone from PostgreSQL before its envelope was read: not copied");
                        return None;
                    };
                    match super::read::check(&bytes, Some(row.id), &row.content_hash) {
                        Ok(()) => Some((key, bytes)),
                        Err(why) => {
                            tracing::error!(seq = row.pos.seq, id = %row.id,
                                content_hash = %row.content_hash, %why,
                                "LMDB mirror: PostgreSQL's envelope fails its check: not copied");
                            None
                        }
                    }
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))
    }
}

/// The mirror's progress between rounds (in memory; the cursor itself is in LMDB).
struct State {
    pace: Pace,
    /// Where the current sweep is (`None`: between sweeps).
    sweep: Option<CommitPos>,
    next_sweep: Instant,
    /// Where the current pass over the rows above the horizon is (`None`: between passes); never
    /// stored: only the cursor says what is settled.
    ahead: Option<CommitPos>,
    ahead_due: Instant,
    /// The furthest row any pass has copied or confirmed (for the lag).
    ahead_high: CommitPos,
    lag_counted: Option<Instant>,
    /// The follow's cursor over pages that needed no copy, not stored yet (see the module docs).
    confirmed: Option<CommitPos>,
    cursor_stored: Instant,
}

/// Sleeps `d` unless shut down first: whether the full time passed.
async fn sleep(d: Duration, shutdown: &CancellationToken) -> bool {
    if d.is_zero() {
        return !shutdown.is_cancelled();
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}
