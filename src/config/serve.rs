//! `serve` (the HTTP read API): its section, defaults and checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `serve`: the HTTP read API (`nekhebet-store serve`, see `crate::serve`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (an IP address and port).
    pub listen: String,
    /// SHA-256 hex digests (64 lowercase hex digits) of the accepted bearer tokens; never tokens
    /// in clear. Any digest configured (here or in `tokens_file`) makes every `/v1` route require
    /// `Authorization: Bearer <token>`.
    pub tokens: Vec<String>,
    /// A file of more digests: one a line, optionally followed by a label; `#` starts a comment.
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain and private key: both set serves HTTPS only (rustls).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Without tokens, `serve` listens on a loopback address only, unless this is true.
    pub allow_anonymous: bool,
    /// Open connections at most; beyond it new connections wait in the listen backlog.
    pub max_connections: usize,
    /// A connection must send a request's complete head (and a TLS handshake) within this, also
    /// between the requests of a kept-alive connection; otherwise it is closed.
    pub header_timeout_ms: u64,
    /// A connection whose client accepts no response bytes for this long is closed.
    pub write_timeout_ms: u64,
    /// A request must have its response head within this, otherwise 503 `timeout`.
    pub request_timeout_ms: u64,
    /// Single-event reads in progress at once (each holds an LMDB reader slot; LMDB has 256 for
    /// every process that opens the environment); more wait.
    pub max_concurrent_reads: usize,
    /// Listings streaming at once (each holds a PostgreSQL connection until it ends); more are
    /// answered 503 `busy`. Must be below `postgres.pool_size`.
    pub max_concurrent_listings: usize,
    /// `/v1/stream` responses open at once (each holds at most one page of envelopes, and a
    /// PostgreSQL connection only while it reads a page); more are answered 503 `busy`.
    pub max_concurrent_streams: usize,
    /// How often, while a stream is open, the server reads the commit horizon to find newly
    /// committed events (one query for all streams).
    pub stream_poll_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            tokens_file: None,
            tls_cert: None,
            tls_key: None,
            allow_anonymous: false,
            max_connections: 4096,
            header_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            request_timeout_ms: 30_000,
            max_concurrent_reads: 64,
            max_concurrent_listings: 4,
            max_concurrent_streams: 64,
            stream_poll_ms: 100,
        }
    }
}

impl ServeConfig {
    /// Checks what can be checked without reading files (`serve` checks the token file, the
    /// certificates and the loopback rule when it starts).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, expected| ConfigError::Invalid {
            key,
            value,
            expected,
        };
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "serve.listen",
                self.listen.clone(),
                "an IP address and port such as 127.0.0.1:8080",
            ));
        }
        if let Some(i) = self.tokens.iter().position(|t| !is_token_digest(t)) {
            // Not echoed: it may be a token in clear.
            return Err(invalid(
                "serve.tokens",
                format!("entry {} (not shown)", i + 1),
                "the SHA-256 hex digest of a token (64 lowercase hex digits), never the token: printf %s \"$TOKEN\" | sha256sum",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "serve.tls_cert",
                format!("{:?} with serve.tls_key {:?}", self.tls_cert, self.tls_key),
                "both serve.tls_cert and serve.tls_key (PEM files), or neither",
            ));
        }
        let counts = [
            ("serve.max_connections", self.max_connections, 1_000_000, "an integer from 1 to 1000000"),
            ("serve.max_concurrent_reads", self.max_concurrent_reads, 200, "an integer from 1 to 200 (LMDB has 256 reader slots for all the processes that open it)"),
            ("serve.max_concurrent_listings", self.max_concurrent_listings, 1_000, "an integer from 1 to 1000, below postgres.pool_size"),
            ("serve.max_concurrent_streams", self.max_concurrent_streams, 10_000, "an integer from 1 to 10000"),
        ];
        for (key, n, max, expected) in counts {
            if n == 0 || n > max {
                return Err(invalid(key, n.to_string(), expected));
            }
        }
        let timeouts = [
            ("serve.header_timeout_ms", self.header_timeout_ms),
            ("serve.write_timeout_ms", self.write_timeout_ms),
            ("serve.request_timeout_ms", self.request_timeout_ms),
        ];
        if !(10..=60_000).contains(&self.stream_poll_ms) {
            return Err(invalid(
                "serve.stream_poll_ms",
                self.stream_poll_ms.to_string(),
                "milliseconds from 10 to 60000",
            ));
        }
        for (key, ms) in timeouts {
            if !(100..=3_600_000).contains(&ms) {
                return Err(invalid(
                    key,
                    ms.to_string(),
                    "milliseconds from 100 to 3600000",
                ));
            }
        }
        Ok(())
    }
}

/// A bearer token's SHA-256 digest as `serve.tokens` holds it: 64 lowercase hex digits.
pub fn is_token_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
