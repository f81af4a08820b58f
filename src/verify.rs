//! The zero-trust stage: nekhebet-core 4.0.0's `verify_envelope`, check for check and
//! category for category, plus the store's own structural rules and an optional key
//! registry. Pure (the offline [`verify_lines`] only touches the reader/writer it is
//! given).
//!
//! Order (first failure wins):
//! 1. `type` registered → `event_type_invalid`
//! 2. `version` "4.0.0" (algorithm, canonicalization) → `unsupported_version`
//! 3. nekhebet-core's structure checks (source length, nonce, signature/key lengths,
//!    payload_hash), then the store-only rules (UUID id, key_id, type length, non-empty
//!    expires_at) → `structure_invalid`
//! 4. `issued_at` format → `structure_invalid`; beyond the clock skew → `timestamp_future`;
//!    `expires_at` format / before `issued_at` → `structure_invalid`; past → `expired`
//! 5. public key registered for `key_id` (only when keys are configured) → `key_id_mismatch`
//! 6. Ed25519 over the canonical header → `signature_invalid`
//! 7. payload depth ≤ 16 and estimated size ≤ 1 MiB → `payload_too_large`
//! 8. SHA-256 of the canonical payload == `payload_hash` → `hash_mismatch`
//!
//! Every envelope that passes also passes [`crate::envelope::validate`]: each of its
//! rules is checked at the step where nekhebet-core checks the same thing (depth at 7,
//! timestamps at 4), and the rules nekhebet-core lacks at step 3.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};

use chrono::{DateTime, Duration, DurationRound, Utc};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use rayon::prelude::*;

use crate::canonical::{self, Json};
use crate::envelope::{
    self, Envelope, Limits, Reason, Rejection, ALGORITHM, CANONICALIZATION, MAX_PAYLOAD_DEPTH,
    VERSION,
};

/// nekhebet-core 4.0.0's event type registry (`registry._EVENT_REGISTRY`).
pub const NEKHEBET_EVENT_TYPES: [&str; 6] = [
    "omen.observed",
    "observation.recorded",
    "anubis.weighed",
    "charon.transported",
    "osiris.remembered",
    "seth.caught",
];

/// nekhebet-core `CLOCK_SKEW_ALLOW`, seconds.
pub const DEFAULT_CLOCK_SKEW_S: i64 = 300;

/// nekhebet-core `MAX_ABSOLUTE_PAYLOAD_SIZE`: the limit on the payload's *estimated*
/// size (`estimate_payload_size`), which is what verification checks.
pub const MAX_ABSOLUTE_PAYLOAD_SIZE: usize = 1024 * 1024;

/// Smallest number of signatures worth a batch equation of their own.
const MIN_BATCH: usize = 8;

/// Verifier settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// How far in the future `issued_at` may be, in seconds.
    pub clock_skew_s: i64,
    /// Registered event types.
    pub event_types: Vec<String>,
    /// When set, `key_id` → the public keys allowed to sign under it.
    pub keys: Option<HashMap<String, Vec<[u8; 32]>>>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            clock_skew_s: DEFAULT_CLOCK_SKEW_S,
            event_types: NEKHEBET_EVENT_TYPES.iter().map(|s| s.to_string()).collect(),
            keys: None,
        }
    }
}

/// Verifies envelopes against a fixed configuration. Cheap to share across threads.
#[derive(Debug, Clone)]
pub struct Verifier {
    clock_skew: Duration,
    event_types: HashSet<String>,
    keys: Option<HashMap<String, Vec<[u8; 32]>>>,
    exact_batches: bool,
}

/// An envelope that passed steps 1-5: its canonical header and the outcome of 7-8.
type Staged = (Vec<u8>, Result<(), Rejection>);

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection::new(reason, detail)
}

fn structure(e: envelope::ValidationError) -> Rejection {
    reject(e.category(), e.to_string())
}

/// Python's `datetime` holds microseconds; comparing at finer precision could flip a
/// verdict at the boundary.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::microseconds(1)).unwrap_or(t)
}

impl Verifier {
    /// A verifier for `cfg`.
    pub fn new(cfg: VerifyConfig) -> Self {
        Verifier {
            clock_skew: Duration::seconds(cfg.clock_skew_s),
            event_types: cfg.event_types.into_iter().collect(),
            keys: cfg.keys,
            exact_batches: false,
        }
    }

    /// With `true`, [`Verifier::verify_batch`] checks every signature on its own (still
    /// in parallel) instead of with batch equations: about twice the CPU per signature,
    /// but bit-for-bit the verdicts of OpenSSL's cofactorless check even for signatures
    /// crafted with small-order components (see `verify_chunk`).
    pub fn exact_batches(mut self, exact: bool) -> Self {
        self.exact_batches = exact;
        self
    }

