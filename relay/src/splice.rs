//! One outgoing RTP stream per track, across changes of parent.
//!
//! When the parent changes, the new parent's packets carry sequence numbers
//! and timestamps of their own (a browser parent re-encodes and numbers
//! afresh). Children keep their connections, so the track must stay one
//! continuous RTP stream for them: a jump would look to their SRTP like a
//! rollover or a replay, and everything after it would be dropped.
//!
//! A new parent also starts by replaying its current group of pictures
//! (gop.rs), which this node has mostly forwarded already. Passed on, those
//! frames would reach the children twice: a recording would hold them twice
//! and a viewer would see its picture jump back. So the stream is spliced:
//!
//! - Every packet forwarded is remembered by its payload, which is the same
//!   at every hop (relays never repacketize), for the last
//!   [`RECENT_PACKETS`].
//! - After a change, the new parent's packets that went out before are
//!   skipped, and the newest of them ties the new numbering to the old.
//! - The first packet not sent before goes on from there. If the packet
//!   that tied the two was the newest this node sent, nothing is repeated
//!   and nothing is missing: the children see one stream with no seam, and
//!   the frames they missed while the node had no parent come now, as the
//!   new parent sends them (a replay's frames a millisecond apart, so they
//!   catch up). The SSRC stays the first upstream's.
//! - Otherwise (the new parent's group started after the last frame sent,
//!   or it is another encoding, as from a browser parent) video waits for
//!   a keyframe and continues with one missing sequence number, which tells
//!   receivers the frame in flight is incomplete, and timestamps advanced by
//!   the wall time that passed. Audio needs no keyframe and goes on at once.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::hash::Hasher;
use std::time::{Duration, Instant};

use rtc::rtp::packet::Packet;
use tracing::debug;

use crate::forward::starts_keyframe;
use crate::media::Codec;

/// Packets remembered by payload: groups of pictures of a few seconds, at
/// the bit rates a tree carries (200 packets/s is about 2 Mbit/s).
pub const RECENT_PACKETS: usize = 2048;

/// What becomes of one packet from upstream.
#[derive(Debug)]
pub enum Mapped<'a> {
    /// Send it, numbered for the children (borrowed when the numbering is
    /// the upstream's own).
    Send(Cow<'a, Packet>),
    /// A new parent's copy of a packet already sent: skip it.
    SentBefore,
    /// The new upstream cannot be joined before its next keyframe.
    AwaitingKeyframe,
}

/// The outgoing numbering of one track (see the module comment).
#[derive(Debug, Default)]
pub struct Splice {
    /// A new upstream started and is not joined yet.
    resync: bool,
    seq_offset: u16,
    ts_offset: u32,
    /// The first upstream's SSRC, kept: for the legs that read the hub's
    /// packets as they are (the recorder), a new SSRC is a new stream.
    ssrc: Option<u32>,
    /// The newest packet sent: sequence number, timestamp, when.
    last: Option<(u16, u32, Instant)>,
    recent: VecDeque<Sent>,
    /// While a new upstream is not joined yet: its newest packet that was
    /// sent before.
    tie: Option<Tie>,
    said_waiting: bool,
    /// The packet just mapped follows a gap that will never fill: the join
    /// at a keyframe skipped what the old parent did not send.
    gap_before: bool,
}

/// A packet that went out: its payload's fingerprint and its numbers.
#[derive(Clone, Copy, Debug)]
struct Sent {
    fingerprint: u64,
    seq: u16,
    ts: u32,
}

/// One packet in the new upstream's numbering and in the children's.
#[derive(Clone, Copy, Debug)]
struct Tie {
    in_seq: u16,
    in_ts: u32,
    out_seq: u16,
    out_ts: u32,
}

