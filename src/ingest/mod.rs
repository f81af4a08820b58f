//! The ingestion worker: Kafka → batch → decode/validate/verify → dead-letter the rejects → ONE
//! PostgreSQL + ONE LMDB transaction → commit offsets.
//!
//! Stages and the bounded queues between them:
//!
//! ```text
//! poll thread ──records──▶ main loop (batcher) ──batches──▶ prepare ──checked──▶ writer ──┐
//!      ▲  rebalance callbacks ──control──▶ main loop ◀────────── completions ─────────────┘
//! ```
//!
//! - The poll thread owns librdkafka polling (see [`consumer`]); when the record queue stays full,
//!   or the writer is backing off, it pauses the assignment and keeps polling only to serve
//!   rebalance callbacks.
//! - The main loop batches, hands batches on while fewer than `batch.max_in_flight` are between
//!   hand-off and commit, and handles rebalances and shutdown.
//! - `prepare` decodes and checks a batch (off the runtime) while the writer writes earlier ones.
//! - The writer finishes batches in order; it runs up to `postgres.concurrent_batches` (2)
//!   partition-disjoint PostgreSQL transactions at once, overlapped with the previous batch's LMDB
//!   transaction (see [`writer`]). So it holds up to three batches, and keeping `prepare` busy as
//!   well takes `batch.max_in_flight` = 4 (the default).

pub mod backoff;
pub mod consumer;
pub mod progress;
pub mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, BatchLimits, LaneBatcher, Push};
use crate::config::{Config, StoreMode};
use crate::dlq::DlqSink;
use crate::envelope::Rejection;
use crate::pipeline::Checker;
use crate::reason::Reason;
use crate::store::{Outcome, Store};
use crate::telemetry::names;

use consumer::{Assigned, Control, IngestConsumer, IngestContext, Partition, PauseFlags, Record};
use progress::CatchUp;
use writer::{Completion, Owned, Prepared, Verdict, WriteError, Writer};

/// How `run` behaves.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Return once every assigned partition's committed offset reached the high watermark it had
    /// when it was first assigned (demo, benchmarks, back-fills). Otherwise run until shutdown.
    pub until_caught_up: bool,
    /// Set once the consumer received its first assignment from the group (even an empty one) and
    /// cleared when the worker stops: the readiness endpoint's "joined the group".
    pub group_joined: Option<Arc<AtomicBool>>,
}

/// What a run did. `consumed` = the five outcomes + `abandoned`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Messages taken from Kafka.
    pub consumed: u64,
    pub stored: u64,
    pub duplicate: u64,
    pub redelivered: u64,
    pub replay: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<Reason, u64>,
    /// Messages left uncommitted, without an outcome here: their partition was revoked (or the
    /// shutdown deadline passed) first. They are read again by the partition's next owner.
    pub abandoned: u64,
    /// Dead-letter publishes acknowledged (≥ `rejected`'s share that reached the DLQ this run).
    pub dlq_published: u64,
    pub batches_committed: u64,
    /// Attempts repeated after a transient failure.
    pub retries: u64,
    /// Unix time (µs) of the first and last offset commits, and the messages of the first
    /// committed batch: the throughput "from the first commit until every offset is committed".
    pub first_commit_us: u64,
    pub last_commit_us: u64,
    pub first_batch_messages: u64,
}

impl IngestReport {
    pub fn outcome(&self, o: Outcome) -> u64 {
        match o {
            Outcome::Stored => self.stored,
            Outcome::Duplicate => self.duplicate,
            Outcome::Redelivered => self.redelivered,
            Outcome::Replay => self.replay,
        }
    }

    fn count_outcome(&mut self, o: Outcome) {
        match o {
            Outcome::Stored => self.stored += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Redelivered => self.redelivered += 1,
            Outcome::Replay => self.replay += 1,
        }
    }

    /// Messages per second between the first and the last commit (the first batch's messages
    /// were handled before the clock started, so they are not counted). `None` with < 2 commits.
    pub fn committed_per_s(&self) -> Option<f64> {
        let span = self.last_commit_us.checked_sub(self.first_commit_us)?;
        if span == 0 {
            return None;
        }
        let messages = self.decided().saturating_sub(self.first_batch_messages);
        Some(messages as f64 / (span as f64 / 1e6))
    }

