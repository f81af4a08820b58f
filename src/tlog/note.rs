//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys in the text formats
//! of Go's `golang.org/x/mod/sumdb/note`, and C2SP checkpoints
//! (<https://c2sp.org/tlog-checkpoint>): see [`super::checkpoint`].
//!
//! A signed note is its text (ending in a newline), a blank line, then one line per
//! signature: `— <key name> <base64(4-byte key hash || 64-byte Ed25519 signature)>`, where
//! the signature covers the text including its final newline. A key is named and identified
//! by its *key hash*, the first 4 bytes (big-endian) of
//! `SHA-256(name || "\n" || 0x01 || public key)`. Keys are written as
//!
//! - verifier key: `<name>+<hash as 8 hex digits>+<base64(0x01 || 32-byte public key)>`,
//! - signer key: `PRIVATE+KEY+<name>+<hash>+<base64(0x01 || 32-byte seed)>`.
//!
//! [`open_note`] follows Go's `note.Open`: signatures by unknown keys are kept aside
//! unverified, a repeated signature by the same key is dropped, a signature by a known key that
//! does not verify rejects the note, and a note with no verified signature is rejected.
//! Keys and signatures decode base64 as Go's `base64.StdEncoding` does (padding required,
//! stray trailing bits tolerated), so a note or key Go accepts is accepted here too; we always
//! encode canonically. (Unlike Go, embedded CR/LF in a key string is an error: trim key files.)

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD as BASE64};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature type byte of Ed25519 note keys.
pub const ALG_ED25519: u8 = 0x01;
/// More signatures than this make [`open_note`] reject the note (as Go does), bounding the work
/// a hostile note can cause. The spec asks verifiers to accept at least 16.
pub const MAX_SIGNATURES: usize = 100;

/// Go's `base64.StdEncoding` for decoding: it does not insist that the unused bits of the last
/// character be zero.
const GO_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

const SIG_PREFIX: &str = "\u{2014} ";
const SIGNER_PREFIX: &str = "PRIVATE+KEY+";

/// Whether `name` can name a key: non-empty, without Unicode whitespace or `+` (whitespace
/// would break signature lines, `+` the key strings).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key hash of `name` and `key` (the signature type byte followed by the public key):
/// the first 4 bytes, big-endian, of `SHA-256(name || "\n" || key)`.
pub fn key_hash(name: &str, key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(key);
    let sum = h.finalize();
    u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]])
}

fn ed25519_key_hash(name: &str, public: &VerifyingKey) -> u32 {
    let mut key = [0u8; 33];
    key[0] = ALG_ED25519;
    key[1..].copy_from_slice(public.as_bytes());
    key_hash(name, &key)
}

/// Why a key string (or key name) is unusable. Never quotes the key text: a malformed signer
/// key's fields may hold secret material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A signer key must start `PRIVATE+KEY+`.
    #[error("signer key does not start with \"PRIVATE+KEY+\"")]
    NotSignerKey,
    /// A `+`-separated field is missing.
    #[error("key has no {0} field")]
    MissingField(&'static str),
    /// The name is empty or has whitespace or `+`.
    #[error("key name is empty or contains whitespace or '+'")]
    InvalidName,
    /// The key hash field is not 8 hexadecimal digits.
    #[error("key hash is not 8 hexadecimal digits")]
    BadKeyHash,
    /// The key data is not standard padded base64.
    #[error("key data is not standard base64")]
    BadBase64,
    /// The key data is empty.
    #[error("key data is empty")]
    EmptyKey,
    /// The key's type byte is not Ed25519's 0x01.
    #[error("unknown key type {0:#04x}: only 0x01 (Ed25519) is supported")]
    UnknownAlgorithm(u8),
    /// The Ed25519 key (after the type byte) is not 32 bytes.
    #[error("Ed25519 key is {0} bytes, not 32")]
    KeyLength(usize),
    /// The public key is not a valid Ed25519 point.
    #[error("public key is not a valid Ed25519 point")]
    InvalidPublicKey,
    /// The key hash field does not belong to this name and key.
    #[error(
        "key hash {stated:08x} does not match the name and key (which hash to {computed:08x})"
    )]
    HashMismatch {
        /// The hash in the key string.
        stated: u32,
        /// The hash of the name and key.
        computed: u32,
    },
}

