//! Strict wire decoding: [`decode`] accepts exactly what nekhebet-core 4.0.0's
//! `from_json_bytes` (msgspec) accepts, minus what the store refuses on principle (oversize,
//! duplicate keys, invalid UTF-8 anywhere — see `docs/reasons.md`). Like msgspec it ignores
//! unknown fields, fills defaulted header fields and does *not* check formats: that is
//! [`validate`](super::validate())'s job, as it is nekhebet-core's verifier's.
//!
//! The decoder walks the top-level, header and signature objects with the crate's JSON
//! [`Parser`] (every rule of `canonical::parse`, duplicate keys included) and keeps the payload
//! as the byte span it had on the wire, without building its tree.

use std::borrow::Cow;

use bytes::Bytes;
use chrono::DateTime;
use serde_json::value::RawValue;

use super::validate::{parse_timestamp, parse_uuid};
use super::{
    clip, decode_base64, Envelope, Header, Limits, Reason, Rejection, ALGORITHM, CANONICALIZATION,
    VERSION,
};
use crate::canonical::{Json, ParseError, Parser};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::tests::{dec, valid_wire, vectors};
    use crate::envelope::{validate, DEFAULT_MAX_MESSAGE_BYTES};
    use proptest::prelude::*;

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
                let _ = crate::envelope::canonical_header(&env.header);
                let _ = crate::canonical::payload_hash(env.payload.get());
            }
        }

        #[test]
        fn decode_never_panics_on_json_ish_text(s in "[{}\\[\\]\":,a-z0-9\\\\ .eE+-]{0,64}") {
            let _ = dec(s.into_bytes());
        }
    }
}
