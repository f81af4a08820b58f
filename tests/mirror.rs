//! The LMDB mirror against the real PostgreSQL: every LMDB of a hybrid store converges to a
//! complete, byte-exact copy of PostgreSQL's envelopes — from an empty directory while writes go
//! on, from an old copy of its directory, after losing blobs, across a commit that lands out of
//! seq order, and with two processes mirroring one environment.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::pg::{EventRow, TestDb};
use common::samples::{items, sample_lines};
use common::worker::Producer;
use common::Committed;
use nekhebet_store::config::{Config, LmdbConfig, LmdbLayout};
use nekhebet_store::store::lmdb::BlobKey;
use nekhebet_store::store::mirror::{Mirror, MirrorStatus, PAGE_ROWS};
use nekhebet_store::store::{HybridStore, LmdbStore, PgStore};
use tokio_util::sync::CancellationToken;

fn lmdb_config(dir: &Path, layout: Option<LmdbLayout>) -> LmdbConfig {
    LmdbConfig {
        path: dir.to_path_buf(),
        map_size: 1 << 24,
        sync: false,
        layout,
        ..Config::default().lmdb
    }
}

/// A mirror running in this process until [`Running::stop`].
struct Running {
    status: MirrorStatus,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(pg: &PgStore, lmdb: &LmdbStore) -> Running {
        // Fast enough for a test, still paced (copies of at most 256 envelopes).
        let mirror = Mirror::new(pg.clone(), lmdb.clone(), 50_000);
        let stop = CancellationToken::new();
        Running {
            status: mirror.status(),
            stop: stop.clone(),
            task: tokio::spawn(mirror.run(stop)),
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the mirror task ends cleanly");
    }
}

/// PostgreSQL's envelopes under the key `layout` keeps them by.
async fn pg_blobs(db: &TestDb, layout: LmdbLayout) -> BTreeMap<BlobKey, Vec<u8>> {
    db.client()
        .await
        .query("SELECT seq, content_hash, envelope FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let key = match layout {
                LmdbLayout::Append => BlobKey::Seq(r.get(0)),
                LmdbLayout::Compatible => BlobKey::Hash(r.get(1)),
            };
            (key, r.get(2))
        })
        .collect()
}

/// Every blob of the environment, in its layout.
async fn lmdb_blobs(lmdb: &LmdbStore) -> BTreeMap<BlobKey, Vec<u8>> {
    let append = lmdb.layout() == LmdbLayout::Append;
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let page = lmdb.scan_blobs(after.clone(), 1000, append).await.unwrap();
        let Some((last, _)) = page.last() else {
            return out;
        };
        after = Some(last.clone());
        out.extend(page);
    }
}

/// Waits until the environment holds exactly PostgreSQL's envelopes, byte for byte.
async fn converged(db: &TestDb, lmdb: &LmdbStore, what: &str) -> BTreeMap<BlobKey, Vec<u8>> {
    let expected = pg_blobs(db, lmdb.layout()).await;
    common::kafka::wait_for(Duration::from_secs(120), what, || async {
        let got = lmdb_blobs(lmdb).await;
        (got == expected).then_some(())
    })
    .await;
    expected
}

/// The mirror's lag reads 0 once it has caught up.
async fn lag_zero(status: &MirrorStatus) {
    common::kafka::wait_for(Duration::from_secs(60), "mirror lag 0", || async {
        (status.lag() == Some(0)).then_some(())
    })
    .await;
}

/// An empty LMDB converges to the whole store while a writer (PostgreSQL, then its own LMDB, as
/// the worker does) goes on storing; in either layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_lmdb_converges_to_the_whole_store_while_writes_go_on() {
    for layout in [LmdbLayout::Append, LmdbLayout::Compatible] {
        let db = TestDb::new().await;
        let lines = sample_lines();
        let pg = db.store().await;
        let (writer_dir, replica_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let writer = LmdbStore::open(&lmdb_config(writer_dir.path(), Some(layout)), false)
            .await
            .unwrap();
        let hybrid = HybridStore::new(pg.clone(), writer);
        hybrid
            .save_batch(&items(&lines[..500]))
            .await
            .unwrap()
            .committed();

        let replica = LmdbStore::open(&lmdb_config(replica_dir.path(), Some(layout)), false)
            .await
            .unwrap();
        assert!(replica.is_empty().await.unwrap());
        let running = Running::start(&pg, &replica);
        for chunk in lines[500..].chunks(100) {
            hybrid.save_batch(&items(chunk)).await.unwrap().committed();
        }
        let expected = converged(&db, &replica, "the replica holds the whole store").await;
        assert_eq!(expected.len(), 2000, "{layout:?}");
        // Byte for byte what was sent.
        let mut sent: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let mut held: Vec<&[u8]> = expected.values().map(Vec::as_slice).collect();
        sent.sort();
        held.sort();
        assert_eq!(held, sent, "{layout:?}");
        lag_zero(&running.status).await;
        running.stop().await;
    }
}

