//! TLS for listeners beyond loopback (`listen = ["https://IP:PORT"]`):
//! rustls (ring) serving `tls_cert`/`tls_key`, and **requiring** a client
//! certificate that chains to `tls_client_ca` — etcd's `--client-cert-auth`.
//! Any client with such a certificate may do anything a local client may;
//! there are no per-key permissions.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field} {path}: {message}")]
    File { field: &'static str, path: PathBuf, message: String },
    #[error("tls_cert {cert} and tls_key {key}: {message}")]
    Pair { cert: PathBuf, key: PathBuf, message: String },
}

fn certificates(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File { field, path: path.to_path_buf(), message };
    let text = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&text).collect::<Result<Vec<_>, _>>().map_err(|e| err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certs)
}

/// The server configuration: our certificate chain and key, and client
/// certificates required and verified against the CA bundle.
pub fn server_config(cert: &Path, key: &Path, client_ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("tls_cert", cert)?;
    let key_text = std::fs::read(key).map_err(|e| TlsError::File { field: "tls_key", path: key.into(), message: format!("cannot read: {e}") })?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| TlsError::File { field: "tls_key", path: key.into(), message: format!("holds no usable PEM private key ({e})") })?;
    let mut roots = RootCertStore::empty();
    for ca in certificates("tls_client_ca", client_ca)? {
        roots.add(ca).map_err(|e| TlsError::File { field: "tls_client_ca", path: client_ca.into(), message: format!("not a usable CA certificate: {e}") })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().map_err(|e| TlsError::File {
        field: "tls_client_ca",
        path: client_ca.into(),
        message: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair { cert: cert.into(), key: key.into(), message: e.to_string() })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            let message = match e {
                rustls::Error::InconsistentKeys(_) => "the private key is not the certificate's".to_string(),
                other => other.to_string(),
            };
            TlsError::Pair { cert: cert.into(), key: key.into(), message }
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
