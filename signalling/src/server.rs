//! The signalling server: HTTP and WebSocket on one port (HTTPS and wss://
//! when given a certificate).
//!
//! Each WebSocket is one task that owns its socket; all tree state lives in
//! [`registry::Registry`] behind one mutex that is held only while a request
//! is applied, never across a send. Messages to a peer go through that peer's
//! bounded queue; a peer whose queue is full is too slow to keep up and is
//! disconnected (its children are re-placed), so it cannot grow the server's
//! memory or delay anyone else.

mod admission;
mod connection;
mod ice;
mod listener;
mod liveness;
mod metrics;
mod registry;
mod tls;
mod turn;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::protocol::{Event, IceServer, ProtocolError};
use admission::guard::FIRST_REQUEST_DEADLINE;
use admission::IpCounts;
use connection::Outbox;
pub use ice::{lacks_credentials, parse_ice_url, IceUrlError, IceUrlProblem};
use listener::{ClientAddr, Incoming, TCP_PER_WEBSOCKET};
pub use liveness::PROBE_DEADLINE;
use metrics::Metrics;
pub use registry::TokenKey;
use registry::{Effects, PeerId, Registry, TreeId};
pub use tls::{TlsIdentity, TlsPart};
pub use turn::{TurnConfigError, TurnRest};

/// The server's limits and caps; every field is a command-line flag of
/// `peer-tree-relay signal`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most children any non-root peer may have.
    pub k: u32,
    /// Most children a source may have.
    pub k1: u32,
    /// Sent in every `hello` (see [`parse_ice_url`] for the command line's
    /// forms). A TURN entry without credentials gets per-connection ones
    /// made with `turn_rest`, or goes out as it is when that is `None`.
    pub ice_servers: Vec<IceServer>,
    /// The secret shared with the TURN servers in `ice_servers` that have
    /// no static credentials.
    pub turn_rest: Option<TurnRest>,
    pub ping_interval: Duration,
    /// How long a tree whose source died waits for `reclaim`.
    pub grace: Duration,
    /// Largest text frame accepted, in bytes.
    pub max_message: usize,
    /// Messages per second per connection.
    pub rate: u32,
    /// Malformed messages in a row before the connection is closed.
    pub malformed_limit: u32,
    /// Messages queued to one peer before it counts as too slow and is dropped.
    pub outbox_capacity: usize,
    /// Most WebSockets open at once from one client address (an IPv6 client
    /// by its /64); 0 = unlimited.
    pub max_conns_per_ip: u32,
    /// Origins whose pages may open a WebSocket; empty = every origin. A
    /// request without an `Origin` header is always allowed.
    pub allowed_origins: Vec<String>,
    /// Serve HTTPS and wss:// instead of plain HTTP and ws://.
    pub tls: Option<TlsIdentity>,
    /// Signs reclaim tokens; the same key after a restart lets sources take
    /// their trees back.
    pub token_key: TokenKey,
    /// A connection's first request (its head) must arrive within this, or
    /// the connection is closed (slowloris; see `server/guard.rs`).
    pub first_request_deadline: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            k: 4,
            k1: 10,
            ice_servers: Vec::new(),
            turn_rest: None,
            ping_interval: Duration::from_secs(5),
            grace: Duration::from_secs(15),
            max_message: 64 * 1024,
            rate: 50,
            malformed_limit: 8,
            outbox_capacity: 1024,
            max_conns_per_ip: DEFAULT_MAX_CONNS_PER_IP,
            allowed_origins: Vec::new(),
            tls: None,
            token_key: TokenKey::random(),
            first_request_deadline: FIRST_REQUEST_DEADLINE,
        }
    }
}

impl ServerConfig {
    /// Refuses the values a server cannot run with: zeros that would panic
    /// it (after a peer was registered, leaking its entry) or refuse every
    /// message.
    pub fn validate(&self) -> Result<(), ServerError> {
        let invalid = |setting: &'static str, rule: &'static str| {
            Err(ServerError::InvalidSetting { setting, rule })
        };
        if self.k1 == 0 {
            return invalid(
                "k1",
                "must be at least 1: a source with no children can reach nobody",
            );
        }
        if self.ping_interval.is_zero() {
            return invalid("ping_interval", "must be more than 0 (for example 5s)");
        }
        if self.rate == 0 {
            return invalid("rate", "must be at least 1 message per second");
        }
        if self.max_message < 1024 {
            return invalid(
                "max_message",
                "must be at least 1024 bytes: SDP offers are larger than that",
            );
        }
        if self.outbox_capacity == 0 {
            return invalid("outbox_capacity", "must be at least 1 message");
        }
        if self.first_request_deadline.is_zero() {
            return invalid("first_request_deadline", "must be more than 0");
        }
        Ok(())
    }
}

