//! The main loop of [`super::run`]: it batches records, hands batches on while fewer than
//! `batch.max_in_flight` are between hand-off and completion, handles rebalances and shutdown, and
//! owns the [`Ledger`] — the one place that knows which partitions are owned under which
//! assignment, where each resumes and what may be committed — and the [`Committer`], the only
//! code that commits offsets.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, LaneBatcher, Push};
use crate::config::Config;
use crate::partition::Partition;
use crate::store::Store;
use crate::telemetry::names;

use super::committer::Committer;
use super::consumer::{Control, IngestConsumer, PauseFlags, Record};
use super::ledger::{Assigned, Ledger};
use super::report::IngestReport;
use super::writer::{Completion, WriteError};
use super::{ledger, IngestOptions};

/// How long an assignment waits for the stores' applied offsets before falling back to Kafka's
/// committed offsets (both are safe; the stores' avoid redelivery).
const ASSIGN_STORE_TIMEOUT: Duration = Duration::from_secs(20);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the owned positions are committed again (see the tick in the main loop).
const RECOMMIT_EVERY: Duration = Duration::from_secs(5);

pub(super) struct MainLoop<'a> {
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

impl<'a> MainLoop<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        config: &'a Config,
        store: Store,
        opts: IngestOptions,
        consumer: Arc<IngestConsumer>,
        ownership: watch::Sender<Arc<HashMap<Partition, u64>>>,
        pause: Arc<PauseFlags>,
        batcher: LaneBatcher<Partition, Record>,
        max_in_flight: usize,
    ) -> MainLoop<'a> {
        MainLoop {
            config,
            store,
            opts,
            committer: Committer::new(consumer.clone()),
            consumer,
            ledger: Ledger::default(),
            ownership,
            pause,
            batcher,
            next_batch: 0,
            max_in_flight,
            report: IngestReport::default(),
            last_log: (Instant::now(), IngestReport::default()),
            last_recommit: Instant::now(),
            writer_result: None,
            stop_deadline: None,
        }
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run(
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
    pub(super) fn remaining(&self, cap: Duration) -> Duration {
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
