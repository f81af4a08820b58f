//! Applying a checked batch to PostgreSQL (the authority), shared by the Kafka worker and `import`:
//! one implementation of the retry/backoff and of the isolation of a message the database refuses.
//!
//! Order inside a batch matters, because the stores record each partition's highest applied
//! offset in the batch's own transaction: a message refused below that offset must be durable in
//! the dead-letter sink before the transaction commits, or a crash in between would skip it. So:
//!
//! 1. rejections from the checks go to the sink first (retried until acknowledged);
//! 2. the valid messages are saved in one PostgreSQL transaction, retried with backoff while the
//!    failure is transient (nothing committed, consumption paused);
//! 3. an error caused by the content of a message splits the batch, left half first (so a
//!    partition's applied offset never passes an undecided message), until the message is alone;
//!    it is then dead-lettered `store_rejected` and the rest is saved.
//!
//! A refusal that is not about the message (a constraint an operator added, a sequence reset: the
//! database refuses every message the same way) must not drain the stream into the dead-letter
//! topic: before a message is dead-lettered `store_rejected`, another message of the batch is tried
//! in a rolled-back transaction; if it fails the same way, or if too many messages in a row are
//! refused for one cause, the worker stops instead ([`ApplyError::Fatal`]), committing nothing.
//!
//! A message of a partition that is no longer ours (revoked meanwhile) is dropped before each
//! attempt: its next owner decides it, exactly once thanks to the stored offsets.
//! The LMDB phase of the saved parts is the caller's (the worker pipelines it with the next batch).
//!
//! | module | owns |
//! |---|---|
//! | `mod` | [`Applier::apply`]: dead letters first, redeliveries, the LMDB phase |
//! | `isolate` | splitting a chunk down to the message the database refuses, and telling its refusal from the database's |
//! | `retry` | backoff on transient failures, consumption paused meanwhile |

mod isolate;
mod retry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::consumer::PauseFlags;
use super::report::IngestReport;
use crate::dlq::DlqError;
use bytes::Bytes;

use crate::envelope::{self, Envelope, Limits, Rejection};
use crate::partition::{Partition, Position};
use crate::reason::Reason;
use crate::store::{ErrorClass, Item, Outcome, PgPhase, Saved, Store, StoreError};
use crate::telemetry::{mask, names};

/// Where the messages of a batch came from and where its refused ones go.
pub trait Sink: Sync {
    /// Whether message `i` is still this process's to decide: the worker leaves a revoked
    /// partition's messages to their next owner; `import` owns everything.
    fn owns(&self, i: usize) -> bool;
    /// The Kafka position of message `i` (`import` has none).
    fn position(&self, i: usize) -> Option<&Position>;
    /// The bytes of message `i` as received (to heal LMDB from a message already applied).
    fn value(&self, i: usize) -> Option<&Bytes>;
    /// Makes these refusals durable (the dead-letter topic acknowledged them): one result per
    /// refusal, in order. A failed one is retried with backoff.
    fn reject(
        &self,
        refused: &[(usize, &Rejection)],
    ) -> impl Future<Output = Vec<Result<(), DlqError>>> + Send;
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Pending,
    Done(Outcome),
    Rejected(Reason),
    /// Its partition was revoked (or the batch abandoned) before it was decided: no outcome here,
    /// never committed; the partition's next owner reads it again.
    Abandoned,
}

/// A batch after its PostgreSQL phase: every message's fate is decided.
pub struct Applied {
    pub fates: Vec<Fate>,
    /// The parts PostgreSQL committed, in commit order, with what their LMDB phase needs.
    pub saved: Vec<(Vec<Item>, PgPhase)>,
    pub report: IngestReport,
}

/// Why applying stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Neither retrying nor isolating a message helps (schema missing, permission denied, a bug,
    /// or a limit of retries reached): stop loudly without committing.
    #[error("{0}")]
    Fatal(String),
    /// Hard stop (shutdown deadline): the batch is left uncommitted.
    #[error("aborted")]
    Aborted,
}

/// Retry delays for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    /// Attempts before giving up (`import`); `None`: until it works or a hard stop (the worker).
    pub attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            attempts: None,
        }
    }
}