/// Enough for a household or a small office behind one NAT address to watch
/// together, or a machine running dozens of relays, while one address can no
/// longer hold thousands of sockets and peer slots.
pub const DEFAULT_MAX_CONNS_PER_IP: u32 = 64;

struct Shared {
    cfg: ServerConfig,
    peers: Mutex<Peers>,
    metrics: Metrics,
    shutdown: CancellationToken,
    ip_counts: IpCounts,
}

/// The registry decides and names peers by id; each connected peer's
/// queue is kept beside it, under the same lock, so that effects find
/// their queues in the same critical section that made them.
struct Peers {
    registry: Registry,
    outboxes: HashMap<PeerId, Outbox>,
}

/// Effects with their peers' queues looked up, to carry out once the lock
/// is released.
struct Delivery {
    out: Vec<(Outbox, Event)>,
    grace: Option<(TreeId, u64)>,
    joins: u64,
}

impl Peers {
    fn route(&self, fx: Effects) -> Delivery {
        // The registry names only connected peers, and a peer's queue goes
        // only after the registry forgot it, so every lookup succeeds.
        let out = fx
            .out
            .into_iter()
            .filter_map(|(peer, ev)| Some((self.outboxes.get(&peer)?.clone(), ev)))
            .collect();
        Delivery {
            out,
            grace: fx.grace,
            joins: fx.joins,
        }
    }
}

impl Shared {
    /// A panic while the lock was held cannot leave the registry half-updated
    /// in a way later requests could not cope with (each request validates
    /// before it mutates), so keep serving rather than poison every peer.
    fn peers(&self) -> MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one decision of the registry under the lock and carries out
    /// what it caused after.
    fn apply(self: &Arc<Self>, decide: impl FnOnce(&mut Registry) -> Effects) {
        let delivery = {
            let mut st = self.peers();
            let fx = decide(&mut st.registry);
            st.route(fx)
        };
        self.deliver(delivery);
    }

    /// Tells a peer why its message was refused, and counts it.
    fn refuse(&self, to: &Outbox, err: &ProtocolError) {
        self.metrics.error(err.code);
        to.push(&err.to_event());
    }

    fn deliver(self: &Arc<Self>, d: Delivery) {
        self.metrics.joins.inc_by(d.joins);
        for (outbox, ev) in d.out {
            if let Event::Error(e) = &ev {
                self.metrics.error(e.code);
            }
            outbox.push(&ev);
        }
        if let Some((tree, epoch)) = d.grace {
            let shared = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(shared.cfg.grace) => {}
                    _ = shared.shutdown.cancelled() => return,
                }
                shared.apply(|reg| {
                    let fx = reg.grace_expired(&tree, epoch);
                    if !fx.out.is_empty() {
                        info!(tree = %tree, "source did not reclaim within the grace period; tree closed");
                    }
                    fx
                });
            });
        }
    }
}

/// A random URL-safe id from the OS-seeded CSPRNG (`bytes` * 8 bits). Never
/// starts with `-`, which a command line would read as an option
/// (`peer-tree-relay join -abc...`); redrawing costs 1/64 of the first
/// character's values, nothing of the id's strength.
pub(crate) fn new_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    loop {
        rand::fill(&mut buf[..]);
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf);
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// A running server: its address and the means to stop it.
pub struct ServerHandle {
    addr: SocketAddr,
    tls: bool,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/ws` (`wss://` with TLS), what clients connect to.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.addr)
    }

    /// `http://ADDR` (`https://` with TLS).
    pub fn http_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, closes every WebSocket with 1001, and waits.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Binds a listening socket with a deep accept queue: peers of a popular
/// tree arrive in bursts, and the default backlog of 128 overflowed when
/// thousands connected at once (the kernel then drops SYNs and clients
/// retry a second later).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Binds `addr` and serves in the background.
pub async fn spawn(cfg: ServerConfig, addr: SocketAddr) -> std::io::Result<ServerHandle> {
    spawn_on(cfg, bind(addr)?)
}

