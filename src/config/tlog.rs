//! `tlog` (the transparency log): its section, defaults and checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `tlog`: the transparency log over the stored envelopes (see `crate::transparency`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlogConfig {
    /// Build the log (the integrator runs in `ingest` and `serve`; `serve` answers `/log/…` and
    /// `/v1/events/{id}/proof`). On by default: a store whose users need tamper evidence has it
    /// from the first event.
    pub enabled: bool,
    /// The checkpoints' origin line (C2SP tlog-checkpoint), which is also the signing key's name.
    /// Empty: the signing key's name (`nekhebet-store` without a key).
    pub origin: String,
    /// The note signer key (`PRIVATE+KEY+<name>+<hash>+<base64>`, as `nekhebet-store tlog keygen`
    /// writes it). Unset: checkpoints are published unsigned (a start-up warning says so).
    pub signing_key_file: Option<PathBuf>,
    /// Where the last signed checkpoint is remembered outside PostgreSQL (written atomically
    /// before each checkpoint is published): a database restored from a backup can then not make
    /// this process sign a checkpoint inconsistent with one it signed before. Unset: beside the
    /// key, `<signing_key_file>.checkpoint`. Must be on a writable, persistent volume.
    pub state_file: Option<PathBuf>,
    /// A checkpoint is published this often when the tree grew.
    pub checkpoint_interval_ms: u64,
    /// Events integrated per step (one transaction), at most: bounds the integrator's memory.
    pub step_max_leaves: usize,
}

impl Default for TlogConfig {
    fn default() -> Self {
        TlogConfig {
            enabled: true,
            origin: String::new(),
            signing_key_file: None,
            state_file: None,
            checkpoint_interval_ms: 1_000,
            step_max_leaves: 10_000,
        }
    }
}

impl TlogConfig {
    /// The state file: `state_file`, else `<signing_key_file>.checkpoint`; none without a key.
    pub fn state_path(&self) -> Option<PathBuf> {
        let key = self.signing_key_file.as_ref()?;
        Some(self.state_file.clone().unwrap_or_else(|| {
            let mut name = key.as_os_str().to_owned();
            name.push(".checkpoint");
            PathBuf::from(name)
        }))
    }

    /// Checks what can be checked without reading files (the key is read when the log starts).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, expected| ConfigError::Invalid {
            key,
            value,
            expected,
        };
        if !self.origin.is_empty()
            && (!crate::tlog::is_valid_name(&self.origin)
                || self.origin.chars().any(char::is_control))
        {
            return Err(invalid(
                "tlog.origin",
                format!("{:?}", self.origin),
                "a log name such as example.com/nekhebet (no spaces, no '+', no control characters): it is also the signing key's name",
            ));
        }
        if self.state_file.is_some() && self.signing_key_file.is_none() {
            return Err(invalid(
                "tlog.state_file",
                format!("{:?}", self.state_file),
                "no state file without tlog.signing_key_file: it remembers the last SIGNED checkpoint",
            ));
        }
        if !(100..=3_600_000).contains(&self.checkpoint_interval_ms) {
            return Err(invalid(
                "tlog.checkpoint_interval_ms",
                self.checkpoint_interval_ms.to_string(),
                "milliseconds from 100 to 3600000",
            ));
        }
        if self.step_max_leaves == 0 || self.step_max_leaves > 100_000 {
            return Err(invalid(
                "tlog.step_max_leaves",
                self.step_max_leaves.to_string(),
                "an integer from 1 to 100000",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::with_toml;

    #[test]
    fn tlog_is_on_by_default_and_checked_naming_the_key() {
        let c = with_toml("").unwrap();
        assert!(c.tlog.enabled);
        assert_eq!(c.tlog.checkpoint_interval_ms, 1_000);
        assert_eq!(c.tlog.state_path(), None);
        let err = |toml: &str| with_toml(toml).unwrap_err().to_string();
        let e = err("[tlog]\norigin = \"a b\"");
        assert!(
            e.contains("`tlog.origin`") && e.contains("no spaces"),
            "{e}"
        );
        let e = err("[tlog]\ncheckpoint_interval_ms = 5");
        assert!(
            e.contains("`tlog.checkpoint_interval_ms` = 5") && e.contains("100 to 3600000"),
            "{e}"
        );
        let e = err("[tlog]\nstep_max_leaves = 0");
        assert!(e.contains("`tlog.step_max_leaves` = 0"), "{e}");
        let e = err("[tlog]\nstate_file = \"/s\"");
        assert!(
            e.contains("`tlog.state_file`") && e.contains("signing_key_file"),
            "{e}"
        );
        assert!(err("[tlog]\nsigning_key = \"/k\"").contains("signing_key"));
        let c =
            with_toml("[tlog]\norigin = \"example.com/log\"\nsigning_key_file = \"/keys/log.key\"")
                .unwrap();
        assert_eq!(
            c.tlog.state_path(),
            Some(PathBuf::from("/keys/log.key.checkpoint"))
        );
    }
}
