//! The store as a verifiable log (issue 15): the transparency log's IO around the pure core
//! [`crate::tlog`]. Every envelope that becomes `stored` gets a gapless leaf index in commit order;
//! the entry is SHA-256 of its stored bytes; checkpoints (C2SP tlog-checkpoint, signed notes) are
//! published every `tlog.checkpoint_interval_ms` when the tree grew; `serve` answers the tiles,
//! checkpoints and proofs (`crate::serve::log`); `nekhebet-store audit` recomputes everything.
//!
//! | module | owns |
//! |---|---|
//! | `audit` | `nekhebet-store audit`: the log recomputed from the store, every difference named |
//! | `integrator` | the background task in `ingest` and `serve`: the advisory lock, integration steps, checkpoints |
//! | `signing` | key files, the state file, the rule that no two signed checkpoints are inconsistent |
//! | `frontier` | the tree's right edge: stored hashes and roots leaf by leaf, in constant memory (pure) |
//! | `hashes` | the core's computations over stored hashes that live in PostgreSQL |
//! | `lag` | the integration lag, kept per transaction (pure) |
//! | `status` | what the integrator reports to `/readyz` and to the process |
//!
//! Invariants (the tables are migration 0008's):
//! - Leaf `i` is the `i`-th row of `events` in commit order `(txid, seq)`; indexes have no gaps,
//!   an event is logged at most once (unique seq), nothing logged ever moves or changes.
//! - One integrator at a time across all processes (a session advisory lock), one transaction per
//!   step (leaves, their stored hashes and the cursor — the last leaf — together).
//! - A checkpoint is signed only for leaves already committed, and only if the tree extends the
//!   last checkpoint this key signed (remembered in the state file, outside PostgreSQL).

pub mod audit;
pub mod frontier;
pub mod hashes;
pub mod integrator;
pub mod lag;
pub mod signing;
pub mod status;

use std::path::PathBuf;

use crate::config::Config;
use crate::tlog::NoteSigner;

pub use integrator::Handle;
pub use status::{SharedStatus, Status};

/// The origin of checkpoints published without a key and without `tlog.origin`.
pub const DEFAULT_ORIGIN: &str = "nekhebet-store";

/// What the log needs from the configuration and the key file, checked before a process starts.
#[derive(Debug, Clone)]
pub struct Setup {
    pub origin: String,
    pub signer: Option<NoteSigner>,
    pub state: Option<signing::StateFile>,
    pub checkpoint_interval: std::time::Duration,
    pub step_max_leaves: usize,
}

impl Setup {
    /// `None` when `tlog.enabled` is false. An error names the key and the file: an unreadable or
    /// malformed signing key, or a key whose name is not `tlog.origin`.
    pub fn load(config: &Config) -> anyhow::Result<Option<Setup>> {
        let cfg = &config.tlog;
        if !cfg.enabled {
            return Ok(None);
        }
        let signer = match &cfg.signing_key_file {
            None => None,
            Some(path) => {
                let signer = signing::load_signer(path).map_err(anyhow::Error::msg)?;
                if let Some(mode) = signing::loose_permissions(path) {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{mode:o}"),
                        "tlog.signing_key_file can be read by others than its owner: chmod 600 it"
                    );
                }
                Some(signer)
            }
        };
        let origin = match (&signer, cfg.origin.as_str()) {
            (Some(s), "") => s.name().to_string(),
            (Some(s), origin) if origin != s.name() => anyhow::bail!(
                "tlog.origin = {origin:?} but the key in tlog.signing_key_file is named {:?}: a \
                 checkpoint is signed by a key named after its origin (C2SP tlog-checkpoint). Set \
                 tlog.origin = {:?}, or make a key for this origin: nekhebet-store tlog keygen {origin}",
                s.name(),
                s.name()
            ),
            (_, "") => DEFAULT_ORIGIN.to_string(),
            (_, origin) => origin.to_string(),
        };
        let state = cfg
            .state_path()
            .map(|path: PathBuf| signing::StateFile { path });
        Ok(Some(Setup {
            origin,
            signer,
            state,
            checkpoint_interval: std::time::Duration::from_millis(cfg.checkpoint_interval_ms),
            step_max_leaves: cfg.step_max_leaves,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origin: &str, key: Option<PathBuf>) -> Config {
        let mut c = Config::default();
        c.tlog.origin = origin.to_string();
        c.tlog.signing_key_file = key;
        c
    }

    #[test]
    fn the_origin_is_the_keys_name_and_a_mismatch_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let signer = NoteSigner::from_seed("example.com/log", &[5; 32]).unwrap();
        signing::write_key_file(&path, &signer).unwrap();

        let s = Setup::load(&config("", Some(path.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(s.origin, "example.com/log");
        assert_eq!(s.state.unwrap().path, dir.path().join("log.key.checkpoint"));
        let e = Setup::load(&config("other.example/log", Some(path.clone())))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tlog.origin = \"other.example/log\"") && e.contains("\"example.com/log\""),
            "{e}"
        );
        let s = Setup::load(&config("", None)).unwrap().unwrap();
        assert_eq!(
            (s.origin.as_str(), s.signer.is_none()),
            (DEFAULT_ORIGIN, true)
        );
        let mut off = config("", None);
        off.tlog.enabled = false;
        assert!(Setup::load(&off).unwrap().is_none());
        let e = Setup::load(&config("", Some(dir.path().join("absent.key"))))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tlog.signing_key_file") && e.contains("absent.key"),
            "{e}"
        );
    }
}
