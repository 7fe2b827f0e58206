//! Fan-out: every track and data channel this node has, and the children
//! (legs) each one feeds.
//!
//! The hot path is `TrackHub::forward`: one RTP packet in, one bounded-queue
//! `try_send` per leg out. It never awaits and never takes a lock another
//! task holds for long, so a slow, stalled or vanished child costs its
//! siblings nothing: its own queue overflows, and that child alone drops
//! packets (and then waits for the next keyframe, so it never decodes
//! garbage). A data-channel leg that overflows is reported to the node, which
//! drops that child, because a reliable channel must not lose messages and
//! must not grow memory without bound either.
//!
//! Across a change of parent the track stays one RTP stream for the
//! children, with nothing repeated: splice.rs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::packet::Packet;
use tokio::sync::{mpsc, watch};
use tracing::debug;
use webrtc::media_stream::track_remote::TrackRemote;

use crate::feedback::KeyframeThrottle;
use crate::gop::GopCache;
use crate::media::Codec;
use crate::repair::{Repairs, Verdict};
use crate::splice::{Mapped, Splice};

/// RTP packets queued per child and track: about 0.4 s of 5 Mbit/s video.
pub const LEG_QUEUE_PACKETS: usize = 256;
/// Data-channel messages queued per child and channel before the child is
/// dropped as too slow.
pub const LEG_QUEUE_MESSAGES: usize = 1024;

/// What a track is, as children are told in the offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackSpec {
    pub codec: Codec,
    /// The codec's fmtp line as the track came (H.264's profile and
    /// packetization mode), offered to children unchanged.
    pub fmtp: String,
    /// `msid` stream id; kept end to end so a browser deep in the tree sees
    /// the source's stream.
    pub stream_id: String,
    pub track_id: String,
}

impl TrackSpec {
    /// A track of this codec in its default format.
    pub fn new(codec: Codec, stream_id: impl Into<String>, track_id: impl Into<String>) -> Self {
        TrackSpec {
            codec,
            fmtp: codec.sdp_fmtp_line().to_owned(),
            stream_id: stream_id.into(),
            track_id: track_id.into(),
        }
    }
}

/// What a data channel is, copied to every child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    pub label: String,
    pub protocol: String,
    pub ordered: bool,
    pub max_retransmits: Option<u16>,
    pub max_packet_life_time: Option<u16>,
}

/// One data-channel message, text or binary as it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataMsg {
    pub text: bool,
    pub data: Bytes,
}

/// A packet in a leg's queue, and when it was put there: how far behind
/// the leg's consumer is (pace.rs).
#[derive(Clone, Debug)]
pub struct Queued {
    pub packet: Packet,
    pub at: Instant,
    /// The packets before this one will never come (splice.rs): a child
    /// sees a gap of one and asks in vain, a recorder can stop waiting.
    pub gap_before: bool,
}

/// A consumer of one track's packets: a child's writer, or the recorder.
pub struct PacketLeg {
    pub id: u64,
    pub tx: mpsc::Sender<Queued>,
    /// Set when packets were dropped for this leg: its writer must wait for
    /// the next keyframe before sending again.
    pub lagged: Arc<AtomicBool>,
}

/// How long a new audio track's first packets are kept for legs added
/// after them, and at most how many (250 ms of 20 ms packets, with room).
const OPENING: Duration = Duration::from_millis(250);
const OPENING_PACKETS: usize = 32;

/// A new audio track's first packets. The children already connected when
/// a track begins (members waiting for a publisher) get their legs a few
/// milliseconds after its first packet, once the node has added the track
/// to their connections; video replays its group of pictures to such a
/// leg (gop.rs), and this is the same for audio, whose every packet stands
/// alone: the first packets were lost to them without it. A leg added
/// later starts live, as before.
#[derive(Debug, Default)]
struct Opening {
    began: Option<Instant>,
    packets: Vec<Queued>,
}

impl Opening {
    /// Keeps `q` if the opening still runs; false once it is over.
    fn record(&mut self, q: &Queued) -> bool {
        let began = *self.began.get_or_insert(q.at);
        if q.at.saturating_duration_since(began) > OPENING || self.packets.len() == OPENING_PACKETS
        {
            self.packets = Vec::new();
            return false;
        }
        self.packets.push(q.clone());
        true
    }

