//! The ingestion worker: Kafka → batch → decode/validate/verify → dead-letter the rejects → ONE
//! PostgreSQL + ONE LMDB transaction → commit offsets.
//!
//! Stages and the bounded queues between them:
//!
//! ```text
//! poll thread ──records──▶ main loop (batcher) ──batches──▶ prepare ──checked──▶ writer ──┐
//!      ▲  rebalance callbacks ──control──▶ main loop ◀────────── completions ─────────────┘
//!                                            │ ledger (what may be committed) → committer
//! ```
//!
//! - The poll thread owns librdkafka polling ([`consumer`]); when the record queue stays full, or
//!   the writer is backing off, it pauses the assignment and keeps polling only to serve
//!   rebalance callbacks.
//! - The main loop batches, hands batches on while fewer than `batch.max_in_flight` are between
//!   hand-off and completion, handles rebalances and shutdown, and owns the [`ledger`]: the one
//!   place that knows which partitions are owned under which assignment, where each resumes and
//!   what may be committed. Its [`committer`] is the only code that commits offsets.
//! - `prepare` decodes and checks a batch (off the runtime) while the writer writes earlier ones.
//! - The [`writer`] finishes batches in order; it runs up to `postgres.concurrent_batches` (2)
//!   partition-disjoint PostgreSQL phases at once ([`apply`], shared with `import`), overlapped
//!   with the previous batch's LMDB transaction. So it holds up to three batches, and keeping
//!   `prepare` busy as well takes `batch.max_in_flight` = 4 (the default).

pub mod apply;
pub mod backoff;
pub mod committer;
pub mod consumer;
pub mod ledger;
pub mod report;
pub mod writer;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, BatchLimits, LaneBatcher, Push};
use crate::config::{Config, StoreMode};
use crate::dlq::DlqSink;
use crate::partition::Partition;
use crate::pipeline::Checker;
use crate::store::Store;
use crate::telemetry::names;

use apply::{Applier, RetryPolicy};
use committer::Committer;
use consumer::{Control, IngestConsumer, IngestContext, PauseFlags, Record};
use ledger::{Assigned, Ledger};
pub use report::IngestReport;
use writer::{Completion, Prepared, WriteError, Writer};

