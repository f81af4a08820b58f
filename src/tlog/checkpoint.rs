//! C2SP tlog checkpoints (<https://c2sp.org/tlog-checkpoint>): the signed note body
//! `<origin>\n<size>\n<base64 root hash>\n` followed by optional non-empty extension lines.

use std::fmt;

use super::merkle::Hash;
use super::note::{open_note, sign_note, Note, NoteError, NoteSigner, NoteVerifier};

/// A log checkpoint: origin, tree size, root hash, and optional extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
    extensions: Vec<String>,
}

/// Why text is not a checkpoint, or a checkpoint note does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text does not end in a newline.
    #[error("checkpoint does not end with a newline")]
    NotTerminated,
    /// Fewer than the three lines origin, size, root.
    #[error("checkpoint has fewer than 3 lines")]
    TooFewLines,
    /// An empty origin or extension line.
    #[error("checkpoint line {0} is empty")]
    EmptyLine(usize),
    /// A control character (lines cannot contain newlines or other control characters).
    #[error("checkpoint line {0} contains a control character")]
    ControlCharacter(usize),
    /// The size line is not a decimal `u64` without leading zeroes.
    #[error("checkpoint size is not a decimal number without leading zeroes")]
    BadSize,
    /// The root line is not the base64 of 32 bytes.
    #[error("checkpoint root is not the standard base64 of 32 bytes")]
    BadRoot,
    /// The origin line is not the expected log's.
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    WrongOrigin {
        /// The origin asked for.
        expected: String,
        /// The origin in the checkpoint.
        found: String,
    },
    /// The note around it does not open.
    #[error(transparent)]
    Note(#[from] NoteError),
}

fn check_line(line: &str, number: usize) -> Result<(), CheckpointError> {
    if line.is_empty() {
        return Err(CheckpointError::EmptyLine(number));
    }
    if line.chars().any(char::is_control) {
        return Err(CheckpointError::ControlCharacter(number));
    }
    Ok(())
}

impl Checkpoint {
    /// A checkpoint for `origin` (non-empty, no control characters) at `size` with `root`.
    pub fn new(origin: &str, size: u64, root: Hash) -> Result<Checkpoint, CheckpointError> {
        check_line(origin, 1)?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions: Vec::new(),
        })
    }

    /// Adds extension lines (each non-empty, no control characters) after the root.
    pub fn with_extensions(mut self, lines: Vec<String>) -> Result<Checkpoint, CheckpointError> {
        for (i, line) in lines.iter().enumerate() {
            check_line(line, 4 + i)?;
        }
        self.extensions = lines;
        Ok(self)
    }

    /// Parses checkpoint text (a note's text): `<origin>\n<size>\n<base64 root>\n`, then any
    /// non-empty extension lines.
    pub fn parse(text: &str) -> Result<Checkpoint, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::NotTerminated)?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(CheckpointError::TooFewLines);
        };
        for (i, line) in lines.iter().enumerate() {
            check_line(line, i + 1)?;
        }
        let canonical =
            size.bytes().all(|b| b.is_ascii_digit()) && (*size == "0" || !size.starts_with('0'));
        let size: u64 = size
            .parse()
            .ok()
            .filter(|_| canonical)
            .ok_or(CheckpointError::BadSize)?;
        let root = Hash::from_base64(root).map_err(|_| CheckpointError::BadRoot)?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions: extensions.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Opens a signed checkpoint note with `verifiers` and checks its origin is `origin`.
    pub fn open(
        msg: &[u8],
        origin: &str,
        verifiers: &[NoteVerifier],
    ) -> Result<(Checkpoint, Note), CheckpointError> {
        let note = open_note(msg, verifiers)?;
        let checkpoint = Checkpoint::parse(&note.text)?;
        if checkpoint.origin != origin {
            return Err(CheckpointError::WrongOrigin {
                expected: origin.to_string(),
                found: checkpoint.origin,
            });
        }
        Ok((checkpoint, note))
    }

    /// The checkpoint text signed by each signer.
    pub fn sign(&self, signers: &[&NoteSigner]) -> Result<String, NoteError> {
        sign_note(&self.to_string(), signers)
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The tree size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root hash.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The extension lines.
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }
}

