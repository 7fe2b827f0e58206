//! One WebRTC peer connection to a tree neighbour, and the signalling glue
//! that carries its SDP and ICE candidates through the signalling server.
//!
//! Both ends of every tree edge are built here, so the settings the relay
//! depends on live in one place: loopback-or-chosen UDP addresses, codecs
//! registered before the default interceptors (or the SDP loses its
//! nack/pli feedback lines), a wide SRTP replay window (NACK retransmissions
//! arrive 100 ms late and a 64-packet window drops them), and the feedback tap
//! that lets PLI/FIR from children reach the application.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use signalling::client::Client;
use signalling::protocol::IceServer;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceCandidateType, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSdpType,
    RTCSessionDescription, Registry, SettingEngineBuilder,
};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{NackResponderBuilder, Slot};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_RTX;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};

use crate::feedback::FeedbackTap;
use crate::media::{Codec, ALL_CODECS};
use crate::nack::AskForRepairs;
use crate::relayed_checks::RelayedCheckGate;
use crate::resend::ChildRepairs;
use crate::rtx::UnwrapRtx;
use crate::runtime::RelayRuntime;
use crate::RelayError;

/// How every peer connection of this process is built.
#[derive(Clone, Debug, Default)]
pub struct LinkConfig {
    /// UDP addresses to gather host candidates on. Empty: every interface
    /// (webrtc-rs then skips loopback, so tests pass `127.0.0.1:0`).
    pub udp_addrs: Vec<SocketAddr>,
    /// From the server's `hello`.
    pub ice_servers: Vec<IceServer>,
}

/// Packets NACKed by a child may arrive this late and must not be replayed
/// away: 64 (the default) lost retransmissions at 15k packets/s.
const SRTP_REPLAY_WINDOW: usize = 8192;

/// ICE liveness: with nothing heard for 2.5 s a link is `disconnected`, after
/// 2.5 s more `failed`, and the node replaces it (a child asks for another
/// parent). webrtc-rs's 5 s + 25 s would leave a data-only tree, which has no
/// media silence to notice, without a working parent for half a minute.
/// Keepalives every 500 ms keep an idle but healthy link well inside that.
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_millis(2500);
const ICE_FAILED_AFTER: Duration = Duration::from_millis(2500);
const ICE_KEEPALIVE: Duration = Duration::from_millis(500);

/// Connectivity checks every 50 ms (RFC 8445's Ta; webrtc-rs waits 200 ms),
/// for as long as its default (1.4 s) before a candidate pair counts as
/// failed: each 200 ms tick missed was a step of a re-placed child's
/// recovery.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
const ICE_BINDING_REQUESTS: u16 = 28;
/// A pair learned from the other side's check (peer-reflexive) is used at
/// once. With candidates trickled through the server a child's check often
/// arrives before its candidate does, and webrtc-rs's 1 s wait for a better
/// pair was the largest outlier in the churn driver's recovery times. A check
/// that came through a TURN server looks peer-reflexive too: relayed_checks.rs
/// holds those back for the relay wait.
const ICE_PRFLX_WAIT: Duration = Duration::ZERO;

/// How this process treats the `.local` names that browsers hide their
/// addresses behind: resolved by mDNS queries (webrtc-rs's `QueryOnly`) where
/// that works. webrtc-rs opens a multicast socket for every connection in that
/// mode and fails the whole connection when it cannot, and joining the group
/// needs a route for 224.0.0.251, which a host without a default route (an
/// isolated LAN, a venue network, a container without a gateway) does not
/// have. mDNS is optional here: a relay answers a browser's checks at once and
/// learns its address from them (peer-reflexive candidates). So one probe per
/// process decides, and a failure is said once.
fn mdns_mode() -> MulticastDnsMode {
    static PROBED: OnceLock<()> = OnceLock::new();
    PROBED.get_or_init(|| {
        if let Err(e) = rtc::mdns::MulticastSocket::new().into_std() {
            mdns_failed(&e);
        }
    });
    if MDNS_OFF.load(Ordering::Relaxed) {
        MulticastDnsMode::Disabled
    } else {
        MulticastDnsMode::QueryOnly
    }
}

static MDNS_OFF: AtomicBool = AtomicBool::new(false);

/// mDNS off for the rest of the process; said once.
fn mdns_failed(e: &dyn std::fmt::Display) {
    if !MDNS_OFF.swap(true, Ordering::Relaxed) {
        info!(
            "mDNS is off ({e}): `.local` ICE candidates will not be resolved; peers that hide \
             their addresses still connect through their own checks"
        );
    }
}

