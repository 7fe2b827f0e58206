//! The connections to the children: every track and channel of the hub,
//! offered to each child and fed from the hub's fan-out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

use crate::feedback::{is_keyframe_request, loss_report};
use crate::forward::{
    starts_keyframe, ChannelHub, DataMsg, Hub, MessageLeg, PacketLeg, Queued, TrackHub,
    LEG_QUEUE_MESSAGES, LEG_QUEUE_PACKETS,
};
use crate::gate::{Action, LegGate, Started};
use crate::media::Codec;
use crate::pace::{Pace, Pacer};
use crate::peer::{rtp_kind, Link};
use crate::RelayError;

/// One child: its connection and what it is fed.
pub struct Downstream {
    pub link: Arc<Link>,
    /// Set by the node when the connection reaches `connected`; writers hold
    /// media until then, so the first packet a child sees starts a keyframe.
    pub connected: Arc<AtomicBool>,
    tracks: Vec<(Arc<TrackHub>, u64)>,
    channels: Vec<(Arc<ChannelHub>, u64)>,
    /// The last offer carried a data channel, so SCTP is negotiated and new
    /// channels need no renegotiation.
    sctp_negotiated: bool,
    /// The other end offers (a WHEP player): tracks go on the transceivers
    /// its offer made, and nothing is offered from here.
    answering: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl Downstream {
    fn empty(link: Arc<Link>, answering: bool) -> Downstream {
        Downstream {
            link,
            connected: Arc::default(),
            tracks: Vec::new(),
            channels: Vec::new(),
            sctp_negotiated: false,
            answering,
            tasks: Vec::new(),
        }
    }

    /// Mirrors the hub onto a new connection to `link`'s child and offers.
    pub async fn open(link: Arc<Link>, hub: &Hub) -> Result<Downstream, RelayError> {
        let mut d = Downstream::empty(link, false);
        d.sync(hub).await?;
        Ok(d)
    }

    /// Mirrors the hub onto a connection whose offer `link` has taken (a
    /// WHEP player's), for the caller to answer. Channels only if the offer
    /// has a data section: an answer cannot add one. What the hub gains
    /// later does not reach this end (it would need an offer from here).
    pub async fn answering(link: Arc<Link>, hub: &Hub) -> Result<Downstream, RelayError> {
        let mut d = Downstream::empty(link, true);
        for t in hub.tracks() {
            d.add_track(hub, t).await?;
        }
        if d.link.remote_has_data() {
            for c in hub.channels() {
                d.add_channel(hub, c).await?;
            }
        }
        Ok(d)
    }

    /// Adds what the hub has and this child lacks; offers again when the
    /// child's SDP must change (rule 1: the upstream renegotiates). Returns
    /// whether an offer went out.
    pub async fn sync(&mut self, hub: &Hub) -> Result<bool, RelayError> {
        let mut renegotiate = false;
        for t in hub.tracks() {
            if !self.tracks.iter().any(|(have, _)| Arc::ptr_eq(have, &t)) {
                self.add_track(hub, t).await?;
                renegotiate = true;
            }
        }
        for c in hub.channels() {
            if !self.channels.iter().any(|(have, _)| Arc::ptr_eq(have, &c)) {
                self.add_channel(hub, c).await?;
                renegotiate |= !self.sctp_negotiated;
            }
        }
        if renegotiate {
            self.sctp_negotiated = !self.channels.is_empty();
            self.link.offer().await?;
        }
        Ok(renegotiate)
    }

    /// The ids of this child's data legs (to find it when one overflows).
    pub fn owns_message_leg(&self, id: u64) -> bool {
        self.channels.iter().any(|(_, l)| *l == id)
    }

    async fn add_track(&mut self, hub: &Hub, t: Arc<TrackHub>) -> Result<(), RelayError> {
        let codec = t.spec.codec;
        let ssrc: u32 = rand::random();
        let local = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            t.spec.stream_id.clone(),
            t.spec.track_id.clone(),
            t.spec.track_id.clone(),
            rtp_kind(codec),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.rtc_codec_with(&t.spec.fmtp),
                ..Default::default()
            }],
        )));
        let sender = if self.answering {
            self.link
                .pc
                .add_track(local.clone() as Arc<dyn TrackLocal>)
                .await?
        } else {
            let transceiver = self
                .link
                .pc
                .add_transceiver_from_track(
                    local.clone() as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await?;
            transceiver
                .sender()
                .await?
                .ok_or_else(|| RelayError::BadSignal("transceiver without a sender".into()))?
        };
        let (tx, rx) = mpsc::channel(LEG_QUEUE_PACKETS);
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let lagged = Arc::new(AtomicBool::new(false));
        let id = hub.leg_id();
        t.add_leg(PacketLeg {
            id,
            tx,
            lagged: lagged.clone(),
        });
        let writer = LegWriter {
            local: local.clone(),
            sender,
            codec,
            ssrc,
            hub: t.clone(),
            lagged,
            connected: self.connected.clone(),
            child: self.link.remote.clone(),
        };
        self.tasks.push(tokio::spawn(writer.run(rx, reports_rx)));
        let feedback_hub = t.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Some(ev) = local.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(pkts) = ev {
                    if pkts.iter().any(|p| is_keyframe_request(p.as_ref())) {
                        feedback_hub.request_keyframe().await;
                    }
                    let blocks = pkts.iter().filter_map(|p| loss_report(p.as_ref()));
                    for (_, lost) in blocks.flatten().filter(|(source, _)| *source == ssrc) {
                        let _ = reports_tx.send(lost);
                    }
                }
            }
        }));
        self.tracks.push((t, id));
        Ok(())
    }

    async fn add_channel(&mut self, hub: &Hub, c: Arc<ChannelHub>) -> Result<(), RelayError> {
        let s = &c.spec;
        let dc = self
            .link
            .pc
            .create_data_channel(
                &s.label,
                Some(RTCDataChannelInit {
                    ordered: s.ordered,
                    max_retransmits: s.max_retransmits,
                    max_packet_life_time: s.max_packet_life_time,
                    protocol: s.protocol.clone(),
                    negotiated: None,
                }),
            )
            .await?;
        let (tx, rx) = mpsc::channel(LEG_QUEUE_MESSAGES);
        let id = hub.leg_id();
        c.add_leg(MessageLeg { id, tx });
        self.tasks.push(tokio::spawn(write_channel(dc, rx)));
        self.channels.push((c, id));
        Ok(())
    }

    /// Stops feeding this child and closes its connection at once.
    pub async fn close(self) {
        for (t, id) in &self.tracks {
            t.remove_leg(*id);
        }
        for (c, id) in &self.channels {
            c.remove_leg(*id);
        }
        for task in &self.tasks {
            task.abort();
        }
        self.link.close().await;
    }
}