/// Splits `<name>+<hash>+<base64>` (the base64 may itself contain `+`) and decodes it.
fn split_key(s: &str) -> Result<(&str, u32, Vec<u8>), KeyError> {
    let mut fields = s.splitn(3, '+');
    let name = fields.next().ok_or(KeyError::MissingField("name"))?;
    let hash16 = fields.next().ok_or(KeyError::MissingField("key hash"))?;
    let key64 = fields.next().ok_or(KeyError::MissingField("key data"))?;
    if !is_valid_name(name) {
        return Err(KeyError::InvalidName);
    }
    // Exactly 8 hex digits: u32::from_str_radix alone would also take a sign.
    if hash16.len() != 8 || !hash16.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError::BadKeyHash);
    }
    let hash = u32::from_str_radix(hash16, 16).map_err(|_| KeyError::BadKeyHash)?;
    let key = GO_BASE64.decode(key64).map_err(|_| KeyError::BadBase64)?;
    match key.split_first() {
        None => Err(KeyError::EmptyKey),
        Some((&ALG_ED25519, rest)) if rest.len() == 32 => Ok((name, hash, key)),
        Some((&ALG_ED25519, rest)) => Err(KeyError::KeyLength(rest.len())),
        Some((&alg, _)) => Err(KeyError::UnknownAlgorithm(alg)),
    }
}

/// A public key that verifies note signatures (Go's `note.Verifier`).
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_hash: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// The verifier for `key` under `name` (Go's `NewEd25519VerifierKey`).
    pub fn new(name: &str, key: VerifyingKey) -> Result<NoteVerifier, KeyError> {
        if !is_valid_name(name) {
            return Err(KeyError::InvalidName);
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            key_hash: ed25519_key_hash(name, &key),
            key,
        })
    }

    /// Parses a verifier key `<name>+<hash>+<base64(0x01 || public key)>` (Go's
    /// `NewVerifier`). Unlike Go, an invalid curve point is rejected here rather than
    /// failing every verification later.
    pub fn parse(vkey: &str) -> Result<NoteVerifier, KeyError> {
        let (name, stated, key) = split_key(vkey)?;
        let computed = key_hash(name, &key);
        if stated != computed {
            return Err(KeyError::HashMismatch { stated, computed });
        }
        let bytes: &[u8; 32] = key[1..].try_into().expect("split_key checked 32 bytes");
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPublicKey)?;
        Ok(NoteVerifier {
            name: name.to_string(),
            key_hash: stated,
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key hash.
    pub fn key_hash(&self) -> u32 {
        self.key_hash
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `sig` (64 bytes) is this key's Ed25519 signature of `msg`. Uses RFC 8032's
    /// cofactorless check, as Go's `crypto/ed25519.Verify`, so both accept the same signatures.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        self.key.verify(msg, &sig).is_ok()
    }
}

/// The verifier key string.
impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = [0u8; 33];
        key[0] = ALG_ED25519;
        key[1..].copy_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_hash,
            BASE64.encode(key)
        )
    }
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteVerifier({self})")
    }
}

impl std::str::FromStr for NoteVerifier {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        NoteVerifier::parse(s)
    }
}

/// A private key that signs notes (Go's `note.Signer`). Its `Debug` shows only the name and
/// key hash; the signer key string comes out only through [`NoteSigner::to_key_string`].
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key_hash: u32,
    key: SigningKey,
}