    /// Verifies one envelope at instant `now`; the error's `reason` is the category.
    pub fn verify(&self, env: &Envelope, now: DateTime<Utc>) -> Result<(), Rejection> {
        let header_bytes = self.before_signature(env, micros(now))?;
        if !verify_one(env, &header_bytes) {
            return Err(signature_rejection());
        }
        after_signature(env)
    }

    /// Verifies many envelopes at `now`, results in input order, each equal to what
    /// [`Verifier::verify`] returns (for signatures from honest signers; see
    /// [`Verifier::exact_batches`]). The non-signature checks run in parallel; the
    /// signatures are split across rayon's threads and checked with one Ed25519 batch
    /// equation per chunk, falling back to single checks in a chunk whose batch fails.
    pub fn verify_batch(
        &self,
        envs: &[&Envelope],
        now: DateTime<Utc>,
    ) -> Vec<Result<(), Rejection>> {
        let now = micros(now);
        // Steps 1-5 and 7-8 are independent of the signature; the verdict is assembled
        // in nekhebet-core's order below.
        let staged: Vec<Result<Staged, Rejection>> = envs
            .par_iter()
            .map(|env| {
                let header_bytes = self.before_signature(env, now)?;
                Ok((header_bytes, after_signature(env)))
            })
            .collect();
        let pending: Vec<(&Envelope, &[u8])> = staged
            .iter()
            .zip(envs)
            .filter_map(|(s, env)| s.as_ref().ok().map(|(hb, _)| (*env, hb.as_slice())))
            .collect();
        let threads = rayon::current_num_threads().max(1);
        let chunk = pending.len().div_ceil(threads).max(MIN_BATCH);
        let sig_ok: Vec<bool> = pending
            .par_chunks(chunk)
            .map(|c| verify_chunk(c, self.exact_batches))
            .collect::<Vec<_>>()
            .concat();
        let mut sig_ok = sig_ok.into_iter();
        staged
            .into_iter()
            .map(|s| {
                let (_, post) = s?;
                if sig_ok
                    .next()
                    .expect("one signature result per pending envelope")
                {
                    post
                } else {
                    Err(signature_rejection())
                }
            })
            .collect()
    }

