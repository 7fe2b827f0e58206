//! A tree member's life: reacting to the signalling server's events by
//! opening, moving and closing peer connections. The same loop serves the
//! file source (no parent; its hub is fed from the file) and the relay (its
//! hub is fed by the parent). Where the node sits is the server's business:
//! this code only follows `child`, `child-gone` and `parent`.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signalling::client::{Client, ClientError, Events};
use signalling::protocol::{Event, Role, Stats};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use webrtc::peer_connection::{RTCIceCandidateType, RTCPeerConnectionState};

use crate::downstream::Downstream;
use crate::forward::{DataMsg, Hub, PacketLeg, TrackHub};
use crate::parent_watch::{Backoff, ParentWatch};
use crate::peer::{Applied, Link, LinkConfig, LinkEvent};
use crate::record::Recorder;
use crate::upstream::Upstream;
use crate::whep::WhepEgress;
use crate::RelayError;

/// What a node does besides forwarding.
pub struct NodeOptions {
    pub link: LinkConfig,
    /// Record the first video track to this IVF file.
    pub record: Option<PathBuf>,
    /// Every data-channel message received from the parent.
    pub data_out: Option<mpsc::UnboundedSender<DataMsg>>,
    /// A parent that has sent media and then nothing for this long is
    /// replaced (`reconnect`): frozen or cut off, its connection may never
    /// close by itself.
    pub silence: Duration,
    /// A parent whose connection is not up this long after it was assigned
    /// is replaced too (the seed's `timeout`).
    pub upstream_timeout: Duration,
    /// This node's WHEP endpoint, reported to the server (`stats`) so
    /// `/api/trees/{id}` shows where players find room.
    pub whep: Option<Whep>,
}

/// A node's WHEP endpoint.
pub struct Whep {
    pub url: String,
    pub egress: Arc<WhepEgress>,
}

/// How often a node with WHEP reports its URL and free slots (PROTOCOL.md:
/// `stats` at most once a second).
const WHEP_STATS_EVERY: Duration = Duration::from_secs(2);

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            link: LinkConfig::default(),
            record: None,
            data_out: None,
            silence: Duration::from_millis(1500),
            upstream_timeout: Duration::from_secs(10),
            whep: None,
        }
    }
}

/// How a node gets its seat back after losing the signalling server (it
/// restarted, or the network dropped): reconnect with backoff, then reclaim
/// the tree (a source) or join it again (a relay).
pub struct Rejoin {
    pub connect: Box<dyn Fn() -> ConnectFuture + Send + Sync>,
    pub seat: Seat,
    /// Stop trying after this long without success.
    pub give_up_after: Duration,
}

pub type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<(Client, Events), ClientError>> + Send>>;

/// The place a node takes again.
pub enum Seat {
    Source {
        tree: String,
        token: String,
        k: Option<u32>,
    },
    Relay {
        tree: String,
        k: Option<u32>,
    },
}

/// The role a joining node announces. One that takes no children amplifies
/// nothing: as a `peer` it is an ordinary leaf, which a later relay may
/// displace by rule 4, instead of a "relay" no rule may move, which would
/// keep every later relay out of a tree whose slots it fills.
pub fn join_role(k: Option<u32>) -> Role {
    if k == Some(0) {
        Role::Peer
    } else {
        Role::Relay
    }
}

/// How often the node looks at its parent's health.
const HEALTH_CHECK: Duration = Duration::from_millis(250);
/// Children wait this long at most for the data channels the parent's offer
/// announced. The parent's tracks arrive with its offer, its channels only
/// once SCTP is up; a child offered the tracks alone needs a second
/// negotiation to add SCTP to a connection that just came up, and in
/// webrtc-rs that race once left a child without its data channel.
const CHANNELS_WAIT: Duration = Duration::from_secs(2);

/// Why a node stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The server closed the tree (`reason` as it said).
    TreeClosed(String),
    /// The caller's shutdown future completed.
    Shutdown,
}

