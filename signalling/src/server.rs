//! The signalling server: HTTP and WebSocket on one port.
//!
//! Each WebSocket is one task that owns its socket; all tree state lives in
//! [`registry::Registry`] behind one mutex that is held only while a request
//! is applied, never across a send. Messages to a peer go through that peer's
//! bounded queue; a peer whose queue is full is too slow to keep up and is
//! disconnected (its children are re-placed), so it cannot grow the server's
//! memory or delay anyone else.

mod metrics;
mod registry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::protocol::{ErrorCode, Event, Hello, IceServer, ProtocolError, Request, VERSION};
use metrics::Metrics;
use registry::{Effects, PeerId, Registry};

/// The server's limits and caps; every field is a command-line flag of
/// `peer-tree-relay signal`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most children any non-root peer may have.
    pub k: u32,
    /// Most children a source may have.
    pub k1: u32,
    pub ice_servers: Vec<IceServer>,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            k: 4,
            k1: 10,
            ice_servers: Vec::new(),
            ping_interval: Duration::from_secs(5),
            grace: Duration::from_secs(15),
            max_message: 64 * 1024,
            rate: 50,
            malformed_limit: 8,
            outbox_capacity: 1024,
        }
    }
}

/// WebSocket close codes the protocol names.
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_GOING_AWAY: u16 = 1001;

struct Shared {
    cfg: ServerConfig,
    registry: Mutex<Registry>,
    metrics: Metrics,
    shutdown: CancellationToken,
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
}

impl Outbox {
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
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/ws`, what clients connect to.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
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
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { serve(cfg, listener, stop.cancelled_owned()).await });
    Ok(ServerHandle {
        addr,
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
    let shared = Arc::new(Shared {
        cfg,
        registry: Mutex::new(Registry::default()),
        metrics: Metrics::new(),
        shutdown: CancellationToken::new(),
    });
    let app = router(shared.clone());
    let token = shared.shutdown.clone();
    let result = axum::serve(listener, app)
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

async fn ws_upgrade(State(shared): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    let max = shared.cfg.max_message;
    ws.max_message_size(max)
        .max_frame_size(max)
        // Signalling messages are small; the 128 KiB default read buffer per
        // connection would dominate memory at 18,000 peers.
        .read_buffer_size(1024)
        .on_upgrade(move |socket| connection(shared, socket))
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
    let me = Outbox {
        tx,
        kill: kill.clone(),
    };
    me.push(&Event::Hello(Hello {
        version: VERSION,
        peer: peer.to_string(),
        k: cfg.k,
        k1: cfg.k1,
        ice_servers: cfg.ice_servers.clone(),
    }));
    shared.registry().connect(peer.clone(), me.clone());
    debug!(peer = %peer, "connected");

    let (mut sink, mut stream) = socket.split();
    let mut ping = interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_pong = Instant::now();
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