    /// The report as one JSON object (`ingest --report-json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "consumed": self.consumed,
            "outcomes": {
                "stored": self.stored,
                "duplicate": self.duplicate,
                "redelivered": self.redelivered,
                "replay": self.replay,
                "rejected": self.rejected,
            },
            "rejected_by_reason": self.rejected_by_reason.iter().map(|(r, n)| (r.as_str(), *n)).collect::<BTreeMap<_, _>>(),
            "abandoned": self.abandoned,
            "dlq_published": self.dlq_published,
            "batches_committed": self.batches_committed,
            "retries": self.retries,
            "committed_per_s": self.committed_per_s(),
            "commit_span_s": (self.last_commit_us.saturating_sub(self.first_commit_us)) as f64 / 1e6,
        })
    }

    /// Messages that reached an outcome.
    pub fn decided(&self) -> u64 {
        self.stored + self.duplicate + self.redelivered + self.replay + self.rejected
    }

    pub fn merge(&mut self, o: &IngestReport) {
        self.consumed += o.consumed;
        self.stored += o.stored;
        self.duplicate += o.duplicate;
        self.redelivered += o.redelivered;
        self.replay += o.replay;
        self.rejected += o.rejected;
        for (k, v) in &o.rejected_by_reason {
            *self.rejected_by_reason.entry(*k).or_default() += v;
        }
        self.abandoned += o.abandoned;
        self.dlq_published += o.dlq_published;
        self.batches_committed += o.batches_committed;
        self.retries += o.retries;
        if self.first_commit_us == 0
            || (o.first_commit_us != 0 && o.first_commit_us < self.first_commit_us)
        {
            self.first_commit_us = o.first_commit_us;
            self.first_batch_messages = o.first_batch_messages;
        }
        self.last_commit_us = self.last_commit_us.max(o.last_commit_us);
    }
}

/// The outcome table (`ingest` prints it at exit, the demo shows it).
impl fmt::Display for IngestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<24} {:>10}", "outcome", "messages")?;
        writeln!(f, "{:<24} {:>10}", "stored", self.stored)?;
        writeln!(f, "{:<24} {:>10}", "duplicate", self.duplicate)?;
        writeln!(f, "{:<24} {:>10}", "redelivered", self.redelivered)?;
        writeln!(f, "{:<24} {:>10}", "replay (seth.caught)", self.replay)?;
        writeln!(f, "{:<24} {:>10}", "rejected (to DLQ)", self.rejected)?;
        for (reason, n) in &self.rejected_by_reason {
            writeln!(f, "  {:<22} {:>10}", reason, n)?;
        }
        if self.abandoned > 0 {
            writeln!(f, "{:<24} {:>10}", "left for next owner", self.abandoned)?;
        }
        writeln!(f, "{:<24} {:>10}", "total consumed", self.consumed)?;
        writeln!(
            f,
            "{:<24} {:>10}",
            "DLQ publishes acked", self.dlq_published
        )?;
        writeln!(
            f,
            "{:<24} {:>10}",
            "batches committed", self.batches_committed
        )?;
        write!(f, "{:<24} {:>10}", "retries", self.retries)
    }
}

/// Queue of records between the poll thread and the main loop. Small: the batcher is where
/// records accumulate; this only decouples the two threads.
const RECORD_QUEUE: usize = 1024;
/// How long an assignment waits for the stores' applied offsets before falling back to Kafka's
/// committed offsets (both are safe; the stores' avoid redelivery).
const ASSIGN_STORE_TIMEOUT: Duration = Duration::from_secs(20);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the owned positions are committed again (see the tick in the main loop).
const RECOMMIT_EVERY: Duration = Duration::from_secs(5);

