//! Crash points for the recovery tests: `NEKHEBET_FAILPOINT=<name>` aborts the process at the
//! point of that name, the way a power cut or SIGKILL would, so a test can prove the recovery path
//! (e.g. `after_postgres_commit`: PostgreSQL holds a batch, LMDB and Kafka do not).
//! `NEKHEBET_FAILPOINT=<name>@<n>` aborts at the n-th time the point is reached instead of the
//! first (e.g. `after_postgres_commit@3`: LMDB holds two batches, PostgreSQL three). Compiled only
//! with the `failpoints` feature, which `cargo test` turns on; in any other build [`hit`] is empty
//! and no environment variable can arm it.

/// Aborts the process if the failpoint `name` is armed (at its n-th hit with `name@n`).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ARMED: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let v = std::env::var("NEKHEBET_FAILPOINT").ok()?;
        Some(match v.split_once('@') {
            Some((n, at)) => (
                n.to_string(),
                at.parse()
                    .unwrap_or_else(|_| panic!("NEKHEBET_FAILPOINT={v:?}: expected <name>@<n>")),
            ),
            None => (v, 1),
        })
    });
    if let Some((armed, at)) = armed {
        if armed == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            eprintln!("nekhebet-store: failpoint {name} reached (hit {at}), aborting");
            std::process::abort();
        }
    }
}

/// Failpoints are compiled out of this build.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
