//! Every reason a message can be refused for: one exhaustive enum. Its code (`as_str`) is the
//! Kafka dead-letter header `nekhebet.reason`, the `reason` label of the rejection counter and
//! `import`'s summary row, so a code is never renamed (dashboards and DLQ consumers key on it).
//! docs/reasons.md documents each one; a unit test keeps the two in step.

use std::fmt;

/// Where in the pipeline a reason is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// `envelope::decode`: nekhebet-core's `from_json_bytes` would refuse it too (or the store
    /// refuses it before parsing).
    Decode,
    /// `envelope::validate`: decodes, breaks a structural rule.
    Validation,
    /// `verify::Verifier`: nekhebet-core's verification categories, in check order.
    Verification,
    /// The ingest pipeline or the store: the message itself is fine, its fate is not.
    Pipeline,
}

/// A stable rejection code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // Decode.
    /// Zero-length message (a Kafka tombstone or empty value).
    EmptyMessage,
    /// Larger than `Limits::max_message_bytes`.
    MessageTooLarge,
    /// Not valid UTF-8 anywhere in the message.
    InvalidUtf8,
    /// JSON ends early (truncated message, or only whitespace).
    TruncatedJson,
    /// JSON syntax error: BOM, trailing garbage, NaN/Infinity, raw control characters,
    /// bad escapes, lone surrogates, leading zeros, ...
    MalformedJson,
    /// Containers nested deeper than the parser allows.
    TooDeep,
    /// An object repeats a key.
    DuplicateKey,
    /// A float overflowing to infinity (`1e999`) or an integer of over 4,300 digits.
    NumberOutOfRange,
    /// The message is valid JSON but not an object (e.g. a string holding an envelope).
    NotAnObject,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type (including `null` where not allowed).
    WrongType,
    /// `algorithm` is not "ed25519" or `canonicalization` is not "rfc8785".
    InvalidEnum,
    /// `signature`/`public_key` is not strict, padded, standard-alphabet base64.
    InvalidBase64,
    // Validation.
    /// `id` is not a lowercase hyphenated UUID.
    InvalidId,
    /// `nonce` is not 32–100 lowercase hex digits.
    InvalidNonce,
    /// `key_id` is not `[A-Za-z0-9_-]{1,64}`.
    InvalidKeyId,
    /// `payload_hash` is not 64 lowercase hex digits.
    InvalidPayloadHash,
    /// `issued_at`/`expires_at` is not `YYYY-MM-DDTHH:MM:SS[.f+]Z` (a real UTC instant),
    /// or `expires_at` is before `issued_at`.
    InvalidTimestamp,
    /// `source` over 128 or `type` over 64 characters.
    FieldTooLong,
    /// The signature is not 64 bytes or the public key not 32 bytes.
    InvalidKeyLength,
    /// A payload value nested deeper than 16.
    PayloadTooDeep,
    // Verification, in the order the verifier checks.
    /// nekhebet-core: `type` is not a registered event type.
    EventTypeInvalid,
    /// nekhebet-core: `version` is not "4.0.0".
    UnsupportedVersion,
    /// nekhebet-core: a structural rule failed during verification.
    StructureInvalid,
    /// nekhebet-core: `issued_at` is beyond the allowed clock skew in the future.
    TimestampFuture,
    /// nekhebet-core: `expires_at` has passed.
    Expired,
    /// The public key is not registered for `key_id` (when keys are configured).
    KeyIdMismatch,
    /// nekhebet-core: the Ed25519 signature over the canonical header does not verify.
    SignatureInvalid,
    /// nekhebet-core: the payload's estimated size is over 1 MiB or it is nested too deep.
    PayloadTooLarge,
    /// nekhebet-core: SHA-256 of the canonical payload differs from `payload_hash`.
    HashMismatch,
    // Pipeline and store.
    /// A Kafka message without a value (a tombstone): nothing to decode.
    NullValue,

    /// The database refused this one message on its own (found by splitting its batch); the
    /// detail carries the SQLSTATE.
    StoreRejected,

    /// The checks panicked on this message (a decoder bug): dead-lettered rather than lost.
    InternalError,
    /// The event id is already stored with another payload: not the same event.
    IdConflict,
    /// `issued_at` is older than the replay window (`replay_guard.retention`): its nonce may have
    /// been cleaned up, so the replay guard could no longer tell a replay.
    OutsideReplayWindow,
}

