//! The signalling server: HTTP and WebSocket on one port (HTTPS and wss://
//! when given a certificate).
//!
//! Each WebSocket is one task that owns its socket; all tree state lives in
//! [`registry::Registry`] behind one mutex that is held only while a request
//! is applied, never across a send. Messages to a peer go through that peer's
//! bounded queue; a peer whose queue is full is too slow to keep up and is
//! disconnected (its children are re-placed), so it cannot grow the server's
//! memory or delay anyone else.

mod guard;
mod ice;
mod metrics;
mod registry;
mod turn;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::Router;
use base64::Engine;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::protocol::{ErrorCode, Event, Hello, IceServer, ProtocolError, Request, VERSION};
use guard::{Guarded, FIRST_REQUEST_DEADLINE};
pub use ice::{lacks_credentials, parse_ice_url, IceUrlError, IceUrlProblem};
use metrics::{Metrics, Refusal};
pub use registry::TokenKey;
use registry::{Effects, PeerId, Registry};
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

/// WebSocket close codes the protocol names.
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_GOING_AWAY: u16 = 1001;

struct Shared {
    cfg: ServerConfig,
    registry: Mutex<Registry>,
    metrics: Metrics,
    shutdown: CancellationToken,
    ip_counts: IpCounts,
}

impl Shared {
    /// A panic while the lock was held cannot leave the registry half-updated
    /// in a way later requests could not cope with (each request validates
    /// before it mutates), so keep serving rather than poison every peer.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells a peer why its message was refused, and counts it.
    fn refuse(&self, to: &Outbox, err: &ProtocolError) {
        self.metrics.error(err.code);
        to.push(&err.to_event());
    }

    /// Carries out what a request caused, after the lock is released.
    fn apply(self: &Arc<Self>, fx: Effects) {
        self.metrics.joins.inc_by(fx.joins);
        for (outbox, ev) in fx.out {
            if let Event::Error(e) = &ev {
                self.metrics.error(e.code);
            }
            outbox.push(&ev);
        }
        if let Some((tree, epoch)) = fx.grace {
            let shared = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(shared.cfg.grace) => {}
                    _ = shared.shutdown.cancelled() => return,
                }
                let fx = shared.registry().grace_expired(&tree, epoch);
                if !fx.out.is_empty() {
                    info!(tree = %tree, "source did not reclaim within the grace period; tree closed");
                }
                shared.apply(fx);
            });
        }
    }
}

/// One peer's outgoing queue, and the switch that drops it when it lags.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Utf8Bytes>,
    kill: CancellationToken,
    /// Asks the connection to check its peer now ([`PROBE_DEADLINE`]).
    probe: Arc<Notify>,
}

/// A peer checked because a child said it went silent (a `reconnect`) must
/// answer a WebSocket ping within this, or it is removed (protocol rule 5).
/// The regular pings take up to two intervals (10 s by default) to find a
/// frozen peer, and a child with nowhere else to go waited that long; a
/// live peer answers in a round trip.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);

impl Outbox {
    pub(crate) fn probe(&self) {
        self.probe.notify_one();
    }

    fn push(&self, ev: &Event) {
        match self.tx.try_send(ev.to_json().into()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kill.is_cancelled() {
                    warn!("peer's outgoing queue is full; dropping the connection");
                }
                self.kill.cancel();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
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
    let shared = Arc::new(Shared {
        cfg,
        registry: Mutex::new(Registry::default()),
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
    let gauges = shared.registry().gauges();
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        shared.metrics.render(&gauges),
    )
        .into_response()
}

async fn tree_snapshot(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let snap = shared.registry().snapshot(&id);
    match snap {
        Some(s) => axum::Json(s).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "no-such-tree"})),
        )
            .into_response(),
    }
}

