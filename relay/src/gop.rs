//! The current group of pictures: a video track's packets since its last
//! keyframe began, so that a child that connects mid-group starts at once
//! instead of waiting for the next keyframe.
//!
//! A file source cannot make a keyframe on request, and even a live one takes
//! a round trip and an encode; with a keyframe every second a newcomer (or an
//! orphan re-placed after its parent died) waited half a second on average,
//! the largest share of its recovery time. Replaying the group costs one
//! burst of the bytes since the keyframe.
//!
//! Replayed frames are old: played at their own timestamps they would put the
//! child that much behind live for good. [`compress_replay`] gives them
//! timestamps a millisecond apart that end at the newest frame's own, so a
//! receiver decodes the group in one go and carries on at the live edge.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rtc::rtp::packet::Packet;

use crate::forward::starts_keyframe;
use crate::media::Codec;
use crate::repair::MAX_LATE_SECONDS;

/// Beyond this (a long keyframe interval at a high rate) the group is
/// dropped and children wait for the next keyframe as before: a burst of
/// more would cost the child's link more than the wait saves.
pub const GOP_MAX_BYTES: usize = 1 << 20;
pub const GOP_MAX_PACKETS: usize = 1024;
/// A group whose keyframe is older is not replayed either. Live encoders (a
/// browser source) send keyframes only when asked, so their groups grow for
/// minutes; a keyframe request gets a fresh one in about a round trip.
pub const GOP_MAX_AGE: Duration = Duration::from_secs(3);

/// Packets since the last keyframe started, in forwarding order.
#[derive(Debug, Default)]
pub struct GopCache {
    packets: Vec<Packet>,
    bytes: usize,
    /// The group starts with a keyframe's first packet and is unbroken.
    open: bool,
    /// When its keyframe came.
    started: Option<Instant>,
}

impl GopCache {
    /// Records a packet as it goes to the children.
    pub fn push(&mut self, p: &Packet, codec: Codec, now: Instant) {
        if !codec.is_video() {
            return;
        }
        let seq = p.header.sequence_number;
        let late = self
            .packets
            .last()
            .is_some_and(|q| (seq.wrapping_sub(q.header.sequence_number) as i16) < 0);
        if starts_keyframe(codec, &p.payload) && !late {
            self.packets.clear();
            self.bytes = 0;
            self.open = true;
            self.started = Some(now);
        }
        let before_group = self
            .packets
            .first()
            .is_some_and(|q| (seq.wrapping_sub(q.header.sequence_number) as i16) < 0);
        if !self.open || before_group {
            return;
        }
        if self.bytes + p.payload.len() > GOP_MAX_BYTES || self.packets.len() >= GOP_MAX_PACKETS {
            self.forget();
            return;
        }
        self.bytes += p.payload.len();
        // A repair from upstream arrives after later packets: kept in
        // sequence order, so a replay carries frames whole and in order. (A
        // late keyframe start opens nothing: what followed it is gone.)
        let at = self
            .packets
            .iter()
            .rposition(|q| (seq.wrapping_sub(q.header.sequence_number) as i16) > 0)
            .map_or(0, |i| i + 1);
        self.packets.insert(at, p.clone());
    }

    /// The stream broke (a new upstream): nothing cached is a valid start
    /// for what comes next.
    pub fn forget(&mut self) {
        self.packets = Vec::new();
        self.bytes = 0;
        self.open = false;
    }

    /// A copy of the group, if there is one young enough to replay.
    pub fn snapshot(&self, now: Instant) -> Option<Vec<Packet>> {
        let young = self
            .started
            .is_some_and(|t| now.saturating_duration_since(t) <= GOP_MAX_AGE);
        (self.open && young && !self.packets.is_empty()).then(|| self.packets.clone())
    }
}

/// Retimes a replayed group: frame i of n gets the newest frame's timestamp
/// minus (n - 1 - i) ms, so the last keeps its own and the stream continues
/// from it without a jump. Packets of one frame share its timestamp.
pub fn compress_replay(packets: &mut [Packet], clock_rate: u32) {
    let Some(newest) = packets.last().map(|p| p.header.timestamp) else {
        return;
    };
    let step = (clock_rate / 1000).max(1);
    let mut frames_after = 0u32;
    let mut next_ts = None;
    for p in packets.iter_mut().rev() {
        let ts = p.header.timestamp;
        if next_ts.is_some_and(|n| n != ts) {
            frames_after += 1;
        }
        next_ts = Some(ts);
        p.header.timestamp = newest.wrapping_sub(frames_after.wrapping_mul(step));
    }
}

