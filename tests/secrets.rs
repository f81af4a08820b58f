//! Secrets stay secret: the PostgreSQL password in `postgres.url` (every way a connection string
//! can carry one) and the `kafka.properties` secrets never appear in the binary's output — logs
//! (at trace level), errors, or the `config` dump, which masks them. And no `unsafe` of our own.
//!
//! Needs the local services (`scripts/services up && source .local/services.env`).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pg::TestDb;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nekhebet-store")
}

/// A password nobody would print by accident: `tag` + random hex.
fn secret(tag: &str) -> String {
    format!("{tag}{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// The shared server's address (`NEKHEBET_POSTGRES__URL`), e.g. `127.0.0.1:55432`.
fn pg_hostport() -> String {
    let url = common::pg::admin_url();
    let after_at = url.rsplit_once('@').expect("user@host in the URL").1;
    after_at.split('/').next().unwrap().to_string()
}

fn closed_port() -> u16 {
    // Bound, then released: nothing listens there for the next moments.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the binary with a clean NEKHEBET_* environment plus `env`; returns its output. Logs at
/// trace level, so that nothing hides below the default level.
fn run(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "trace")
        .env("NEKHEBET_TELEMETRY__LISTEN", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("NEKHEBET_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn nekhebet-store");
    // Reading the pipes on threads: trace output can exceed a pipe buffer.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).ok();
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut b).ok();
        b
    });
    let deadline = started + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            // A short run of a long-running command: SIGTERM, as an operator would.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    };
    (output, started.elapsed())
}

fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_absent(what: &str, output: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !output.contains(s),
            "{what}: the secret {s:?} appears in the output:\n{output}"
        );
    }
}

/// The last non-empty line of stderr (the error an operator sees).
fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

