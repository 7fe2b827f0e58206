//! One WebSocket's task: it owns the socket, sends what is queued for its
//! peer in batches, pings, limits the peer's message rate, and hands each
//! parsed request to the registry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::liveness::{Dead, Liveness, PROBE_DEADLINE};
use super::registry::PeerId;
use super::{new_id, turn, Shared};
use crate::protocol::{ErrorCode, Event, Hello, ProtocolError, Request, VERSION};

/// WebSocket close codes the protocol names.
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_GOING_AWAY: u16 = 1001;

/// One peer's outgoing queue, and the switch that drops it when it lags.
#[derive(Clone)]
pub(super) struct Outbox {
    tx: mpsc::Sender<Utf8Bytes>,
    kill: CancellationToken,
    /// Asks the connection to check its peer now ([`super::PROBE_DEADLINE`]).
    probe: Arc<Notify>,
}

impl Outbox {
    pub(super) fn probe(&self) {
        self.probe.notify_one();
    }

    pub(super) fn push(&self, ev: &Event) {
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

pub(super) async fn run(shared: Arc<Shared>, socket: WebSocket) {
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
    {
        let mut st = shared.peers();
        st.registry.connect(peer.clone());
        st.outboxes.insert(peer.clone(), me.clone());
    }
    debug!(peer = %peer, "connected");

    let (mut sink, mut stream) = socket.split();
    let mut ping = interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut live = Liveness::new(Instant::now(), cfg.ping_interval);
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
            _ = probe.notified(), if !live.is_checking() => {
                live.start_check(Instant::now());
                let sent = tokio::select! {
                    r = sink.send(Message::Ping(Default::default())) => r,
                    _ = kill.cancelled() => continue,
                };
                if sent.is_err() {
                    break Exit::Gone;
                }
            }
            _ = sleep_until(live.check_deadline().unwrap_or_else(Instant::now)),
                if live.is_checking() =>
            {
                if live.check_expired() == Err(Dead::FailedCheck) {
                    info!(peer = %peer, "a child said it went silent, and it did not answer a ping within {PROBE_DEADLINE:?}; removing");
                    break Exit::Gone;
                }
            }
            _ = ping.tick() => {
                if live.tick(Instant::now()) == Err(Dead::Silent) {
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
                        live.pong(Instant::now());
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
                        dispatch(&shared, &peer, req)
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

    shared.apply(|reg| reg.disconnect(&peer));
    shared.peers().outboxes.remove(&peer);
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

/// Hands a request to the registry's method for its type and carries out
/// what it caused; `Err` is the refusal to send back.
fn dispatch(shared: &Arc<Shared>, peer: &PeerId, req: Request) -> Result<(), ProtocolError> {
    let delivery = {
        let mut st = shared.peers();
        let reg = &mut st.registry;
        let (check, result) = match req {
            Request::Create(c) => (None, reg.create(peer, c)),
            Request::Join(j) => (None, reg.join(peer, j)),
            Request::Signal(s) => (None, reg.signal(peer, s)),
            Request::Reconnect => {
                let r = reg.reconnect(peer);
                (r.check, r.result)
            }
            Request::Leave => (None, reg.leave(peer)),
            Request::Reclaim(r) => (None, reg.reclaim(peer, r, std::time::Instant::now())),
            Request::Stats(s) => (None, Ok(reg.stats(peer, s))),
            Request::Reach(r) => (None, reg.reach(peer, r)),
        };
        // Only wakes the peer's task, which sends the ping itself.
        if let Some(outbox) = check.and_then(|p| st.outboxes.get(&p)) {
            outbox.probe();
        }
        st.route(result?)
    };
    shared.deliver(delivery);
    Ok(())
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
