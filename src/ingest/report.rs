//! What a run of the worker did: one outcome per consumed message (or "abandoned" to the next
//! owner), dead-letter publishes, retries, and the commit timing the benchmarks read.

use std::collections::BTreeMap;
use std::fmt;

use crate::reason::Reason;
use crate::store::Outcome;

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

    pub fn count_outcome(&mut self, o: Outcome) {
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