    /// What a leg added at `now` gets first.
    fn replay(&self, now: Instant) -> &[Queued] {
        match self.began {
            Some(began) if now.saturating_duration_since(began) <= OPENING => &self.packets,
            _ => &[],
        }
    }
}

/// One track of this node and the legs it feeds.
pub struct TrackHub {
    pub spec: TrackSpec,
    legs: RwLock<Arc<Vec<PacketLeg>>>,
    /// Where keyframe requests go: the parent's track, if any. A file source
    /// has none and cannot make keyframes on demand.
    upstream: Mutex<Option<(Arc<dyn TrackRemote>, u32)>>,
    throttle: KeyframeThrottle,
    /// The outgoing numbering, and which of its numbers went out (a repair
    /// from upstream goes out once, while still useful: repair.rs).
    outgoing: Mutex<(Splice, Repairs)>,
    gop: Mutex<GopCache>,
    /// An audio track's first packets, while it is new (see [`Opening`]).
    opening: Mutex<Opening>,
    /// The opening is over: the hot path no longer takes its lock.
    opened: AtomicBool,
    pub packets_in: AtomicU64,
    /// RTP payload bytes of those packets.
    pub bytes_in: AtomicU64,
    pub packets_dropped: AtomicU64,
}

/// What `TrackHub::forward` did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    Sent,
    /// Dropped: the track waits for a keyframe from its new upstream; the
    /// caller should ask for one.
    AwaitingKeyframe,
    /// Dropped: a duplicate, or a repair too late to be of use.
    Dropped(Verdict),
}

impl TrackHub {
    fn new(spec: TrackSpec) -> Self {
        TrackHub {
            opened: AtomicBool::new(spec.codec.is_video()),
            spec,
            legs: RwLock::default(),
            upstream: Mutex::default(),
            throttle: KeyframeThrottle::default(),
            outgoing: Mutex::default(),
            gop: Mutex::default(),
            opening: Mutex::default(),
            packets_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            packets_dropped: AtomicU64::new(0),
        }
    }

