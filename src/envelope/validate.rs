//! The store's structural rules, always applied after [`decode`](super::decode()):
//! [`validate`] and its [`ValidationError`], and the field rules it is made of (also used by
//! the verifier, which applies nekhebet-core's part of them in nekhebet-core's order).

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

use super::{
    clip, Envelope, Reason, Rejection, MAX_PAYLOAD_DEPTH, MAX_SOURCE_CHARS, MAX_TYPE_CHARS,
};

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
pub(super) fn parse_uuid(s: &str) -> Option<uuid::Uuid> {
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

/// The store's structural rules, always applied after [`decode`](super::decode()): UUID `id`,
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
    use crate::envelope::tests::{dec, valid_wire};

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
}