/// Runs the worker until `shutdown` is cancelled (or, with `until_caught_up`, until it caught up),
/// then finishes the batches in flight, commits and returns within `shutdown.timeout_ms`.
pub async fn run(
    config: &Config,
    store: Store,
    opts: IngestOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<IngestReport> {
    let checker = Arc::new(Checker::from_config(config).context("building the message checks")?);
    let dlq = DlqSink::new(config).context("creating the dead-letter producer")?;
    // Up to 30 s when the brokers cannot be reached (down, wrong CA, wrong credentials): a
    // shutdown meanwhile must not wait for it (nothing has been consumed yet).
    tokio::select! {
        _ = ensure_dlq_topics(config) => {}
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown requested before consuming anything; stopping");
            return Ok(IngestReport::default());
        }
    }

    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let ctx = IngestContext::new(
        ctl_tx,
        Duration::from_millis(config.kafka.session_timeout_ms.min(10_000)),
    );
    let consumer: IngestConsumer = crate::kafka::consumer_config(&config.kafka)
        .create_with_context(ctx)
        .map_err(crate::kafka::redact_error)
        .context("creating the Kafka consumer")?;
    let consumer = Arc::new(consumer);
    let topics: Vec<&str> = config.kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing")?;
    tracing::info!(topics = ?config.kafka.topics, group = %config.kafka.group_id, store = %config.store.mode, verify = config.verify.enabled, "ingest worker starting");

    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(PauseFlags::default());
    let (rec_tx, rec_rx) = mpsc::channel(RECORD_QUEUE);
    let poll_thread = {
        let (consumer, stop, pause) = (consumer.clone(), stop.clone(), pause.clone());
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || consumer::run_poll_thread(consumer, rec_tx, stop, pause, handle))
            .context("starting the Kafka poll thread")?
    };

    let max_in_flight = config.batch.max_in_flight.max(1);
    // LMDB has one writer at a time: concurrent batches only help PostgreSQL.
    let concurrency = match config.store.mode {
        StoreMode::Lmdb => 1,
        StoreMode::Postgres | StoreMode::Hybrid => config.postgres.concurrent_batches.max(1),
    };
    let (prep_tx, prep_rx) = mpsc::channel::<(u64, Batch<Record>)>(max_in_flight);
    let (write_tx, write_rx) = mpsc::channel::<Prepared>(max_in_flight);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let owned: Owned = Arc::new(Mutex::new(HashMap::new()));
    let committed = Arc::new(Mutex::new(HashMap::new()));
    let abort = CancellationToken::new();

    let prepare = tokio::spawn(prepare_loop(prep_rx, write_tx, checker));
    let writer = tokio::spawn(
        Writer::new(
            store.clone(),
            dlq.clone(),
            consumer.clone(),
            owned.clone(),
            committed.clone(),
            pause.clone(),
            abort.clone(),
            concurrency,
        )
        .run(write_rx, done_tx),
    );

    let opts_joined = opts.group_joined.clone();
    let mut main = MainLoop {
        config,
        store,
        opts,
        consumer: consumer.clone(),
        owned,
        committed,
        pause,
        batcher: LaneBatcher::new(BatchLimits::from_config(&config.batch), concurrency),
        in_flight: BTreeMap::new(),
        next_batch: 0,
        max_in_flight,
        catch_up: CatchUp::default(),
        report: IngestReport::default(),
        last_log: (Instant::now(), IngestReport::default()),
        last_recommit: Instant::now(),
        writer_result: None,
        stop_deadline: None,
    };
    let result = main
        .run(shutdown, ctl_rx, rec_rx, prep_tx, done_rx, writer, abort)
        .await;

    // Stop polling; librdkafka leaves the group when the last handle on the consumer drops (the
    // poll thread's), and its revoke callback finds the control channel closed and returns.
    stop.store(true, Ordering::SeqCst);
    let close_budget = main.remaining(Duration::from_secs(10));
    drop(main);
    drop(consumer);
    let _ = prepare.await;
    let joined = tokio::task::spawn_blocking(move || poll_thread.join());
    if tokio::time::timeout(close_budget, joined).await.is_err() {
        tracing::warn!("the Kafka consumer did not close in time; exiting anyway (uncommitted work is read again)");
    }
    if let Err(e) = dlq.flush(Duration::from_secs(5)) {
        tracing::warn!(error = %e, "dead-letter producer flush");
    }
    if let Some(joined) = &opts_joined {
        joined.store(false, Ordering::SeqCst);
    }
    let report = result?;
    tracing::info!(
        consumed = report.consumed,
        stored = report.stored,
        duplicate = report.duplicate,
        redelivered = report.redelivered,
        replay = report.replay,
        rejected = report.rejected,
        abandoned = report.abandoned,
        "ingest worker stopped"
    );
    Ok(report)
}