    /// Steps 1-5; returns the canonical header bytes to verify the signature over.
    fn before_signature(&self, env: &Envelope, now: DateTime<Utc>) -> Result<Vec<u8>, Rejection> {
        let h = &env.header;
        if !self.event_types.contains(&h.event_type) {
            return Err(reject(
                Reason::EventTypeInvalid,
                format!(
                    "header.type {:?} is not a registered event type",
                    clip(&h.event_type)
                ),
            ));
        }
        for (field, got, want) in [
            ("version", &h.version, VERSION),
            ("algorithm", &h.algorithm, ALGORITHM),
            ("canonicalization", &h.canonicalization, CANONICALIZATION),
        ] {
            if got != want {
                return Err(reject(
                    Reason::UnsupportedVersion,
                    format!(
                        "header.{field} {:?} is not supported (only {want:?})",
                        clip(got)
                    ),
                ));
            }
        }
        envelope::check_core_structure(env).map_err(structure)?;
        envelope::check_store_structure(env).map_err(structure)?;

        // Step 4, interleaved exactly as nekhebet-core does it.
        let issued = envelope::parse_timestamp(&h.issued_at).ok_or_else(|| {
            reject(
                Reason::StructureInvalid,
                format!(
                    "header.issued_at {:?} is not ISO-8601 UTC with Z",
                    clip(&h.issued_at)
                ),
            )
        })?;
        if issued > now + self.clock_skew {
            return Err(reject(
                Reason::TimestampFuture,
                format!(
                    "header.issued_at {} is more than {}s after {}",
                    h.issued_at,
                    self.clock_skew.num_seconds(),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                ),
            ));
        }
        // `if header.expires_at:` — an empty string is skipped by nekhebet-core (the
        // store-only rule above has already refused it).
        if let Some(exp) = h.expires_at.as_deref().filter(|s| !s.is_empty()) {
            let expires = envelope::parse_timestamp(exp).ok_or_else(|| {
                reject(
                    Reason::StructureInvalid,
                    format!(
                        "header.expires_at {:?} is not ISO-8601 UTC with Z",
                        clip(exp)
                    ),
                )
            })?;
            if expires < issued {
                return Err(reject(
                    Reason::StructureInvalid,
                    "header.expires_at is earlier than header.issued_at",
                ));
            }
            if expires < now {
                return Err(reject(
                    Reason::Expired,
                    format!(
                        "header.expires_at {exp} is before {}",
                        now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    ),
                ));
            }
        }

        if let Some(keys) = &self.keys {
            let registered = keys
                .get(&h.key_id)
                .is_some_and(|ks| ks.contains(&env.public_key));
            if !registered {
                return Err(reject(
                    Reason::KeyIdMismatch,
                    format!(
                        "signature.public_key {} is not registered for header.key_id {:?}",
                        envelope::encode_base64(&env.public_key),
                        clip(&h.key_id)
                    ),
                ));
            }
        }

        envelope::canonical_header(h).map_err(|e| {
            reject(
                Reason::StructureInvalid,
                format!("header cannot be canonicalized: {e}"),
            )
        })
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn signature_rejection() -> Rejection {
    reject(
        Reason::SignatureInvalid,
        "signature.signature is not a valid Ed25519 signature of the canonical header by signature.public_key",
    )
}

/// Steps 7-8: payload size estimate and hash.
fn after_signature(env: &Envelope) -> Result<(), Rejection> {
    let tree = canonical::parse(env.payload.get())
        .map_err(|e| reject(Reason::StructureInvalid, format!("payload: {e}")))?;
    let estimated = estimate_payload_size(&tree).map_err(|depth| {
        reject(
            Reason::PayloadTooLarge,
            format!(
                "payload nests values {depth} levels deep, over the limit of {MAX_PAYLOAD_DEPTH}"
            ),
        )
    })?;
    if estimated > MAX_ABSOLUTE_PAYLOAD_SIZE {
        return Err(reject(
            Reason::PayloadTooLarge,
            format!(
                "payload's estimated size {estimated} bytes is over {MAX_ABSOLUTE_PAYLOAD_SIZE}"
            ),
        ));
    }
    let canonical = canonical::canonical_object_bytes(&tree).map_err(|e| {
        reject(
            Reason::StructureInvalid,
            format!("payload cannot be canonicalized: {e}"),
        )
    })?;
    let hash = canonical::sha256_hex(&canonical);
    if hash != env.header.payload_hash {
        return Err(reject(
            Reason::HashMismatch,
            format!(
                "SHA-256 of the canonical payload is {hash}, header.payload_hash is {}",
                clip(&env.header.payload_hash)
            ),
        ));
    }
    Ok(())
}

/// nekhebet-core's `estimate_payload_size`: a rough JSON length computed from the
/// Python values (string lengths in code points, `True` as 4 and `False` as 5 — it
/// prints them the Python way). `Err(depth)` when a value sits deeper than 16.
pub fn estimate_payload_size(v: &Json<'_>) -> Result<usize, usize> {
    fn est(v: &Json<'_>, depth: usize) -> Result<usize, usize> {
        if depth > MAX_PAYLOAD_DEPTH {
            return Err(depth);
        }
        Ok(match v {
            Json::Object(members) => {
                let mut size = 2usize;
                for (k, val) in members {
                    size += k.chars().count() + 4 + est(val, depth + 1)? + 1;
                }
                (size - 1).max(2)
            }
            Json::Array(items) => {
                let mut size = 2usize;
                for val in items {
                    size += est(val, depth + 1)? + 1;
                }
                (size - 1).max(2)
            }
            Json::Str(s) => s.chars().count() + 2,
            Json::Bool(true) => 4,
            Json::Bool(false) => 5,
            Json::Int(lit) => {
                if *lit == "-0" {
                    1
                } else {
                    lit.len()
                }
            }
            Json::Float(f) => canonical::python_float_repr(*f).len(),
            Json::Null => 4,
        })
    }
    est(v, 0)
}

/// Keys each checking thread keeps decompressed (cleared when full).
const KEY_CACHE: usize = 4096;

/// The public key, decompressed. Decompressing costs ≈10 % of a verification and producers sign
/// with few keys, so each thread keeps the keys it met, by their exact bytes (the same bytes
/// always decompress to the same point, so the verdicts cannot differ). Invalid keys are not kept.
fn verifying_key(bytes: &[u8; 32]) -> Option<VerifyingKey> {
    thread_local! {
        static KEYS: RefCell<HashMap<[u8; 32], VerifyingKey>> = RefCell::new(HashMap::new());
    }
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if let Some(key) = keys.get(bytes) {
            return Some(*key);
        }
        let key = VerifyingKey::from_bytes(bytes).ok()?;
        if keys.len() >= KEY_CACHE {
            keys.clear();
        }
        keys.insert(*bytes, key);
        Some(key)
    })
}

