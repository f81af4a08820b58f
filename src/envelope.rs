//! Nekhebet v4 wire envelopes: strict decoding and the store's structural rules. Pure.
//!
//! [`decode`] accepts exactly what nekhebet-core 4.0.0's `from_json_bytes` (msgspec)
//! accepts, minus what the store refuses on principle (oversize, duplicate keys, invalid
//! UTF-8 anywhere — see `docs/reasons.md`). Like msgspec it ignores unknown fields,
//! fills defaulted header fields (`version`, `algorithm`, `canonicalization`,
//! `expires_at`, `context`, `extensions`) and does *not* check formats: a bad nonce or a
//! 3-byte signature decodes, and [`validate`] (or the verifier) rejects it, which is
//! where nekhebet-core rejects it too.

use std::borrow::Cow;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde_json::value::RawValue;

use crate::canonical::{Json, ParseError, Parser};

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

/// Stable, machine-readable rejection codes: the Kafka dead-letter header
/// `nekhebet.reason` and the `reason` label of the rejection counter.
///
/// Decode codes mean nekhebet-core's `from_json_bytes` would refuse the message (or the
/// store refuses it before parsing); validation codes mean it decodes but breaks a
/// structural rule; the rest are nekhebet-core's verification categories.
pub mod reason {
    /// Zero-length message (a Kafka tombstone or empty value).
    pub const EMPTY_MESSAGE: &str = "empty_message";
    /// Larger than `Limits::max_message_bytes`.
    pub const MESSAGE_TOO_LARGE: &str = "message_too_large";
    /// Not valid UTF-8 anywhere in the message.
    pub const INVALID_UTF8: &str = "invalid_utf8";
    /// JSON ends early (truncated message, or only whitespace).
    pub const TRUNCATED_JSON: &str = "truncated_json";
    /// JSON syntax error: BOM, trailing garbage, NaN/Infinity, raw control characters,
    /// bad escapes, lone surrogates, leading zeros, ...
    pub const MALFORMED_JSON: &str = "malformed_json";
    /// Containers nested deeper than the parser allows.
    pub const TOO_DEEP: &str = "too_deep";
    /// An object repeats a key.
    pub const DUPLICATE_KEY: &str = "duplicate_key";
    /// A float overflowing to infinity (`1e999`) or an integer of over 4,300 digits.
    pub const NUMBER_OUT_OF_RANGE: &str = "number_out_of_range";
    /// The message is valid JSON but not an object (e.g. a string holding an envelope).
    pub const NOT_AN_OBJECT: &str = "not_an_object";
    /// A required field is absent.
    pub const MISSING_FIELD: &str = "missing_field";
    /// A field has the wrong JSON type (including `null` where not allowed).
    pub const WRONG_TYPE: &str = "wrong_type";
    /// `algorithm` is not "ed25519" or `canonicalization` is not "rfc8785".
    pub const INVALID_ENUM: &str = "invalid_enum";
    /// `signature`/`public_key` is not strict, padded, standard-alphabet base64.
    pub const INVALID_BASE64: &str = "invalid_base64";

    /// `id` is not a lowercase hyphenated UUID.
    pub const INVALID_ID: &str = "invalid_id";
    /// `nonce` is not 32–100 lowercase hex digits.
    pub const INVALID_NONCE: &str = "invalid_nonce";
    /// `key_id` is not `[A-Za-z0-9_-]{1,64}`.
    pub const INVALID_KEY_ID: &str = "invalid_key_id";
    /// `payload_hash` is not 64 lowercase hex digits.
    pub const INVALID_PAYLOAD_HASH: &str = "invalid_payload_hash";
    /// `issued_at`/`expires_at` is not `YYYY-MM-DDTHH:MM:SS[.f+]Z` (a real UTC instant),
    /// or `expires_at` is before `issued_at`.
    pub const INVALID_TIMESTAMP: &str = "invalid_timestamp";
    /// `source` over 128 or `type` over 64 characters.
    pub const FIELD_TOO_LONG: &str = "field_too_long";
    /// The signature is not 64 bytes or the public key not 32 bytes.
    pub const INVALID_KEY_LENGTH: &str = "invalid_key_length";
    /// A payload value nested deeper than 16.
    pub const PAYLOAD_TOO_DEEP: &str = "payload_too_deep";

    /// nekhebet-core: `type` is not a registered event type.
    pub const EVENT_TYPE_INVALID: &str = "event_type_invalid";
    /// nekhebet-core: `version` is not "4.0.0".
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    /// nekhebet-core: a structural rule failed during verification.
    pub const STRUCTURE_INVALID: &str = "structure_invalid";
    /// nekhebet-core: `issued_at` is beyond the allowed clock skew in the future.
    pub const TIMESTAMP_FUTURE: &str = "timestamp_future";
    /// nekhebet-core: `expires_at` has passed.
    pub const EXPIRED: &str = "expired";
    /// The public key is not registered for `key_id` (when keys are configured).
    pub const KEY_ID_MISMATCH: &str = "key_id_mismatch";
    /// nekhebet-core: the Ed25519 signature over the canonical header does not verify.
    pub const SIGNATURE_INVALID: &str = "signature_invalid";
    /// nekhebet-core: the payload's estimated size is over 1 MiB or it is nested too deep.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// nekhebet-core: SHA-256 of the canonical payload differs from `payload_hash`.
    pub const HASH_MISMATCH: &str = "hash_mismatch";

    /// Codes of [`super::DecodeError`].
    pub const DECODE: &[&str] = &[
        EMPTY_MESSAGE,
        MESSAGE_TOO_LARGE,
        INVALID_UTF8,
        TRUNCATED_JSON,
        MALFORMED_JSON,
        TOO_DEEP,
        DUPLICATE_KEY,
        NUMBER_OUT_OF_RANGE,
        NOT_AN_OBJECT,
        MISSING_FIELD,
        WRONG_TYPE,
        INVALID_ENUM,
        INVALID_BASE64,
    ];
    /// Codes of [`super::ValidationError`].
    pub const VALIDATION: &[&str] = &[
        INVALID_ID,
        INVALID_NONCE,
        INVALID_KEY_ID,
        INVALID_PAYLOAD_HASH,
        INVALID_TIMESTAMP,
        FIELD_TOO_LONG,
        INVALID_KEY_LENGTH,
        PAYLOAD_TOO_DEEP,
    ];
    /// Verification categories, in the order the verifier checks them.
    pub const VERIFICATION: &[&str] = &[
        EVENT_TYPE_INVALID,
        UNSUPPORTED_VERSION,
        STRUCTURE_INVALID,
        TIMESTAMP_FUTURE,
        EXPIRED,
        KEY_ID_MISMATCH,
        SIGNATURE_INVALID,
        PAYLOAD_TOO_LARGE,
        HASH_MISMATCH,
    ];
}