/// The checkpoint text (the note text to sign), ending in a newline.
impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}\n{}\n", self.origin, self.size, self.root)?;
        for line in &self.extensions {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints() {
        // The C2SP tlog-checkpoint example.
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let cp = Checkpoint::parse(text).unwrap();
        assert_eq!(cp.origin(), "example.com/behind-the-sofa");
        assert_eq!(cp.size(), 20852163);
        assert_eq!(
            cp.root().to_base64(),
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
        );
        assert!(cp.extensions().is_empty());
        assert_eq!(cp.to_string(), text);
        let built = Checkpoint::new("example.com/behind-the-sofa", 20852163, *cp.root()).unwrap();
        assert_eq!(built, cp);

        let ext = format!("{text}extension one\nx\n");
        let cp = Checkpoint::parse(&ext).unwrap();
        assert_eq!(cp.extensions(), ["extension one", "x"]);
        assert_eq!(cp.to_string(), ext);
        assert_eq!(
            Checkpoint::new("o", 0, Hash::default())
                .unwrap()
                .with_extensions(vec!["e".into()])
                .unwrap()
                .to_string(),
            "o\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\ne\n"
        );

        let root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
        use CheckpointError as E;
        let cases: Vec<(String, CheckpointError)> = vec![
            (format!("o\n1\n{root}"), E::NotTerminated),
            ("o\n1\n".into(), E::TooFewLines),
            (format!("\n1\n{root}\n"), E::EmptyLine(1)),
            (format!("o\n1\n{root}\n\n"), E::EmptyLine(4)),
            (format!("o\r\n1\n{root}\n"), E::ControlCharacter(1)),
            (format!("o\n\n{root}\n"), E::EmptyLine(2)),
            (format!("o\n01\n{root}\n"), E::BadSize),
            (format!("o\n+1\n{root}\n"), E::BadSize),
            (format!("o\n-0\n{root}\n"), E::BadSize),
            (format!("o\n 1\n{root}\n"), E::BadSize),
            (format!("o\n18446744073709551616\n{root}\n"), E::BadSize),
            ("o\n1\nAAAA\n".into(), E::BadRoot),
            (format!("o\n1\n{root} \n"), E::BadRoot),
        ];
        for (text, want) in cases {
            assert_eq!(Checkpoint::parse(&text), Err(want), "{text:?}");
        }
        assert_eq!(
            Checkpoint::parse(&format!("o\n0\n{root}\n"))
                .unwrap()
                .size(),
            0
        );
        assert_eq!(
            Checkpoint::new("", 1, Hash::default()),
            Err(E::EmptyLine(1))
        );
        assert_eq!(
            Checkpoint::new("a\nb", 1, Hash::default()),
            Err(E::ControlCharacter(1))
        );
        assert_eq!(
            Checkpoint::new("o", 1, Hash::default())
                .unwrap()
                .with_extensions(vec!["".into()]),
            Err(E::EmptyLine(4))
        );
    }

    #[test]
    fn signed_checkpoints() {
        let signer = NoteSigner::from_seed("example.com/log", &[1; 32]).unwrap();
        let cp = Checkpoint::new("example.com/log", 5, Hash([7; 32])).unwrap();
        let msg = cp.sign(&[&signer]).unwrap();
        let (opened, note) =
            Checkpoint::open(msg.as_bytes(), "example.com/log", &[signer.verifier()]).unwrap();
        assert_eq!(opened, cp);
        assert_eq!(note.sigs.len(), 1);
        assert_eq!(
            Checkpoint::open(msg.as_bytes(), "example.com/other", &[signer.verifier()]),
            Err(CheckpointError::WrongOrigin {
                expected: "example.com/other".into(),
                found: "example.com/log".into()
            })
        );
        let tampered = msg.replacen("\n5\n", "\n6\n", 1);
        assert!(matches!(
            Checkpoint::open(tampered.as_bytes(), "example.com/log", &[signer.verifier()]),
            Err(CheckpointError::Note(NoteError::InvalidSignature { .. }))
        ));
        let stranger = NoteSigner::from_seed("example.com/log", &[2; 32]).unwrap();
        assert!(matches!(
            Checkpoint::open(msg.as_bytes(), "example.com/log", &[stranger.verifier()]),
            Err(CheckpointError::Note(NoteError::Unverified(_)))
        ));
    }
}
