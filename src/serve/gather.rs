//! Single-event reads gathered into pages. Each `GET /v1/events/{id}` (or `by-hash`) asks
//! [`Gather::read`]; one task collects what is waiting and answers it with ONE
//! [`Store::read_page`]: one PostgreSQL query per kind of key, one LMDB read transaction, one hop to
//! the blocking pool for the checks — where a read of its own would pay each of those per event.
//! Measured with `scripts/bench-read` (README: Reading); the per-request costs (a PostgreSQL round
//! trip, two blocking-pool hops) were most of the server's time.
//!
//! Invariants:
//! - Nobody waits for a page to fill: a page is whatever is waiting when a page slot frees up, so
//!   a lone request is answered at once, and under load pages grow by themselves.
//! - At most [`PAGES_IN_FLIGHT`] pages are read at once (each holds a PostgreSQL connection for
//!   its query), of at most [`PAGE`] keys; the queue in front holds at most [`QUEUED`] asks and
//!   makes askers wait beyond that — memory stays bounded whatever the load.
//! - Every ask is answered exactly once: with its own answer from the page, or, when the page as a
//!   whole failed (a store unreachable), by a read of its own, so each request gets its own error.
//! - Reads in LMDB-only mode are not gathered: without PostgreSQL a page is no cheaper than its
//!   reads.
//!
//! The task ends when the last [`Gather`] is dropped (the server's state, after the drain).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::read::{Answer, Key, ReadError};
use crate::store::Store;
use crate::telemetry::names;

/// Keys in one page at most.
pub const PAGE: usize = 128;
/// Pages being read at once at most.
pub const PAGES_IN_FLIGHT: usize = 2;
/// Asks waiting for a page at most.
const QUEUED: usize = 1024;

/// One request's key and where its answer goes.
struct Ask {
    key: Key,
    reply: oneshot::Sender<Answer>,
}

/// The handle the handlers share (cheap to clone).
#[derive(Clone)]
pub struct Gather {
    store: Store,
    /// `None` in LMDB-only mode (reads not gathered).
    asks: Option<mpsc::Sender<Ask>>,
}

impl Gather {
    /// Starts the gathering task (not in LMDB-only mode).
    pub fn start(store: Store) -> Gather {
        let asks = match store {
            Store::Lmdb(_) => None,
            Store::Postgres(_) | Store::Hybrid(_) => {
                let (tx, rx) = mpsc::channel(QUEUED);
                tokio::spawn(gather(store.clone(), rx));
                Some(tx)
            }
        };
        Gather { store, asks }
    }

    /// The answer [`Store::read`] gives for `key`, read in a page with the others waiting.
    pub async fn read(&self, key: Key) -> Answer {
        let Some(asks) = &self.asks else {
            return self.store.read(&key).await;
        };
        let (reply, answer) = oneshot::channel();
        asks.send(Ask { key, reply })
            .await
            .map_err(|_| ReadError::Interrupted("the server is stopping".into()))?;
        answer
            .await
            .map_err(|_| ReadError::Interrupted("the read's page was dropped".into()))?
    }
}

/// Takes asks as they come and answers them in pages (see the module docs).
async fn gather(store: Store, mut asks: mpsc::Receiver<Ask>) {
    let slots = Arc::new(Semaphore::new(PAGES_IN_FLIGHT));
    while let Some(first) = asks.recv().await {
        // While every slot is busy, asks queue up behind `first` and join its page.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut page = vec![first];
        while page.len() < PAGE {
            match asks.try_recv() {
                Ok(ask) => page.push(ask),
                Err(_) => break,
            }
        }
        metrics::histogram!(names::READ_PAGE_KEYS).record(page.len() as f64);
        let store = store.clone();
        tokio::spawn(async move {
            answer(&store, page).await;
            drop(slot);
        });
    }
}

/// Reads a page and hands each ask its answer.
async fn answer(store: &Store, page: Vec<Ask>) {
    let keys: Vec<Key> = page.iter().map(|a| a.key.clone()).collect();
    match store.read_page(&keys).await {
        Ok(answers) => {
            for (ask, answer) in page.into_iter().zip(answers) {
                // A requester that went away (timeout, disconnect) no longer wants it.
                let _ = ask.reply.send(answer);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, keys = keys.len(), "a page of reads failed: each read again on its own");
            let singles = page.into_iter().map(|ask| async move {
                let answer = store.read(&ask.key).await;
                let _ = ask.reply.send(answer);
            });
            futures::future::join_all(singles).await;
        }
    }
}
