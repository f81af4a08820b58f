//! TLS to PostgreSQL (`postgres.sslmode`, `postgres.ssl_root_cert`; rustls) and to Kafka (SSL and
//! SASL_SSL/SCRAM through `kafka.properties`), each against a throwaway local server whose
//! certificate comes from a CA made for the test (`scripts/tls-certs`). The servers are separate
//! from the shared services (tests/common/tls.rs starts and always stops them). The worker's
//! PostgreSQL for the Kafka test is the shared one (`source .local/services.env`).

mod common;
#[path = "common/tls.rs"]
mod tls_servers;

use common::Committed;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka as k;
use common::pg::TestDb;
use nekhebet_store::config::{Config, PostgresConfig, SslMode};
use nekhebet_store::dev::signing::{sign, EnvelopeSpec};
use nekhebet_store::store::{Item, PgStore};
use tls_servers::{Certs, TlsKafka, TlsPostgres};

/// One throwaway server at a time: a 2-core machine starting PostgreSQL and a JVM together slows
/// both.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bin() -> String {
    env!("CARGO_BIN_EXE_nekhebet-store").to_string()
}

fn pg_cfg(url: String, sslmode: Option<SslMode>, ca: Option<PathBuf>) -> PostgresConfig {
    PostgresConfig {
        url,
        sslmode,
        ssl_root_cert: ca,
        pool_size: 2,
        concurrent_batches: 1,
        connect_timeout_ms: 5_000,
        pool_timeout_ms: 5_000,
    }
}

fn envelope(seq: u64) -> nekhebet_store::envelope::Envelope {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let wire = sign(
        &EnvelopeSpec {
            event_type: "omen.observed".into(),
            source: "tls-test".into(),
            key_id: "tls-key".into(),
            payload: serde_json::json!({ "seq": seq }),
            issued_at: None,
            expires_at: None,
            nonce: None,
            id: None,
        },
        &key,
    );
    nekhebet_store::envelope::decode(wire.into(), &Default::default()).expect("decodes")
}

/// Whether the session of this pooled connection is encrypted, and with which protocol.
async fn session_tls(store: &PgStore) -> (bool, Option<String>) {
    let client = store.pool().get().await.expect("pooled connection");
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    (row.get(0), row.get(1))
}

