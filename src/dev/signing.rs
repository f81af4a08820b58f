//! The producer side: builds and signs envelopes exactly as nekhebet-core 4.0.0's
//! `create_envelope` + `sign_envelope` + `to_json_bytes` would, for the `produce`
//! command, tests and benchmarks.
//!
//! [`sign`] signs whatever the spec says (tests need envelopes that break rules);
//! [`check_spec`] applies `create_envelope`'s rules for callers that want them.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer as _, SigningKey};
use rand::RngCore as _;
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use crate::canonical;
use crate::envelope::{
    self, Header, ALGORITHM, CANONICALIZATION, MAX_SOURCE_CHARS, MAX_TYPE_CHARS, VERSION,
};
use crate::verify::{estimate_payload_size, MAX_ABSOLUTE_PAYLOAD_SIZE};

/// What to put in an envelope; `None` fields are generated as nekhebet-core does.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopeSpec {
    /// `type`.
    pub event_type: String,
    /// `source`.
    pub source: String,
    /// `key_id`.
    pub key_id: String,
    /// The payload (a JSON object for a valid envelope). With serde_json's
    /// `arbitrary_precision`, number text decides int (no `.`/exponent) versus float.
    pub payload: Value,
    /// `issued_at`; now when `None`. Written with millisecond precision (truncated).
    pub issued_at: Option<DateTime<Utc>>,
    /// `expires_at`; null when `None`.
    pub expires_at: Option<DateTime<Utc>>,
    /// `nonce`; 64 random hex digits (`secrets.token_hex(32)`) when `None`.
    pub nonce: Option<String>,
    /// `id`; a random v4 UUID when `None`.
    pub id: Option<Uuid>,
}

impl EnvelopeSpec {
    /// An `omen.observed` envelope with this payload from `key_id`; source, instants, nonce and
    /// id as nekhebet-core generates them.
    pub fn observed(key_id: &str, payload: Value) -> EnvelopeSpec {
        EnvelopeSpec {
            event_type: "omen.observed".into(),
            source: "test".into(),
            key_id: key_id.into(),
            payload,
            issued_at: None,
            expires_at: None,
            nonce: None,
            id: None,
        }
    }
}

/// Optional header objects (`create_envelope`'s `context` and `extensions`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderExtras {
    /// `context` object.
    pub context: Option<Value>,
    /// `extensions` object.
    pub extensions: Option<Value>,
}

/// Python's `dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")`.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Signs `spec` with `key` and returns the wire bytes `to_json_bytes` would produce:
/// msgspec field order, compact separators, msgspec number forms, payload members in
/// the `Value`'s iteration order.
///
/// # Panics
/// If the payload holds a number msgspec could not decode (a float overflowing to
/// infinity, an integer of more than 4,300 digits).
pub fn sign(spec: &EnvelopeSpec, key: &SigningKey) -> Vec<u8> {
    sign_with_extras(spec, &HeaderExtras::default(), key)
}

