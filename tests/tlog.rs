//! The transparency log (issue 15) against a real PostgreSQL: the integrator logs every stored
//! event exactly once in commit order (late commits included), publishes signed checkpoints whose
//! roots a client recomputes from the envelope bytes, and refuses to sign a database whose tree
//! does not extend the last checkpoint it signed; `tlog keygen` writes an owner-only key.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::pg::{EventRow, TestDb};
use common::samples::{items, sample_lines};
use common::worker::cli;
use common::Committed;
use nekhebet_store::envelope::{self, Limits};
use nekhebet_store::store::PgStore;
use nekhebet_store::tlog::{
    append_stored_hashes, check_consistency, check_inclusion, encode_entry_bundle, envelope_entry,
    leaf_hash, read_tile, tree_hash, Checkpoint, Hash, NoteSigner, NoteVerifier, Tile,
};
use nekhebet_store::transparency::signing::StateFile;
use nekhebet_store::transparency::{integrator, Handle, Setup, SharedStatus, Status};
use tokio_util::sync::CancellationToken;

const ORIGIN: &str = "example.com/nekhebet-test";

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[42; 32]).unwrap()
}

fn setup(state: &Path) -> Setup {
    Setup {
        origin: ORIGIN.into(),
        signer: Some(signer()),
        state: Some(StateFile {
            path: state.to_path_buf(),
        }),
        checkpoint_interval: Duration::from_millis(100),
        step_max_leaves: 64,
    }
}

fn start(setup: Setup, pg: &PgStore) -> Handle {
    integrator::spawn(
        setup,
        pg.clone(),
        SharedStatus::default(),
        &CancellationToken::new(),
    )
}

/// Waits until the integrator's status satisfies `f`; panics after a minute with the last status.
async fn wait_status(handle: &Handle, what: &str, f: impl Fn(&Status) -> bool) -> Status {
    let mut rx = handle.status.subscribe();
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = rx.borrow_and_update().clone();
            if f(&s) {
                return s;
            }
            rx.changed().await.expect("the integrator is running");
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("{what}: not within 60 s; status {:?}", handle.status.get()))
}