/// Cofactorless single verification, the equation OpenSSL (and so nekhebet-core) uses.
fn verify_one(env: &Envelope, header_bytes: &[u8]) -> bool {
    let Some(key) = verifying_key(&env.public_key) else {
        return false;
    };
    key.verify(header_bytes, &Signature::from_bytes(&env.signature))
        .is_ok()
}

/// Signature results for one chunk, in order.
///
/// The batch equation is a random linear combination of the single (cofactorless)
/// equations. It agrees with them for every signature an honest Ed25519 signer can
/// produce, but a key holder who puts a small-order component into R or A can make a
/// batch accept (with probability 1/2 to 1/8 per batch) a signature that OpenSSL, and so
/// nekhebet-core, rejects; ruling that out needs a torsion check per signature, which
/// costs as much as verifying it alone. [`Verifier::exact_batches`] trades the speed
/// for exact agreement.
fn verify_chunk(items: &[(&Envelope, &[u8])], exact: bool) -> Vec<bool> {
    let mut ok = vec![false; items.len()];
    let mut batch: Vec<(usize, VerifyingKey, Signature)> = Vec::with_capacity(items.len());
    for (i, (env, msg)) in items.iter().enumerate() {
        let Some(key) = verifying_key(&env.public_key) else {
            continue;
        };
        let sig = Signature::from_bytes(&env.signature);
        // A small-order key is nearly free to detect; such envelopes go alone.
        if exact || key.is_weak() {
            ok[i] = key.verify(msg, &sig).is_ok();
        } else {
            batch.push((i, key, sig));
        }
    }
    if batch.is_empty() {
        return ok;
    }
    let msgs: Vec<&[u8]> = batch.iter().map(|(i, _, _)| items[*i].1).collect();
    let sigs: Vec<Signature> = batch.iter().map(|(_, _, s)| *s).collect();
    let keys: Vec<VerifyingKey> = batch.iter().map(|(_, k, _)| *k).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
        for (i, _, _) in &batch {
            ok[*i] = true;
        }
    } else {
        for (i, key, sig) in &batch {
            ok[*i] = key.verify(items[*i].1, sig).is_ok();
        }
    }
    ok
}

/// Counts of an offline verification run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines read.
    pub lines: u64,
    /// Lines that decoded and verified.
    pub valid: u64,
    /// Lines that decoded but failed verification.
    pub invalid: u64,
    /// Lines nekhebet-core's `from_json_bytes` would refuse (or over the size limit).
    pub undecodable: u64,
    /// Failures by reason code: verification categories and decode reasons.
    pub by_reason: BTreeMap<Reason, u64>,
}

/// Reads one `\n`-terminated line (terminator dropped) into `buf`, keeping at most
/// `limit + 1` bytes so one endless line cannot exhaust memory; returns the line's full
/// length, or `None` at end of input.
fn read_line_bounded(
    input: &mut impl BufRead,
    limit: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    let mut len = 0usize;
    let mut any = false;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(len));
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1),
            None => (chunk, chunk.len()),
        };
        let keep = part.len().min((limit + 1).saturating_sub(buf.len()));
        buf.extend_from_slice(&part[..keep]);
        len += part.len();
        let found_newline = done > part.len();
        input.consume(done);
        if found_newline {
            return Ok(Some(len));
        }
    }
}

/// Lines per parallel round of [`verify_lines`].
const LINES_PER_ROUND: usize = 1024;