/// webrtc-rs reports a socket it cannot open as an I/O error, in text.
fn is_io_error(e: &RelayError) -> bool {
    matches!(e, RelayError::Webrtc(w) if w.to_string().contains("os error"))
}

/// A TURN server is used only after 500 ms (webrtc-rs waits 2 s): a direct
/// pair that works is usually valid by then, and a path that needs the relay
/// (both ends behind symmetric NATs) took 2.5-2.8 s to carry media with the
/// default. Checks that arrive through a TURN server before its relay
/// candidate is signalled wait as long (relayed_checks.rs).
const ICE_RELAY_WAIT: Duration = Duration::from_millis(500);

/// The ICE servers a link can use, from the server's `hello`. webrtc-rs
/// refuses to build any connection when one `turn:` URL lacks credentials,
/// and supports only `stun:` and `turn:` over UDP: anything else would cost
/// every connection instead of only the candidates that server could give.
/// Each URL left out is said once per process.
pub fn usable_ice_servers(servers: &[IceServer]) -> Vec<RTCIceServer> {
    static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut out = Vec::new();
    for s in servers {
        let username = s.username.clone().unwrap_or_default();
        let credential = s.credential.clone().unwrap_or_default();
        let urls: Vec<String> = s
            .urls
            .iter()
            .filter(|url| {
                let why = ice_url_problem(url, !username.is_empty() && !credential.is_empty());
                if let Some(why) = why {
                    let mut said = SAID.lock().unwrap_or_else(PoisonError::into_inner);
                    if !said.contains(url) {
                        said.push((*url).clone());
                        warn!("ICE server {url} left out: {why}");
                    }
                }
                why.is_none()
            })
            .cloned()
            .collect();
        if !urls.is_empty() {
            out.push(RTCIceServer {
                urls,
                username: username.clone(),
                credential: credential.clone(),
            });
        }
    }
    out
}

/// Why webrtc-rs 0.21 cannot use this ICE server URL, if it cannot.
fn ice_url_problem(url: &str, has_credentials: bool) -> Option<&'static str> {
    let (scheme, rest) = url.split_once(':')?;
    let transport = rest.split_once("?transport=").map(|(_, t)| t);
    match scheme {
        "stun" if transport.is_none() => None,
        "stun" => Some("a stun: URL takes no ?transport"),
        "turn" if transport.is_some_and(|t| t != "udp") => {
            Some("webrtc-rs reaches TURN servers over UDP only")
        }
        "turn" if !has_credentials => Some("a turn: server needs a username and credential"),
        "turn" => None,
        "stuns" | "turns" => Some("webrtc-rs does not support STUN/TURN over TLS"),
        _ => Some("not a stun: or turn: URL"),
    }
}

/// Bytes a data channel may hold unacknowledged before sends wait.
const DATA_CHANNEL_SEND_BUFFER: usize = 1 << 20;

/// A remote track's packets, read from the moment it appeared.
pub type TrackPackets = mpsc::UnboundedReceiver<rtc::rtp::packet::Packet>;

/// What a link reports to the node that owns it.
pub enum LinkEvent {
    Track(Arc<dyn TrackRemote>, TrackPackets),
    DataChannel(Arc<dyn DataChannel>),
    State(RTCPeerConnectionState),
}

/// Events tagged with the neighbour they came from.
pub type LinkEvents = mpsc::UnboundedSender<(String, LinkEvent)>;

/// What a `signal` payload turned out to be, once applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// An offer, now answered.
    Offer,
    Answer,
    Candidate,
    /// End of candidates, or a form this version does not know.
    Nothing,
}

/// Where a link's own descriptions and candidates go.
#[derive(Clone)]
pub enum Signals {
    /// To the neighbour through the signalling server (PROTOCOL.md), each
    /// candidate as it is found.
    Tree(Client),
    /// Back in the reply to one HTTP request (WHIP, WHEP): the answer holds
    /// every candidate, so nothing is sent on its own.
    InAnswer,
}

impl Signals {
    fn send(&self, to: &str, data: &Value) -> Result<(), RelayError> {
        match self {
            Signals::Tree(client) => Ok(client.signal(to, data)?),
            Signals::InAnswer => Ok(()),
        }
    }
}

/// How long an answer for an HTTP exchange waits for candidate gathering:
/// host candidates take milliseconds, a STUN or TURN server that does not
/// reply must not hold the publisher's request for long.
const GATHER_WAIT: Duration = Duration::from_secs(3);