/// webrtc-rs (0.21.1) registers a remote track only between two reads of
/// its socket, so packets that reach a peer in the same read as the track's
/// first packet are dropped ("Failed to get track_remote") after its NACK
/// generator counted them as received: they are never repaired. Through a
/// TURN server, whose data arrives in batches, that was the first two
/// packets of the replayed keyframe, and the child waited a whole group for
/// the next. So a child's stream starts with a padding-only packet (a
/// number of its own, no media), which opens the track, and its media this
/// long after it, in later reads.
const PRIMER_PACKETS: u16 = 1;
const PRIMER_GAP: Duration = Duration::from_millis(20);

/// A video leg's pacing (audio is small, and goes at once), and what the
/// log has said of it.
struct LegPace {
    /// The primer has gone out.
    primed: bool,
    pacer: Option<Pacer>,
    /// The packet before ended a frame.
    frame_start: bool,
    /// The child was last said to be slower than the stream.
    said_slow: bool,
}

impl LegPace {
    fn new(codec: Codec) -> LegPace {
        LegPace {
            primed: false,
            pacer: codec.is_video().then(|| Pacer::new(Instant::now())),
            frame_start: true,
            said_slow: false,
        }
    }

    fn on_report(&mut self, lost: f64, child: &str) {
        let Some(pacer) = self.pacer.as_mut() else {
            return;
        };
        pacer.on_report(lost, Instant::now());
        let rate = pacer.rate_bps();
        debug!(
            child = %child,
            lost,
            rate_bps = ?rate,
            groups_sent = pacer.groups_sent,
            groups_skipped = pacer.groups_skipped,
            "receiver report"
        );
        let slow = rate.is_some();
        if slow != self.said_slow {
            self.said_slow = slow;
            match rate {
                Some(bps) => info!(
                    child = %child,
                    "the child's link carries about {:.0} kbit/s, less than the stream: it gets \
                     whole groups of pictures, paced, and skips those it cannot carry",
                    bps / 1000.0
                ),
                None => info!(child = %child, "the child keeps up with the stream again"),
            }
        }
    }
}