/// How `run` behaves.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Return once every assigned partition's committed offset reached the high watermark it had
    /// when it was first assigned (demo, benchmarks, back-fills). Otherwise run until shutdown.
    pub until_caught_up: bool,
    /// Set once the consumer received its first assignment from the group (even an empty one) and
    /// cleared when the worker stops: the readiness endpoint's "joined the group".
    pub group_joined: Option<Arc<AtomicBool>>,
    /// Where the consumer says why Kafka refuses it (credentials, ACLs, certificates), for the
    /// readiness endpoint.
    pub kafka_problem: Option<crate::kafka::KafkaProblem>,
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
    // Every Kafka client of the run says here why Kafka refuses it, if it does (`/readyz`).
    let problem = opts.kafka_problem.clone().unwrap_or_default();
    let dlq = DlqSink::new(config, crate::kafka::Watch::new(problem.clone()))
        .context("creating the dead-letter producer")?;
    // Up to 30 s when the brokers cannot be reached (down, wrong CA, wrong credentials): a
    // shutdown meanwhile must not wait for it (nothing has been consumed yet).
    tokio::select! {
        _ = ensure_dlq_topics(config, crate::kafka::Watch::new(problem.clone())) => {}
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown requested before consuming anything; stopping");
            return Ok(IngestReport::default());
        }
    }

    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let ctx = IngestContext::new(
        ctl_tx,
        Duration::from_millis(config.kafka.session_timeout_ms.min(10_000)),
        crate::kafka::Watch::new(problem.clone()),
    );
    let consumer: IngestConsumer = crate::kafka::consumer_config(&config.kafka)
        .create_with_context(ctx)
        .map_err(crate::kafka::redact_error)
        .context("creating the Kafka consumer")?;
    let consumer = Arc::new(consumer);
    let topics: Vec<&str> = config.kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing")?;
    tracing::info!(topics = ?config.kafka.topics, group = %config.kafka.group_id, store = %config.store.mode, verify = config.verify.enabled, key_binding = config.key_binding(), "ingest worker starting");
    if !config.verify.enabled {
        tracing::warn!("verification is disabled: signatures are not checked and key_ids are not bound to keys, so anyone who can publish can impersonate a producer and burn its nonces");
    }

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
    let (ownership_tx, ownership_rx) = watch::channel(Arc::new(HashMap::new()));
    let abort = CancellationToken::new();

    let prepare = tokio::spawn(prepare_loop(prep_rx, write_tx, checker));
    let applier = Applier::new(
        store.clone(),
        RetryPolicy::default(),
        abort.clone(),
        Some(pause.clone()),
    );
    let writer = tokio::spawn(
        Writer::new(applier, dlq.clone(), ownership_rx, concurrency).run(write_rx, done_tx),
    );

    let opts_joined = opts.group_joined.clone();
    let mut main = MainLoop {
        config,
        store,
        opts,
        consumer: consumer.clone(),
        committer: Committer::new(consumer.clone()),
        ledger: Ledger::default(),
        ownership: ownership_tx,
        pause,
        batcher: LaneBatcher::new(BatchLimits::from_config(&config.batch), concurrency),
        next_batch: 0,
        max_in_flight,
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

async fn ensure_dlq_topics(config: &Config, watch: crate::kafka::Watch) {
    let names = crate::dlq::dlq_topics(config);
    let topics: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    match tokio::time::timeout(
        Duration::from_secs(30),
        crate::kafka::ensure_topics_watched(
            &config.kafka.brokers,
            &config.kafka.properties,
            &topics,
            watch,
        ),
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
            let values: Vec<_> = records.iter().map(|r| r.value.clone()).collect();
            let verdicts = checker.check_each(&values, chrono::Utc::now());
            (records, verdicts)
        })
        .await;
        let (records, verdicts) = match checked {
            Ok(v) => v,
            // check_each catches panics per message; a JoinError here means the runtime is
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

struct MainLoop<'a> {
    config: &'a Config,
    store: Store,
    opts: IngestOptions,
    consumer: Arc<IngestConsumer>,
    committer: Committer,
    ledger: Ledger,
    /// Publishes the ledger's ownership to the writer after every change.
    ownership: watch::Sender<Arc<HashMap<Partition, u64>>>,
    pause: Arc<PauseFlags>,
    /// One lane per batch the writer may have in PostgreSQL at once: batches of different lanes
    /// share no partition, so they can be written concurrently.
    batcher: LaneBatcher<Partition, Record>,
    next_batch: u64,
    max_in_flight: usize,
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
                if self.batcher.is_empty() && self.ledger.in_flight() == 0 {
                    break;
                }
                if now >= deadline {
                    tracing::warn!(
                        in_flight = self.ledger.in_flight(),
                        held = self.batcher.held(),
                        "shutdown deadline reached with work unfinished; leaving it uncommitted (it is read again on restart)"
                    );
                    break;
                }
            }
            let can_hand_off = self.ledger.in_flight() < self.max_in_flight
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
                        Ok(()) | Err(WriteError::Aborted) => {}
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
                    // (they do during a rebalance) and no new batch follows: commit them again after
                    // a reported failure and, as a backstop, every few seconds.
                    if self.committer.take_failure() || self.last_recommit.elapsed() >= RECOMMIT_EVERY {
                        self.last_recommit = Instant::now();
                        self.committer.commit_async(&self.ledger.positions());
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
        let positions = self.ledger.positions();
        self.committer
            .commit_sync(positions, self.remaining(Duration::from_secs(10)))
            .await;
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

    fn publish_ownership(&self) {
        self.ownership
            .send_replace(Arc::new(self.ledger.ownership()));
        metrics::gauge!(names::ASSIGNED_PARTITIONS).set(self.ledger.assigned_count() as f64);
    }

    fn on_record(&mut self, record: Record) {
        self.report.consumed += 1;
        metrics::counter!(names::MESSAGES_CONSUMED, "topic" => record.tp.topic.to_string())
            .increment(1);
        if !self.ledger.owns(&record.tp, record.epoch) {
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
        let partitions: BTreeSet<Partition> = batch.records.iter().map(|r| r.tp.clone()).collect();
        self.ledger.start(id, partitions);
        metrics::gauge!(names::IN_FLIGHT_BATCHES).set(self.ledger.in_flight() as f64);
        permit.send((id, batch));
    }

    /// A batch is in both stores: commit what the ledger allows, count it.
    fn on_completion(&mut self, c: Completion) {
        let offsets = self.ledger.complete(c.id, &c.decided);
        metrics::gauge!(names::IN_FLIGHT_BATCHES).set(self.ledger.in_flight() as f64);
        self.report.merge(&c.report);
        if offsets.is_empty() {
            return;
        }
        self.committer.commit_async(&offsets);
        metrics::counter!(names::BATCHES_COMMITTED).increment(1);
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(names::LAST_COMMIT).set(now_s);
        let e2e = metrics::histogram!(names::END_TO_END_SECONDS);
        for ts in &c.timestamps_ms {
            e2e.record((now_s - *ts as f64 / 1000.0).max(0.0));
        }
        self.report.batches_committed += 1;
        let now_us = (now_s * 1e6) as u64;
        if self.report.first_commit_us == 0 {
            self.report.first_commit_us = now_us;
            self.report.first_batch_messages = c.messages;
        }
        self.report.last_commit_us = now_us;
    }

    async fn on_control(
        &mut self,
        ctl: Control,
        done_rx: &mut mpsc::UnboundedReceiver<Completion>,
    ) -> anyhow::Result<()> {
        match ctl {
            Control::Assign { partitions, reply } => {
                // On an error the reply is dropped: the callback returns, and the worker stops.
                let offsets = self.on_assign(&partitions).await?;
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

    async fn on_assign(
        &mut self,
        partitions: &[Assigned],
    ) -> anyhow::Result<HashMap<Partition, Option<i64>>> {
        let keys: Vec<Partition> = partitions.iter().map(|a| a.partition.clone()).collect();
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
        // Stored offsets are keyed by topic name: a re-created topic (or another cluster) would
        // make every new message at or below them look applied. Stop instead, before consuming.
        let watermarks = self.fetch_watermarks(keys.clone()).await;
        let beyond = ledger::beyond_end(&applied, &watermarks);
        if !beyond.is_empty() {
            let lines: Vec<String> = beyond.iter().map(ToString::to_string).collect();
            anyhow::bail!("{}", lines.join("\n"));
        }
        if self.opts.until_caught_up {
            for (p, low, high) in &watermarks {
                self.ledger.set_watermarks(p, *low, *high);
            }
        }
        let starts = self.ledger.assign(partitions, &applied);
        for (a, (_, start)) in partitions.iter().zip(&starts) {
            tracing::info!(partition = %a.partition, store_applied = ?applied.get(&a.partition), kafka_committed = ?a.kafka_committed, start = ?start, "partition assigned");
        }
        set_lag_at_assignment(&starts, &watermarks);
        self.publish_ownership();
        if let Some(joined) = &self.opts.group_joined {
            joined.store(true, Ordering::SeqCst);
        }
        Ok(starts.into_iter().collect())
    }

    /// Each partition's (low, high) watermarks; a partition the broker does not answer for is
    /// left out (and measured again later where the catch-up needs it).
    async fn fetch_watermarks(&self, partitions: Vec<Partition>) -> Vec<(Partition, i64, i64)> {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || {
            partitions
                .into_iter()
                .filter_map(|p| match consumer.fetch_watermarks(&p.topic, p.number, WATERMARK_TIMEOUT) {
                    Ok((low, high)) => Some((p, low, high)),
                    Err(e) => {
                        tracing::warn!(partition = %p, error = %e, "cannot read the watermarks");
                        None
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default()
    }

    /// Measures high watermarks for partitions that have no catch-up target yet.
    async fn fetch_targets(&mut self, partitions: Vec<Partition>) {
        for (p, low, high) in self.fetch_watermarks(partitions).await {
            self.ledger.set_watermarks(&p, low, high);
        }
    }

    async fn check_caught_up(&mut self) -> bool {
        let missing = self.ledger.without_target();
        if !missing.is_empty() {
            self.fetch_targets(missing).await;
        }
        self.ledger.caught_up()
    }

    async fn on_revoke(
        &mut self,
        partitions: &[Partition],
        lost: bool,
        done_rx: &mut mpsc::UnboundedReceiver<Completion>,
    ) {
        let before = self.batcher.held();
        self.batcher.retain(|r| !partitions.contains(&r.tp));
        self.report.abandoned += (before - self.batcher.held()) as u64;
        metrics::counter!(names::ABANDONED).increment((before - self.batcher.held()) as u64);

        if !lost {
            // Let the batches holding these partitions finish and commit, within the drain budget
            // (validated shorter than the session timeout at start-up).
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis(self.config.kafka.drain_timeout_ms);
            while self.ledger.holds_any(partitions) {
                tokio::select! {
                    c = done_rx.recv() => match c {
                        Some(c) => self.on_completion(c),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!(partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(), "revocation drain deadline reached; abandoning the unfinished batches of these partitions (uncommitted)");
                        break;
                    }
                }
            }
        }
        // From here on nothing is committed for these partitions, and the writer leaves their
        // messages alone.
        let positions = self.ledger.revoke(partitions);
        self.publish_ownership();
        for p in partitions {
            metrics::gauge!(names::CONSUMER_LAG, "topic" => p.topic.to_string(), "partition" => p.number.to_string()).set(0.0);
        }
        if !lost {
            // Async commits may still be on their way: make the last ones durable before the next
            // owner reads the group's offsets.
            self.committer
                .commit_sync(positions, self.remaining(Duration::from_secs(10)))
                .await;
        }
        tracing::info!(partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(), lost, "partitions revoked");
    }

    fn log_progress(&mut self) {
        let (since, ref prev) = self.last_log;
        let secs = since.elapsed().as_secs_f64().max(1e-3);
        let r = &self.report;
        let rate = (r.consumed - prev.consumed) as f64 / secs;
        tracing::info!(
            rate_per_s = format!("{rate:.0}"),
            consumed = r.consumed,
            stored = r.stored,
            duplicate = r.duplicate,
            redelivered = r.redelivered,
            replay = r.replay,
            rejected = r.rejected,
            in_flight = self.ledger.in_flight(),
            assigned = self.ledger.assigned_count(),
            retries = r.retries,
            "ingest progress"
        );
        self.last_log = (Instant::now(), self.report.clone());
    }
}

/// The lag gauge of newly assigned partitions, from the watermarks just fetched: the statistics
/// that keep it current arrive only every `statistics.interval.ms` (5 s), and a dashboard or a
/// short run should see the backlog from the first second. A partition without a resume point
/// starts at its low watermark (`auto.offset.reset = earliest`).
fn set_lag_at_assignment(
    starts: &[(Partition, Option<i64>)],
    watermarks: &[(Partition, i64, i64)],
) {
    for (p, start) in starts {
        if let Some((_, low, high)) = watermarks.iter().find(|(w, _, _)| w == p) {
            let lag = (high - start.unwrap_or(*low)).max(0);
            metrics::gauge!(names::CONSUMER_LAG, "topic" => p.topic.to_string(), "partition" => p.number.to_string())
                .set(lag as f64);
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
