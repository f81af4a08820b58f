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
//! - The main loop (`main_loop`) batches, hands batches on while fewer than `batch.max_in_flight` are between
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
mod main_loop;
pub mod report;
pub mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, BatchLimits, LaneBatcher};
use crate::config::{Config, StoreMode};
use crate::dlq::DlqSink;
use crate::pipeline::Checker;
use crate::store::Store;

use apply::{Applier, RetryPolicy};
use consumer::{IngestConsumer, IngestContext, PauseFlags, Record};
use main_loop::MainLoop;
pub use report::IngestReport;
use writer::{Prepared, Writer};

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
    let mut main = MainLoop::new(
        config,
        store,
        opts,
        consumer.clone(),
        ownership_tx,
        pause,
        LaneBatcher::new(BatchLimits::from_config(&config.batch), concurrency),
        max_in_flight,
    );
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
