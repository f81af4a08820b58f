//! Hostile input through the real worker: a corpus of bad messages published to a real Kafka
//! topic, a genuine envelope after each, ingested by `ingest::run` (verification on, as deployed).
//! Every bad message must land in the dead-letter topic with its exact stable reason and all the
//! DLQ headers, every genuine envelope must be stored byte for byte, the worker must neither crash
//! nor stall, and the offsets must be committed to the end. Prints the message → reason table.
//!
//! Needs the local services (`scripts/services up && source .local/services.env`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kafka as k;
use common::pg::TestDb;
use ed25519_dalek::SigningKey;
use nekhebet_store::dev::signing::{sign, sign_with_extras, EnvelopeSpec, HeaderExtras};
use nekhebet_store::envelope::Limits;
use nekhebet_store::reason::Reason;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

/// What must become of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Dead-lettered with this reason; `truncated`: the DLQ cannot take the letter, so it carries
    /// the first KiB of the value and the original sizes (`nekhebet.original.value_bytes`).
    Reject { reason: Reason, truncated: bool },
    /// Stored (a valid envelope, however odd).
    Stored,
}

fn reject(reason: Reason) -> Expect {
    Expect::Reject {
        reason,
        truncated: false,
    }
}

struct Case {
    name: String,
    /// `None`: a tombstone (no value at all).
    value: Option<Vec<u8>>,
    expect: Expect,
}

/// 10 MB: ten times Kafka's default message limit, five times the worker's.
const HUGE: usize = 10 * 1024 * 1024;
/// Over every field limit, well under the worker's message limit.
const LONG: usize = 200_000;
/// A message the worker reads (< 2 MiB) but the DLQ topic (broker default, ~1 MB) refuses.
const OVER_DLQ: usize = 1_500_000;

struct Signer {
    key: SigningKey,
    n: u64,
}

impl Signer {
    fn spec(&mut self, note: &str) -> EnvelopeSpec {
        self.n += 1;
        EnvelopeSpec {
            event_type: "omen.observed".into(),
            source: "node-hostile".into(),
            key_id: "hostile-key".into(),
            payload: json!({ "seq": self.n, "note": note }),
            issued_at: None,
            expires_at: None,
            nonce: None,
            id: None,
        }
    }

