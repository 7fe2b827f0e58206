//! The server's TLS: its certificate and key, and the handshakes done before
//! a connection is handed to HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::listener::accept_tcp;
use super::ServerError;
use crate::tls::{self, PemError};

/// Which of the two TLS files an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPart {
    Certificate,
    Key,
}

impl std::fmt::Display for TlsPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsPart::Certificate => "certificate",
            TlsPart::Key => "key",
        })
    }
}

/// A certificate chain and its private key, ready to serve HTTPS and wss://.
#[derive(Clone)]
pub struct TlsIdentity {
    pub(super) config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never let `{:?}` of a ServerConfig walk into the key material.
        f.write_str("TlsIdentity(..)")
    }
}

impl TlsIdentity {
    /// Reads a PEM certificate chain (the server's certificate first, then
    /// any intermediates) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsIdentity, ServerError> {
        let pem_error = |what, path: &Path| {
            let path = path.to_owned();
            move |e| match e {
                PemError::Read(source) => ServerError::TlsRead { what, path, source },
                PemError::Pem(source) => ServerError::TlsPem { what, path, source },
                PemError::Missing => match what {
                    TlsPart::Certificate => ServerError::NoCertificate { path },
                    TlsPart::Key => ServerError::NoKey { path },
                },
            }
        };
        let chain = tls::certificates(cert).map_err(pem_error(TlsPart::Certificate, cert))?;
        let private = tls::private_key(key).map_err(pem_error(TlsPart::Key, key))?;
        let config_err = |source| ServerError::TlsConfig {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_no_client_auth()
            // Also checks that the key belongs to the certificate, so a mismatch
            // fails at start-up rather than in every client's handshake.
            .with_single_cert(chain, private)
            .map_err(config_err)?;
        // axum serves HTTP/1.1 only here, which WebSocket upgrades need.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsIdentity {
            config: Arc::new(config),
        })
    }
}

/// How long a client may take over its TLS handshake; after that the
/// connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once. Each costs a task and some memory
/// until it finishes or times out; past this many, new connections wait in
/// the kernel's accept queue instead of piling up here.
const MAX_TLS_HANDSHAKES: usize = 1024;

/// Accepts TCP connections and hands each to `tx` once its TLS handshake is
/// done; stops when the receiving `Incoming` is dropped (server shut down).
pub(super) async fn tls_handshakes(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_TLS_HANDSHAKES));
    loop {
        let next = async {
            // The semaphore is never closed, so `ok()` is always `Some`.
            let slot = slots.clone().acquire_owned().await.ok();
            (slot, accept_tcp(&listener).await)
        };
        let (slot, (tcp, from)) = tokio::select! {
            n = next => n,
            _ = tx.closed() => return,
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, from)).await;
                }
                // Scanners, plain-HTTP clients and clients that distrust the
                // certificate all end here; not worth more than debug.
                Ok(Err(e)) => debug!(%from, "TLS handshake failed: {e}"),
                Err(_) => {
                    debug!(%from, "TLS handshake not done within {TLS_HANDSHAKE_TIMEOUT:?}; dropped")
                }
            }
        });
    }
}