/// One peer connection with one neighbour (the parent or a child).
pub struct Link {
    pub pc: Arc<dyn PeerConnection>,
    pub remote: String,
    signals: Signals,
    /// Becomes true when candidate gathering is complete.
    gathered: tokio::sync::watch::Receiver<bool>,
    /// Candidates that arrived before the description they belong to
    /// (werift and browsers send them so); applied once it is set.
    early_candidates: Mutex<Vec<RTCIceCandidateInit>>,
    remote_set: AtomicBool,
    /// The remote's last description had an `m=application` section: it
    /// has (or will open) data channels.
    remote_has_data: AtomicBool,
}

struct Handler {
    remote: String,
    signals: Signals,
    gathered: tokio::sync::watch::Sender<bool>,
    events: LinkEvents,
    gate: Arc<RelayedCheckGate>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, ev: RTCPeerConnectionIceEvent) {
        if ev.candidate.typ == RTCIceCandidateType::Relay {
            // The server it came from relays the other end's checks too.
            if let Ok(ip) = ev.candidate.address.parse() {
                self.gate.add_relay(ip);
            }
        }
        let Ok(mut init) = ev.candidate.to_json() else {
            return;
        };
        // webrtc-rs leaves sdpMid empty; everything is bundled on the first
        // m-line, whose mid is "0", and browsers reject an empty mid.
        init.sdp_mid = Some("0".into());
        init.sdp_mline_index = Some(0);
        if let Err(e) = self
            .signals
            .send(&self.remote, &json!({ "candidate": init }))
        {
            debug!(peer = %self.remote, "candidate not sent: {e}");
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathered
            .send_replace(state == RTCIceGatheringState::Complete);
    }

    // These run on the connection's own driver task: hand the objects over
    // and return at once, or the connection stalls.
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Read at once. webrtc-rs queues 256 packets per track and drops the
        // rest, after its NACK generator counted them as received, so they
        // are never repaired; a replayed group of pictures alone can be that
        // long, and the node takes the track only when its loop gets to it.
        // Unbounded: the consumer (`TrackHub::forward`) never waits.
        let (tx, rx) = mpsc::unbounded_channel();
        let reading = track.clone();
        tokio::spawn(async move {
            while let Some(ev) = reading.poll().await {
                let sent = match ev {
                    TrackRemoteEvent::OnRtpPacket(p) => tx.send(p).is_ok(),
                    TrackRemoteEvent::OnEnded => false,
                    _ => true,
                };
                if !sent {
                    break;
                }
            }
        });
        let _ = self
            .events
            .send((self.remote.clone(), LinkEvent::Track(track, rx)));
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self
            .events
            .send((self.remote.clone(), LinkEvent::DataChannel(dc)));
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self
            .events
            .send((self.remote.clone(), LinkEvent::State(state)));
    }
}

/// Repairs by NACK, hop by hop. webrtc-rs's responder keeps 1024 sent
/// packets by default, sized for one browser stream: at the relay's 15,000
/// packets/s a loss leaves it before the NACK can come back. Here: a send
/// history of 136 ms at that rate and seconds at video rates (it
/// preallocates a slot per packet, ~250 KB per child and track). NACKs are
/// ours (nack.rs).
pub(crate) const NACK_HISTORY_PACKETS: u16 = 2048;