impl NoteSigner {
    /// The signer whose Ed25519 key is derived from `seed` (RFC 8032's 32-byte private key).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<NoteSigner, KeyError> {
        if !is_valid_name(name) {
            return Err(KeyError::InvalidName);
        }
        let key = SigningKey::from_bytes(seed);
        Ok(NoteSigner {
            name: name.to_string(),
            key_hash: ed25519_key_hash(name, &key.verifying_key()),
            key,
        })
    }

    /// A new key pair for `name` from `rng` (Go's `note.GenerateKey`).
    pub fn generate<R: rand::RngCore + rand::CryptoRng>(
        name: &str,
        rng: &mut R,
    ) -> Result<NoteSigner, KeyError> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        NoteSigner::from_seed(name, &seed)
    }

    /// Parses a signer key `PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>` (Go's
    /// `NewSigner`), checking the hash against the derived public key.
    pub fn parse(skey: &str) -> Result<NoteSigner, KeyError> {
        let rest = skey
            .strip_prefix(SIGNER_PREFIX)
            .ok_or(KeyError::NotSignerKey)?;
        let (name, stated, key) = split_key(rest)?;
        let seed: &[u8; 32] = key[1..].try_into().expect("split_key checked 32 bytes");
        let signer = NoteSigner::from_seed(name, seed)?;
        if signer.key_hash != stated {
            return Err(KeyError::HashMismatch {
                stated,
                computed: signer.key_hash,
            });
        }
        Ok(signer)
    }

    /// The signer key string: secret, for key files only.
    pub fn to_key_string(&self) -> String {
        let mut key = [0u8; 33];
        key[0] = ALG_ED25519;
        key[1..].copy_from_slice(self.key.as_bytes());
        format!(
            "{SIGNER_PREFIX}{}+{:08x}+{}",
            self.name,
            self.key_hash,
            BASE64.encode(key)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_hash: self.key_hash,
            key: self.key.verifying_key(),
        }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key hash.
    pub fn key_hash(&self) -> u32 {
        self.key_hash
    }

    /// The raw Ed25519 signature of `msg` (deterministic, as RFC 8032).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteSigner({}+{:08x})", self.name, self.key_hash)
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The key name.
    pub name: String,
    /// The key hash (the signature's first 4 bytes).
    pub key_hash: u32,
    /// The signature as written: base64 of the key hash and the signature bytes.
    pub base64: String,
}

/// An opened note: its text and signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// Signatures by known keys, all verified.
    pub sigs: Vec<Signature>,
    /// Signatures by keys not among the verifiers, unchecked.
    pub unverified_sigs: Vec<Signature>,
}

/// Why a note cannot be signed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The note is not UTF-8.
    #[error("note is not valid UTF-8")]
    InvalidUtf8,
    /// A control character other than newline.
    #[error("note contains a control character other than newline")]
    ControlCharacter,
    /// The text to sign does not end with a newline.
    #[error("note text does not end with a newline")]
    TextNotTerminated,
    /// [`sign_note`] was given no signers: a note without signatures cannot be opened.
    #[error("no signers to sign the note")]
    NoSigners,
    /// No blank line separates text and signatures.
    #[error("note has no blank line before its signatures")]
    NoSignatureBlock,
    /// Nothing, or an unterminated line, after the blank line.
    #[error("note's signature block is empty or does not end with a newline")]
    BadSignatureBlock,
    /// A signature line is not `— <name> <base64 of at least 5 bytes>`.
    #[error("signature line {line} is malformed")]
    MalformedSignature {
        /// 1-based position among the signature lines.
        line: usize,
    },
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    /// Two verifiers share a name and key hash: the verifier list is broken.
    #[error("more than one verifier has key {name}+{key_hash:08x}")]
    AmbiguousVerifier {
        /// The key name.
        name: String,
        /// The key hash.
        key_hash: u32,
    },
    /// A known key's signature does not verify.
    #[error("invalid signature by key {name}+{key_hash:08x}")]
    InvalidSignature {
        /// The key name.
        name: String,
        /// The key hash.
        key_hash: u32,
    },
    /// Well-formed, but no signature by any of the verifiers (the unverified note is inside).
    #[error("note has no signature by a known key")]
    Unverified(Box<Note>),
}

fn check_chars(s: &str) -> Result<(), NoteError> {
    if s.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::ControlCharacter);
    }
    Ok(())
}

