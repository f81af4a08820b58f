//! LMDB out of room under a running worker process: the map full at `lmdb.max_map_size`, and the
//! LMDB directory on a full filesystem (a 4 MiB tmpfs). In both the worker waits and says so loudly
//! (an error log naming the cause, the retries counter by cause), stays up, and never commits an
//! offset for what it did not store; given room (a restart with a larger limit, a remount), it ends
//! exact. The tests take a lock: each runs a worker flat out, and the machine has two cores.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::faults::{self as f, Scenario};
use common::kafka::{self as k, WorkerProcess};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1 << 20;

/// Waits until the worker has retried a store write at least `n` times for `cause` (by its
/// retries counter), then checks it says so in an error log line and is still running.
async fn wait_stuck_on(w: &mut WorkerProcess, cause: &str, n: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let retries = w
            .metrics()
            .map(|m| f::metric_sum(&m, "nekhebet_retries_total", &[("cause", cause)]))
            .unwrap_or(0.0);
        if retries >= n {
            eprintln!("retries for {cause}: {retries}");
            break;
        }
        assert!(
            w.alive(),
            "the worker exited instead of waiting\n{}",
            w.log_text()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no {n} retries for {cause} within 120 s (now {retries})\n{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(w.alive(), "{}", w.log_text());
    let loud: Vec<String> = w
        .log_lines_with(cause)
        .into_iter()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(
        !loud.is_empty(),
        "no ERROR log line names the cause {cause}\n{}",
        w.log_text()
    );
    eprintln!("the worker says: {}", loud[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmdb_map_full_at_its_limit_waits_loudly_commits_nothing_unstored_then_lands_exactly_once()
{
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("lmdb-map-full", 3).await;
    s.config.lmdb.map_size = MIB;
    s.config.telemetry.listen = "127.0.0.1:0".into();
    // A short shutdown budget: the stuck batch is abandoned (uncommitted) after it.
    s.config.shutdown.timeout_ms = 4_000;
    // ~3 MB of envelopes for a 1 MiB map.
    let produced = k::produce(&s.topic, 2500, 0.05, 0.05, 0.05, 51).await;

    let limit = MIB.to_string();
    let mut w = s.spawn(
        "worker-1mib",
        &[],
        &[("NEKHEBET_LMDB__MAX_MAP_SIZE", &limit)],
    );
    wait_stuck_on(&mut w, "lmdb_map_full", 3.0).await;
    assert!(
        w.log_text().contains("LMDB map is full at"),
        "{}",
        w.log_text()
    );
    // Stuck: nothing moves, so the stores and the offsets can be compared while it waits.
    let committed = s.assert_committed_only_what_is_done(&produced).await;
    let ends = k::end_offsets(&s.topic);
    assert!(
        ends.iter()
            .any(|(p, e)| committed.get(p).copied().unwrap_or(0) < *e),
        "everything was committed although LMDB is full: {committed:?} vs {ends:?}"
    );
    // A graceful stop abandons the stuck batch: the final commit must not cover it either.
    w.terminate_ok(s.stop_timeout());
    s.assert_committed_only_what_is_done(&produced).await;
    let in_lmdb = f::lmdb_blobs(s.lmdb()).await.len();
    let in_pg = s.event_count().await as usize;
    eprintln!("stopped with {in_pg} events in PostgreSQL, {in_lmdb} in LMDB");
    assert!(in_lmdb < produced.valid as usize, "LMDB never filled up");

    // Room: the same worker with a larger limit grows the map and stores the rest exactly once,
    // healing LMDB with the batch PostgreSQL took before LMDB refused it. The LMDB mirror is off
    // here: this is the redelivered batch's own heal, which must work without it (the mirror
    // copies such a batch too, and would often be first: tests/mirror.rs).
    let larger = (256 * MIB).to_string();
    let mut w = s.spawn(
        "worker-256mib",
        &["--until-caught-up"],
        &[
            ("NEKHEBET_LMDB__MAX_MAP_SIZE", &larger),
            ("NEKHEBET_LMDB__MIRROR_RATE", "0"),
        ],
    );
    let status = w
        .wait_timeout(Duration::from_secs(180))
        .unwrap_or_else(|| panic!("did not catch up\n{}", w.log_text()));
    assert!(status.success(), "{}", w.log_text());
    let log = w.log_text();
    assert!(log.contains("LMDB map full: growing the map"), "{log}");
    assert!(
        log.contains("healing LMDB"),
        "the batch PostgreSQL held was not healed\n{log}"
    );
    // The first worker was stopped gracefully, but it had dead-lettered the poison of the batch it
    // could not finish: those letters are published again (at-least-once).
    s.assert_exactly_once(&produced, true).await;
}

/// A tmpfs mounted on `dir`, unmounted when dropped (after the workers using it are gone: declare
/// it before them).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when mounting is not permitted here (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("mount: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        self.remount(&format!("remount,size={size}"));
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", options])
            .arg(&self.0)
            .status()
            .expect("mount -o remount");
        assert!(status.success(), "mount -o {options} {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmdb_on_a_full_filesystem_waits_loudly_commits_nothing_unstored_then_resumes_exactly() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("lmdb-fs-full", 3).await;
    let mnt = s.dir.path().join("tmpfs");
    // Never skipped: a test that cannot run must fail, not pass.
    let fs = Tmpfs::mount(&mnt, "4m")
        .expect("cannot mount a tmpfs: this test needs root (or CAP_SYS_ADMIN), as CI has");
    s.config.lmdb.path = mnt.join("lmdb");
    s.config.telemetry.listen = "127.0.0.1:0".into();
    // ~8 MB of envelopes for 4 MiB of disk (the map itself is far larger).
    let produced = k::produce(&s.topic, 6000, 0.05, 0.05, 0.05, 52).await;

    let mut w = s.spawn("worker", &[], &[]);
    wait_stuck_on(&mut w, "lmdb_no_space", 3.0).await;
    let committed = s.assert_committed_only_what_is_done(&produced).await;
    let ends = k::end_offsets(&s.topic);
    assert!(
        ends.iter()
            .any(|(p, e)| committed.get(p).copied().unwrap_or(0) < *e),
        "everything was committed although the disk is full: {committed:?} vs {ends:?}"
    );

    // Room: the same worker, still running, picks up where it waited.
    fs.resize("64m");
    s.wait_committed_to_end(Duration::from_secs(180)).await;
    w.terminate_ok(s.stop_timeout());
    assert!(
        w.log_text().contains("recovered after retries"),
        "{}",
        w.log_text()
    );
    s.assert_exactly_once(&produced, false).await;
    drop(w);
    drop(fs);
}

/// LMDB on a filesystem that refuses writes for good (read-only here; permission denied and EIO
/// with space left are classified alike) is not a transient failure to retry forever: the store
/// refuses to open with an error naming the path, and the worker exits non-zero saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmdb_on_a_read_only_filesystem_is_fatal_and_names_the_path() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::new("lmdb-read-only", 1).await;
    let mnt = s.dir.path().join("tmpfs-ro");
    let fs = Tmpfs::mount(&mnt, "16m")
        .expect("cannot mount a tmpfs: this test needs root (or CAP_SYS_ADMIN), as CI has");
    let lmdb = mnt.join("lmdb");
    let mut cfg = s.config.lmdb.clone();
    cfg.path = lmdb.clone();
    drop(
        nekhebet_store::store::LmdbStore::open(&cfg, false)
            .await
            .expect("a writable environment"),
    );
    fs.remount("remount,ro");
    let err = match nekhebet_store::store::LmdbStore::open(&cfg, false).await {
        Ok(_) => panic!("opened an environment on a read-only filesystem"),
        Err(e) => e,
    };
    assert_eq!(
        err.class(),
        nekhebet_store::store::ErrorClass::Fatal,
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&lmdb.display().to_string()), "{msg}");
    assert!(msg.contains("read-write"), "{msg}");

    let mut config = s.config.clone();
    config.lmdb.path = lmdb.clone();
    let mut w = s.spawn_with(&config, "worker-ro", &[], &[]);
    let status = w
        .wait_timeout(Duration::from_secs(60))
        .expect("the worker must exit, not wait forever");
    assert!(!status.success());
    assert!(
        w.log_text().contains(&lmdb.display().to_string()),
        "{}",
        w.log_text()
    );
    drop(w);
    fs.remount("remount,rw");
    drop(fs);
}
