//! webrtc's tokio runtime with larger UDP receive buffers and, per link, the
//! gate that holds back relayed checks (relayed_checks.rs).
//!
//! At 20,000 packets/s the kernel's default receive buffer (about 208 KB)
//! overflows between two reads of the relay's upstream socket and packets are
//! lost before webrtc sees them (forward_load shows the relay's own sockets
//! dropping at its limit). webrtc 0.21 binds its sockets itself and offers no
//! buffer setting, but every socket passes through `wrap_udp_socket`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::relayed_checks::{GatedUdpSocket, RelayedCheckGate};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// Asked for per socket; the kernel caps it at `net.core.rmem_max`.
pub const UDP_RECV_BUFFER: usize = 4 << 20;

#[derive(Debug)]
pub struct RelayRuntime {
    inner: TokioRuntime,
    /// Every socket's inbound checks pass through it (relayed_checks.rs).
    gate: Arc<RelayedCheckGate>,
}

impl RelayRuntime {
    /// A runtime for one link, whose sockets hold back relayed checks.
    pub fn with_gate(gate: Arc<RelayedCheckGate>) -> Self {
        RelayRuntime {
            inner: TokioRuntime,
            gate,
        }
    }
}

impl Runtime for RelayRuntime {
    fn spawn(&self, f: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(f)
    }

    fn spawn_reactor(
        &self,
        n: usize,
        f: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(n, f)
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let s = socket2::SockRef::from(&sock);
        // A smaller buffer still works; it only loses packets sooner.
        if let Err(e) = s.set_recv_buffer_size(UDP_RECV_BUFFER) {
            debug!("SO_RCVBUF not raised: {e}");
        }
        let inner = self.inner.wrap_udp_socket(sock)?;
        Ok(Arc::new(GatedUdpSocket {
            inner,
            gate: self.gate.clone(),
        }))
    }

    fn wrap_tcp_listener(&self, l: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(l)
    }

    fn connect_tcp<'a>(
        &'a self,
        a: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(a)
    }

    fn resolve_host<'a>(
        &'a self,
        h: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(h)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(d)
    }

    fn interval(&self, p: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(p)
    }

    fn block_on(&self, f: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(f)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio+rcvbuf"
    }
}