/// The codecs every link offers and accepts (each video codec with its RTX
/// companion, so repairs to browsers travel as RFC 4588 retransmissions),
/// and the interceptor chain: webrtc-rs's default one with the NACK history
/// above and our NACKs (nack.rs), RTX unwrapped before them (rtx.rs), and
/// the feedback tap (feedback.rs).
fn media_engine_and_interceptors(codecs: &[Codec]) -> Result<(MediaEngine, Registry), RelayError> {
    let mut me = MediaEngine::default();
    // Codecs before feedback: `register_feedback` adds its lines to the
    // codecs registered so far, and the SDP needs them (nack, nack pli).
    for &codec in codecs {
        for (rtp_codec, payload_type, _) in codec.sdp_variants() {
            let params = RTCRtpCodecParameters {
                rtp_codec,
                payload_type,
            };
            me.register_codec(params, rtp_kind(codec))?;
        }
    }
    for parameter in ["", "pli"] {
        me.register_feedback(
            RTCPFeedback {
                typ: "nack".into(),
                parameter: parameter.into(),
            },
            RtpCodecKind::Video,
        );
    }
    let registry = Registry::new().with(
        Slot::NackResponder,
        NackResponderBuilder::new()
            .with_size(NACK_HISTORY_PACKETS)
            .build(),
    );
    let registry = AskForRepairs::register(registry);
    configure_simulcast_extension_headers(&mut me)?;
    let registry = configure_twcc_receiver_only(registry, &mut me)?;
    let registry = configure_rtcp_reports(registry);
    // After the feedback: retransmissions are not themselves NACKed.
    for &codec in codecs {
        for (_, apt, rtx) in codec.sdp_variants() {
            let Some(rtx) = rtx else {
                continue;
            };
            let params = RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_RTX.into(),
                    clock_rate: codec.clock_rate(),
                    channels: 0,
                    sdp_fmtp_line: format!("apt={apt}"),
                    rtcp_feedback: vec![],
                },
                payload_type: rtx,
            };
            me.register_codec(params, RtpCodecKind::Video)?;
        }
    }
    let registry = UnwrapRtx::register(registry);
    let registry = FeedbackTap::register(registry);
    let registry = ChildRepairs::register(registry);
    Ok((me, registry))
}

pub fn rtp_kind(codec: Codec) -> RtpCodecKind {
    if codec.is_video() {
        RtpCodecKind::Video
    } else {
        RtpCodecKind::Audio
    }
}

impl Link {
    /// Builds the peer connection to tree neighbour `remote`. Nothing is
    /// sent until the caller offers (the upstream end always offers, rule 1).
    pub async fn new(
        cfg: &LinkConfig,
        client: &Client,
        remote: &str,
        events: LinkEvents,
    ) -> Result<Arc<Link>, RelayError> {
        Self::with(
            cfg,
            Signals::Tree(client.clone()),
            &ALL_CODECS,
            remote,
            events,
        )
        .await
    }

    /// A peer connection negotiated by one HTTP exchange (WHIP, WHEP; see
    /// [`Link::answer_whole`]), in `codecs` only, so the answer names the
    /// one codec per kind the tree carries.
    pub async fn for_http(
        cfg: &LinkConfig,
        codecs: &[Codec],
        remote: &str,
        events: LinkEvents,
    ) -> Result<Arc<Link>, RelayError> {
        Self::with(cfg, Signals::InAnswer, codecs, remote, events).await
    }

    async fn with(
        cfg: &LinkConfig,
        signals: Signals,
        codecs: &[Codec],
        remote: &str,
        events: LinkEvents,
    ) -> Result<Arc<Link>, RelayError> {
        let gate = Arc::new(RelayedCheckGate::new(ICE_RELAY_WAIT));
        let (gathered_tx, gathered) = tokio::sync::watch::channel(false);
        let handler = Arc::new(Handler {
            remote: remote.to_owned(),
            signals: signals.clone(),
            gathered: gathered_tx,
            events,
            gate: gate.clone(),
        });
        let pc = match Self::build(cfg, codecs, &handler, &gate, mdns_mode()).await {
            Err(e) if mdns_mode() != MulticastDnsMode::Disabled && is_io_error(&e) => {
                // The probe passed but the socket failed now (a route went
                // away): mDNS off from here on, and this link tries again.
                mdns_failed(&e);
                let off = MulticastDnsMode::Disabled;
                Self::build(cfg, codecs, &handler, &gate, off).await?
            }
            other => other?,
        };
        Ok(Arc::new(Link {
            pc: Arc::new(pc),
            remote: remote.to_owned(),
            signals,
            gathered,
            early_candidates: Mutex::default(),
            remote_set: AtomicBool::new(false),
            remote_has_data: AtomicBool::new(false),
        }))
    }