/// Size limits applied before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest accepted message, in bytes.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// A decoded envelope. Only the fields nekhebet-core's msgspec types define are read;
/// [`Envelope::bytes`] keeps the message exactly as received.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The received bytes, stored verbatim.
    pub bytes: Bytes,
    /// The signed header.
    pub header: Header,
    /// The payload object's JSON text, as on the wire.
    pub payload: Box<RawValue>,
    /// The Ed25519 signature; meaningful only when [`Envelope::signature_len`] is 64.
    pub signature: [u8; 64],
    /// The Ed25519 public key; meaningful only when [`Envelope::public_key_len`] is 32.
    pub public_key: [u8; 32],
    /// Length of the base64-decoded signature. nekhebet-core decodes any length and
    /// rejects a wrong one only at verification (`structure_invalid`), so decode must
    /// too; [`validate`] requires 64.
    pub signature_len: usize,
    /// Length of the base64-decoded public key; [`validate`] requires 32.
    pub public_key_len: usize,
}

/// The signed header. Text fields are exactly as on the wire (escapes resolved).
#[derive(Debug, Clone)]
pub struct Header {
    /// `id` as a UUID; the nil UUID when `id_raw` is not one ([`validate`] rejects that).
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
    /// digits); the Unix epoch when `issued_at` is malformed ([`validate`] rejects that).
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

/// A message refused by the pipeline: `reason` is a stable machine-readable snake_case
/// code (it becomes the Kafka dead-letter header `nekhebet.reason` and a Prometheus
/// label, so the set of codes is small and fixed: see [`reason`]), `detail` a human
/// sentence naming the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of the codes in [`reason`].
    pub reason: &'static str,
    /// Human-readable explanation.
    pub detail: String,
}

impl Rejection {
    /// A rejection with the given code and detail.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Why [`decode`] refused a message. Every variant is something nekhebet-core's
/// `from_json_bytes` also refuses, except `TooLarge`, `DuplicateKey` (msgspec keeps the
/// last value) and invalid UTF-8 inside unknown fields (msgspec skips them unchecked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Zero-length message.
    #[error("message is empty")]
    Empty,
    /// Over the size limit.
    #[error("message is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Message size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not UTF-8.
    #[error("message is not valid UTF-8 (bad byte at offset {offset})")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// Not acceptable JSON.
    #[error(transparent)]
    Json(#[from] ParseError),
    /// Top-level value is not an object.
    #[error("message is a JSON {found}, not an object")]
    NotAnObject {
        /// JSON type found.
        found: &'static str,
    },
    /// A required field is missing.
    #[error("required field `{field}` is missing")]
    MissingField {
        /// Dotted path of the field.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}, got {found}")]
    WrongType {
        /// Dotted path of the field.
        field: &'static str,
        /// Allowed types.
        expected: &'static str,
        /// JSON type found.
        found: &'static str,
    },
    /// A literal-typed field has another value.
    #[error("field `{field}` must be {expected:?}, got {found:?}")]
    InvalidEnum {
        /// Dotted path of the field.
        field: &'static str,
        /// The only allowed value.
        expected: &'static str,
        /// The value found (at most 64 characters of it).
        found: String,
    },
    /// Not strict base64.
    #[error("field `{field}` is not strict padded base64: {why}")]
    InvalidBase64 {
        /// Dotted path of the field.
        field: &'static str,
        /// What the base64 decoder said.
        why: String,
    },
}

impl DecodeError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => reason::EMPTY_MESSAGE,
            DecodeError::TooLarge { .. } => reason::MESSAGE_TOO_LARGE,
            DecodeError::InvalidUtf8 { .. } => reason::INVALID_UTF8,
            DecodeError::Json(e) => match e {
                ParseError::Truncated { .. } => reason::TRUNCATED_JSON,
                ParseError::Syntax { .. } => reason::MALFORMED_JSON,
                ParseError::TooDeep { .. } => reason::TOO_DEEP,
                ParseError::DuplicateKey { .. } => reason::DUPLICATE_KEY,
                ParseError::NumberOutOfRange { .. } => reason::NUMBER_OUT_OF_RANGE,
            },
            DecodeError::NotAnObject { .. } => reason::NOT_AN_OBJECT,
            DecodeError::MissingField { .. } => reason::MISSING_FIELD,
            DecodeError::WrongType { .. } => reason::WRONG_TYPE,
            DecodeError::InvalidEnum { .. } => reason::INVALID_ENUM,
            DecodeError::InvalidBase64 { .. } => reason::INVALID_BASE64,
        }
    }

    /// The dead-letter form of this error.
    pub fn rejection(&self) -> Rejection {
        Rejection::new(self.reason(), self.to_string())
    }
}

impl From<&DecodeError> for Rejection {
    fn from(e: &DecodeError) -> Self {
        e.rejection()
    }
}

impl From<DecodeError> for Rejection {
    fn from(e: DecodeError) -> Self {
        e.rejection()
    }
}

