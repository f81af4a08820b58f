//! `nekhebet-store serve` as a process, against real PostgreSQL and LMDB, over TCP with a real
//! HTTP client (reqwest) and raw sockets for what a client library would refuse to send: exact
//! bytes by id and by hash, ETags, listings page by page against PostgreSQL's own order, tokens,
//! TLS, and hostile input (over-long targets and heads, bad cursors and limits, thousands of idle
//! connections, clients that never read a large listing).

mod common;
#[path = "common/tls.rs"]
mod tls_servers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::pg::{EventRow, TestDb};
use common::worker::{cli_on, import_file, Producer};
use futures::StreamExt;
use nekhebet_store::envelope::{decode, Limits};
use nekhebet_store::store::lmdb::BlobKey;
use nekhebet_store::store::LmdbStore;
use sha2::{Digest, Sha256};

/// The heavy tests (thousands of sockets, RSS) one at a time, and the others beside them only
/// where they do not measure.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `nekhebet-store serve` process on a port of its choosing; killed when dropped.
struct Server {
    child: Child,
    base: String,
    addr: String,
    _logs: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    /// Starts `serve` on `db_url` and `lmdb` with extra `NEKHEBET_*` settings; waits for its
    /// "listening on" line.
    fn start(db_url: &str, lmdb: &Path, env: &[(&str, &str)]) -> Server {
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("serve.log");
        let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
        let mut child = Self::spawn(db_url, lmdb, env, stderr);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("serve printed no 'listening on' line within 60 s");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let addr = base.split("://").nth(1).unwrap().to_string();
        Server {
            child,
            base,
            addr,
            _logs: logs,
            log,
        }
    }