async fn connect_err(cfg: &PostgresConfig) -> String {
    match PgStore::connect(cfg).await {
        Ok(_) => panic!("connected with {cfg:?}, expected a refusal"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmodes_against_a_hostssl_only_server() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let certs = Certs::generate();
    let server = TlsPostgres::start(&certs);
    eprintln!(
        "TLS PostgreSQL ({}) up on 127.0.0.1:{} in {:.1?}",
        server.version,
        server.port,
        started.elapsed()
    );
    let ip = server.url("127.0.0.1");
    let localhost = server.url("localhost");

    // verify-full with the right CA: migrate and save through TLS 1.3.
    let store = PgStore::connect(&pg_cfg(
        ip.clone(),
        Some(SslMode::VerifyFull),
        Some(certs.ca()),
    ))
    .await
    .unwrap_or_else(|e| panic!("verify-full: {e}\n{}", server.log()));
    assert!(!store.migrate().await.expect("migrate over TLS").is_empty());
    let env = envelope(1);
    let id = env.header.id;
    let bytes = env.bytes.clone();
    store
        .save_batch(&[Item {
            envelope: env,
            pos: None,
        }])
        .await
        .expect("save over TLS")
        .committed();
    assert_eq!(store.get(id).await.unwrap().as_deref(), Some(&bytes[..]));
    let (ssl, version) = session_tls(&store).await;
    assert!(ssl, "verify-full session is not encrypted");
    eprintln!("verify-full: migrated and saved over {version:?}");

    // The wrong CA: refused, and the error says why.
    let e = connect_err(&pg_cfg(
        ip.clone(),
        Some(SslMode::VerifyFull),
        Some(certs.other_ca()),
    ))
    .await;
    eprintln!("verify-full, wrong CA: {e}");
    assert!(
        e.contains("invalid peer certificate") && e.contains("UnknownIssuer"),
        "{e}"
    );
    let e = connect_err(&pg_cfg(
        ip.clone(),
        Some(SslMode::VerifyCa),
        Some(certs.other_ca()),
    ))
    .await;
    assert!(e.contains("UnknownIssuer"), "verify-ca, wrong CA: {e}");
    let e = connect_err(&pg_cfg(
        ip.clone(),
        Some(SslMode::Require),
        Some(certs.other_ca()),
    ))
    .await;
    assert!(
        e.contains("UnknownIssuer"),
        "require with a CA verifies the chain: {e}"
    );

    // The certificate names 127.0.0.1 only: verify-full refuses "localhost", verify-ca accepts it.
    let e = connect_err(&pg_cfg(
        localhost.clone(),
        Some(SslMode::VerifyFull),
        Some(certs.ca()),
    ))
    .await;
    eprintln!("verify-full, wrong name: {e}");
    assert!(e.contains("not valid for name \"localhost\""), "{e}");
    let s = PgStore::connect(&pg_cfg(
        localhost.clone(),
        Some(SslMode::VerifyCa),
        Some(certs.ca()),
    ))
    .await
    .expect("verify-ca does not check the name");
    assert!(session_tls(&s).await.0);

    // require and prefer without a CA: encrypted, unverified (libpq's semantics).
    for mode in [SslMode::Require, SslMode::Prefer] {
        let s = PgStore::connect(&pg_cfg(ip.clone(), Some(mode), None))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(session_tls(&s).await.0, "{mode} session is not encrypted");
    }
    // A URL with libpq's parameters instead of the config keys.
    let url = format!(
        "{ip}?sslmode=verify-full&sslrootcert={}",
        certs.ca().display()
    );
    let s = PgStore::connect(&pg_cfg(url, None, None))
        .await
        .expect("sslmode/sslrootcert in the URL");
    assert!(session_tls(&s).await.0);

    // disable: the server (hostssl only) refuses the plaintext connection.
    let e = connect_err(&pg_cfg(ip.clone(), Some(SslMode::Disable), None)).await;
    eprintln!("disable: {e}");
    assert!(e.contains("no encryption") && e.contains("28000"), "{e}");

    // Through the binary and the environment: `migrate` succeeds with the CA and fails loudly
    // (exit 2, the reason on stderr, no password) with the wrong one.
    let migrate = |ca: &PathBuf| {
        Command::new(bin())
            .arg("migrate")
            .env("NEKHEBET_POSTGRES__URL", &ip)
            .env("NEKHEBET_POSTGRES__SSLMODE", "verify-full")
            .env("NEKHEBET_POSTGRES__SSL_ROOT_CERT", ca)
            .env_remove("NEKHEBET_CONFIG")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run migrate")
    };
    let ok = migrate(&certs.ca());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("schema is up to date"));
    let bad = migrate(&certs.other_ca());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    eprintln!(
        "migrate, wrong CA: exit {:?}: {}",
        bad.status.code(),
        stderr.trim()
    );
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(!stderr.contains(tls_servers::PG_PASSWORD), "{stderr}");
    drop(server);
    eprintln!("PostgreSQL TLS test: {:.1?}", started.elapsed());
}

/// Publishes `n` signed envelopes and `poison` garbage values through `brokers` (plaintext setup
/// listener).
async fn publish(brokers: &str, topic: &str, n: u64, poison: u64) {
    let producer: rdkafka::producer::FutureProducer =
        nekhebet_store::kafka::producer_config(brokers, &BTreeMap::new())
            .create()
            .expect("producer");
    let key = ed25519_dalek::SigningKey::from_bytes(&[11u8; 32]);
    for i in 0..n + poison {
        let value = if i < n {
            sign(
                &EnvelopeSpec {
                    event_type: "omen.observed".into(),
                    source: "tls-kafka".into(),
                    key_id: "tls-key".into(),
                    payload: serde_json::json!({ "seq": i, "topic": topic }),
                    issued_at: None,
                    expires_at: None,
                    nonce: None,
                    id: None,
                },
                &key,
            )
        } else {
            b"{not json".to_vec()
        };
        producer
            .send(
                rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic).payload(&value[..]),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("publish");
    }
}

fn tls_worker_config(
    db: &TestDb,
    lmdb: &std::path::Path,
    brokers: String,
    topic: &str,
    properties: &[(&str, String)],
) -> Config {
    let mut c = k::worker_config(&db.url, lmdb, topic, &k::random_name("tls-group"));
    c.kafka.brokers = brokers;
    c.kafka.properties = properties
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    c.shutdown.timeout_ms = 10_000;
    c
}

/// A misconfiguration: name, `kafka.properties`, log lines of which one must appear.
type WrongCase = (
    &'static str,
    Vec<(&'static str, String)>,
    &'static [&'static str],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_ssl_and_sasl_ssl_through_kafka_properties() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let certs = Certs::generate();
    let kafka = TlsKafka::start(&certs);
    eprintln!(
        "TLS Kafka up (SSL {}, SASL_SSL {}) in {:.1?}",
        kafka.ssl(),
        kafka.sasl_ssl(),
        started.elapsed()
    );
    let ca = certs.ca().display().to_string();
    let db = TestDb::new().await;

    // SSL: the worker consumes, stores and dead-letters over the TLS listener only.
    let topic = k::random_name("tls-ssl");
    nekhebet_store::kafka::ensure_topics(&kafka.plaintext(), &BTreeMap::new(), &[(&topic, 2)])
        .await
        .expect("create topic");
    publish(&kafka.plaintext(), &topic, 20, 2).await;
    let lmdb = tempfile::tempdir().unwrap();
    let ssl_props = [
        ("security.protocol", "SSL".to_string()),
        ("ssl.ca.location", ca.clone()),
    ];
    let config = tls_worker_config(&db, lmdb.path(), kafka.ssl(), &topic, &ssl_props);
    let report = k::ingest_until_caught_up(&config).await;
    assert_eq!(
        (report.consumed, report.stored, report.rejected),
        (22, 20, 2),
        "{report:#?}"
    );
    assert_eq!(report.dlq_published, 2, "{report:#?}");

    // SASL_SSL with SCRAM-SHA-256.
    let topic2 = k::random_name("tls-sasl");
    nekhebet_store::kafka::ensure_topics(&kafka.plaintext(), &BTreeMap::new(), &[(&topic2, 1)])
        .await
        .expect("create topic");
    publish(&kafka.plaintext(), &topic2, 10, 0).await;
    let lmdb2 = tempfile::tempdir().unwrap();
    let sasl_props = [
        ("security.protocol", "SASL_SSL".to_string()),
        ("ssl.ca.location", ca.clone()),
        ("sasl.mechanism", "SCRAM-SHA-256".to_string()),
        ("sasl.username", tls_servers::KAFKA_USER.to_string()),
        ("sasl.password", tls_servers::KAFKA_PASSWORD.to_string()),
    ];
    let config2 = tls_worker_config(&db, lmdb2.path(), kafka.sasl_ssl(), &topic2, &sasl_props);
    let report = k::ingest_until_caught_up(&config2).await;
    assert_eq!((report.consumed, report.stored), (10, 10), "{report:#?}");
    eprintln!("SSL and SASL_SSL ingests done at {:.1?}", started.elapsed());

    // The wrong CA, and a wrong SCRAM password: the worker process says so loudly (errors naming
    // the cause), stores nothing and commits nothing; SIGTERM still stops it cleanly.
    let logs = tempfile::tempdir().unwrap();
    let topic3 = k::random_name("tls-wrong");
    nekhebet_store::kafka::ensure_topics(&kafka.plaintext(), &BTreeMap::new(), &[(&topic3, 1)])
        .await
        .expect("create topic");
    publish(&kafka.plaintext(), &topic3, 5, 0).await;
    let db3 = TestDb::new().await;
    let cases: [WrongCase; 2] = [
        (
            "wrong-ca",
            vec![
                ("security.protocol", "SSL".to_string()),
                ("ssl.ca.location", certs.other_ca().display().to_string()),
            ],
            &["certificate verify failed"],
        ),
        (
            "wrong-password",
            vec![
                ("security.protocol", "SASL_SSL".to_string()),
                ("ssl.ca.location", ca.clone()),
                ("sasl.mechanism", "SCRAM-SHA-256".to_string()),
                ("sasl.username", tls_servers::KAFKA_USER.to_string()),
                ("sasl.password", "not-the-password-3f9a".to_string()),
            ],
            &["Authentication failed", "SASL authentication error"],
        ),
    ];
    for (name, props, expect_any) in cases {
        let lmdb3 = tempfile::tempdir().unwrap();
        let brokers = if name == "wrong-ca" {
            kafka.ssl()
        } else {
            kafka.sasl_ssl()
        };
        let mut config3 = tls_worker_config(&db3, lmdb3.path(), brokers, &topic3, &props);
        config3.telemetry.listen = "127.0.0.1:0".into();
        let file = logs.path().join(format!("{name}.toml"));
        let mut toml = String::from("[kafka.properties]\n");
        for (k, v) in &props {
            toml.push_str(&format!("{k:?} = {v:?}\n"));
        }
        std::fs::write(&file, toml).unwrap();
        let mut w = k::WorkerProcess::spawn(
            &config3,
            &["--config", file.to_str().unwrap()],
            &[],
            &logs.path().join(format!("{name}.log")),
        );
        let deadline = Instant::now() + Duration::from_secs(40);
        let found = loop {
            let log = w.log_text();
            if let Some(hit) = expect_any.iter().find(|p| log.contains(**p)) {
                break Some(hit.to_string());
            }
            if Instant::now() > deadline {
                break None;
            }
            if let Ok(Some(status)) = w.child.try_wait() {
                panic!("{name}: the worker exited ({status}) without the expected error:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let log = w.log_text();
        assert!(
            found.is_some(),
            "{name}: no error naming the cause within 40 s:\n{log}"
        );
        let line = log
            .lines()
            .find(|l| expect_any.iter().any(|p| l.contains(p)))
            .unwrap_or_default();
        eprintln!("{name}: {line}");
        assert!(
            line.contains("ERROR") || line.contains("WARN"),
            "{name}: the cause is not logged as an error or warning: {line}"
        );
        assert!(
            !log.contains("not-the-password-3f9a"),
            "{name}: password in the log"
        );
        // /readyz says why: not ready, naming what Kafka refuses.
        let addr = w.metrics_addr().expect("the worker serves /readyz");
        let (status, body) = common::faults::http_get(&addr, "/readyz").expect("GET /readyz");
        assert_eq!(status, 503, "{name}: {body}");
        assert!(
            body.contains("kafka: ") && expect_any.iter().any(|p| body.contains(p)),
            "{name}: /readyz does not say why: {body}"
        );
        assert_eq!(
            k::event_count(&db3.url).await,
            0,
            "{name}: stored something"
        );
        let stopping = Instant::now();
        w.signal("TERM");
        let status = w
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{name}: no exit after SIGTERM\n{}", w.log_text()));
        eprintln!("{name}: {status} {:.1?} after SIGTERM", stopping.elapsed());
        assert!(status.success(), "{name}: {status}\n{}", w.log_text());
        assert!(
            stopping.elapsed() < Duration::from_millis(config3.shutdown.timeout_ms),
            "{name}: SIGTERM took {:.1?}",
            stopping.elapsed()
        );
    }
    drop(kafka);
    eprintln!("Kafka TLS test: {:.1?}", started.elapsed());
}
