//! Which of a track's packets one child gets, decided without I/O: the
//! child's writer (downstream.rs) asks for every packet and carries out the
//! answer.
//!
//! A child must start at a keyframe, and again after its queue overflowed,
//! or it would decode references it never had. A child that starts
//! mid-group gets the current group of pictures first (gop.rs) instead of
//! waiting for the next keyframe; one that has to wait asks its parent for a
//! keyframe, again every [`KEYFRAME_REASK`] while the wait lasts, because a
//! request can be lost and a browser parent sends keyframes only when asked.
//! After a replay, packets it already carried are skipped, and repairs of
//! its holes go out with the replay's timing.

use std::time::{Duration, Instant};

use rtc::rtp::packet::Packet;

use crate::forward::starts_keyframe;
use crate::gop::{AfterReplay, Replayed};
use crate::media::Codec;

/// How long a child waits for a keyframe before asking again.
pub const KEYFRAME_REASK: Duration = Duration::from_secs(1);

/// What to do with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send it, paced to the child's link.
    Send,
    /// A repair of a replayed frame: send it now, with this timestamp.
    Repair(u32),
    /// Not for this child.
    Drop,
    /// Not for this child, which waits for a keyframe: ask the parent for one.
    AskKeyframe,
}

/// How the child's stream began, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// With a replay of the current group (the decision's `replay`).
    FromGroup,
    /// At a keyframe as it came.
    AtKeyframe,
}

/// The answer for one packet.
#[derive(Debug)]
pub struct Decision {
    /// Packets to send first, unpaced: a retimed replay of the current group.
    pub replay: Vec<Packet>,
    pub action: Action,
    pub started: Option<Started>,
}

/// One child's gate on one track.
#[derive(Debug)]
pub struct LegGate {
    codec: Codec,
    need_keyframe: bool,
    asked: Option<Instant>,
    /// Nothing sent yet: the start may replay the current group. Later
    /// waits (after an overflow) do not: the child has most of it.
    fresh: bool,
    /// What the replay sent, while repairs of its holes may come.
    replayed: Option<Replayed>,
}

impl LegGate {
    pub fn new(codec: Codec) -> LegGate {
        LegGate {
            codec,
            need_keyframe: true,
            asked: None,
            fresh: true,
            replayed: None,
        }
    }

    /// The leg's queue overflowed: packets are missing, so the child must
    /// start again at a keyframe.
    pub fn lagged(&mut self) {
        self.need_keyframe = true;
        self.asked = None;
    }

