//! The write stage: per batch, dead-letter the rejected messages, save the valid ones (ONE
//! PostgreSQL + ONE LMDB transaction), then commit the batch's Kafka offsets. Batches are written
//! in consumption order, so the stores' applied offsets and Kafka's committed offsets only ever
//! move forward.
//!
//! Order inside a batch matters: the stores record the highest applied offset of a partition, so
//! a rejected message below it must already be acknowledged by the dead-letter topic when the
//! store transaction commits — otherwise a crash in between would skip it on restart. Hence: DLQ
//! first, then the store, then Kafka.
//!
//! The stores' transactions are pipelined across batches. Up to `postgres.concurrent_batches`
//! batches are dead-lettered and written to PostgreSQL at once, each on its own connection, as
//! long as they share no partition (see [`Writer::run`]); meanwhile the previous batch's LMDB
//! transaction (mostly an fsync) runs in a task. Batches are then finished in batch order (LMDB
//! transaction awaited, retried on its own if it failed, offsets committed) before the next one's
//! LMDB transaction starts. So LMDB transactions run one at a time in batch order, commits stay in
//! batch order, and a batch's offsets are committed only once both of its transactions are. A
//! crash with PostgreSQL ahead of LMDB (by up to `concurrent_batches` + 1 batches, which may have
//! committed to PostgreSQL out of batch order) is the crash between the two commits the hybrid
//! store heals on redelivery, whatever order the messages come back in (its applied offsets are
//! the lower of the two).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::SeedableRng;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::consumer::{IngestConsumer, Partition, PauseFlags, Record};
use super::progress::mask;
use super::IngestReport;
use crate::dlq::{DeadLetter, DlqSink};
use crate::envelope::{Envelope, Rejection};
use crate::partition::Position;
use crate::reason::Reason;
use crate::store::postgres::ErrorClass;
use crate::store::{Item, LmdbError, Outcome, PgPhase, Store, StoreError};
use crate::telemetry::names;

/// Partition → assignment epoch, for the partitions this worker currently owns. Shared by the
/// main loop (which changes it on rebalance) and the writer (which commits only what it owns).
pub type Owned = Arc<Mutex<HashMap<Partition, u64>>>;

/// A checked message: the envelope, or why it is rejected.
pub type Verdict = Result<Envelope, Rejection>;

/// A batch after decoding and checking, ready to write.
pub struct Prepared {
    pub id: u64,
    pub records: Vec<Record>,
    pub verdicts: Vec<Verdict>,
}

/// What the writer did with a batch.
#[derive(Debug)]
pub struct Completion {
    pub id: u64,
    pub report: IngestReport,
    /// Next offsets committed to Kafka, per partition.
    pub committed: Vec<(Partition, i64)>,
}

/// Why the writer stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Neither retrying nor isolating a message helps (schema missing, permission denied, a bug):
    /// stop loudly without committing.
    #[error("{0}")]
    Fatal(String),
    /// Hard shutdown deadline: the batch is left uncommitted.
    #[error("aborted")]
    Aborted,
}

#[derive(Debug, Clone)]
enum Fate {
    Pending,
    Done(Outcome),
    Rejected(Reason),
    /// The partition was revoked (or the batch abandoned) before this message was finished: no
    /// outcome here, uncommitted; the partition's next owner reads it again.
    Abandoned,
}

/// Retry delays for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

pub struct Writer {
    /// What the PostgreSQL phases need; each one in flight runs with its own clone.
    saver: Saver,
    consumer: Arc<IngestConsumer>,
    /// Last next-offset committed per partition (the final synchronous commit re-sends these).
    committed: Arc<Mutex<HashMap<Partition, i64>>>,
    /// How many batches may be in their PostgreSQL phase at once (`postgres.concurrent_batches`).
    concurrency: usize,
}

