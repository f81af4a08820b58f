//! nekhebet-core canonical JSON, byte for byte.
//!
//! nekhebet-core 4.0.0 signs and hashes `json.dumps(obj, sort_keys=True,
//! separators=(",", ":"), ensure_ascii=False, allow_nan=False)` of the Python objects
//! msgspec decoded from the wire. Reproducing that needs the *Python* view of a JSON
//! document, which serde_json does not give us:
//! - a number without fraction or exponent is a Python `int` of any size (`-0` is `0`),
//!   anything else is an IEEE double printed with `float.__repr__`;
//! - object keys are sorted by code point (UTF-8 byte order is the same order);
//! - strings escape only `"`, `\` and C0 controls.
//!
//! So this module carries its own small JSON parser ([`parse()`]) that keeps number text,
//! rejects what msgspec rejects (and duplicate keys, which msgspec silently collapses),
//! and never recurses deeper than [`MAX_NESTING`]. The same tree feeds the canonical
//! writer and the msgspec-compatible wire writer used by `signing`.
//!
//! The parts:
//! - `parse.rs`: the strict parser ([`parse()`], [`Json`], [`ParseError`], the crate's `Parser`);
//! - `float.rs`: Python `repr` and msgspec float text ([`python_float_repr`], [`msgspec_float`]);
//! - `write.rs`: the canonical and the msgspec writers ([`write_canonical`], [`write_msgspec`],
//!   [`write_json_string`]);
//! - here: the entry points ([`canonicalize_str`], [`canonical_payload`], [`payload_hash`]).
//!
//! The envelope header's canonical form is built next to the header
//! (`envelope::canonical_header`): this module knows nothing of envelopes.

mod float;
mod parse;
mod scan;
mod write;

pub use float::{msgspec_float, python_float_repr};
pub(crate) use parse::Parser;
pub use parse::{parse, Json, ParseError, MAX_INT_LITERAL_LEN, MAX_NESTING};
pub use write::{write_canonical, write_json_string, write_msgspec};

use sha2::{Digest, Sha256};

/// Why canonicalization failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// The input is not acceptable JSON.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// nekhebet-core canonicalizes dicts only (payload, context, extensions).
    #[error("expected a JSON object, got {found}")]
    NotAnObject {
        /// JSON type found.
        found: &'static str,
    },
}

// ---------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------

/// Canonical form of any JSON document, as `json.dumps(..., sort_keys=True,
/// separators=(",", ":"), ensure_ascii=False, allow_nan=False)` prints what msgspec
/// decodes from it.
pub fn canonicalize_str(json: &str) -> Result<String, CanonicalError> {
    let v = parse(json)?;
    let mut out = Vec::with_capacity(json.len());
    write_canonical(&v, &mut out);
    Ok(String::from_utf8(out).expect("the canonical writer only emits UTF-8"))
}

/// Canonical bytes of a payload, which must be a JSON object (nekhebet-core's
/// `canonicalize` refuses anything but a dict).
pub fn canonical_payload(payload_json: &str) -> Result<Vec<u8>, CanonicalError> {
    let v = parse(payload_json)?;
    canonical_object_bytes(&v)
}

/// Canonical bytes of an already parsed object.
pub fn canonical_object_bytes(v: &Json<'_>) -> Result<Vec<u8>, CanonicalError> {
    if !matches!(v, Json::Object(_)) {
        return Err(CanonicalError::NotAnObject { found: v.kind() });
    }
    let mut out = Vec::with_capacity(256);
    write_canonical(v, &mut out);
    Ok(out)
}

/// Lowercase hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of the canonical payload: what `header.payload_hash` must be.
pub fn payload_hash(payload_json: &str) -> Result<String, CanonicalError> {
    Ok(sha256_hex(&canonical_payload(payload_json)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(super) use crate::test_data::VECTORS;

    #[test]
    fn canonical_examples() {
        let cases: &[(&str, &str)] = &[
            (r#"{"b":1,"a":2}"#, r#"{"a":2,"b":1}"#),
            (
                r#" { "a" : [ 1 , 2.0 , -0 , -0.0 , 1E2 ] } "#,
                r#"{"a":[1,2.0,0,-0.0,100.0]}"#,
            ),
            (
                r#"{"x":1e16,"y":1e-7,"z":1000000000000000.0}"#,
                r#"{"x":1e+16,"y":1e-07,"z":1000000000000000.0}"#,
            ),
            (
                r#"{"n":18446744073709551616}"#,
                r#"{"n":18446744073709551616}"#,
            ),
            (
                r#"{"s":"\u00e9\ud83d\ude00\u2028\u007f\/"}"#,
                "{\"s\":\"é😀\u{2028}\u{7f}/\"}",
            ),
            (
                r#"{"c":"\u0000\u001f\b\f\n\r\t\"\\"}"#,
                r#"{"c":"\u0000\u001f\b\f\n\r\t\"\\"}"#,
            ),
            // Code point order: U+FF61 (3 UTF-8 bytes) sorts before U+1F600 (4 bytes)
            // although UTF-16 would put the surrogate pair first.
            (
                "{\"\u{1F600}\":1,\"\u{FF61}\":2,\"z\":3,\"\u{e9}\":4}",
                "{\"z\":3,\"\u{e9}\":4,\"\u{FF61}\":2,\"\u{1F600}\":1}",
            ),
            (r#"{"e":1e-999}"#, r#"{"e":0.0}"#),
            ("[]", "[]"),
            ("{}", "{}"),
            ("true", "true"),
        ];
        for (input, want) in cases {
            assert_eq!(&canonicalize_str(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn payload_hash_of_vectors() {
        for line in VECTORS.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let Some(cp) = v["canonical_payload"].as_str() else {
                continue;
            };
            // Canonical text is a fixed point of canonicalization.
            assert_eq!(canonicalize_str(cp).unwrap(), cp);
            let want = v["meta"]["payload_hash"]
                .as_str()
                .unwrap()
                .to_ascii_lowercase();
            // The tampered payloads keep the original header's hash.
            let tampered = v["name"].as_str().unwrap().starts_with("payload-tampered-");
            assert_eq!(
                payload_hash(cp).unwrap() == want,
                !tampered,
                "{}",
                v["name"]
            );
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
            "[\\x00-\\x1f\"\\\\\u{7f}\u{2028}a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_is_a_fixed_point(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap();
            let once = canonicalize_str(&text).unwrap();
            let twice = canonicalize_str(&once).unwrap();
            prop_assert_eq!(&once, &twice);
        }
    }
}