    async fn build(
        cfg: &LinkConfig,
        codecs: &[Codec],
        handler: &Arc<Handler>,
        gate: &Arc<RelayedCheckGate>,
        mdns: MulticastDnsMode,
    ) -> Result<impl PeerConnection, RelayError> {
        let (me, registry) = media_engine_and_interceptors(codecs)?;
        let settings = SettingEngineBuilder::new()
            .with_srtp_replay_protection_window(SRTP_REPLAY_WINDOW)
            .with_ice_timeouts(
                Some(ICE_DISCONNECTED_AFTER),
                Some(ICE_FAILED_AFTER),
                Some(ICE_KEEPALIVE),
            )
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_BINDING_REQUESTS))
            .with_prflx_acceptance_min_wait(Some(ICE_PRFLX_WAIT))
            .with_relay_acceptance_min_wait(Some(ICE_RELAY_WAIT))
            .with_multicast_dns_mode(mdns)
            // The answering side (the child) finishes DTLS first, so it holds
            // its SRTP keys before the parent's first packet: as DTLS client
            // (webrtc-rs's default) it dropped the first packets of the
            // replayed group in 9 of 25 connections, packets its NACK
            // generator never learns of.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .build();
        let ice_servers = usable_ice_servers(&cfg.ice_servers);
        for url in ice_servers.iter().flat_map(|s| &s.urls) {
            gate.add_turn_url(url);
        }
        let builder = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(ice_servers)
                    .build(),
            )
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_runtime(Arc::new(RelayRuntime::with_gate(gate.clone())))
            // Without a bound a stalled child's channel buffers without
            // limit; with it, sends wait, the child's leg queue fills, and the
            // node drops that child (forward.rs).
            .with_data_channel_send_buffer_limit(DATA_CHANNEL_SEND_BUFFER)
            .with_handler(handler.clone());
        let addrs: Vec<SocketAddr> = if cfg.udp_addrs.is_empty() {
            vec![SocketAddr::from(([0, 0, 0, 0], 0))]
        } else {
            cfg.udp_addrs.clone()
        };
        Ok(builder.with_udp_addrs(addrs).build().await?)
    }

    /// Creates and sends an offer (first negotiation or renegotiation).
    pub async fn offer(&self) -> Result<(), RelayError> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer.clone()).await?;
        self.signals.send(&self.remote, &json!({ "sdp": offer }))?;
        Ok(())
    }

    /// Takes the offer of an HTTP exchange; [`Link::answer_whole`] answers it.
    pub async fn take_offer(&self, offer: &str) -> Result<(), RelayError> {
        self.set_remote(RTCSessionDescription::offer(offer.to_owned())?)
            .await
    }

    /// Answers the offer taken with a description that holds every local
    /// candidate, for an HTTP exchange (RFC 9725 §4.3.2: the server does
    /// not trickle).
    pub async fn answer_whole(&self) -> Result<String, RelayError> {
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        let mut gathered = self.gathered.clone();
        if tokio::time::timeout(GATHER_WAIT, gathered.wait_for(|done| *done))
            .await
            .is_err()
        {
            debug!(peer = %self.remote, "answering with the candidates gathered in {GATHER_WAIT:?}");
        }
        let answer =
            self.pc.local_description().await.ok_or_else(|| {
                RelayError::BadSignal("no local description after answering".into())
            })?;
        Ok(answer.sdp)
    }

    /// Applies one `signal` payload from the neighbour: an offer (answered),
    /// an answer, or an ICE candidate.
    pub async fn on_signal(&self, data: &str) -> Result<Applied, RelayError> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| RelayError::BadSignal(format!("not JSON: {e}")))?;
        if let Some(sdp) = v.get("sdp") {
            let desc: RTCSessionDescription = serde_json::from_value(sdp.clone())
                .map_err(|e| RelayError::BadSignal(format!("bad sdp: {e}")))?;
            let is_offer = desc.sdp_type == RTCSdpType::Offer;
            self.set_remote(desc).await?;
            if !is_offer {
                return Ok(Applied::Answer);
            }
            let answer = self.pc.create_answer(None).await?;
            self.pc.set_local_description(answer.clone()).await?;
            self.signals.send(&self.remote, &json!({ "sdp": answer }))?;
            return Ok(Applied::Offer);
        }
        match v.get("candidate") {
            Some(Value::Null) | None => Ok(Applied::Nothing),
            Some(c) => {
                let init: RTCIceCandidateInit = serde_json::from_value(c.clone())
                    .map_err(|e| RelayError::BadSignal(format!("bad candidate: {e}")))?;
                if init.candidate.is_empty() {
                    return Ok(Applied::Nothing);
                }
                if self.remote_set.load(Ordering::Acquire) {
                    self.add_candidate(init).await;
                } else {
                    self.early_candidates
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(init);
                }
                Ok(Applied::Candidate)
            }
        }
    }

    /// Restarts ICE with the remote's new credentials (RFC 9725 §4.3.3):
    /// its offer again with them, answered with new ones of this end.
    /// Returns this end's fragment (RFC 8840): credentials, the first
    /// bundled section and every candidate.
    pub async fn restart_ice(&self, ufrag: &str, pwd: &str) -> Result<String, RelayError> {
        let remote = self
            .pc
            .remote_description()
            .await
            .ok_or_else(|| RelayError::BadSignal("no session to restart".into()))?;
        let mut offer = String::new();
        for line in remote.sdp.lines() {
            if line.starts_with("a=candidate:") || line.starts_with("a=end-of-candidates") {
                continue;
            }
            if line.starts_with("a=ice-ufrag:") {
                offer.push_str(&format!("a=ice-ufrag:{ufrag}"));
            } else if line.starts_with("a=ice-pwd:") {
                offer.push_str(&format!("a=ice-pwd:{pwd}"));
            } else {
                offer.push_str(line);
            }
            offer.push_str("\r\n");
        }
        self.take_offer(&offer).await?;
        let answer = self.answer_whole().await?;
        Ok(ice_fragment(&answer))
    }

    /// Sets the remote description, then the candidates that came before it.
    async fn set_remote(&self, desc: RTCSessionDescription) -> Result<(), RelayError> {
        let has_data = desc.sdp.lines().any(|l| l.starts_with("m=application"));
        self.pc.set_remote_description(desc).await?;
        self.remote_has_data.store(has_data, Ordering::Release);
        self.remote_set.store(true, Ordering::Release);
        let early = std::mem::take(
            &mut *self
                .early_candidates
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for c in early {
            self.add_candidate(c).await;
        }
        Ok(())
    }

    /// The pair ICE selected, as (this end's candidate type, the other
    /// end's), once connected. Every transport of a link is bundled on one
    /// ICE transport: reached through SCTP, or through a transceiver when
    /// the link carries no data channel.
    pub async fn selected_pair(&self) -> Option<(RTCIceCandidateType, RTCIceCandidateType)> {
        let dtls = match self.pc.sctp().await {
            Some(sctp) => sctp.transport(),
            None => {
                let mut found = None;
                for t in self.pc.get_transceivers().await {
                    let Ok(Some(receiver)) = t.receiver().await else {
                        continue;
                    };
                    if let Ok(Some(dtls)) = receiver.transport().await {
                        found = Some(dtls);
                        break;
                    }
                }
                found?
            }
        };
        let pair = dtls
            .ice_transport()
            .get_selected_candidate_pair()
            .await
            .ok()??;
        Some((pair.local().typ, pair.remote().typ))
    }

    /// The remote's description announced data channels.
    pub fn remote_has_data(&self) -> bool {
        self.remote_has_data.load(Ordering::Acquire)
    }

    async fn add_candidate(&self, c: RTCIceCandidateInit) {
        if let Err(e) = self.pc.add_ice_candidate(c).await {
            // A candidate we cannot use (an mDNS name, another family) is
            // not fatal: others, or peer-reflexive ones, will do.
            warn!(peer = %self.remote, "ignoring ICE candidate: {e}");
        }
    }

    /// Closes the connection; every track and channel stream ends.
    pub async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            debug!(peer = %self.remote, "close: {e}");
        }
    }
}