/// Valid items still to save, with their indexes in the batch.
struct Chunk {
    idx: Vec<usize>,
    items: Vec<Item>,
}

/// How many messages in a row may be dead-lettered `store_rejected` for the same cause before the
/// cause is taken for the database's, not the messages' (with batches too small to try another
/// message of the same batch).
const MAX_SAME_STORE_REFUSALS: u32 = 5;

/// The last `store_rejected` cause and how many refusals in a row had it (shared by every batch).
#[derive(Debug, Default)]
struct Refusals {
    cause: String,
    in_a_row: u32,
}

/// Applies batches; see the module docs. Cheap to clone (one per batch in flight).
#[derive(Clone)]
pub struct Applier {
    refusals: Arc<std::sync::Mutex<Refusals>>,
    store: Store,
    retry: RetryPolicy,
    rng: StdRng,
    /// Hard stop: give up the current batch (uncommitted) and return.
    abort: CancellationToken,
    /// The worker pauses consumption while it backs off.
    pause: Option<Arc<PauseFlags>>,
}

impl Applier {
    pub fn new(
        store: Store,
        retry: RetryPolicy,
        abort: CancellationToken,
        pause: Option<Arc<PauseFlags>>,
    ) -> Applier {
        Applier {
            refusals: Arc::default(),
            store,
            retry,
            rng: StdRng::from_entropy(),
            abort,
            pause,
        }
    }

