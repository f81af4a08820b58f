//! The Kafka side of the worker: a `BaseConsumer` polled on a dedicated OS thread, and the
//! consumer context whose rebalance callbacks hand assignments and revocations to the async main
//! loop and wait for its answer.
//!
//! Why a dedicated thread rather than `StreamConsumer` on the runtime: librdkafka runs the
//! rebalance callback on the thread that polls, and our callback must wait for async work (a store
//! query on assignment, draining in-flight batches on revocation). On a runtime worker that wait
//! needs `block_in_place`, which panics on a current-thread runtime and stalls a worker either way;
//! on our own thread it is a plain blocking wait (quickwit's Kafka source does the same).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::kafka::Watch;
use crate::telemetry::names;

pub use super::ledger::Assigned;
pub use crate::partition::Partition;

/// One consumed message, detached from librdkafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub tp: Partition,
    pub offset: i64,
    /// The assignment generation of `tp` when this record was polled: a record from an earlier
    /// assignment of a partition that was revoked meanwhile is stale and never committed.
    pub epoch: u64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Kafka message timestamp (create or log-append time), milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// Bytes the record counts for in batch bounds.
    pub fn size(&self) -> usize {
        self.value.as_ref().map_or(0, |v| v.len()) + self.key.as_ref().map_or(0, |k| k.len())
    }
}

/// Rebalance events for the main loop. The callback blocks until the reply/ack is sent (or the
/// main loop is gone, which drops the sender and releases it).
#[derive(Debug)]
pub enum Control {
    /// Reply with the offset to start each partition from (`None`: let Kafka decide).
    Assign {
        partitions: Vec<Assigned>,
        reply: oneshot::Sender<HashMap<Partition, Option<i64>>>,
    },
    /// Finish (or abandon) in-flight work of these partitions, then ack. `lost`: the group already
    /// gave them away (session expired); committing is pointless.
    Revoke {
        partitions: Vec<Partition>,
        lost: bool,
        ack: oneshot::Sender<()>,
    },
    /// librdkafka reported a fatal error: the consumer is unusable.
    Fatal(String),
}

/// Reasons to pause consumption, as bits: consumption is paused while any is set.
#[derive(Debug, Default)]
pub struct PauseFlags(AtomicU32);

impl PauseFlags {
    /// The writer is backing off after a transient failure.
    pub const RETRYING: u32 = 1;
    /// Shutting down: stop fetching, finish what is in flight.
    pub const STOPPING: u32 = 2;

    pub fn set(&self, bit: u32, on: bool) {
        if on {
            self.0.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.0.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    pub fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) != 0
    }
}

/// The consumer context: rebalance callbacks, lag statistics.
pub struct IngestContext {
    ctl: mpsc::UnboundedSender<Control>,
    /// Current assignment as the poll thread sees it: partition → epoch.
    epochs: Mutex<HashMap<Partition, u64>>,
    next_epoch: AtomicU64,
    /// Bumped after every assignment change, so the poll loop re-applies a pause to new partitions.
    generation: AtomicU64,
    topics: Mutex<HashMap<String, Arc<str>>>,
    committed_fetch_timeout: Duration,
    /// Set when an offset commit failed (e.g. during a rebalance): the main loop commits the
    /// current positions again, or Kafka's committed offsets (and lag) would stay behind when no
    /// new batch follows.
    pub commit_failed: AtomicBool,
    /// Logs, and why Kafka refuses the consumer (for `/readyz`); cleared once it gets an
    /// assignment.
    pub watch: Watch,
}

pub type IngestConsumer = BaseConsumer<IngestContext>;

impl IngestContext {
    pub fn new(
        ctl: mpsc::UnboundedSender<Control>,
        committed_fetch_timeout: Duration,
        watch: Watch,
    ) -> IngestContext {
        IngestContext {
            ctl,
            epochs: Mutex::new(HashMap::new()),
            next_epoch: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            topics: Mutex::new(HashMap::new()),
            committed_fetch_timeout,
            commit_failed: AtomicBool::new(false),
            watch,
        }
    }

    fn intern(&self, topic: &str) -> Arc<str> {
        let mut topics = lock(&self.topics);
        if let Some(t) = topics.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        topics.insert(topic.to_string(), t.clone());
        t
    }

    fn tps(&self, tpl: &TopicPartitionList) -> Vec<(Partition, Offset)> {
        tpl.elements()
            .iter()
            .map(|e| {
                (
                    Partition {
                        topic: self.intern(e.topic()),
                        number: e.partition(),
                    },
                    e.offset(),
                )
            })
            .collect()
    }