/// What a replay sent, so that the live packets queued behind it are told
/// apart: copies of what it sent, and repairs of holes it had.
///
/// A group is snapshotted as it stands. A packet lost upstream and not yet
/// repaired is a hole in it (at this sample's rate most frames are one
/// packet, so most holes are whole frames), and its repair reaches the
/// child's queue after the replay. Skipping every queued packet up to the
/// replay's newest (as copies) dropped those repairs: the child asked for
/// them in vain, then asked for a keyframe. In the lab at 3% loss: a 666 ms
/// freeze of a browser at join, and a recorder that lost 10 packets at its
/// start (and then, its link misjudged as full, 15% of its frames).
#[derive(Debug)]
pub struct Replayed {
    newest: u16,
    sent: HashSet<u16>,
    /// The first replayed frame's original timestamp, and every frame's
    /// new one by its original offset from it.
    first_ts: u32,
    retimed: BTreeMap<u32, u32>,
    at: Instant,
}

/// A queued packet, against the replay before it.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterReplay {
    /// Newer than anything replayed: the live stream.
    Live,
    /// Sent by the replay already, or older than its keyframe: dropped.
    Skip,
    /// A hole's repair, to go with this timestamp: its frame's new one, or
    /// for a frame the replay lacked, one between its neighbours' new ones.
    Repair(u32),
}

impl Replayed {
    /// Retimes `group` for a replay ([`compress_replay`]) and remembers
    /// what it holds.
    pub fn retime(group: &mut [Packet], clock_rate: u32, now: Instant) -> Option<Replayed> {
        let newest = group.last()?.header.sequence_number;
        let first_ts = group.first()?.header.timestamp;
        let original: Vec<u32> = group
            .iter()
            .map(|p| p.header.timestamp.wrapping_sub(first_ts))
            .collect();
        compress_replay(group, clock_rate);
        Some(Replayed {
            newest,
            sent: group.iter().map(|p| p.header.sequence_number).collect(),
            first_ts,
            retimed: original
                .into_iter()
                .zip(group.iter().map(|p| p.header.timestamp))
                .collect(),
            at: now,
        })
    }

    pub fn judge(&self, p: &Packet) -> AfterReplay {
        let seq = p.header.sequence_number;
        if (seq.wrapping_sub(self.newest) as i16) > 0 {
            return AfterReplay::Live;
        }
        if self.sent.contains(&seq) {
            return AfterReplay::Skip;
        }
        let off = p.header.timestamp.wrapping_sub(self.first_ts);
        if let Some(&ts) = self.retimed.get(&off) {
            return AfterReplay::Repair(ts);
        }
        // A frame the replay lacked: between the frames around it, in
        // proportion, so frames stay in order.
        let below = self.retimed.range(..off).next_back();
        let above = self.retimed.range(off..).next();
        match (below, above) {
            (Some((&o1, &n1)), Some((&o2, &n2))) => {
                let span = u64::from(n2.wrapping_sub(n1));
                let part = u64::from(off - o1) * span / u64::from(o2 - o1);
                AfterReplay::Repair(n1.wrapping_add(part as u32))
            }
            // Before the keyframe (a wrapped offset lands past the end).
            _ => AfterReplay::Skip,
        }
    }