    /// A copy with its own random source (jitter must differ between concurrent batches).
    pub fn fork(&self) -> Applier {
        let mut a = self.clone();
        a.rng = StdRng::from_entropy();
        a
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The PostgreSQL phase of a batch: `verdicts[i]` is message `i`'s check result.
    pub async fn apply<S: Sink>(
        &mut self,
        verdicts: Vec<Result<Envelope, Rejection>>,
        sink: &S,
    ) -> Result<Applied, ApplyError> {
        let n = verdicts.len();
        let mut applied = Applied {
            fates: vec![Fate::Pending; n],
            saved: Vec::new(),
            report: IngestReport::default(),
        };
        let mut refused = Vec::new();
        let mut chunk = Chunk {
            idx: Vec::with_capacity(n),
            items: Vec::with_capacity(n),
        };
        for (i, verdict) in verdicts.into_iter().enumerate() {
            match verdict {
                Ok(envelope) => {
                    chunk.idx.push(i);
                    chunk.items.push(Item {
                        envelope,
                        pos: sink.position(i).cloned(),
                    });
                }
                Err(rejection) => refused.push((i, rejection)),
            }
        }
        let refused = self.already_applied(sink, refused, &mut applied).await?;
        self.reject(sink, refused, &mut applied).await?;
        self.save_isolating(sink, chunk, &mut applied).await?;
        Ok(applied)
    }

    /// Of the messages the checks refuse, those whose Kafka message was applied before (a crash
    /// before its offset commit) are `redelivered`, not refused: they were decided when they were
    /// applied, and checking them again now could reject what is stored (an `expires_at` passed
    /// meanwhile, a key left the registry, a lowered size limit). Their blobs go to the LMDB phase,
    /// which heals LMDB if the crash came before its commit. Returns the rest, still refused.
    async fn already_applied<S: Sink>(
        &mut self,
        sink: &S,
        refused: Vec<(usize, Rejection)>,
        applied: &mut Applied,
    ) -> Result<Vec<(usize, Rejection)>, ApplyError> {
        let mut partitions: Vec<Partition> = refused
            .iter()
            .filter_map(|(i, _)| sink.position(*i).map(|p| p.partition.clone()))
            .collect();
        if partitions.is_empty() {
            return Ok(refused);
        }
        partitions.sort();
        partitions.dedup();
        let mut backoff = self.backoff();
        let decided = loop {
            match self.store.decided_offsets(&partitions).await {
                Ok(d) => break d,
                Err(e) => match e.class() {
                    ErrorClass::Transient => {
                        self.retrying(&e, refused.len());
                        self.back_off(&mut backoff, e.cause(), &mut applied.report)
                            .await?;
                    }
                    ErrorClass::Message | ErrorClass::Fatal => {
                        return Err(ApplyError::Fatal(format!("store: {e}")));
                    }
                },
            }
        };
        self.recovered(&backoff);
        let mut still = Vec::with_capacity(refused.len());
        let mut heal = Vec::new();
        for (i, rejection) in refused {
            let was_applied = sink.position(i).is_some_and(|p| {
                decided
                    .get(&p.partition)
                    .is_some_and(|&done| p.offset <= done)
            });
            if !was_applied {
                still.push((i, rejection));
                continue;
            }
            tracing::info!(position = ?sink.position(i).map(ToString::to_string), now = %rejection, "a message applied before is read again; it would now be refused, but it was decided when it was applied: redelivered");
            applied.fates[i] = Fate::Done(Outcome::Redelivered);
            let lenient = Limits {
                max_message_bytes: usize::MAX,
            };
            if let Some(envelope) = sink
                .value(i)
                .and_then(|v| envelope::decode(v.clone(), &lenient).ok())
            {
                heal.push(Item {
                    envelope,
                    pos: sink.position(i).cloned(),
                });
            }
        }
        if !heal.is_empty() {
            let phase = PgPhase::done(vec![Outcome::Redelivered; heal.len()]);
            applied.saved.push((heal, phase));
        }
        Ok(still)
    }

    /// Hands the refusals to the sink, retrying failures until each is acknowledged or its
    /// message is no longer ours.
    async fn reject<S: Sink>(
        &mut self,
        sink: &S,
        mut todo: Vec<(usize, Rejection)>,
        applied: &mut Applied,
    ) -> Result<(), ApplyError> {
        let mut backoff = self.backoff();
        loop {
            todo.retain(|(i, _)| {
                let keep = sink.owns(*i);
                if !keep {
                    applied.fates[*i] = Fate::Abandoned;
                }
                keep
            });
            if todo.is_empty() {
                break;
            }
            let results = {
                let refs: Vec<(usize, &Rejection)> = todo.iter().map(|(i, r)| (*i, r)).collect();
                sink.reject(&refs).await
            };
            let mut failed = Vec::new();
            let mut first_error = None;
            for ((i, r), result) in todo.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        applied.report.dlq_published += 1;
                        applied.fates[i] = Fate::Rejected(r.reason);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                        failed.push((i, r));
                    }
                }
            }
            todo = failed;
            if let Some(e) = first_error {
                if e.is_retriable() {
                    tracing::warn!(error = %e, pending = todo.len(), "dead-letter publish failed; retrying (offsets do not move)");
                } else {
                    tracing::error!(error = %e, pending = todo.len(), "dead-letter topic refuses writes; retrying until it accepts (offsets do not move)");
                }
                self.back_off(&mut backoff, e.cause(), &mut applied.report)
                    .await?;
            }
        }
        self.recovered(&backoff);
        Ok(())
    }

    /// The LMDB phase of saved parts, `parts[*written..]`, retried while LMDB's failure is
    /// transient (PostgreSQL already decided the outcomes: there is nothing to isolate). Advances
    /// `written` as parts land, so a caller can start from where a previous attempt stopped.
    pub async fn write_lmdb(
        &mut self,
        parts: &[(Vec<Item>, PgPhase)],
        written: &mut usize,
        mut result: Result<(), StoreError>,
        report: &mut IngestReport,
    ) -> Result<(), ApplyError> {
        let mut backoff = self.backoff();
        loop {
            if let Err(e) = result {
                match e.class() {
                    ErrorClass::Transient => {
                        self.retrying(&e, parts[*written].0.len());
                        self.back_off(&mut backoff, e.cause(), report).await?;
                    }
                    ErrorClass::Message | ErrorClass::Fatal => {
                        tracing::error!(error = %e, cause = e.cause(), "LMDB write failed and retrying cannot help; stopping without committing");
                        return Err(ApplyError::Fatal(format!("store: {e}")));
                    }
                }
            }
            result = Ok(());
            while *written < parts.len() {
                let (items, phase) = &parts[*written];
                match self.store.write_lmdb(items, phase).await {
                    Ok(()) => *written += 1,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_ok() {
                self.recovered(&backoff);
                return Ok(());
            }
        }
    }
}
