//! The log's signing key and the rule that keeps it honest: **never sign two checkpoints that are
//! inconsistent with each other.**
//!
//! PostgreSQL can be rolled back (a restored backup, a failover to a lagging replica) and then
//! grows another history; a checkpoint signed over it would contradict one signed before, and
//! clients holding both would rightly call the log forked. So the last checkpoint this key signed
//! is remembered *outside* PostgreSQL, in the state file (`tlog.state_file`, beside the key by
//! default), written atomically before the checkpoint is published. On start and before every
//! signature the integrator checks that the database's tree extends it ([`judge`]: at least as
//! large, and the RFC 6962 consistency proof from the database's own hashes verifies against the
//! signed root); otherwise it refuses, says why, and keeps the last good checkpoint served.
//!
//! Key files hold Go `sumdb/note` signer keys (`PRIVATE+KEY+<name>+<hash>+<base64>`); a key's
//! content is never echoed in an error.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::tlog::{check_consistency, Checkpoint, Hash, NoteSigner, NoteVerifier};

/// Reads a signer key file (trailing whitespace allowed).
pub fn load_signer(path: &Path) -> Result<NoteSigner, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "tlog.signing_key_file {}: cannot read it: {e}",
            path.display()
        )
    })?;
    NoteSigner::parse(text.trim()).map_err(|e| {
        format!(
            "tlog.signing_key_file {}: not a note signer key ({e}): expected one line \
             PRIVATE+KEY+<name>+<hash>+<base64>, as `nekhebet-store tlog keygen NAME` writes it",
            path.display()
        )
    })
}

/// The permission bits that let others than the owner read a key file, if any are set.
#[cfg(unix)]
pub fn loose_permissions(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
pub fn loose_permissions(_path: &Path) -> Option<u32> {
    None
}

/// Writes a new signer key file readable by its owner only (0600); never replaces a file.
pub fn write_key_file(path: &Path, signer: &NoteSigner) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{}", signer.to_key_string())?;
    file.sync_all()
}

/// Where the last signed checkpoint is kept (one signed note, as published).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    pub path: PathBuf,
}

impl StateFile {
    /// The last checkpoint signed for `origin`, verified with `verifier`; `None` when the file
    /// does not exist yet. Anything else unreadable is an error: the last signature is unknown.
    pub fn read(
        &self,
        origin: &str,
        verifier: &NoteVerifier,
    ) -> Result<Option<Checkpoint>, String> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "the state file {} cannot be read: {e}",
                    self.path.display()
                ))
            }
        };
        Checkpoint::open(&text, origin, std::slice::from_ref(verifier))
            .map(|(c, _)| Some(c))
            .map_err(|e| {
                format!(
                    "the state file {} does not hold a checkpoint of {origin} signed by this key ({e}): \
                     a state file belongs to one log and one key",
                    self.path.display()
                )
            })
    }

    /// Replaces the file with `note` atomically and durably: a temporary file in the same
    /// directory, synced, renamed over it, the directory synced. A crash leaves the old or the
    /// new note, never a mix.
    pub fn write(&self, note: &str) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(note.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(&dir)?.sync_all()
    }
}

/// Whether a checkpoint of the database's tree may be signed, given the last one signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing was signed before, or the tree extends it.
    Sign,
    /// The database holds fewer leaves than the last signed checkpoint (rolled back?).
    Behind {
        signed_size: u64,
        signed_root: Hash,
        db_size: u64,
    },
    /// The database's tree does not extend the last signed checkpoint: another history.
    Diverged {
        signed_size: u64,
        signed_root: Hash,
        /// The database's root at the signed size.
        db_root_at_signed: Hash,
        db_size: u64,
        db_root: Hash,
    },
}

/// Judges the database's tree (`db_size` leaves, root `db_root`, root `db_root_at_signed` at
/// the last signed size, and `proof`, the consistency proof from that size to `db_size` computed
/// from the database's hashes) against the last signed checkpoint. Pure.
pub fn judge(
    last_signed: Option<&Checkpoint>,
    db_size: u64,
    db_root: &Hash,
    db_root_at_signed: &Hash,
    proof: &[Hash],
) -> Verdict {
    let Some(last) = last_signed else {
        return Verdict::Sign;
    };
    if db_size < last.size() {
        return Verdict::Behind {
            signed_size: last.size(),
            signed_root: *last.root(),
            db_size,
        };
    }
    // What a client holding both checkpoints would check.
    let consistent = last.size() == 0
        || check_consistency(proof, last.size(), last.root(), db_size, db_root).is_ok();
    if consistent && (last.size() == 0 || db_root_at_signed == last.root()) {
        Verdict::Sign
    } else {
        Verdict::Diverged {
            signed_size: last.size(),
            signed_root: *last.root(),
            db_root_at_signed: *db_root_at_signed,
            db_size,
            db_root: *db_root,
        }
    }
}

