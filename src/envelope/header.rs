//! The signed header and its canonical form, the exact bytes nekhebet-core signs.
//!
//! The canonicalization lives beside the header it serializes, on the envelope side, so the
//! dependency runs one way: `envelope` uses `canonical` (the parser and the writers), and
//! `canonical` knows nothing of envelopes.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::canonical::{parse, write_canonical, write_json_string, CanonicalError, Json};

/// The signed header. Text fields are exactly as on the wire (escapes resolved).
#[derive(Debug, Clone)]
pub struct Header {
    /// `id` as a UUID; the nil UUID when `id_raw` is not one
    /// ([`validate`](super::validate()) rejects that).
    pub id: uuid::Uuid,
    /// `id` exactly as on the wire: nekhebet-core signs the string, not the UUID.
    pub id_raw: String,
    /// `type`.
    pub event_type: String,
    /// `version` (default "4.0.0" when absent, as in nekhebet-core).
    pub version: String,
    /// `source`.
    pub source: String,
    /// `issued_at`, exactly as on the wire.
    pub issued_at: String,
    /// `issued_at` parsed at microsecond precision (Python `datetime`, truncating extra
    /// digits); the Unix epoch when `issued_at` is malformed
    /// ([`validate`](super::validate()) rejects that).
    pub issued_at_ts: DateTime<Utc>,
    /// `expires_at`, exactly as on the wire (`None` for null or absent).
    pub expires_at: Option<String>,
    /// `expires_at` parsed; `None` when absent or malformed.
    pub expires_at_ts: Option<DateTime<Utc>>,
    /// `nonce`.
    pub nonce: String,
    /// `key_id`.
    pub key_id: String,
    /// `algorithm` (always "ed25519": msgspec refuses any other value).
    pub algorithm: String,
    /// `canonicalization` (always "rfc8785": msgspec refuses any other value).
    pub canonicalization: String,
    /// `payload_hash`.
    pub payload_hash: String,
    /// `context` object text, `None` for null or absent.
    pub context: Option<Box<RawValue>>,
    /// `extensions` object text, `None` for null or absent.
    pub extensions: Option<Box<RawValue>>,
}
/// The exact bytes nekhebet-core signs: `canonicalize(msgspec.to_builtins(header))`,
/// i.e. all thirteen header fields (defaults and nulls included), keys sorted, `id` as
/// the string it was on the wire, `context`/`extensions` canonicalized recursively.
pub fn canonical_header(h: &Header) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"algorithm\":");
    write_json_string(&h.algorithm, &mut out);
    out.extend_from_slice(b",\"canonicalization\":");
    write_json_string(&h.canonicalization, &mut out);
    out.extend_from_slice(b",\"context\":");
    write_optional_object(h.context.as_deref().map(|r| r.get()), &mut out)?;
    out.extend_from_slice(b",\"expires_at\":");
    match &h.expires_at {
        Some(s) => write_json_string(s, &mut out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"extensions\":");
    write_optional_object(h.extensions.as_deref().map(|r| r.get()), &mut out)?;
    out.extend_from_slice(b",\"id\":");
    write_json_string(&h.id_raw, &mut out);
    out.extend_from_slice(b",\"issued_at\":");
    write_json_string(&h.issued_at, &mut out);
    out.extend_from_slice(b",\"key_id\":");
    write_json_string(&h.key_id, &mut out);
    out.extend_from_slice(b",\"nonce\":");
    write_json_string(&h.nonce, &mut out);
    out.extend_from_slice(b",\"payload_hash\":");
    write_json_string(&h.payload_hash, &mut out);
    out.extend_from_slice(b",\"source\":");
    write_json_string(&h.source, &mut out);
    out.extend_from_slice(b",\"type\":");
    write_json_string(&h.event_type, &mut out);
    out.extend_from_slice(b",\"version\":");
    write_json_string(&h.version, &mut out);
    out.push(b'}');
    Ok(out)
}

fn write_optional_object(raw: Option<&str>, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match raw {
        None => out.extend_from_slice(b"null"),
        Some(text) => {
            let v = parse(text)?;
            match v {
                Json::Object(_) => write_canonical(&v, out),
                // The decoder stores JSON null as `None`; anything else is not a dict.
                Json::Null => out.extend_from_slice(b"null"),
                other => {
                    return Err(CanonicalError::NotAnObject {
                        found: other.kind(),
                    })
                }
            }
        }
    }
    Ok(())
}
