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
pub use crate::reason::Reason;

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
    /// Why, as a stable code.
    pub reason: Reason,
    /// Human-readable explanation.
    pub detail: String,
}

impl Rejection {
    /// A rejection with the given code and detail.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
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
    pub fn reason(&self) -> Reason {
        match self {
            DecodeError::Empty => Reason::EmptyMessage,
            DecodeError::TooLarge { .. } => Reason::MessageTooLarge,
            DecodeError::InvalidUtf8 { .. } => Reason::InvalidUtf8,
            DecodeError::Json(e) => match e {
                ParseError::Truncated { .. } => Reason::TruncatedJson,
                ParseError::Syntax { .. } => Reason::MalformedJson,
                ParseError::TooDeep { .. } => Reason::TooDeep,
                ParseError::DuplicateKey { .. } => Reason::DuplicateKey,
                ParseError::NumberOutOfRange { .. } => Reason::NumberOutOfRange,
            },
            DecodeError::NotAnObject { .. } => Reason::NotAnObject,
            DecodeError::MissingField { .. } => Reason::MissingField,
            DecodeError::WrongType { .. } => Reason::WrongType,
            DecodeError::InvalidEnum { .. } => Reason::InvalidEnum,
            DecodeError::InvalidBase64 { .. } => Reason::InvalidBase64,
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
    pub fn reason(&self) -> Reason {
        match self {
            ValidationError::InvalidId { .. } => Reason::InvalidId,
            ValidationError::FieldTooLong { .. } => Reason::FieldTooLong,
            ValidationError::InvalidNonce => Reason::InvalidNonce,
            ValidationError::InvalidKeyId => Reason::InvalidKeyId,
            ValidationError::InvalidPayloadHash => Reason::InvalidPayloadHash,
            ValidationError::InvalidTimestamp { .. } | ValidationError::ExpiresBeforeIssued => {
                Reason::InvalidTimestamp
            }
            ValidationError::KeyLength { .. } => Reason::InvalidKeyLength,
            ValidationError::PayloadTooDeep { .. } => Reason::PayloadTooDeep,
        }
    }

    /// The nekhebet-core verification category the same defect gets.
    pub fn category(&self) -> Reason {
        match self {
            ValidationError::PayloadTooDeep { .. } => Reason::PayloadTooLarge,
            _ => Reason::StructureInvalid,
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
    fn undecodable_vectors_get_specific_reasons() {
        for (name, _, wire) in vectors() {
            let want = if name.starts_with("bad-b64-") {
                Reason::InvalidBase64
            } else if name.starts_with("missing-field-") {
                Reason::MissingField
            } else if name.starts_with("truncated-") {
                Reason::TruncatedJson
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
        let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
            ("empty", vec![], Reason::EmptyMessage),
            ("oversize", big, Reason::MessageTooLarge),
            ("invalid utf-8", sub("\"seq\"", "\"s\u{0}q\"").iter().map(|&b| if b == 0 { 0xff } else { b }).collect(), Reason::InvalidUtf8),
            ("overlong utf-8", sub("\"s-0\"", "\"\u{0}\u{0}\"").iter().map(|&b| if b == 0 { 0xc0 } else { b }).collect(), Reason::InvalidUtf8),
            ("truncated", truncated, Reason::TruncatedJson),
            ("whitespace only", b" \n ".to_vec(), Reason::TruncatedJson),
            ("depth 10000", sub("\"s-0\"", &deep), Reason::TooDeep),
            ("depth 10000 in unknown field", sub("{\"header\"", &format!("{{\"x\":{deep},\"header\"")), Reason::TooDeep),
            ("NaN", sub("\"seq\":0", "\"seq\":NaN"), Reason::MalformedJson),
            ("Infinity", sub("\"seq\":0", "\"seq\":Infinity"), Reason::MalformedJson),
            ("-Infinity", sub("\"seq\":0", "\"seq\":-Infinity"), Reason::MalformedJson),
            ("1e999", sub("\"seq\":0", "\"seq\":1e999"), Reason::NumberOutOfRange),
            ("4301-digit int", sub("\"seq\":0", &format!("\"seq\":{}", "9".repeat(4301))), Reason::NumberOutOfRange),
            ("duplicate payload key", sub("\"seq\":0", "\"seq\":0,\"seq\":1"), Reason::DuplicateKey),
            ("duplicate header key", sub("\"source\":\"node-0\"", "\"source\":\"evil\",\"source\":\"node-0\""), Reason::DuplicateKey),
            ("duplicate escaped key", sub("\"source\":\"node-0\"", "\"source\":\"node-0\",\"sourc\\u0065\":\"x\""), Reason::DuplicateKey),
            ("duplicate top-level key", sub("{\"header\"", "{\"payload\":{},\"header\""), Reason::DuplicateKey),
            ("BOM", with_bom, Reason::MalformedJson),
            ("trailing garbage", [w.as_bytes(), b"x"].concat(), Reason::MalformedJson),
            ("two documents", [w.as_bytes(), w.as_bytes()].concat(), Reason::MalformedJson),
            ("trailing NUL", [w.as_bytes(), b"\0"].concat(), Reason::MalformedJson),
            ("raw NUL in string", sub("\"s-0\"", "\"s\u{0}0\""), Reason::MalformedJson),
            ("raw newline in string", sub("\"s-0\"", "\"s\n0\""), Reason::MalformedJson),
            ("lone surrogate", sub("\"s-0\"", "\"\\ud800\""), Reason::MalformedJson),
            ("single quotes", sub("\"seq\":0", "'seq':0"), Reason::MalformedJson),
            ("string holding an envelope", serde_json::to_vec(&w).unwrap(), Reason::NotAnObject),
            ("array", format!("[{w}]").into_bytes(), Reason::NotAnObject),
            ("null", b"null".to_vec(), Reason::NotAnObject),
            ("missing header", b"{\"payload\":{},\"signature\":{\"signature\":\"\",\"public_key\":\"\"}}".to_vec(), Reason::MissingField),
            ("missing nonce", sub("\"nonce\":", "\"nonc\":"), Reason::MissingField),
            ("missing public_key", sub("\"public_key\":", "\"publickey\":"), Reason::MissingField),
            ("header null", sub("{\"header\":{", "{\"h\":{"), Reason::MissingField),
            ("header is a string", sub("{\"header\":{", "{\"header\":\"x\",\"h\":{"), Reason::WrongType),
            ("id int", sub("\"id\":\"2c3ba479-a68f-4011-ae25-042ef33617ca\"", "\"id\":1"), Reason::WrongType),
            ("type null", sub("\"type\":\"omen.observed\"", "\"type\":null"), Reason::WrongType),
            ("version null", sub("\"version\":\"4.0.0\"", "\"version\":null"), Reason::WrongType),
            ("version number", sub("\"version\":\"4.0.0\"", "\"version\":4"), Reason::WrongType),
            ("source array", sub("\"source\":\"node-0\"", "\"source\":[]"), Reason::WrongType),
            ("issued_at number", sub("\"issued_at\":\"2026-11-25T16:25:58.961Z\"", "\"issued_at\":1764087958"), Reason::WrongType),
            ("expires_at number", sub("\"expires_at\":null", "\"expires_at\":0"), Reason::WrongType),
            ("nonce bool", sub("\"nonce\":\"6205e46718ce811e39f4e04f2a692a27af2eff6e40cd76cd6c89809b9b9007ae\"", "\"nonce\":true"), Reason::WrongType),
            ("key_id object", sub("\"key_id\":\"collector-0\"", "\"key_id\":{}"), Reason::WrongType),
            ("payload_hash float", sub("\"payload_hash\":\"dd4184fc977abf617d7cbc718ad897208ed2044b0379ddf8f460c1b5771f4e20\"", "\"payload_hash\":1.5"), Reason::WrongType),
            ("context array", sub("\"context\":null", "\"context\":[]"), Reason::WrongType),
            ("extensions string", sub("\"extensions\":null", "\"extensions\":\"{}\""), Reason::WrongType),
            ("payload array", sub("\"payload\":{", "\"payload\":[],\"p\":{"), Reason::WrongType),
            ("payload null", sub("\"payload\":{", "\"payload\":null,\"p\":{"), Reason::WrongType),
            ("signature int", sub("\"signature\":\"", "\"signature\":7,\"s\":\""), Reason::WrongType),
            ("signature object is a list", sub("\"signature\":{", "\"signature\":[],\"s\":{"), Reason::WrongType),
            ("algorithm", sub("\"algorithm\":\"ed25519\"", "\"algorithm\":\"rsa\""), Reason::InvalidEnum),
            ("canonicalization", sub("\"canonicalization\":\"rfc8785\"", "\"canonicalization\":\"jcs\""), Reason::InvalidEnum),
            ("algorithm wrong type", sub("\"algorithm\":\"ed25519\"", "\"algorithm\":1"), Reason::WrongType),
            ("base64 junk", sub("\"public_key\":\"", "\"public_key\":\"!!"), Reason::InvalidBase64),
            ("base64 url-safe", sub("\"public_key\":\"", "\"public_key\":\"-_"), Reason::InvalidBase64),
            ("base64 no padding", sub("\"public_key\":\"", "\"public_key\":\"AAA\",\"x\":\""), Reason::InvalidBase64),
            ("base64 whitespace", sub("\"public_key\":\"", "\"public_key\":\"AA AA\",\"x\":\""), Reason::InvalidBase64),
        ];
        for (what, input, want) in cases {
            let got = dec(input).map(|_| ()).unwrap_err();
            assert_eq!(got.reason(), want, "{what}: {got}");
            assert_eq!(got.rejection().reason, want);
            assert_eq!(want.stage(), crate::reason::Stage::Decode);
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
            Reason::InvalidKeyLength
        );
        let env = sub("\"id\":\"2c3ba479", "\"id\":\"X2c3ba479").unwrap();
        assert!(env.header.id.is_nil());
        assert_eq!(validate(&env).unwrap_err().reason(), Reason::InvalidId);
        let env = sub("\"issued_at\":\"2026", "\"issued_at\":\"x2026").unwrap();
        assert_eq!(env.header.issued_at_ts, DateTime::UNIX_EPOCH);
        assert_eq!(
            validate(&env).unwrap_err().reason(),
            Reason::InvalidTimestamp
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
        assert_eq!(n("a".repeat(31)), Err(Reason::InvalidNonce));
        assert_eq!(n("a".repeat(32)), Ok(()));
        assert_eq!(n("a".repeat(100)), Ok(()));
        assert_eq!(n("a".repeat(101)), Err(Reason::InvalidNonce));
        assert_eq!(n("A".repeat(64)), Err(Reason::InvalidNonce));
        assert_eq!(n("g".repeat(64)), Err(Reason::InvalidNonce));
        let k = |s: &str| check("\"key_id\":\"collector-0\"", &format!("\"key_id\":\"{s}\""));
        assert_eq!(k(""), Err(Reason::InvalidKeyId));
        assert_eq!(k(&"a".repeat(64)), Ok(()));
        assert_eq!(k(&"a".repeat(65)), Err(Reason::InvalidKeyId));
        assert_eq!(k("a.b"), Err(Reason::InvalidKeyId));
        assert_eq!(k("Aa_-09"), Ok(()));
        let s = |v: String| check("\"source\":\"node-0\"", &format!("\"source\":\"{v}\""));
        assert_eq!(s("é".repeat(128)), Ok(()));
        assert_eq!(s("é".repeat(129)), Err(Reason::FieldTooLong));
        let t = |v: String| check("\"type\":\"omen.observed\"", &format!("\"type\":\"{v}\""));
        assert_eq!(t("t".repeat(64)), Ok(()));
        assert_eq!(t("t".repeat(65)), Err(Reason::FieldTooLong));
        let id = "2c3ba479-a68f-4011-ae25-042ef33617ca";
        assert_eq!(check(id, &id.to_uppercase()), Err(Reason::InvalidId));
        assert_eq!(check(id, &id.replace('-', "")), Err(Reason::InvalidId));
        assert_eq!(check(id, &format!("{{{id}}}")), Err(Reason::InvalidId));
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
            assert_eq!(ts(bad), Err(Reason::InvalidTimestamp), "{bad}");
        }
        let ex = |v: &str| check("\"expires_at\":null", &format!("\"expires_at\":\"{v}\""));
        assert_eq!(ex("2026-11-25T16:25:58.961Z"), Ok(()));
        assert_eq!(
            ex("2026-11-25T16:25:58.960Z"),
            Err(Reason::InvalidTimestamp)
        );
        assert_eq!(ex(""), Err(Reason::InvalidTimestamp));
        assert_eq!(ex("soon"), Err(Reason::InvalidTimestamp));
        let ph = "dd4184fc977abf617d7cbc718ad897208ed2044b0379ddf8f460c1b5771f4e20";
        assert_eq!(
            check(ph, &ph.to_uppercase()),
            Err(Reason::InvalidPayloadHash)
        );
        assert_eq!(check(ph, &ph[1..]), Err(Reason::InvalidPayloadHash));
        let depth = |d: usize| {
            let v = format!("{}1{}", "[".repeat(d - 1), "]".repeat(d - 1));
            check("\"seq\":0", &format!("\"seq\":{v}"))
        };
        assert_eq!(depth(16), Ok(()));
        assert_eq!(depth(17), Err(Reason::PayloadTooDeep));
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
