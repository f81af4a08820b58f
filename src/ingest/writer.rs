//! The write stage: per batch, the PostgreSQL phase ([`super::apply`]: dead letters first, then ONE
//! PostgreSQL transaction, retried and isolated as needed), then ONE LMDB transaction; then the
//! batch is handed back to the main loop as a [`Completion`] with the offsets it decided. The
//! writer never commits offsets and never changes shared state: the main loop's ledger decides
//! what may be committed, and its committer commits it.
//!
//! The stores' transactions are pipelined across batches. Up to `postgres.concurrent_batches`
//! batches are in their PostgreSQL phase at once, each on its own connection, as long as they
//! share no partition (see [`Writer::run`]); meanwhile the previous batch's LMDB transaction
//! (mostly an fsync) runs in a task. Batches are then finished in batch order (LMDB transaction
//! awaited, retried on its own if it failed) before the next one's LMDB transaction starts. So LMDB
//! transactions run one at a time in batch order, completions arrive in batch order, and a batch
//! completes only once both of its transactions are committed. A crash with PostgreSQL ahead of
//! LMDB (by up to `concurrent_batches` + 1 batches, which may have committed to PostgreSQL out of
//! batch order) is the crash between the two commits the hybrid store heals on redelivery,
//! whatever order the messages come back in (its applied offsets are the lower of the two).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::apply::{Applied, Applier, ApplyError, Fate, Sink};
use super::consumer::Record;
use super::ledger::Decided;
use super::report::IngestReport;
use crate::dlq::{DeadLetter, DlqError, DlqSink};
use crate::envelope::Rejection;
use crate::partition::{Partition, Position};
use crate::store::{Item, PgPhase, StoreError};
use crate::telemetry::names;

/// The partitions this worker owns and their assignment epochs, as the main loop's ledger last
/// published them. The writer only reads it, to leave a revoked partition's messages alone.
pub type Ownership = watch::Receiver<Arc<HashMap<Partition, u64>>>;

/// A checked batch, ready to write: `verdicts[i]` is `records[i]`'s check result.
pub struct Prepared {
    pub id: u64,
    pub records: Vec<Record>,
    pub verdicts: Vec<Result<crate::envelope::Envelope, Rejection>>,
}

/// A batch both stores hold (or whose messages were left to another owner).
#[derive(Debug)]
pub struct Completion {
    pub id: u64,
    pub report: IngestReport,
    /// Per partition of the batch with a decided message: the epoch and the next offset.
    pub decided: Vec<Decided>,
    /// Kafka timestamps (ms) of the decided messages, for the end-to-end latency once committed.
    pub timestamps_ms: Vec<i64>,
    /// Messages in the batch.
    pub messages: u64,
}

/// Why the writer stopped.
pub type WriteError = ApplyError;

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
    applied: Applied,
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

/// The records of a batch as the applier sees them: their positions, whether each is still ours,
/// and the dead-letter topic for the refused ones.
struct RecordSink {
    records: Vec<Record>,
    positions: Vec<Position>,
    ownership: Ownership,
    dlq: DlqSink,
}

impl Sink for RecordSink {
    fn owns(&self, i: usize) -> bool {
        let r = &self.records[i];
        self.ownership.borrow().get(&r.tp) == Some(&r.epoch)
    }

    fn position(&self, i: usize) -> Option<&Position> {
        self.positions.get(i)
    }

    fn value(&self, i: usize) -> Option<&bytes::Bytes> {
        self.records.get(i).and_then(|r| r.value.as_ref())
    }

    async fn reject(&self, refused: &[(usize, &Rejection)]) -> Vec<Result<(), DlqError>> {
        let letters: Vec<DeadLetter> = refused
            .iter()
            .map(|(i, r)| letter(&self.records[*i], r))
            .collect();
        let refs: Vec<&DeadLetter> = letters.iter().collect();
        self.dlq.publish_all(&refs).await
    }
}

pub struct Writer {
    applier: Applier,
    dlq: DlqSink,
    ownership: Ownership,
    /// How many batches may be in their PostgreSQL phase at once (`postgres.concurrent_batches`).
    concurrency: usize,
}

impl Writer {
    pub fn new(applier: Applier, dlq: DlqSink, ownership: Ownership, concurrency: usize) -> Writer {
        Writer {
            applier,
            dlq,
            ownership,
            concurrency: concurrency.max(1),
        }
    }