/// Signs `text` (which must end in a newline and hold no control characters but newlines)
/// with each signer, in order, and returns the signed note.
pub fn sign_note(text: &str, signers: &[&NoteSigner]) -> Result<String, NoteError> {
    // Refusing what open_note would refuse means we never publish a note nobody can open.
    if !text.ends_with('\n') {
        return Err(NoteError::TextNotTerminated);
    }
    check_chars(text)?;
    if signers.is_empty() {
        return Err(NoteError::NoSigners);
    }
    let mut out = String::with_capacity(text.len() + 1 + signers.len() * 128);
    out.push_str(text);
    out.push('\n');
    for signer in signers {
        let mut sig = Vec::with_capacity(68);
        sig.extend_from_slice(&signer.key_hash.to_be_bytes());
        sig.extend_from_slice(&signer.sign(text.as_bytes()));
        out.push_str(SIG_PREFIX);
        out.push_str(&signer.name);
        out.push(' ');
        out.push_str(&BASE64.encode(sig));
        out.push('\n');
    }
    Ok(out)
}

/// Opens a signed note, verifying the signatures by `verifiers` (Go's `note.Open`).
pub fn open_note(msg: &[u8], verifiers: &[NoteVerifier]) -> Result<Note, NoteError> {
    let msg = std::str::from_utf8(msg).map_err(|_| NoteError::InvalidUtf8)?;
    check_chars(msg)?;
    // The text ends at the last blank line: texts may contain blank lines, signatures not.
    let split = msg.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
    let (text, sig_block) = (&msg[..split + 1], &msg[split + 2..]);
    if sig_block.is_empty() || !sig_block.ends_with('\n') {
        return Err(NoteError::BadSignatureBlock);
    }

    let mut note = Note {
        text: text.to_string(),
        sigs: Vec::new(),
        unverified_sigs: Vec::new(),
    };
    let mut seen_unverified: Vec<&str> = Vec::new();
    let mut seen: Vec<(&str, u32)> = Vec::new();
    for (i, line) in sig_block[..sig_block.len() - 1].split('\n').enumerate() {
        if i == MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        let malformed = NoteError::MalformedSignature { line: i + 1 };
        let body = line.strip_prefix(SIG_PREFIX).ok_or(malformed.clone())?;
        let (name, b64) = body.split_once(' ').ok_or(malformed.clone())?;
        if !is_valid_name(name) || b64.is_empty() {
            return Err(malformed);
        }
        let raw = GO_BASE64.decode(b64).map_err(|_| malformed.clone())?;
        if raw.len() < 5 {
            return Err(malformed);
        }
        let key_hash = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let signature = Signature {
            name: name.to_string(),
            key_hash,
            base64: b64.to_string(),
        };

        let mut known = verifiers
            .iter()
            .filter(|v| v.name == name && v.key_hash == key_hash);
        let Some(verifier) = known.next() else {
            // Unknown keys are ignored, not trusted: kept so callers can see (or re-emit) them.
            if !seen_unverified.contains(&body) {
                seen_unverified.push(body);
                note.unverified_sigs.push(signature);
            }
            continue;
        };
        if known.next().is_some() {
            return Err(NoteError::AmbiguousVerifier {
                name: name.to_string(),
                key_hash,
            });
        }
        if seen.contains(&(name, key_hash)) {
            continue;
        }
        seen.push((name, key_hash));
        if !verifier.verify(text.as_bytes(), &raw[4..]) {
            return Err(NoteError::InvalidSignature {
                name: name.to_string(),
                key_hash,
            });
        }
        note.sigs.push(signature);
    }
    if note.sigs.is_empty() {
        return Err(NoteError::Unverified(Box::new(note)));
    }
    Ok(note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    // The example keys and signatures of Go's sumdb/note documentation and tests.
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter() -> NoteVerifier {
        NoteVerifier::parse(PETER_VKEY).unwrap()
    }

    fn enoch() -> NoteVerifier {
        NoteVerifier::parse(ENOCH_VKEY).unwrap()
    }

    fn sig(line: &str) -> Signature {
        let body = line.strip_prefix(SIG_PREFIX).unwrap().trim_end();
        let (name, b64) = body.split_once(' ').unwrap();
        let raw = GO_BASE64.decode(b64).unwrap();
        Signature {
            name: name.into(),
            key_hash: u32::from_be_bytes(raw[..4].try_into().unwrap()),
            base64: b64.into(),
        }
    }

    #[test]
    fn go_example_keys_and_signature() {
        let signer = NoteSigner::parse(PETER_SKEY).unwrap();
        assert_eq!(signer.name(), "PeterNeumann");
        assert_eq!(signer.key_hash(), 0xc74f20a3);
        assert_eq!(signer.to_key_string(), PETER_SKEY);
        assert_eq!(signer.verifier().to_string(), PETER_VKEY);
        assert_eq!(signer.verifier(), peter());
        assert_eq!(format!("{signer:?}"), "NoteSigner(PeterNeumann+c74f20a3)");
        // Ed25519 is deterministic: byte-for-byte what Go's note.Sign produced.
        let msg = sign_note(TEXT, &[&signer]).unwrap();
        assert_eq!(msg, format!("{TEXT}\n{PETER_SIG}"));
        let note = open_note(msg.as_bytes(), &[peter()]).unwrap();
        assert_eq!(note.text, TEXT);
        assert_eq!(note.sigs, [sig(PETER_SIG)]);
        assert!(note.unverified_sigs.is_empty());
    }

    #[test]
    fn c2sp_example() {
        let v = NoteVerifier::parse(
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        )
        .unwrap();
        let msg = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
        let note = open_note(msg.as_bytes(), &[v]).unwrap();
        assert_eq!(note.text, "This is an example message.\n");
    }

    #[test]
    fn mangled_keys_are_rejected() {
        // As Go's tests: every proper substring and every single-byte change fails.
        for key in [PETER_VKEY, PETER_SKEY] {
            let parse = |k: &str| {
                if key == PETER_VKEY {
                    NoteVerifier::parse(k).map(|_| ())
                } else {
                    NoteSigner::parse(k).map(|_| ())
                }
            };
            let b = key.as_bytes();
            for i in 0..=b.len() {
                for j in i + 1..=b.len() {
                    if (i, j) != (0, b.len()) {
                        assert!(parse(&key[i..j]).is_err(), "{:?}", &key[i..j]);
                    }
                }
            }
            for i in 0..b.len() {
                let mut m = b.to_vec();
                m[i] += 1;
                let m = String::from_utf8(m).unwrap();
                assert!(parse(&m).is_err(), "{m:?}");
            }
        }
        // Wrong length and unknown type, each with a matching key hash.
        assert_eq!(
            NoteVerifier::parse(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
            ),
            Err(KeyError::KeyLength(36))
        );
        assert_eq!(
            NoteVerifier::parse(
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            ),
            Err(KeyError::UnknownAlgorithm(0x65))
        );
        // Each failure names what is wrong.
        let cases: &[(&str, KeyError)] = &[
            ("PeterNeumann", KeyError::MissingField("key hash")),
            ("PeterNeumann+c74f20a3", KeyError::MissingField("key data")),
            ("+c74f20a3+AQ==", KeyError::InvalidName),
            ("a b+c74f20a3+AQ==", KeyError::InvalidName),
            ("a+c74f20a+AQ==", KeyError::BadKeyHash),
            ("a++c74f20a+AQ==", KeyError::BadKeyHash),
            ("a+-74f20a3+AQ==", KeyError::BadKeyHash),
            ("a+c74f20a3+AQ", KeyError::BadBase64),
            ("a+c74f20a3+", KeyError::EmptyKey),
            ("a+c74f20a3+AQ==", KeyError::KeyLength(0)),
        ];
        for (key, want) in cases {
            assert_eq!(NoteVerifier::parse(key), Err(*want), "{key:?}");
        }
        let wrong_hash = PETER_VKEY.replace("c74f20a3", "C74F20A4");
        assert_eq!(
            NoteVerifier::parse(&wrong_hash),
            Err(KeyError::HashMismatch {
                stated: 0xc74f20a4,
                computed: 0xc74f20a3
            })
        );
        assert_eq!(
            NoteSigner::parse(PETER_VKEY).unwrap_err(),
            KeyError::NotSignerKey
        );
        // Go accepts upper-case hex in the key hash; so do we.
        assert!(NoteVerifier::parse(&PETER_VKEY.replace("c74f20a3", "C74F20A3")).is_ok());
        // Errors about signer keys never quote the key.
        let err = NoteSigner::parse("PRIVATE+KEY+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .unwrap_err();
        assert!(!err.to_string().contains("AYEK"), "{err}");
    }

    #[test]
    fn generated_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let signer = NoteSigner::generate("example.com/log", &mut rng).unwrap();
        let reparsed = NoteSigner::parse(&signer.to_key_string()).unwrap();
        assert_eq!(reparsed.verifier(), signer.verifier());
        let verifier = NoteVerifier::parse(&signer.verifier().to_string()).unwrap();
        assert_eq!(verifier, signer.verifier());
        assert_eq!(
            NoteVerifier::new("example.com/log", *signer.verifier().public_key()).unwrap(),
            verifier
        );
        let msg = b"hi";
        let mut sig = signer.sign(msg);
        assert!(verifier.verify(msg, &sig));
        assert!(!verifier.verify(b"ho", &sig));
        sig[0] ^= 1;
        assert!(!verifier.verify(msg, &sig));
        assert!(!verifier.verify(msg, &sig[..63]));
        for bad in ["", "a b", "a+b", "a\u{a0}b", "a\nb"] {
            assert_eq!(
                NoteSigner::from_seed(bad, &[0; 32]).unwrap_err(),
                KeyError::InvalidName
            );
        }
        assert!(is_valid_name("example.com/log42"));
        assert!(is_valid_name("\u{2014}"));
    }

    #[test]
    fn open_follows_go() {
        let msg = |sigs: &str| format!("{TEXT}\n{sigs}");
        let both = msg(&format!("{PETER_SIG}{ENOCH_SIG}"));

        // One verified, one unknown.
        let note = open_note(both.as_bytes(), &[peter()]).unwrap();
        assert_eq!(note.sigs, [sig(PETER_SIG)]);
        assert_eq!(note.unverified_sigs, [sig(ENOCH_SIG)]);
        // Both verified.
        let note = open_note(both.as_bytes(), &[peter(), enoch()]).unwrap();
        assert_eq!(note.sigs, [sig(PETER_SIG), sig(ENOCH_SIG)]);
        // Neither known.
        let Err(NoteError::Unverified(note)) = open_note(both.as_bytes(), &[]) else {
            panic!("an unverified note opened");
        };
        assert_eq!(note.unverified_sigs, [sig(PETER_SIG), sig(ENOCH_SIG)]);
        // A duplicated verifier is an error only when a signature needs it.
        assert_eq!(
            open_note(msg(ENOCH_SIG).as_bytes(), &[enoch(), peter(), enoch()]),
            Err(NoteError::AmbiguousVerifier {
                name: "EnochRoot".into(),
                key_hash: 0xaf0cfe78
            })
        );
        assert!(open_note(msg(PETER_SIG).as_bytes(), &[enoch(), peter(), enoch()]).is_ok());
        // Too many signatures, known or not.
        let many = msg(&PETER_SIG.repeat(101));
        assert_eq!(
            open_note(many.as_bytes(), &[peter()]),
            Err(NoteError::TooManySignatures)
        );
        assert_eq!(
            open_note(many.as_bytes(), &[]),
            Err(NoteError::TooManySignatures)
        );
        assert!(open_note(msg(&PETER_SIG.repeat(100)).as_bytes(), &[peter()]).is_ok());
        // A known key's bad signature rejects the note.
        let bad_peter = format!("{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        assert_eq!(
            open_note(msg(&bad_peter).as_bytes(), &[peter()]),
            Err(NoteError::InvalidSignature {
                name: "PeterNeumann".into(),
                key_hash: 0xc74f20a3
            })
        );
        // Repeats are dropped: a second signature by a verified key is not even checked,
        // identical unknown lines are kept once.
        let bad_enoch = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
        let repeats = msg(&format!(
            "{PETER_SIG}{PETER_SIG}{bad_peter}{ENOCH_SIG}{ENOCH_SIG}{bad_enoch}"
        ));
        let note = open_note(repeats.as_bytes(), &[peter()]).unwrap();
        assert_eq!(note.sigs, [sig(PETER_SIG)]);
        assert_eq!(note.unverified_sigs, [sig(ENOCH_SIG), sig(&bad_enoch)]);
        // Like Go's decoder, stray bits in the last base64 character are tolerated.
        let loose = PETER_SIG.replace("nAM=", "nAN=");
        assert_ne!(loose, PETER_SIG);
        let note = open_note(msg(&loose).as_bytes(), &[peter()]).unwrap();
        assert_eq!(note.sigs[0].base64, sig(&loose).base64);
        // A signature over different text fails.
        let other = format!("{}\n{PETER_SIG}", TEXT.replace("problem", "trouble"));
        assert!(matches!(
            open_note(other.as_bytes(), &[peter()]),
            Err(NoteError::InvalidSignature { .. })
        ));

        let bad_name = "\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let cases: Vec<(Vec<u8>, NoteError)> = vec![
            (TEXT.into(), NoteError::NoSignatureBlock),
            (format!("{TEXT}\n").into(), NoteError::BadSignatureBlock),
            (
                msg(&PETER_SIG[..PETER_SIG.len() - 1]).into(),
                NoteError::BadSignatureBlock,
            ),
            (
                format!("\x01{}", msg(PETER_SIG)).into(),
                NoteError::ControlCharacter,
            ),
            (
                msg(PETER_SIG).replace('\n', "\r\n").into(),
                NoteError::ControlCharacter,
            ),
            (
                [b"\xff".as_slice(), msg(PETER_SIG).as_bytes()].concat(),
                NoteError::InvalidUtf8,
            ),
            (
                msg(bad_name).into(),
                NoteError::MalformedSignature { line: 1 },
            ),
            (
                msg(&format!("{PETER_SIG}Unexpected line.\n")).into(),
                NoteError::MalformedSignature { line: 2 },
            ),
            (
                msg("\u{2014} PeterNeumann AAAA\n").into(),
                NoteError::MalformedSignature { line: 1 },
            ),
            (
                msg("\u{2014} PeterNeumann \n").into(),
                NoteError::MalformedSignature { line: 1 },
            ),
            (
                msg("- PeterNeumann AAAAAAA=\n").into(),
                NoteError::MalformedSignature { line: 1 },
            ),
        ];
        for (m, want) in cases {
            assert_eq!(
                open_note(&m, &[peter()]),
                Err(want),
                "{}",
                String::from_utf8_lossy(&m)
            );
        }
    }

    #[test]
    fn sign_refuses_unopenable_notes() {
        let signer = NoteSigner::parse(PETER_SKEY).unwrap();
        assert_eq!(
            sign_note("abc", &[&signer]),
            Err(NoteError::TextNotTerminated)
        );
        assert_eq!(
            sign_note("a\rb\n", &[&signer]),
            Err(NoteError::ControlCharacter)
        );
        assert_eq!(sign_note(TEXT, &[]), Err(NoteError::NoSigners));
        // Texts with blank lines (even at the end) still open to the same text.
        for text in ["a\n\nb\n", "a\n\n", "\n"] {
            let msg = sign_note(text, &[&signer]).unwrap();
            assert_eq!(open_note(msg.as_bytes(), &[peter()]).unwrap().text, text);
        }
        let enoch_signer = NoteSigner::from_seed("EnochRoot", &[9; 32]).unwrap();
        let msg = sign_note(TEXT, &[&signer, &enoch_signer]).unwrap();
        let note = open_note(msg.as_bytes(), &[enoch_signer.verifier(), peter()]).unwrap();
        assert_eq!(note.sigs.len(), 2);
        assert_eq!(note.sigs[0], sig(PETER_SIG));
    }
}