/// `a` comes after `b` in RTP sequence order.
fn after(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

fn fingerprint(payload: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(payload);
    h.write_usize(payload.len());
    h.finish()
}

impl Splice {
    /// A new upstream feeds the track from now on.
    pub fn restart(&mut self) {
        self.resync = true;
        self.tie = None;
        self.said_waiting = false;
    }

    /// A padding-only packet next in the children's numbering, at the
    /// newest timestamp, if no media went out for `quiet` (None too before
    /// anything was sent): what a track sends to say it is alive while
    /// nothing feeds it (`TrackHub::keep_alive`). The current upstream's
    /// later packets move one number up, past it; the time of the newest
    /// media stays, and a stream joined later is timed from it.
    pub fn filler(&mut self, now: Instant, quiet: Duration) -> Option<Packet> {
        let (seq, ts, at) = self.last?;
        if now.saturating_duration_since(at) < quiet {
            return None;
        }
        let seq = seq.wrapping_add(1);
        self.last = Some((seq, ts, at));
        self.seq_offset = self.seq_offset.wrapping_add(1);
        let mut p = Packet::default();
        p.header.version = 2;
        p.header.padding = true;
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.header.ssrc = self.ssrc.unwrap_or_default();
        Some(p)
    }

    /// Whether the packet [`Splice::map`] just sent follows a gap that will
    /// never fill (a join at a keyframe): a consumer in this process that
    /// waits for holes to fill (the recorder) need not wait for this one.
    pub fn gap_before(&self) -> bool {
        self.gap_before
    }

    /// The packet as children should see it.
    pub fn map<'a>(&mut self, pkt: &'a Packet, codec: Codec, now: Instant) -> Mapped<'a> {
        self.gap_before = false;
        if self.resync {
            if let Some(wait) = self.join(pkt, codec, now) {
                return wait;
            }
        }
        let ssrc = *self.ssrc.get_or_insert(pkt.header.ssrc);
        let out = if self.seq_offset == 0 && self.ts_offset == 0 && pkt.header.ssrc == ssrc {
            Cow::Borrowed(pkt)
        } else {
            let mut p = pkt.clone();
            p.header.sequence_number = p.header.sequence_number.wrapping_add(self.seq_offset);
            p.header.timestamp = p.header.timestamp.wrapping_add(self.ts_offset);
            p.header.ssrc = ssrc;
            Cow::Owned(p)
        };
        let (seq, ts) = (out.header.sequence_number, out.header.timestamp);
        if self.last.is_none_or(|(last, _, _)| after(seq, last)) {
            self.last = Some((seq, ts, now));
        }
        Mapped::Send(out)
    }

    /// Remembers a packet that went out (numbered for the children).
    pub fn sent(&mut self, out: &Packet) {
        if out.payload.is_empty() {
            return;
        }
        if self.recent.len() == RECENT_PACKETS {
            self.recent.pop_front();
        }
        self.recent.push_back(Sent {
            fingerprint: fingerprint(&out.payload),
            seq: out.header.sequence_number,
            ts: out.header.timestamp,
        });
    }

    /// While a new upstream is not joined: joins it at `pkt` (None), or
    /// says why `pkt` does not go out.
    fn join(&mut self, pkt: &Packet, codec: Codec, now: Instant) -> Option<Mapped<'static>> {
        let (in_seq, in_ts) = (pkt.header.sequence_number, pkt.header.timestamp);
        if pkt.payload.is_empty() {
            // A parent's primer (downstream.rs): nothing to join at.
            return Some(Mapped::AwaitingKeyframe);
        }
        let print = fingerprint(&pkt.payload);
        if let Some(s) = self.recent.iter().rev().find(|s| s.fingerprint == print) {
            if self.tie.is_none_or(|t| after(in_seq, t.in_seq)) {
                self.tie = Some(Tie {
                    in_seq,
                    in_ts,
                    out_seq: s.seq,
                    out_ts: s.ts,
                });
            }
            return Some(Mapped::SentBefore);
        }
        let newest = self.last.map(|(seq, _, _)| seq);
        match self.tie {
            Some(t) if Some(t.out_seq) == newest && after(in_seq, t.in_seq) => {
                debug!(
                    in_seq,
                    out_seq = t.out_seq.wrapping_add(1),
                    "spliced onto the new stream"
                );
                self.seq_offset = t.out_seq.wrapping_sub(t.in_seq);
                self.ts_offset = t.out_ts.wrapping_sub(t.in_ts);
            }
            _ if codec.is_video() && !starts_keyframe(codec, &pkt.payload) => {
                if !self.said_waiting {
                    self.said_waiting = true;
                    debug!(
                        in_seq,
                        tie = ?self.tie,
                        newest_sent = ?newest,
                        recent = self.recent.len(),
                        "nothing to splice at: waiting for a keyframe"
                    );
                }
                return Some(Mapped::AwaitingKeyframe);
            }
            _ => {
                debug!(in_seq, tie = ?self.tie, newest_sent = ?newest, "joined the new stream at a keyframe");
                if let Some((seq, ts, at)) = self.last {
                    let since = now
                        .saturating_duration_since(at)
                        .max(Duration::from_millis(1));
                    let ticks = (since.as_secs_f64() * f64::from(codec.clock_rate())) as u32;
                    self.seq_offset = seq.wrapping_add(2).wrapping_sub(in_seq);
                    self.ts_offset = ts.wrapping_add(ticks).wrapping_sub(in_ts);
                    self.gap_before = true;
                }
            }
        }
        self.resync = false;
        self.tie = None;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const KEY: &[u8] = &[0x10, 0x00, 0x00];
    const DELTA: &[u8] = &[0x10, 0x01, 0x00];

    fn rtp(seq: u16, ts: u32, payload: &[u8]) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.payload = Bytes::copy_from_slice(payload);
        p
    }

    /// A VP8 packet whose payload is unique to `frame` and `part` (the
    /// first part of a keyframe starts a keyframe).
    fn vp8(seq: u16, ts: u32, frame: u8, part: u8, key: bool) -> Packet {
        let start = if part == 0 { 0x10 } else { 0x00 };
        let tag = if key { 0x00 } else { 0x01 };
        rtp(seq, ts, &[start, tag, frame, part])
    }

    /// (sequence number, timestamp) as children see the packet, if sent;
    /// a sent packet is remembered, as the hub does.
    fn out(s: &mut Splice, p: Packet, codec: Codec, now: Instant) -> Option<(u16, u32)> {
        let sent = match s.map(&p, codec, now) {
            Mapped::Send(o) => o.into_owned(),
            _ => return None,
        };
        s.sent(&sent);
        Some((sent.header.sequence_number, sent.header.timestamp))
    }

    #[test]
    fn fillers_take_numbers_of_their_own_while_the_track_is_quiet() {
        let (vp8c, quiet) = (Codec::Vp8, Duration::from_millis(500));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = Splice::default();
        assert!(r.filler(t0, quiet).is_none(), "nothing sent yet");
        assert_eq!(
            out(&mut r, vp8(100, 9000, 1, 0, true), vp8c, t0),
            Some((100, 9000))
        );
        assert!(r.filler(at(499), quiet).is_none(), "not quiet yet");
        let f = r.filler(at(500), quiet).expect("a filler");
        assert_eq!(
            (
                f.header.sequence_number,
                f.header.timestamp,
                f.header.padding
            ),
            (101, 9000, true)
        );
        assert!(f.payload.is_empty());
        assert_eq!(
            r.filler(at(1000), quiet).map(|f| f.header.sequence_number),
            Some(102)
        );
        // The same upstream, back: after the fillers, with its own timing.
        assert_eq!(
            out(&mut r, vp8(101, 12000, 2, 0, false), vp8c, at(1100)),
            Some((103, 12000))
        );
        assert!(r.filler(at(1200), quiet).is_none());
    }

    #[test]
    fn a_new_upstream_that_cannot_be_spliced_starts_at_a_keyframe_after_one_gap() {
        let vp8c = Codec::Vp8;
        let t0 = Instant::now();
        let mut r = Splice::default();
        r.restart();
        // The first upstream: nothing before its keyframe, then its own
        // numbers, passed through without a copy.
        assert_eq!(out(&mut r, rtp(7, 1000, DELTA), vp8c, t0), None);
        let key = rtp(8, 4000, KEY);
        assert!(matches!(
            r.map(&key, vp8c, t0),
            Mapped::Send(Cow::Borrowed(_))
        ));
        assert_eq!(
            out(&mut r, rtp(9, 7000, &[0x10, 0x01, 9]), vp8c, t0),
            Some((9, 7000))
        );
        // An old packet arriving late does not move the reference back.
        assert_eq!(
            out(&mut r, rtp(6, 100, &[0x10, 0x01, 6]), vp8c, t0),
            Some((6, 100))
        );

        // A new upstream numbering from 65533, with nothing sent before:
        // after its keyframe, one gap in the sequence and 100 ms of 90 kHz
        // timestamps; its wrap to 0 goes on as 13.
        r.restart();
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(out(&mut r, rtp(65533, 5, &[0x10, 0x01, 1]), vp8c, t1), None);
        assert_eq!(
            out(&mut r, rtp(65534, 5, &[0x10, 0x00, 2]), vp8c, t1),
            Some((11, 16000))
        );
        assert_eq!(
            out(&mut r, rtp(65535, 3005, &[0x10, 0x01, 3]), vp8c, t1),
            Some((12, 19000))
        );
        assert_eq!(
            out(&mut r, rtp(0, 3005, &[0x00, 0x01, 3]), vp8c, t1),
            Some((13, 19000))
        );
    }

    #[test]
    fn audio_needs_no_keyframe_to_resume() {
        let t0 = Instant::now();
        let mut r = Splice::default();
        assert_eq!(
            out(&mut r, rtp(100, 48_000, b"x"), Codec::Opus, t0),
            Some((100, 48_000))
        );
        r.restart();
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(
            out(&mut r, rtp(9, 5, b"y"), Codec::Opus, t1),
            Some((102, 48_960))
        );
    }

    /// Frames 0-5 of a group (frame 0 the keyframe), two packets each,
    /// 3000 ticks apart: the old parent's numbering from 1000.
    fn old_parent(r: &mut Splice, frames: u8, t0: Instant) -> Vec<(u16, u32)> {
        let mut sent = Vec::new();
        for f in 0..frames {
            for part in 0..2 {
                let seq = 1000 + u16::from(f) * 2 + u16::from(part);
                let ts = 90_000 + u32::from(f) * 3000;
                let p = vp8(seq, ts, f, part, f == 0);
                sent.push(out(r, p, Codec::Vp8, t0).expect("sent"));
            }
        }
        sent
    }

    #[test]
    fn a_new_parents_replay_is_spliced_with_nothing_repeated_or_missing() {
        let t0 = Instant::now();
        let mut r = Splice::default();
        // Sent: frames 0-3 and the first packet of frame 4 (the old parent
        // died mid-frame).
        let mut sent = old_parent(&mut r, 4, t0);
        sent.push(out(&mut r, vp8(1008, 102_000, 4, 0, false), Codec::Vp8, t0).expect("sent"));
        assert_eq!(sent.last(), Some(&(1008, 102_000)));

        // The new parent numbers from 50 and replays the group a
        // millisecond (90 ticks) apart, then goes on live.
        r.restart();
        let t1 = t0 + Duration::from_millis(700);
        let mut got = Vec::new();
        for f in 0..8u8 {
            for part in 0..2 {
                let seq = 50 + u16::from(f) * 2 + u16::from(part);
                let ts = 7_000 + u32::from(f) * 90;
                if let Some(o) = out(&mut r, vp8(seq, ts, f, part, f == 0), Codec::Vp8, t1) {
                    got.push(o);
                }
            }
        }
        // Nothing sent twice; the rest of frame 4 and frames 5-7 go on from
        // sequence number 1009 and from frame 4's timestamp.
        let want: Vec<(u16, u32)> = vec![
            (1009, 102_000),
            (1010, 102_090),
            (1011, 102_090),
            (1012, 102_180),
            (1013, 102_180),
            (1014, 102_270),
            (1015, 102_270),
        ];
        assert_eq!(got, want);
        // One SSRC for the children throughout.
        let mut p = vp8(66, 7_720, 8, 0, false);
        p.header.ssrc = 0xbeef;
        match r.map(&p, Codec::Vp8, t1) {
            Mapped::Send(o) => assert_eq!(o.header.ssrc, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_parent_behind_this_node_is_joined_where_this_node_stopped() {
        let t0 = Instant::now();
        let mut r = Splice::default();
        let sent = old_parent(&mut r, 6, t0);
        // The new parent, live and 2 frames behind: frames 4-5 were sent
        // and are skipped, frame 6 goes on with no seam.
        r.restart();
        let mut got = Vec::new();
        for f in 4..7u8 {
            for part in 0..2 {
                let seq = 300 + u16::from(f) * 2 + u16::from(part);
                let ts = 500 + u32::from(f) * 3000;
                if let Some(o) = out(&mut r, vp8(seq, ts, f, part, false), Codec::Vp8, t0) {
                    got.push(o);
                }
            }
        }
        let (last_seq, last_ts) = *sent.last().expect("sent");
        assert_eq!(
            got,
            vec![
                (last_seq + 1, last_ts + 3000),
                (last_seq + 2, last_ts + 3000)
            ]
        );
    }

    #[test]
    fn a_new_parent_whose_group_started_later_is_joined_at_its_keyframe_with_one_gap() {
        let t0 = Instant::now();
        let mut r = Splice::default();
        let sent = old_parent(&mut r, 3, t0);
        let (last_seq, last_ts) = *sent.last().expect("sent");
        // The new parent's group starts at frame 10: nothing of it was
        // sent, so no tie; its keyframe starts after one missing number.
        r.restart();
        let t1 = t0 + Duration::from_millis(500);
        let got = out(&mut r, vp8(700, 40, 10, 0, true), Codec::Vp8, t1);
        assert_eq!(got, Some((last_seq + 2, last_ts + 45_000)));
        assert!(r.gap_before(), "the gap is final");
        out(&mut r, vp8(701, 40, 10, 1, true), Codec::Vp8, t1);
        assert!(!r.gap_before(), "only before the join");
    }

    #[test]
    fn a_tie_older_than_the_newest_sent_is_not_spliced() {
        let t0 = Instant::now();
        let mut r = Splice::default();
        old_parent(&mut r, 4, t0);
        // The new parent has frames 0-1 but then something this node never
        // sent (another encoding): it waits for a keyframe.
        r.restart();
        assert_eq!(out(&mut r, vp8(10, 1, 0, 0, true), Codec::Vp8, t0), None);
        assert_eq!(out(&mut r, vp8(11, 1, 0, 1, true), Codec::Vp8, t0), None);
        assert_eq!(out(&mut r, vp8(12, 2, 99, 1, false), Codec::Vp8, t0), None);
        assert!(matches!(
            r.map(&vp8(13, 3, 98, 0, false), Codec::Vp8, t0),
            Mapped::AwaitingKeyframe
        ));
    }
}