/// The PostgreSQL phase of a batch: dead letters, then the store's PostgreSQL transaction(s),
/// retried and isolated as needed. Cheap to clone: one clone per batch in flight.
#[derive(Clone)]
struct Saver {
    store: Store,
    dlq: DlqSink,
    owned: Owned,
    pause: Arc<PauseFlags>,
    /// Hard stop: give up the current batch (uncommitted) and return.
    abort: CancellationToken,
    retry: RetryPolicy,
    rng: StdRng,
}

/// A batch in its PostgreSQL phase, in a task.
struct InPostgres {
    /// Every partition the batch has a message of (valid or rejected).
    partitions: HashSet<Partition>,
    task: JoinHandle<Result<Staged, WriteError>>,
}

/// A batch whose fates are decided and whose saved parts still need LMDB.
struct Staged {
    id: u64,
    records: Vec<Record>,
    fates: Vec<Fate>,
    report: IngestReport,
    /// The parts PostgreSQL saved, in save order, with what their LMDB transactions need.
    saved: Vec<(Vec<Item>, PgPhase)>,
}

/// A batch whose LMDB transactions run in a task.
struct InLmdb {
    staged: Staged,
    task: JoinHandle<LmdbDone>,
}

/// How far a batch's LMDB task got: `saved[..written]` are in LMDB; `result` is why it stopped.
struct LmdbDone {
    saved: Vec<(Vec<Item>, PgPhase)>,
    written: usize,
    result: Result<(), StoreError>,
}

