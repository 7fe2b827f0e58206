//! The listener behind `axum::serve`: plain TCP or TLS, with a cap on open
//! TCP connections per client address and the first-request deadline on
//! each.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tracing::{debug, error};

use super::admission::guard::Guarded;
use super::admission::{IpCounts, IpSlot};
use super::tls::{tls_handshakes, TlsIdentity};

/// The listener behind `axum::serve`, plain or TLS.
///
/// TLS is done here, with tokio-rustls in front of axum's own `serve`,
/// rather than with a server crate such as axum-server: `serve` already
/// gives us graceful shutdown and the upgrade handling the WebSockets use,
/// and a TLS listener is the only piece missing. Handshakes run in tasks of
/// their own and only finished ones are handed to `accept`, so a client that
/// stalls its handshake delays nobody else's.
pub(super) struct Incoming {
    local: SocketAddr,
    kind: IncomingKind,
    /// Open TCP connections per client address, whatever they carry.
    tcp_counts: IpCounts,
    tcp_limit: u32,
    deadline: Duration,
}

/// TCP connections one address may hold per WebSocket it may hold: room for
/// the watch page's own requests beside its WebSocket, while a client that
/// opens sockets and never finishes a request (see `guard`) is capped.
pub(super) const TCP_PER_WEBSOCKET: u32 = 2;

enum IncomingKind {
    Plain(TcpListener),
    Tls(mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>),
}

impl Incoming {
    /// `tcp_limit`: open connections per client address (0: no limit).
    pub(super) fn new(
        listener: TcpListener,
        tls: Option<&TlsIdentity>,
        tcp_limit: u32,
        deadline: Duration,
    ) -> std::io::Result<Incoming> {
        let local = listener.local_addr()?;
        let kind = match tls {
            None => IncomingKind::Plain(listener),
            Some(id) => {
                let (tx, rx) = mpsc::channel(64);
                let acceptor = TlsAcceptor::from(id.config.clone());
                tokio::spawn(tls_handshakes(listener, acceptor, tx));
                IncomingKind::Tls(rx)
            }
        };
        Ok(Incoming {
            local,
            kind,
            tcp_counts: IpCounts::default(),
            tcp_limit,
            deadline,
        })
    }

    async fn next_connection(&mut self) -> (Either<TcpStream, TlsStream<TcpStream>>, SocketAddr) {
        match &mut self.kind {
            IncomingKind::Plain(listener) => {
                let (tcp, from) = accept_tcp(listener).await;
                (Either::Left(tcp), from)
            }
            IncomingKind::Tls(rx) => match rx.recv().await {
                Some((tls, from)) => (Either::Right(tls), from),
                // The handshake task ends only once this receiver is gone.
                None => std::future::pending().await,
            },
        }
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Guarded<Either<TcpStream, TlsStream<TcpStream>>, Option<IpSlot>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, from) = self.next_connection().await;
            let slot = if self.tcp_limit == 0 {
                None
            } else {
                match self.tcp_counts.acquire(from.ip(), self.tcp_limit) {
                    Some(slot) => Some(slot),
                    None => {
                        // No request has arrived to answer: just close.
                        debug!(%from, "connection closed: per-address TCP limit reached");
                        continue;
                    }
                }
            };
            return (Guarded::new(io, slot, self.deadline), from);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The client's address, for handlers (`ConnectInfo<ClientAddr>`).
#[derive(Clone, Copy, Debug)]
pub(super) struct ClientAddr(pub(super) SocketAddr);

impl Connected<IncomingStream<'_, Incoming>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// Accepts the next TCP connection, riding out errors: a connection reset
/// before it was accepted concerns only that client, and running out of
/// file descriptors passes once connections close.
pub(super) async fn accept_tcp(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => {
                error!("accepting a connection failed: {e}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