    /// One packet to every leg, without waiting for any of them.
    pub fn forward(&self, pkt: &Packet) -> Forwarded {
        self.packets_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in
            .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        let (pkt, gap_before) = {
            let mut out = self.outgoing.lock().unwrap_or_else(PoisonError::into_inner);
            let (splice, repairs) = &mut *out;
            let p = match splice.map(pkt, self.spec.codec, now) {
                Mapped::Send(p) => p,
                Mapped::SentBefore => return Forwarded::Dropped(Verdict::Duplicate),
                Mapped::AwaitingKeyframe => return Forwarded::AwaitingKeyframe,
            };
            let verdict = repairs.admit(
                p.header.sequence_number,
                p.header.timestamp,
                self.spec.codec.clock_rate(),
            );
            if matches!(verdict, Verdict::Duplicate | Verdict::Stale) {
                return Forwarded::Dropped(verdict);
            }
            splice.sent(&p);
            (p, splice.gap_before())
        };
        // Before the fan-out: a writer that replays the group skips, by
        // sequence number, what its queue also holds.
        self.gop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pkt.as_ref(), self.spec.codec, now);
        let queued = Queued {
            packet: pkt.into_owned(),
            at: now,
            gap_before,
        };
        let legs = if self.opened.load(Ordering::Acquire) {
            self.current_legs()
        } else {
            // Held across reading the legs, as `add_leg` holds it across
            // adding one: each packet reaches a new leg once, by the
            // opening or by the fan-out.
            let mut opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
            if !opening.record(&queued) {
                self.opened.store(true, Ordering::Release);
            }
            self.current_legs()
        };
        for leg in legs.iter() {
            let queued = queued.clone();
            if leg.tx.try_send(queued).is_err() {
                self.packets_dropped.fetch_add(1, Ordering::Relaxed);
                leg.lagged.store(true, Ordering::Relaxed);
            }
        }
        Forwarded::Sent
    }

    fn current_legs(&self) -> Arc<Vec<PacketLeg>> {
        self.legs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn add_leg(&self, leg: PacketLeg) {
        let opening = (!self.opened.load(Ordering::Acquire))
            .then(|| self.opening.lock().unwrap_or_else(PoisonError::into_inner));
        if let Some(opening) = &opening {
            for q in opening.replay(Instant::now()) {
                // A fresh queue has room: the opening is far shorter.
                let _ = leg.tx.try_send(q.clone());
            }
        }
        let mut legs = self.legs.write().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<PacketLeg> = Vec::with_capacity(legs.len() + 1);
        next.extend(legs.iter().map(PacketLeg::clone_handle));
        next.push(leg);
        *legs = Arc::new(next);
    }

    pub fn remove_leg(&self, id: u64) {
        let mut legs = self.legs.write().unwrap_or_else(PoisonError::into_inner);
        let next: Vec<PacketLeg> = legs
            .iter()
            .filter(|l| l.id != id)
            .map(PacketLeg::clone_handle)
            .collect();
        *legs = Arc::new(next);
    }

    /// Legs fed now: the children, plus the recorder if any.
    pub fn leg_count(&self) -> usize {
        self.legs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The parent's track that feeds this one now (None: the parent is gone).
    pub fn set_upstream(&self, track: Option<(Arc<dyn TrackRemote>, u32)>) {
        if track.is_some() {
            self.new_stream();
        }
        *self.upstream.lock().unwrap_or_else(PoisonError::into_inner) = track;
    }

    /// Packets come from a new stream from now on (a new parent, a new
    /// sender): spliced onto the old one (splice.rs).
    pub fn new_stream(&self) {
        self.outgoing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .restart();
        self.gop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget();
    }

    /// When no media went out for `quiet` (a WHIP source between
    /// publishers, or with one that died and is not noticed yet): a
    /// padding-only packet to every leg, next in the children's numbering.
    /// A member takes a parent whose media stopped for a dead one
    /// (parent_watch.rs) and would leave it, though the tree only waits for
    /// its next publisher; padding is media enough, and every relay passes
    /// it on.
    pub fn keep_alive(&self, quiet: Duration) {
        let now = Instant::now();
        let packet = {
            let mut out = self.outgoing.lock().unwrap_or_else(PoisonError::into_inner);
            let (splice, repairs) = &mut *out;
            let Some(p) = splice.filler(now, quiet) else {
                return;
            };
            // Its number went out: a late repair mapped onto it is not sent.
            repairs.admit(
                p.header.sequence_number,
                p.header.timestamp,
                self.spec.codec.clock_rate(),
            );
            p
        };
        // In the group too: a child that starts from it gets every number.
        self.gop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(&packet, self.spec.codec, now);
        let queued = Queued {
            packet,
            at: now,
            gap_before: false,
        };
        for leg in self.current_legs().iter() {
            // A full queue has media enough in it.
            let _ = leg.tx.try_send(queued.clone());
        }
    }

    /// The packets since the current keyframe began, for a child starting
    /// mid-group (see `gop`).
    pub fn gop_snapshot(&self) -> Option<Vec<Packet>> {
        self.gop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot(Instant::now())
    }

    /// True while a track of the current upstream feeds this one.
    pub fn is_fed(&self) -> bool {
        self.upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// A child needs a keyframe: ask the parent, merged with other requests
    /// (at most one per track per 500 ms).
    pub async fn request_keyframe(&self) {
        let up = self
            .upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some((track, ssrc)) = up else {
            return;
        };
        if !self.throttle.admit(Instant::now()) {
            return;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
            debug!(track = %self.spec.track_id, "PLI upstream failed: {e}");
        }
    }
}

impl PacketLeg {
    fn clone_handle(&self) -> PacketLeg {
        PacketLeg {
            id: self.id,
            tx: self.tx.clone(),
            lagged: self.lagged.clone(),
        }
    }
}

/// A consumer of one channel's messages.
pub struct MessageLeg {
    pub id: u64,
    pub tx: mpsc::Sender<DataMsg>,
}

/// One data channel of this node and the legs it feeds.
pub struct ChannelHub {
    pub spec: ChannelSpec,
    legs: RwLock<Vec<MessageLeg>>,
    /// Legs that overflowed, for the node to drop.
    overflow: mpsc::UnboundedSender<u64>,
}

impl ChannelHub {
    /// One message to every leg. A leg whose queue is full is reported; its
    /// copy of this message is lost with it, since that child is dropped.
    pub fn publish(&self, msg: &DataMsg) {
        let legs = self.legs.read().unwrap_or_else(PoisonError::into_inner);
        for leg in legs.iter() {
            if leg.tx.try_send(msg.clone()).is_err() {
                let _ = self.overflow.send(leg.id);
            }
        }
    }

    pub fn add_leg(&self, leg: MessageLeg) {
        self.legs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(leg);
    }

    pub fn remove_leg(&self, id: u64) {
        self.legs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|l| l.id != id);
    }
}

/// Every track and channel of this node. Children mirror it; it changes when
/// the parent's offer brings new tracks, and `changed` tells the node to
/// renegotiate with its children.
pub struct Hub {
    tracks: RwLock<Vec<Arc<TrackHub>>>,
    channels: RwLock<Vec<Arc<ChannelHub>>>,
    version: watch::Sender<u64>,
    overflow: mpsc::UnboundedSender<u64>,
    next_leg: AtomicU64,
}

impl Hub {
    /// Returns the hub and the receiver of overflowing data legs' ids.
    pub fn new() -> (Arc<Hub>, mpsc::UnboundedReceiver<u64>) {
        let (overflow, rx) = mpsc::unbounded_channel();
        let hub = Hub {
            tracks: RwLock::default(),
            channels: RwLock::default(),
            version: watch::channel(0).0,
            overflow,
            next_leg: AtomicU64::new(1),
        };
        (Arc::new(hub), rx)
    }

    pub fn leg_id(&self) -> u64 {
        self.next_leg.fetch_add(1, Ordering::Relaxed)
    }

    /// The hub track that `spec`'s track feeds, created if new. Tracks are
    /// kept across parent changes, so children see a gap, not a new track:
    /// first by track id, then, since a browser parent re-encodes under track
    /// ids of its own, the first track of the same codec that no upstream
    /// feeds any more.
    pub fn track(&self, spec: TrackSpec) -> Arc<TrackHub> {
        let mut tracks = self.tracks.write().unwrap_or_else(PoisonError::into_inner);
        let same_id = tracks
            .iter()
            .find(|t| t.spec.track_id == spec.track_id && t.spec.codec == spec.codec);
        let orphan = || {
            tracks
                .iter()
                .find(|t| t.spec.codec == spec.codec && !t.is_fed())
        };
        if let Some(t) = same_id.or_else(orphan) {
            return t.clone();
        }
        let t = Arc::new(TrackHub::new(spec));
        tracks.push(t.clone());
        drop(tracks);
        self.version.send_modify(|v| *v += 1);
        t
    }

    /// The channel with this label, created if new.
    pub fn channel(&self, spec: ChannelSpec) -> Arc<ChannelHub> {
        let mut channels = self
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = channels.iter().find(|c| c.spec.label == spec.label) {
            return c.clone();
        }
        let c = Arc::new(ChannelHub {
            spec,
            legs: RwLock::default(),
            overflow: self.overflow.clone(),
        });
        channels.push(c.clone());
        drop(channels);
        self.version.send_modify(|v| *v += 1);
        c
    }

    pub fn tracks(&self) -> Vec<Arc<TrackHub>> {
        self.tracks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn channels(&self) -> Vec<Arc<ChannelHub>> {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Bumped whenever a track or channel is added.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// True if this RTP payload starts a keyframe: a leg that starts or resumes
/// here decodes cleanly. Reads only the payload descriptor and the first
/// bytes of the frame.
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Opus => true,
        Codec::Vp8 => vp8_starts_keyframe(payload),
        Codec::Vp9 => crate::media::vp9_payload_starts_keyframe(payload),
        // AV1 aggregation header: Z|Y|W W|N|-|-|-; N marks the first packet of
        // a coded video sequence, which starts with a keyframe.
        Codec::Av1 => payload.first().is_some_and(|b| b & 0x08 != 0),
        Codec::H264 => crate::media::h264_payload_starts_keyframe(payload),
    }
}

/// RFC 7741: the payload descriptor, then (on the first packet of a frame,
/// S = 1 and partition 0) the VP8 frame tag whose lowest bit is 0 for a
/// keyframe.
fn vp8_starts_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    p.get(i).is_some_and(|tag| tag & 0x01 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_detection() {
        // S=1, PID 0, no extension; frame tag with P bit 0 -> keyframe.
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x00, 0x00]));
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x01, 0x00]));
        // Not the start of a frame.
        assert!(!starts_keyframe(Codec::Vp8, &[0x00, 0x00]));
        // X=1, I=1 with a 15-bit picture id, then the tag.
        assert!(starts_keyframe(Codec::Vp8, &[0x90, 0x80, 0x81, 0x23, 0x00]));
        assert!(!starts_keyframe(
            Codec::Vp8,
            &[0x90, 0x80, 0x81, 0x23, 0x01]
        ));
        assert!(!starts_keyframe(Codec::Vp8, &[0x90, 0x80]));
        assert!(!starts_keyframe(Codec::Vp8, &[]));
    }

    #[test]
    fn a_new_upstream_feeds_the_unfed_track_of_its_codec() {
        let (hub, _) = Hub::new();
        let spec = |codec, id: &str| TrackSpec::new(codec, "s", id);
        let first = hub.track(spec(Codec::Vp8, "from-source"));
        // A browser parent forwards the same video under its own track id.
        let again = hub.track(spec(Codec::Vp8, "from-browser"));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(again.spec.track_id, "from-source");
        let audio = hub.track(spec(Codec::Opus, "from-browser"));
        assert!(!Arc::ptr_eq(&first, &audio));
        assert_eq!(hub.tracks().len(), 2);
    }

    fn audio(seq: u16) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p.payload = Bytes::from_static(&[0xf8, 0x01]);
        p
    }

    #[test]
    fn a_leg_added_as_audio_begins_gets_its_first_packets_once() {
        let (hub, _) = Hub::new();
        let t = hub.track(TrackSpec::new(Codec::Opus, "s", "a"));
        for seq in 100..103u16 {
            t.forward(&audio(seq));
        }
        let (tx, mut rx) = mpsc::channel(LEG_QUEUE_PACKETS);
        t.add_leg(PacketLeg {
            id: 1,
            tx,
            lagged: Arc::default(),
        });
        t.forward(&audio(103));
        let got: Vec<u16> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|q| q.packet.header.sequence_number)
            .collect();
        assert_eq!(got, [100, 101, 102, 103]);
    }

    #[test]
    fn the_opening_ends_after_its_window_or_its_packets() {
        let t0 = Instant::now();
        let q = |ms: u64| Queued {
            packet: audio(0),
            at: t0 + Duration::from_millis(ms),
            gap_before: false,
        };
        let mut o = Opening::default();
        assert!(o.record(&q(0)) && o.record(&q(240)));
        assert_eq!(o.replay(t0 + Duration::from_millis(249)).len(), 2);
        // A leg added later starts live.
        assert!(o.replay(t0 + Duration::from_millis(251)).is_empty());
        assert!(!o.record(&q(251)));
        let mut o = Opening::default();
        assert!((0..OPENING_PACKETS).all(|_| o.record(&q(0))));
        assert!(!o.record(&q(0)));
        assert!(o.packets.is_empty());
        // Video replays its group instead (gop.rs).
        let (hub, _) = Hub::new();
        let v = hub.track(TrackSpec::new(Codec::Vp8, "s", "v"));
        assert!(v.opened.load(Ordering::Relaxed));
    }

    #[test]
    fn slow_leg_drops_alone() {
        let (hub, _) = Hub::new();
        let t = hub.track(TrackSpec::new(Codec::Vp8, "s", "v"));
        let (fast_tx, mut fast_rx) = mpsc::channel(LEG_QUEUE_PACKETS);
        let (slow_tx, _slow_rx) = mpsc::channel(2);
        let slow_lagged = Arc::new(AtomicBool::new(false));
        t.add_leg(PacketLeg {
            id: 1,
            tx: fast_tx,
            lagged: Arc::default(),
        });
        t.add_leg(PacketLeg {
            id: 2,
            tx: slow_tx,
            lagged: slow_lagged.clone(),
        });
        for seq in 0..10u16 {
            let mut p = Packet::default();
            p.header.sequence_number = seq;
            t.forward(&p);
        }
        for seq in 0..10u16 {
            assert_eq!(
                fast_rx.try_recv().map(|q| q.packet.header.sequence_number),
                Ok(seq)
            );
        }
        assert!(slow_lagged.load(Ordering::Relaxed));
        assert_eq!(t.packets_dropped.load(Ordering::Relaxed), 8);
        t.remove_leg(2);
        t.forward(&Packet::default());
        assert_eq!(t.packets_dropped.load(Ordering::Relaxed), 8);
    }
}