async fn ensure_dlq_topics(config: &Config) {
    let names: Vec<String> = {
        let mut v: Vec<String> = config
            .kafka
            .topics
            .iter()
            .map(|t| config.dlq_topic_for(t))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let topics: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    match tokio::time::timeout(
        Duration::from_secs(30),
        crate::kafka::ensure_topics(&config.kafka.brokers, &config.kafka.properties, &topics),
    )
    .await
    {
        Ok(Ok(())) => {}
        // Not fatal: the topic may exist already, be auto-created, or be created by an operator
        // later; until it exists, dead-letter publishes fail and are retried (nothing is dropped).
        Ok(Err(e)) => {
            tracing::warn!(error = %e, topics = ?names, "cannot create the dead-letter topic(s)")
        }
        Err(_) => tracing::warn!(topics = ?names, "timed out creating the dead-letter topic(s)"),
    }
}

/// Decodes and checks batches, in order, on the blocking pool.
async fn prepare_loop(
    mut rx: mpsc::Receiver<(u64, Batch<Record>)>,
    tx: mpsc::Sender<Prepared>,
    checker: Arc<Checker>,
) {
    while let Some((id, batch)) = rx.recv().await {
        let records = batch.records;
        let checker = checker.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let verdicts = check_all(&checker, &records);
            (records, verdicts)
        })
        .await;
        let (records, verdicts) = match checked {
            Ok(v) => v,
            // check_all catches panics per message; a JoinError here means the runtime is
            // shutting down, and the batch stays uncommitted.
            Err(e) => {
                tracing::error!(error = %e, "message check task failed");
                return;
            }
        };
        if tx
            .send(Prepared {
                id,
                records,
                verdicts,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One verdict per record. A panic in the checks (a decoder bug some input triggers) must not
/// take the worker down nor lose the message: the batch is re-checked message by message and a
/// message that panics on its own is rejected as `internal_error`.
fn check_all(checker: &Checker, records: &[Record]) -> Vec<Verdict> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let now = chrono::Utc::now();
    let run = |rs: &[Record]| -> Vec<Verdict> {
        let values: Vec<Bytes> = rs.iter().filter_map(|r| r.value.clone()).collect();
        let mut checked = checker.check(values, now).into_iter();
        rs.iter()
            .map(|r| match r.value {
                // A tombstone carries nothing to decode.
                None => Err(Rejection::new(
                    Reason::NullValue,
                    "Kafka message without a value (tombstone)",
                )),
                Some(_) => match checked.next() {
                    Some(Ok(env)) => Ok(env),
                    Some(Err(rej)) => Err(rej),
                    None => Err(Rejection::new(
                        Reason::InternalError,
                        "no verdict for this message",
                    )),
                },
            })
            .collect()
    };
    match catch_unwind(AssertUnwindSafe(|| run(records))) {
        Ok(v) => v,
        Err(_) => records
            .iter()
            .map(|r| match catch_unwind(AssertUnwindSafe(|| run(std::slice::from_ref(r)))) {
                Ok(mut v) => v.pop().unwrap_or_else(|| Err(Rejection::new(Reason::InternalError, "no verdict"))),
                Err(p) => {
                    let what = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(partition = %r.tp, offset = r.offset, panic = %what, "message check panicked; rejecting the message");
                    Err(Rejection::new(Reason::InternalError, format!("message check panicked: {what}")))
                }
            })
            .collect(),
    }
}

struct MainLoop<'a> {
    config: &'a Config,
    store: Store,
    opts: IngestOptions,
    consumer: Arc<IngestConsumer>,
    owned: Owned,
    committed: Arc<Mutex<HashMap<Partition, i64>>>,
    pause: Arc<PauseFlags>,
    /// One lane per batch the writer may have in PostgreSQL at once: batches of different lanes
    /// share no partition, so they can be written concurrently.
    batcher: LaneBatcher<Partition, Record>,
    /// Batches between hand-off and completion, with the partitions each holds.
    in_flight: BTreeMap<u64, HashSet<Partition>>,
    next_batch: u64,
    max_in_flight: usize,
    catch_up: CatchUp,
    report: IngestReport,
    last_log: (Instant, IngestReport),
    last_recommit: Instant,
    writer_result: Option<Result<(), WriteError>>,
    /// When stopping began plus `shutdown.timeout_ms`: everything after the loop fits in it.
    stop_deadline: Option<Instant>,
}

/// Why the main loop stops taking new messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Shutdown,
    CaughtUp,
}