/// [`sign`] with header `context`/`extensions`.
///
/// # Panics
/// As [`sign`], for the payload and the extras.
pub fn sign_with_extras(spec: &EnvelopeSpec, extras: &HeaderExtras, key: &SigningKey) -> Vec<u8> {
    let payload_text = serde_json::to_string(&spec.payload).expect("Value serializes");
    let payload =
        canonical::parse(&payload_text).expect("payload numbers must be in msgspec's range");
    let mut canonical_payload = Vec::with_capacity(payload_text.len());
    canonical::write_canonical(&payload, &mut canonical_payload);

    let extra = |v: &Option<Value>| -> Option<String> {
        v.as_ref()
            .filter(|v| !v.is_null())
            .map(|v| serde_json::to_string(v).expect("Value serializes"))
    };
    let context_text = extra(&extras.context);
    let extensions_text = extra(&extras.extensions);

    let id = spec.id.unwrap_or_else(Uuid::new_v4);
    let issued = spec.issued_at.unwrap_or_else(Utc::now);
    let issued_at = format_timestamp(issued);
    let expires_at = spec.expires_at.map(format_timestamp);
    let header = Header {
        id,
        id_raw: id.hyphenated().to_string(),
        event_type: spec.event_type.clone(),
        version: VERSION.to_owned(),
        source: spec.source.clone(),
        issued_at_ts: envelope::parse_timestamp(&issued_at).unwrap_or(issued),
        issued_at,
        expires_at_ts: expires_at.as_deref().and_then(envelope::parse_timestamp),
        expires_at,
        nonce: spec.nonce.clone().unwrap_or_else(random_nonce),
        key_id: spec.key_id.clone(),
        algorithm: ALGORITHM.to_owned(),
        canonicalization: CANONICALIZATION.to_owned(),
        payload_hash: canonical::sha256_hex(&canonical_payload),
        context: context_text.clone().map(raw),
        extensions: extensions_text.clone().map(raw),
    };
    let header_bytes = envelope::canonical_header(&header)
        .expect("header extras must be objects in msgspec's range");
    let signature = key.sign(&header_bytes).to_bytes();
    let public_key = key.verifying_key().to_bytes();

    let mut out = Vec::with_capacity(payload_text.len() + 640);
    write_wire_header(
        &header,
        context_text.as_deref(),
        extensions_text.as_deref(),
        &mut out,
    );
    out.extend_from_slice(b",\"payload\":");
    canonical::write_msgspec(&payload, &mut out);
    out.extend_from_slice(b",\"signature\":{\"signature\":");
    canonical::write_json_string(&envelope::encode_base64(&signature), &mut out);
    out.extend_from_slice(b",\"public_key\":");
    canonical::write_json_string(&envelope::encode_base64(&public_key), &mut out);
    out.extend_from_slice(b"}}");
    out
}

fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).expect("serde_json output is JSON")
}

fn random_nonce() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// `{"header":{…}` in `EnvelopeHeader`'s field order.
fn write_wire_header(
    h: &Header,
    context: Option<&str>,
    extensions: Option<&str>,
    out: &mut Vec<u8>,
) {
    let field = |out: &mut Vec<u8>, name: &str, value: &str| {
        out.extend_from_slice(b"\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        canonical::write_json_string(value, out);
        out.push(b',');
    };
    out.extend_from_slice(b"{\"header\":{");
    field(out, "id", &h.id_raw);
    field(out, "type", &h.event_type);
    field(out, "version", &h.version);
    field(out, "source", &h.source);
    field(out, "issued_at", &h.issued_at);
    match &h.expires_at {
        Some(e) => field(out, "expires_at", e),
        None => out.extend_from_slice(b"\"expires_at\":null,"),
    }
    field(out, "nonce", &h.nonce);
    field(out, "key_id", &h.key_id);
    field(out, "algorithm", &h.algorithm);
    field(out, "canonicalization", &h.canonicalization);
    field(out, "payload_hash", &h.payload_hash);
    for (name, text) in [("context", context), ("extensions", extensions)] {
        out.extend_from_slice(b"\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match text {
            None => out.extend_from_slice(b"null"),
            Some(t) => canonical::write_msgspec(
                &canonical::parse(t).expect("checked when the header was built"),
                out,
            ),
        }
        out.push(b',');
    }
    out.pop();
    out.push(b'}');
}

/// nekhebet-core `RESERVED_PAYLOAD_FIELDS`: not allowed as payload (or context,
/// extensions) top-level keys by `create_envelope`.
pub const RESERVED_PAYLOAD_FIELDS: [&str; 15] = [
    "header",
    "signature",
    "payload_hash",
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
    "context",
    "extensions",
];

/// nekhebet-core's default base payload size (`DEFAULT_BASE_PAYLOAD_SIZE`).
pub const BASE_PAYLOAD_SIZE: usize = 256 * 1024;
/// nekhebet-core `MAX_HEADER_DICT_CANONICAL_SIZE` for `context`/`extensions`.
pub const MAX_HEADER_DICT_CANONICAL_SIZE: usize = 64 * 1024;
/// nekhebet-core `MAX_EXPIRES_SECONDS`.
pub const MAX_EXPIRES_SECONDS: i64 = 24 * 60 * 60;

/// A spec `create_envelope` would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct SpecError {
    /// The offending field.
    pub field: &'static str,
    /// The rule it breaks.
    pub rule: String,
}

fn spec_err(field: &'static str, rule: impl Into<String>) -> SpecError {
    SpecError {
        field,
        rule: rule.into(),
    }
}

