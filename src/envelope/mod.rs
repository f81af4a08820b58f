//! Nekhebet v4 wire envelopes: strict decoding and the store's structural rules. Pure.
//!
//! [`decode()`] accepts exactly what nekhebet-core 4.0.0's `from_json_bytes` (msgspec)
//! accepts, minus what the store refuses on principle (oversize, duplicate keys, invalid
//! UTF-8 anywhere — see `docs/reasons.md`). Like msgspec it ignores unknown fields,
//! fills defaulted header fields (`version`, `algorithm`, `canonicalization`,
//! `expires_at`, `context`, `extensions`) and does *not* check formats: a bad nonce or a
//! 3-byte signature decodes, and [`validate()`] (or the verifier) rejects it, which is
//! where nekhebet-core rejects it too.
//!
//! The parts:
//! - `types.rs`: [`Envelope`], [`Limits`], [`Rejection`];
//! - `header.rs`: the signed [`Header`] and [`canonical_header`], the exact bytes nekhebet-core
//!   signs (kept beside the header so that `canonical` never depends on this module: envelope →
//!   canonical, never the reverse);
//! - `decode.rs`: [`decode()`] and [`DecodeError`];
//! - `validate.rs`: [`validate()`], [`ValidationError`] and the field rules ([`parse_timestamp`],
//!   [`is_valid_nonce`], [`is_valid_key_id`], …);
//! - `b64.rs`: msgspec's base64 ([`decode_base64`], [`encode_base64`]).

mod b64;
mod decode;
mod header;
mod types;
mod validate;

pub use crate::reason::Reason;
pub use b64::{decode_base64, encode_base64};
pub use decode::{decode, DecodeError};
pub use header::{canonical_header, Header};
pub use types::{Envelope, Limits, Rejection};
pub(crate) use validate::{check_core_structure, check_store_structure};
pub use validate::{
    is_valid_key_id, is_valid_nonce, is_valid_payload_hash, max_value_depth, parse_timestamp,
    validate, ValidationError,
};

/// Default [`Limits::max_message_bytes`]: 2 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;
/// Longest `source`, in characters (nekhebet-core `MAX_SOURCE_LENGTH`).
pub const MAX_SOURCE_CHARS: usize = 128;
/// Longest `type`, in characters (nekhebet-core `MAX_EVENT_TYPE_LENGTH`).
pub const MAX_TYPE_CHARS: usize = 64;
/// Deepest payload value; the payload object itself is depth 0 (nekhebet-core
/// `MAX_PAYLOAD_DEPTH`, as `estimate_payload_size` counts it).
pub const MAX_PAYLOAD_DEPTH: usize = 16;
/// The only `version` nekhebet-core 4.0.0 verifies (and its default).
pub const VERSION: &str = "4.0.0";
/// The only `algorithm` msgspec decodes (and its default).
pub const ALGORITHM: &str = "ed25519";
/// The only `canonicalization` msgspec decodes (and its default).
pub const CANONICALIZATION: &str = "rfc8785";

/// At most the first 64 characters of a value, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::test_data::{SAMPLES, VECTORS};

    pub(super) fn vectors() -> Vec<(String, String, Vec<u8>)> {
        VECTORS
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let wire = decode_base64(v["wire"].as_str().unwrap()).unwrap();
                (
                    v["name"].as_str().unwrap().to_owned(),
                    v["verdict"].as_str().unwrap().to_owned(),
                    wire,
                )
            })
            .collect()
    }

    pub(super) fn valid_wire() -> String {
        SAMPLES.lines().next().unwrap().to_owned()
    }

    pub(super) fn dec(s: impl Into<Vec<u8>>) -> Result<Envelope, DecodeError> {
        decode(Bytes::from(s.into()), &Limits::default())
    }

    #[test]
    fn vectors_decode_and_validate_as_expected() {
        for (name, verdict, wire) in vectors() {
            let res = dec(wire);
            match verdict.as_str() {
                "undecodable" => assert!(res.is_err(), "{name} decoded"),
                _ => {
                    let env = res.unwrap_or_else(|e| panic!("{name}: {e}"));
                    let v = validate(&env);
                    if verdict == "valid" {
                        assert_eq!(v, Ok(()), "{name}");
                    }
                    if name.starts_with("bad-nonce-") {
                        assert_eq!(
                            v.as_ref().unwrap_err().reason(),
                            Reason::InvalidNonce,
                            "{name}"
                        );
                    }
                    if name.starts_with("hash-upper-") {
                        assert_eq!(v.as_ref().unwrap_err().reason(), Reason::InvalidPayloadHash);
                    }
                }
            }
        }
    }

    #[test]
    fn samples_decode_and_validate() {
        let mut n = 0;
        for line in SAMPLES.lines() {
            let env = dec(line).unwrap();
            validate(&env).unwrap();
            assert_eq!(&env.bytes[..], line.as_bytes());
            assert_eq!(env.header.id.to_string(), env.header.id_raw);
            assert_eq!(
                env.header.issued_at_ts,
                parse_timestamp(&env.header.issued_at).unwrap()
            );
            n += 1;
        }
        assert_eq!(n, 2000);
    }
}