/// Why [`validate`] refused a decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// `id` is not a lowercase hyphenated UUID.
    #[error("header.id {found:?} is not a lowercase hyphenated UUID")]
    InvalidId {
        /// The value (at most 64 characters of it).
        found: String,
    },
    /// `source` or `type` too long.
    #[error("header.{field} is {len} characters, over the limit of {max}")]
    FieldTooLong {
        /// Field name.
        field: &'static str,
        /// Its length in characters.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `nonce` malformed.
    #[error("header.nonce must be 32-100 lowercase hex digits")]
    InvalidNonce,
    /// `key_id` malformed.
    #[error("header.key_id must match [A-Za-z0-9_-]{{1,64}}")]
    InvalidKeyId,
    /// `payload_hash` malformed.
    #[error("header.payload_hash must be 64 lowercase hex digits")]
    InvalidPayloadHash,
    /// A timestamp is malformed.
    #[error(
        "header.{field} {found:?} is not an ISO-8601 UTC time YYYY-MM-DDTHH:MM:SS[.fraction]Z"
    )]
    InvalidTimestamp {
        /// Field name.
        field: &'static str,
        /// The value (at most 64 characters of it).
        found: String,
    },
    /// `expires_at` before `issued_at`.
    #[error("header.expires_at is earlier than header.issued_at")]
    ExpiresBeforeIssued,
    /// Signature or public key of the wrong length.
    #[error("signature.{field} decodes to {len} bytes, not {expected}")]
    KeyLength {
        /// Field name.
        field: &'static str,
        /// Decoded length.
        len: usize,
        /// Required length.
        expected: usize,
    },
    /// Payload nested too deep.
    #[error("payload nests values {depth} levels deep, over the limit of {max}")]
    PayloadTooDeep {
        /// Depth found.
        depth: usize,
        /// The limit.
        max: usize,
    },
}

impl ValidationError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::InvalidId { .. } => reason::INVALID_ID,
            ValidationError::FieldTooLong { .. } => reason::FIELD_TOO_LONG,
            ValidationError::InvalidNonce => reason::INVALID_NONCE,
            ValidationError::InvalidKeyId => reason::INVALID_KEY_ID,
            ValidationError::InvalidPayloadHash => reason::INVALID_PAYLOAD_HASH,
            ValidationError::InvalidTimestamp { .. } | ValidationError::ExpiresBeforeIssued => {
                reason::INVALID_TIMESTAMP
            }
            ValidationError::KeyLength { .. } => reason::INVALID_KEY_LENGTH,
            ValidationError::PayloadTooDeep { .. } => reason::PAYLOAD_TOO_DEEP,
        }
    }

    /// The nekhebet-core verification category the same defect gets.
    pub fn category(&self) -> &'static str {
        match self {
            ValidationError::PayloadTooDeep { .. } => reason::PAYLOAD_TOO_LARGE,
            _ => reason::STRUCTURE_INVALID,
        }
    }

    /// The dead-letter form of this error.
    pub fn rejection(&self) -> Rejection {
        Rejection::new(self.reason(), self.to_string())
    }
}

impl From<&ValidationError> for Rejection {
    fn from(e: &ValidationError) -> Self {
        e.rejection()
    }
}

impl From<ValidationError> for Rejection {
    fn from(e: ValidationError) -> Self {
        e.rejection()
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// msgspec's base64: standard alphabet, canonical `=` padding required, no whitespace;
/// unlike the base64 crate's default it ignores non-zero bits in the last symbol.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Strict base64 as msgspec decodes `bytes` fields.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    BASE64.decode(s)
}

/// Standard padded base64, as msgspec encodes `bytes` fields.
pub fn encode_base64(b: &[u8]) -> String {
    BASE64.encode(b)
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Decodes one message the way nekhebet-core's `from_json_bytes` does (see the module
/// docs for the few deliberate differences).
pub fn decode(bytes: Bytes, limits: &Limits) -> Result<Envelope, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_message_bytes,
        });
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| DecodeError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let parts = decode_text(text)?;
    let payload = raw(&text[parts.payload.0..parts.payload.1]);
    let h = parts.header;
    let expires_at = h.expires_at.map(Cow::into_owned);
    let issued_at = h.issued_at.into_owned();
    let header = Header {
        id: parse_uuid(&h.id).unwrap_or_default(),
        id_raw: h.id.into_owned(),
        event_type: h.event_type.into_owned(),
        version: h.version.into_owned(),
        source: h.source.into_owned(),
        issued_at_ts: parse_timestamp(&issued_at).unwrap_or(DateTime::UNIX_EPOCH),
        issued_at,
        expires_at_ts: expires_at.as_deref().and_then(parse_timestamp),
        expires_at,
        nonce: h.nonce.into_owned(),
        key_id: h.key_id.into_owned(),
        algorithm: ALGORITHM.to_owned(),
        canonicalization: CANONICALIZATION.to_owned(),
        payload_hash: h.payload_hash.into_owned(),
        context: h.context.map(|(a, b)| raw(&text[a..b])),
        extensions: h.extensions.map(|(a, b)| raw(&text[a..b])),
    };
    let (signature, signature_len) = fixed::<64>(&parts.signature);
    let (public_key, public_key_len) = fixed::<32>(&parts.public_key);
    Ok(Envelope {
        bytes,
        header,
        payload,
        signature,
        public_key,
        signature_len,
        public_key_len,
    })
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("span was validated by the parser")
}

fn fixed<const N: usize>(v: &[u8]) -> ([u8; N], usize) {
    let mut out = [0u8; N];
    if v.len() == N {
        out.copy_from_slice(v);
    }
    (out, v.len())
}

type Span = (usize, usize);

struct HeaderParts<'a> {
    id: Cow<'a, str>,
    event_type: Cow<'a, str>,
    version: Cow<'a, str>,
    source: Cow<'a, str>,
    issued_at: Cow<'a, str>,
    expires_at: Option<Cow<'a, str>>,
    nonce: Cow<'a, str>,
    key_id: Cow<'a, str>,
    payload_hash: Cow<'a, str>,
    context: Option<Span>,
    extensions: Option<Span>,
}

struct Parts<'a> {
    header: HeaderParts<'a>,
    payload: Span,
    signature: Vec<u8>,
    public_key: Vec<u8>,
}

fn decode_text(text: &str) -> Result<Parts<'_>, DecodeError> {
    let mut p = Parser::new(text);
    if p.peek() != Some(b'{') {
        let v = p.parse_value()?;
        p.finish()?;
        return Err(DecodeError::NotAnObject { found: v.kind() });
    }
    let mut header = None;
    let mut payload = None;
    let mut sig = None;
    p.parse_object_with(|p, key| {
        match key.as_ref() {
            "header" => header = Some(decode_header(p)?),
            "payload" => payload = Some(object_span(p, "payload")?),
            "signature" => sig = Some(decode_signature(p)?),
            _ => p.skip_value()?,
        }
        Ok::<(), DecodeError>(())
    })?;
    p.finish()?;
    let header = header.ok_or(DecodeError::MissingField { field: "header" })?;
    let payload = payload.ok_or(DecodeError::MissingField { field: "payload" })?;
    let (signature, public_key) = sig.ok_or(DecodeError::MissingField { field: "signature" })?;
    Ok(Parts {
        header,
        payload,
        signature,
        public_key,
    })
}