    fn genuine(&mut self, note: &str) -> Vec<u8> {
        let spec = self.spec(note);
        sign(&spec, &self.key)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("signed envelopes are UTF-8")
}

/// `wire` with the first `from` replaced by `to` (which must change it).
fn sub(wire: &[u8], from: &str, to: &str) -> Vec<u8> {
    let w = text(wire);
    assert!(w.contains(from), "{from:?} not in {w}");
    w.replacen(from, to, 1).into_bytes()
}

/// `wire` as a JSON value (key order changes; the canonical header, hence the signature, does
/// not), with `f` applied, serialised again.
fn edit(wire: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(wire).expect("wire is JSON");
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

const HEADER_FIELDS: [&str; 13] = [
    "id",
    "type",
    "version",
    "source",
    "issued_at",
    "expires_at",
    "nonce",
    "key_id",
    "algorithm",
    "canonicalization",
    "payload_hash",
    "context",
    "extensions",
];

fn corpus(s: &mut Signer) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &str, value: Option<Vec<u8>>, expect: Expect| {
        cases.push(Case {
            name: name.to_string(),
            value,
            expect,
        })
    };
    let w = s.genuine("template");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));

    // Bytes and syntax.
    add("empty value", Some(vec![]), reject(Reason::EmptyMessage));
    add("null value (tombstone)", None, reject(Reason::NullValue));
    add(
        "invalid UTF-8 (0xFF in a payload string)",
        Some(
            sub(&w, "\"template\"", "\"temp\u{1}late\"")
                .into_iter()
                .map(|b| if b == 1 { 0xff } else { b })
                .collect(),
        ),
        reject(Reason::InvalidUtf8),
    );
    add(
        "invalid UTF-8 (overlong NUL in an unknown field)",
        Some(
            sub(&w, "{\"header\"", "{\"x\":\"\u{1}\u{2}\",\"header\"")
                .into_iter()
                .map(|b| match b {
                    1 => 0xc0,
                    2 => 0x80,
                    b => b,
                })
                .collect(),
        ),
        reject(Reason::InvalidUtf8),
    );
    add(
        "truncated JSON (first half)",
        Some(w[..w.len() / 2].to_vec()),
        reject(Reason::TruncatedJson),
    );
    add(
        "truncated JSON (last byte missing)",
        Some(w[..w.len() - 1].to_vec()),
        reject(Reason::TruncatedJson),
    );
    let mut huge = w.clone();
    huge.resize(HUGE, b' ');
    add(
        "10 MB value (envelope + spaces)",
        Some(huge),
        Expect::Reject {
            reason: Reason::MessageTooLarge,
            truncated: true,
        },
    );
    add(
        "nesting depth 10,000 in the payload",
        Some(sub(&w, "\"template\"", &deep)),
        reject(Reason::TooDeep),
    );
    add(
        "nesting depth 10,000 in header.context",
        Some(sub(
            &w,
            "\"context\":null",
            &format!("\"context\":{{\"x\":{deep}}}"),
        )),
        reject(Reason::TooDeep),
    );
    add(
        "nesting depth 10,000 at top level",
        Some(deep.clone().into_bytes()),
        reject(Reason::TooDeep),
    );
    for (lit, why) in [
        ("NaN", Reason::MalformedJson),
        ("Infinity", Reason::MalformedJson),
        ("-Infinity", Reason::MalformedJson),
        ("1e999", Reason::NumberOutOfRange),
    ] {
        add(
            &format!("{lit} in the payload"),
            Some(sub(&w, "\"template\"", lit)),
            reject(why),
        );
        add(
            &format!("{lit} in header.expires_at"),
            Some(sub(
                &w,
                "\"expires_at\":null",
                &format!("\"expires_at\":{lit}"),
            )),
            reject(why),
        );
        add(
            &format!("{lit} in header.context"),
            Some(sub(
                &w,
                "\"context\":null",
                &format!("\"context\":{{\"x\":{lit}}}"),
            )),
            reject(why),
        );
    }
    add(
        "duplicate key in the payload",
        Some(sub(&w, "\"note\":", "\"note\":1,\"note\":")),
        reject(Reason::DuplicateKey),
    );
    add(
        "duplicate key in the header (source)",
        Some(sub(&w, "\"source\":", "\"source\":\"evil\",\"source\":")),
        reject(Reason::DuplicateKey),
    );
    add(
        "duplicate key, escaped (sourc\\u0065)",
        Some(sub(
            &w,
            "\"source\":",
            "\"sourc\\u0065\":\"evil\",\"source\":",
        )),
        reject(Reason::DuplicateKey),
    );
    add(
        "duplicate top-level key (payload)",
        Some(sub(&w, "{\"header\"", "{\"payload\":{},\"header\"")),
        reject(Reason::DuplicateKey),
    );
    add(
        "UTF-8 BOM before the envelope",
        Some([b"\xef\xbb\xbf".as_slice(), &w].concat()),
        reject(Reason::MalformedJson),
    );
    add(
        "trailing garbage",
        Some([w.as_slice(), b"garbage"].concat()),
        reject(Reason::MalformedJson),
    );
    add(
        "two envelopes back to back",
        Some([w.as_slice(), &w].concat()),
        reject(Reason::MalformedJson),
    );
    add(
        "trailing NUL byte",
        Some([w.as_slice(), b"\0"].concat()),
        reject(Reason::MalformedJson),
    );
    add(
        "raw NUL byte inside a string",
        Some(sub(&w, "\"template\"", "\"temp\u{0}late\"")),
        reject(Reason::MalformedJson),
    );
    add(
        "leading NUL bytes",
        Some([b"\0\0\0\0".as_slice(), &w].concat()),
        reject(Reason::MalformedJson),
    );
    add(
        "valid envelope inside a JSON string",
        Some(serde_json::to_vec(&text(&w)).unwrap()),
        reject(Reason::NotAnObject),
    );
    add(
        "valid envelope inside an array",
        Some([b"[".as_slice(), &w, b"]"].concat()),
        reject(Reason::NotAnObject),
    );
    add(
        "JSON null",
        Some(b"null".to_vec()),
        reject(Reason::NotAnObject),
    );

    // Wrong JSON type, one message per field.
    let wrong: [(&str, Value); 13] = [
        ("id", json!(12345)),
        ("type", json!(true)),
        ("version", json!(4)),
        ("source", json!(["node"])),
        ("issued_at", json!(1764087958)),
        ("expires_at", json!(0)),
        ("nonce", json!({ "hex": "00" })),
        ("key_id", json!(7)),
        ("algorithm", json!(1)),
        ("canonicalization", json!([])),
        ("payload_hash", json!(1.5)),
        ("context", json!("ctx")),
        ("extensions", json!([1])),
    ];
    assert_eq!(wrong.clone().map(|(f, _)| f), HEADER_FIELDS);
    for (field, v) in wrong {
        add(
            &format!("wrong type: header.{field} = {v}"),
            Some(edit(&w, |e| e["header"][field] = v)),
            reject(Reason::WrongType),
        );
    }
    add(
        "wrong type: header.version = null",
        Some(edit(&w, |e| e["header"]["version"] = Value::Null)),
        reject(Reason::WrongType),
    );
    for (path, v) in [
        ("signature.signature", json!(7)),
        ("signature.public_key", json!(false)),
    ] {
        let (a, b) = path.split_once('.').unwrap();
        add(
            &format!("wrong type: {path} = {v}"),
            Some(edit(&w, |e| e[a][b] = v)),
            reject(Reason::WrongType),
        );
    }
    for (field, v) in [
        ("header", json!("header")),
        ("payload", json!([1, 2])),
        ("signature", json!("sig")),
    ] {
        add(
            &format!("wrong type: {field} = {v}"),
            Some(edit(&w, |e| e[field] = v)),
            reject(Reason::WrongType),
        );
    }

    // Oversized strings, one message per field (verification order decides the category).
    let long = "a".repeat(LONG);
    for field in HEADER_FIELDS {
        let why = match field {
            "type" => Reason::EventTypeInvalid,
            "version" => Reason::UnsupportedVersion,
            "algorithm" | "canonicalization" => Reason::InvalidEnum,
            "context" | "extensions" => Reason::WrongType,
            _ => Reason::StructureInvalid,
        };
        add(
            &format!("oversized string: header.{field} ({LONG} chars)"),
            Some(edit(&w, |e| e["header"][field] = json!(long))),
            reject(why),
        );
    }
    // Base64 of 150,000 bytes: decodes, then fails the 64/32-byte length rule.
    let long_b64 = "A".repeat(LONG);
    for field in ["signature", "public_key"] {
        add(
            &format!("oversized string: signature.{field} ({LONG} chars)"),
            Some(edit(&w, |e| e["signature"][field] = json!(long_b64))),
            reject(Reason::StructureInvalid),
        );
    }
    // Genuinely signed, so the size is the only fault: nekhebet-core's 1 MiB payload limit. The
    // message is under the worker's 2 MiB but over what the DLQ topic (broker default) accepts.
    let mut spec = s.spec("");
    spec.payload = json!({ "note": "p".repeat(OVER_DLQ) });
    add(
        "genuine envelope, 1.5 MB payload (over 1 MiB)",
        Some(sign(&spec, &s.key)),
        Expect::Reject {
            reason: Reason::PayloadTooLarge,
            truncated: true,
        },
    );
    // Signed with 200 kB in context: within every limit, so it is a valid envelope.
    let spec = s.spec("big context");
    add(
        "genuine envelope, 200 kB string inside header.context",
        Some(sign_with_extras(
            &spec,
            &HeaderExtras {
                context: Some(json!({ "note": long })),
                extensions: None,
            },
            &s.key,
        )),
        Expect::Stored,
    );
    // Escaped NUL: valid JSON and a valid signature. In the payload it is stored (bytes); in
    // `source`, a TEXT column, PostgreSQL refuses it, and the worker isolates and dead-letters it.
    let mut spec = s.spec("");
    spec.payload = json!({ "note": "nul\u{0}inside" });
    add(
        "genuine envelope, escaped NUL (\\u0000) in the payload",
        Some(sign(&spec, &s.key)),
        Expect::Stored,
    );
    let mut spec = s.spec("nul in source");
    spec.source = "node\u{0}evil".into();
    add(
        "genuine envelope, escaped NUL (\\u0000) in header.source",
        Some(sign(&spec, &s.key)),
        reject(Reason::StoreRejected),
    );
    cases
}