/// Writes one track's packets to one child: its own SSRC and negotiated
/// payload type, no header extensions (ids are per connection), and only
/// from a keyframe on.
struct LegWriter {
    local: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    codec: Codec,
    ssrc: u32,
    hub: Arc<TrackHub>,
    lagged: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
    child: String,
}

impl LegWriter {
    async fn run(self, mut rx: mpsc::Receiver<Queued>, mut reports: mpsc::UnboundedReceiver<f64>) {
        let mut pace = LegPace::new(self.codec);
        let mut payload_type: Option<u8> = None;
        let mut gate = LegGate::new(self.codec);
        // When this child became able to receive, to report how long it
        // waited for its first keyframe.
        let mut connected_at: Option<Instant> = None;
        loop {
            let (p, at) = tokio::select! {
                biased;
                Some(lost) = reports.recv() => {
                    pace.on_report(lost, &self.child);
                    continue;
                }
                q = rx.recv() => match q {
                    Some(q) => (q.packet, q.at),
                    None => break,
                },
            };
            if !self.connected.load(Ordering::Acquire) {
                continue;
            }
            let since = *connected_at.get_or_insert_with(Instant::now);
            if self.lagged.swap(false, Ordering::Relaxed) {
                debug!(child = %self.child, "queue overflowed; waiting for a keyframe");
                gate.lagged();
            }
            let Some(pt) = self.payload_type(&mut payload_type).await else {
                continue;
            };
            let d = gate.on_packet(&p, Instant::now(), || self.hub.gop_snapshot());
            let replayed = d.replay.len();
            for g in d.replay {
                self.emit(&mut pace, g, pt).await;
            }
            if let Some(started) = d.started {
                let track = &self.hub.spec.track_id;
                let waited = since.elapsed().as_millis();
                match started {
                    Started::FromGroup => info!(
                        child = %self.child,
                        "started {track} from the current group ({replayed} packets) {waited} ms after connected"
                    ),
                    Started::AtKeyframe => info!(
                        child = %self.child,
                        "first keyframe for {track} after {waited} ms connected"
                    ),
                }
            }
            match d.action {
                Action::Send => self.send_paced(&mut pace, at, p, pt).await,
                Action::Repair(ts) => {
                    let mut p = p;
                    p.header.timestamp = ts;
                    self.emit(&mut pace, p, pt).await;
                }
                Action::Drop => {}
                Action::AskKeyframe => self.hub.request_keyframe().await,
            }
        }
    }