    /// The decision for the next packet. `group` gives the current group of
    /// pictures if a replay may be wanted; it is called at most once.
    pub fn on_packet(
        &mut self,
        p: &Packet,
        now: Instant,
        group: impl FnOnce() -> Option<Vec<Packet>>,
    ) -> Decision {
        let mut d = Decision {
            replay: Vec::new(),
            action: Action::Send,
            started: None,
        };
        self.replayed = self.replayed.take().filter(|r| !r.expired(now));
        if self.need_keyframe && !starts_keyframe(self.codec, &p.payload) {
            if self.fresh {
                if let Some(mut g) = group() {
                    self.replayed = Replayed::retime(&mut g, self.codec.clock_rate(), now);
                    d.started = Some(Started::FromGroup);
                    d.replay = g;
                    self.fresh = false;
                    self.need_keyframe = false;
                }
            }
            if self.need_keyframe {
                let due = self
                    .asked
                    .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_REASK);
                if due {
                    self.asked = Some(now);
                }
                d.action = if due {
                    Action::AskKeyframe
                } else {
                    Action::Drop
                };
                return d;
            }
        }
        if self.need_keyframe {
            self.need_keyframe = false;
            if self.codec.is_video() {
                d.started = Some(Started::AtKeyframe);
            }
        }
        self.fresh = false;
        if let Some(r) = &self.replayed {
            d.action = match r.judge(p) {
                AfterReplay::Live => Action::Send,
                AfterReplay::Skip => Action::Drop,
                AfterReplay::Repair(ts) => Action::Repair(ts),
            };
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::rtp::header::Header;

    /// A VP8 packet: the first of a keyframe, or of an inter frame.
    fn vp8(seq: u16, ts: u32, key: bool) -> Packet {
        let payload: &[u8] = if key {
            &[0x10, 0x00, 0x00]
        } else {
            &[0x10, 0x01, 0x00]
        };
        Packet {
            header: Header {
                sequence_number: seq,
                timestamp: ts,
                marker: true,
                ..Default::default()
            },
            payload: Bytes::from_static(payload),
        }
    }

    fn none() -> Option<Vec<Packet>> {
        None
    }

    #[test]
    fn a_fresh_child_mid_group_gets_the_group_then_the_live_stream() {
        let t0 = Instant::now();
        let mut g = LegGate::new(Codec::Vp8);
        let group = vec![vp8(10, 0, true), vp8(11, 3000, false), vp8(12, 6000, false)];
        let d = g.on_packet(&vp8(13, 9000, false), t0, || Some(group));
        assert_eq!(d.started, Some(Started::FromGroup));
        assert_eq!(d.replay.len(), 3);
        // Retimed to end at the newest frame's timestamp, 1 ms apart.
        let ts: Vec<u32> = d.replay.iter().map(|p| p.header.timestamp).collect();
        assert_eq!(ts, vec![5820, 5910, 6000]);
        assert_eq!(d.action, Action::Send, "newer than the replay: live");
        // A copy of a replayed packet (queued before the replay was taken).
        let d = g.on_packet(&vp8(12, 6000, false), t0, none);
        assert_eq!(d.action, Action::Drop);
        assert!(d.replay.is_empty() && d.started.is_none());
    }

    #[test]
    fn a_repair_of_a_replayed_hole_keeps_the_replay_timing() {
        let t0 = Instant::now();
        let mut g = LegGate::new(Codec::Vp8);
        // Packet 11 was lost upstream: the group has a hole there.
        let group = vec![vp8(10, 0, true), vp8(12, 6000, false)];
        let d = g.on_packet(&vp8(13, 9000, false), t0, || Some(group));
        assert_eq!(d.replay.len(), 2);
        // Its repair, a frame the replay lacked: between its neighbours.
        let d = g.on_packet(&vp8(11, 3000, false), t0, none);
        assert_eq!(d.action, Action::Repair(5955));
    }

    #[test]
    fn with_no_group_the_child_asks_for_a_keyframe_again_each_second() {
        let t0 = Instant::now();
        let mut g = LegGate::new(Codec::Vp8);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            g.on_packet(&vp8(1, 0, false), at(0), none).action,
            Action::AskKeyframe
        );
        assert_eq!(
            g.on_packet(&vp8(2, 0, false), at(500), none).action,
            Action::Drop
        );
        assert_eq!(
            g.on_packet(&vp8(3, 0, false), at(1000), none).action,
            Action::AskKeyframe
        );
        let d = g.on_packet(&vp8(4, 3000, true), at(1200), none);
        assert_eq!(
            (d.action, d.started),
            (Action::Send, Some(Started::AtKeyframe))
        );
        assert_eq!(
            g.on_packet(&vp8(5, 6000, false), at(1300), none).action,
            Action::Send
        );
    }

    #[test]
    fn after_an_overflow_the_child_waits_for_a_keyframe_without_a_replay() {
        let t0 = Instant::now();
        let mut g = LegGate::new(Codec::Vp8);
        assert_eq!(g.on_packet(&vp8(1, 0, true), t0, none).action, Action::Send);
        g.lagged();
        let mut offered = false;
        let d = g.on_packet(&vp8(9, 3000, false), t0, || {
            offered = true;
            Some(vec![vp8(1, 0, true)])
        });
        assert!(!offered, "the group is not asked for");
        assert_eq!(d.action, Action::AskKeyframe);
        let d = g.on_packet(&vp8(10, 6000, true), t0, none);
        assert_eq!(
            (d.action, d.started),
            (Action::Send, Some(Started::AtKeyframe))
        );
    }

    #[test]
    fn audio_flows_from_its_first_packet() {
        let mut g = LegGate::new(Codec::Opus);
        let d = g.on_packet(&vp8(1, 0, false), Instant::now(), none);
        assert_eq!((d.action, d.started), (Action::Send, None));
    }
}