/// Origin first, then the per-address count: a request refused for its
/// origin must not take one of its address's slots.
async fn ws_upgrade(
    State(shared): State<Arc<Shared>>,
    ws: WebSocketUpgrade,
    ConnectInfo(ClientAddr(from)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    let cfg = &shared.cfg;
    if !origin_allowed(&cfg.allowed_origins, &headers) {
        shared.metrics.refused(Refusal::Origin);
        debug!(%from, origin = ?headers.get(header::ORIGIN), "WebSocket refused: origin not allowed");
        return refusal(
            StatusCode::FORBIDDEN,
            "WebSocket refused: this page's origin is not allowed to use this signalling server\n"
                .to_owned(),
        );
    }
    let slot = if cfg.max_conns_per_ip == 0 {
        None
    } else {
        match shared.ip_counts.acquire(from.ip(), cfg.max_conns_per_ip) {
            Some(slot) => Some(slot),
            None => {
                shared.metrics.refused(Refusal::PerIpLimit);
                debug!(%from, "WebSocket refused: per-address connection limit reached");
                return refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "WebSocket refused: {} connections from your address are already open, \
                         the most this server allows; close one and try again\n",
                        cfg.max_conns_per_ip
                    ),
                );
            }
        }
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
            connection(shared, socket).await
        })
}

/// Admits a message when the connection has sent fewer than `rate` in the
/// last second (a token bucket refilled continuously).
struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
    /// One `rate-limited` error per burst: a flood must not make the server
    /// send a flood back.
    warned: bool,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimit {
            rate,
            tokens: rate,
            at: Instant::now(),
            warned: false,
        }
    }

    fn admit(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.warned = false;
            true
        } else {
            false
        }
    }
}

enum Exit {
    /// The peer closed or the socket failed: nothing more to send.
    Gone,
    /// Close with this code after flushing what is queued.
    Close(u16, &'static str),
}

async fn connection(shared: Arc<Shared>, socket: WebSocket) {
    let cfg = &shared.cfg;
    let peer: PeerId = new_id(16).into();
    let (tx, mut rx) = mpsc::channel(cfg.outbox_capacity);
    let kill = shared.shutdown.child_token();
    let probe = Arc::new(Notify::new());
    let me = Outbox {
        tx,
        kill: kill.clone(),
        probe: probe.clone(),
    };
    me.push(&Event::Hello(Hello {
        version: VERSION,
        peer: peer.to_string(),
        k: cfg.k,
        k1: cfg.k1,
        ice_servers: turn::ice_servers_for(
            &cfg.ice_servers,
            cfg.turn_rest.as_ref(),
            &peer,
            SystemTime::now(),
        ),
    }));
    shared.registry().connect(peer.clone(), me.clone());
    debug!(peer = %peer, "connected");

    let (mut sink, mut stream) = socket.split();
    let mut ping = interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_pong = Instant::now();
    // A check in progress: its ping went out then, and must be answered by
    // PROBE_DEADLINE after.
    let mut probing: Option<Instant> = None;
    let mut limit = RateLimit::new(cfg.rate);
    let mut malformed = 0u32;

    let exit = loop {
        tokio::select! {
            biased;
            _ = kill.cancelled() => {
                break if shared.shutdown.is_cancelled() {
                    Exit::Close(CLOSE_GOING_AWAY, "server shutting down")
                } else {
                    Exit::Gone
                };
            }
            first = rx.recv() => {
                let Some(first) = first else { break Exit::Gone };
                let sent = tokio::select! {
                    r = send_batch(&mut sink, first, &mut rx) => r,
                    _ = kill.cancelled() => continue,
                };
                if sent.is_err() {
                    break Exit::Gone;
                }
            }
            _ = probe.notified(), if probing.is_none() => {
                probing = Some(Instant::now());
                let sent = tokio::select! {
                    r = sink.send(Message::Ping(Default::default())) => r,
                    _ = kill.cancelled() => continue,
                };
                if sent.is_err() {
                    break Exit::Gone;
                }
            }
            _ = sleep_until(probing.map_or_else(Instant::now, |t| t + PROBE_DEADLINE)),
                if probing.is_some() =>
            {
                if probing.is_some_and(|t| last_pong < t) {
                    info!(peer = %peer, "a child said it went silent, and it did not answer a ping within {PROBE_DEADLINE:?}; removing");
                    break Exit::Gone;
                }
                probing = None;
            }
            _ = ping.tick() => {
                if last_pong.elapsed() > 2 * cfg.ping_interval {
                    info!(peer = %peer, "no pong within two ping intervals; removing");
                    break Exit::Gone;
                }
                let sent = tokio::select! {
                    r = sink.send(Message::Ping(Default::default())) => r,
                    _ = kill.cancelled() => continue,
                };
                if sent.is_err() {
                    break Exit::Gone;
                }
            }
            frame = stream.next() => {
                let text = match frame {
                    None | Some(Ok(Message::Close(_))) => break Exit::Gone,
                    Some(Err(e)) => {
                        if is_too_large(e) {
                            shared.refuse(&me, &ProtocolError::new(
                                ErrorCode::TooLarge,
                                format!("message larger than {} bytes", cfg.max_message),
                                None,
                            ));
                            break Exit::Close(CLOSE_TOO_BIG, "message too large");
                        }
                        break Exit::Gone;
                    }
                    Some(Ok(Message::Pong(_))) => {
                        last_pong = Instant::now();
                        continue;
                    }
                    Some(Ok(Message::Ping(_))) => continue,
                    Some(Ok(Message::Binary(_))) => None,
                    Some(Ok(Message::Text(t))) => Some(t),
                };
                if !limit.admit() {
                    if !limit.warned {
                        limit.warned = true;
                        shared.refuse(&me, &ProtocolError::new(
                            ErrorCode::RateLimited,
                            format!("more than {} messages per second; messages dropped", cfg.rate),
                            None,
                        ));
                    }
                    continue;
                }
                let parsed = match text {
                    Some(t) => Request::parse(t.as_bytes()),
                    None => Err(ProtocolError::new(
                        ErrorCode::BadRequest,
                        "binary frames are not part of the protocol; send JSON text",
                        None,
                    )),
                };
                let result = match parsed {
                    Ok(req) => {
                        malformed = 0;
                        let r = shared.registry().handle(cfg, &peer, req);
                        r.map(|fx| shared.apply(fx))
                    }
                    Err(e) => {
                        malformed += 1;
                        Err(e)
                    }
                };
                if let Err(e) = result {
                    debug!(peer = %peer, code = %e.code, "request refused: {}", e.message);
                    shared.refuse(&me, &e);
                    if malformed >= cfg.malformed_limit {
                        break Exit::Close(CLOSE_POLICY, "too many malformed messages");
                    }
                }
            }
        }
    };

    let fx = shared.registry().disconnect(&peer);
    shared.apply(fx);
    debug!(peer = %peer, "disconnected");
    if let Exit::Close(code, reason) = exit {
        // Best effort: what is queued (the error that explains the close),
        // then the close frame, bounded so a dead peer cannot hold the task.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(m) = rx.try_recv() {
                sink.feed(Message::Text(m)).await?;
            }
            sink.send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await
        })
        .await;
    }
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn send_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Utf8Bytes,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
) -> Result<(), axum::Error> {
    sink.feed(Message::Text(first)).await?;
    while let Ok(m) = rx.try_recv() {
        sink.feed(Message::Text(m)).await?;
    }
    sink.flush().await
}