#[test]
fn postgres_password_never_appears_in_output() {
    let hp = pg_hostport();
    let closed = closed_port();
    let lmdb = tempfile::tempdir().unwrap();
    let lmdb_path = lmdb.path().display().to_string();

    struct Case {
        name: &'static str,
        url: String,
        /// Every string that must not appear.
        secrets: Vec<String>,
        /// What `config` must print instead (None: `config` refuses the URL).
        shown: Option<String>,
    }
    let mut cases = Vec::new();
    let s = secret("PgPw");
    cases.push(Case {
        name: "URL userinfo, real server, wrong password",
        url: format!("postgres://postgres:{s}@{hp}/postgres"),
        shown: Some(format!("postgres://postgres:***@{hp}/postgres")),
        secrets: vec![s],
    });
    let s = secret("PgPw");
    cases.push(Case {
        name: "URL userinfo, closed port",
        url: format!("postgres://postgres:{s}@127.0.0.1:{closed}/postgres"),
        shown: Some(format!(
            "postgres://postgres:***@127.0.0.1:{closed}/postgres"
        )),
        secrets: vec![s],
    });
    let s = secret("PgPw");
    cases.push(Case {
        name: "URL password query parameter, wrong password",
        url: format!("postgres://postgres@{hp}/postgres?password={s}&application_name=x"),
        shown: Some(format!(
            "postgres://postgres@{hp}/postgres?password=***&application_name=x"
        )),
        secrets: vec![s],
    });
    let (a, b) = (secret("PgPwA"), secret("PgPwB"));
    cases.push(Case {
        name: "URL with a raw '@' inside the password",
        url: format!("postgres://postgres:{a}@{b}@{hp}/postgres"),
        shown: Some(format!("postgres://postgres:***@{hp}/postgres")),
        secrets: vec![a, b],
    });
    let s = secret("PgPw");
    cases.push(Case {
        name: "URL, percent-encoded password",
        url: format!("postgres://postgres:{s}%21%40@{hp}/postgres"),
        shown: Some(format!("postgres://postgres:***@{hp}/postgres")),
        secrets: vec![s.clone(), format!("{s}!@")],
    });
    let (a, b) = (secret("PgPwA"), secret("PgPwB"));
    let (host, port) = hp.split_once(':').unwrap();
    cases.push(Case {
        name: "key=value string, quoted password with a space",
        url: format!("host={host} port={port} user=postgres password='{a} {b}' dbname=postgres"),
        shown: Some(format!(
            "host={host} port={port} user=postgres password=*** dbname=postgres"
        )),
        secrets: vec![a, b],
    });
    let s = secret("PgPw");
    cases.push(Case {
        name: "URL that does not parse (bad port)",
        url: format!("postgres://postgres:{s}@127.0.0.1:notaport/postgres"),
        shown: None,
        secrets: vec![s],
    });

    println!(
        "\n{:<50} {:<8} {:>6} {:>7}  error shown",
        "postgres.url", "command", "exit", "time"
    );
    for case in &cases {
        let secrets: Vec<&str> = case.secrets.iter().map(String::as_str).collect();
        let env = [
            ("NEKHEBET_POSTGRES__URL", case.url.as_str()),
            ("NEKHEBET_POSTGRES__CONNECT_TIMEOUT_MS", "3000"),
            ("NEKHEBET_POSTGRES__POOL_TIMEOUT_MS", "3000"),
            ("NEKHEBET_LMDB__PATH", lmdb_path.as_str()),
            ("NEKHEBET_KAFKA__BROKERS", "127.0.0.1:1"),
        ];
        for args in [
            &["migrate"][..],
            &["ingest"],
            &["get", "--hash", "00"],
            &["config"],
        ] {
            let (o, took) = run(args, &env, Duration::from_secs(20));
            let all = text(&o);
            let what = format!("{} / {}", case.name, args[0]);
            assert_absent(&what, &all, &secrets);
            match (args[0], &case.shown) {
                ("config", Some(shown)) => {
                    assert!(o.status.success(), "{what}: {all}");
                    let stdout = String::from_utf8_lossy(&o.stdout);
                    assert!(
                        stdout.contains(&format!("url = {}", toml_string(shown))),
                        "{what}: expected {shown} in\n{stdout}"
                    );
                }
                _ => {
                    // Nothing can connect with these URLs: every command fails, with a reason.
                    assert_eq!(o.status.code(), Some(2), "{what}: {all}");
                    assert!(took < Duration::from_secs(15), "{what}: took {took:?}");
                }
            }
            println!(
                "{:<50} {:<8} {:>6} {:>6.1?}  {}",
                case.name.chars().take(50).collect::<String>(),
                args[0],
                o.status.code().map_or("signal".into(), |c| c.to_string()),
                took,
                if o.status.success() {
                    String::new()
                } else {
                    last_line(&o)
                }
            );
        }
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_property_secrets_are_masked_and_never_logged() {
    let db = TestDb::new().await;
    let lmdb = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sasl = secret("SaslPw");
    let keypw = secret("KeyPw");
    let oauth = secret("OauthSecret");

    // An encrypted client key whose password is NOT `keypw`: client creation fails on it.
    let key = dir.path().join("client.key");
    let gen = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes256",
        ])
        .arg("-pass")
        .arg("pass:the-right-one")
        .arg("-out")
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );

    let config_file = |name: &str, props: &[(&str, &str)]| -> String {
        let mut toml = String::from("[kafka.properties]\n");
        for (k, v) in props {
            toml.push_str(&format!("{k:?} = {v:?}\n"));
        }
        let path = dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        path.display().to_string()
    };
    let sasl_file = config_file(
        "sasl.toml",
        &[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "nekhebet"),
            ("sasl.password", &sasl),
            // librdkafka's own debug output (it prints its configuration, redacting secrets).
            ("debug", "security,broker,conf"),
        ],
    );
    let key_file = config_file(
        "ssl-key.toml",
        &[
            ("security.protocol", "SSL"),
            ("ssl.key.location", &key.display().to_string()),
            ("ssl.key.password", &keypw),
        ],
    );
    let oauth_file = config_file(
        "oauth.toml",
        &[
            ("security.protocol", "PLAINTEXT"),
            ("sasl.oauthbearer.client.secret", &oauth),
        ],
    );
    let brokers = std::env::var("NEKHEBET_KAFKA__BROKERS").expect("NEKHEBET_KAFKA__BROKERS");
    let lmdb_path = lmdb.path().display().to_string();
    let topic = common::kafka::random_name("secrets");
    let env = [
        ("NEKHEBET_POSTGRES__URL", db.url.as_str()),
        ("NEKHEBET_LMDB__PATH", lmdb_path.as_str()),
        ("NEKHEBET_KAFKA__BROKERS", brokers.as_str()),
        ("NEKHEBET_KAFKA__TOPICS", &format!("[\"{topic}\"]")),
        ("NEKHEBET_KAFKA__SESSION_TIMEOUT_MS", "10000"),
        ("NEKHEBET_KAFKA__DRAIN_TIMEOUT_MS", "5000"),
        ("NEKHEBET_SHUTDOWN__TIMEOUT_MS", "5000"),
    ];
    let secrets = [sasl.as_str(), keypw.as_str(), oauth.as_str()];

    // `config` masks every secret property and keeps the others.
    for file in [&sasl_file, &key_file, &oauth_file] {
        let (o, _) = run(&["--config", file, "config"], &env, Duration::from_secs(20));
        let all = text(&o);
        assert!(o.status.success(), "{all}");
        assert_absent("config", &all, &secrets);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains("***"), "{stdout}");
        assert!(
            stdout.contains("\"sasl.username\" = \"nekhebet\"")
                || stdout.contains("\"ssl.key.location\"")
                || stdout.contains("\"security.protocol\" = \"PLAINTEXT\""),
            "{stdout}"
        );
    }

    // `ingest` with SASL credentials against a plaintext broker: it fails to authenticate for
    // a while (logging at trace level, librdkafka debugging on), then stops on SIGTERM.
    let (o, took) = run(
        &["--config", &sasl_file, "ingest"],
        &env,
        Duration::from_secs(8),
    );
    let all = text(&o);
    assert_absent("ingest (SASL)", &all, &secrets);
    assert!(
        all.contains("sasl.password"),
        "librdkafka's config dump was expected:\n{all}"
    );
    println!("ingest with SASL against a plaintext broker: {} after {took:.1?}, {} bytes of logs, no secret", o.status, all.len());

    // `ingest` with an encrypted client key and the wrong key password: refused at start.
    let (o, took) = run(
        &["--config", &key_file, "ingest"],
        &env,
        Duration::from_secs(20),
    );
    let all = text(&o);
    assert_absent("ingest (ssl.key.password)", &all, &secrets);
    assert_eq!(o.status.code(), Some(2), "{all}");
    assert!(all.contains("ssl.key"), "{all}");
    println!(
        "ingest with a wrong ssl.key.password: exit 2 after {took:.1?}: {}",
        last_line(&o)
    );

    // An OAuth client secret: this librdkafka build refuses the property, and rust-rdkafka's
    // error quotes the value (masked since kafka::redact_error). Elsewhere it runs until SIGTERM.
    let (o, took) = run(
        &["--config", &oauth_file, "ingest"],
        &env,
        Duration::from_secs(8),
    );
    let all = text(&o);
    assert_absent("ingest (sasl.oauthbearer.client.secret)", &all, &secrets);
    println!(
        "ingest with an OAuth client secret: {} after {took:.1?}: {}",
        o.status,
        last_line(&o)
    );
}