/// The ICE part of a description as a fragment (RFC 8840): its credentials
/// and options, the bundle group, the first media section's line and mid,
/// and every candidate.
fn ice_fragment(sdp: &str) -> String {
    let lines: Vec<&str> = sdp.lines().map(|l| l.trim_end_matches('\r')).collect();
    let first = |prefix: &str| lines.iter().find(|l| l.starts_with(prefix)).copied();
    let mut frag: Vec<&str> = Vec::new();
    frag.extend(first("a=ice-options:"));
    frag.extend(first("a=group:BUNDLE"));
    frag.extend(first("m="));
    frag.extend(first("a=mid:"));
    frag.extend(first("a=ice-ufrag:"));
    frag.extend(first("a=ice-pwd:"));
    let mut seen = std::collections::HashSet::new();
    frag.extend(
        lines
            .iter()
            .filter(|l| l.starts_with("a=candidate:") && seen.insert(**l)),
    );
    frag.push("a=end-of-candidates");
    frag.iter().map(|l| format!("{l}\r\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answers_ice_fragment_has_its_credentials_and_candidates_once() {
        let answer = "v=0\r\na=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
            a=ice-ufrag:new\r\na=ice-pwd:secret\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\na=ice-ufrag:new\r\n\
            a=ice-pwd:secret\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\n";
        assert_eq!(
            ice_fragment(answer),
            "a=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
             a=ice-ufrag:new\r\na=ice-pwd:secret\r\n\
             a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        );
    }
}