fn is_too_large(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite;
    e.into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

// ---------------------------------------------------------------------------
// Admission: per-address limit and Origin allow-list.

/// WebSockets count towards `max_conns_per_ip`, plain HTTP does not (raw
/// TCP connections have a looser cap of their own, see `Incoming`): a
/// WebSocket is what holds the server's resources for minutes or hours (a
/// peer entry, a tree slot, its outgoing queue, a ping timer), and the
/// refusal can be a clear HTTP 429 on the upgrade request. An HTTP request
/// is answered from memory and over; counting those connections too would
/// charge a browser's parallel page and script fetches against the same
/// budget as its one WebSocket, yet give no clear place to say no (a
/// connection is counted before any request on it can be answered).
#[derive(Clone, Default)]
struct IpCounts(Arc<Mutex<HashMap<IpAddr, u32>>>);

impl IpCounts {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        // The map holds plain counts, consistent after any single update.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more connection from `ip`, or `None` when `ip` already
    /// has `limit` open.
    fn acquire(&self, ip: IpAddr, limit: u32) -> Option<IpSlot> {
        let key = client_key(ip);
        let mut open = self.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            counts: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        self.lock().get(&client_key(ip)).copied().unwrap_or(0)
    }
}

/// One open WebSocket's share of its address's count, given back on drop:
/// whether the connection closes, fails, is killed as too slow, the upgrade
/// never completes or its task panics, the count goes down exactly once.
struct IpSlot {
    counts: IpCounts,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.counts.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // Forget idle addresses, or the map would grow with every
                // address ever seen.
                open.remove(&self.key);
            }
        }
    }
}

