//! The integrator: a background task of `ingest` and `serve` that appends every newly committed
//! event to the log and publishes checkpoints.
//!
//! - **One at a time.** It takes a connection of its own and the session advisory lock
//!   [`tlog::INTEGRATOR_LOCK`] without waiting; whoever holds it integrates, the others retry
//!   every [`LOCK_RETRY`]. Every write goes through that connection, so losing the connection
//!   loses the lock and the writes together. A role without INSERT on the log's tables (`serve`
//!   as a `nekhebet_reader`) never tries.
//! - **Steps.** Up to `tlog.step_max_leaves` settled events after the cursor (the last leaf's
//!   commit position), in commit order, become leaves in ONE transaction with their stored hashes
//!   ([`super::frontier`] computes them in memory). A crash leaves the tree at a step boundary;
//!   the primary key and the unique seq refuse a leaf written twice.
//! - **Checkpoints.** Every `tlog.checkpoint_interval_ms`, when the tree grew: the root is checked
//!   against the stored hashes (what `serve` answers from), the tree against the last signed
//!   checkpoint ([`super::signing::judge`]), the note signed, the state file written, then the
//!   checkpoint published. A refusal is logged at ERROR, shown in `/readyz` and the
//!   `nekhebet_tlog_signing_refused` gauge; the last good checkpoint stays served.
//! - **Stopping.** The process's shutdown stops it after the current step; [`Handle::finish`]
//!   (used by `ingest --until-caught-up`) first integrates what is committed and publishes it.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::frontier::Frontier;
use super::hashes::{compute, ComputeError, Lacking};
use super::lag::LagRuns;
use super::signing::{judge, StateFile};
use super::status::SharedStatus;
use super::Setup;
use crate::store::postgres::tlog::{self, NewLeaf};
use crate::store::postgres::{CommitPos, PgError, PgStore};
use crate::telemetry::names;
use crate::tlog::{
    prove_consistency, tree_hash, Checkpoint, Hash, NoteError, NoteSigner, TreeError,
};

/// How often a process that does not hold the lock tries again.
pub const LOCK_RETRY: Duration = Duration::from_secs(2);
/// How often a refusal to sign is logged again while it lasts.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// The running integrator.
pub struct Handle {
    join: JoinHandle<()>,
    drain: CancellationToken,
    stop: CancellationToken,
    pub status: SharedStatus,
}

impl Handle {
    /// Integrates what is committed now, publishes a checkpoint, and stops; after `timeout` it
    /// stops anyway (after its current step).
    pub async fn finish(mut self, timeout: Duration) {
        self.drain.cancel();
        if tokio::time::timeout(timeout, &mut self.join).await.is_err() {
            tracing::warn!(
                "tlog: the integrator did not catch up within {timeout:?}; stopping it (the next start continues)"
            );
            self.stop.cancel();
            let _ = self.join.await;
        }
    }

    /// Stops after the current step.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.join.await;
    }
}

/// Starts the integrator on `pg`; it runs until `shutdown` (or [`Handle::finish`]).
pub fn spawn(
    setup: Setup,
    pg: PgStore,
    status: SharedStatus,
    shutdown: &CancellationToken,
) -> Handle {
    let stop = shutdown.child_token();
    let drain = CancellationToken::new();
    let integrator = Integrator {
        setup,
        pg,
        status: status.clone(),
        stop: stop.clone(),
        drain: drain.clone(),
        refusal_logged: None,
    };
    Handle {
        join: tokio::spawn(integrator.run()),
        drain,
        stop,
        status,
    }
}

/// Why a session of the integrator ended in failure.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The log's own rows are incomplete or impossible (a damaged log: `audit` says where).
    #[error("the log's stored hashes: {0}")]
    Damaged(String),
    #[error("writing the state file {path}: {error}")]
    State { path: String, error: std::io::Error },
    #[error("signing the checkpoint: {0}")]
    Sign(#[from] NoteError),
}