/// Consumes a value that must be an object and returns its byte span.
fn object_span(p: &mut Parser<'_>, field: &'static str) -> Result<Span, DecodeError> {
    if p.peek() != Some(b'{') {
        return Err(wrong_type(p, field, "object")?);
    }
    let start = p.pos();
    p.skip_value()?;
    Ok((start, p.pos()))
}

/// Parses the offending value so the error can name its type (or report its syntax).
fn wrong_type(
    p: &mut Parser<'_>,
    field: &'static str,
    expected: &'static str,
) -> Result<DecodeError, DecodeError> {
    let v = p.parse_value()?;
    Ok(DecodeError::WrongType {
        field,
        expected,
        found: v.kind(),
    })
}

fn string<'a>(p: &mut Parser<'a>, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    match p.parse_value()? {
        Json::Str(s) => Ok(s),
        v => Err(DecodeError::WrongType {
            field,
            expected: "str",
            found: v.kind(),
        }),
    }
}

fn optional_string<'a>(
    p: &mut Parser<'a>,
    field: &'static str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match p.parse_value()? {
        Json::Str(s) => Ok(Some(s)),
        Json::Null => Ok(None),
        v => Err(DecodeError::WrongType {
            field,
            expected: "str | null",
            found: v.kind(),
        }),
    }
}

fn optional_object(p: &mut Parser<'_>, field: &'static str) -> Result<Option<Span>, DecodeError> {
    match p.peek() {
        Some(b'{') => object_span(p, field).map(Some),
        Some(b'n') => {
            p.parse_value()?;
            Ok(None)
        }
        _ => Err(wrong_type(p, field, "object | null")?),
    }
}

fn literal(p: &mut Parser<'_>, field: &'static str, want: &'static str) -> Result<(), DecodeError> {
    let s = string(p, field)?;
    if s != want {
        return Err(DecodeError::InvalidEnum {
            field,
            expected: want,
            found: clip(&s),
        });
    }
    Ok(())
}

fn decode_header<'a>(p: &mut Parser<'a>) -> Result<HeaderParts<'a>, DecodeError> {
    if p.peek() != Some(b'{') {
        return Err(wrong_type(p, "header", "object")?);
    }
    let mut id = None;
    let mut event_type = None;
    let mut version = None;
    let mut source = None;
    let mut issued_at = None;
    let mut expires_at = None;
    let mut nonce = None;
    let mut key_id = None;
    let mut payload_hash = None;
    let mut context = None;
    let mut extensions = None;
    p.parse_object_with(|p, key| {
        match key.as_ref() {
            "id" => id = Some(string(p, "header.id")?),
            "type" => event_type = Some(string(p, "header.type")?),
            "version" => version = Some(string(p, "header.version")?),
            "source" => source = Some(string(p, "header.source")?),
            "issued_at" => issued_at = Some(string(p, "header.issued_at")?),
            "expires_at" => expires_at = optional_string(p, "header.expires_at")?,
            "nonce" => nonce = Some(string(p, "header.nonce")?),
            "key_id" => key_id = Some(string(p, "header.key_id")?),
            "algorithm" => literal(p, "header.algorithm", ALGORITHM)?,
            "canonicalization" => literal(p, "header.canonicalization", CANONICALIZATION)?,
            "payload_hash" => payload_hash = Some(string(p, "header.payload_hash")?),
            "context" => context = optional_object(p, "header.context")?,
            "extensions" => extensions = optional_object(p, "header.extensions")?,
            _ => p.skip_value()?,
        }
        Ok::<(), DecodeError>(())
    })?;
    let need = |v: Option<Cow<'a, str>>, field| v.ok_or(DecodeError::MissingField { field });
    Ok(HeaderParts {
        id: need(id, "header.id")?,
        event_type: need(event_type, "header.type")?,
        version: version.unwrap_or(Cow::Borrowed(VERSION)),
        source: need(source, "header.source")?,
        issued_at: need(issued_at, "header.issued_at")?,
        expires_at,
        nonce: need(nonce, "header.nonce")?,
        key_id: need(key_id, "header.key_id")?,
        payload_hash: need(payload_hash, "header.payload_hash")?,
        context,
        extensions,
    })
}

fn base64_field(p: &mut Parser<'_>, field: &'static str) -> Result<Vec<u8>, DecodeError> {
    let s = match p.parse_value()? {
        Json::Str(s) => s,
        v => {
            return Err(DecodeError::WrongType {
                field,
                expected: "base64 str",
                found: v.kind(),
            })
        }
    };
    decode_base64(&s).map_err(|e| DecodeError::InvalidBase64 {
        field,
        why: e.to_string(),
    })
}

fn decode_signature(p: &mut Parser<'_>) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
    if p.peek() != Some(b'{') {
        return Err(wrong_type(p, "signature", "object")?);
    }
    let mut signature = None;
    let mut public_key = None;
    p.parse_object_with(|p, key| {
        match key.as_ref() {
            "signature" => signature = Some(base64_field(p, "signature.signature")?),
            "public_key" => public_key = Some(base64_field(p, "signature.public_key")?),
            _ => p.skip_value()?,
        }
        Ok::<(), DecodeError>(())
    })?;
    Ok((
        signature.ok_or(DecodeError::MissingField {
            field: "signature.signature",
        })?,
        public_key.ok_or(DecodeError::MissingField {
            field: "signature.public_key",
        })?,
    ))
}

// ---------------------------------------------------------------------------
// Field rules
// ---------------------------------------------------------------------------