/// `#![deny(unsafe_code)]` holds for the library; the only exceptions are the heed calls that
/// heed itself marks unsafe (opening an environment, setting its sync flags, resizing its map) and
/// mimalloc's option getter and setter (`src/alloc.rs`, C functions), each with
/// `#[allow(unsafe_code)]` and a SAFETY comment. Tests, benches and the fuzz target have none.
#[test]
fn no_unsafe_outside_the_heed_and_allocator_calls() {
    fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                rs_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["src", "tests", "benches", "fuzz"] {
        rs_files(&root.join(d), &mut files);
    }
    let allowed: &[(&str, usize)] = &[
        ("src/store/lmdb/mod.rs", 5),
        ("src/dev/ceiling.rs", 1),
        ("src/dev/limit.rs", 1),
        ("src/alloc.rs", 2),
    ];
    let mut found = std::collections::BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().display().to_string();
        let src = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = src.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            // The token, not words like "unsafe_code" or strings that mention it.
            let uses = code
                .match_indices("unsafe")
                .filter(|(at, _)| {
                    let after = code[at + 6..].chars().next();
                    let before = code[..*at].chars().last();
                    !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                        && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"')
                })
                .count();
            if uses == 0 || rel == "tests/secrets.rs" {
                continue;
            }
            *found.entry(rel.clone()).or_insert(0usize) += uses;
            let context = lines[i.saturating_sub(6)..i].join("\n");
            assert!(
                context.contains("#[allow(unsafe_code)]") && context.contains("SAFETY"),
                "{rel}:{}: unsafe without #[allow(unsafe_code)] and a SAFETY comment",
                i + 1
            );
            assert!(
                code.contains("opts.open(")
                    || code.contains(".resize(")
                    || code.contains("libmimalloc_sys::mi_option_get(")
                    || code.contains("libmimalloc_sys::mi_option_set(")
                    || code.trim() == "unsafe {",
                "{rel}:{}: unsafe that is not a heed or allocator call: {line}",
                i + 1
            );
        }
    }
    let allowed: std::collections::BTreeMap<String, usize> =
        allowed.iter().map(|(f, n)| (f.to_string(), *n)).collect();
    assert_eq!(found, allowed, "unsafe sites");
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    assert!(lib.contains("#![deny(unsafe_code)]"));
    let main = std::fs::read_to_string(root.join("src/main.rs")).unwrap();
    assert!(
        main.contains("#![forbid(unsafe_code)]"),
        "src/main.rs must forbid unsafe_code"
    );
}
