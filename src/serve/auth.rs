//! Bearer tokens: the configuration holds their SHA-256 digests only (`serve.tokens`,
//! `serve.tokens_file`); a request's token is hashed and compared with every digest in constant
//! time. Without tokens, `serve` refuses to listen beyond loopback unless
//! `serve.allow_anonymous = true`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{is_token_digest, ServeConfig};

/// The accepted tokens' digests; empty: anonymous.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A token that is none of the configured ones (or a malformed header).
    Invalid,
}

impl Tokens {
    /// `serve.tokens` and the lines of `serve.tokens_file`.
    pub fn load(cfg: &ServeConfig) -> anyhow::Result<Tokens> {
        let mut hex_digests: Vec<String> = cfg.tokens.clone();
        if let Some(path) = &cfg.tokens_file {
            hex_digests.extend(read_tokens_file(path)?);
        }
        let mut digests = Vec::with_capacity(hex_digests.len());
        for h in &hex_digests {
            let mut d = [0u8; 32];
            hex::decode_to_slice(h, &mut d)?;
            digests.push(d);
        }
        Ok(Tokens { digests })
    }

    pub fn from_digests(digests: Vec<[u8; 32]>) -> Tokens {
        Tokens { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether an `Authorization` header value admits the request. Every digest is compared,
    /// in constant time, whatever matched.
    pub fn admit(&self, authorization: Option<&HeaderValue>) -> Result<(), Refusal> {
        if self.digests.is_empty() {
            return Ok(());
        }
        let value = authorization.ok_or(Refusal::Missing)?.as_bytes();
        let token = match value.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
            _ => return Err(Refusal::Invalid),
        };
        let digest: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&digest));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Refusal::Invalid)
        }
    }
}

/// One digest a line, optionally followed by whitespace and a label; `#` comments, blank lines.
fn read_tokens_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!("serve.tokens_file {}: cannot read it: {e}", path.display())
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(digest) = line.split_whitespace().next() else {
            continue;
        };
        if !is_token_digest(digest) {
            // The line is not echoed: it may hold a token in clear.
            anyhow::bail!(
                "serve.tokens_file {} line {}: expected the SHA-256 hex digest of a token (64 lowercase hex digits, e.g. printf %s \"$TOKEN\" | sha256sum), optionally followed by a label",
                path.display(),
                n + 1
            );
        }
        out.push(digest.to_owned());
    }
    Ok(out)
}

/// Refuses to serve every event to anyone who can reach a non-loopback address.
pub fn check_exposure(
    addr: SocketAddr,
    tokens: &Tokens,
    allow_anonymous: bool,
) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || !tokens.is_empty() || allow_anonymous {
        return Ok(());
    }
    anyhow::bail!(
        "serve.listen = {addr} is not a loopback address and no bearer token is configured \
         (serve.tokens / serve.tokens_file): anyone who reaches it could read every event. \
         Configure tokens, or set serve.allow_anonymous = true to serve without them"
    )
}

/// Middleware of the `/v1` routes: 401 without a valid bearer token (when tokens are configured).
pub async fn require(State(tokens): State<Arc<Tokens>>, request: Request, next: Next) -> Response {
    match tokens.admit(request.headers().get(header::AUTHORIZATION)) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refused(refusal).into_response(),
    }
}

fn refused(refusal: Refusal) -> ApiError {
    let (detail, challenge) = match refusal {
        Refusal::Missing => (
            "this route needs an Authorization: Bearer <token> header",
            "Bearer realm=\"nekhebet\"",
        ),
        Refusal::Invalid => (
            "the bearer token is not valid",
            "Bearer realm=\"nekhebet\", error=\"invalid_token\"",
        ),
    };
    ApiError {
        challenge: Some(challenge),
        ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    #[test]
    fn only_a_configured_token_is_admitted() {
        let tokens = Tokens::from_digests(vec![digest("alpha"), digest("beta")]);
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(tokens.admit(Some(&h("Bearer beta"))), Ok(()));
        assert_eq!(tokens.admit(Some(&h("bearer alpha"))), Ok(()));
        assert_eq!(tokens.admit(None), Err(Refusal::Missing));
        for bad in [
            "Bearer gamma",
            "Basic YWxwaGE6",
            "Bearer",
            "alpha",
            "Bearer  ",
        ] {
            assert_eq!(tokens.admit(Some(&h(bad))), Err(Refusal::Invalid), "{bad}");
        }
        assert_eq!(
            Tokens::default().admit(None),
            Ok(()),
            "no tokens: anonymous"
        );
    }

    #[test]
    fn the_tokens_file_holds_digests_and_labels_never_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let good = hex::encode(digest("alpha"));
        std::fs::write(&path, format!("# readers\n{good} analytics team\n\n")).unwrap();
        let cfg = ServeConfig {
            tokens_file: Some(path.clone()),
            ..ServeConfig::default()
        };
        assert_eq!(Tokens::load(&cfg).unwrap().len(), 1);
        std::fs::write(&path, "s3cret-token\n").unwrap();
        let e = Tokens::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn without_tokens_only_loopback_unless_anonymous_is_allowed() {
        let none = Tokens::default();
        let some = Tokens::from_digests(vec![digest("a")]);
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(check_exposure("127.0.0.1:8080".parse().unwrap(), &none, false).is_ok());
        assert!(check_exposure("[::1]:8080".parse().unwrap(), &none, false).is_ok());
        let e = check_exposure(public, &none, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("serve.tokens") && e.contains("serve.allow_anonymous"),
            "{e}"
        );
        assert!(check_exposure(public, &none, true).is_ok());
        assert!(check_exposure(public, &some, false).is_ok());
    }
}