    /// Past the time any repair of it could still come (repair.rs).
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) > Duration::from_secs(MAX_LATE_SECONDS.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A VP8 packet: a keyframe's first packet, or any other.
    fn vp8(seq: u16, ts: u32, keyframe_start: bool, len: usize) -> Packet {
        let mut payload = vec![0u8; len.max(4)];
        if keyframe_start {
            // Payload descriptor: S=1, partition 0; frame tag bit 0 = 0: key.
            payload[0] = 0x10;
            payload[1] = 0x00;
        } else {
            payload[0] = 0x00;
            payload[1] = 0x01;
        }
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.payload = Bytes::from(payload);
        p
    }

    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    #[test]
    fn a_group_too_old_is_not_replayed() {
        let mut g = GopCache::default();
        g.push(&vp8(1, 0, true, 10), Codec::Vp8, t0());
        g.push(&vp8(2, 3000, false, 10), Codec::Vp8, t0() + GOP_MAX_AGE);
        assert_eq!(g.snapshot(t0() + GOP_MAX_AGE).unwrap().len(), 2);
        assert!(g
            .snapshot(t0() + GOP_MAX_AGE + Duration::from_millis(1))
            .is_none());
    }

    #[test]
    fn a_group_starts_at_a_keyframe_and_restarts_at_the_next() {
        let mut g = GopCache::default();
        g.push(&vp8(1, 0, false, 10), Codec::Vp8, t0());
        assert!(
            g.snapshot(t0()).is_none(),
            "nothing before the first keyframe"
        );
        g.push(&vp8(2, 3000, true, 10), Codec::Vp8, t0());
        g.push(&vp8(3, 3000, false, 10), Codec::Vp8, t0());
        g.push(&vp8(4, 6000, false, 10), Codec::Vp8, t0());
        let seqs: Vec<u16> = g
            .snapshot(t0())
            .unwrap()
            .iter()
            .map(|p| p.header.sequence_number)
            .collect();
        assert_eq!(seqs, [2, 3, 4]);
        g.push(&vp8(5, 9000, true, 10), Codec::Vp8, t0());
        assert_eq!(g.snapshot(t0()).unwrap().len(), 1);
    }

    #[test]
    fn an_oversized_group_is_dropped_until_the_next_keyframe() {
        let mut g = GopCache::default();
        g.push(&vp8(1, 0, true, GOP_MAX_BYTES - 100), Codec::Vp8, t0());
        g.push(&vp8(2, 3000, false, 200), Codec::Vp8, t0());
        assert!(g.snapshot(t0()).is_none());
        g.push(&vp8(3, 6000, false, 10), Codec::Vp8, t0());
        assert!(g.snapshot(t0()).is_none(), "no group without its keyframe");
        g.push(&vp8(4, 9000, true, 10), Codec::Vp8, t0());
        assert_eq!(g.snapshot(t0()).unwrap().len(), 1);
    }

    #[test]
    fn a_late_repair_takes_its_place_in_the_group() {
        let mut g = GopCache::default();
        g.push(&vp8(10, 0, true, 10), Codec::Vp8, t0());
        g.push(&vp8(12, 3000, false, 10), Codec::Vp8, t0());
        g.push(&vp8(13, 6000, false, 10), Codec::Vp8, t0());
        g.push(&vp8(11, 0, false, 10), Codec::Vp8, t0());
        let seqs: Vec<u16> = g
            .snapshot(t0())
            .unwrap()
            .iter()
            .map(|p| p.header.sequence_number)
            .collect();
        assert_eq!(seqs, [10, 11, 12, 13]);
    }

    #[test]
    fn audio_is_not_cached_and_forget_empties() {
        let mut g = GopCache::default();
        g.push(&vp8(1, 0, true, 10), Codec::Opus, t0());
        assert!(g.snapshot(t0()).is_none());
        g.push(&vp8(2, 0, true, 10), Codec::Vp8, t0());
        g.forget();
        assert!(g.snapshot(t0()).is_none());
    }

    #[test]
    fn replayed_frames_end_at_the_newest_timestamp_a_millisecond_apart() {
        // Three frames (the first of two packets), 100 ms apart, across the
        // 32-bit wrap.
        let base = u32::MAX - 4000;
        let mut ps = vec![
            vp8(10, base, true, 10),
            vp8(11, base, false, 10),
            vp8(12, base.wrapping_add(9000), false, 10),
            vp8(13, base.wrapping_add(18000), false, 10),
        ];
        compress_replay(&mut ps, 90_000);
        let newest = base.wrapping_add(18000);
        let ts: Vec<u32> = ps.iter().map(|p| p.header.timestamp).collect();
        assert_eq!(
            ts,
            [
                newest.wrapping_sub(180),
                newest.wrapping_sub(180),
                newest.wrapping_sub(90),
                newest
            ]
        );
    }

    #[test]
    fn a_hole_in_the_replay_is_repaired_with_its_frames_new_timestamp() {
        // Frames at 1000, 4000, 7000, 10000 and 13000; packet 12 (of the
        // second frame) and packet 14 (all of the third) were lost upstream
        // when the group was taken.
        let mut group = vec![
            vp8(10, 1000, true, 100),
            vp8(11, 4000, false, 100),
            vp8(13, 4000, false, 100),
            vp8(15, 10_000, false, 100),
            vp8(16, 13_000, false, 100),
        ];
        let r = Replayed::retime(&mut group, 90_000, t0()).expect("a group");
        // Four frames, 1 ms (90 ticks) apart, ending at 13000.
        let retimed: Vec<u32> = group.iter().map(|p| p.header.timestamp).collect();
        assert_eq!(retimed, [12_730, 12_820, 12_820, 12_910, 13_000]);
        assert_eq!(
            r.judge(&vp8(12, 4000, false, 100)),
            AfterReplay::Repair(12_820)
        );
        // The missing frame goes between its neighbours.
        assert_eq!(
            r.judge(&vp8(14, 7000, false, 100)),
            AfterReplay::Repair(12_865)
        );
        assert_eq!(r.judge(&vp8(11, 4000, false, 100)), AfterReplay::Skip);
        // Before the keyframe: not the group's.
        assert_eq!(r.judge(&vp8(9, 0, false, 100)), AfterReplay::Skip);
        assert_eq!(r.judge(&vp8(17, 16_000, false, 100)), AfterReplay::Live);
        assert!(!r.expired(t0() + Duration::from_millis(1000)));
        assert!(r.expired(t0() + Duration::from_millis(1001)));
    }
}
