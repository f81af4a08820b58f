//! Crash points for the recovery tests: `NEKHEBET_FAILPOINT=<name>` aborts the process at the
//! point of that name, the way a power cut or SIGKILL would, so a test can prove the recovery path
//! (e.g. `after_postgres_commit`: PostgreSQL holds a batch, LMDB and Kafka do not). Compiled only
//! with the `failpoints` feature, which `cargo test` turns on; in any other build [`hit`] is empty
//! and no environment variable can arm it.

/// Aborts the process if the failpoint `name` is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if ARMED
        .get_or_init(|| std::env::var("NEKHEBET_FAILPOINT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("nekhebet-store: failpoint {name} reached, aborting");
        std::process::abort();
    }
}

/// Failpoints are compiled out of this build.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