impl StepError {
    /// Retried soon (backing off) when transient; otherwise retried slowly, at ERROR.
    fn transient(&self) -> bool {
        match self {
            StepError::Pg(e) => e.is_retriable(),
            StepError::State { .. } => true,
            StepError::Damaged(_) | StepError::Sign(_) => false,
        }
    }
}

impl From<ComputeError<PgError>> for StepError {
    fn from(e: ComputeError<PgError>) -> Self {
        match e {
            ComputeError::Fetch(e) => StepError::Pg(e),
            ComputeError::Range(e) => StepError::Damaged(e.to_string()),
            ComputeError::Incomplete(m) => StepError::Damaged(m),
        }
    }
}

/// How a session ended without failing.
enum SessionEnd {
    Stopped,
    Drained,
    /// This role may not append to the log.
    NotPermitted,
    /// Another process holds the lock.
    Locked,
}

struct Integrator {
    setup: Setup,
    pg: PgStore,
    status: SharedStatus,
    stop: CancellationToken,
    drain: CancellationToken,
    /// When the current refusal was last logged.
    refusal_logged: Option<Instant>,
}

/// What a session holding the lock keeps.
struct Session {
    client: deadpool_postgres::ClientWrapper,
    frontier: Frontier,
    cursor: CommitPos,
    published: u64,
    last_publish: Instant,
    lag: LagRuns,
    /// The database's latest checkpoint signed by this key, standing in for a state file that
    /// does not exist yet.
    bootstrap: Option<Checkpoint>,
}

