//! TLS for PostgreSQL connections: libpq's `sslmode`s implemented with rustls (ring provider).
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

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::SslMode;

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
        (CertCheck::None, _) => Arc::new(NoCertCheck(provider.clone())),
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
                Arc::new(ChainOnly(webpki))
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

/// `verify-ca`: the chain must verify; the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain (and validity period) before the name: a name error means
        // everything else passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require` without a CA: any certificate, but the handshake must be signed by its key.
#[derive(Debug)]
struct NoCertCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
}