pub struct Node {
    client: Client,
    events: Events,
    opts: NodeOptions,
    hub: Arc<Hub>,
    overflow: mpsc::UnboundedReceiver<u64>,
    links_tx: mpsc::UnboundedSender<(String, LinkEvent)>,
    links_rx: mpsc::UnboundedReceiver<(String, LinkEvent)>,
    /// The parent the server named, and when to ask for another.
    watch: ParentWatch,
    upstream: Option<Upstream>,
    rejoin: Option<Rejoin>,
    children: HashMap<String, Child>,
    /// Children announced before this node had anything to offer them.
    waiting: Vec<String>,
    recording: bool,
    /// What the server was last told of this node's reachability (rule 8):
    /// only a TURN relay reaches it.
    relayed: bool,
}

/// A child and the state of its negotiation.
struct Child {
    down: Downstream,
    /// An offer is out; another must wait for its answer, or the answer
    /// would meet a newer local description (glare with ourselves).
    offer_out: bool,
    /// The hub changed while an offer was out.
    dirty: bool,
}

impl Node {
    pub fn new(
        client: Client,
        events: Events,
        hub: Arc<Hub>,
        overflow: mpsc::UnboundedReceiver<u64>,
        parent: Option<String>,
        opts: NodeOptions,
    ) -> Node {
        let (links_tx, links_rx) = mpsc::unbounded_channel();
        let watch = ParentWatch::new(parent, Instant::now(), opts.silence, opts.upstream_timeout);
        Node {
            client,
            events,
            opts,
            hub,
            overflow,
            links_tx,
            links_rx,
            watch,
            upstream: None,
            rejoin: None,
            children: HashMap::new(),
            waiting: Vec::new(),
            recording: false,
            relayed: false,
        }
    }

    /// After losing the signalling server, get the seat back this way
    /// instead of stopping.
    pub fn rejoin_with(mut self, rejoin: Rejoin) -> Node {
        self.rejoin = Some(rejoin);
        self
    }