/// Valid items still to save, with their record indexes.
struct Chunk {
    idx: Vec<usize>,
    items: Vec<Item>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        dlq: DlqSink,
        consumer: Arc<IngestConsumer>,
        owned: Owned,
        committed: Arc<Mutex<HashMap<Partition, i64>>>,
        pause: Arc<PauseFlags>,
        abort: CancellationToken,
        concurrency: usize,
    ) -> Writer {
        Writer {
            saver: Saver {
                store,
                dlq,
                owned,
                pause,
                abort,
                retry: RetryPolicy::default(),
                rng: StdRng::from_entropy(),
            },
            consumer,
            committed,
            concurrency: concurrency.max(1),
        }
    }

    /// Writes batches until the input closes.
    ///
    /// Up to `concurrency` batches are in their PostgreSQL phase at once, each on its own
    /// connection, as long as no two of them share a partition: a partition's progress row (its
    /// applied offset) must never move past a message of an earlier batch that is still undecided,
    /// and batches on disjoint partitions have no order between them in Kafka either. Results are
    /// taken in batch order, so LMDB transactions and offset commits stay in batch order. A batch
    /// whose partitions overlap one in flight waits for it (and everything behind it waits too).
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Prepared>,
        done: mpsc::UnboundedSender<Completion>,
    ) -> Result<(), WriteError> {
        let mut in_pg: VecDeque<InPostgres> = VecDeque::new();
        // The next batch (with its partitions), received but not started: its partitions overlap
        // one in flight, or `concurrency` batches are already in flight.
        let mut waiting: Option<(HashSet<Partition>, Prepared)> = None;
        // The batch whose LMDB transaction is running, if any.
        let mut pending: Option<InLmdb> = None;
        let mut input_open = true;
        let result = loop {
            if let Some((partitions, batch)) = waiting.take() {
                let busy: Vec<&HashSet<Partition>> = in_pg.iter().map(|b| &b.partitions).collect();
                if may_start(&busy, &partitions, self.concurrency) {
                    let mut saver = self.saver.clone();
                    saver.rng = StdRng::from_entropy();
                    let task = tokio::spawn(async move { saver.write_postgres(batch).await });
                    in_pg.push_back(InPostgres { partitions, task });
                    metrics::gauge!(names::POSTGRES_BATCHES).set(in_pg.len() as f64);
                } else {
                    waiting = Some((partitions, batch));
                }
            }
            if !input_open && waiting.is_none() && in_pg.is_empty() {
                break Ok(());
            }
            tokio::select! {
                batch = rx.recv(), if input_open && waiting.is_none() => match batch {
                    Some(batch) => {
                        let partitions = batch.records.iter().map(|r| r.tp.clone()).collect();
                        waiting = Some((partitions, batch));
                    }
                    None => input_open = false,
                },
                res = async { (&mut in_pg.front_mut().expect("guarded").task).await }, if !in_pg.is_empty() => {
                    in_pg.pop_front();
                    metrics::gauge!(names::POSTGRES_BATCHES).set(in_pg.len() as f64);
                    let staged = match res {
                        Ok(Ok(staged)) => staged,
                        Ok(Err(e)) => break Err(e),
                        Err(e) => break Err(WriteError::Fatal(format!("PostgreSQL write task failed: {e}"))),
                    };
                    if let Some(p) = pending.take() {
                        let res = p.task.await;
                        match self.finish(p.staged, res).await {
                            Ok(completion) => {
                                let _ = done.send(completion);
                            }
                            Err(e) => break Err(e),
                        }
                    }
                    pending = Some(self.start_lmdb(staged));
                }
                // An idle worker still commits its last batch as soon as LMDB holds it.
                res = async { (&mut pending.as_mut().expect("guarded").task).await }, if pending.is_some() => {
                    let p = pending.take().expect("guarded");
                    match self.finish(p.staged, res).await {
                        // The main loop may be gone at the very end of a shutdown: the batch is
                        // committed, so nothing is lost by not reporting it.
                        Ok(completion) => {
                            let _ = done.send(completion);
                        }
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        // Batches behind a failed one stay uncommitted: whatever they wrote to PostgreSQL is
        // recognised (and LMDB healed) when their messages are read again.
        for b in in_pg {
            b.task.abort();
        }
        metrics::gauge!(names::POSTGRES_BATCHES).set(0.0);
        // A fatal error in a later batch does not make this one wrong: finish it as the
        // sequential writer would have. On a hard stop it stays uncommitted.
        if let (Err(WriteError::Fatal(_)) | Ok(()), Some(p)) = (&result, pending.take()) {
            let res = p.task.await;
            let completion = self.finish(p.staged, res).await?;
            let _ = done.send(completion);
        }
        result
    }

    /// Starts the LMDB transactions of a batch saved to PostgreSQL, in a task.
    fn start_lmdb(&self, mut staged: Staged) -> InLmdb {
        let saved = std::mem::take(&mut staged.saved);
        let store = self.saver.store.clone();
        let task = tokio::spawn(async move {
            let mut written = 0;
            let mut result = Ok(());
            for (items, phase) in &saved {
                match store.write_lmdb(items, phase).await {
                    Ok(()) => written += 1,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            LmdbDone {
                saved,
                written,
                result,
            }
        });
        InLmdb { staged, task }
    }

    /// Completes a batch once its LMDB task ended: retries what LMDB did not take (LMDB only:
    /// PostgreSQL already decided the outcomes), then commits the offsets.
    async fn finish(
        &mut self,
        mut staged: Staged,
        task: Result<LmdbDone, tokio::task::JoinError>,
    ) -> Result<Completion, WriteError> {
        let LmdbDone {
            saved,
            mut written,
            mut result,
        } = task.map_err(|e| WriteError::Fatal(format!("LMDB write task failed: {e}")))?;
        let mut backoff = Backoff::new(self.saver.retry.base, self.saver.retry.max);
        loop {
            if let Err(e) = result {
                let envelopes = saved[written].0.len();
                match classify(&e) {
                    ErrorClass::Transient if needs_operator(&e) => {
                        tracing::error!(error = %e, cause = e.cause(), envelopes, "LMDB write failed; retrying it (offsets do not move) until an operator makes room for LMDB");
                    }
                    ErrorClass::Transient => {
                        tracing::warn!(error = %e, cause = e.cause(), envelopes, "LMDB write failed; retrying it (offsets do not move)");
                    }
                    // PostgreSQL already stored these messages: there is nothing to isolate.
                    ErrorClass::Message | ErrorClass::Fatal => {
                        tracing::error!(error = %e, cause = e.cause(), "LMDB write failed and retrying cannot help; stopping without committing");
                        return Err(WriteError::Fatal(format!("store: {e}")));
                    }
                }
                self.saver
                    .back_off(&mut backoff, e.cause(), &mut staged.report)
                    .await?;
            }
            // Every saved part, even of partitions revoked meanwhile: PostgreSQL holds them, and a
            // later batch's LMDB transaction must not pass a hole.
            result = Ok(());
            while written < saved.len() {
                let (items, phase) = &saved[written];
                match self.saver.store.write_lmdb(items, phase).await {
                    Ok(()) => written += 1,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_ok() {
                break;
            }
        }
        self.saver.recovered(&backoff);

        let Staged {
            id,
            records,
            fates,
            mut report,
            ..
        } = staged;
        let committed = self.commit(&records, &fates, &mut report);

        for (i, fate) in fates.iter().enumerate() {
            match fate {
                Fate::Done(o) => {
                    report.count_outcome(*o);
                    metrics::counter!(names::ENVELOPES, "outcome" => o.as_str()).increment(1);
                }
                Fate::Rejected(reason) => {
                    report.rejected += 1;
                    *report.rejected_by_reason.entry(*reason).or_default() += 1;
                    metrics::counter!(names::ENVELOPES, "outcome" => "rejected").increment(1);
                    metrics::counter!(names::REJECTED, "reason" => reason.as_str()).increment(1);
                }
                Fate::Abandoned => {
                    report.abandoned += 1;
                    metrics::counter!(names::ABANDONED).increment(1);
                }
                Fate::Pending => {
                    // Every path above decides each message; reaching this is a bug, and
                    // committing past an undecided message could lose it.
                    return Err(WriteError::Fatal(format!(
                        "internal error: message {} offset {} left without an outcome",
                        records[i].tp, records[i].offset
                    )));
                }
            }
        }
        Ok(Completion {
            id,
            report,
            committed,
        })
    }

    /// Commits, per owned partition, the highest offset of the batch + 1. A partition revoked
    /// meanwhile (or re-assigned under a new epoch) is not committed: its new owner decides.
    fn commit(
        &self,
        records: &[Record],
        fates: &[Fate],
        report: &mut IngestReport,
    ) -> Vec<(Partition, i64)> {
        let mut next: BTreeMap<&Partition, (u64, i64)> = BTreeMap::new();
        for (r, f) in records.iter().zip(fates) {
            if matches!(f, Fate::Abandoned) {
                continue;
            }
            let e = next.entry(&r.tp).or_insert((r.epoch, r.offset + 1));
            e.1 = e.1.max(r.offset + 1);
        }
        if next.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let mut tpl = TopicPartitionList::with_capacity(next.len());
        let mut committed = Vec::with_capacity(next.len());
        // Held across the commit call so a revocation cannot slip in between the ownership check
        // and the commit (the call only enqueues; it does not wait for the broker).
        let owned = lock(&self.saver.owned);
        for (tp, (epoch, offset)) in &next {
            if owned.get(*tp) == Some(epoch) {
                if let Err(e) =
                    tpl.add_partition_offset(&tp.topic, tp.number, Offset::Offset(*offset))
                {
                    tracing::warn!(partition = %tp, error = %e, "cannot build the offset commit");
                    continue;
                }
                committed.push(((*tp).clone(), *offset));
            }
        }
        if committed.is_empty() {
            return committed;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            // The stores hold the applied offsets: a restart resumes correctly; only lag is stale
            // until the next commit supersedes this one.
            tracing::warn!(error = %e, "Kafka offset commit failed");
        }
        {
            // Under the ownership lock: a re-assignment (which forgets the old position) cannot
            // slip in between the check above and this.
            let mut c = lock(&self.committed);
            for (tp, o) in &committed {
                c.insert(tp.clone(), *o);
            }
        }
        drop(owned);
        metrics::histogram!(names::STAGE_SECONDS, "stage" => "commit")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(names::BATCHES_COMMITTED).increment(1);
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(names::LAST_COMMIT).set(now_s);
        let e2e = metrics::histogram!(names::END_TO_END_SECONDS);
        for (r, f) in records.iter().zip(fates) {
            if matches!(f, Fate::Abandoned) {
                continue;
            }
            if let Some(ts) = r.timestamp_ms {
                e2e.record((now_s - ts as f64 / 1000.0).max(0.0));
            }
        }
        report.batches_committed += 1;
        let now_us = (now_s * 1e6) as u64;
        if report.first_commit_us == 0 {
            report.first_commit_us = now_us;
            report.first_batch_messages = records.len() as u64;
        }
        report.last_commit_us = now_us;
        committed
    }
}

impl Saver {
    /// Dead-letters the rejects and saves the valid messages to PostgreSQL: every message's fate
    /// is decided, nothing is in LMDB or committed yet.
    async fn write_postgres(&mut self, batch: Prepared) -> Result<Staged, WriteError> {
        let Prepared {
            id,
            records,
            verdicts,
        } = batch;
        let n = records.len();
        let mut staged = Staged {
            id,
            fates: vec![Fate::Pending; n],
            report: IngestReport::default(),
            saved: Vec::new(),
            records,
        };
        let mut letters = Vec::new();
        let mut chunk = Chunk {
            idx: Vec::with_capacity(n),
            items: Vec::with_capacity(n),
        };
        for (i, verdict) in verdicts.into_iter().enumerate() {
            let r = &staged.records[i];
            match verdict {
                Ok(envelope) => {
                    chunk.idx.push(i);
                    chunk.items.push(Item {
                        envelope,
                        pos: Some(Position {
                            partition: r.tp.clone(),
                            offset: r.offset,
                        }),
                    });
                }
                Err(rejection) => letters.push((i, letter(r, rejection))),
            }
        }

        self.dead_letter(
            &staged.records,
            &mut staged.fates,
            letters,
            &mut staged.report,
        )
        .await?;
        self.save_isolating(&mut staged, chunk).await?;
        Ok(staged)
    }

    fn owns(&self, r: &Record) -> bool {
        lock(&self.owned).get(&r.tp) == Some(&r.epoch)
    }

    /// Publishes the letters, retrying failures until each is acknowledged or its partition is
    /// no longer ours.
    async fn dead_letter(
        &mut self,
        records: &[Record],
        fates: &mut [Fate],
        mut todo: Vec<(usize, DeadLetter)>,
        report: &mut IngestReport,
    ) -> Result<(), WriteError> {
        let mut backoff = Backoff::new(self.retry.base, self.retry.max);
        loop {
            todo.retain(|(i, _)| {
                let keep = self.owns(&records[*i]);
                if !keep {
                    fates[*i] = Fate::Abandoned;
                }
                keep
            });
            if todo.is_empty() {
                break;
            }
            let results = {
                let refs: Vec<&DeadLetter> = todo.iter().map(|(_, l)| l).collect();
                self.dlq.publish_all(&refs).await
            };
            let mut failed = Vec::new();
            let mut first_error = None;
            for ((i, l), r) in todo.into_iter().zip(results) {
                match r {
                    Ok(()) => {
                        report.dlq_published += 1;
                        fates[i] = Fate::Rejected(l.reason);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                        failed.push((i, l));
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
                self.back_off(&mut backoff, e.cause(), report).await?;
            }
        }
        self.recovered(&backoff);
        Ok(())
    }

    /// Saves the valid items; a database error caused by the data of one message (not a
    /// transient one) splits the batch until that message is alone, then dead-letters it.
    async fn save_isolating(
        &mut self,
        staged: &mut Staged,
        chunk: Chunk,
    ) -> Result<(), WriteError> {
        // Depth-first, left half first: items are saved in consumption order, so a partition's
        // applied offset never passes a message that is still undecided.
        let mut stack = vec![chunk];
        while let Some(mut chunk) = stack.pop() {
            match self.save_with_retry(staged, &mut chunk).await? {
                None => {}
                Some(e) if chunk.items.len() == 1 => {
                    let i = chunk.idx[0];
                    let r = &staged.records[i];
                    tracing::warn!(partition = %r.tp, offset = r.offset, error = %e, "the database refuses this message; dead-lettering it");
                    let l = letter(r, Rejection::new(Reason::StoreRejected, e.to_string()));
                    self.dead_letter(
                        &staged.records,
                        &mut staged.fates,
                        vec![(i, l)],
                        &mut staged.report,
                    )
                    .await?;
                }
                Some(_) => {
                    let mid = chunk.items.len() / 2;
                    let right = Chunk {
                        idx: chunk.idx.split_off(mid),
                        items: chunk.items.split_off(mid),
                    };
                    stack.push(right);
                    stack.push(chunk);
                }
            }
        }
        Ok(())
    }

    /// One PostgreSQL phase with retries on transient errors. `Ok(None)`: saved, fates set, the
    /// part queued in `staged.saved` for LMDB. `Ok(Some(e))`: a data error to isolate.
    async fn save_with_retry(
        &mut self,
        staged: &mut Staged,
        chunk: &mut Chunk,
    ) -> Result<Option<StoreError>, WriteError> {
        let records = &staged.records;
        let fates = &mut staged.fates;
        let report = &mut staged.report;
        let mut backoff = Backoff::new(self.retry.base, self.retry.max);
        loop {
            // Drop what is no longer ours before each attempt: after a revocation the next owner
            // writes it (the stores' offsets make that exactly-once either way).
            let mut k = 0;
            while k < chunk.items.len() {
                let i = chunk.idx[k];
                if self.owns(&records[i]) {
                    k += 1;
                } else {
                    fates[i] = Fate::Abandoned;
                    chunk.idx.remove(k);
                    chunk.items.remove(k);
                }
            }
            if chunk.items.is_empty() {
                self.recovered(&backoff);
                return Ok(None);
            }
            let started = Instant::now();
            match self.store.save_postgres(&chunk.items).await {
                Ok(phase) => {
                    self.record_store_latency(started.elapsed());
                    if phase.outcomes.len() != chunk.items.len() {
                        return Err(WriteError::Fatal(format!(
                            "internal error: the store returned {} outcomes for {} envelopes",
                            phase.outcomes.len(),
                            chunk.items.len()
                        )));
                    }
                    for ((&i, item), &o) in chunk.idx.iter().zip(&chunk.items).zip(&phase.outcomes)
                    {
                        if o == Outcome::Replay {
                            let h = &item.envelope.header;
                            let r = &records[i];
                            tracing::warn!(
                                key_id = %mask(&h.key_id),
                                nonce = %mask(&h.nonce),
                                event_type = %h.event_type,
                                partition = %r.tp,
                                offset = r.offset,
                                "replay caught (seth.caught): (key_id, nonce) already used"
                            );
                        }
                        fates[i] = Fate::Done(o);
                    }
                    staged.saved.push((std::mem::take(&mut chunk.items), phase));
                    self.recovered(&backoff);
                    return Ok(None);
                }
                Err(e) => match classify(&e) {
                    ErrorClass::Transient if needs_operator(&e) => {
                        // Retrying alone will not help: say so at error level on every attempt.
                        tracing::error!(error = %e, cause = e.cause(), envelopes = chunk.items.len(), "store write failed; retrying the same batch (offsets do not move) until an operator makes room for LMDB");
                        self.back_off(&mut backoff, e.cause(), report).await?;
                    }
                    ErrorClass::Transient => {
                        tracing::warn!(error = %e, cause = e.cause(), envelopes = chunk.items.len(), "store write failed; retrying the same batch (offsets do not move)");
                        self.back_off(&mut backoff, e.cause(), report).await?;
                    }
                    ErrorClass::Message => {
                        self.recovered(&backoff);
                        return Ok(Some(e));
                    }
                    ErrorClass::Fatal => {
                        tracing::error!(error = %e, cause = e.cause(), "store write failed and retrying cannot help; stopping without committing");
                        return Err(WriteError::Fatal(format!("store: {e}")));
                    }
                },
            }
        }
    }

    fn record_store_latency(&self, d: Duration) {
        // The hybrid store times its PostgreSQL and LMDB transactions itself.
        let stage = match &self.store {
            Store::Postgres(_) => "postgres",
            Store::Lmdb(_) => "lmdb",
            Store::Hybrid(_) => return,
        };
        metrics::histogram!(names::STAGE_SECONDS, "stage" => stage).record(d.as_secs_f64());
    }

    /// Pauses consumption and waits before the next attempt; `Aborted` on a hard stop.
    async fn back_off(
        &mut self,
        backoff: &mut Backoff,
        cause: &'static str,
        report: &mut IngestReport,
    ) -> Result<(), WriteError> {
        report.retries += 1;
        metrics::counter!(names::RETRIES, "cause" => cause).increment(1);
        self.pause.set(PauseFlags::RETRYING, true);
        metrics::gauge!(names::PAUSED).set(1.0);
        let delay = backoff.next_delay(&mut self.rng);
        tokio::select! {
            _ = self.abort.cancelled() => Err(WriteError::Aborted),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    fn recovered(&self, backoff: &Backoff) {
        if backoff.attempts() > 0 {
            self.pause.set(PauseFlags::RETRYING, false);
            metrics::gauge!(names::PAUSED).set(0.0);
            tracing::info!(
                attempts = backoff.attempts(),
                "recovered after retries; resuming consumption"
            );
        }
    }
}

/// Whether a batch on `partitions` may start its PostgreSQL phase while batches on `busy` are in
/// theirs: fewer than `concurrency` in flight, and no partition shared with any of them.
fn may_start(
    busy: &[&HashSet<Partition>],
    partitions: &HashSet<Partition>,
    concurrency: usize,
) -> bool {
    busy.len() < concurrency && busy.iter().all(|b| b.is_disjoint(partitions))
}

fn letter(r: &Record, rejection: Rejection) -> DeadLetter {
    DeadLetter {
        key: r.key.clone(),
        value: r.value.clone(),
        reason: rejection.reason,
        detail: rejection.detail,
        source_topic: r.tp.topic.clone(),
        source_partition: r.tp.number,
        source_offset: r.offset,
    }
}

/// What to do about a store error: retry, isolate the message, or stop.
pub fn classify(e: &StoreError) -> ErrorClass {
    match e {
        StoreError::Postgres(pg) => pg.class(),
        StoreError::Lmdb(l) if l.is_retriable() => ErrorClass::Transient,
        StoreError::Lmdb(_) | StoreError::Task(_) => ErrorClass::Fatal,
    }
}

/// A transient failure that lasts until someone acts: LMDB's map at `lmdb.max_map_size`, or its
/// filesystem full.
fn needs_operator(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Lmdb(LmdbError::MapAtLimit { .. } | LmdbError::NoSpace(_))
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(parts: &[i32]) -> HashSet<Partition> {
        parts
            .iter()
            .map(|&p| Partition {
                topic: "t".into(),
                number: p,
            })
            .collect()
    }

    #[test]
    fn a_batch_starts_only_beside_partition_disjoint_ones_and_within_the_limit() {
        let (a, b) = (tps(&[0, 2]), tps(&[1, 3]));
        assert!(may_start(&[], &a, 1));
        assert!(!may_start(&[&a], &b, 1));
        assert!(may_start(&[&a], &b, 2));
        assert!(!may_start(&[&a], &tps(&[2, 5]), 2), "shares partition 2");
        assert!(!may_start(&[&a, &b], &tps(&[4]), 2), "limit reached");
        assert!(may_start(&[&a, &b], &tps(&[4]), 3));
        let other_topic: HashSet<Partition> = [Partition {
            topic: "u".into(),
            number: 0,
        }]
        .into();
        assert!(
            may_start(&[&a], &other_topic, 2),
            "same number, other topic"
        );
    }
}