/// Parses nekhebet-core's timestamp form, accepting exactly what `is_iso8601_utc`
/// accepts: the regex `^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z$` and then
/// Python 3.11's `datetime.fromisoformat` (a real date, hour < 24, second < 60, year
/// ≥ 1, fraction of any length truncated to microseconds).
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let sep = |i: usize, c: u8| b[i] == c;
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let micros = match b.len() {
        20 => 0,
        _ => {
            let frac = &b[20..b.len() - 1];
            if b[19] != b'.' || frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let mut us = 0u32;
            for i in 0..6 {
                us = us * 10 + frac.get(i).map_or(0, |&c| u32::from(c - b'0'));
            }
            us
        }
    };
    if year == 0 || second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let time = NaiveTime::from_hms_micro_opt(hour, minute, second, micros)?;
    Some(date.and_time(time).and_utc())
}

/// Only the lowercase hyphenated form (what nekhebet-core emits, `str(uuid4())`), so
/// every accepted id has exactly one spelling.
fn parse_uuid(s: &str) -> Option<uuid::Uuid> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let ok = b.iter().enumerate().all(|(i, &c)| match i {
        8 | 13 | 18 | 23 => c == b'-',
        _ => matches!(c, b'0'..=b'9' | b'a'..=b'f'),
    });
    if !ok {
        return None;
    }
    uuid::Uuid::try_parse(s).ok()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// nekhebet-core `is_valid_nonce`: `^[0-9a-f]{32,100}$`.
pub fn is_valid_nonce(s: &str) -> bool {
    (32..=100).contains(&s.len()) && is_lower_hex(s)
}

/// nekhebet-core `is_valid_key_id`: `^[a-zA-Z0-9_-]{1,64}$`.
pub fn is_valid_key_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// nekhebet-core's payload_hash rule: `^[0-9a-f]{64}$`.
pub fn is_valid_payload_hash(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// Deepest value in a JSON text, the outermost value being depth 0 (as nekhebet-core's
/// `estimate_payload_size` counts). A byte scan: the text is already known to be JSON.
pub fn max_value_depth(json: &str) -> usize {
    let b = json.as_bytes();
    let (mut open, mut max, mut i) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                max = max.max(open);
                open += 1;
            }
            b'}' | b']' => open = open.saturating_sub(1),
            b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => {}
            b'"' => {
                // A key sits at the depth of its value, so counting it changes nothing.
                max = max.max(open);
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ => max = max.max(open),
        }
        i += 1;
    }
    max
}

/// nekhebet-core's own structural checks, in its order (verification step 3).
pub(crate) fn check_core_structure(env: &Envelope) -> Result<(), ValidationError> {
    let h = &env.header;
    let source_len = h.source.chars().count();
    if source_len > MAX_SOURCE_CHARS {
        return Err(ValidationError::FieldTooLong {
            field: "source",
            len: source_len,
            max: MAX_SOURCE_CHARS,
        });
    }
    if !is_valid_nonce(&h.nonce) {
        return Err(ValidationError::InvalidNonce);
    }
    if env.signature_len != 64 {
        return Err(ValidationError::KeyLength {
            field: "signature",
            len: env.signature_len,
            expected: 64,
        });
    }
    if env.public_key_len != 32 {
        return Err(ValidationError::KeyLength {
            field: "public_key",
            len: env.public_key_len,
            expected: 32,
        });
    }
    if !is_valid_payload_hash(&h.payload_hash) {
        return Err(ValidationError::InvalidPayloadHash);
    }
    Ok(())
}

/// The store's rules that nekhebet-core does not check at all.
pub(crate) fn check_store_structure(env: &Envelope) -> Result<(), ValidationError> {
    let h = &env.header;
    if parse_uuid(&h.id_raw).is_none() {
        return Err(ValidationError::InvalidId {
            found: clip(&h.id_raw),
        });
    }
    if !is_valid_key_id(&h.key_id) {
        return Err(ValidationError::InvalidKeyId);
    }
    let type_len = h.event_type.chars().count();
    if type_len > MAX_TYPE_CHARS {
        return Err(ValidationError::FieldTooLong {
            field: "type",
            len: type_len,
            max: MAX_TYPE_CHARS,
        });
    }
    // nekhebet-core skips an empty `expires_at` (`if header.expires_at:`); the store
    // wants every present timestamp to be one.
    if h.expires_at.as_deref() == Some("") {
        return Err(ValidationError::InvalidTimestamp {
            field: "expires_at",
            found: String::new(),
        });
    }
    Ok(())
}

/// The timestamp formats and their order, without the clock.
pub(crate) fn check_timestamps(env: &Envelope) -> Result<(), ValidationError> {
    let h = &env.header;
    let issued =
        parse_timestamp(&h.issued_at).ok_or_else(|| ValidationError::InvalidTimestamp {
            field: "issued_at",
            found: clip(&h.issued_at),
        })?;
    if let Some(exp) = &h.expires_at {
        let expires = parse_timestamp(exp).ok_or_else(|| ValidationError::InvalidTimestamp {
            field: "expires_at",
            found: clip(exp),
        })?;
        if expires < issued {
            return Err(ValidationError::ExpiresBeforeIssued);
        }
    }
    Ok(())
}

/// The payload depth rule.
pub(crate) fn check_payload_depth(env: &Envelope) -> Result<(), ValidationError> {
    let depth = max_value_depth(env.payload.get());
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(ValidationError::PayloadTooDeep {
            depth,
            max: MAX_PAYLOAD_DEPTH,
        });
    }
    Ok(())
}