/// Serves on an already bound listener in the background.
pub fn spawn_on(cfg: ServerConfig, listener: TcpListener) -> std::io::Result<ServerHandle> {
    cfg.validate().map_err(std::io::Error::other)?;
    let addr = listener.local_addr()?;
    let tls = cfg.tls.is_some();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task =
        tokio::spawn(async move { serve_checked(cfg, listener, stop.cancelled_owned()).await });
    Ok(ServerHandle {
        addr,
        tls,
        shutdown,
        task,
    })
}

/// Serves until `stop` completes, then closes every connection.
pub async fn serve(
    cfg: ServerConfig,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    cfg.validate().map_err(std::io::Error::other)?;
    serve_checked(cfg, listener, stop).await
}

/// [`serve`] with a configuration already validated.
async fn serve_checked(
    cfg: ServerConfig,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Registry::new(
        registry::Settings {
            k: cfg.k,
            k1: cfg.k1,
            grace: cfg.grace,
            token_key: cfg.token_key.clone(),
        },
        std::time::Instant::now(),
        Box::new(|| new_id(16)),
    );
    let shared = Arc::new(Shared {
        cfg,
        peers: Mutex::new(Peers {
            registry,
            outboxes: HashMap::new(),
        }),
        metrics: Metrics::new(),
        shutdown: CancellationToken::new(),
        ip_counts: IpCounts::default(),
    });
    let incoming = Incoming::new(
        listener,
        shared.cfg.tls.as_ref(),
        shared
            .cfg
            .max_conns_per_ip
            .saturating_mul(TCP_PER_WEBSOCKET),
        shared.cfg.first_request_deadline,
    )?;
    let app = router(shared.clone()).into_make_service_with_connect_info::<ClientAddr>();
    let token = shared.shutdown.clone();
    let result = axum::serve(incoming, app)
        .with_graceful_shutdown(async move {
            stop.await;
            token.cancel();
        })
        .await;
    shared.shutdown.cancel();
    result
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .route("/api/trees/{id}", get(tree_snapshot))
        .route("/", get(index_page))
        .route("/peer-tree-client.js", get(client_js))
        .with_state(shared)
}

async fn index_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../../web/index.html"),
    )
        .into_response()
}

async fn client_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../web/peer-tree-client.js"),
    )
        .into_response()
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    let gauges = shared.peers().registry.gauges();
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        shared.metrics.render(&gauges),
    )
        .into_response()
}

async fn tree_snapshot(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let snap = shared.peers().registry.snapshot(&id);
    match snap {
        Some(s) => axum::Json(s).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "no-such-tree"})),
        )
            .into_response(),
    }
}

/// Admits the WebSocket (see `admission`), then hands it to its task.
async fn ws_upgrade(
    State(shared): State<Arc<Shared>>,
    ws: WebSocketUpgrade,
    ConnectInfo(ClientAddr(from)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    let cfg = &shared.cfg;
    let slot = match admission::admit(cfg, &shared.ip_counts, &shared.metrics, from, &headers) {
        Ok(slot) => slot,
        Err(why) => return admission::refusal_response(why, cfg),
    };
    let max = cfg.max_message;
    ws.max_message_size(max)
        .max_frame_size(max)
        // Signalling messages are small; the 128 KiB default read buffer per
        // connection would dominate memory at 18,000 peers.
        .read_buffer_size(1024)
        .on_upgrade(move |socket| async move {
            // Held for the connection's life; dropped with this future on
            // every path, a failed upgrade included.
            let _slot = slot;
            connection::run(shared, socket).await
        })
}

/// What can stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `setting` is the [`ServerConfig`] field (the command line's flag is
    /// the same name in kebab case).
    #[error("{setting} {rule}")]
    InvalidSetting {
        setting: &'static str,
        rule: &'static str,
    },
    #[error("cannot read the TLS {what} file {}", path.display())]
    TlsRead {
        what: TlsPart,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS {what} file {} is not valid PEM", path.display())]
    TlsPem {
        what: TlsPart,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "the TLS certificate file {} holds no certificate (expected a PEM block \
         -----BEGIN CERTIFICATE-----)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error(
        "the TLS key file {} holds no private key (expected a PEM block -----BEGIN PRIVATE KEY-----, \
         -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "the TLS certificate {} and key {} cannot be used together",
        cert.display(),
        key.display()
    )]
    TlsConfig {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}
