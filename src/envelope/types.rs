//! The envelope types shared by decoding, validation and the rest of the crate: the decoded
//! [`Envelope`], the size [`Limits`] applied before parsing, and the [`Rejection`] a refused
//! message becomes (dead-letter header and metric label).

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{Header, Reason, DEFAULT_MAX_MESSAGE_BYTES};

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
    /// too; [`validate`](super::validate()) requires 64.
    pub signature_len: usize,
    /// Length of the base64-decoded public key; [`validate`](super::validate()) requires 32.
    pub public_key_len: usize,
}

/// A message refused by the pipeline: `reason` is a stable machine-readable snake_case
/// code (it becomes the Kafka dead-letter header `nekhebet.reason` and a Prometheus
/// label, so the set of codes is small and fixed: see [`reason`](crate::reason)), `detail` a human
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
