//! HTTPS for sprite URLs: the certificate and key from PEM files.

use std::sync::Arc;
use std::time::Duration;

/// How long a client may take over its TLS handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the proxy's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read the certificate chain {0}")]
    Certificates(std::path::PathBuf, #[source] rustls_pki_types::pem::Error),
    #[error("{0} holds no certificate (it must be a PEM file with BEGIN CERTIFICATE blocks)")]
    NoCertificate(std::path::PathBuf),
    #[error("read the private key {0}")]
    Key(std::path::PathBuf, #[source] rustls_pki_types::pem::Error),
    #[error("the certificate and key do not make a TLS configuration")]
    Config(#[source] tokio_rustls::rustls::Error),
}

/// A TLS acceptor for the URL proxy from PEM files: the certificate chain (leaf
/// first) and its private key (PKCS#8, PKCS#1 or SEC1). ALPN offers HTTP/2 first.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates(cert.to_path_buf(), e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key(key.to_path_buf(), e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