impl Integrator {
    async fn run(mut self) {
        match (&self.setup.signer, &self.setup.state) {
            (Some(signer), Some(state)) => tracing::info!(
                origin = %self.setup.origin,
                verifier_key = %signer.verifier(),
                state_file = %state.path.display(),
                "tlog: checkpoints are signed"
            ),
            _ => tracing::warn!(
                origin = %self.setup.origin,
                "tlog: no tlog.signing_key_file: checkpoints are published UNSIGNED (nobody can hold \
                 the log to them); make a key with `nekhebet-store tlog keygen NAME`"
            ),
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.session().await {
                Ok(SessionEnd::Stopped | SessionEnd::Drained) => break,
                Ok(SessionEnd::NotPermitted) => {
                    tracing::info!(
                        "tlog: this role may not append to the log (no INSERT on \
                         nekhebet_tlog_leaves): another process integrates; this one only serves it"
                    );
                    self.stop.cancelled().await;
                    break;
                }
                Ok(SessionEnd::Locked) => {
                    if self.drain.is_cancelled() {
                        break;
                    }
                    LOCK_RETRY
                }
                Err(e) if e.transient() => {
                    tracing::warn!(error = %e, "tlog: integration failed; retrying in {backoff:?}");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    wait
                }
                Err(e) => {
                    tracing::error!(error = %e, "tlog: integration stopped; retrying in 60 s (`nekhebet-store audit` checks the log)");
                    Duration::from_secs(60)
                }
            };
            self.set_integrating(false);
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.set_integrating(false);
    }

    fn set_integrating(&self, on: bool) {
        self.status.update(|s| s.integrating = on);
        metrics::gauge!(names::TLOG_INTEGRATING).set(if on { 1.0 } else { 0.0 });
    }

    /// One connection's life: take the lock, load the tree, integrate until stopped.
    async fn session(&mut self) -> Result<SessionEnd, StepError> {
        let client =
            deadpool_postgres::Object::take(self.pg.pool().get().await.map_err(PgError::from)?);
        if !tlog::can_integrate(&client).await? {
            return Ok(SessionEnd::NotPermitted);
        }
        if !tlog::try_lock(&client).await? {
            return Ok(SessionEnd::Locked);
        }
        let head = tlog::head(&client).await?;
        let (size, cursor) = head.map_or((0, CommitPos::START), |h| (h.size, h.cursor));
        let indexes = Frontier::stored_hash_indexes(size);
        let hashes = tlog::stored_hashes(&client, &indexes).await?;
        let frontier = Frontier::from_hashes(size, hashes)
            .map_err(|e| StepError::Damaged(format!("the tree's right edge: {e}")))?;
        let latest = tlog::latest_checkpoint(&client).await?;
        let bootstrap = match (&self.setup.signer, &latest) {
            (Some(signer), Some(c)) if c.signed => Checkpoint::open(
                c.note.as_bytes(),
                &self.setup.origin,
                std::slice::from_ref(&signer.verifier()),
            )
            .ok()
            .map(|(c, _)| c),
            _ => None,
        };
        let published = latest.as_ref().map_or(0, |c| c.size);
        tracing::info!(
            size,
            published,
            "tlog: integrating (this process holds the integrator lock)"
        );
        self.set_integrating(true);
        // Not refusing until a judgement says so (and a series to plot from the start).
        if self.status.get().refusal.is_none() {
            metrics::gauge!(names::TLOG_SIGNING_REFUSED).set(0.0);
        }
        self.status.update(|s| {
            s.size = size;
            s.published = latest.as_ref().map(|c| (c.size, c.root));
        });
        metrics::gauge!(names::TLOG_SIZE).set(published as f64);
        let mut s = Session {
            client,
            frontier,
            cursor,
            published,
            last_publish: Instant::now(),
            lag: LagRuns::default(),
            bootstrap,
        };
        if s.frontier.size() > 0 {
            let (size, root) = (s.frontier.size(), s.frontier.root());
            self.judge_now(&s, size, &root).await?;
        }
        let poll = (self.setup.checkpoint_interval / 4).min(Duration::from_millis(250));
        loop {
            let appended = self.step(&mut s).await?;
            let backlog = appended == self.setup.step_max_leaves;
            let draining = self.drain.is_cancelled();
            if s.last_publish.elapsed() >= self.setup.checkpoint_interval || (draining && !backlog)
            {
                self.publish(&mut s).await?;
            }
            if self.stop.is_cancelled() {
                return Ok(SessionEnd::Stopped);
            }
            if draining && !backlog && tlog::count_after(&s.client, s.cursor).await? == 0 {
                return Ok(SessionEnd::Drained);
            }
            if !backlog {
                tokio::select! {
                    _ = self.stop.cancelled() => return Ok(SessionEnd::Stopped),
                    _ = self.drain.cancelled(), if !draining => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }

    /// One integration step; returns how many leaves it appended.
    async fn step(&self, s: &mut Session) -> Result<usize, StepError> {
        let limit = i64::try_from(self.setup.step_max_leaves).expect("validated ≤ 100000");
        let pending = tlog::pending(&s.client, s.cursor, limit).await?;
        let Some(last) = pending.last() else {
            return Ok(0);
        };
        let mut frontier = s.frontier.clone();
        let leaves: Vec<NewLeaf> = pending
            .iter()
            .map(|p| NewLeaf {
                index: frontier.size(),
                pos: p.pos,
                id: p.id,
                entry: p.entry,
                hashes: frontier.push(&p.entry),
            })
            .collect();
        tlog::append(&mut s.client, &leaves).await?;
        s.frontier = frontier;
        s.cursor = last.pos;
        for p in &pending {
            s.lag.push(p.created_at);
        }
        let size = s.frontier.size();
        self.status.update(|st| st.size = size);
        Ok(pending.len())
    }

    /// Publishes a checkpoint of the tree if it grew since the last one (and may be signed).
    async fn publish(&mut self, s: &mut Session) -> Result<(), StepError> {
        s.last_publish = Instant::now();
        let size = s.frontier.size();
        if size == 0 || size <= s.published {
            return Ok(());
        }
        let root = s.frontier.root();
        let checkpoint = Checkpoint::new(&self.setup.origin, size, root)
            .map_err(|e| StepError::Damaged(format!("tlog.origin: {e}")))?;
        let (note, signed) = match self.setup.signer.clone() {
            None => (checkpoint.to_string(), false),
            Some(signer) => {
                if !self.judge_now(s, size, &root).await? {
                    return Ok(());
                }
                let note = checkpoint.sign(&[&signer])?;
                let state = self.state();
                state.write(&note).map_err(|error| StepError::State {
                    path: state.path.display().to_string(),
                    error,
                })?;
                (note, true)
            }
        };
        tlog::insert_checkpoint(&s.client, size, &root, &note, signed).await?;
        s.published = size;
        for (lag, events) in s.lag.take(Utc::now()) {
            metrics::histogram!(names::TLOG_LAG_SECONDS).record_many(lag, events as usize);
        }
        let signed_label = if signed { "true" } else { "false" };
        metrics::counter!(names::TLOG_CHECKPOINTS, "signed" => signed_label).increment(1);
        metrics::gauge!(names::TLOG_SIZE).set(size as f64);
        self.status.update(|st| st.published = Some((size, root)));
        tracing::debug!(size, %root, signed, "tlog: checkpoint published");
        Ok(())
    }

    fn state(&self) -> &StateFile {
        self.setup
            .state
            .as_ref()
            .expect("Setup gives every signing key a state file")
    }

    /// Whether the tree of `size` leaves with `root` may be signed now (always, without a key);
    /// records and logs a refusal, or the end of one.
    async fn judge_now(&mut self, s: &Session, size: u64, root: &Hash) -> Result<bool, StepError> {
        let Some(signer) = self.setup.signer.clone() else {
            return Ok(true);
        };
        let refusal = self.refusal(s, &signer, size, root).await?;
        match refusal {
            None => {
                if self.status.get().refusal.is_some() {
                    tracing::info!(size, %root, "tlog: the database's tree extends the last signed checkpoint again: signing resumes");
                }
                self.refusal_logged = None;
                self.status.update(|st| st.refusal = None);
                metrics::gauge!(names::TLOG_SIGNING_REFUSED).set(0.0);
                Ok(true)
            }
            Some(why) => {
                let due = self
                    .refusal_logged
                    .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY);
                if due {
                    tracing::error!(size, %root, "tlog: refusing to sign a checkpoint: {why}");
                    self.refusal_logged = Some(Instant::now());
                }
                self.status.update(|st| st.refusal = Some(why));
                metrics::gauge!(names::TLOG_SIGNING_REFUSED).set(1.0);
                Ok(false)
            }
        }
    }

    /// Why the tree of `size` leaves with `root` (the integrator's) must not be signed, if it
    /// must not: its stored hashes disagree with it, the state file cannot be read, or the tree
    /// does not extend the last signed checkpoint.
    async fn refusal(
        &self,
        s: &Session,
        signer: &NoteSigner,
        size: u64,
        root: &Hash,
    ) -> Result<Option<String>, StepError> {
        let state = self.state();
        let last = match state.read(&self.setup.origin, &signer.verifier()) {
            Ok(Some(c)) => Some(c),
            Ok(None) => s.bootstrap.clone(),
            Err(why) => return Ok(Some(why)),
        };
        let client = &s.client;
        let fetch = |indexes: Vec<u64>| async move { tlog::stored_hashes(client, &indexes).await };
        // What `serve` will answer from must give the root being signed.
        let db_root = compute(fetch, |r| tree_hash(size, r)).await?;
        if db_root != *root {
            return Ok(Some(format!(
                "the stored hashes give root {db_root} at size {size}, the integrator computed \
                 {root}: the log's rows changed under the integrator (run nekhebet-store audit)"
            )));
        }
        let Some(last) = last else {
            return Ok(None);
        };
        let (at_signed, proof) = if size >= last.size() {
            let at = compute(fetch, |r| tree_hash(last.size(), r)).await?;
            let proof = compute(fetch, |r| -> Result<Vec<Hash>, TreeError<Lacking>> {
                prove_consistency(last.size(), size, r)
            })
            .await?;
            (at, proof)
        } else {
            (db_root, Vec::new())
        };
        Ok(judge(Some(&last), size, &db_root, &at_signed, &proof).refusal(&state.path))
    }
}