/// The store's structural rules, always applied after [`decode`]: UUID `id`,
/// `payload_hash` 64 lowercase hex, `nonce` 32–100 lowercase hex, `key_id`
/// `[A-Za-z0-9_-]{1,64}`, `source` ≤ 128 and `type` ≤ 64 characters, `issued_at` and
/// (when present) `expires_at` ISO-8601 UTC with `Z` and not out of order, a 64-byte
/// signature and a 32-byte public key, payload depth ≤ 16.
pub fn validate(env: &Envelope) -> Result<(), ValidationError> {
    check_core_structure(env)?;
    check_store_structure(env)?;
    check_timestamps(env)?;
    check_payload_depth(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VECTORS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nekhebet-core-4.0.0.jsonl"
    ));
    const SAMPLES: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/envelopes-2000.jsonl"
    ));

    fn vectors() -> Vec<(String, String, Vec<u8>)> {
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

    fn valid_wire() -> String {
        SAMPLES.lines().next().unwrap().to_owned()
    }

    fn dec(s: impl Into<Vec<u8>>) -> Result<Envelope, DecodeError> {
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
                            reason::INVALID_NONCE,
                            "{name}"
                        );
                    }
                    if name.starts_with("hash-upper-") {
                        assert_eq!(
                            v.as_ref().unwrap_err().reason(),
                            reason::INVALID_PAYLOAD_HASH
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn undecodable_vectors_get_specific_reasons() {
        for (name, _, wire) in vectors() {
            let want = if name.starts_with("bad-b64-") {
                reason::INVALID_BASE64
            } else if name.starts_with("missing-field-") {
                reason::MISSING_FIELD
            } else if name.starts_with("truncated-") {
                reason::TRUNCATED_JSON
            } else {
                continue;
            };
            assert_eq!(dec(wire).unwrap_err().reason(), want, "{name}");
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

    #[test]
    fn defaults_fill_missing_optional_fields() {
        let w = valid_wire()
            .replace("\"version\":\"4.0.0\",", "")
            .replace("\"algorithm\":\"ed25519\",", "")
            .replace("\"canonicalization\":\"rfc8785\",", "")
            .replace("\"expires_at\":null,", "")
            .replace("\"context\":null,", "")
            .replace(",\"extensions\":null", "");
        let env = dec(w).unwrap();
        assert_eq!(env.header.version, "4.0.0");
        assert_eq!(env.header.algorithm, "ed25519");
        assert_eq!(env.header.canonicalization, "rfc8785");
        assert!(env.header.expires_at.is_none() && env.header.context.is_none());
    }

    /// One hostile input per row, each with its stable reason code.
    #[test]
    fn hostile_inputs_map_to_stable_reasons() {
        let w = valid_wire();
        let sub = |from: &str, to: &str| {
            assert!(w.contains(from), "{from}");
            w.replacen(from, to, 1).into_bytes()
        };
        let mut big = w.clone().into_bytes();
        big.resize(DEFAULT_MAX_MESSAGE_BYTES + 1, b' ');
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let with_bom = [b"\xef\xbb\xbf".as_slice(), w.as_bytes()].concat();
        let truncated = w.as_bytes()[..w.len() / 2].to_vec();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], reason::EMPTY_MESSAGE),
            ("oversize", big, reason::MESSAGE_TOO_LARGE),
            ("invalid utf-8", sub("\"seq\"", "\"s\u{0}q\"").iter().map(|&b| if b == 0 { 0xff } else { b }).collect(), reason::INVALID_UTF8),
            ("overlong utf-8", sub("\"s-0\"", "\"\u{0}\u{0}\"").iter().map(|&b| if b == 0 { 0xc0 } else { b }).collect(), reason::INVALID_UTF8),
            ("truncated", truncated, reason::TRUNCATED_JSON),
            ("whitespace only", b" \n ".to_vec(), reason::TRUNCATED_JSON),
            ("depth 10000", sub("\"s-0\"", &deep), reason::TOO_DEEP),
            ("depth 10000 in unknown field", sub("{\"header\"", &format!("{{\"x\":{deep},\"header\"")), reason::TOO_DEEP),
            ("NaN", sub("\"seq\":0", "\"seq\":NaN"), reason::MALFORMED_JSON),
            ("Infinity", sub("\"seq\":0", "\"seq\":Infinity"), reason::MALFORMED_JSON),
            ("-Infinity", sub("\"seq\":0", "\"seq\":-Infinity"), reason::MALFORMED_JSON),
            ("1e999", sub("\"seq\":0", "\"seq\":1e999"), reason::NUMBER_OUT_OF_RANGE),
            ("4301-digit int", sub("\"seq\":0", &format!("\"seq\":{}", "9".repeat(4301))), reason::NUMBER_OUT_OF_RANGE),
            ("duplicate payload key", sub("\"seq\":0", "\"seq\":0,\"seq\":1"), reason::DUPLICATE_KEY),
            ("duplicate header key", sub("\"source\":\"node-0\"", "\"source\":\"evil\",\"source\":\"node-0\""), reason::DUPLICATE_KEY),
            ("duplicate escaped key", sub("\"source\":\"node-0\"", "\"source\":\"node-0\",\"sourc\\u0065\":\"x\""), reason::DUPLICATE_KEY),
            ("duplicate top-level key", sub("{\"header\"", "{\"payload\":{},\"header\""), reason::DUPLICATE_KEY),
            ("BOM", with_bom, reason::MALFORMED_JSON),
            ("trailing garbage", [w.as_bytes(), b"x"].concat(), reason::MALFORMED_JSON),
            ("two documents", [w.as_bytes(), w.as_bytes()].concat(), reason::MALFORMED_JSON),
            ("trailing NUL", [w.as_bytes(), b"\0"].concat(), reason::MALFORMED_JSON),
            ("raw NUL in string", sub("\"s-0\"", "\"s\u{0}0\""), reason::MALFORMED_JSON),
            ("raw newline in string", sub("\"s-0\"", "\"s\n0\""), reason::MALFORMED_JSON),
            ("lone surrogate", sub("\"s-0\"", "\"\\ud800\""), reason::MALFORMED_JSON),
            ("single quotes", sub("\"seq\":0", "'seq':0"), reason::MALFORMED_JSON),
            ("string holding an envelope", serde_json::to_vec(&w).unwrap(), reason::NOT_AN_OBJECT),
            ("array", format!("[{w}]").into_bytes(), reason::NOT_AN_OBJECT),
            ("null", b"null".to_vec(), reason::NOT_AN_OBJECT),
            ("missing header", b"{\"payload\":{},\"signature\":{\"signature\":\"\",\"public_key\":\"\"}}".to_vec(), reason::MISSING_FIELD),
            ("missing nonce", sub("\"nonce\":", "\"nonc\":"), reason::MISSING_FIELD),
            ("missing public_key", sub("\"public_key\":", "\"publickey\":"), reason::MISSING_FIELD),
            ("header null", sub("{\"header\":{", "{\"h\":{"), reason::MISSING_FIELD),
            ("header is a string", sub("{\"header\":{", "{\"header\":\"x\",\"h\":{"), reason::WRONG_TYPE),
            ("id int", sub("\"id\":\"2c3ba479-a68f-4011-ae25-042ef33617ca\"", "\"id\":1"), reason::WRONG_TYPE),
            ("type null", sub("\"type\":\"omen.observed\"", "\"type\":null"), reason::WRONG_TYPE),
            ("version null", sub("\"version\":\"4.0.0\"", "\"version\":null"), reason::WRONG_TYPE),
            ("version number", sub("\"version\":\"4.0.0\"", "\"version\":4"), reason::WRONG_TYPE),
            ("source array", sub("\"source\":\"node-0\"", "\"source\":[]"), reason::WRONG_TYPE),
            ("issued_at number", sub("\"issued_at\":\"2026-11-25T16:25:58.961Z\"", "\"issued_at\":1764087958"), reason::WRONG_TYPE),
            ("expires_at number", sub("\"expires_at\":null", "\"expires_at\":0"), reason::WRONG_TYPE),
            ("nonce bool", sub("\"nonce\":\"6205e46718ce811e39f4e04f2a692a27af2eff6e40cd76cd6c89809b9b9007ae\"", "\"nonce\":true"), reason::WRONG_TYPE),
            ("key_id object", sub("\"key_id\":\"collector-0\"", "\"key_id\":{}"), reason::WRONG_TYPE),
            ("payload_hash float", sub("\"payload_hash\":\"dd4184fc977abf617d7cbc718ad897208ed2044b0379ddf8f460c1b5771f4e20\"", "\"payload_hash\":1.5"), reason::WRONG_TYPE),
            ("context array", sub("\"context\":null", "\"context\":[]"), reason::WRONG_TYPE),
            ("extensions string", sub("\"extensions\":null", "\"extensions\":\"{}\""), reason::WRONG_TYPE),
            ("payload array", sub("\"payload\":{", "\"payload\":[],\"p\":{"), reason::WRONG_TYPE),
            ("payload null", sub("\"payload\":{", "\"payload\":null,\"p\":{"), reason::WRONG_TYPE),
            ("signature int", sub("\"signature\":\"", "\"signature\":7,\"s\":\""), reason::WRONG_TYPE),
            ("signature object is a list", sub("\"signature\":{", "\"signature\":[],\"s\":{"), reason::WRONG_TYPE),
            ("algorithm", sub("\"algorithm\":\"ed25519\"", "\"algorithm\":\"rsa\""), reason::INVALID_ENUM),
            ("canonicalization", sub("\"canonicalization\":\"rfc8785\"", "\"canonicalization\":\"jcs\""), reason::INVALID_ENUM),
            ("algorithm wrong type", sub("\"algorithm\":\"ed25519\"", "\"algorithm\":1"), reason::WRONG_TYPE),
            ("base64 junk", sub("\"public_key\":\"", "\"public_key\":\"!!"), reason::INVALID_BASE64),
            ("base64 url-safe", sub("\"public_key\":\"", "\"public_key\":\"-_"), reason::INVALID_BASE64),
            ("base64 no padding", sub("\"public_key\":\"", "\"public_key\":\"AAA\",\"x\":\""), reason::INVALID_BASE64),
            ("base64 whitespace", sub("\"public_key\":\"", "\"public_key\":\"AA AA\",\"x\":\""), reason::INVALID_BASE64),
        ];
        for (what, input, want) in cases {
            let got = dec(input).map(|_| ()).unwrap_err();
            assert_eq!(got.reason(), want, "{what}: {got}");
            assert_eq!(got.rejection().reason, want);
            assert!(reason::DECODE.contains(&want));
        }
    }

    #[test]
    fn msgspec_quirks_that_still_decode() {
        let w = valid_wire();
        let sub = |from: &str, to: &str| dec(w.replacen(from, to, 1));
        // Unknown fields are ignored at every level.
        assert!(sub(
            "{\"header\":{",
            "{\"x\":[1,{\"y\":null}],\"header\":{\"z\":1,"
        )
        .is_ok());
        assert!(sub("\"public_key\"", "\"x\":1,\"public_key\"").is_ok());
        // Escapes in keys and base64 strings are resolved first.
        assert!(sub("\"source\":", "\"sourc\\u0065\":").is_ok());
        let env = sub(
            "\"public_key\":\"",
            "\"public_key\":\"\\u0041AA=\",\"x\":\"",
        )
        .unwrap();
        assert_eq!(env.public_key_len, 2);
        // Non-zero trailing bits in the last base64 symbol are accepted, as msgspec does.
        let env = sub("\"public_key\":\"", "\"public_key\":\"AAB=\",\"x\":\"").unwrap();
        assert_eq!(env.public_key_len, 2);
        // Wrong lengths, bad formats and a non-UUID id decode; validation rejects them.
        let env = sub("\"public_key\":\"", "\"public_key\":\"\",\"x\":\"").unwrap();
        assert_eq!(
            validate(&env).unwrap_err().reason(),
            reason::INVALID_KEY_LENGTH
        );
        let env = sub("\"id\":\"2c3ba479", "\"id\":\"X2c3ba479").unwrap();
        assert!(env.header.id.is_nil());
        assert_eq!(validate(&env).unwrap_err().reason(), reason::INVALID_ID);
        let env = sub("\"issued_at\":\"2026", "\"issued_at\":\"x2026").unwrap();
        assert_eq!(env.header.issued_at_ts, DateTime::UNIX_EPOCH);
        assert_eq!(
            validate(&env).unwrap_err().reason(),
            reason::INVALID_TIMESTAMP
        );
        // Surrounding whitespace is fine; so is DEL and U+2028 raw in strings.
        assert!(dec(format!(" \n{w}\r\n\t")).is_ok());
        assert!(sub("\"s-0\"", "\"\u{7f}\u{2028}\"").is_ok());
        // Tiny floats underflow to 0.0 rather than failing (msgspec does the same).
        assert!(sub("\"seq\":0", "\"seq\":1e-999").is_ok());
    }

    #[test]
    fn validation_rules() {
        let w = valid_wire();
        let check = |from: &str, to: &str| {
            let s = w.replacen(from, to, 1);
            assert_ne!(s, w, "{from}");
            validate(&dec(s).unwrap()).map_err(|e| e.reason())
        };
        let nonce = "6205e46718ce811e39f4e04f2a692a27af2eff6e40cd76cd6c89809b9b9007ae";
        let n = |s: String| check(nonce, &s);
        assert_eq!(n("a".repeat(31)), Err(reason::INVALID_NONCE));
        assert_eq!(n("a".repeat(32)), Ok(()));
        assert_eq!(n("a".repeat(100)), Ok(()));
        assert_eq!(n("a".repeat(101)), Err(reason::INVALID_NONCE));
        assert_eq!(n("A".repeat(64)), Err(reason::INVALID_NONCE));
        assert_eq!(n("g".repeat(64)), Err(reason::INVALID_NONCE));
        let k = |s: &str| check("\"key_id\":\"collector-0\"", &format!("\"key_id\":\"{s}\""));
        assert_eq!(k(""), Err(reason::INVALID_KEY_ID));
        assert_eq!(k(&"a".repeat(64)), Ok(()));
        assert_eq!(k(&"a".repeat(65)), Err(reason::INVALID_KEY_ID));
        assert_eq!(k("a.b"), Err(reason::INVALID_KEY_ID));
        assert_eq!(k("Aa_-09"), Ok(()));
        let s = |v: String| check("\"source\":\"node-0\"", &format!("\"source\":\"{v}\""));
        assert_eq!(s("é".repeat(128)), Ok(()));
        assert_eq!(s("é".repeat(129)), Err(reason::FIELD_TOO_LONG));
        let t = |v: String| check("\"type\":\"omen.observed\"", &format!("\"type\":\"{v}\""));
        assert_eq!(t("t".repeat(64)), Ok(()));
        assert_eq!(t("t".repeat(65)), Err(reason::FIELD_TOO_LONG));
        let id = "2c3ba479-a68f-4011-ae25-042ef33617ca";
        assert_eq!(check(id, &id.to_uppercase()), Err(reason::INVALID_ID));
        assert_eq!(check(id, &id.replace('-', "")), Err(reason::INVALID_ID));
        assert_eq!(check(id, &format!("{{{id}}}")), Err(reason::INVALID_ID));
        let ts = |v: &str| {
            check(
                "\"issued_at\":\"2026-11-25T16:25:58.961Z\"",
                &format!("\"issued_at\":\"{v}\""),
            )
        };
        for good in [
            "2026-11-25T16:25:58Z",
            "2026-11-25T16:25:58.9Z",
            "2024-02-29T23:59:59.1234567891Z",
            "0001-01-01T00:00:00Z",
        ] {
            assert_eq!(ts(good), Ok(()), "{good}");
        }
        for bad in [
            "2026-11-25T16:25:58.961",
            "2026-11-25T16:25:58.961z",
            "2026-11-25T16:25:58.961+00:00",
            "2026-11-25 16:25:58Z",
            "2026-02-29T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T16:60:00Z",
            "2026-11-25T16:25:60Z",
            "0000-01-01T00:00:00Z",
            "2026-11-25T16:25:58.Z",
            "2026-11-25T16:25:58.961Z\\n",
            "2026-1-25T16:25:58Z",
            "+2026-11-25T16:25:58Z",
            "2026-11-25T16:25:58.96٣Z",
            "",
        ] {
            assert_eq!(ts(bad), Err(reason::INVALID_TIMESTAMP), "{bad}");
        }
        let ex = |v: &str| check("\"expires_at\":null", &format!("\"expires_at\":\"{v}\""));
        assert_eq!(ex("2026-11-25T16:25:58.961Z"), Ok(()));
        assert_eq!(
            ex("2026-11-25T16:25:58.960Z"),
            Err(reason::INVALID_TIMESTAMP)
        );
        assert_eq!(ex(""), Err(reason::INVALID_TIMESTAMP));
        assert_eq!(ex("soon"), Err(reason::INVALID_TIMESTAMP));
        let ph = "dd4184fc977abf617d7cbc718ad897208ed2044b0379ddf8f460c1b5771f4e20";
        assert_eq!(
            check(ph, &ph.to_uppercase()),
            Err(reason::INVALID_PAYLOAD_HASH)
        );
        assert_eq!(check(ph, &ph[1..]), Err(reason::INVALID_PAYLOAD_HASH));
        let depth = |d: usize| {
            let v = format!("{}1{}", "[".repeat(d - 1), "]".repeat(d - 1));
            check("\"seq\":0", &format!("\"seq\":{v}"))
        };
        assert_eq!(depth(16), Ok(()));
        assert_eq!(depth(17), Err(reason::PAYLOAD_TOO_DEEP));
    }

    #[test]
    fn depth_scan() {
        assert_eq!(max_value_depth("{}"), 0);
        assert_eq!(max_value_depth("{\"a\":1}"), 1);
        assert_eq!(max_value_depth("{\"a\":[]}"), 1);
        assert_eq!(max_value_depth("{\"a\":[{}]}"), 2);
        assert_eq!(max_value_depth("{\"a\":\"[[[{{\\\"\"}"), 1);
        assert_eq!(max_value_depth("{\"a\":{\"b\":[1]}}"), 3);
    }

    #[test]
    fn timestamps_truncate_to_microseconds() {
        let t = parse_timestamp("2026-11-25T16:24:49.9999999Z").unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 999_999_000);
        let t = parse_timestamp("2026-11-25T16:24:49.4Z").unwrap();
        assert_eq!(t.timestamp_subsec_micros(), 400_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decode_never_panics_on_bytes(b in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(env) = dec(b) {
                let _ = validate(&env);
            }
        }

        #[test]
        fn decode_never_panics_on_mutated_envelopes(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
        ) {
            let mut b = valid_wire().into_bytes();
            for (at, byte, op) in edits {
                let i = at.index(b.len().max(1));
                match op {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i.min(b.len()), byte),
                    _ if i < b.len() => { b.remove(i); }
                    _ => {}
                }
            }
            if let Ok(env) = dec(b) {
                let _ = validate(&env);
                let _ = crate::canonical::canonical_header(&env.header);
                let _ = crate::canonical::payload_hash(env.payload.get());
            }
        }

        #[test]
        fn decode_never_panics_on_json_ish_text(s in "[{}\\[\\]\":,a-z0-9\\\\ .eE+-]{0,64}") {
            let _ = dec(s.into_bytes());
        }
    }
}