/// `events` in commit order: (seq, envelope bytes).
async fn events_in_commit_order(db: &TestDb) -> Vec<(i64, Vec<u8>)> {
    db.client()
        .await
        .query("SELECT seq, envelope FROM events ORDER BY txid, seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The log's leaves: (leaf_index, seq, entry).
async fn leaves(db: &TestDb) -> Vec<(i64, i64, Vec<u8>)> {
    db.client()
        .await
        .query(
            "SELECT leaf_index, seq, entry FROM nekhebet_tlog_leaves ORDER BY leaf_index",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Published checkpoints: (size, note, signed).
async fn checkpoints(db: &TestDb) -> Vec<(i64, String, bool)> {
    db.client()
        .await
        .query(
            "SELECT size, note, signed FROM nekhebet_tlog_checkpoints ORDER BY size",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The stored hashes of the tree a client builds from envelope bytes alone (Go's layout).
fn client_tree(envelopes: &[Vec<u8>]) -> Vec<Hash> {
    let leaves: Vec<Hash> = envelopes
        .iter()
        .map(|e| leaf_hash(&envelope_entry(e)))
        .collect();
    append_stored_hashes(0, &leaves, &Vec::new()).unwrap()
}

/// Every event is logged once, in commit order: a transaction holding a lower seq that commits
/// after one with a higher seq holds both back until it commits, then comes first; a transaction
/// left open in another database holds nothing back. Every
/// checkpoint is signed, opens with the verifier key, and has the root a client computes from the
/// envelope bytes; the state file holds the last one.
#[tokio::test]
async fn every_event_is_logged_once_in_commit_order_under_signed_checkpoints() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let lines = sample_lines();
    store
        .save_batch(&items(&lines[..3]))
        .await
        .unwrap()
        .committed();
    let t1 = db.insert_held(&EventRow::opaque("late-low", b"low")).await;
    let t2 = db
        .insert_held(&EventRow::opaque("late-high", b"high"))
        .await;
    let (low, high) = (t1.seq, t2.seq);
    assert!(low < high);
    t2.commit().await;
    // A write transaction left open in ANOTHER database of the server, open while the log steps:
    // it cannot add rows here, and must not hold this log back.
    let elsewhere = TestDb::new().await;
    let t3 = elsewhere
        .insert_held(&EventRow::opaque("elsewhere", b"x"))
        .await;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("log.checkpoint");
    let handle = start(setup(&state), &store);
    // The first step takes every row below the horizon: the batch, not the late-high row past
    // the open transaction.
    wait_status(&handle, "a checkpoint of the batch", |s| {
        s.published.is_some_and(|(size, _)| size == 3)
    })
    .await;
    let logged: Vec<i64> = leaves(&db).await.iter().map(|l| l.1).collect();
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert!(
        !logged.contains(&high),
        "{logged:?} passed the open transaction"
    );

    t1.commit().await;
    store
        .save_batch(&items(&lines[3..203]))
        .await
        .unwrap()
        .committed();
    handle.finish(Duration::from_secs(60)).await;
    t3.rollback().await;

    let events = events_in_commit_order(&db).await;
    assert_eq!(events.len(), 205);
    let logged = leaves(&db).await;
    assert_eq!(logged.len(), 205, "one leaf per event");
    for (i, ((index, seq, entry), (event_seq, envelope))) in logged.iter().zip(&events).enumerate()
    {
        assert_eq!((*index, *seq), (i as i64, *event_seq), "leaf {i}");
        assert_eq!(
            entry[..],
            envelope_entry(envelope)[..],
            "leaf {i}: sha256 of the bytes"
        );
    }
    let seqs: Vec<i64> = logged.iter().map(|l| l.1).collect();
    let (at_low, at_high) = (
        seqs.iter().position(|&s| s == low).unwrap(),
        seqs.iter().position(|&s| s == high).unwrap(),
    );
    assert_eq!(
        (at_low, at_high),
        (3, 4),
        "the late transaction first, by commit order"
    );

    let envelopes: Vec<Vec<u8>> = events.into_iter().map(|e| e.1).collect();
    let tree = client_tree(&envelopes);
    let published = checkpoints(&db).await;
    assert!(published.len() >= 2, "{published:?}");
    assert_eq!(published.last().unwrap().0, 205);
    for (size, note, signed) in &published {
        assert!(signed);
        let (c, _) = Checkpoint::open(note.as_bytes(), ORIGIN, &[signer().verifier()])
            .unwrap_or_else(|e| panic!("checkpoint {size}: {e}\n{note}"));
        assert_eq!(c.size(), *size as u64);
        assert_eq!(
            *c.root(),
            tree_hash(c.size(), &tree).unwrap(),
            "size {size}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        published.last().unwrap().1,
        "the state file holds the last signed checkpoint"
    );
}

/// A database whose tree does not extend the last checkpoint this key signed (another history, or
/// fewer leaves: a restored backup) gets no signature: the refusal names both sizes and roots and
/// makes the process unready; the original database continues to be signed.
#[tokio::test]
async fn a_database_that_does_not_extend_the_signed_checkpoint_is_refused() {
    let lines = sample_lines();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("log.checkpoint");

    let ours = TestDb::new().await;
    let ours_store = ours.store().await;
    ours_store
        .save_batch(&items(&lines[..50]))
        .await
        .unwrap()
        .committed();
    start(setup(&state), &ours_store)
        .finish(Duration::from_secs(60))
        .await;
    let signed_note = std::fs::read_to_string(&state).unwrap();
    let (signed, _) =
        Checkpoint::open(signed_note.as_bytes(), ORIGIN, &[signer().verifier()]).unwrap();
    assert_eq!(signed.size(), 50);

    // Another history: 60 other events.
    let other = TestDb::new().await;
    let other_store = other.store().await;
    other_store
        .save_batch(&items(&lines[100..160]))
        .await
        .unwrap()
        .committed();
    let other_tree = client_tree(
        &events_in_commit_order(&other)
            .await
            .into_iter()
            .map(|e| e.1)
            .collect::<Vec<_>>(),
    );
    let handle = start(setup(&state), &other_store);
    let status = wait_status(&handle, "a refusal", |s| s.refusal.is_some()).await;
    let why = status.refusal.unwrap();
    let other_at_50 = tree_hash(50, &other_tree).unwrap();
    for needle in [
        "size 50".to_string(),
        signed.root().to_string(),
        other_at_50.to_string(),
        tree_hash(60, &other_tree).unwrap().to_string(),
    ] {
        assert!(why.contains(&needle), "{needle:?} not in {why}");
    }
    assert!(handle
        .status
        .readiness_problem()
        .unwrap()
        .contains("refusing to sign"));
    handle.finish(Duration::from_secs(60)).await;
    assert_eq!(leaves(&other).await.len(), 60, "the tree is still built");
    assert_eq!(checkpoints(&other).await, vec![], "nothing signed over it");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), signed_note);

    // A prefix of our history (a backup taken at 10 events): behind.
    let behind = TestDb::new().await;
    let behind_store = behind.store().await;
    behind_store
        .save_batch(&items(&lines[..10]))
        .await
        .unwrap()
        .committed();
    let handle = start(setup(&state), &behind_store);
    let why = wait_status(&handle, "a refusal", |s| s.refusal.is_some())
        .await
        .refusal
        .unwrap();
    assert!(why.contains("10 leaves") && why.contains("the 50"), "{why}");
    handle.finish(Duration::from_secs(60)).await;
    assert_eq!(checkpoints(&behind).await, vec![]);

    // Our database, grown, is an extension: signed again.
    ours_store
        .save_batch(&items(&lines[50..70]))
        .await
        .unwrap()
        .committed();
    let handle = start(setup(&state), &ours_store);
    handle.finish(Duration::from_secs(60)).await;
    let (next, _) = Checkpoint::open(
        std::fs::read_to_string(&state).unwrap().as_bytes(),
        ORIGIN,
        &[signer().verifier()],
    )
    .unwrap();
    assert_eq!(next.size(), 70);
    assert_eq!(checkpoints(&ours).await.last().unwrap().0, 70);
}

/// Without a signing key the tree is built and checkpoints are published unsigned (the note body
/// alone), under the default origin.
#[tokio::test]
async fn without_a_key_checkpoints_are_published_unsigned() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store
        .save_batch(&items(&sample_lines()[..7]))
        .await
        .unwrap()
        .committed();
    let setup = Setup {
        origin: nekhebet_store::transparency::DEFAULT_ORIGIN.into(),
        signer: None,
        state: None,
        checkpoint_interval: Duration::from_millis(100),
        step_max_leaves: 3,
    };
    start(setup, &store).finish(Duration::from_secs(60)).await;
    let published = checkpoints(&db).await;
    let (size, note, signed) = published.last().unwrap().clone();
    assert_eq!((size, signed), (7, false));
    let tree = client_tree(
        &events_in_commit_order(&db)
            .await
            .into_iter()
            .map(|e| e.1)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        note,
        format!(
            "nekhebet-store\n7\n{}\n",
            tree_hash(7, &tree).unwrap().to_base64()
        )
    );
    assert_eq!(leaves(&db).await.len(), 7, "in steps of 3: 3 + 3 + 1");
}

/// `tlog keygen NAME --out FILE` writes an owner-only signer key once and prints the verifier
/// key that checks its signatures; a bad name or an existing file is refused with the reason.
#[test]
fn keygen_writes_an_owner_only_key_once_and_prints_its_verifier() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("log.key");
    let key_arg = key.display().to_string();
    let out = cli(&["tlog", "keygen", ORIGIN, "--out", &key_arg], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(
        text.starts_with(&format!("PRIVATE+KEY+{ORIGIN}+")),
        "{text}"
    );
    let signer = NoteSigner::parse(text.trim()).unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let verifier = NoteVerifier::parse(printed.trim()).unwrap();
    assert_eq!(verifier, signer.verifier());
    let note = Checkpoint::new(ORIGIN, 1, Hash([1; 32]))
        .unwrap()
        .sign(&[&signer])
        .unwrap();
    assert!(Checkpoint::open(note.as_bytes(), ORIGIN, &[verifier]).is_ok());

    let again = cli(&["tlog", "keygen", ORIGIN, "--out", &key_arg], &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never replaced"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text, "unchanged");

    let other = dir.path().join("bad.key").display().to_string();
    let bad = cli(&["tlog", "keygen", "a b", "--out", &other], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no spaces"));
}

/// A `nekhebet-store serve` process (PostgreSQL only, a bearer token, the log signed with `key`);
/// killed when dropped.
struct Server {
    child: std::process::Child,
    base: String,
    log: std::path::PathBuf,
}

impl Server {
    fn start(db_url: &str, dir: &Path, key: &Path, token_digest: &str) -> Server {
        Self::start_with(db_url, dir, key, token_digest, &[])
    }

    fn start_with(
        db_url: &str,
        dir: &Path,
        key: &Path,
        token_digest: &str,
        env: &[(&str, &str)],
    ) -> Server {
        use std::io::BufRead as _;
        let log = dir.join("serve.log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nekhebet-store"))
            .arg("serve")
            .env("NEKHEBET_POSTGRES__URL", db_url)
            .env("NEKHEBET_STORE__MODE", "postgres")
            .env("NEKHEBET_LMDB__PATH", dir.join("lmdb"))
            .env("NEKHEBET_SERVE__LISTEN", "127.0.0.1:0")
            .env("NEKHEBET_SERVE__TOKENS", format!("[\"{token_digest}\"]"))
            .env("NEKHEBET_SHUTDOWN__TIMEOUT_MS", "2000")
            .env("NEKHEBET_TLOG__SIGNING_KEY_FILE", key)
            .env("NEKHEBET_TLOG__CHECKPOINT_INTERVAL_MS", "100")
            .env_remove("NEKHEBET_FAILPOINT")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn nekhebet-store serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Server { child, base, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GET with the token: (status, headers, body).
async fn get(
    server: &Server,
    token: Option<&str>,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = http().get(format!("{}{path}", server.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// Waits until `/log/checkpoint` is a checkpoint of `size` leaves; returns the note.
async fn wait_checkpoint(server: &Server, token: &str, size: u64) -> String {
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (status, _, body) = get(server, Some(token), "/log/checkpoint").await;
            let note = String::from_utf8(body).unwrap();
            if status == 200 && note.lines().nth(1) == Some(&size.to_string()) {
                return note;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        panic!(
            "no checkpoint of {size} within 60 s; log:\n{}",
            server.log_text()
        )
    })
}

/// A signed log served over the first `n` sample envelopes: the set-up the HTTP tests share.
struct Served {
    /// The signer key file (`log.key`), the state file beside it, serve's LMDB and log.
    dir: tempfile::TempDir,
    key: std::path::PathBuf,
    token: &'static str,
    digest: String,
    db: TestDb,
    store: PgStore,
    lines: Vec<String>,
    server: Server,
    /// The checkpoint of the `n` envelopes, as `/log/checkpoint` served it.
    note: String,
}

impl Served {
    /// Stores the first `n` sample envelopes, starts `serve` with a signing key and `token`, and
    /// waits for the checkpoint of `n` leaves.
    async fn start(token: &'static str, n: usize) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("log.key");
        signing_key_file(&key);
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        let db = TestDb::new().await;
        let store = db.store().await;
        let lines = sample_lines();
        store
            .save_batch(&items(&lines[..n]))
            .await
            .unwrap()
            .committed();
        let server = Server::start(&db.url, dir.path(), &key, &digest);
        let note = wait_checkpoint(&server, token, n as u64).await;
        Served {
            dir,
            key,
            token,
            digest,
            db,
            store,
            lines,
            server,
            note,
        }
    }
}

/// Builds tests/go/tlogverify into `dir`. Fails (never skips) without Go.
fn build_go_verifier(dir: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/tlogverify");
    let bin = dir.join("tlogverify");
    let out = std::process::Command::new("go")
        .args(["build", "-mod=readonly", "-buildvcs=false", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .output()
        .expect("`go` on PATH (Go 1.26+): tests/go/tlogverify is the independent verifier");
    assert!(
        out.status.success(),
        "`go build` in {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The ids of the events in `db`, in commit order.
async fn ids(db: &TestDb) -> Vec<uuid::Uuid> {
    db.client()
        .await
        .query("SELECT id FROM events ORDER BY txid, seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A verifier we did not write — Go's `sumdb/tlog` and `sumdb/note` in tests/go/tlogverify —
/// checks a running `serve` over HTTP with the bearer token: the checkpoint's signature with the
/// verifier key `tlog keygen` printed, the tree through its tiles, the inclusion of random events
/// whose leaves it recomputes from the bytes `GET /v1/events/{id}` returns, and the consistency
/// of the checkpoints before and after more events were stored.
#[tokio::test]
async fn go_verifies_the_served_log_checkpoints_tiles_inclusion_and_consistency() {
    use rand::seq::SliceRandom as _;
    let dir = tempfile::tempdir().unwrap();
    let go = build_go_verifier(dir.path());
    let key = dir.path().join("log.key");
    let out = cli(
        &[
            "tlog",
            "keygen",
            ORIGIN,
            "--out",
            &key.display().to_string(),
        ],
        &[],
    );
    assert!(out.status.success());
    let vkey = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let token = "tlog-test-token";
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));

    let db = TestDb::new().await;
    let store = db.store().await;
    let lines = sample_lines();
    store
        .save_batch(&items(&lines[..300]))
        .await
        .unwrap()
        .committed();
    let server = Server::start(&db.url, dir.path(), &key, &digest);
    wait_checkpoint(&server, token, 300).await;

    let verify = |old: Option<&Path>, save: &Path, ids: &[uuid::Uuid]| {
        let mut cmd = std::process::Command::new(&go);
        cmd.args([
            "-url",
            &server.base,
            "-token",
            token,
            "-vkey",
            &vkey,
            "-origin",
            ORIGIN,
        ]);
        if let Some(old) = old {
            cmd.arg("-old").arg(old);
        }
        cmd.arg("-save").arg(save);
        cmd.args(ids.iter().map(|id| id.to_string()));
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "tlogverify: {}\nserve log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let mut rng = rand::thread_rng();
    let all = ids(&db).await;
    let mut picked: Vec<uuid::Uuid> = all.choose_multiple(&mut rng, 10).copied().collect();
    picked.extend([all[0], all[299]]);
    let first = dir.path().join("first.checkpoint");
    let report = verify(None, &first, &picked);
    assert_eq!(report["size"], 300);
    assert_eq!(report["events"], 12);

    // 500 more: the tree crosses tile boundaries (full level-0 tiles 0 and 1, then partial).
    store
        .save_batch(&items(&lines[300..800]))
        .await
        .unwrap()
        .committed();
    wait_checkpoint(&server, token, 800).await;
    let all = ids(&db).await;
    let mut picked: Vec<uuid::Uuid> = all.choose_multiple(&mut rng, 10).copied().collect();
    picked.extend([all[0], all[255], all[256], all[799]]);
    let second = dir.path().join("second.checkpoint");
    let report = verify(Some(&first), &second, &picked);
    assert_eq!(report["size"], 800);
    assert_eq!(report["events"], 14);
    assert_eq!(report["consistency_from"], 300);

    // A tampered checkpoint is not accepted as the earlier one.
    let tampered = dir.path().join("tampered.checkpoint");
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&tampered, text.replacen("\n300\n", "\n299\n", 1)).unwrap();
    let out = std::process::Command::new(&go)
        .args([
            "-url",
            &server.base,
            "-token",
            token,
            "-vkey",
            &vkey,
            "-origin",
            ORIGIN,
        ])
        .arg("-old")
        .arg(&tampered)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The log's routes: tokens as for `/v1`, exact content types and cache headers (full tiles
/// immutable, partial tiles and the checkpoint not), byte counts, and hostile input answered 4xx
/// with a reason.
#[tokio::test]
async fn log_routes_answer_exactly_and_refuse_hostile_input_with_a_reason() {
    // `dir` holds serve's key and LMDB: kept until the end.
    let Served {
        dir: _dir,
        token,
        db,
        server,
        note,
        ..
    } = Served::start("tlog-routes-token", 300).await;
    let t = Some(token);

    // Tokens guard every log route.
    for path in [
        "/log/checkpoint",
        "/log/tile/0/000",
        "/log/consistency?from=1&to=2",
        "/v1/events/00000000-0000-0000-0000-000000000000/proof",
    ] {
        assert_eq!(get(&server, None, path).await.0, 401, "{path}");
    }

    let (status, headers, body) = get(&server, t, "/log/checkpoint").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(String::from_utf8(body).unwrap(), note);

    let envelopes: Vec<Vec<u8>> = events_in_commit_order(&db)
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    let tree = client_tree(&envelopes);
    let (status, headers, body) = get(&server, t, "/log/tile/0/000").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(body.len(), 8192);
    let level0 = Tile::hashes(0, 0, 256).unwrap();
    assert_eq!(body, read_tile(&level0, 300, &tree).unwrap());
    let (status, headers, body) = get(&server, t, "/log/tile/0/001.p/44").await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(
        body,
        read_tile(&Tile::hashes(0, 1, 44).unwrap(), 300, &tree).unwrap()
    );
    let (status, _, body) = get(&server, t, "/log/tile/1/000.p/1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        read_tile(&Tile::hashes(1, 0, 1).unwrap(), 300, &tree).unwrap()
    );
    let (status, _, body) = get(&server, t, "/log/tile/entries/001.p/44").await;
    assert_eq!(status, 200);
    let entries: Vec<[u8; 32]> = envelopes[256..300]
        .iter()
        .map(|e| envelope_entry(e))
        .collect();
    assert_eq!(body, encode_entry_bundle(&entries).unwrap());

    // Hostile or impossible requests: 4xx naming what is wrong.
    let huge = format!("/log/tile/0/{}", "x999/".repeat(6) + "999");
    for (path, want, code, says) in [
        ("/log/tile/0/001", 404, "not_found", "size 300"),
        ("/log/tile/0/001.p/45", 404, "not_found", "size 300"),
        ("/log/tile/entries/002.p/1", 404, "not_found", "size 300"),
        ("/log/tile/0/1", 400, "bad_tile_path", "3 digits"),
        (
            "/log/tile/0/001.p/256",
            400,
            "bad_tile_path",
            "between 1 and 255",
        ),
        ("/log/tile/0/x000/001", 400, "bad_tile_path", "x000"),
        ("/log/tile/64/000", 400, "bad_tile_path", "above 63"),
        ("/log/tile/abc/000", 400, "bad_tile_path", "entries"),
        (huge.as_str(), 400, "bad_tile_path", "tile"),
        (
            "/log/consistency?from=5&to=3",
            400,
            "bad_size",
            "1 ≤ from ≤ to",
        ),
        (
            "/log/consistency?from=0&to=3",
            400,
            "bad_size",
            "1 ≤ from ≤ to",
        ),
        (
            "/log/consistency?from=1&to=301",
            404,
            "not_found",
            "size 300",
        ),
        (
            "/log/consistency?from=99999999999999999999999&to=3",
            400,
            "bad_size",
            "tree size",
        ),
        ("/log/consistency?from=1", 400, "bad_size", "to is missing"),
        (
            "/log/consistency?from=1&to=2&to=3",
            400,
            "bad_size",
            "more than once",
        ),
        (
            "/log/consistency?from=1&to=2&x=1",
            400,
            "unknown_parameter",
            "from and to",
        ),
        ("/v1/events/not-a-uuid/proof", 400, "bad_id", "UUID"),
        (
            "/v1/events/00000000-0000-0000-0000-000000000000/proof",
            404,
            "not_found",
            "no event",
        ),
    ] {
        let (status, _, body) = get(&server, t, path).await;
        let body: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{path}: {}", String::from_utf8_lossy(&body)));
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(says),
            "{path}: {body}"
        );
    }

    // Consistency and inclusion answers check against the checkpoint's root.
    let (status, _, body) = get(&server, t, "/log/consistency?from=13&to=300").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let proof: Vec<Hash> = body["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| Hash::from_base64(h.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        check_consistency(
            &proof,
            13,
            &tree_hash(13, &tree).unwrap(),
            300,
            &tree_hash(300, &tree).unwrap()
        ),
        Ok(())
    );
    let id = ids(&db).await[123];
    let (status, _, body) = get(&server, t, &format!("/v1/events/{id}/proof")).await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["index"], 123);
    assert_eq!(body["checkpoint"], note.as_str());
    let proof: Vec<Hash> = body["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| Hash::from_base64(h.as_str().unwrap()).unwrap())
        .collect();
    let leaf = leaf_hash(&envelope_entry(&envelopes[123]));
    assert_eq!(
        check_inclusion(&proof, 123, &leaf, 300, &tree_hash(300, &tree).unwrap()),
        Ok(())
    );
}

/// Writes a signer key for [`ORIGIN`] (the tests' fixed seed) with owner-only permissions.
fn signing_key_file(path: &Path) {
    nekhebet_store::transparency::signing::write_key_file(path, &signer()).unwrap();
}

/// `audit` on a hybrid store whose log was built by the integrator: (exit code, stdout, stderr).
fn audit(db: &TestDb, lmdb: &Path, key: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let key = key.display().to_string();
    let mut args = vec!["audit"];
    args.extend_from_slice(extra);
    let out = common::worker::cli_on(
        &db.url,
        lmdb,
        &args,
        &[("NEKHEBET_TLOG__SIGNING_KEY_FILE", key.as_str())],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs SQL as the superuser with the append-only triggers of `events` disabled, as someone
/// tampering with the store would.
async fn behind_the_stores_back(db: &TestDb, sql: &str, id: uuid::Uuid) {
    let c = db.client().await;
    c.batch_execute("ALTER TABLE events DISABLE TRIGGER USER")
        .await
        .unwrap();
    c.execute(sql, &[&id]).await.unwrap();
    c.batch_execute("ALTER TABLE events ENABLE TRIGGER USER")
        .await
        .unwrap();
}

/// The leaf index and content hash of event `id`.
async fn leaf_of(db: &TestDb, id: uuid::Uuid) -> (i64, String) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT l.leaf_index, e.content_hash FROM events e
             JOIN nekhebet_tlog_leaves l ON l.seq = e.seq WHERE e.id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// `audit` exits 0 on an untouched store (and with a checkpoint a client kept), and 1 naming the
/// event id and leaf index of each tampering: one byte of one envelope changed by the superuser
/// with the triggers disabled, one LMDB blob changed, one row inserted at a position the log
/// passed, one row deleted. Each is the only finding
/// (the change undone, `audit` is clean again).
#[tokio::test]
async fn audit_names_a_changed_envelope_a_changed_blob_and_a_deleted_row_and_passes_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    let key = dir.path().join("log.key");
    signing_key_file(&key);
    let db = TestDb::new().await;
    let file = dir.path().join("in.jsonl");
    std::fs::write(&file, sample_lines()[..300].join("\n") + "\n").unwrap();
    let out = common::worker::import_file(&db.url, &lmdb, &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = dir.path().join("log.key.checkpoint");
    start(setup(&state), &db.store().await)
        .finish(Duration::from_secs(60))
        .await;

    let kept = state.display().to_string();
    let (code, stdout, stderr) = audit(&db, &lmdb, &key, &["--checkpoint", &kept]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "ok: 300 leaves match the store\n");
    assert!(
        stderr.contains("audited 300 leaves") && stderr.contains("300 LMDB blobs"),
        "{stderr}"
    );

    let all = ids(&db).await;
    // One byte of one envelope.
    let flip = "UPDATE events SET envelope = set_byte(envelope, 10, get_byte(envelope, 10) # 1) WHERE id = $1";
    let (index, _) = leaf_of(&db, all[41]).await;
    behind_the_stores_back(&db, flip, all[41]).await;
    let (code, stdout, _) = audit(&db, &lmdb, &key, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("changed  event {} leaf {index} ", all[41])),
        "{stdout}"
    );
    assert_eq!(lines[1], "1 findings");
    behind_the_stores_back(&db, flip, all[41]).await;
    assert_eq!(audit(&db, &lmdb, &key, &[]).0, Some(0));

    // One LMDB blob.
    let (index, hash) = leaf_of(&db, all[200]).await;
    let cfg = nekhebet_store::config::LmdbConfig {
        path: lmdb.clone(),
        ..nekhebet_store::config::Config::default().lmdb
    };
    let store = nekhebet_store::store::LmdbStore::open(&cfg, false)
        .await
        .unwrap();
    // Keyed as the environment's layout keys it (append, the default for a new store: by seq).
    let key_of = match store.layout() {
        nekhebet_store::config::LmdbLayout::Compatible => {
            nekhebet_store::store::lmdb::BlobKey::Hash(hash.clone())
        }
        nekhebet_store::config::LmdbLayout::Append => {
            let seq: i64 = db
                .client()
                .await
                .query_one("SELECT seq FROM events WHERE id = $1", &[&all[200]])
                .await
                .unwrap()
                .get(0);
            nekhebet_store::store::lmdb::BlobKey::Seq(seq)
        }
    };
    let original = store.read_blob(key_of.clone()).await.unwrap().unwrap();
    let mut changed = original.to_vec();
    changed[20] ^= 1;
    store
        .replace_blobs(vec![(key_of.clone(), changed.into())])
        .await
        .unwrap();
    let (code, stdout, _) = audit(&db, &lmdb, &key, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "changed  blob {key_of} of event {} leaf {index}: ",
            all[200]
        )),
        "{stdout}"
    );
    assert!(stdout.ends_with("\n1 findings\n"), "{stdout}");
    store.replace_blobs(vec![(key_of, original)]).await.unwrap();
    assert_eq!(audit(&db, &lmdb, &key, &[]).0, Some(0));

    // One row inserted behind the log's back, at a commit position it already passed.
    let forged = uuid::Uuid::new_v4();
    let seq: i64 = db
        .client()
        .await
        .query_one(
            "INSERT INTO events (id, event_type, issued_at, source, content_hash, envelope, txid)
             VALUES ($1, 'omen.observed', now(), 'forger', 'forged', '\\x7b7d', 0) RETURNING seq",
            &[&forged],
        )
        .await
        .unwrap()
        .get(0);
    let (code, stdout, _) = audit(&db, &lmdb, &key, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout,
        format!("extra    event {forged} (seq {seq}, txid 0): stored at a position the log already passed, and not in the log\n1 findings\n")
    );
    behind_the_stores_back(&db, "DELETE FROM events WHERE id = $1", forged).await;
    assert_eq!(audit(&db, &lmdb, &key, &[]).0, Some(0));

    // One row deleted.
    let (index, _) = leaf_of(&db, all[150]).await;
    behind_the_stores_back(&db, "DELETE FROM events WHERE id = $1", all[150]).await;
    let (code, stdout, _) = audit(&db, &lmdb, &key, &["--checkpoint", &kept]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "missing  event {} leaf {index} (seq {}): the row is gone from events\n1 findings\n",
            all[150],
            leaves(&db).await[index as usize].1
        )
    );
}

/// Waits for `server`'s process to end by itself (a failpoint aborts it); panics after a minute.
async fn wait_exit(server: &mut Server) -> std::process::ExitStatus {
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        panic!(
            "serve did not crash within 60 s; log:\n{}",
            server.log_text()
        )
    })
}

/// The integrator's process killed mid-integration (failpoints abort it before and after a step's
/// commit): the tree stays at a step boundary, the restarted process continues it with no leaf
/// lost or duplicated, and every checkpoint — before and after the crashes — is consistent with
/// the last (the proof verified against the signed roots).
#[tokio::test]
async fn the_integrator_killed_mid_step_continues_with_no_leaf_lost_or_duplicated() {
    let Served {
        dir,
        key,
        token,
        digest,
        db,
        store,
        lines,
        server,
        note: first,
    } = Served::start("tlog-crash-token", 100).await;
    drop(server); // SIGKILL

    // Steps of 50: the third aborts before its commit, then (next start) the second after it.
    store
        .save_batch(&items(&lines[100..400]))
        .await
        .unwrap()
        .committed();
    for (failpoint, leaves_after) in [
        ("tlog_step_before_commit@3", 200),
        ("tlog_step_after_commit@2", 300),
    ] {
        let mut server = Server::start_with(
            &db.url,
            dir.path(),
            &key,
            &digest,
            &[
                ("NEKHEBET_FAILPOINT", failpoint),
                ("NEKHEBET_TLOG__STEP_MAX_LEAVES", "50"),
            ],
        );
        let status = wait_exit(&mut server).await;
        assert!(!status.success(), "{failpoint}: {status:?}");
        assert!(
            server.log_text().contains(&format!(
                "failpoint {}",
                failpoint.split('@').next().unwrap()
            )),
            "{}",
            server.log_text()
        );
        assert_eq!(
            leaves(&db).await.len(),
            leaves_after,
            "{failpoint}: a step boundary"
        );
    }

    let server = Server::start(&db.url, dir.path(), &key, &digest);
    let last = wait_checkpoint(&server, token, 400).await;
    let events = events_in_commit_order(&db).await;
    let logged = leaves(&db).await;
    assert_eq!(logged.len(), 400);
    for (i, ((index, seq, entry), (event_seq, envelope))) in logged.iter().zip(&events).enumerate()
    {
        assert_eq!((*index, *seq), (i as i64, *event_seq), "leaf {i}");
        assert_eq!(entry[..], envelope_entry(envelope)[..], "leaf {i}");
    }
    let tree = client_tree(&events.into_iter().map(|e| e.1).collect::<Vec<_>>());
    let verifier = signer().verifier();
    let (first, _) =
        Checkpoint::open(first.as_bytes(), ORIGIN, std::slice::from_ref(&verifier)).unwrap();
    let (last, _) =
        Checkpoint::open(last.as_bytes(), ORIGIN, std::slice::from_ref(&verifier)).unwrap();
    for (size, note, _) in checkpoints(&db).await {
        let (c, _) =
            Checkpoint::open(note.as_bytes(), ORIGIN, std::slice::from_ref(&verifier)).unwrap();
        assert_eq!(
            *c.root(),
            tree_hash(size as u64, &tree).unwrap(),
            "checkpoint {size}"
        );
    }
    let (status, _, body) = get(&server, Some(token), "/log/consistency?from=100&to=400").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let proof: Vec<Hash> = body["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| Hash::from_base64(h.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        check_consistency(&proof, 100, first.root(), 400, last.root()),
        Ok(())
    );
}

/// An event that is stored but not yet in a checkpoint (its transaction committed while an
/// earlier one of the same database stays open, so the integrator may not pass it yet): its proof
/// is a 404 `not_yet_logged` with `Retry-After`, then, once the earlier transaction ended, a
/// proof against a checkpoint that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_event_not_yet_in_a_checkpoint_has_no_proof_yet_then_one() {
    let Served {
        dir: _dir,
        token,
        db,
        store,
        lines,
        server,
        ..
    } = Served::start("tlog-unlogged-token", 10).await;

    // An open transaction that wrote (it has a transaction id): the horizon stays below it.
    let open = db.insert_held(&EventRow::opaque("held", b"{}")).await;
    store
        .save_batch(&items(&lines[10..11]))
        .await
        .unwrap()
        .committed();
    let id = envelope::decode(Bytes::from(lines[10].clone()), &Limits::default())
        .unwrap()
        .header
        .id;
    let path = format!("/v1/events/{id}/proof");
    let (status, headers, body) = get(&server, Some(token), &path).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!(
            r#"{{"error":"not_yet_logged","detail":"event {id} is stored but not yet in the log: retry in a second"}}"#
        )
    );

    open.rollback().await;
    wait_checkpoint(&server, token, 11).await;
    let (status, _, body) = get(&server, Some(token), &path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let proof: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(proof["index"], 10);
}