    fn epoch_of(&self, tp: &Partition) -> Option<u64> {
        lock(&self.epochs).get(tp).copied()
    }

    fn on_assign(&self, consumer: &IngestConsumer, tpl: &TopicPartitionList) {
        let tps = self.tps(tpl);
        // The group's committed offsets: the main loop resumes from the later of these and the
        // stores' applied offsets (both mark points below which everything is done).
        let committed: HashMap<Partition, i64> = match consumer
            .committed_offsets(tpl.clone(), self.committed_fetch_timeout)
        {
            Ok(list) => self
                .tps(&list)
                .into_iter()
                .filter_map(|(tp, o)| match o {
                    Offset::Offset(n) if n >= 0 => Some((tp, n)),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the group's committed offsets; resuming from the stores' offsets");
                HashMap::new()
            }
        };
        let partitions: Vec<Assigned> = {
            let mut epochs = lock(&self.epochs);
            tps.iter()
                .map(|(tp, _)| {
                    let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
                    epochs.insert(tp.clone(), epoch);
                    Assigned {
                        partition: tp.clone(),
                        epoch,
                        kafka_committed: committed.get(tp).copied(),
                    }
                })
                .collect()
        };
        // An assignment means the group took us in: whatever refused us before is fixed.
        self.watch.clear();
        let (reply, rx) = oneshot::channel();
        if self
            .ctl
            .send(Control::Assign { partitions, reply })
            .is_err()
        {
            return; // The main loop is gone (shutting down): nothing will be consumed anyway.
        }
        let Ok(offsets) = rx.blocking_recv() else {
            return;
        };
        for (tp, offset) in offsets {
            let Some(offset) = offset else { continue };
            if let Some(mut elem) = tpl.find_partition(&tp.topic, tp.number) {
                if let Err(e) = elem.set_offset(Offset::Offset(offset)) {
                    tracing::warn!(partition = %tp, offset, error = %e, "cannot set the start offset; Kafka's committed offset applies");
                }
            }
        }
    }

    fn on_revoke(&self, consumer: &IngestConsumer, tpl: &TopicPartitionList) {
        let partitions: Vec<Partition> = self.tps(tpl).into_iter().map(|(tp, _)| tp).collect();
        let lost = consumer.assignment_lost();
        let (ack, rx) = oneshot::channel();
        if self
            .ctl
            .send(Control::Revoke {
                partitions: partitions.clone(),
                lost,
                ack,
            })
            .is_ok()
        {
            // Dropped sender (main loop gone) also releases us.
            let _ = rx.blocking_recv();
        }
        let mut epochs = lock(&self.epochs);
        for tp in &partitions {
            epochs.remove(tp);
        }
    }
}

impl ClientContext for IngestContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.error(error, reason)
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.watch.log(level, fac, message)
    }

    fn stats(&self, stats: Statistics) {
        let epochs = lock(&self.epochs);
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let tp = Partition {
                    topic: self.intern(topic),
                    number: *partition,
                };
                if !epochs.contains_key(&tp) || p.hi_offset < 0 {
                    continue;
                }
                // Lag = high watermark − committed position, the operator's notion (what a
                // restart would have to re-read); before the first commit, librdkafka's own figure.
                let lag = if p.committed_offset >= 0 {
                    p.hi_offset - p.committed_offset
                } else if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else {
                    continue;
                };
                metrics::gauge!(names::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(lag.max(0) as f64);
            }
        }
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.on_assign(consumer, tpl),
            Rebalance::Revoke(tpl) => self.on_revoke(consumer, tpl),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            self.commit_failed.store(true, Ordering::SeqCst);
            // The stores hold the applied offsets, so a failed Kafka commit loses nothing: the next
            // commit supersedes it and a restart resumes from the stores. It does skew lag.
            tracing::warn!(error = %e, partitions = offsets.count(), "Kafka offset commit failed");
        }
    }
}

/// How long the poll thread waits for room in the channel before it pauses the assignment. Short
/// enough that a rebalance callback is served promptly, long enough that ordinary back-pressure
/// (the writer finishing a batch) does not make librdkafka drop and re-fetch its prefetched data.
const BACKPRESSURE_WAIT: Duration = Duration::from_millis(1000);