/// The unit one limit applies to. An IPv4 client that reaches a dual-stack
/// socket as `::ffff:a.b.c.d` is the same client as `a.b.c.d`. An IPv6 host
/// usually has a whole /64 to itself and can pick any address in it, so
/// per-address counting would not limit it at all: count the /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Browsers always send `Origin` on a WebSocket handshake and pages cannot
/// forge it, so the list keeps other sites' pages from using this server.
/// Native clients send none and cannot be told apart by it anyway: Origin
/// is not authentication, so their requests pass.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    // Browsers serialise scheme and host in lower case; the list may not be.
    allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

fn refusal(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            // The refusal ends the exchange; keeping the connection would
            // only hold a socket for a client that was just told no.
            (header::CONNECTION, "close"),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// TLS and the listener.

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
    config: Arc<rustls::ServerConfig>,
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
    pub fn from_pem_files(cert: &FsPath, key: &FsPath) -> Result<TlsIdentity, ServerError> {
        let read = |what, path: &FsPath| {
            std::fs::read(path).map_err(|source| ServerError::TlsRead {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(TlsPart::Certificate, cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ServerError::TlsPem {
                what: TlsPart::Certificate,
                path: cert.to_owned(),
                source,
            })?;
        if chain.is_empty() {
            return Err(ServerError::NoCertificate {
                path: cert.to_owned(),
            });
        }
        let key_pem = read(TlsPart::Key, key)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => ServerError::NoKey {
                path: key.to_owned(),
            },
            source => ServerError::TlsPem {
                what: TlsPart::Key,
                path: key.to_owned(),
                source,
            },
        })?;
        let config_err = |source| ServerError::TlsConfig {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        };
        // The provider is named rather than taken from the process default:
        // which providers rustls has compiled in depends on the rest of the
        // build, and with two of them the default is ambiguous.
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
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

/// The listener behind `axum::serve`, plain or TLS.
///
/// TLS is done here, with tokio-rustls in front of axum's own `serve`,
/// rather than with a server crate such as axum-server: `serve` already
/// gives us graceful shutdown and the upgrade handling the WebSockets use,
/// and a TLS listener is the only piece missing. Handshakes run in tasks of
/// their own and only finished ones are handed to `accept`, so a client that
/// stalls its handshake delays nobody else's.
struct Incoming {
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
const TCP_PER_WEBSOCKET: u32 = 2;

enum IncomingKind {
    Plain(TcpListener),
    Tls(mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>),
}

impl Incoming {
    /// `tcp_limit`: open connections per client address (0: no limit).
    fn new(
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
struct ClientAddr(SocketAddr);

impl Connected<IncomingStream<'_, Incoming>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// Accepts the next TCP connection, riding out errors: a connection reset
/// before it was accepted concerns only that client, and running out of
/// file descriptors passes once connections close.
async fn accept_tcp(listener: &TcpListener) -> (TcpStream, SocketAddr) {
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

/// Accepts TCP connections and hands each to `tx` once its TLS handshake is
/// done; stops when the receiving `Incoming` is dropped (server shut down).
async fn tls_handshakes(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn slots_are_given_back_on_drop_and_idle_addresses_forgotten() {
        let counts = IpCounts::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let s1 = counts.acquire(ip, 2).expect("first");
        let s2 = counts.acquire(ip, 2).expect("second");
        assert!(counts.acquire(ip, 2).is_none(), "third is over the limit");
        assert!(
            counts.acquire("192.0.2.2".parse().unwrap(), 2).is_some(),
            "another address has its own count"
        );
        drop(s1);
        assert_eq!(counts.open(ip), 1);
        let s3 = counts.acquire(ip, 2).expect("a freed slot is reusable");
        drop((s2, s3));
        assert!(counts.lock().is_empty(), "no entry left for idle addresses");
    }

    #[test]
    fn origin_list() {
        let mut h = HeaderMap::new();
        let list = vec!["https://Example.org/".to_owned()];
        assert!(origin_allowed(&[], &h), "no list: everyone");
        assert!(origin_allowed(&list, &h), "no Origin: a native client");
        h.insert(header::ORIGIN, "https://example.org".parse().unwrap());
        assert!(origin_allowed(&list, &h));
        h.insert(
            header::ORIGIN,
            "https://example.org.evil.test".parse().unwrap(),
        );
        assert!(!origin_allowed(&list, &h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!origin_allowed(&list, &h));
    }
}