/// nekhebet-core's `max_payload_multiplier` per registered type.
fn payload_multiplier(event_type: &str) -> Option<f64> {
    Some(match event_type {
        "omen.observed" | "observation.recorded" | "anubis.weighed" | "osiris.remembered" => 1.0,
        "charon.transported" => 2.0,
        "seth.caught" => 0.5,
        _ => return None,
    })
}

fn check_object(
    field: &'static str,
    v: &Value,
    max_canonical: Option<usize>,
) -> Result<usize, SpecError> {
    let Value::Object(map) = v else {
        return Err(spec_err(field, "must be a JSON object"));
    };
    if let Some(k) = map
        .keys()
        .find(|k| RESERVED_PAYLOAD_FIELDS.contains(&k.as_str()))
    {
        return Err(spec_err(field, format!("reserved field {k:?}")));
    }
    let text = serde_json::to_string(v).expect("Value serializes");
    let tree = canonical::parse(&text).map_err(|e| spec_err(field, e.to_string()))?;
    let estimated = estimate_payload_size(&tree)
        .map_err(|d| spec_err(field, format!("nesting depth {d} exceeds 16")))?;
    let canonical =
        canonical::canonical_object_bytes(&tree).map_err(|e| spec_err(field, e.to_string()))?;
    if let Some(max) = max_canonical {
        if canonical.len() > max {
            return Err(spec_err(
                field,
                format!("canonical size {} exceeds {max}", canonical.len()),
            ));
        }
    }
    Ok(estimated)
}