async fn create_big_topic(name: &str, max_bytes: usize) {
    let admin: AdminClient<DefaultClientContext> =
        nekhebet_store::kafka::admin_config(&k::brokers(), &BTreeMap::new())
            .create()
            .expect("admin");
    let max = max_bytes.to_string();
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(-1)).set("max.message.bytes", &max);
    let res = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create topic");
    for r in res {
        r.map_err(|(t, e)| format!("{t}: {e}"))
            .expect("create topic");
    }
}

struct Published {
    name: String,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    offset: i64,
    expect: Expect,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_message_is_dead_lettered_with_its_reason_and_the_rest_is_stored() {
    let started = Instant::now();
    let db = TestDb::new().await;
    let lmdb = tempfile::tempdir().unwrap();
    let topic = k::random_name("hostile");
    let group = k::random_name("hostile-group");
    create_big_topic(&topic, HUGE + 1024 * 1024).await;

    let mut signer = Signer {
        key: SigningKey::from_bytes(&[42u8; 32]),
        n: 0,
    };
    let bad = corpus(&mut signer);

    // A forged envelope (valid structure, signature by another key under our public key) and,
    // later, the genuine envelope with the same (key_id, nonce): the forgery must not burn it.
    let nonce = "f0".repeat(32);
    let mut spec = signer.spec("forgery target");
    spec.nonce = Some(nonce.clone());
    let genuine_same_nonce = sign(&spec, &signer.key);
    let mut forged_spec = spec.clone();
    forged_spec.payload = json!({ "note": "pay the attacker" });
    forged_spec.id = None;
    let attacker = SigningKey::from_bytes(&[66u8; 32]);
    let forged = edit(&sign(&forged_spec, &attacker), |e| {
        e["signature"]["public_key"] = json!(nekhebet_store::envelope::encode_base64(
            &signer.key.verifying_key().to_bytes()
        ))
    });

    let mut producer_cfg = nekhebet_store::kafka::producer_config(&k::brokers(), &BTreeMap::new());
    producer_cfg.set("message.max.bytes", (HUGE + 1024 * 1024).to_string());
    let producer: FutureProducer = producer_cfg.create().expect("producer");
    let mut published: Vec<Published> = Vec::new();
    let mut send = |name: String, value: Option<Vec<u8>>, expect: Expect| {
        let key = format!("hostile-{}", published.len()).into_bytes();
        published.push(Published {
            name,
            key,
            value,
            offset: -1,
            expect,
        });
    };
    for (i, case) in bad.into_iter().enumerate() {
        send(case.name, case.value, case.expect);
        let note = format!("after hostile #{i}");
        send(
            "genuine envelope".into(),
            Some(signer.genuine(&note)),
            Expect::Stored,
        );
    }
    send(
        "forged envelope (wrong signature), nonce N".into(),
        Some(forged),
        reject(Reason::SignatureInvalid),
    );
    send(
        "genuine envelope, same key_id and nonce N".into(),
        Some(genuine_same_nonce.clone()),
        Expect::Stored,
    );
    for p in published.iter_mut() {
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic).key(&p.key[..]);
        if let Some(v) = &p.value {
            record = record.payload(&v[..]);
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap_or_else(|e| panic!("publishing {}: {e}", p.name));
        assert_eq!(delivery.partition, 0);
        p.offset = delivery.offset;
    }
    let publish_done = started.elapsed();

    let config = k::worker_config(&db.url, lmdb.path(), &topic, &group);
    let ingest_started = Instant::now();
    let report = k::ingest_until_caught_up(&config).await;
    let ingest_took = ingest_started.elapsed();

    // What the DLQ says, by source offset.
    let dlq = k::read_all(&format!("{topic}.dlq"));
    let mut by_offset: HashMap<i64, &k::ReadMessage> = HashMap::new();
    for m in &dlq {
        assert_eq!(
            m.headers.get("nekhebet.source.topic"),
            Some(&topic),
            "{m:?}"
        );
        assert_eq!(
            m.headers
                .get("nekhebet.source.partition")
                .map(String::as_str),
            Some("0")
        );
        let offset: i64 = m.headers["nekhebet.source.offset"]
            .parse()
            .expect("offset header");
        assert!(
            by_offset.insert(offset, m).is_none(),
            "offset {offset} dead-lettered twice"
        );
    }

    println!();
    println!(
        "{:<4} {:>6}  {:<62} {:<22} {:<22} DLQ value",
        "#", "offset", "message", "expected", "got"
    );
    let mut failures = Vec::new();
    let mut expected_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut stored_wires: Vec<&[u8]> = Vec::new();
    for (i, p) in published.iter().enumerate() {
        let letter = by_offset.get(&p.offset);
        let got = letter
            .map(|m| m.headers["nekhebet.reason"].clone())
            .unwrap_or_else(|| "(stored)".into());
        let (want, truncated) = match &p.expect {
            Expect::Reject { reason, truncated } => {
                *expected_counts.entry(reason.to_string()).or_default() += 1;
                (reason.to_string(), *truncated)
            }
            Expect::Stored => {
                stored_wires.push(p.value.as_deref().expect("stored envelopes have a value"));
                ("(stored)".to_string(), false)
            }
        };
        let dlq_value = match letter {
            None => String::new(),
            Some(m) => match m.headers.get("nekhebet.original.value_bytes") {
                Some(n) => format!("truncated (of {n} bytes)"),
                None => format!("{} bytes", m.value.as_ref().map_or(0, Vec::len)),
            },
        };
        if p.name != "genuine envelope" || got != want {
            println!(
                "{i:<4} {:>6}  {:<62} {:<22} {:<22} {dlq_value}",
                p.offset,
                p.name.chars().take(62).collect::<String>(),
                want,
                got
            );
        }
        if got != want {
            failures.push(format!(
                "#{i} {} (offset {}): expected {want}, got {got}",
                p.name, p.offset
            ));
            continue;
        }
        let Some(m) = letter else { continue };
        // Every header, the original key, the original value (or its first KiB and size when
        // truncated).
        let detail = m
            .headers
            .get("nekhebet.detail")
            .cloned()
            .unwrap_or_default();
        if detail.is_empty() || detail.len() > 2048 {
            failures.push(format!(
                "#{i} {}: detail header {} bytes",
                p.name,
                detail.len()
            ));
        }
        if m.key.as_deref() != Some(&p.key[..]) {
            failures.push(format!("#{i} {}: DLQ key differs", p.name));
        }
        let original_len = p.value.as_ref().map_or(0, Vec::len);
        if truncated {
            let original = p.value.clone().unwrap_or_default();
            if m.headers.get("nekhebet.original.value_bytes") != Some(&original_len.to_string())
                || m.value.clone().unwrap_or_default() != original[..original.len().min(1024)]
                || !detail.starts_with("truncated")
            {
                failures.push(format!(
                    "#{i} {}: expected the first KiB of the value with nekhebet.original.value_bytes = {original_len}, got {:?} and {} value bytes",
                    p.name,
                    m.headers.get("nekhebet.original.value_bytes"),
                    m.value.as_ref().map_or(0, Vec::len)
                ));
            }
        } else if m.headers.contains_key("nekhebet.original.value_bytes")
            || m.value.clone().unwrap_or_default() != p.value.clone().unwrap_or_default()
        {
            failures.push(format!(
                "#{i} {}: DLQ value differs from the original",
                p.name
            ));
        }
        if p.value.is_none() && m.value.is_some() {
            failures.push(format!(
                "#{i} {}: a tombstone came back with a value",
                p.name
            ));
        }
    }
    println!(
        "{} messages ({} hostile, {} stored); published in {:.1?}, ingested in {:.1?}",
        published.len(),
        dlq.len(),
        stored_wires.len(),
        publish_done,
        ingest_took
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        dlq.len(),
        published.len() - stored_wires.len(),
        "DLQ holds something else"
    );

    // The report agrees, reason by reason; nothing was abandoned, replayed or retried away.
    assert_eq!(report.consumed, published.len() as u64, "{report:#?}");
    assert_eq!(report.stored, stored_wires.len() as u64, "{report:#?}");
    let by_code: BTreeMap<String, u64> = report
        .rejected_by_reason
        .iter()
        .map(|(r, n)| (r.as_str().to_string(), *n))
        .collect();
    assert_eq!(by_code, expected_counts, "{report:#?}");
    assert_eq!(
        report.replay + report.duplicate + report.redelivered + report.abandoned,
        0,
        "{report:#?}"
    );
    assert_eq!(report.dlq_published, dlq.len() as u64);

    // The stores hold exactly the valid envelopes, byte for byte — including the genuine
    // envelope whose nonce a forgery used first.
    let limits = Limits {
        max_message_bytes: usize::MAX,
    };
    let mut expected = k::Expected {
        by_hash: BTreeMap::new(),
        by_id: BTreeMap::new(),
    };
    for wire in &stored_wires {
        let env = nekhebet_store::envelope::decode(Bytes::copy_from_slice(wire), &limits).unwrap();
        expected
            .by_hash
            .insert(env.header.payload_hash.clone(), wire.to_vec());
        expected.by_id.insert(env.header.id, wire.to_vec());
    }
    assert!(stored_wires.iter().any(|w| *w == &genuine_same_nonce[..]));
    k::assert_stores_hold_exactly(&db.url, lmdb.path(), &expected).await;
    let guard: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM replay_guard WHERE key_id = 'hostile-key' AND nonce = $1",
            &[&nonce],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        guard, 1,
        "the genuine envelope's (key_id, nonce) is in the replay guard once"
    );
    k::wait_committed_to_end(&group, &topic, Duration::from_secs(30)).await;
    println!("hostile corpus: {:.1?} in all", started.elapsed());
}
