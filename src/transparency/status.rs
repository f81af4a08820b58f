//! What the integrator tells the rest of the process: whether it holds the lock, the tree's
//! size, the last checkpoint it published, and why it refuses to sign (`/readyz`, tests, the
//! catch-up of `ingest --until-caught-up`).

use std::sync::Arc;

use tokio::sync::watch;

use crate::tlog::Hash;

/// The integrator's state as last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// This process holds the integrator's lock and appends to the log.
    pub integrating: bool,
    /// Leaves in the tree as this process last appended or read them.
    pub size: u64,
    /// The last checkpoint this process published: (size, root).
    pub published: Option<(u64, Hash)>,
    /// Why this process refuses to sign, while it does (a sentence naming sizes and roots).
    pub refusal: Option<String>,
}

/// The status, shared: the integrator writes, anyone reads or waits for a change.
#[derive(Debug, Clone)]
pub struct SharedStatus(Arc<watch::Sender<Status>>);

impl Default for SharedStatus {
    fn default() -> Self {
        SharedStatus(Arc::new(watch::Sender::new(Status::default())))
    }
}

impl SharedStatus {
    pub fn get(&self) -> Status {
        self.0.borrow().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        self.0.send_modify(f);
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.0.subscribe()
    }

    /// What `/readyz` lists: the refusal to sign, if any.
    pub fn readiness_problem(&self) -> Option<String> {
        self.0
            .borrow()
            .refusal
            .as_ref()
            .map(|r| format!("tlog: refusing to sign checkpoints: {r}"))
    }
}