/// The core of `nekhebet-store verify`: one envelope per input line (wire bytes, the
/// trailing `\n` stripped), one JSON object per output line in input order:
/// `{"line":N,"verdict":"valid"|"invalid"|"undecodable","category":null|"<category>","id":null|"<header id>"}`.
/// `undecodable` is what nekhebet-core's `from_json_bytes` refuses; `category` is
/// nekhebet-core's failure category for `invalid`, null otherwise.
pub fn verify_lines(
    mut input: impl BufRead,
    mut out: impl Write,
    at: DateTime<Utc>,
    verifier: &Verifier,
    limits: &Limits,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    let mut lines: Vec<(Vec<u8>, usize)> = Vec::with_capacity(LINES_PER_ROUND);
    let mut eof = false;
    while !eof {
        lines.clear();
        while lines.len() < LINES_PER_ROUND {
            let mut line = Vec::new();
            match read_line_bounded(&mut input, limits.max_message_bytes, &mut line)? {
                None => {
                    eof = true;
                    break;
                }
                Some(len) => lines.push((line, len)),
            }
        }
        let decoded: Vec<Result<Envelope, envelope::DecodeError>> = lines
            .par_iter()
            .map(|(line, len)| {
                if *len > limits.max_message_bytes {
                    return Err(envelope::DecodeError::TooLarge {
                        size: *len,
                        limit: limits.max_message_bytes,
                    });
                }
                envelope::decode(bytes::Bytes::copy_from_slice(line), limits)
            })
            .collect();
        let envs: Vec<&Envelope> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
        let mut verdicts = verifier.verify_batch(&envs, at).into_iter();
        let mut buf = Vec::with_capacity(decoded.len() * 96);
        for d in &decoded {
            summary.lines += 1;
            buf.extend_from_slice(format!("{{\"line\":{},\"verdict\":", summary.lines).as_bytes());
            match d {
                Err(e) => {
                    summary.undecodable += 1;
                    *summary.by_reason.entry(e.reason()).or_default() += 1;
                    buf.extend_from_slice(b"\"undecodable\",\"category\":null,\"id\":null}\n");
                }
                Ok(env) => {
                    match verdicts.next().expect("one verdict per decoded envelope") {
                        Ok(()) => {
                            summary.valid += 1;
                            buf.extend_from_slice(b"\"valid\",\"category\":null");
                        }
                        Err(r) => {
                            summary.invalid += 1;
                            *summary.by_reason.entry(r.reason).or_default() += 1;
                            buf.extend_from_slice(b"\"invalid\",\"category\":");
                            canonical::write_json_string(r.reason.as_str(), &mut buf);
                        }
                    }
                    buf.extend_from_slice(b",\"id\":");
                    canonical::write_json_string(&env.header.id_raw, &mut buf);
                    buf.extend_from_slice(b"}\n");
                }
            }
        }
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode, decode_base64, validate};
    use bytes::Bytes;

    use crate::test_data::{SAMPLES, VECTORS};

    struct Vector {
        name: String,
        wire: Vec<u8>,
        verdict: String,
        category: Option<String>,
        canonical_payload: Option<String>,
        canonical_header: Option<String>,
        payload_hash: Option<String>,
        verified_at: DateTime<Utc>,
    }

    fn vectors() -> Vec<Vector> {
        VECTORS
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let s = |k: &str| v[k].as_str().map(str::to_owned);
                Vector {
                    name: s("name").unwrap(),
                    wire: decode_base64(v["wire"].as_str().unwrap()).unwrap(),
                    verdict: s("verdict").unwrap(),
                    category: s("category"),
                    canonical_payload: s("canonical_payload"),
                    canonical_header: s("canonical_header"),
                    payload_hash: v["meta"]["payload_hash"].as_str().map(str::to_owned),
                    verified_at: DateTime::parse_from_rfc3339(v["verified_at"].as_str().unwrap())
                        .unwrap()
                        .with_timezone(&Utc),
                }
            })
            .collect()
    }

    fn dec(b: &[u8]) -> Result<Envelope, envelope::DecodeError> {
        decode(Bytes::copy_from_slice(b), &Limits::default())
    }

    fn verifier() -> Verifier {
        Verifier::new(VerifyConfig::default())
    }

    #[test]
    fn every_vector_matches_nekhebet_core() {
        let v = verifier();
        let vs = vectors();
        assert_eq!(vs.len(), 482);
        for t in &vs {
            let got = match dec(&t.wire) {
                Err(_) => ("undecodable".to_owned(), None),
                Ok(env) => {
                    let cp = canonical::canonical_payload(env.payload.get()).unwrap();
                    assert_eq!(
                        std::str::from_utf8(&cp).unwrap(),
                        t.canonical_payload.as_deref().unwrap(),
                        "{}",
                        t.name
                    );
                    // The tampered payloads keep the original header's hash.
                    let hash_matches = canonical::sha256_hex(&cp)
                        == t.payload_hash.as_deref().unwrap().to_ascii_lowercase();
                    assert_eq!(
                        hash_matches,
                        !t.name.starts_with("payload-tampered-"),
                        "{}",
                        t.name
                    );
                    let ch = envelope::canonical_header(&env.header).unwrap();
                    assert_eq!(
                        std::str::from_utf8(&ch).unwrap(),
                        t.canonical_header.as_deref().unwrap(),
                        "{}",
                        t.name
                    );
                    let r = v.verify(&env, t.verified_at);
                    if r.is_ok() {
                        validate(&env).unwrap();
                    }
                    match r {
                        Ok(()) => ("valid".to_owned(), None),
                        Err(r) => ("invalid".to_owned(), Some(r.reason.as_str().to_owned())),
                    }
                }
            };
            assert_eq!(got, (t.verdict.clone(), t.category.clone()), "{}", t.name);
        }
    }

    #[test]
    fn batch_agrees_with_single_on_vectors() {
        let v = verifier();
        let vs = vectors();
        let at = vs[0].verified_at;
        assert!(vs.iter().all(|t| t.verified_at == at));
        let envs: Vec<Envelope> = vs.iter().filter_map(|t| dec(&t.wire).ok()).collect();
        let refs: Vec<&Envelope> = envs.iter().collect();
        let batch = v.verify_batch(&refs, at);
        for (env, got) in envs.iter().zip(batch) {
            assert_eq!(got, v.verify(env, at));
        }
    }

    #[test]
    fn samples_verify_at_issue_time() {
        let v = verifier();
        let envs: Vec<Envelope> = SAMPLES
            .lines()
            .map(|l| dec(l.as_bytes()).unwrap())
            .collect();
        assert_eq!(envs.len(), 2000);
        // Each at its own issue time (in parallel: debug-build Ed25519 is slow).
        envs.par_iter().for_each(|env| {
            assert!(env.header.expires_at.is_none());
            assert_eq!(v.verify(env, env.header.issued_at_ts), Ok(()));
        });
        // Batch: all are valid at the latest issue time (no expiry, none in the future).
        let at = envs.iter().map(|e| e.header.issued_at_ts).max().unwrap();
        let refs: Vec<&Envelope> = envs.iter().collect();
        assert!(v.verify_batch(&refs, at).iter().all(Result::is_ok));
    }

    #[test]
    fn batch_finds_the_bad_ones() {
        let v = verifier();
        let mut envs: Vec<Envelope> = SAMPLES
            .lines()
            .take(300)
            .map(|l| dec(l.as_bytes()).unwrap())
            .collect();
        let at = envs.iter().map(|e| e.header.issued_at_ts).max().unwrap();
        for i in [3usize, 150, 151, 299] {
            envs[i].signature[10] ^= 1;
        }
        envs[7].header.payload_hash = "0".repeat(64);
        let refs: Vec<&Envelope> = envs.iter().collect();
        let out = v.verify_batch(&refs, at);
        for (i, r) in out.iter().enumerate() {
            let want = match i {
                3 | 150 | 151 | 299 | 7 => Some(Reason::SignatureInvalid),
                _ => None,
            };
            assert_eq!(r.as_ref().err().map(|r| r.reason), want, "{i}");
            assert_eq!(*r, v.verify(&envs[i], at));
        }
        assert!(v.verify_batch(&[], at).is_empty());
    }

    /// Signed by its key holder with R = rB + T (T of order 2): OpenSSL, and so
    /// nekhebet-core, rejects it (generated and checked with nekhebet-core 4.0.0).
    const TORSION_R: &str = r#"{"header":{"id":"0b7e3a4c-0000-4000-8000-000000000001","type":"omen.observed","version":"4.0.0","source":"mallory","issued_at":"2026-11-25T16:00:00.000Z","expires_at":null,"nonce":"abababababababababababababababababababababababababababababababab","key_id":"mallory","algorithm":"ed25519","canonicalization":"rfc8785","payload_hash":"a0da1fce57d0e4f9f0ae4e4cbe040d34dcc046255c6c8d18e97f55aaed0655f0","context":null,"extensions":null},"payload":{"k":1},"signature":{"signature":"HXSrHYdA6p6KtuPwniyR2okW4KFIM5t7P3pZzCtZDts3YaOrP3LpfvCetG/hGJqfh3XG7e6ztEgGe0dDCq0EBA==","public_key":"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="}}"#;

    #[test]
    fn torsion_component_in_r() {
        let bad = dec(TORSION_R.as_bytes()).unwrap();
        let at = bad.header.issued_at_ts;
        let v = verifier();
        assert_eq!(
            v.verify(&bad, at).unwrap_err().reason,
            Reason::SignatureInvalid
        );
        let exact = verifier().exact_batches(true);
        let honest: Vec<Envelope> = SAMPLES
            .lines()
            .take(40)
            .map(|l| dec(l.as_bytes()).unwrap())
            .collect();
        // The default batch equations accept it in about half of these compositions
        // (9 of 16 when this was written); the exact mode never does.
        for k in 0..16 {
            let mut refs: Vec<&Envelope> = honest[k..k + 15].iter().collect();
            refs.insert(k % 15, &bad);
            let later = honest
                .iter()
                .map(|e| e.header.issued_at_ts)
                .max()
                .unwrap()
                .max(at);
            let r = exact.verify_batch(&refs, later);
            assert_eq!(
                r[k % 15].as_ref().unwrap_err().reason,
                Reason::SignatureInvalid
            );
            assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 15);
        }
    }

    #[test]
    fn key_registry() {
        let line = SAMPLES.lines().next().unwrap();
        let env = dec(line.as_bytes()).unwrap();
        let at = env.header.issued_at_ts;
        let with = |keys: HashMap<String, Vec<[u8; 32]>>| {
            Verifier::new(VerifyConfig {
                keys: Some(keys),
                ..VerifyConfig::default()
            })
            .verify(&env, at)
            .map_err(|r| r.reason)
        };
        let kid = env.header.key_id.clone();
        assert_eq!(
            with(HashMap::from([(
                kid.clone(),
                vec![[9; 32], env.public_key]
            )])),
            Ok(())
        );
        assert_eq!(
            with(HashMap::from([(kid, vec![[9; 32]])])),
            Err(Reason::KeyIdMismatch)
        );
        assert_eq!(
            with(HashMap::from([("other".to_owned(), vec![env.public_key])])),
            Err(Reason::KeyIdMismatch)
        );
    }

    #[test]
    fn clock_edges() {
        let v = verifier();
        let line = SAMPLES.lines().next().unwrap();
        let env = dec(line.as_bytes()).unwrap();
        let t = env.header.issued_at_ts;
        let skew = Duration::seconds(300);
        assert_eq!(v.verify(&env, t - skew), Ok(()));
        // Python's datetime has no nanoseconds: the instant is truncated to microseconds.
        assert_eq!(
            v.verify(&env, t - skew + Duration::nanoseconds(999)),
            Ok(())
        );
        assert_eq!(
            v.verify(&env, t - skew - Duration::nanoseconds(1))
                .unwrap_err()
                .reason,
            Reason::TimestampFuture
        );
        assert_eq!(
            v.verify(&env, t - skew - Duration::microseconds(1))
                .unwrap_err()
                .reason,
            Reason::TimestampFuture
        );
    }

    #[test]
    fn category_order_matches_nekhebet_core() {
        let v = verifier();
        let line = SAMPLES.lines().next().unwrap();
        let base = dec(line.as_bytes()).unwrap();
        let at = base.header.issued_at_ts;
        let cat = |f: &dyn Fn(&mut Envelope)| {
            let mut e = base.clone();
            f(&mut e);
            v.verify(&e, at).err().map(|r| r.reason)
        };
        assert_eq!(cat(&|_| {}), None);
        // Each earlier check wins over every later one.
        let all_bad = |e: &mut Envelope| {
            e.header.event_type = "nope".into();
            e.header.version = "5".into();
            e.header.nonce = "x".into();
            e.header.issued_at = "2999-01-01T00:00:00Z".into();
            e.signature[0] ^= 1;
            e.header.payload_hash = "f".repeat(64);
        };
        assert_eq!(cat(&all_bad), Some(Reason::EventTypeInvalid));
        assert_eq!(
            cat(&|e| {
                all_bad(e);
                e.header.event_type = "seth.caught".into();
            }),
            Some(Reason::UnsupportedVersion)
        );
        assert_eq!(
            cat(&|e| {
                all_bad(e);
                e.header.event_type = "seth.caught".into();
                e.header.version = "4.0.0".into();
            }),
            Some(Reason::StructureInvalid)
        );
        // Future issue time beats a malformed expires_at, as in nekhebet-core.
        assert_eq!(
            cat(&|e| {
                e.header.issued_at = "2999-01-01T00:00:00Z".into();
                e.header.expires_at = Some("garbage".into());
            }),
            Some(Reason::TimestampFuture)
        );
        assert_eq!(
            cat(&|e| e.header.expires_at = Some("2000-01-01T00:00:00Z".into())),
            Some(Reason::StructureInvalid)
        );
        assert_eq!(
            cat(&|e| e.header.expires_at = Some(e.header.issued_at.clone())),
            Some(Reason::SignatureInvalid)
        );
        // The store-only rules are structure_invalid at step 3.
        assert_eq!(
            cat(&|e| e.header.key_id = "a b".into()),
            Some(Reason::StructureInvalid)
        );
        assert_eq!(
            cat(&|e| e.header.id_raw = e.header.id_raw.to_uppercase()),
            Some(Reason::StructureInvalid)
        );
        assert_eq!(
            cat(&|e| e.header.expires_at = Some(String::new())),
            Some(Reason::StructureInvalid)
        );
        assert_eq!(
            cat(&|e| e.signature_len = 63),
            Some(Reason::StructureInvalid)
        );
        // A bad signature beats a bad payload.
        assert_eq!(
            cat(&|e| {
                e.signature[0] ^= 1;
                e.payload = serde_json::value::RawValue::from_string("{\"a\":1}".into()).unwrap();
            }),
            Some(Reason::SignatureInvalid)
        );
        assert_eq!(
            cat(&|e| e.payload =
                serde_json::value::RawValue::from_string("{\"a\":1}".into()).unwrap()),
            Some(Reason::HashMismatch)
        );
    }

    #[test]
    fn estimate_matches_python() {
        // Values computed with nekhebet_core.utils.estimate_payload_size.
        let cases: &[(&str, usize)] = &[
            ("{}", 2),
            ("{\"a\":1}", 8),
            ("{\"a\":true,\"b\":false,\"c\":null}", 32),
            ("{\"é😀\":\"\\u0000x\",\"n\":-0,\"f\":1e16,\"g\":[]}", 38),
            (
                "{\"x\":[1,[2,[3.5]]],\"y\":123456789012345678901234567890}",
                56,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                estimate_payload_size(&canonical::parse(text).unwrap()),
                Ok(*want),
                "{text}"
            );
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(16), "]".repeat(16));
        assert_eq!(
            estimate_payload_size(&canonical::parse(&deep).unwrap()),
            Err(17)
        );
    }

    #[test]
    fn oversized_payload_is_payload_too_large() {
        use crate::dev::signing::{sign, EnvelopeSpec};
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let spec = EnvelopeSpec {
            event_type: "charon.transported".into(),
            source: "s".into(),
            key_id: "k".into(),
            payload: serde_json::json!({ "blob": "x".repeat(MAX_ABSOLUTE_PAYLOAD_SIZE) }),
            issued_at: None,
            expires_at: None,
            nonce: None,
            id: None,
        };
        let wire = sign(&spec, &key);
        let env = dec(&wire).unwrap();
        validate(&env).unwrap();
        let r = verifier().verify(&env, Utc::now()).unwrap_err();
        assert_eq!(r.reason, Reason::PayloadTooLarge);
    }

    #[test]
    fn verify_lines_reports_vectors() {
        let vs = vectors();
        let mut input = Vec::new();
        for t in &vs {
            input.extend_from_slice(&t.wire);
            input.push(b'\n');
        }
        let mut out = Vec::new();
        let s = verify_lines(
            &input[..],
            &mut out,
            vs[0].verified_at,
            &verifier(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            (s.lines, s.valid, s.invalid, s.undecodable),
            (482, 240, 152, 90)
        );
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), vs.len());
        for (i, (l, t)) in lines.iter().zip(&vs).enumerate() {
            assert_eq!(l["line"], i + 1);
            assert_eq!(l["verdict"], t.verdict.as_str(), "{}", t.name);
            assert_eq!(l["category"].as_str(), t.category.as_deref(), "{}", t.name);
            assert_eq!(l["id"].is_null(), t.verdict == "undecodable");
        }
        let first = out.lines().next().unwrap();
        assert!(first.starts_with("{\"line\":1,\"verdict\":\"valid\",\"category\":null,\"id\":\""));
    }

    #[test]
    fn verify_lines_bounds_long_lines() {
        let line = SAMPLES.lines().next().unwrap();
        let limits = Limits {
            max_message_bytes: line.len(),
        };
        let input = format!("{line}\n{line} \n{}\n{line}", "x".repeat(100_000));
        let at = dec(line.as_bytes()).unwrap().header.issued_at_ts;
        let mut out = Vec::new();
        let s = verify_lines(input.as_bytes(), &mut out, at, &verifier(), &limits).unwrap();
        assert_eq!((s.lines, s.valid, s.undecodable), (4, 2, 2));
        assert_eq!(s.by_reason.get(&Reason::MessageTooLarge), Some(&2));
        let mut buf = Vec::new();
        let mut r = std::io::BufReader::with_capacity(7, "abcdefghij\nxy".as_bytes());
        assert_eq!(read_line_bounded(&mut r, 3, &mut buf).unwrap(), Some(10));
        assert_eq!(buf, b"abcd");
        buf.clear();
        assert_eq!(read_line_bounded(&mut r, 3, &mut buf).unwrap(), Some(2));
        assert_eq!(buf, b"xy");
        buf.clear();
        assert_eq!(read_line_bounded(&mut r, 3, &mut buf).unwrap(), None);
    }

    #[test]
    fn verify_lines_handles_blank_and_unterminated_lines() {
        let line = SAMPLES.lines().next().unwrap();
        let input = format!("{line}\n\n{line}");
        let env = dec(line.as_bytes()).unwrap();
        let mut out = Vec::new();
        let s = verify_lines(
            input.as_bytes(),
            &mut out,
            env.header.issued_at_ts,
            &verifier(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!((s.lines, s.valid, s.undecodable), (3, 2, 1));
        assert_eq!(s.by_reason.get(&Reason::EmptyMessage), Some(&1));
    }
}