    /// Writes batches until the input closes.
    ///
    /// Up to `concurrency` batches are in their PostgreSQL phase at once, each on its own
    /// connection, as long as no two of them share a partition: a partition's progress row (its
    /// applied offset) must never move past a message of an earlier batch that is still undecided,
    /// and batches on disjoint partitions have no order between them in Kafka either. Results are
    /// taken in batch order, so LMDB transactions and completions stay in batch order. A batch
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
                    let task = tokio::spawn(self.postgres_phase(batch));
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
                // An idle worker still completes its last batch as soon as LMDB holds it.
                res = async { (&mut pending.as_mut().expect("guarded").task).await }, if pending.is_some() => {
                    let p = pending.take().expect("guarded");
                    match self.finish(p.staged, res).await {
                        // The main loop may be gone at the very end of a shutdown: nothing is lost
                        // by not reporting the batch (its offsets are in the stores).
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

    /// The PostgreSQL phase of a batch, as a future to spawn.
    fn postgres_phase(
        &self,
        batch: Prepared,
    ) -> impl std::future::Future<Output = Result<Staged, WriteError>> + Send + 'static {
        let mut applier = self.applier.fork();
        let Prepared {
            id,
            records,
            verdicts,
        } = batch;
        let positions = records
            .iter()
            .map(|r| Position {
                partition: r.tp.clone(),
                offset: r.offset,
            })
            .collect();
        let sink = RecordSink {
            records,
            positions,
            ownership: self.ownership.clone(),
            dlq: self.dlq.clone(),
        };
        async move {
            let applied = applier.apply(verdicts, &sink).await?;
            Ok(Staged {
                id,
                records: sink.records,
                applied,
            })
        }
    }

    /// Starts the LMDB transactions of a batch saved to PostgreSQL, in a task.
    fn start_lmdb(&self, mut staged: Staged) -> InLmdb {
        let saved = std::mem::take(&mut staged.applied.saved);
        let store = self.applier.store().clone();
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

    /// Completes a batch once its LMDB task ended: retries what LMDB did not take, then counts
    /// each message's outcome and reports the offsets decided.
    async fn finish(
        &mut self,
        staged: Staged,
        task: Result<LmdbDone, tokio::task::JoinError>,
    ) -> Result<Completion, WriteError> {
        let LmdbDone {
            saved,
            mut written,
            result,
        } = task.map_err(|e| WriteError::Fatal(format!("LMDB write task failed: {e}")))?;
        let Staged {
            id,
            records,
            applied,
        } = staged;
        let Applied {
            fates, mut report, ..
        } = applied;
        // Every saved part, even of partitions revoked meanwhile: PostgreSQL holds them, and a
        // later batch's LMDB transaction must not pass a hole.
        self.applier
            .write_lmdb(&saved, &mut written, result, &mut report)
            .await?;
        count_outcomes(&records, &fates, &mut report)?;
        let mut decided: BTreeMap<&Partition, (u64, i64)> = BTreeMap::new();
        let mut timestamps_ms = Vec::with_capacity(records.len());
        for (r, f) in records.iter().zip(&fates) {
            if matches!(f, Fate::Abandoned) {
                continue;
            }
            let e = decided.entry(&r.tp).or_insert((r.epoch, r.offset + 1));
            e.1 = e.1.max(r.offset + 1);
            timestamps_ms.extend(r.timestamp_ms);
        }
        Ok(Completion {
            id,
            report,
            decided: decided
                .into_iter()
                .map(|(p, (epoch, next))| Decided {
                    partition: p.clone(),
                    epoch,
                    next,
                })
                .collect(),
            timestamps_ms,
            messages: records.len() as u64,
        })
    }
}

/// Counts each message's outcome (report and metrics). Every path decides each message; one left
/// undecided is a bug, and committing past it could lose it.
fn count_outcomes(
    records: &[Record],
    fates: &[Fate],
    report: &mut IngestReport,
) -> Result<(), WriteError> {
    for (r, fate) in records.iter().zip(fates) {
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
                return Err(WriteError::Fatal(format!(
                    "internal error: message {} offset {} left without an outcome",
                    r.tp, r.offset
                )));
            }
        }
    }
    Ok(())
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

fn letter(r: &Record, rejection: &Rejection) -> DeadLetter {
    DeadLetter {
        key: r.key.clone(),
        value: r.value.clone(),
        reason: rejection.reason,
        detail: rejection.detail.clone(),
        source_topic: r.tp.topic.clone(),
        source_partition: r.tp.number,
        source_offset: r.offset,
        truncated_from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(parts: &[i32]) -> HashSet<Partition> {
        parts.iter().map(|&p| Partition::new("t", p)).collect()
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
        let other_topic: HashSet<Partition> = [Partition::new("u", 0)].into();
        assert!(
            may_start(&[&a], &other_topic, 2),
            "same number, other topic"
        );
    }
}