impl Verdict {
    /// Why signing is refused, naming sizes and roots and the way out; `None` for [`Verdict::Sign`].
    pub fn refusal(&self, state: &Path) -> Option<String> {
        match self {
            Verdict::Sign => None,
            Verdict::Behind {
                signed_size,
                signed_root,
                db_size,
            } => Some(format!(
                "the database's tree has {db_size} leaves, fewer than the {signed_size} of the last \
                 signed checkpoint (root {signed_root}, state file {}): the database was rolled back \
                 or is another one. Nothing is signed until its tree extends that checkpoint; the \
                 last good checkpoint stays served",
                state.display()
            )),
            Verdict::Diverged {
                signed_size,
                signed_root,
                db_root_at_signed,
                db_size,
                db_root,
            } => Some(format!(
                "the database's tree does not extend the last signed checkpoint: that checkpoint \
                 has size {signed_size} and root {signed_root} (state file {}), the database's tree \
                 has root {db_root_at_signed} at size {signed_size} (and {db_root} at its size \
                 {db_size}). Signing it would fork the log; nothing is signed, the last good \
                 checkpoint stays served. Restore the database that holds the signed history, or \
                 start a new log (new origin and key, new state file)",
                state.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::{
        append_stored_hashes, envelope_entry, leaf_hash, prove_consistency, tree_hash,
    };

    fn tree(n: u64, salt: u8) -> Vec<Hash> {
        let leaves: Vec<Hash> = (0..n)
            .map(|i| leaf_hash(&envelope_entry(&[&i.to_be_bytes()[..], &[salt]].concat())))
            .collect();
        append_stored_hashes(0, &leaves, &Vec::new()).unwrap()
    }

    fn checkpoint(size: u64, stored: &Vec<Hash>) -> Checkpoint {
        Checkpoint::new("example.com/log", size, tree_hash(size, stored).unwrap()).unwrap()
    }

    /// The verdict over a database tree `db` of `size` leaves, as the integrator computes it.
    fn verdict(last: &Checkpoint, db: &Vec<Hash>, size: u64) -> Verdict {
        let at = last.size().min(size);
        let proof = if size >= last.size() {
            prove_consistency(last.size(), size, db).unwrap()
        } else {
            Vec::new()
        };
        judge(
            Some(last),
            size,
            &tree_hash(size, db).unwrap(),
            &tree_hash(at, db).unwrap(),
            &proof,
        )
    }

    #[test]
    fn only_an_extension_of_the_last_signed_checkpoint_is_signed() {
        let ours = tree(300, 1);
        let fork = {
            // The same first 100 leaves, then another history.
            let mut leaves: Vec<Hash> = (0..100u64)
                .map(|i| leaf_hash(&envelope_entry(&[&i.to_be_bytes()[..], &[1]].concat())))
                .collect();
            leaves.extend(
                (100..300u64)
                    .map(|i| leaf_hash(&envelope_entry(&[&i.to_be_bytes()[..], &[2]].concat()))),
            );
            append_stored_hashes(0, &leaves, &Vec::new()).unwrap()
        };
        let signed = checkpoint(150, &ours);
        assert_eq!(judge(None, 5, &ours[0], &ours[0], &[]), Verdict::Sign);
        assert_eq!(verdict(&signed, &ours, 150), Verdict::Sign);
        assert_eq!(verdict(&signed, &ours, 300), Verdict::Sign);
        assert!(matches!(
            verdict(&signed, &ours, 149),
            Verdict::Behind {
                signed_size: 150,
                db_size: 149,
                ..
            }
        ));
        for size in [150, 151, 300] {
            let v = verdict(&signed, &fork, size);
            let Verdict::Diverged {
                signed_size,
                db_root_at_signed,
                db_size,
                ..
            } = v
            else {
                panic!("size {size}: {v:?}");
            };
            assert_eq!((signed_size, db_size), (150, size));
            assert_eq!(db_root_at_signed, tree_hash(150, &fork).unwrap());
            let why = v.refusal(Path::new("/var/lib/log.checkpoint")).unwrap();
            assert!(
                why.contains("size 150") && why.contains(&signed.root().to_string()),
                "{why}"
            );
            assert!(why.contains(&db_root_at_signed.to_string()), "{why}");
        }
        // A proof that does not belong to these trees is not accepted as one.
        let wrong = prove_consistency(150, 300, &fork).unwrap();
        assert!(matches!(
            judge(
                Some(&signed),
                300,
                &tree_hash(300, &fork).unwrap(),
                signed.root(),
                &wrong
            ),
            Verdict::Diverged { .. }
        ));
    }

    #[test]
    fn the_state_file_is_replaced_atomically_and_must_be_this_logs() {
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::from_seed("example.com/log", &[7; 32]).unwrap();
        let other = NoteSigner::from_seed("example.com/log", &[8; 32]).unwrap();
        let state = StateFile {
            path: dir.path().join("log.checkpoint"),
        };
        assert_eq!(state.read("example.com/log", &signer.verifier()), Ok(None));
        let cp = checkpoint(3, &tree(3, 0));
        state.write(&cp.sign(&[&signer]).unwrap()).unwrap();
        assert_eq!(
            state.read("example.com/log", &signer.verifier()),
            Ok(Some(cp.clone()))
        );
        let cp4 = checkpoint(4, &tree(4, 0));
        state.write(&cp4.sign(&[&signer]).unwrap()).unwrap();
        assert_eq!(
            state.read("example.com/log", &signer.verifier()),
            Ok(Some(cp4))
        );
        assert!(!dir.path().join("log.checkpoint.tmp").exists());
        let e = state
            .read("example.com/log", &other.verifier())
            .unwrap_err();
        assert!(e.contains("signed by this key"), "{e}");
        let e = state
            .read("other.example/log", &signer.verifier())
            .unwrap_err();
        assert!(e.contains("one log"), "{e}");
    }

    #[test]
    fn key_files_are_written_once_owner_only_and_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let signer = NoteSigner::from_seed("example.com/log", &[9; 32]).unwrap();
        write_key_file(&path, &signer).unwrap();
        assert_eq!(loose_permissions(&path), None);
        assert_eq!(load_signer(&path).unwrap().verifier(), signer.verifier());
        assert!(write_key_file(&path, &signer).is_err(), "never replaced");
        std::fs::write(&path, "PRIVATE+KEY+secret-material\n").unwrap();
        let e = load_signer(&path).unwrap_err();
        assert!(
            e.contains("tlog.signing_key_file") && !e.contains("secret-material"),
            "{e}"
        );
    }
}