impl MainLoop<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        shutdown: CancellationToken,
        mut ctl_rx: mpsc::UnboundedReceiver<Control>,
        mut rec_rx: mpsc::Receiver<Record>,
        prep_tx: mpsc::Sender<(u64, Batch<Record>)>,
        mut done_rx: mpsc::UnboundedReceiver<Completion>,
        mut writer: JoinHandle<Result<(), WriteError>>,
        abort: CancellationToken,
    ) -> anyhow::Result<IngestReport> {
        let mut stopping: Option<Stop> = None;
        let mut drain_deadline = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let log_every = Duration::from_secs(self.config.telemetry.log_interval_s.max(1));
        let shutdown_timeout = Duration::from_millis(self.config.shutdown.timeout_ms);
        let mut prep_tx = Some(prep_tx);
        let mut fatal: Option<anyhow::Error> = None;

        loop {
            let now = Instant::now();
            if let Some(deadline) = drain_deadline {
                if self.batcher.is_empty() && self.in_flight.is_empty() {
                    break;
                }
                if now >= deadline {
                    tracing::warn!(
                        in_flight = self.in_flight.len(),
                        held = self.batcher.held(),
                        "shutdown deadline reached with work unfinished; leaving it uncommitted (it is read again on restart)"
                    );
                    break;
                }
            }
            let can_hand_off = self.in_flight.len() < self.max_in_flight
                && !self.batcher.is_empty()
                && (self.batcher.is_due(now) || stopping.is_some());
            // Wake for a linger deadline still ahead. One already passed while the batch cannot be
            // handed off (`max_in_flight` reached) would fire at once, again and again: a busy
            // loop burning a core during every backlog; a completion wakes the loop instead.
            let linger = self
                .batcher
                .deadline()
                .filter(|d| !can_hand_off && *d > now);

            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if stopping.is_none() => {
                    tracing::info!("shutdown requested: no more fetching; finishing the batches in flight");
                    stopping = Some(Stop::Shutdown);
                    self.stop_deadline = Some(Instant::now() + shutdown_timeout);
                    self.pause.set(PauseFlags::STOPPING, true);
                    // Most of the budget for finishing work; the rest for the final commit and
                    // leaving the group.
                    drain_deadline = Some(Instant::now() + shutdown_timeout.mul_f64(0.7));
                }
                res = &mut writer, if self.writer_result.is_none() => {
                    let res = res.unwrap_or_else(|e| Err(WriteError::Fatal(format!("writer task failed: {e}"))));
                    match &res {
                        Ok(()) => {}
                        Err(WriteError::Aborted) => {}
                        Err(WriteError::Fatal(msg)) => fatal = Some(anyhow::anyhow!("{msg}")),
                    }
                    self.writer_result = Some(res);
                    break;
                }
                Some(ctl) = ctl_rx.recv() => {
                    if let Err(e) = self.on_control(ctl, &mut done_rx).await {
                        fatal = Some(e);
                        break;
                    }
                }
                Some(c) = done_rx.recv() => self.on_completion(c),
                permit = async {
                    match &prep_tx {
                        Some(tx) => tx.reserve().await.ok(),
                        None => None,
                    }
                }, if can_hand_off => {
                    if let Some(permit) = permit {
                        self.hand_off(permit, stopping.is_some());
                    }
                }
                record = rec_rx.recv(), if stopping.is_none() && !self.batcher.is_full() => match record {
                    Some(record) => self.on_record(record),
                    None => {
                        // The poll thread only exits on `stop`: anything else ends consumption,
                        // and a worker that silently consumes nothing is worse than one that exits.
                        fatal = Some(anyhow::anyhow!("the Kafka poll thread stopped unexpectedly"));
                        break;
                    }
                },
                _ = sleep_until_opt(linger), if linger.is_some() => {}
                _ = tick.tick() => {
                    if self.last_log.0.elapsed() >= log_every {
                        self.log_progress();
                    }
                    // Kafka's committed offsets must reach our positions even when a commit failed
                    // (they do during a rebalance) and no new batch follows: re-commit them after
                    // a reported failure and, as a backstop, every few seconds.
                    let failed = self.consumer.context().commit_failed.swap(false, Ordering::SeqCst);
                    if failed || self.last_recommit.elapsed() >= RECOMMIT_EVERY {
                        self.last_recommit = Instant::now();
                        self.recommit();
                    }
                    if self.opts.until_caught_up && stopping.is_none() && self.check_caught_up().await {
                        tracing::info!("caught up with the high watermarks measured at assignment; stopping");
                        stopping = Some(Stop::CaughtUp);
                        self.stop_deadline = Some(Instant::now() + shutdown_timeout);
                        self.pause.set(PauseFlags::STOPPING, true);
                        drain_deadline = Some(Instant::now() + shutdown_timeout.mul_f64(0.7));
                    }
                }
            }
        }

        // Work still in flight past the deadline (or after a fatal error) is abandoned: stop the
        // writer's retries, commit nothing more for it.
        abort.cancel();
        drop(prep_tx.take());
        if self.writer_result.is_none() {
            match tokio::time::timeout(self.remaining(Duration::from_secs(5)), &mut writer).await {
                Ok(Ok(Err(WriteError::Fatal(msg)))) if fatal.is_none() => {
                    fatal = Some(anyhow::anyhow!("{msg}"))
                }
                Ok(_) => {}
                Err(_) => {
                    writer.abort();
                    tracing::warn!("the writer did not stop in time");
                }
            }
        }
        while let Ok(c) = done_rx.try_recv() {
            self.on_completion(c);
        }
        self.report.abandoned += self.batcher.held() as u64;
        metrics::counter!(names::ABANDONED).increment(self.batcher.held() as u64);
        self.final_commit().await;
        self.log_progress();
        match fatal {
            Some(e) => Err(e),
            None => Ok(self.report.clone()),
        }
    }

    /// Time left for a shutdown step: at most `cap`, at most what remains of the shutdown budget
    /// (but never less than a moment, so the step is at least attempted).
    fn remaining(&self, cap: Duration) -> Duration {
        match self.stop_deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(200), cap),
            None => cap,
        }
    }

    fn on_record(&mut self, record: Record) {
        self.report.consumed += 1;
        metrics::counter!(names::MESSAGES_CONSUMED, "topic" => record.tp.topic.to_string())
            .increment(1);
        if lock(&self.owned).get(&record.tp) != Some(&record.epoch) {
            // Polled under an earlier assignment of a partition revoked since: its next owner
            // (or our own new assignment, which resumed from the stores) reads it again.
            self.report.abandoned += 1;
            metrics::counter!(names::ABANDONED).increment(1);
            return;
        }
        let size = record.size();
        let tp = record.tp.clone();
        if let Push::Full(reason) = self.batcher.push(&tp, record, size, Instant::now()) {
            tracing::trace!(reason = reason.as_str(), "batch full");
        }
    }

    /// Hands the next due batch to `prepare`; `force` (stopping) takes one even before its linger.
    fn hand_off(&mut self, permit: mpsc::Permit<'_, (u64, Batch<Record>)>, force: bool) {
        let Some(batch) = self.batcher.take(Instant::now(), force) else {
            return;
        };
        let id = self.next_batch;
        self.next_batch += 1;
        metrics::histogram!(names::BATCH_RECORDS).record(batch.records.len() as f64);
        metrics::histogram!(names::BATCH_BYTES).record(batch.bytes as f64);
        let tps: HashSet<Partition> = batch.records.iter().map(|r| r.tp.clone()).collect();
        self.in_flight.insert(id, tps);
        metrics::gauge!(names::IN_FLIGHT_BATCHES).set(self.in_flight.len() as f64);
        permit.send((id, batch));
    }

    fn on_completion(&mut self, c: Completion) {
        self.in_flight.remove(&c.id);
        metrics::gauge!(names::IN_FLIGHT_BATCHES).set(self.in_flight.len() as f64);
        for (tp, next) in &c.committed {
            self.catch_up.on_commit(tp, *next);
        }
        self.report.merge(&c.report);
    }

    async fn on_control(
        &mut self,
        ctl: Control,
        done_rx: &mut mpsc::UnboundedReceiver<Completion>,
    ) -> anyhow::Result<()> {
        match ctl {
            Control::Assign { partitions, reply } => {
                let offsets = self.on_assign(&partitions).await;
                let _ = reply.send(offsets);
            }
            Control::Revoke {
                partitions,
                lost,
                ack,
            } => {
                self.on_revoke(&partitions, lost, done_rx).await;
                let _ = ack.send(());
            }
            Control::Fatal(msg) => anyhow::bail!("Kafka: {msg}"),
        }
        Ok(())
    }

    async fn on_assign(&mut self, partitions: &[Assigned]) -> HashMap<Partition, Option<i64>> {
        let keys: Vec<Partition> = partitions.iter().map(|a| a.tp.clone()).collect();
        let applied = match tokio::time::timeout(
            ASSIGN_STORE_TIMEOUT,
            self.store.applied_offsets(&keys),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the stores' applied offsets; resuming from Kafka's committed offsets");
                HashMap::new()
            }
            Err(_) => {
                tracing::warn!("timed out reading the stores' applied offsets; resuming from Kafka's committed offsets");
                HashMap::new()
            }
        };
        let mut out = HashMap::with_capacity(partitions.len());
        {
            let mut owned = lock(&self.owned);
            // A position remembered from an earlier ownership of a partition is stale: another
            // worker may have moved it on since. Committed again (re-commit, final commit) before our
            // first batch of the new assignment, it would move the group's offset back.
            let mut committed = lock(&self.committed);
            for a in partitions {
                committed.remove(&a.tp);
                let stored = applied.get(&a.tp).copied();
                let start = progress::resume_offset(stored, a.kafka_committed);
                tracing::info!(partition = %a.tp, store_applied = ?stored, kafka_committed = ?a.kafka_committed, start = ?start, "partition assigned");
                // The stores may be ahead of Kafka's committed offset (a worker killed between
                // the store and Kafka commits): remember the resume point as our position, so the
                // re-commit brings the group's offset (and lag) up to it even if no new message
                // arrives on this partition.
                if let Some(s) = start {
                    if a.kafka_committed.is_none_or(|k| k < s) {
                        committed.insert(a.tp.clone(), s);
                    }
                }
                owned.insert(a.tp.clone(), a.epoch);
                self.catch_up.on_assign(&a.tp, start);
                out.insert(a.tp.clone(), start);
            }
            drop(committed);
            metrics::gauge!(names::ASSIGNED_PARTITIONS).set(owned.len() as f64);
        }
        if let Some(joined) = &self.opts.group_joined {
            joined.store(true, Ordering::SeqCst);
        }
        if self.opts.until_caught_up {
            let tps: Vec<Partition> = partitions.iter().map(|a| a.tp.clone()).collect();
            self.fetch_targets(tps).await;
        }
        out
    }

    /// Measures high watermarks for partitions that have no catch-up target yet.
    async fn fetch_targets(&mut self, tps: Vec<Partition>) {
        let consumer = self.consumer.clone();
        let measured = tokio::task::spawn_blocking(move || {
            tps.into_iter()
                .filter_map(|tp| match consumer.fetch_watermarks(&tp.topic, tp.number, WATERMARK_TIMEOUT) {
                    Ok((low, high)) => Some((tp, low, high)),
                    Err(e) => {
                        tracing::warn!(partition = %tp, error = %e, "cannot read the watermarks (retrying)");
                        None
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (tp, low, high) in measured {
            self.catch_up.set_watermarks(&tp, low, high);
        }
    }

    async fn check_caught_up(&mut self) -> bool {
        let assigned: Vec<Partition> = lock(&self.owned).keys().cloned().collect();
        let missing: Vec<Partition> = assigned
            .iter()
            .filter(|tp| !self.catch_up.has_target(tp))
            .cloned()
            .collect();
        if !missing.is_empty() {
            self.fetch_targets(missing).await;
        }
        self.catch_up.caught_up(assigned.iter())
    }

    async fn on_revoke(
        &mut self,
        partitions: &[Partition],
        lost: bool,
        done_rx: &mut mpsc::UnboundedReceiver<Completion>,
    ) {
        let revoked: HashSet<&Partition> = partitions.iter().collect();
        let before = self.batcher.held();
        self.batcher.retain(|r| !revoked.contains(&r.tp));
        self.report.abandoned += (before - self.batcher.held()) as u64;
        metrics::counter!(names::ABANDONED).increment((before - self.batcher.held()) as u64);

        if !lost {
            // Let the batches holding these partitions finish and commit, within the drain budget
            // (validated shorter than the session timeout at start-up).
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis(self.config.kafka.drain_timeout_ms);
            while self
                .in_flight
                .values()
                .any(|tps| tps.iter().any(|tp| revoked.contains(tp)))
            {
                tokio::select! {
                    c = done_rx.recv() => match c {
                        Some(c) => self.on_completion(c),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!(partitions = ?partitions.iter().map(|t| t.to_string()).collect::<Vec<_>>(), "revocation drain deadline reached; abandoning the unfinished batches of these partitions (uncommitted)");
                        break;
                    }
                }
            }
        }
        {
            // From here on the writer neither writes nor commits for these partitions.
            let mut owned = lock(&self.owned);
            for tp in partitions {
                owned.remove(tp);
            }
            metrics::gauge!(names::ASSIGNED_PARTITIONS).set(owned.len() as f64);
        }
        for tp in partitions {
            metrics::gauge!(names::CONSUMER_LAG, "topic" => tp.topic.to_string(), "partition" => tp.number.to_string()).set(0.0);
        }
        if !lost {
            // Async commits may still be on their way: make the last ones durable before the next
            // owner reads the group's offsets.
            let offsets: Vec<(Partition, i64)> = {
                let c = lock(&self.committed);
                partitions
                    .iter()
                    .filter_map(|tp| c.get(tp).map(|o| (tp.clone(), *o)))
                    .collect()
            };
            self.commit_sync(offsets).await;
        }
        tracing::info!(partitions = ?partitions.iter().map(|t| t.to_string()).collect::<Vec<_>>(), lost, "partitions revoked");
    }

    /// The last committed position of every partition this worker owns.
    fn owned_positions(&self) -> Vec<(Partition, i64)> {
        let owned = lock(&self.owned);
        let c = lock(&self.committed);
        c.iter()
            .filter(|(tp, _)| owned.contains_key(*tp))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect()
    }

    /// Commits the positions of the owned partitions again (asynchronously) after a failed commit.
    fn recommit(&self) {
        let offsets = self.owned_positions();
        if offsets.is_empty() {
            return;
        }
        tracing::debug!(
            partitions = offsets.len(),
            "committing the current positions again"
        );
        if let Err(e) = self
            .consumer
            .commit(&offset_list(&offsets), CommitMode::Async)
        {
            self.consumer
                .context()
                .commit_failed
                .store(true, Ordering::SeqCst);
            tracing::warn!(error = %e, "offset re-commit failed; trying again shortly");
        }
    }

    async fn final_commit(&mut self) {
        let offsets = self.owned_positions();
        self.commit_sync(offsets).await;
    }

    async fn commit_sync(&self, offsets: Vec<(Partition, i64)>) {
        if offsets.is_empty() {
            return;
        }
        let tpl = offset_list(&offsets);
        let consumer = self.consumer.clone();
        let started = Instant::now();
        let res = tokio::time::timeout(
            self.remaining(Duration::from_secs(10)),
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)),
        )
        .await;
        match res {
            Ok(Ok(Ok(()))) => {
                metrics::histogram!(names::STAGE_SECONDS, "stage" => "commit")
                    .record(started.elapsed().as_secs_f64());
            }
            // The stores hold the applied offsets: nothing is lost, a restart resumes from them.
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "synchronous offset commit failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "synchronous offset commit task failed"),
            Err(_) => tracing::warn!("synchronous offset commit timed out"),
        }
    }

    fn log_progress(&mut self) {
        let (since, ref prev) = self.last_log;
        let secs = since.elapsed().as_secs_f64().max(1e-3);
        let r = &self.report;
        let rate = (r.consumed - prev.consumed) as f64 / secs;
        let assigned = lock(&self.owned).len();
        tracing::info!(
            rate_per_s = format!("{rate:.0}"),
            consumed = r.consumed,
            stored = r.stored,
            duplicate = r.duplicate,
            redelivered = r.redelivered,
            replay = r.replay,
            rejected = r.rejected,
            in_flight = self.in_flight.len(),
            assigned,
            retries = r.retries,
            "ingest progress"
        );
        self.last_log = (Instant::now(), self.report.clone());
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `nekhebet-store ingest` arguments (the CLI adds this as a subcommand).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct IngestArgs {
    /// Exit once every assigned partition is committed up to the high watermark it had when it was
    /// assigned (back-fills, the demo, benchmarks), instead of running until SIGINT/SIGTERM.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Print the final report as one JSON object instead of the table (benchmarks).
    #[arg(long)]
    pub report_json: bool,
}

/// The `ingest` command: opens the store, serves /metrics, /healthz and /readyz on
/// `telemetry.listen`, runs the worker until SIGINT/SIGTERM (or until caught up), prints the
/// outcome table. Exit code 0 after a graceful stop; an error (non-zero) when the worker had to
/// stop on a failure it cannot retry.
pub async fn command(args: IngestArgs, config: &Config) -> anyhow::Result<std::process::ExitCode> {
    let store = Store::open(config).await.context("opening the store")?;
    let shutdown = shutdown_on_signals();
    let health = crate::telemetry::Health::new(store.clone());
    if !config.telemetry.listen.is_empty() {
        let handle = crate::telemetry::install_metrics()?;
        let addr = crate::telemetry::serve(
            &config.telemetry.listen,
            handle,
            health.clone(),
            shutdown.child_token(),
        )
        .await?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics, health on /healthz and /readyz");
    }
    let report = run(
        config,
        store,
        IngestOptions {
            until_caught_up: args.until_caught_up,
            group_joined: Some(health.consumer_joined.clone()),
        },
        shutdown,
    )
    .await?;
    if args.report_json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Used by the `ingest` command: a shutdown token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        t.cancel();
    });
    token
}

/// The offsets to commit as librdkafka's list (a partition it cannot take is logged and skipped).
fn offset_list(offsets: &[(Partition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (tp, o) in offsets {
        if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.number, Offset::Offset(*o)) {
            tracing::warn!(partition = %tp, error = %e, "cannot build the offset commit");
        }
    }
    tpl
}