/// `create_envelope`'s rules: registered type, lengths, key_id and nonce formats, payload
/// (and extras) objects without reserved keys, depth ≤ 16, estimated payload size within
/// the type's policy, canonical sizes, and `expires_at` within 24 h after `issued_at`.
pub fn check_spec(spec: &EnvelopeSpec, extras: &HeaderExtras) -> Result<(), SpecError> {
    if spec.event_type.chars().count() > MAX_TYPE_CHARS {
        return Err(spec_err(
            "type",
            format!("longer than {MAX_TYPE_CHARS} characters"),
        ));
    }
    let multiplier = payload_multiplier(&spec.event_type)
        .ok_or_else(|| spec_err("type", "not a registered event type"))?;
    if spec.source.chars().count() > MAX_SOURCE_CHARS {
        return Err(spec_err(
            "source",
            format!("longer than {MAX_SOURCE_CHARS} characters"),
        ));
    }
    if !envelope::is_valid_key_id(&spec.key_id) {
        return Err(spec_err("key_id", "must match [A-Za-z0-9_-]{1,64}"));
    }
    let estimated = check_object("payload", &spec.payload, Some(MAX_ABSOLUTE_PAYLOAD_SIZE))?;
    let policy = ((BASE_PAYLOAD_SIZE as f64 * multiplier) as usize).min(MAX_ABSOLUTE_PAYLOAD_SIZE);
    if estimated > policy {
        return Err(spec_err(
            "payload",
            format!("estimated size {estimated} exceeds the {policy}-byte policy limit"),
        ));
    }
    for (field, v) in [
        ("context", &extras.context),
        ("extensions", &extras.extensions),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_null()) {
            check_object(field, v, Some(MAX_HEADER_DICT_CANONICAL_SIZE))?;
        }
    }
    if let Some(n) = &spec.nonce {
        if !envelope::is_valid_nonce(n) {
            return Err(spec_err("nonce", "must be 32-100 lowercase hex digits"));
        }
    }
    if let (Some(exp), issued) = (spec.expires_at, spec.issued_at) {
        let issued = issued.unwrap_or_else(Utc::now);
        let secs = (exp - issued).num_seconds();
        if exp <= issued || secs > MAX_EXPIRES_SECONDS {
            return Err(spec_err(
                "expires_at",
                format!("must be after issued_at and at most {MAX_EXPIRES_SECONDS}s later"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode, validate, Limits, Reason};
    use crate::verify::{Verifier, VerifyConfig};
    use bytes::Bytes;
    use chrono::TimeZone;
    use serde_json::json;

    use crate::test_data::{SAMPLES, VECTORS};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[42; 32])
    }

    fn spec() -> EnvelopeSpec {
        EnvelopeSpec {
            event_type: "omen.observed".into(),
            source: "node-7".into(),
            key_id: "collector-9".into(),
            payload: json!({"seq": 1, "reading": 1e16, "tiny": 1e-7, "big": 18446744073709551616u128.to_string().parse::<serde_json::Number>().unwrap(), "s": "é\u{0}\"\\\u{2028}😀", "nested": {"b": [1.5, -0.0, null, true]}}),
            issued_at: Some(
                Utc.with_ymd_and_hms(2026, 11, 25, 16, 0, 0).unwrap()
                    + chrono::Duration::microseconds(123_999),
            ),
            expires_at: None,
            nonce: None,
            id: None,
        }
    }

    fn dec(b: &[u8]) -> envelope::Envelope {
        decode(Bytes::copy_from_slice(b), &Limits::default()).unwrap()
    }

    #[test]
    fn round_trip_and_tampering() {
        let v = Verifier::new(VerifyConfig::default());
        let wire = sign(&spec(), &key());
        let env = dec(&wire);
        assert_eq!(env.header.issued_at, "2026-11-25T16:00:00.123Z");
        validate(&env).unwrap();
        let at = env.header.issued_at_ts;
        assert_eq!(v.verify(&env, at), Ok(()));
        check_spec(&spec(), &HeaderExtras::default()).unwrap();

        let text = String::from_utf8(wire.clone()).unwrap();
        // One bit of the signature.
        let sig_b64 = envelope::encode_base64(&env.signature);
        let mut sig = env.signature;
        sig[0] ^= 1;
        let flipped = text.replace(&sig_b64, &envelope::encode_base64(&sig));
        assert_eq!(
            v.verify(&dec(flipped.as_bytes()), at).unwrap_err().reason,
            Reason::SignatureInvalid
        );
        // One byte of the payload.
        let tampered = text.replace("\"seq\":1", "\"seq\":2");
        assert_eq!(
            v.verify(&dec(tampered.as_bytes()), at).unwrap_err().reason,
            Reason::HashMismatch
        );
        // One byte of the header.
        let tampered = text.replace("node-7", "node-8");
        assert_eq!(
            v.verify(&dec(tampered.as_bytes()), at).unwrap_err().reason,
            Reason::SignatureInvalid
        );
        // Wire-form-only changes keep the signature and hash valid.
        let reformatted = text.replace("\"reading\":1e16", "\"reading\":10000000000000000.0");
        assert_eq!(v.verify(&dec(reformatted.as_bytes()), at), Ok(()));
    }

    #[test]
    fn wire_form_is_msgspecs() {
        let wire = String::from_utf8(sign(&spec(), &key())).unwrap();
        assert!(wire.starts_with("{\"header\":{\"id\":\""), "{wire}");
        for part in [
            "\"version\":\"4.0.0\",\"source\":\"node-7\",\"issued_at\":\"2026-11-25T16:00:00.123Z\",\"expires_at\":null,\"nonce\":\"",
            "\"key_id\":\"collector-9\",\"algorithm\":\"ed25519\",\"canonicalization\":\"rfc8785\",\"payload_hash\":\"",
            "\"context\":null,\"extensions\":null},\"payload\":{",
            "\"reading\":1e16",
            "\"tiny\":1e-7",
            "\"big\":18446744073709551616",
            "\"s\":\"é\\u0000\\\"\\\\\u{2028}😀\"",
            "\"b\":[1.5,-0.0,null,true]",
            "},\"signature\":{\"signature\":\"",
        ] {
            assert!(wire.contains(part), "{part} not in {wire}");
        }
        assert!(wire.ends_with("=\"}}"));
    }

    /// The header sign() writes is byte for byte the header nekhebet-core wrote for
    /// each sample, given the same fields.
    #[test]
    fn header_bytes_match_samples() {
        for line in SAMPLES.lines().take(200) {
            let env = dec(line.as_bytes());
            let h = &env.header;
            let spec = EnvelopeSpec {
                event_type: h.event_type.clone(),
                source: h.source.clone(),
                key_id: h.key_id.clone(),
                payload: serde_json::from_str(env.payload.get()).unwrap(),
                issued_at: Some(h.issued_at_ts),
                expires_at: h.expires_at_ts,
                nonce: Some(h.nonce.clone()),
                id: Some(h.id),
            };
            let wire = sign(&spec, &key());
            let cut = |b: &[u8]| {
                let s = std::str::from_utf8(b).unwrap().to_owned();
                s[..s.find(",\"payload\":").unwrap()].to_owned()
            };
            assert_eq!(cut(&wire), cut(line.as_bytes()));
        }
    }

    /// msgspec re-encoding of every valid vector and sample payload reproduces its
    /// wire bytes: float forms, escapes, integer forms.
    #[test]
    fn msgspec_writer_reproduces_wire_payloads() {
        let mut wires: Vec<Vec<u8>> = SAMPLES.lines().map(|l| l.as_bytes().to_vec()).collect();
        for l in VECTORS.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["verdict"] == "valid" {
                wires.push(envelope::decode_base64(v["wire"].as_str().unwrap()).unwrap());
            }
        }
        assert_eq!(wires.len(), 2240);
        for w in wires {
            let env = dec(&w);
            let p = env.payload.get();
            let mut out = Vec::new();
            canonical::write_msgspec(&canonical::parse(p).unwrap(), &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), p);
            for raw in [&env.header.context, &env.header.extensions]
                .into_iter()
                .flatten()
            {
                let mut out = Vec::new();
                canonical::write_msgspec(&canonical::parse(raw.get()).unwrap(), &mut out);
                assert_eq!(std::str::from_utf8(&out).unwrap(), raw.get());
            }
        }
    }

    #[test]
    fn extras_round_trip() {
        let extras = HeaderExtras {
            context: Some(json!({"trace": "t1", "w": 1e-5})),
            extensions: Some(json!({"x": {"😀": [1, 2.5]}})),
        };
        let mut s = spec();
        s.expires_at = Some(s.issued_at.unwrap() + chrono::Duration::hours(1));
        check_spec(&s, &extras).unwrap();
        let wire = sign_with_extras(&s, &extras, &key());
        let text = String::from_utf8(wire.clone()).unwrap();
        assert!(
            text.contains("\"context\":{\"trace\":\"t1\",\"w\":0.00001}"),
            "{text}"
        );
        assert!(text.contains("\"expires_at\":\"2026-11-25T17:00:00.123Z\""));
        let env = dec(&wire);
        let v = Verifier::new(VerifyConfig::default());
        assert_eq!(v.verify(&env, env.header.issued_at_ts), Ok(()));
        let ch = String::from_utf8(envelope::canonical_header(&env.header).unwrap()).unwrap();
        assert!(
            ch.contains("\"context\":{\"trace\":\"t1\",\"w\":1e-05}"),
            "{ch}"
        );
    }

    #[test]
    fn spec_rules() {
        let bad = |f: &dyn Fn(&mut EnvelopeSpec)| {
            let mut s = spec();
            f(&mut s);
            check_spec(&s, &HeaderExtras::default()).unwrap_err().field
        };
        assert_eq!(bad(&|s| s.event_type = "nope".into()), "type");
        assert_eq!(bad(&|s| s.source = "x".repeat(129)), "source");
        assert_eq!(bad(&|s| s.key_id = "a b".into()), "key_id");
        assert_eq!(bad(&|s| s.nonce = Some("ABC".into())), "nonce");
        assert_eq!(bad(&|s| s.payload = json!([1])), "payload");
        assert_eq!(bad(&|s| s.payload = json!({"nonce": 1})), "payload");
        assert_eq!(
            bad(&|s| s.payload = json!({"blob": "x".repeat(300 * 1024)})),
            "payload"
        );
        assert_eq!(bad(&|s| s.expires_at = s.issued_at), "expires_at");
        assert_eq!(
            bad(&|s| s.expires_at = Some(s.issued_at.unwrap() + chrono::Duration::hours(25))),
            "expires_at"
        );
        let mut s = spec();
        s.payload = json!({"blob": "x".repeat(300 * 1024)});
        s.event_type = "charon.transported".into();
        check_spec(&s, &HeaderExtras::default()).unwrap();
    }

    #[test]
    fn signs_rule_breaking_specs_for_tests() {
        let mut s = spec();
        s.nonce = Some("XYZ".into());
        let env = dec(&sign(&s, &key()));
        assert_eq!(validate(&env).unwrap_err().reason(), Reason::InvalidNonce);
    }
}