    /// Serves until the tree closes, the server goes away (for good, with
    /// [`Node::rejoin_with`]), or `shutdown`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Exit, RelayError> {
        tokio::pin!(shutdown);
        let mut hub_changes = self.hub.subscribe();
        let mut health = tokio::time::interval(HEALTH_CHECK);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut whep_stats = tokio::time::interval(WHEP_STATS_EVERY);
        let has_whep = self.opts.whep.is_some();
        let exit = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(Exit::Shutdown),
                _ = health.tick() => {
                    self.check_upstream();
                    self.open_waiting().await;
                }
                _ = whep_stats.tick(), if has_whep => self.report_whep().await,
                ev = self.events.next() => {
                    let Some(ev) = ev else {
                        match self.take_seat_again(shutdown.as_mut()).await {
                            Ok(true) => continue,
                            Ok(false) => break Ok(Exit::Shutdown),
                            Err(e) => break Err(e),
                        }
                    };
                    if let Some(exit) = self.on_event(ev).await {
                        break Ok(exit);
                    }
                }
                Some((from, ev)) = self.links_rx.recv() => self.on_link_event(from, ev).await,
                Some(leg) = self.overflow.recv() => self.drop_slow_child(leg).await,
                changed = hub_changes.changed() => {
                    if changed.is_ok() {
                        self.on_hub_changed().await;
                    }
                }
            }
        };
        self.close_all().await;
        if exit.as_ref().is_ok_and(|e| *e == Exit::Shutdown) {
            // Said rather than left to the socket's close: a source that
            // leaves closes its tree at once instead of after the grace
            // period, and a relay's children are re-placed without delay.
            let leave = tokio::time::timeout(Duration::from_secs(1), self.client.leave());
            if let Ok(Err(e)) = leave.await {
                debug!("leave: {e}");
            }
        }
        exit
    }

    async fn report_whep(&self) {
        let Some(whep) = &self.opts.whep else {
            return;
        };
        let mut stats = Stats::default();
        stats.extra.insert("whep".into(), whep.url.clone().into());
        stats
            .extra
            .insert("whep_free".into(), whep.egress.free().await.into());
        if let Err(e) = self.client.stats(stats) {
            debug!("stats: {e}");
        }
    }

    async fn on_event(&mut self, ev: Event) -> Option<Exit> {
        match ev {
            Event::Child(c) => {
                info!(child = %c.peer, "new child");
                if !self.ready_for_children() {
                    self.waiting.push(c.peer);
                } else if let Err(e) = self.open_child(&c.peer).await {
                    warn!(child = %c.peer, "cannot connect to child: {e}");
                }
            }
            Event::ChildGone(c) => {
                self.waiting.retain(|w| *w != c.peer);
                if let Some(child) = self.children.remove(&c.peer) {
                    info!(child = %c.peer, "child gone; closing its connection");
                    child.down.close().await;
                }
            }
            Event::Parent(p) => {
                // Even the same parent again means a fresh connection from
                // it (it was told `child-gone`, then `child`).
                info!(parent = %p.parent, depth = p.depth, "new parent");
                if let Some(up) = self.upstream.take() {
                    up.close(&self.hub).await;
                }
                self.watch.named(p.parent, Instant::now());
            }
            Event::Signal(s) => self.on_signal(&s.from, s.data.get()).await,
            Event::TreeClosed(t) => return Some(Exit::TreeClosed(t.reason)),
            Event::Error(e) => debug!("server: {}: {}", e.code, e.message),
            other => debug!("ignoring {}", other.type_name()),
        }
        None
    }

    async fn on_signal(&mut self, from: &str, data: &str) {
        if self.watch.parent() == Some(from) {
            if self.upstream.is_none() {
                match Link::new(&self.opts.link, &self.client, from, self.links_tx.clone()).await {
                    Ok(link) => self.upstream = Some(Upstream::new(link)),
                    Err(e) => {
                        warn!(parent = %from, "cannot create the upstream connection: {e}");
                        return;
                    }
                }
            }
            if let Some(up) = &self.upstream {
                if let Err(e) = up.link.on_signal(data).await {
                    warn!(parent = %from, "bad signal from parent: {e}");
                }
            }
            return;
        }
        let Some(child) = self.children.get_mut(from) else {
            debug!(peer = %from, "signal from a peer that is not a neighbour now");
            return;
        };
        let applied = match child.down.link.on_signal(data).await {
            Ok(a) => a,
            Err(e) => {
                warn!(child = %from, "bad signal from child: {e}");
                return;
            }
        };
        if applied == Applied::Answer {
            child.offer_out = false;
            if std::mem::take(&mut child.dirty) {
                Self::sync_child(from, child, &self.hub).await;
            }
        }
    }

    async fn on_link_event(&mut self, from: String, ev: LinkEvent) {
        let from_parent = self.watch.parent() == Some(from.as_str())
            && self
                .upstream
                .as_ref()
                .is_some_and(|u| u.link.remote == from);
        match ev {
            LinkEvent::Track(track, packets) if from_parent => {
                let Some(up) = self.upstream.as_mut() else {
                    return;
                };
                match up.attach(&self.hub, track).await {
                    Ok(t) => {
                        // The recorder's leg before the first packet flows,
                        // so it gets the replayed group too.
                        self.maybe_record(&t);
                        if let Some(up) = self.upstream.as_mut() {
                            up.start(t, packets);
                        }
                    }
                    Err(e) => warn!("upstream track refused: {e}"),
                }
            }
            LinkEvent::DataChannel(dc) if from_parent => {
                let Some(up) = self.upstream.as_mut() else {
                    return;
                };
                if let Err(e) = up
                    .on_data_channel(&self.hub, dc, self.opts.data_out.clone())
                    .await
                {
                    warn!("upstream data channel refused: {e}");
                }
            }
            LinkEvent::State(state) => {
                debug!(peer = %from, ?state, "connection state");
                if let Some(child) = self.children.get(&from) {
                    if state == RTCPeerConnectionState::Connected {
                        info!(child = %from, "child connected");
                        child.down.connected.store(true, Ordering::Release);
                    }
                } else if from_parent && state == RTCPeerConnectionState::Connected {
                    info!(parent = %from, "connected to parent");
                    self.watch.connected();
                    self.report_reachability().await;
                } else if from_parent && state == RTCPeerConnectionState::Failed {
                    if let Some(why) = self.watch.failed(Instant::now()) {
                        self.ask_for_another_parent(&why);
                    }
                }
            }
            // Children never open tracks or channels towards their parent.
            LinkEvent::Track(..) | LinkEvent::DataChannel(_) => {}
        }
    }

    /// The signalling connection is gone. Every peer connection goes too:
    /// the server re-places this node's children and its parent's slot at
    /// once, so they would be stale. Then reconnect with backoff and take
    /// the seat again. Ok(false): `shutdown` came first.
    async fn take_seat_again(
        &mut self,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, RelayError> {
        if self.rejoin.is_none() {
            return Err(RelayError::SignallingLost);
        }
        warn!("lost the signalling server; closing peer connections and reconnecting");
        self.close_all().await;
        self.waiting.clear();
        self.watch.lost();
        let give_up_after = self
            .rejoin
            .as_ref()
            .map_or(Duration::ZERO, |r| r.give_up_after);
        let mut backoff = Backoff::new(Instant::now(), give_up_after);
        loop {
            let entropy = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            tokio::select! {
                _ = shutdown.as_mut() => return Ok(false),
                _ = tokio::time::sleep(backoff.wait(entropy.into())) => {}
            }
            match self.try_seat().await {
                Ok(()) => return Ok(true),
                Err(e) => {
                    if let Err(secs) = backoff.failed(Instant::now()) {
                        return Err(RelayError::Rejoin(format!("gave up after {secs} s: {e}")));
                    }
                    warn!(
                        "reconnecting: {e}; next try in {} ms",
                        backoff.delay().as_millis()
                    );
                }
            }
        }
    }

    async fn try_seat(&mut self) -> Result<(), ClientError> {
        let Some(rejoin) = &self.rejoin else {
            return Err(ClientError::Closed);
        };
        let (client, events) = (rejoin.connect)().await?;
        match &rejoin.seat {
            Seat::Source { tree, token, k } => {
                client.reclaim(tree, token, *k).await?;
                info!(tree = %tree, peer = %client.peer_id(), "took the tree back");
            }
            Seat::Relay { tree, k } => {
                let j = client.join(tree, *k, Some(join_role(*k))).await?;
                info!(
                    tree = %tree,
                    peer = %client.peer_id(),
                    parent = %j.parent,
                    depth = j.depth,
                    "joined the tree again"
                );
                self.watch.named(j.parent, Instant::now());
            }
        }
        // A new connection to the server starts out directly reachable; the
        // next upstream says otherwise if it must.
        self.relayed = false;
        self.opts.link.ice_servers = client.hello().ice_servers.clone();
        self.client = client;
        self.events = events;
        Ok(())
    }

    /// Children notice a failed parent first, from the media (parent_watch.rs).
    fn check_upstream(&mut self) {
        let last_media = self.upstream.as_ref().and_then(|u| u.activity.last_media());
        if let Some(why) = self.watch.poll(Instant::now(), last_media) {
            self.ask_for_another_parent(&why);
        }
    }

    /// Rule 8: a member whose link to its parent could only be made through
    /// its own TURN allocation (its candidate in the selected pair is a
    /// relay: none of its direct candidates reached the parent) would feed
    /// its children through TURN too, twice the relay's traffic and a
    /// longer path. It tells the server, which places children elsewhere.
    async fn report_reachability(&mut self) {
        let Some(up) = &self.upstream else {
            return;
        };
        let Some((local, remote)) = up.link.selected_pair().await else {
            return;
        };
        debug!(?local, ?remote, "candidate pair to the parent");
        let relayed = local == RTCIceCandidateType::Relay;
        if relayed == self.relayed {
            return;
        }
        if relayed {
            info!(
                "only a TURN relay reaches this member (its candidate toward the parent is a \
                 relay); the server will place no children here"
            );
        } else {
            info!("directly reachable again; the server may place children here");
        }
        match self.client.reach(relayed) {
            Ok(()) => self.relayed = relayed,
            Err(e) => warn!("cannot tell the server this member's reachability: {e}"),
        }
    }

    /// `reconnect`: the server moves this node (with its subtree) under
    /// another parent and says so with `parent`.
    fn ask_for_another_parent(&self, why: &str) {
        warn!(parent = ?self.watch.parent(), "{why}; asking the server for another parent");
        let client = self.client.clone();
        tokio::spawn(async move {
            // Success arrives as a `parent` event too, handled in the loop.
            if let Err(e) = client.reconnect().await {
                warn!("reconnect refused: {e}");
            }
        });
    }

    async fn open_child(&mut self, peer: &str) -> Result<(), RelayError> {
        let link = Link::new(&self.opts.link, &self.client, peer, self.links_tx.clone()).await?;
        let down = Downstream::open(link, &self.hub).await?;
        self.children.insert(
            peer.to_owned(),
            Child {
                down,
                offer_out: true,
                dirty: false,
            },
        );
        Ok(())
    }

    /// Children are offered the hub once it has something, and, when the
    /// parent announced data channels, once those are in (or after
    /// `CHANNELS_WAIT`), so that the first offer carries everything.
    fn ready_for_children(&self) -> bool {
        let (tracks, channels) = (self.hub.tracks(), self.hub.channels());
        if tracks.is_empty() && channels.is_empty() {
            return false;
        }
        let channels_due = channels.is_empty()
            && self
                .upstream
                .as_ref()
                .is_some_and(|u| u.link.remote_has_data())
            && self.watch.since().elapsed() < CHANNELS_WAIT;
        !channels_due
    }

    async fn open_waiting(&mut self) {
        if self.waiting.is_empty() || !self.ready_for_children() {
            return;
        }
        for peer in std::mem::take(&mut self.waiting) {
            if let Err(e) = self.open_child(&peer).await {
                warn!(child = %peer, "cannot connect to child: {e}");
            }
        }
    }

    async fn on_hub_changed(&mut self) {
        self.open_waiting().await;
        for (peer, child) in self.children.iter_mut() {
            if child.offer_out {
                child.dirty = true;
            } else {
                Self::sync_child(peer, child, &self.hub).await;
            }
        }
    }

    async fn sync_child(peer: &str, child: &mut Child, hub: &Hub) {
        match child.down.sync(hub).await {
            Ok(offered) => child.offer_out |= offered,
            Err(e) => warn!(child = %peer, "renegotiation failed: {e}"),
        }
    }

    async fn drop_slow_child(&mut self, leg: u64) {
        let Some(peer) = self
            .children
            .iter()
            .find(|(_, c)| c.down.owns_message_leg(leg))
            .map(|(p, _)| p.clone())
        else {
            return;
        };
        warn!(
            child = %peer,
            "child's data-channel backlog passed {} messages; dropping it",
            crate::forward::LEG_QUEUE_MESSAGES
        );
        if let Some(child) = self.children.remove(&peer) {
            child.down.close().await;
        }
    }

    /// `--record`: the first video track also feeds a recorder.
    fn maybe_record(&mut self, track: &Arc<TrackHub>) {
        let Some(path) = self.opts.record.clone() else {
            return;
        };
        if self.recording || !track.spec.codec.is_video() {
            return;
        }
        self.recording = true;
        let (tx, mut rx) = mpsc::channel(4096);
        track.add_leg(PacketLeg {
            id: self.hub.leg_id(),
            tx,
            lagged: Arc::default(),
        });
        let codec = track.spec.codec;
        let track = track.clone();
        tokio::spawn(async move {
            let mut rec = match Recorder::create(&path, codec) {
                Ok(r) => r,
                Err(e) => {
                    warn!("cannot record to {}: {e}", path.display());
                    return;
                }
            };
            info!("recording {} to {}", codec.mime(), path.display());
            loop {
                // A hole in the sequence is given up at its deadline even if
                // no packet comes to notice it.
                let deadline = rec.deadline();
                let pushed = tokio::select! {
                    q = rx.recv() => match q {
                        Some(q) if q.gap_before => rec.push_after_gap(&q.packet),
                        Some(q) => rec.push(&q.packet),
                        None => break,
                    },
                    _ = sleep_until(deadline) => rec.poll(Instant::now()),
                };
                if let Err(e) = pushed {
                    warn!("recording stopped: {e}");
                    break;
                }
                // The hub merges these into one PLI per 500 ms.
                if rec.waiting_for_keyframe() {
                    track.request_keyframe().await;
                }
            }
            if let Err(e) = rec.finish() {
                warn!("finishing {}: {e}", path.display());
            }
        });
    }

    async fn close_all(&mut self) {
        for (_, child) in self.children.drain() {
            child.down.close().await;
        }
        if let Some(up) = self.upstream.take() {
            up.close(&self.hub).await;
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
