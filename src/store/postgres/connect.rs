//! Connecting to PostgreSQL: the effective connection settings ([`PostgresConfig::tls`] resolves
//! `postgres.sslmode`, `postgres.ssl_root_cert` and libpq's URL parameters into a
//! [`PgConnection`]), the connection pool, TLS, and the connection string's parsing and redaction
//! ([`redact_url`]: a URL or key=value string is never logged with its password).
//!
//! TLS: libpq's `sslmode`s implemented with rustls (ring provider).
//!
//! | sslmode | TLS | certificate checks |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` | if the server offers it | none (protects against eavesdropping only) |
//! | `require` | always | none, or the chain when a CA file is given (libpq does the same) |
//! | `verify-ca` | always | chains to the CA file |
//! | `verify-full` | always | chains to the CA file and names the host connected to |
//!
//! Whatever the mode, the handshake signatures are verified (a server must hold the key of the
//! certificate it presents), and rustls negotiates TLS 1.2 or 1.3 only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::{redact_url, split_tls_params};
use super::{PgError, PgErrorKind};
use crate::config::{ConfigError, PostgresConfig, SslMode};

/// The effective PostgreSQL connection settings: [`PostgresConfig::tls`].
#[derive(Clone, PartialEq, Eq)]
pub struct PgConnection {
    /// The URL for tokio-postgres: `postgres.url` without libpq's `sslmode`/`sslrootcert`
    /// parameters (tokio-postgres knows only three modes and no CA parameter). Holds the password.
    pub url: String,
    pub sslmode: SslMode,
    /// Set for `verify-ca` and `verify-full` (and for `require` given a CA, which then verifies
    /// the chain).
    pub root_cert: Option<PathBuf>,
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("url", &redact_url(&self.url))
            .field("sslmode", &self.sslmode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

impl PostgresConfig {
    /// Resolves TLS settings from `sslmode`, `ssl_root_cert` and the URL's libpq parameters. An
    /// error when they contradict each other, or a verifying mode has no CA: a configuration that
    /// could silently connect less safely than it says is refused.
    pub fn tls(&self) -> Result<PgConnection, ConfigError> {
        let (url, url_mode, url_root) = split_tls_params(&self.url);
        let mode_from_url = match url_mode.as_deref() {
            None => None,
            Some(m) => Some(SslMode::parse(m).ok_or_else(|| ConfigError::Invalid {
                key: "postgres.url",
                value: format!("…sslmode={m}…"),
                expected: "sslmode = disable, prefer, require, verify-ca or verify-full",
            })?),
        };
        let sslmode = match (self.sslmode, mode_from_url) {
            (Some(a), Some(b)) if a != b => {
                return Err(ConfigError::Load(format!(
                "`postgres.sslmode` = {a} but postgres.url says sslmode={b}: set it in one place"
            )))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) if self.ssl_root_cert.is_some() || url_root.is_some() => {
                SslMode::VerifyFull
            }
            (None, None) => SslMode::Prefer,
        };
        let root_cert = match (&self.ssl_root_cert, url_root) {
            (Some(a), Some(b)) if *a != b => {
                return Err(ConfigError::Load(format!(
                    "`postgres.ssl_root_cert` = {} but postgres.url says sslrootcert={}: set it in one place",
                    a.display(),
                    b.display()
                )))
            }
            (Some(a), _) => Some(a.clone()),
            (None, b) => b,
        };
        match (sslmode, &root_cert) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => Err(ConfigError::Invalid {
                key: "postgres.ssl_root_cert",
                value: "(unset)".into(),
                expected: "a PEM file of the CA certificate(s) that signed the server's certificate (sslmode verify-ca and verify-full need one)",
            }),
            (SslMode::Disable | SslMode::Prefer, Some(p)) => Err(ConfigError::Invalid {
                key: "postgres.ssl_root_cert",
                value: p.display().to_string(),
                expected: "no CA file with sslmode disable or prefer, which never verify certificates (use require, verify-ca or verify-full)",
            }),
            _ => Ok(PgConnection {
                url,
                sslmode,
                root_cert,
            }),
        }
    }
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// The connection pool for `cfg`: TLS as [`PostgresConfig::tls`] resolves it, timeouts from the
/// configuration. Connections are made when the pool is first used.
pub(super) fn pool(cfg: &PostgresConfig) -> Result<Pool, PgError> {
    let other = |message: String| PgError {
        kind: PgErrorKind::Other,
        message,
    };
    let conn = cfg.tls().map_err(|e| other(e.to_string()))?;
    let mut pg: tokio_postgres::Config = conn
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| other(format!("invalid postgres.url: {e}")))?;
    pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
    if pg.get_application_name().is_none() {
        pg.application_name("nekhebet-store");
    }
    pg.ssl_mode(match conn.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let manager_config = || ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match conn.sslmode {
        SslMode::Disable => Manager::from_config(pg, NoTls, manager_config()),
        mode => {
            let tls = connector(mode, conn.root_cert.as_deref()).map_err(other)?;
            Manager::from_config(pg, tls, manager_config())
        }
    };
    Pool::builder(manager)
        .max_size(cfg.pool_size)
        .wait_timeout(Some(Duration::from_millis(cfg.pool_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
        .recycle_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| other(format!("building the connection pool: {e}")))
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCheck {
    /// Not at all (`prefer`, `require` without a CA).
    None,
    /// The chain to the CA, not the name (`verify-ca`, `require` with a CA).
    Chain,
    /// Chain and name (`verify-full`).
    Full,
}

impl CertCheck {
    pub fn for_mode(mode: SslMode, has_ca: bool) -> CertCheck {
        match mode {
            SslMode::Disable | SslMode::Prefer => CertCheck::None,
            SslMode::Require if has_ca => CertCheck::Chain,
            SslMode::Require => CertCheck::None,
            SslMode::VerifyCa => CertCheck::Chain,
            SslMode::VerifyFull => CertCheck::Full,
        }
    }
}

/// The tokio-postgres TLS connector for `mode`, trusting the CA certificates of `root_cert`.
/// Errors are phrased for the operator (they name the file and what is wrong with it).
pub fn connector(mode: SslMode, root_cert: Option<&Path>) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = CertCheck::for_mode(mode, root_cert.is_some());
    let verifier: Arc<dyn ServerCertVerifier> = match (check, root_cert) {
        (CertCheck::None, _) => Arc::new(Lenient {
            chain: None,
            provider: provider.clone(),
        }),
        (_, None) => {
            return Err(format!(
                "postgres.sslmode = {mode} needs postgres.ssl_root_cert (a PEM file of the CA certificates)"
            ))
        }
        (check, Some(path)) => {
            let roots = load_roots(path)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("postgres.ssl_root_cert {}: {e}", path.display()))?;
            if check == CertCheck::Full {
                webpki
            } else {
                Arc::new(Lenient {
                    chain: Some(webpki),
                    provider: provider.clone(),
                })
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Every certificate of a PEM file; an error when it cannot be read or holds none.
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let what = || format!("postgres.ssl_root_cert {}", path.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read it: {e}", what()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", what()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE in it (expected the PEM of the CA that signed the server's certificate)",
            what()
        ));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("{}: certificate {}: {e}", what(), i + 1))?;
    }
    Ok(roots)
}

/// Every mode but `verify-full`. Without a CA (`prefer`, `require`): any certificate. With one
/// (`verify-ca`, `require` given a CA): the chain must verify; the name may differ. Either way the
/// handshake must be signed by the certificate's key.
#[derive(Debug)]
struct Lenient {
    /// The CA's verifier, whose name check is waived; `None`: no certificate check.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain (and validity period) before the name: a name error means
        // everything else passed.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    // The handshake signatures as webpki's verifier checks them (with the same provider's
    // algorithms), whether or not there is a chain to check.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_checks() {
        assert_eq!(CertCheck::for_mode(SslMode::Prefer, true), CertCheck::None);
        assert_eq!(
            CertCheck::for_mode(SslMode::Require, false),
            CertCheck::None
        );
        assert_eq!(
            CertCheck::for_mode(SslMode::Require, true),
            CertCheck::Chain
        );
        assert_eq!(
            CertCheck::for_mode(SslMode::VerifyCa, true),
            CertCheck::Chain
        );
        assert_eq!(
            CertCheck::for_mode(SslMode::VerifyFull, true),
            CertCheck::Full
        );
    }

    #[test]
    fn bad_ca_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = connector(SslMode::VerifyFull, Some(&missing))
            .err()
            .unwrap();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = connector(SslMode::VerifyCa, Some(&empty)).err().unwrap();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        assert!(connector(SslMode::VerifyFull, None).is_err());
        assert!(connector(SslMode::Require, None).is_ok());
    }

    #[test]
    fn tls_settings_resolve_from_config_and_url() {
        let pg = |url: &str, mode: Option<SslMode>, ca: Option<&str>| {
            PostgresConfig {
                url: url.into(),
                sslmode: mode,
                ssl_root_cert: ca.map(PathBuf::from),
                ..crate::config::Config::default().postgres
            }
            .tls()
        };
        let c = pg("postgres://u:p@h/db", None, None).unwrap();
        assert_eq!((c.sslmode, c.root_cert), (SslMode::Prefer, None));
        // A CA alone means "verify it".
        let c = pg("postgres://u:p@h/db", None, Some("/ca.pem")).unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        // libpq's URL parameters are honoured and removed for tokio-postgres.
        let c = pg(
            "postgres://u:p@h/db?application_name=x&sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem",
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyCa);
        assert_eq!(c.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.url, "postgres://u:p@h/db?application_name=x");
        let c = pg(
            "host=h sslmode=require  sslrootcert='/a b.pem' user=u",
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.root_cert.as_deref(), Some(Path::new("/a b.pem")));
        assert_eq!(
            c.url.split_whitespace().collect::<Vec<_>>(),
            ["host=h", "user=u"]
        );
        // Contradictions and unsafe combinations are refused.
        let err = |r: Result<PgConnection, ConfigError>| r.unwrap_err().to_string();
        assert!(err(pg(
            "postgres://h/db?sslmode=require",
            Some(SslMode::VerifyFull),
            Some("/ca")
        ))
        .contains("one place"));
        assert!(err(pg("postgres://h/db", Some(SslMode::VerifyFull), None))
            .contains("postgres.ssl_root_cert"));
        assert!(
            err(pg("postgres://h/db", Some(SslMode::Prefer), Some("/ca"))).contains("never verify")
        );
        assert!(err(pg("postgres://h/db?sslmode=bogus", None, None)).contains("verify-full"));
    }
}
