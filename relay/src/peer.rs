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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use signalling::client::Client;
use signalling::protocol::IceServer;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSdpType, RTCSessionDescription, Registry,
    SettingEngineBuilder,
};

use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};

use crate::feedback::FeedbackTap;
use crate::media::Codec;
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
/// pair was the largest outlier in the churn driver's recovery times.
const ICE_PRFLX_WAIT: Duration = Duration::ZERO;

/// Bytes a data channel may hold unacknowledged before sends wait.
const DATA_CHANNEL_SEND_BUFFER: usize = 1 << 20;

/// What a link reports to the node that owns it.
pub enum LinkEvent {
    Track(Arc<dyn TrackRemote>),
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

/// One peer connection with one neighbour (the parent or a child).
pub struct Link {
    pub pc: Arc<dyn PeerConnection>,
    pub remote: String,
    client: Client,
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
    client: Client,
    events: LinkEvents,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, ev: RTCPeerConnectionIceEvent) {
        let Ok(mut init) = ev.candidate.to_json() else {
            return;
        };
        // webrtc-rs leaves sdpMid empty; everything is bundled on the first
        // m-line, whose mid is "0", and browsers reject an empty mid.
        init.sdp_mid = Some("0".into());
        init.sdp_mline_index = Some(0);
        if let Err(e) = self
            .client
            .signal(&self.remote, &json!({ "candidate": init }))
        {
            debug!(peer = %self.remote, "candidate not sent: {e}");
        }
    }

    // These run on the connection's own driver task: hand the objects over
    // and return at once, or the connection stalls.
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self
            .events
            .send((self.remote.clone(), LinkEvent::Track(track)));
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

fn media_engine() -> Result<MediaEngine, RelayError> {
    let mut me = MediaEngine::default();
    for codec in [Codec::Vp8, Codec::Vp9, Codec::Av1, Codec::Opus] {
        let params = RTCRtpCodecParameters {
            rtp_codec: codec.rtc_codec(),
            payload_type: codec.default_payload_type(),
        };
        me.register_codec(params, rtp_kind(codec))?;
    }
    Ok(me)
}

pub fn rtp_kind(codec: Codec) -> RtpCodecKind {
    if codec.is_video() {
        RtpCodecKind::Video
    } else {
        RtpCodecKind::Audio
    }
}

impl Link {
    /// Builds the peer connection to `remote`. Nothing is sent until the
    /// caller offers (the upstream end always offers, rule 1).
    pub async fn new(
        cfg: &LinkConfig,
        client: &Client,
        remote: &str,
        events: LinkEvents,
    ) -> Result<Arc<Link>, RelayError> {
        let mut me = media_engine()?;
        let registry = register_default_interceptors(Registry::new(), &mut me)?;
        let registry = FeedbackTap::register(registry);
        let settings = SettingEngineBuilder::new()
            .with_srtp_replay_protection_window(SRTP_REPLAY_WINDOW)
            .with_ice_timeouts(
                Some(ICE_DISCONNECTED_AFTER),
                Some(ICE_FAILED_AFTER),
                Some(ICE_KEEPALIVE),
            )
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_BINDING_REQUESTS))
            .with_prflx_acceptance_min_wait(Some(ICE_PRFLX_WAIT))
            .build();
        let ice_servers = cfg
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let builder = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(ice_servers)
                    .build(),
            )
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_runtime(Arc::new(RelayRuntime::default()))
            // Without a bound a stalled child's channel buffers without
            // limit; with it, sends wait, the child's leg queue fills, and the
            // node drops that child (forward.rs).
            .with_data_channel_send_buffer_limit(DATA_CHANNEL_SEND_BUFFER)
            .with_handler(Arc::new(Handler {
                remote: remote.to_owned(),
                client: client.clone(),
                events,
            }));
        let addrs: Vec<SocketAddr> = if cfg.udp_addrs.is_empty() {
            vec![SocketAddr::from(([0, 0, 0, 0], 0))]
        } else {
            cfg.udp_addrs.clone()
        };
        let pc = builder.with_udp_addrs(addrs).build().await?;
        Ok(Arc::new(Link {
            pc: Arc::new(pc),
            remote: remote.to_owned(),
            client: client.clone(),
            early_candidates: Mutex::default(),
            remote_set: AtomicBool::new(false),
            remote_has_data: AtomicBool::new(false),
        }))
    }

    /// Creates and sends an offer (first negotiation or renegotiation).
    pub async fn offer(&self) -> Result<(), RelayError> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer.clone()).await?;
        self.client.signal(&self.remote, &json!({ "sdp": offer }))?;
        Ok(())
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
            if !is_offer {
                return Ok(Applied::Answer);
            }
            let answer = self.pc.create_answer(None).await?;
            self.pc.set_local_description(answer.clone()).await?;
            self.client
                .signal(&self.remote, &json!({ "sdp": answer }))?;
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