/// In a worker the mirror finds the worker's own batches already present: walking them costs it
/// no LMDB write transaction a page (with `lmdb.sync` each is an fsync of the single writer the
/// batches need). The cursor it confirmed is stored within a second, and at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_the_workers_own_batches_stores_the_cursor_at_most_once_a_second() {
    let db = TestDb::new().await;
    let pg = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lmdb = LmdbStore::open(&lmdb_config(dir.path(), Some(LmdbLayout::Append)), false)
        .await
        .unwrap();
    let hybrid = HybridStore::new(pg.clone(), lmdb.clone());
    // Ten pages of the mirror's follow, every blob written by the store itself.
    let mut producer = Producer::new("own-batches", 61);
    let lines: Vec<String> = (0..10 * PAGE_ROWS)
        .map(|_| String::from_utf8(producer.next()).unwrap())
        .collect();
    for chunk in lines.chunks(1000) {
        hybrid.save_batch(&items(chunk)).await.unwrap().committed();
    }
    let last: i64 = db.scalar("SELECT max(seq) FROM events").await;

    let before = lmdb.last_txn_id();
    let started = std::time::Instant::now();
    let running = Running::start(&pg, &lmdb);
    common::kafka::wait_for(
        Duration::from_secs(30),
        "the cursor stored at the end",
        || {
            let lmdb = lmdb.clone();
            async move { (lmdb.mirror_cursor().await.unwrap()?.seq == last).then_some(()) }
        },
    )
    .await;
    let took = started.elapsed();
    let writes = lmdb.last_txn_id() - before;
    // One store a second at most (and the first round may store at once); never one per page.
    let allowed = 1 + took.as_secs() + 1;
    assert!(
        writes <= allowed && writes < 10,
        "{writes} LMDB write transactions to walk 10 pages in {took:?}"
    );
    assert_eq!(
        lmdb_blobs(&lmdb).await.len(),
        lines.len(),
        "nothing copied twice or lost"
    );
    lag_zero(&running.status).await;
    running.stop().await;

    // A page confirmed after the last store is stored at shutdown: a new mirror reports lag 0
    // once it confirmed the new rows, and is stopped well within a second of it starting.
    let more: Vec<String> = (0..300)
        .map(|_| String::from_utf8(producer.next()).unwrap())
        .collect();
    hybrid.save_batch(&items(&more)).await.unwrap().committed();
    let end: i64 = db.scalar("SELECT max(seq) FROM events").await;
    let running = Running::start(&pg, &lmdb);
    lag_zero(&running.status).await;
    running.stop().await;
    assert_eq!(
        lmdb.mirror_cursor().await.unwrap().map(|c| c.seq),
        Some(end)
    );
}

/// An environment put back from an old copy of its directory (taken while nothing wrote) has the
/// old cursor with the old blobs: the mirror resumes from there and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lmdb_restored_from_an_old_copy_converges() {
    let db = TestDb::new().await;
    let lines = sample_lines();
    let pg = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("lmdb");
    let old = dir.path().join("old");
    pg.save_batch(&items(&lines[..700]))
        .await
        .unwrap()
        .committed();
    {
        let lmdb = LmdbStore::open(&lmdb_config(&live, None), false)
            .await
            .unwrap();
        let running = Running::start(&pg, &lmdb);
        converged(&db, &lmdb, "700 mirrored").await;
        running.stop().await;
    }
    // No writer runs: the copy is consistent.
    std::fs::create_dir(&old).unwrap();
    for f in ["data.mdb", "lock.mdb"] {
        std::fs::copy(live.join(f), old.join(f)).unwrap();
    }
    pg.save_batch(&items(&lines[700..1500]))
        .await
        .unwrap()
        .committed();
    {
        let lmdb = LmdbStore::open(&lmdb_config(&live, None), false)
            .await
            .unwrap();
        let running = Running::start(&pg, &lmdb);
        assert_eq!(converged(&db, &lmdb, "1500 mirrored").await.len(), 1500);
        running.stop().await;
    }
    pg.save_batch(&items(&lines[1500..]))
        .await
        .unwrap()
        .committed();

    // The old copy put back.
    std::fs::remove_dir_all(&live).unwrap();
    std::fs::rename(&old, &live).unwrap();
    let lmdb = LmdbStore::open(&lmdb_config(&live, None), false)
        .await
        .unwrap();
    assert_eq!(lmdb.layout(), LmdbLayout::Append, "recorded in the copy");
    assert_eq!(lmdb.len().await.unwrap(), 700);
    let running = Running::start(&pg, &lmdb);
    assert_eq!(
        converged(&db, &lmdb, "the old copy completed").await.len(),
        2000
    );
    lag_zero(&running.status).await;
    running.stop().await;
}

