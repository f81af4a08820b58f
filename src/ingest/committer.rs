//! The committer: the only code that commits offsets to Kafka and builds librdkafka's offset lists.
//! Which offsets may be committed is the ledger's decision ([`super::ledger`]); this module only
//! carries them to the group coordinator.
//!
//! A failed commit loses nothing: the stores hold the applied offsets, so a restart resumes right.
//! It only leaves the group's offset (and the lag others see) behind, so a failure is remembered
//! (also when librdkafka reports it later, in its commit callback) and the main loop commits the
//! current positions again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::IngestConsumer;
use crate::partition::Partition;
use crate::telemetry::names;

pub struct Committer {
    consumer: Arc<IngestConsumer>,
}

impl Committer {
    pub fn new(consumer: Arc<IngestConsumer>) -> Committer {
        Committer { consumer }
    }

    /// Enqueues a commit (librdkafka sends it in the background).
    pub fn commit_async(&self, offsets: &[(Partition, i64)]) {
        if offsets.is_empty() {
            return;
        }
        let started = Instant::now();
        if let Err(e) = self
            .consumer
            .commit(&offset_list(offsets), CommitMode::Async)
        {
            self.failed();
            tracing::warn!(error = %e, "Kafka offset commit failed; committing again shortly");
        }
        metrics::histogram!(names::STAGE_SECONDS, "stage" => "commit")
            .record(started.elapsed().as_secs_f64());
    }

    /// Commits and waits for the coordinator's answer, at most `timeout` (revocation, shutdown:
    /// the next owner must find our last positions).
    pub async fn commit_sync(&self, offsets: Vec<(Partition, i64)>, timeout: Duration) {
        if offsets.is_empty() {
            return;
        }
        let tpl = offset_list(&offsets);
        let consumer = self.consumer.clone();
        let started = Instant::now();
        let res = tokio::time::timeout(
            timeout,
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

    /// Whether a commit failed since the last call (ours, or one librdkafka reported later).
    pub fn take_failure(&self) -> bool {
        self.consumer
            .context()
            .commit_failed
            .swap(false, Ordering::SeqCst)
    }

    fn failed(&self) {
        self.consumer
            .context()
            .commit_failed
            .store(true, Ordering::SeqCst);
    }
}

/// The offsets as librdkafka's list (a partition it cannot take is logged and skipped).
fn offset_list(offsets: &[(Partition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (p, o) in offsets {
        if let Err(e) = tpl.add_partition_offset(&p.topic, p.number, Offset::Offset(*o)) {
            tracing::warn!(partition = %p, error = %e, "cannot build the offset commit");
        }
    }
    tpl
}