/// Runs [`poll_loop`]; a panic in it (a bug) is reported to the main loop as fatal instead of
/// silently ending consumption.
pub fn run_poll_thread(
    consumer: Arc<IngestConsumer>,
    tx: mpsc::Sender<Record>,
    stop: Arc<AtomicBool>,
    pause: Arc<PauseFlags>,
    runtime: tokio::runtime::Handle,
) {
    let ctl = consumer.context().ctl.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_loop(consumer, tx, stop, pause, runtime)
    }));
    if let Err(p) = result {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let _ = ctl.send(Control::Fatal(format!(
            "the Kafka poll thread panicked: {what}"
        )));
    }
}

/// Polls the consumer until `stop` is set: messages go to `tx` (bounded); when it stays full, or
/// `pause` asks for it, the assignment is paused and polling continues only to serve callbacks.
fn poll_loop(
    consumer: Arc<IngestConsumer>,
    tx: mpsc::Sender<Record>,
    stop: Arc<AtomicBool>,
    pause: Arc<PauseFlags>,
    runtime: tokio::runtime::Handle,
) {
    let mut pending: VecDeque<Record> = VecDeque::new();
    let mut paused = false;
    let mut seen_generation = u64::MAX;
    let mut last_error_log: HashMap<String, Instant> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        while let Some(r) = pending.pop_front() {
            match tx.try_send(r) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(r)) => {
                    pending.push_front(r);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if !pending.is_empty() {
            let wait = if paused {
                Duration::from_millis(20)
            } else {
                BACKPRESSURE_WAIT
            };
            // The timer must be created inside `block_on`: this thread is not a runtime thread.
            match runtime.block_on(async { tokio::time::timeout(wait, tx.reserve()).await }) {
                Ok(Ok(permit)) => {
                    if let Some(r) = pending.pop_front() {
                        permit.send(r);
                    }
                    continue;
                }
                Ok(Err(_closed)) => return,
                Err(_elapsed) => {}
            }
        }
        let want_pause = pause.any() || !pending.is_empty();
        let generation = consumer.context().generation.load(Ordering::SeqCst);
        // After every assignment change, re-apply the wanted state to the whole assignment:
        // librdkafka keeps a partition's pause flag across a revoke and a later re-assignment, so
        // a partition paused under back-pressure and handed back to us would otherwise stay paused.
        if want_pause != paused || generation != seen_generation {
            match consumer.assignment() {
                Ok(assignment) => {
                    let r = if want_pause {
                        consumer.pause(&assignment)
                    } else {
                        consumer.resume(&assignment)
                    };
                    match r {
                        Ok(()) => {
                            paused = want_pause;
                            seen_generation = generation;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, pause = want_pause, "cannot pause/resume the assignment")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the assignment"),
            }
        }
        let timeout = if pending.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        match consumer.poll(timeout) {
            None => {}
            Some(Ok(m)) => {
                let record = to_record(consumer.context(), &m);
                drop(m);
                let Some(record) = record else { continue };
                if pending.is_empty() {
                    match tx.try_send(record) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(r)) => pending.push_back(r),
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                } else {
                    pending.push_back(record);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                let _ = consumer
                    .context()
                    .ctl
                    .send(Control::Fatal(format!("fatal consumer error: {code}")));
                return;
            }
            Some(Err(e)) if crate::kafka::needs_operator(&e).is_some() => {
                // Only the code: librdkafka's log line (see `Watch::log`) usually said more.
                let watch = &consumer.context().watch;
                if watch.problem().is_none() {
                    let what = crate::kafka::needs_operator(&e).unwrap_or_default();
                    watch.report(format!("kafka: {what}: {e}"));
                }
            }
            Some(Err(e)) => {
                // Brokers down, unknown topic (not created yet)…: librdkafka keeps retrying; say
                // so now and then, not thousands of times a minute.
                let key = crate::kafka::code_label(&e);
                let now = Instant::now();
                let due = match last_error_log.get(&key) {
                    Some(t) => now.duration_since(*t) > Duration::from_secs(10),
                    None => true,
                };
                if due {
                    last_error_log.insert(key, now);
                    tracing::warn!(error = %e, "Kafka consumer error (retrying)");
                }
            }
        }
    }
}

fn to_record(ctx: &IngestContext, m: &BorrowedMessage<'_>) -> Option<Record> {
    let tp = Partition {
        topic: ctx.intern(m.topic()),
        number: m.partition(),
    };
    // A message of a partition we no longer hold (revoked between fetch and poll): the new owner
    // reads it; we must not.
    let epoch = ctx.epoch_of(&tp)?;
    Some(Record {
        epoch,
        offset: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice),
        timestamp_ms: m.timestamp().to_millis(),
        tp,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain maps behind, still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