/// Blobs deleted behind the cursor come back: the sweep re-checks the rows the cursor has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lmdb_that_lost_blobs_gets_them_back() {
    let db = TestDb::new().await;
    let lines = sample_lines();
    let pg = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    pg.save_batch(&items(&lines[..1200]))
        .await
        .unwrap()
        .committed();
    let lmdb = LmdbStore::open(&lmdb_config(dir.path(), None), false)
        .await
        .unwrap();
    let running = Running::start(&pg, &lmdb);
    let expected = converged(&db, &lmdb, "1200 mirrored").await;
    running.stop().await;
    let cursor = lmdb.mirror_cursor().await.unwrap();

    // Every seventh blob lost, the cursor untouched.
    let lost: Vec<BlobKey> = expected.keys().step_by(7).cloned().collect();
    assert_eq!(lmdb.remove_blobs(lost.clone()).await.unwrap(), lost.len());
    assert_eq!(lmdb.len().await.unwrap() as usize, 1200 - lost.len());
    assert_eq!(lmdb.mirror_cursor().await.unwrap(), cursor);

    let running = Running::start(&pg, &lmdb);
    assert_eq!(
        converged(&db, &lmdb, "the lost blobs copied back").await,
        expected
    );
    running.stop().await;
}

/// A transaction that took the lower seq commits after one with a higher seq. While it is open,
/// the mirror copies the committed rows (the higher one ahead of its cursor, which stays before
/// the open transaction's row); once it commits, the lower one is copied too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_out_of_seq_order_is_mirrored() {
    let db = TestDb::new().await;
    let lines = sample_lines();
    let pg = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    pg.save_batch(&items(&lines[..3]))
        .await
        .unwrap()
        .committed();
    let t1 = db
        .insert_held(&EventRow::of_envelope(lines[3].as_bytes()))
        .await;
    let t2 = db
        .insert_held(&EventRow::of_envelope(lines[4].as_bytes()))
        .await;
    let (low, high) = (t1.seq, t2.seq);
    assert!(low < high);
    t2.commit().await;

    let lmdb = LmdbStore::open(&lmdb_config(dir.path(), None), false)
        .await
        .unwrap();
    assert_eq!(lmdb.layout(), LmdbLayout::Append);
    let running = Running::start(&pg, &lmdb);
    // Every committed row is copied, the higher seq too; the cursor stays before the open
    // transaction's row (the horizon holds it), so that row cannot be skipped.
    common::kafka::wait_for(Duration::from_secs(60), "4 copied", || async {
        (lmdb.len().await.unwrap() == 4).then_some(())
    })
    .await;
    assert_eq!(
        lmdb.get_seq(high).await.unwrap().as_deref(),
        Some(lines[4].as_bytes())
    );
    assert_eq!(lmdb.get_seq(low).await.unwrap(), None);
    // (No cursor at all while an older transaction elsewhere in the cluster holds the horizon
    // below these rows too: they were all copied ahead.)
    let cursor = lmdb.mirror_cursor().await.unwrap();
    assert!(cursor.is_none_or(|c| c.seq < low), "{cursor:?}");

    t1.commit().await;
    let expected = converged(&db, &lmdb, "both late rows mirrored").await;
    assert_eq!(expected.len(), 5);
    assert_eq!(
        lmdb.get_seq(low).await.unwrap().as_deref(),
        Some(lines[3].as_bytes())
    );
    assert_eq!(
        lmdb.get_seq(high).await.unwrap().as_deref(),
        Some(lines[4].as_bytes())
    );
    lag_zero(&running.status).await;
    running.stop().await;
}