    /// One packet queued at `at`, when the child's link can take it, or
    /// not at all when its group is skipped (pace.rs).
    async fn send_paced(&self, pace: &mut LegPace, at: Instant, p: Packet, pt: u8) {
        let frame_start = std::mem::replace(&mut pace.frame_start, p.header.marker);
        if let Some(pacer) = pace.pacer.as_mut() {
            let group_start = starts_keyframe(self.codec, &p.payload);
            let now = Instant::now();
            match pacer.on_packet(at, p.payload.len(), group_start, frame_start, now) {
                Pace::Skip => return,
                Pace::SendAt(when) if when > now => {
                    tokio::time::sleep_until(when.into()).await;
                }
                Pace::SendAt(_) => {}
            }
        }
        self.emit(pace, p, pt).await;
    }

    /// One packet in this child's numbering: after the primer the first time
    /// (see [`PRIMER_PACKETS`]), and without the packets its pacer skipped.
    async fn emit(&self, pace: &mut LegPace, mut p: Packet, pt: u8) {
        if !pace.primed {
            pace.primed = true;
            for i in 0..PRIMER_PACKETS {
                let mut pad = Packet {
                    header: p.header.clone(),
                    payload: bytes::Bytes::new(),
                };
                pad.header.sequence_number = p.header.sequence_number.wrapping_add(i);
                pad.header.marker = false;
                pad.header.padding = true;
                self.send(pad, pt).await;
            }
            tokio::time::sleep(PRIMER_GAP).await;
        }
        let skipped = pace.pacer.as_ref().map_or(0, Pacer::seq_offset);
        p.header.sequence_number = p
            .header
            .sequence_number
            .wrapping_add(PRIMER_PACKETS)
            .wrapping_sub(skipped);
        self.send(p, pt).await;
    }

    /// The payload type this leg negotiated, asked once (None until the
    /// negotiation has it).
    async fn payload_type(&self, cached: &mut Option<u8>) -> Option<u8> {
        if cached.is_none() {
            *cached = self.negotiated_payload_type().await;
        }
        *cached
    }

    /// One packet to the child, in this leg's SSRC and payload type.
    async fn send(&self, mut p: Packet, pt: u8) {
        p.header.ssrc = self.ssrc;
        p.header.payload_type = pt;
        p.header.extension = false;
        p.header.extensions.clear();
        p.header.extensions_padding = 0;
        if let Err(e) = self.local.write_rtp(p).await {
            debug!(child = %self.child, "write_rtp: {e}");
        }
    }

    /// The child may number the codec differently (browsers offer their own
    /// payload types); ask what this leg negotiated. Of several lines for
    /// the codec (H.264's profiles), the one in the track's format.
    async fn negotiated_payload_type(&self) -> Option<u8> {
        let params = self.sender.get_parameters().await.ok()?;
        let ours = |c: &&RTCRtpCodecParameters| {
            Codec::from_mime(&c.rtp_codec.mime_type) == Some(self.codec)
        };
        let codecs = &params.rtp_parameters.codecs;
        codecs
            .iter()
            .filter(ours)
            .find(|c| {
                self.codec
                    .same_format(&self.hub.spec.fmtp, &c.rtp_codec.sdp_fmtp_line)
            })
            .or_else(|| codecs.iter().find(ours))
            .map(|c| c.payload_type)
    }
}

async fn write_channel(dc: Arc<dyn DataChannel>, mut rx: mpsc::Receiver<DataMsg>) {
    // Messages wait in the leg's queue until the channel opens.
    loop {
        match dc.poll().await {
            Some(DataChannelEvent::OnOpen) => break,
            Some(_) => continue,
            None => return,
        }
    }
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                let sent = if m.text {
                    dc.send_text(&String::from_utf8_lossy(&m.data)).await
                } else {
                    dc.send(BytesMut::from(&m.data[..])).await
                };
                if let Err(e) = sent {
                    info!("data channel send failed: {e}");
                    break;
                }
            }
            ev = dc.poll() => {
                if ev.is_none() {
                    break;
                }
            }
        }
    }
    let _ = dc.close().await;
}
