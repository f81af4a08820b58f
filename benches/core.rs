//! Micro-benchmarks of the pure core, with throughput in envelopes (or bytes) per second:
//! decode+validate, canonicalize+hash, signature verification (single, exact parallel and batch
//! equations), the batcher. Data: envelopes made by our signer in the nekhebet-core wire format,
//! ~1.4 KB like tests/data/envelopes-2000.jsonl (the bench does not read it).
//!
//!   cargo bench --bench core

use std::time::Instant;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use nekhebet_store::batch::{BatchLimits, Batcher, Push};
use nekhebet_store::dev::signing::{sign, EnvelopeSpec};
use nekhebet_store::envelope::{self, Envelope, Limits};
use nekhebet_store::verify::{Verifier, VerifyConfig};

fn envelopes(n: usize) -> Vec<Bytes> {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    (0..n)
        .map(|i| {
            let payload = serde_json::json!({
                "seq": i,
                "sensor": format!("s-{}", i % 17),
                "reading": 83.99223782662905 + i as f64,
                "tags": ["a", "b", i.to_string()],
                "note": "x".repeat(1000),
            });
            let spec = EnvelopeSpec {
                event_type: "omen.observed".into(),
                source: format!("node-{}", i % 13),
                key_id: "collector-0".into(),
                payload,
                issued_at: None,
                expires_at: None,
                nonce: None,
                id: None,
            };
            Bytes::from(sign(&spec, &key))
        })
        .collect()
}

fn decoded(raw: &[Bytes]) -> Vec<Envelope> {
    let limits = Limits::default();
    raw.iter()
        .map(|b| envelope::decode(b.clone(), &limits).expect("bench envelopes decode"))
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let raw = envelopes(1000);
    let bytes: u64 = raw.iter().map(|b| b.len() as u64).sum();
    let limits = Limits::default();
    let mut g = c.benchmark_group("decode+validate");
    g.throughput(Throughput::Elements(raw.len() as u64));
    g.bench_function("1000 envelopes", |b| {
        b.iter(|| {
            for m in &raw {
                let e = envelope::decode(m.clone(), &limits).unwrap();
                envelope::validate(&e).unwrap();
                black_box(e);
            }
        })
    });
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("1000 envelopes (bytes)", |b| {
        b.iter(|| {
            for m in &raw {
                black_box(envelope::decode(m.clone(), &limits).unwrap());
            }
        })
    });
    g.finish();
}

fn bench_canonical(c: &mut Criterion) {
    let envs = decoded(&envelopes(1000));
    let mut g = c.benchmark_group("canonicalize+hash");
    g.throughput(Throughput::Elements(envs.len() as u64));
    g.bench_function("payload hash", |b| {
        b.iter(|| {
            for e in &envs {
                black_box(nekhebet_store::canonical::payload_hash(e.payload.get()).unwrap());
            }
        })
    });
    g.bench_function("canonical header", |b| {
        b.iter(|| {
            for e in &envs {
                black_box(nekhebet_store::envelope::canonical_header(&e.header).unwrap());
            }
        })
    });
    g.finish();
}

fn bench_verify(c: &mut Criterion) {
    let envs = decoded(&envelopes(512));
    let refs: Vec<&Envelope> = envs.iter().collect();
    let now = chrono::Utc::now();
    let exact = Verifier::new(VerifyConfig::default()).exact_batches(true);
    let batch = Verifier::new(VerifyConfig::default()).exact_batches(false);
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(envs.len() as u64));
    g.sample_size(20);
    g.bench_function("single, one by one", |b| {
        b.iter(|| {
            for e in &envs {
                exact.verify(e, now).unwrap();
            }
        })
    });
    g.bench_function("verify_batch exact (parallel singles)", |b| {
        b.iter(|| black_box(exact.verify_batch(&refs, now)))
    });
    g.bench_function("verify_batch batch equations", |b| {
        b.iter(|| black_box(batch.verify_batch(&refs, now)))
    });
    g.finish();
}

fn bench_batcher(c: &mut Criterion) {
    let limits = BatchLimits {
        max_records: 1000,
        max_bytes: 8 << 20,
        linger: std::time::Duration::from_millis(50),
    };
    let mut g = c.benchmark_group("batcher");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("push 100k records of 1.4 KB", |b| {
        b.iter_batched(
            || Batcher::<u64>::new(limits),
            |mut batcher| {
                let now = Instant::now();
                let mut batches = 0;
                for i in 0..100_000u64 {
                    if let Push::Full(_) = batcher.push(i, 1400, now) {
                        if batcher.take().is_some() {
                            batches += 1;
                        }
                    }
                }
                black_box(batches)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_canonical,
    bench_verify,
    bench_batcher
);
criterion_main!(benches);
