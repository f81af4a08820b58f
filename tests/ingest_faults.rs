//! PostgreSQL stopped for 20 s under a running worker process: the worker backs off with consumption
//! paused, commits nothing it did not store, resumes when the database is back, and loses nothing.
//! This binary stops a service, so it holds only this test (test binaries run one after another).
//! The service is stopped through `NEKHEBET_SERVICES_SCRIPT` (default: this repository's
//! `scripts/services`), so it can target an instance of its own. The 60 s outage is in
//! `tests/faults_services.rs` (ignored; `scripts/chaos` runs it).

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_20_s_mid_stream_worker_waits_resumes_and_loses_nothing() {
    common::faults::postgres_outage(Duration::from_secs(20)).await;
}