    fn spawn(db_url: &str, lmdb: &Path, env: &[(&str, &str)], stderr: Stdio) -> Child {
        Command::new(env!("CARGO_BIN_EXE_nekhebet-store"))
            .arg("serve")
            .env("NEKHEBET_POSTGRES__URL", db_url)
            .env("NEKHEBET_LMDB__PATH", lmdb)
            .env("NEKHEBET_SERVE__LISTEN", "127.0.0.1:0")
            .env("NEKHEBET_SHUTDOWN__TIMEOUT_MS", "2000")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn nekhebet-store serve")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path` with a plain client.
    async fn get(&self, path: &str) -> reqwest::Response {
        client().get(self.url(path)).send().await.unwrap()
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory the server process has had, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// The number of envelopes a listing answers (200 expected).
    async fn listed_lines(&self, path: &str) -> usize {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{}", self.log_text());
        let body = r.bytes().await.unwrap();
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    }

    /// Waits until the server has cut at least `n` connections for `reason`.
    async fn wait_cut(&self, reason: &str, n: u32) {
        let what = format!("{n} connections cut for {reason}");
        common::kafka::wait_for(Duration::from_secs(120), &what, || async {
            let cut = self
                .metric("nekhebet_http_connections_cut_total", &[("reason", reason)])
                .await;
            (cut >= f64::from(n)).then_some(())
        })
        .await;
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics`, summed over the series of `name` whose labels include `labels`.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        common::faults::metric_sum(&text, name, labels)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A migrated database and an LMDB directory holding `lines` (imported through the CLI).
struct Stored {
    db: TestDb,
    dir: tempfile::TempDir,
    lines: Vec<Vec<u8>>,
}

impl Stored {
    async fn with(lines: Vec<Vec<u8>>) -> Stored {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.jsonl");
        let mut text = Vec::new();
        for l in &lines {
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        std::fs::write(&file, text).unwrap();
        let out = import_file(&db.url, &dir.path().join("lmdb"), &file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "import failed: {stderr}");
        Stored { db, dir, lines }
    }

    /// The repository's 2,000 sample envelopes.
    async fn sample() -> Stored {
        let text = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/envelopes-2000.jsonl"
        ))
        .unwrap();
        let lines = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        Stored::with(lines).await
    }

    fn lmdb(&self) -> PathBuf {
        self.dir.path().join("lmdb")
    }

    fn serve(&self, env: &[(&str, &str)]) -> Server {
        Server::start(&self.db.url, &self.lmdb(), env)
    }

    /// PostgreSQL's envelopes under a condition, in the listing's order.
    async fn pg_order(&self, condition: &str) -> Vec<Vec<u8>> {
        self.db
            .client()
            .await
            .query(
                &format!("SELECT envelope FROM events {condition} ORDER BY issued_at, id"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Stored {
    /// Writes `other`'s bytes into LMDB under the key the environment's layout reads `genuine` by
    /// (a foreign blob, as a restored or misdirected copy would hold).
    async fn plant_foreign_blob(&self, genuine: &[u8], other: &[u8]) {
        let h = header(genuine);
        let mut cfg = nekhebet_store::config::Config::default().lmdb;
        cfg.path = self.lmdb();
        cfg.map_size = 1 << 20;
        let lmdb = LmdbStore::open(&cfg, false).await.unwrap();
        let key = match lmdb.layout() {
            nekhebet_store::config::LmdbLayout::Compatible => BlobKey::Hash(h.payload_hash.clone()),
            nekhebet_store::config::LmdbLayout::Append => BlobKey::Seq(
                self.db
                    .scalar(&format!("SELECT seq FROM events WHERE id = '{}'", h.id))
                    .await,
            ),
        };
        lmdb.replace_blobs(vec![(key, other.to_vec().into())])
            .await
            .unwrap();
    }

    /// Imports more envelopes into the same database and LMDB (through the CLI, as a writer
    /// beside the server).
    fn import(&self, lines: &[Vec<u8>]) {
        let file = self
            .dir
            .path()
            .join(format!("more-{}.jsonl", uuid::Uuid::new_v4()));
        let mut text = Vec::new();
        for l in lines {
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        std::fs::write(&file, text).unwrap();
        let out = import_file(&self.db.url, &self.lmdb(), &file);
        assert!(
            out.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every event as the stream must send it: (position, envelope bytes) in commit order.
    async fn commit_order(&self) -> Vec<(String, Vec<u8>)> {
        self.db
            .client()
            .await
            .query(
                "SELECT txid, seq, envelope FROM events ORDER BY txid, seq",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    format!("{}-{}", r.get::<_, i64>(0), r.get::<_, i64>(1)),
                    r.get(2),
                )
            })
            .collect()
    }
}

/// An open `GET /v1/stream` response, read as an SSE client reads it.
struct Sse {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Sse {
    async fn open(server: &Server, target: &str, last_event_id: Option<&str>) -> Sse {
        // No overall timeout: the response never ends; each event is awaited with its own.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut request = http.get(server.url(target));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", server.log_text());
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse {
            response,
            buf: Vec::new(),
        }
    }

    /// The next event: (its id, the envelope's bytes as a client reassembles them).
    async fn next(&mut self) -> (String, Vec<u8>) {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let (mut kind, mut id, mut data) = (String::new(), String::new(), Vec::new());
                let mut has_data = false;
                for line in block[..end].split(|b| *b == b'\n') {
                    if line.starts_with(b":") {
                        continue;
                    }
                    let line = std::str::from_utf8(line).unwrap();
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "event" => kind = value.to_owned(),
                        "id" => id = value.to_owned(),
                        "data" => {
                            if has_data {
                                data.push(b'\n');
                            }
                            data.extend_from_slice(value.as_bytes());
                            has_data = true;
                        }
                        other => panic!("unexpected SSE field {other:?}"),
                    }
                }
                if id.is_empty() {
                    continue; // a keep-alive comment
                }
                if kind == "base64" {
                    use base64::Engine;
                    data = base64::engine::general_purpose::STANDARD
                        .decode(&data)
                        .unwrap();
                }
                return (id, data);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.response.chunk())
                .await
                .expect("no event within 60 s")
                .unwrap()
                .expect("the stream ended");
            self.buf.extend_from_slice(&chunk);
        }
    }

    async fn take(&mut self, n: usize) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// `n` envelopes signed by a producer of their own, each padded to about `pad` bytes.
fn padded(key_id: &str, seed: u8, n: usize, pad: usize) -> Vec<Vec<u8>> {
    let mut producer = Producer::new(key_id, seed);
    (0..n)
        .map(|i| {
            let mut spec = producer.next_spec();
            spec.payload = serde_json::json!({ "n": i, "pad": "p".repeat(pad) });
            producer.sign(&spec)
        })
        .collect()
}

/// GETs one event and asserts it is answered 200 (within the client's timeout).
async fn answered(server: &Server, id: uuid::Uuid) {
    let r = server.get(&format!("/v1/events/{id}")).await;
    assert_eq!(r.status(), 200);
}

/// Whether the server still holds this connection open (nothing to read, no end of stream).
fn held_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let open =
        matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// A test's running server on the sample store, holding the serial lock (fields drop in order:
/// the server stops first, the lock goes last).
struct Case {
    server: Server,
    stored: Stored,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// The serial lock, the 2,000 sample envelopes stored, and `serve` on them with `env`.
async fn sample_served(env: &[(&str, &str)]) -> Case {
    let serial = SERIAL.lock().await;
    let stored = Stored::sample().await;
    Case {
        server: stored.serve(env),
        stored,
        _serial: serial,
    }
}

fn header(bytes: &[u8]) -> nekhebet_store::envelope::Header {
    decode(bytes.to_vec().into(), &Limits::default())
        .expect("decodes")
        .header
}

/// Sends raw bytes, reads the whole answer (the request says `Connection: close`): (status, body).
fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
    (status, body)
}

fn get_raw(addr: &str, target: &str) -> (u16, String) {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// The `error` code of a JSON error body.
fn code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("not a JSON error body ({e}): {body:?}"));
    assert!(v["detail"].is_string(), "{body}");
    v["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_served_byte_for_byte_by_id_and_by_hash_with_etags() {
    let case = sample_served(&[]).await;
    let (server, stored) = (&case.server, &case.stored);
    let http = client();
    for line in stored.lines.iter().step_by(40) {
        let h = header(line);
        let r = server.get(&format!("/v1/events/{}", h.id)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let etag = format!("\"{}\"", h.payload_hash);
        assert_eq!(r.headers()["etag"], etag.as_str());
        assert_eq!(r.headers()[nekhebet_store::serve::SERVED_FROM], "lmdb");
        assert_eq!(r.bytes().await.unwrap(), line.as_slice(), "exact bytes");
        let r = server
            .get(&format!("/v1/events/by-hash/{}", h.payload_hash))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), line.as_slice());
        // Conditional: the client's copy is current.
        let r = http
            .get(server.url(&format!("/v1/events/{}", h.id)))
            .header("If-None-Match", format!("W/\"x\", {etag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()["etag"], etag.as_str());
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let head = http
        .head(server.url(&format!("/v1/events/{}", header(&stored.lines[0]).id)))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);

    let status_code = |path: String| {
        let http = http.clone();
        let url = server.url(&path);
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, code(&r.text().await.unwrap()))
        }
    };
    let absent = uuid::Uuid::new_v4();
    assert_eq!(
        status_code(format!("/v1/events/{absent}")).await,
        (404, "not_found".into())
    );
    assert_eq!(
        status_code(format!("/v1/events/by-hash/{}", "0".repeat(64))).await,
        (404, "not_found".into())
    );
    for bad in ["nope", "2c3ba479", "2c3ba479-a68f-4011-ae25-042ef33617cax"] {
        assert_eq!(
            status_code(format!("/v1/events/{bad}")).await,
            (400, "bad_id".into())
        );
    }
    let hash = header(&stored.lines[0]).payload_hash;
    for bad in [
        hash.to_uppercase(),
        hash[..63].to_string(),
        format!("{hash}0"),
    ] {
        assert_eq!(
            status_code(format!("/v1/events/by-hash/{bad}")).await,
            (400, "bad_hash".into())
        );
    }
    assert_eq!(
        server.metric("nekhebet_lmdb_read_hits_total", &[]).await,
        101.0,
        "50 by id, 50 by hash, 1 HEAD; 304s read no bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_through_the_store_in_order_exactly_once_and_filter() {
    let case = sample_served(&[]).await;
    let (server, stored) = (&case.server, &case.stored);
    let http = client();
    let page_all = |query: String| {
        let http = http.clone();
        let server_url = server.url("/v1/events");
        async move {
            let mut lines = Vec::new();
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let mut url = format!("{server_url}?{query}");
                if let Some(c) = &cursor {
                    url.push_str(&format!("&cursor={c}"));
                }
                let r = http.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(r.headers()["content-type"], "application/x-ndjson");
                cursor = r
                    .headers()
                    .get(nekhebet_store::serve::NEXT_CURSOR)
                    .map(|v| v.to_str().unwrap().to_string());
                let body = r.bytes().await.unwrap();
                lines.extend(
                    body.split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(<[u8]>::to_vec),
                );
                pages += 1;
                if cursor.is_none() {
                    return (lines, pages);
                }
            }
        }
    };
    let (all, pages) = page_all("limit=300".into()).await;
    assert_eq!(all.len(), 2000);
    assert_eq!(pages, 7, "6 full pages of 300 and one of 200");
    assert_eq!(
        all,
        stored.pg_order("").await,
        "PostgreSQL's bytes in (issued_at, id) order"
    );
    let mut sorted_input = stored.lines.clone();
    sorted_input.sort();
    let mut sorted_output = all.clone();
    sorted_output.sort();
    assert_eq!(
        sorted_output, sorted_input,
        "each stored envelope exactly once, as imported"
    );
    // A page that ends exactly at the end says no more follow.
    let (_, pages) = page_all("limit=1000".into()).await;
    assert_eq!(pages, 2);
    let (default, _) = page_all(String::new()).await;
    assert_eq!(default.len(), 2000);

    let first = header(&stored.lines[0]);
    let cases = [
        (
            format!("event_type={}", first.event_type),
            format!("WHERE event_type = '{}'", first.event_type),
        ),
        (
            format!("source={}&limit=50", first.source),
            format!("WHERE source = '{}'", first.source),
        ),
        (
            format!("key_id={}&limit=77", first.key_id),
            format!("WHERE key_id = '{}'", first.key_id),
        ),
        (
            "issued_after=2026-11-25T16:26:00Z&issued_before=2026-11-25T16:27:00Z&limit=90"
                .to_string(),
            "WHERE issued_at > '2026-11-25T16:26:00Z' AND issued_at < '2026-11-25T16:27:00Z'"
                .to_string(),
        ),
        (
            "source=no-such-source".to_string(),
            "WHERE source = 'no-such-source'".to_string(),
        ),
    ];
    for (query, condition) in cases {
        let (lines, _) = page_all(query.clone()).await;
        let expected = stored.pg_order(&condition).await;
        assert_eq!(lines.len(), expected.len(), "{query}");
        assert_eq!(lines, expected, "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_clear_4xx_and_the_server_keeps_serving() {
    let case = sample_served(&[]).await;
    let (server, stored) = (&case.server, &case.stored);
    let addr = server.addr.as_str();
    let id = header(&stored.lines[0]).id;

    // Over-long targets: 414 from the API up to the head limit, 431 from the HTTP layer beyond.
    let (status, body) = get_raw(addr, &format!("/v1/events/{}", "a".repeat(5000)));
    assert_eq!((status, code(&body).as_str()), (414, "uri_too_long"));
    let (status, body) = get_raw(addr, &format!("/v1/events?source={}", "s".repeat(8000)));
    assert_eq!((status, code(&body).as_str()), (414, "uri_too_long"));
    let (status, _) = get_raw(addr, &format!("/v1/events/{}", "a".repeat(40_000)));
    assert_eq!(status, 431);
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(addr, many.as_bytes()).0, 431);
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    assert_eq!(raw(addr, huge_header.as_bytes()).0, 431);

    // Listing parameters.
    for (target, expected) in [
        ("/v1/events?limit=10^12", "bad_parameter"),
        ("/v1/events?limit=10%5E12", "bad_parameter"),
        ("/v1/events?limit=1000000000000", "bad_parameter"),
        ("/v1/events?limit=0", "bad_parameter"),
        ("/v1/events?limit=10001", "bad_parameter"),
        ("/v1/events?cursor=AAAA", "bad_cursor"),
        (
            "/v1/events?cursor=AQAGYRxIOVtoLDukeaaPQBGuJQQu8zYXy%21",
            "bad_cursor",
        ),
        (
            "/v1/events?cursor=AgAGYRxIOVtoLDukeaaPQBGuJQQu8zYXyg",
            "bad_cursor",
        ),
        ("/v1/events?cursor=", "bad_cursor"),
        ("/v1/events?evnt_type=x", "unknown_parameter"),
        ("/v1/events?source=a&source=b", "bad_parameter"),
        ("/v1/events?issued_after=yesterday", "bad_parameter"),
        ("/v1/events?key_id=", "bad_parameter"),
    ] {
        let (status, body) = get_raw(addr, target);
        assert_eq!((status, code(&body).as_str()), (400, expected), "{target}");
    }
    let (status, body) = get_raw(addr, "/v1/nothing");
    assert_eq!((status, code(&body).as_str()), (404, "no_route"));
    let (status, body) = raw(
        addr,
        format!("DELETE /v1/events/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!((status, code(&body).as_str()), (405, "method_not_allowed"));
    let (status, _) = raw(addr, b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(status, 400);

    // Still serving, and nothing answered 5xx.
    answered(server, id).await;
    for status in ["500", "503"] {
        assert_eq!(
            server
                .metric("nekhebet_http_requests_total", &[("status", status)])
                .await,
            0.0,
            "{}",
            server.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_every_v1_route_and_a_public_address_needs_them() {
    let token = "reader-token-7f3a";
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let tokens = format!("[\"{digest}\"]");
    let case = sample_served(&[("NEKHEBET_SERVE__TOKENS", &tokens)]).await;
    let (server, stored) = (&case.server, &case.stored);
    let http = client();
    let id = header(&stored.lines[0]).id;
    let hash = header(&stored.lines[0]).payload_hash;
    for path in [
        format!("/v1/events/{id}"),
        format!("/v1/events/by-hash/{hash}"),
        "/v1/events".to_string(),
    ] {
        let r = server.get(&path).await;
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(code(&r.text().await.unwrap()), "unauthorized");
        let r = http
            .get(server.url(&path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
        // The digest itself is not a token.
        let r = http
            .get(server.url(&path))
            .bearer_auth(&digest)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = http
            .get(server.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(server.get(open).await.status(), 200, "{open}");
    }

    // No tokens on a non-loopback address: refused at start, naming the keys.
    let mut child = Server::spawn(
        &stored.db.url,
        &stored.lmdb(),
        &[("NEKHEBET_SERVE__LISTEN", "0.0.0.0:0")],
        Stdio::piped(),
    );
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("serve.tokens") && stderr.contains("serve.allow_anonymous"),
        "{stderr}"
    );
    let anonymous = stored.serve(&[
        ("NEKHEBET_SERVE__LISTEN", "0.0.0.0:0"),
        ("NEKHEBET_SERVE__ALLOW_ANONYMOUS", "true"),
    ]);
    let port = anonymous.addr.rsplit(':').next().unwrap();
    let r = http
        .get(format!("http://127.0.0.1:{port}/v1/events/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_a_client_that_trusts_the_certificate_and_refuses_plain_http() {
    let certs = tls_servers::Certs::generate();
    let (cert, key) = (certs.server_cert(), certs.server_key());
    let case = sample_served(&[
        ("NEKHEBET_SERVE__TLS_CERT", cert.to_str().unwrap()),
        ("NEKHEBET_SERVE__TLS_KEY", key.to_str().unwrap()),
    ])
    .await;
    let (server, stored) = (&case.server, &case.stored);
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.ca()).unwrap()).unwrap();
    let trusting = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let line = &stored.lines[7];
    let r = trusting
        .get(server.url(&format!("/v1/events/{}", header(line).id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), line.as_slice());
    // A client that does not trust the CA, and plain HTTP on the TLS port, get nothing.
    assert!(client().get(server.url("/healthz")).send().await.is_err());
    let plain = format!("http://{}/healthz", server.addr);
    assert!(client().get(plain).send().await.is_err());
    assert_eq!(
        trusting
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A foreign blob in LMDB (written by another process while `serve` runs) is never served, neither
/// by `GET /v1/events/{id}` nor by the stream: the read falls back to PostgreSQL's bytes and the
/// failure is counted.
/// Reads that arrive together are answered in shared pages (one PostgreSQL query, one LMDB read
/// transaction for many), and each request still gets exactly its own answer: its event's bytes by
/// id or by content hash, 404 for an absent one, PostgreSQL's copy where LMDB's blob fails its
/// check — in hybrid mode and with `store.mode = postgres`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_once_share_pages_and_each_gets_exactly_its_own_answer() {
    for mode in ["hybrid", "postgres"] {
        let case = sample_served(&[("NEKHEBET_STORE__MODE", mode)]).await;
        let (server, stored) = (&case.server, &case.stored);
        let (genuine, other) = (&stored.lines[3], &stored.lines[4]);
        stored.plant_foreign_blob(genuine, other).await;
        // (path, the answer expected: the bytes, or None for a 404)
        let mut asks: Vec<(String, Option<&Vec<u8>>)> = Vec::new();
        for (i, line) in stored.lines.iter().enumerate() {
            let h = header(line);
            asks.push((format!("/v1/events/{}", h.id), Some(line)));
            if i % 3 == 0 {
                asks.push((format!("/v1/events/by-hash/{}", h.payload_hash), Some(line)));
            }
            if i % 20 == 0 {
                asks.push((format!("/v1/events/{}", uuid::Uuid::new_v4()), None));
                asks.push((format!("/v1/events/{}", header(genuine).id), Some(genuine)));
            }
        }
        let http = client();
        let answers: Vec<(u16, Option<String>, Vec<u8>)> =
            futures::stream::iter(asks.iter().map(|(path, _)| {
                let r = http.get(server.url(path)).send();
                async move {
                    let r = r.await.unwrap();
                    let from = r
                        .headers()
                        .get(nekhebet_store::serve::SERVED_FROM)
                        .map(|v| v.to_str().unwrap().to_owned());
                    (r.status().as_u16(), from, r.bytes().await.unwrap().to_vec())
                }
            }))
            .buffered(96)
            .collect()
            .await;
        for ((path, expected), (status, from, body)) in asks.iter().zip(&answers) {
            match expected {
                Some(bytes) => {
                    assert_eq!(
                        *status,
                        200,
                        "{mode} {path}: {}",
                        String::from_utf8_lossy(body)
                    );
                    assert_eq!(body, *bytes, "{mode} {path}: exactly its own bytes");
                    let want = match (mode, *bytes == genuine) {
                        ("hybrid", false) => "lmdb",
                        _ => "postgres",
                    };
                    assert_eq!(from.as_deref(), Some(want), "{mode} {path}");
                }
                None => assert_eq!(
                    (*status, code(&String::from_utf8_lossy(body))),
                    (404, "not_found".to_string()),
                    "{mode} {path}"
                ),
            }
        }
        let pages = server
            .metric("nekhebet_serve_read_page_keys_count", &[])
            .await;
        let reads = server
            .metric("nekhebet_serve_read_page_keys_sum", &[])
            .await;
        assert_eq!(reads, asks.len() as f64, "{mode}: every read in a page");
        assert!(
            pages < reads / 4.0,
            "{mode}: {reads} reads in {pages} pages: they were not gathered"
        );
        if mode == "hybrid" {
            let planted = asks.iter().filter(|(_, e)| *e == Some(genuine)).count() as f64;
            assert_eq!(
                server
                    .metric("nekhebet_read_check_failures_total", &[("store", "lmdb")])
                    .await,
                planted,
                "each read of the planted blob checked it and refused it"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_blob_written_beside_the_server_is_never_served() {
    let case = sample_served(&[]).await;
    let (server, stored) = (&case.server, &case.stored);
    let (genuine, other) = (&stored.lines[3], &stored.lines[4]);
    let h = header(genuine);
    stored.plant_foreign_blob(genuine, other).await;
    let r = server.get(&format!("/v1/events/{}", h.id)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[nekhebet_store::serve::SERVED_FROM], "postgres");
    assert_eq!(r.bytes().await.unwrap(), genuine.as_slice());
    assert_eq!(
        server
            .metric("nekhebet_read_check_failures_total", &[("store", "lmdb")])
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("nekhebet_hybrid_lmdb_fallbacks_total", &[])
            .await,
        1.0
    );
    assert!(
        server.log_text().contains("fails its check"),
        "{}",
        server.log_text()
    );

    // The stream reads a page at once: the same policy, PostgreSQL's copy in the blob's place.
    let mut stream = Sse::open(server, "/v1/stream?from=0", None).await;
    let all = stream.take(2000).await;
    assert_eq!(all, stored.commit_order().await, "the stored bytes only");
    assert!(all.iter().any(|(_, bytes)| bytes == genuine));
    assert_eq!(
        all.iter().filter(|(_, bytes)| bytes == other).count(),
        1,
        "the foreign blob was sent in the genuine envelope's place"
    );
    assert_eq!(
        server
            .metric("nekhebet_read_check_failures_total", &[("store", "lmdb")])
            .await,
        2.0
    );
    assert_eq!(
        server
            .metric("nekhebet_hybrid_lmdb_fallbacks_total", &[])
            .await,
        2.0
    );
}

/// Thousands of connections that never send a request (and a few that send half a head, slowly)
/// do not keep others from being served, and the header timeout closes them; beyond
/// `serve.max_connections` new connections wait their turn instead of exhausting the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_are_cut_and_others_are_still_served() {
    let case = sample_served(&[("NEKHEBET_SERVE__HEADER_TIMEOUT_MS", "30000")]).await;
    let (server, stored) = (&case.server, &case.stored);
    let id = header(&stored.lines[0]).id;
    let mut idle = Vec::new();
    for _ in 0..3000 {
        idle.push(TcpStream::connect(&server.addr).unwrap());
    }
    for s in idle.iter_mut().take(50) {
        s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
    }
    // A kept-alive connection that goes quiet after its first request.
    let mut kept = TcpStream::connect(&server.addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"ok\n") {
        let mut buf = [0u8; 512];
        let n = kept.read(&mut buf).unwrap();
        assert!(n > 0, "the kept-alive connection closed after one request");
        answer.extend_from_slice(&buf[..n]);
    }
    answered(server, id).await;
    // Answered while every idle connection was still held: the request did not wait for them.
    let held = idle.iter().step_by(50).filter(|s| held_open(s)).count();
    assert_eq!(
        held, 60,
        "idle connections the server had closed before answering"
    );
    // Then the header timeout closes every one of them.
    server.wait_cut("header_timeout", 3001).await;
    for s in idle.iter().step_by(50).chain([&kept]) {
        assert!(!held_open(s), "a connection is still open");
    }
    drop(idle);

    // At the connection limit, a new client waits for a slot (freed by the header timeout)
    // instead of the server running out of file descriptors.
    let server = stored.serve(&[
        ("NEKHEBET_SERVE__HEADER_TIMEOUT_MS", "1000"),
        ("NEKHEBET_SERVE__MAX_CONNECTIONS", "64"),
    ]);
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    answered(&server, id).await;
    drop(idle);
}

/// Clients that request a large listing and never read it hold the server's memory to a few
/// chunks each (the listing streams from a portal with backpressure), the others are still served,
/// and the write timeout cuts them, which frees their listing slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_a_large_listing_do_not_grow_the_server() {
    let _serial = SERIAL.lock().await;
    // 2,500 envelopes of ~32 KiB: one listing is ~80 MB, four would be ~320 MB if buffered.
    let lines = padded("bulky", 61, 2500, 32 * 1024);
    let stored = Stored::with(lines).await;
    let server = stored.serve(&[
        ("NEKHEBET_SERVE__WRITE_TIMEOUT_MS", "3000"),
        ("NEKHEBET_SERVE__MAX_CONCURRENT_LISTINGS", "4"),
    ]);
    // Warm up (allocator, statement caches), then measure.
    let r = server.get("/v1/events?limit=10000").await;
    let warm = r.bytes().await.unwrap().len();
    assert!(warm > 2500 * 32 * 1024, "{warm} bytes listed");
    let before = server.rss_kib();

    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.write_all(b"GET /v1/events?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = server.rss_kib();
    let id = header(&stored.lines[9]).id;
    let r = server.get(&format!("/v1/events/{id}")).await;
    assert_eq!(r.status(), 200, "others are still served");
    assert_eq!(r.bytes().await.unwrap(), stored.lines[9].as_slice());
    let grown_mib = during.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "RSS grew by {grown_mib} MiB with 4 stalled listings of ~80 MB each (before {before} KiB, during {during} KiB)"
    );
    // Two of six found every listing slot taken.
    assert_eq!(
        server
            .metric("nekhebet_http_requests_total", &[("status", "503")])
            .await,
        2.0
    );

    // The write timeout cuts the stalled clients; their slots serve the next listing in full.
    server.wait_cut("write_timeout", 4).await;
    assert_eq!(server.listed_lines("/v1/events?limit=10000").await, 2500);
    drop(stalled);
    eprintln!("RSS before {before} KiB, with 4 stalled listings {during} KiB (+{grown_mib} MiB)");
}

/// `serve` beside a writer on the same LMDB: started on an empty store, it reads what another
/// process (`import`) writes afterwards, from LMDB, also after that process grew the map far past
/// the size `serve` mapped (MDB_MAP_RESIZED is adopted, not an error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_beside_a_writer_reads_what_it_writes_while_the_map_grows() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    let small_map = [("NEKHEBET_LMDB__MAP_SIZE", "1048576")];
    let server = Server::start(&db.url, &lmdb, &small_map);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200);

    // 2,000 envelopes of ~8 KiB: the writer doubles a 1 MiB map about five times.
    let lines = padded("beside", 62, 2000, 8 * 1024);
    let file = dir.path().join("in.jsonl");
    let text: Vec<u8> = lines
        .iter()
        .flat_map(|l| [&l[..], b"\n"].concat())
        .collect();
    std::fs::write(&file, text).unwrap();
    let out = cli_on(
        &db.url,
        &lmdb,
        &["import", file.to_str().unwrap()],
        &small_map,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for line in lines.iter().step_by(97).chain(lines.last()) {
        let r = server.get(&format!("/v1/events/{}", header(line).id)).await;
        assert_eq!(r.status(), 200, "{}", server.log_text());
        assert_eq!(r.headers()[nekhebet_store::serve::SERVED_FROM], "lmdb");
        assert_eq!(r.bytes().await.unwrap(), line.as_slice());
    }
    assert!(
        server.log_text().contains("adopted its size"),
        "the map was grown past serve's mapping: {}",
        server.log_text()
    );
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200);
}

/// `serve` needs nothing but SELECT: it runs as a login role in `nekhebet_reader`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_as_a_login_role_in_nekhebet_reader() {
    let _serial = SERIAL.lock().await;
    let stored = Stored::sample().await;
    let login = common::pg::random_name("api");
    stored
        .db
        .client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {login} LOGIN PASSWORD 'pw' IN ROLE nekhebet_reader;
             GRANT CONNECT ON DATABASE {db} TO {login};",
            db = stored.db.name
        ))
        .await
        .unwrap();
    let url = stored
        .db
        .url
        .replacen("postgres:nekhebet@", &format!("{login}:pw@"), 1);
    assert_ne!(
        url, stored.db.url,
        "the test server's URL has the user:password form"
    );
    let server = Server::start(&url, &stored.lmdb(), &[]);
    assert_eq!(server.get("/readyz").await.status(), 200);
    let line = &stored.lines[11];
    let r = server.get(&format!("/v1/events/{}", header(line).id)).await;
    assert_eq!(r.status(), 200, "{}", server.log_text());
    assert_eq!(r.bytes().await.unwrap(), line.as_slice());
    assert_eq!(server.listed_lines("/v1/events?limit=2000").await, 2000);
}

/// `/v1/stream` from the start sends every stored envelope exactly once, in PostgreSQL's commit
/// order and as stored byte for byte; then, still open, what another process imports; and a
/// client resuming with `Last-Event-ID` or `from` gets exactly what follows its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_every_envelope_once_in_commit_order_then_live_and_resumes_where_asked() {
    let case = sample_served(&[]).await;
    let (server, stored) = (&case.server, &case.stored);
    let mut stream = Sse::open(server, "/v1/stream?from=0", None).await;
    let first = stream.take(2000).await;
    assert_eq!(
        first,
        stored.commit_order().await,
        "(txid, seq) order, the stored bytes"
    );
    assert_eq!(
        sorted(first.iter().map(|e| e.1.clone()).collect()),
        sorted(stored.lines.clone()),
        "each imported envelope exactly once, byte for byte"
    );

    // Live: imported by another process while the stream is open.
    let more = padded("later", 71, 300, 100);
    stored.import(&more);
    let live = stream.take(300).await;
    let all = stored.commit_order().await;
    assert_eq!(all.len(), 2300);
    assert_eq!(live, all[2000..]);
    assert_eq!(
        sorted(live.into_iter().map(|e| e.1).collect()),
        sorted(more)
    );

    // Resuming: Last-Event-ID wins over `from` (EventSource reconnects with both).
    let mut resumed = Sse::open(server, "/v1/stream?from=0", Some(&all[999].0)).await;
    assert_eq!(resumed.take(1300).await, all[1000..]);
    let mut by_query = Sse::open(server, &format!("/v1/stream?from={}", all[2298].0), None).await;
    assert_eq!(by_query.take(1).await, all[2299..]);
    // At the live edge none repeats: the next event of every stream is the next one stored.
    stored.import(&padded("marker", 72, 1, 10));
    let all = stored.commit_order().await;
    assert_eq!(all.len(), 2301);
    for s in [&mut stream, &mut resumed, &mut by_query] {
        assert_eq!(s.take(1).await, all[2300..]);
    }

    let detail =
        "expected 0 (the start) or an event's position <txid>-<seq> as its id: line gave it";
    assert_eq!(
        get_raw(&server.addr, "/v1/stream?from=7"),
        (
            400,
            format!(r#"{{"error":"bad_position","detail":"from = \"7\": {detail}"}}"#)
        )
    );
    for (target, expected) in [
        ("/v1/stream?from=1-x", "bad_position"),
        ("/v1/stream?from=-1-2", "bad_position"),
        ("/v1/stream?from=0&from=0", "bad_parameter"),
        ("/v1/stream?since=0", "unknown_parameter"),
    ] {
        let (status, body) = get_raw(&server.addr, target);
        assert_eq!(
            (status, code(&body)),
            (400, expected.to_string()),
            "{target}: {body}"
        );
    }
    let (status, body) = raw(
        &server.addr,
        b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 12\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (status, body),
        (
            400,
            format!(r#"{{"error":"bad_position","detail":"Last-Event-ID = \"12\": {detail}"}}"#)
        )
    );
}

/// The ordering trap: a transaction that took a lower seq commits after one with a higher seq. A
/// stream by seq would send the higher one and skip the lower for good; the stream waits for the
/// commit horizon and sends both, the lower first, then what follows, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_waits_for_a_transaction_that_commits_late_and_misses_nothing() {
    let case = sample_served(&[]).await;
    let (server, stored) = (&case.server, &case.stored);
    let mut stream = Sse::open(server, "/v1/stream?from=0", None).await;
    assert_eq!(stream.take(2000).await.len(), 2000);

    let late = padded("late", 81, 2, 10);
    let t1 = stored
        .db
        .insert_held(&EventRow::of_envelope(&late[0]))
        .await;
    let t2 = stored
        .db
        .insert_held(&EventRow::of_envelope(&late[1]))
        .await;
    assert!(t1.seq < t2.seq);
    t2.commit().await;
    // Committed after the open transaction too: held back by it as well (another payload than
    // the late ones': the same content hash would wait for their transaction).
    let marker = padded("marker", 82, 1, 11);
    stored.import(&marker);
    t1.commit().await;

    let next = stream.take(3).await;
    let bytes: Vec<&Vec<u8>> = next.iter().map(|e| &e.1).collect();
    assert_eq!(
        bytes,
        [&late[0], &late[1], &marker[0]],
        "the lower seq first, none skipped"
    );
    assert_eq!(next, stored.commit_order().await[2000..]);
}

/// Streams whose clients never read hold at most a page each: the server's memory does not grow
/// with the store, the slots are bounded (503 `busy`), the write timeout cuts the stalled clients,
/// and their slots then stream the whole store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_clients_that_never_read_do_not_grow_the_server_and_are_cut() {
    let _serial = SERIAL.lock().await;
    // 2,500 envelopes of ~32 KiB (~80 MB) each stream would send.
    let lines = padded("bulky-stream", 63, 2500, 32 * 1024);
    let stored = Stored::with(lines).await;
    let server = stored.serve(&[
        ("NEKHEBET_SERVE__WRITE_TIMEOUT_MS", "3000"),
        ("NEKHEBET_SERVE__MAX_CONCURRENT_STREAMS", "4"),
    ]);
    // Warm up (allocator, statement caches) with a stream that stays open at the live edge and
    // holds one of the four slots.
    let mut warm = Sse::open(&server, "/v1/stream", None).await;
    assert_eq!(warm.take(2500).await.len(), 2500);
    let before = server.peak_rss_kib();

    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.write_all(b"GET /v1/stream?from=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stalled.push(s);
    }
    // Three of six found every stream slot taken.
    let busy = || async {
        server
            .metric(
                "nekhebet_http_requests_total",
                &[("route", "/v1/stream"), ("status", "503")],
            )
            .await
    };
    common::kafka::wait_for(Duration::from_secs(60), "three streams refused", || async {
        (busy().await >= 3.0).then_some(())
    })
    .await;
    assert_eq!(busy().await, 3.0);
    // Cut once they held their pages and socket buffers for serve.write_timeout_ms: the peak
    // resident memory since the warm-up covers the whole stall.
    server.wait_cut("write_timeout", 3).await;
    let during = server.peak_rss_kib();
    let grown_mib = during.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "peak RSS grew by {grown_mib} MiB with 3 stalled streams of ~80 MB each (before {before} KiB, during {during} KiB)"
    );
    let mut after = Sse::open(&server, "/v1/stream?from=0", None).await;
    assert_eq!(after.take(2500).await, stored.commit_order().await);
    drop(stalled);
    drop(warm);
    eprintln!("RSS before {before} KiB, with 3 stalled streams {during} KiB (+{grown_mib} MiB)");
}