impl Reason {
    /// Every reason, decode first, in the order docs/reasons.md lists them.
    pub const ALL: [Reason; 35] = [
        Reason::EmptyMessage,
        Reason::MessageTooLarge,
        Reason::InvalidUtf8,
        Reason::TruncatedJson,
        Reason::MalformedJson,
        Reason::TooDeep,
        Reason::DuplicateKey,
        Reason::NumberOutOfRange,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::InvalidEnum,
        Reason::InvalidBase64,
        Reason::InvalidId,
        Reason::InvalidNonce,
        Reason::InvalidKeyId,
        Reason::InvalidPayloadHash,
        Reason::InvalidTimestamp,
        Reason::FieldTooLong,
        Reason::InvalidKeyLength,
        Reason::PayloadTooDeep,
        Reason::EventTypeInvalid,
        Reason::UnsupportedVersion,
        Reason::StructureInvalid,
        Reason::TimestampFuture,
        Reason::Expired,
        Reason::KeyIdMismatch,
        Reason::SignatureInvalid,
        Reason::PayloadTooLarge,
        Reason::HashMismatch,
        Reason::NullValue,
        Reason::StoreRejected,
        Reason::InternalError,
        Reason::IdConflict,
        Reason::OutsideReplayWindow,
    ];

    /// The stable snake_case code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::EmptyMessage => "empty_message",
            Reason::MessageTooLarge => "message_too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::TruncatedJson => "truncated_json",
            Reason::MalformedJson => "malformed_json",
            Reason::TooDeep => "too_deep",
            Reason::DuplicateKey => "duplicate_key",
            Reason::NumberOutOfRange => "number_out_of_range",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::InvalidEnum => "invalid_enum",
            Reason::InvalidBase64 => "invalid_base64",
            Reason::InvalidId => "invalid_id",
            Reason::InvalidNonce => "invalid_nonce",
            Reason::InvalidKeyId => "invalid_key_id",
            Reason::InvalidPayloadHash => "invalid_payload_hash",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::FieldTooLong => "field_too_long",
            Reason::InvalidKeyLength => "invalid_key_length",
            Reason::PayloadTooDeep => "payload_too_deep",
            Reason::EventTypeInvalid => "event_type_invalid",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::StructureInvalid => "structure_invalid",
            Reason::TimestampFuture => "timestamp_future",
            Reason::Expired => "expired",
            Reason::KeyIdMismatch => "key_id_mismatch",
            Reason::SignatureInvalid => "signature_invalid",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::HashMismatch => "hash_mismatch",
            Reason::NullValue => "null_value",
            Reason::StoreRejected => "store_rejected",
            Reason::InternalError => "internal_error",
            Reason::IdConflict => "id_conflict",
            Reason::OutsideReplayWindow => "outside_replay_window",
        }
    }

    /// The reason with this code.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// Where it is decided.
    pub const fn stage(self) -> Stage {
        match self {
            Reason::EmptyMessage
            | Reason::MessageTooLarge
            | Reason::InvalidUtf8
            | Reason::TruncatedJson
            | Reason::MalformedJson
            | Reason::TooDeep
            | Reason::DuplicateKey
            | Reason::NumberOutOfRange
            | Reason::NotAnObject
            | Reason::MissingField
            | Reason::WrongType
            | Reason::InvalidEnum
            | Reason::InvalidBase64 => Stage::Decode,
            Reason::InvalidId
            | Reason::InvalidNonce
            | Reason::InvalidKeyId
            | Reason::InvalidPayloadHash
            | Reason::InvalidTimestamp
            | Reason::FieldTooLong
            | Reason::InvalidKeyLength
            | Reason::PayloadTooDeep => Stage::Validation,
            Reason::EventTypeInvalid
            | Reason::UnsupportedVersion
            | Reason::StructureInvalid
            | Reason::TimestampFuture
            | Reason::Expired
            | Reason::KeyIdMismatch
            | Reason::SignatureInvalid
            | Reason::PayloadTooLarge
            | Reason::HashMismatch => Stage::Verification,
            Reason::NullValue
            | Reason::StoreRejected
            | Reason::InternalError
            | Reason::IdConflict
            | Reason::OutsideReplayWindow => Stage::Pipeline,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// docs/reasons.md names every code in a table row (`| \`code\` |`) or a numbered list item
    /// (`1. \`code\``): the set must be exactly `Reason::ALL`.
    #[test]
    fn docs_list_exactly_the_reasons() {
        let docs = include_str!("../docs/reasons.md");
        let documented: BTreeSet<&str> = docs
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                let rest = l.strip_prefix("| `").or_else(|| {
                    l.split_once(". `")
                        .filter(|(n, _)| n.parse::<u32>().is_ok())
                        .map(|(_, r)| r)
                })?;
                rest.split_once('`').map(|(code, _)| code)
            })
            .collect();
        let ours: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(documented, ours);
    }

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = BTreeSet::new();
        for r in Reason::ALL {
            let code = r.as_str();
            assert!(seen.insert(code), "{code} twice");
            assert!(code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
            assert_eq!(Reason::from_code(code), Some(r));
        }
        assert_eq!(Reason::from_code("nope"), None);
    }
}
