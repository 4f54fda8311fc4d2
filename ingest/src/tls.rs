//! TLS for the collector APIs.
//!
//! Both APIs serve one identity, read from PEM files at start-up so that a
//! missing or unreadable file stops the process with its path rather than
//! failing the first handshake. gRPC gets it as tonic's server TLS config;
//! the HTTP collector gets a [`TlsAcceptor`] and runs each handshake on the
//! connection's own task, bounded in time ([`crate::http::listener`]).

use std::{io, path::Path, sync::Arc};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

use crate::config::TlsConfig;

/// Why the collectors' identity cannot be loaded; each names the setting
/// and the file, so start-up stops with something to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ingest.tls.{setting} {path}: {source}")]
    Read {
        setting: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("ingest.tls.{setting} {path}: {source}")]
    Pem {
        setting: &'static str,
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("ingest.tls.cert_file {path}: no certificate in the file")]
    NoCertificate { path: String },
    #[error("ingest.tls: {0}")]
    Protocols(rustls::Error),
    #[error("ingest.tls: the key does not fit the certificate: {0}")]
    KeyMismatch(rustls::Error),
}

/// The collectors' certificate chain and key, checked.
#[derive(Clone)]
pub struct Identity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads and checks the files named by `ingest.tls`.
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let read = |setting: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                setting,
                path: path.display().to_string(),
                source,
            })
        };
        let cert_pem = read("cert_file", &cfg.cert_file)?;
        let key_pem = read("key_file", &cfg.key_file)?;
        let pem = |setting: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |source| TlsError::Pem {
                setting,
                path,
                source,
            }
        };
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem("cert_file", &cfg.cert_file))?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cfg.cert_file.display().to_string(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(pem("key_file", &cfg.key_file))?;
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::KeyMismatch)?;
        // The HTTP collector speaks HTTP/1.1 only.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            server: Arc::new(server),
        })
    }

    /// The same identity for the gRPC server (HTTP/2 over tonic's rustls).
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }

    /// The acceptor of the HTTPS collector's connections; the handshakes
    /// run on each connection's own task ([`crate::http::listener`]).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }
}
