//! TLS to the broker and to PACS destinations, and for the findings page, with rustls (ring as the crypto provider: pure
//! Rust and assembly, cross-compiles to aarch64 with nothing but a C cross compiler). The
//! peer's certificate must chain to the configured CA and name the host we dialled; a client
//! certificate makes it mutual TLS. The system's root store is deliberately not used: a
//! clinic's broker or PACS has its own CA, and trusting every public CA would let any of them
//! impersonate it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// The files of a TLS client (`[mqtt.tls]`, `[dicom.destinations.tls]`): the peer's
/// certificate must verify against `ca_file`; a client certificate and key make it mutual.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub ca_file: PathBuf,
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// The files of a TLS server (`[web.tls]`): its certificate chain and private key, PEM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Builds the client configuration from the profile's files.
pub fn client_config(tls: &Tls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&tls.ca_file, "CA file")? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "CA file",
            path: tls.ca_file.clone(),
            reason: e.to_string(),
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert, "client certificate file")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                what: "client key file",
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Builds a server configuration (no client certificates asked for) from the profile's files.
pub fn server_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(&tls.cert_file, "certificate file")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| TlsError::File {
        what: "key file",
        path: tls.key_file.clone(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls {
            ca_file: dir.path().join("nope.pem"),
            client_cert_file: None,
            client_key_file: None,
        };
        let e = client_config(&tls).unwrap_err().to_string();
        assert!(e.contains("CA file") && e.contains("nope.pem"), "{e}");
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        let tls = Tls {
            ca_file: dir.path().join("empty.pem"),
            ..tls
        };
        let e = client_config(&tls).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
