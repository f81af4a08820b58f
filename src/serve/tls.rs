//! HTTPS: `serve.tls_cert` (PEM chain, leaf first) and `serve.tls_key` (PEM private key) make a
//! rustls acceptor (ring provider, TLS 1.2 and 1.3, HTTP/1.1 over ALPN). Read once at start;
//! errors name the file and what is wrong with it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ServeConfig;

/// The acceptor when `serve.tls_cert` and `serve.tls_key` are set.
pub fn acceptor(cfg: &ServeConfig) -> anyhow::Result<Option<TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "serve.tls_key {}: not a readable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "serve.tls_cert {} and serve.tls_key: {e} (is the key the certificate's?)",
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let what = || format!("serve.tls_cert {}", path.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read it: {e}", what()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate file: {e}", what()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "{}: no CERTIFICATE in it (expected the server's certificate, then its intermediates)",
            what()
        );
    }
    Ok(chain)
}