/// A `serve` process (its mirror on) over `lmdb`; killed when dropped.
struct Serve {
    child: Child,
    /// `http://127.0.0.1:port`.
    base: String,
}

impl Serve {
    fn start(db_url: &str, lmdb: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nekhebet-store"))
            .arg("serve")
            .env("NEKHEBET_POSTGRES__URL", db_url)
            .env("NEKHEBET_LMDB__PATH", lmdb)
            .env("NEKHEBET_LMDB__MAP_SIZE", "16777216")
            .env("NEKHEBET_LMDB__MIRROR_RATE", "20000")
            .env("NEKHEBET_SERVE__LISTEN", "127.0.0.1:0")
            .env("NEKHEBET_SHUTDOWN__TIMEOUT_MS", "2000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nekhebet-store serve");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Serve { child, base }
    }

    async fn get(&self, path: &str) -> String {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two processes mirroring one environment at once (as a worker and a `serve` beside it do) leave
/// it exact: every envelope once, byte for byte, nothing overwritten. Each one's lag, in
/// `/readyz` and `/metrics`, reaches 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_mirroring_one_lmdb_leave_it_exact() {
    let db = TestDb::new().await;
    let lines = sample_lines();
    let pg = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lmdb_dir = dir.path().join("lmdb");
    pg.save_batch(&items(&lines[..1000]))
        .await
        .unwrap()
        .committed();
    let (a, b) = (
        Serve::start(&db.url, &lmdb_dir),
        Serve::start(&db.url, &lmdb_dir),
    );
    for chunk in lines[1000..].chunks(200) {
        pg.save_batch(&items(chunk)).await.unwrap().committed();
    }
    let expected = pg_blobs(&db, LmdbLayout::Append).await;
    assert_eq!(expected.len(), 2000);
    common::kafka::wait_for(
        Duration::from_secs(120),
        "both processes' mirrors done",
        || async {
            let got = common::faults::lmdb_blobs(&lmdb_dir).await;
            (got.len() == 2000).then_some(())
        },
    )
    .await;
    for serve in [&a, &b] {
        common::kafka::wait_for(Duration::from_secs(60), "/readyz lag 0", || async {
            let ready: serde_json::Value =
                serde_json::from_str(&serve.get("/readyz").await).unwrap();
            (ready
                == serde_json::json!({"ready": true, "missing": [], "lmdb_mirror_lag_events": 0}))
            .then_some(())
        })
        .await;
        let metrics = serve.get("/metrics").await;
        assert!(
            metrics
                .lines()
                .any(|l| l == "nekhebet_lmdb_mirror_lag_events 0"),
            "{metrics}"
        );
    }
    drop((a, b));
    let lmdb = LmdbStore::open(&lmdb_config(&lmdb_dir, None), false)
        .await
        .unwrap();
    assert_eq!(lmdb_blobs(&lmdb).await, expected);
}

/// Two workers (replicas with LMDBs of their own) store alternate batches while each one's mirror
/// runs on its own LMDB, beside its batch writes: both LMDBs end holding the whole store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_writing_their_own_batches_each_end_with_the_whole_store() {
    let db = TestDb::new().await;
    let lines = sample_lines();
    let pg = db.store().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = LmdbStore::open(&lmdb_config(dir_a.path(), None), false)
        .await
        .unwrap();
    let b = LmdbStore::open(&lmdb_config(dir_b.path(), None), false)
        .await
        .unwrap();
    let (mirror_a, mirror_b) = (Running::start(&pg, &a), Running::start(&pg, &b));
    let (worker_a, worker_b) = (
        HybridStore::new(pg.clone(), a.clone()),
        HybridStore::new(pg.clone(), b.clone()),
    );
    for (i, chunk) in lines.chunks(50).enumerate() {
        let worker = if i % 2 == 0 { &worker_a } else { &worker_b };
        worker.save_batch(&items(chunk)).await.unwrap().committed();
    }
    assert_eq!(converged(&db, &a, "replica a complete").await.len(), 2000);
    assert_eq!(converged(&db, &b, "replica b complete").await.len(), 2000);
    mirror_a.stop().await;
    mirror_b.stop().await;
}
