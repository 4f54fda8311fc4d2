//! TLS for the collector APIs.
//!
//! Both APIs serve one identity, read from PEM files at start-up so that a
//! missing or unreadable file stops the process with its path rather than
//! failing the first handshake. gRPC gets it as tonic's server TLS config;
//! the HTTP collector gets a [`TlsListener`] that hands axum connections
//! whose handshake already finished.

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
    server::TlsStream,
};

use crate::config::TlsConfig;

/// A client that opens a connection and never finishes the handshake holds
/// only its own task, and only this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// Wraps the HTTP collector's listener.
    /// The acceptor of the HTTPS collector's connections.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    pub fn http(&self, listener: TcpListener) -> io::Result<TlsListener> {
        TlsListener::new(listener, TlsAcceptor::from(self.server.clone()))
    }
}

/// Accepts TCP connections and runs each handshake on its own task, so a
/// slow or hostile client never holds up the accept loop; axum receives
/// only connections that completed the handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    // axum dropped the listener: the server stopped.
                    () = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: back off
                            // instead of spinning.
                            tracing::warn!(error = %e, "accepting an HTTPS connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY");
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            crate::telemetry::tls_handshake_failed();
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            crate::telemetry::tls_handshake_failed();
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
