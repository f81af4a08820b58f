//! `/healthz` and `/readyz` of a real worker process: ready once it joined its group with
//! PostgreSQL and LMDB reachable; 503 naming PostgreSQL while PostgreSQL is stopped, and ready
//! again when it is back; `/healthz` answers 200 throughout.
//!
//! Stops the PostgreSQL server named by `NEKHEBET_SERVICES_SCRIPT` (default: this repository's
//! `scripts/services`): one test in this binary, so nothing else runs against it meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::faults::{self, http_get, Scenario, StartOnDrop};

async fn wait_status(
    addr: &str,
    path: &str,
    want: u16,
    body_has: &str,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let got = http_get(addr, path);
        if let Ok((status, body)) = &got {
            if *status == want && body.contains(body_has) {
                return body.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not answer {want} with {body_has:?} within {timeout:?}; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_postgres_is_down_and_healthz_stays_200() {
    let s = Scenario::new("health", 2).await;
    let mut w = s.spawn(
        "worker",
        &[],
        &[("NEKHEBET_TELEMETRY__LISTEN", "127.0.0.1:0")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Some(a) = w.metrics_addr() {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never served telemetry\n{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ready = wait_status(
        &addr,
        "/readyz",
        200,
        "\"ready\":true",
        Duration::from_secs(60),
    )
    .await;
    assert!(ready.contains("\"missing\":[]"), "{ready}");
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);

    faults::services(&["stop", "postgres"]);
    let _restart = StartOnDrop("postgres");
    let down = wait_status(&addr, "/readyz", 503, "postgres", Duration::from_secs(30)).await;
    assert!(down.contains("\"ready\":false"), "{down}");
    assert_eq!(
        http_get(&addr, "/healthz").unwrap().0,
        200,
        "alive while not ready"
    );
    assert!(
        w.alive(),
        "the worker must wait, not exit, while PostgreSQL is down"
    );

    faults::services(&["start", "postgres"]);
    wait_status(
        &addr,
        "/readyz",
        200,
        "\"ready\":true",
        Duration::from_secs(60),
    )
    .await;
    w.terminate_ok(s.stop_timeout());
}
