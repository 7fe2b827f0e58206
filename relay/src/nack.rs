//! Asking the parent for lost packets (generic NACK, RFC 4585 §6.2.1): at
//! once when a hole shows, and again each time its repair should have come
//! and did not.
//!
//! webrtc-rs's NACK generator asks on a fixed timer. A hole waited up to a
//! whole interval for its first NACK, and a lost repair waited one more
//! interval, whatever the round trip. In the lab at 3% loss per host
//! (captures on every link), a frame lost on the first hop reached a browser
//! two hops down 58 to 122 ms late. When its forwarded repair was lost too,
//! the browser froze for 180 to 210 ms.
//!
//! Here a hole is asked for as soon as the packet after it arrives. It is
//! asked again once the round trip has passed with margin. That round trip
//! is measured by the repairs themselves: the time from a NACK to the
//! packet it brought back, counted only for packets asked for once (Karn).
//! So a repair costs one round trip, and a lost repair or lost NACK one
//! more.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rtc::interceptor::{
    AttributedPacket, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket,
};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;

use crate::repair::MAX_LATE_SECONDS;

/// Holes further back than this are not asked for: the parent's send
/// history no longer holds them. A jump forward by more is a new stream,
/// not a loss.
const REACH: u64 = crate::peer::NACK_HISTORY_PACKETS as u64;
/// NACKs per lost packet before a keyframe request downstream takes over.
const MAX_ASKS: u16 = 10;
/// Until a repair has measured the round trip, ask again this soon.
const ASK_AGAIN_DEFAULT: Duration = Duration::from_millis(50);

/// How long a repair may take before it counts as lost, given the round
/// trip: the trip with half again as margin for jitter, plus the time a
/// sender takes to answer, within bounds that keep a lost repair cheap on a
/// LAN and a slow link from being asked dozens of times.
pub fn repair_deadline(rtt: Duration) -> Duration {
    (rtt + rtt / 2 + Duration::from_millis(10))
        .clamp(Duration::from_millis(20), Duration::from_millis(500))
}

/// A round trip smoothed with one more sample (RFC 6298's 1/8 gain).
pub fn smoothed(rtt: Option<Duration>, sample: Duration) -> Duration {
    rtt.map_or(sample, |r| (r * 7 + sample) / 8)
}

#[derive(Debug, Clone, Copy)]
struct Hole {
    first_asked: Instant,
    last_asked: Instant,
    asks: u16,
}

#[derive(Debug, Default)]
struct Stream {
    /// The newest sequence number seen, extended past 16 bits.
    newest: Option<u64>,
    holes: BTreeMap<u64, Hole>,
}

impl Stream {
    /// `seq` extended to the value nearest the newest one.
    fn extend(&self, seq: u16) -> u64 {
        match self.newest {
            // Starting far from zero keeps early packets of a wrapped
            // stream from going below it.
            None => (1 << 32) + u64::from(seq),
            Some(newest) => {
                let delta = seq.wrapping_sub(newest as u16) as i16;
                newest.wrapping_add_signed(i64::from(delta))
            }
        }
    }
}

/// The interceptor, in the chain's NACK generator slot.
pub struct AskForRepairs {
    sender_ssrc: u32,
    /// Streams that negotiated NACK, by SSRC.
    streams: HashMap<u32, Stream>,
    /// The round trip to the parent, smoothed.
    rtt: Option<Duration>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Default for AskForRepairs {
    fn default() -> Self {
        AskForRepairs {
            sender_ssrc: rand::random(),
            streams: HashMap::new(),
            rtt: None,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl AskForRepairs {
    pub fn register(registry: Registry) -> Registry {
        registry.with(Slot::NackGenerator, AskForRepairs::default())
    }

    /// How long after a NACK the same packet is asked for again.
    pub fn ask_again_after(&self) -> Duration {
        self.rtt.map_or(ASK_AGAIN_DEFAULT, repair_deadline)
    }

    /// The round trip measured so far.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Takes note of an RTP packet; returns the holes it uncovered (to be
    /// asked for now).
    fn on_packet(&mut self, ssrc: u32, seq: u16, now: Instant) -> Vec<u16> {
        let Some(stream) = self.streams.get_mut(&ssrc) else {
            return Vec::new();
        };
        let ext = stream.extend(seq);
        let Some(newest) = stream.newest else {
            stream.newest = Some(ext);
            return Vec::new();
        };
        if ext <= newest {
            if let Some(hole) = stream.holes.remove(&ext) {
                if hole.asks == 1 {
                    let sample = now.saturating_duration_since(hole.last_asked);
                    self.rtt = Some(smoothed(self.rtt, sample));
                }
            }
            return Vec::new();
        }
        stream.newest = Some(ext);
        if ext - newest > REACH {
            stream.holes.clear();
            return Vec::new();
        }
        let hole = Hole {
            first_asked: now,
            last_asked: now,
            asks: 1,
        };
        stream.holes.extend((newest + 1..ext).map(|s| (s, hole)));
        let new: Vec<u16> = (newest + 1..ext).map(|s| s as u16).collect();
        // Out of reach now: the parent can no longer answer for them.
        stream.holes = stream.holes.split_off(&ext.saturating_sub(REACH));
        new
    }

    /// Holes whose repair is overdue, by SSRC; forgets those asked for
    /// often or long enough.
    fn overdue(&mut self, now: Instant) -> Vec<(u32, Vec<u16>)> {
        let again = self.ask_again_after();
        let give_up = Duration::from_secs(MAX_LATE_SECONDS.into());
        let mut out = Vec::new();
        for (&ssrc, stream) in &mut self.streams {
            let mut seqs = Vec::new();
            stream.holes.retain(|&seq, hole| {
                if now < hole.last_asked + again {
                    return true;
                }
                if hole.asks >= MAX_ASKS || now >= hole.first_asked + give_up {
                    return false;
                }
                hole.asks += 1;
                hole.last_asked = now;
                seqs.push(seq as u16);
                true
            });
            if !seqs.is_empty() {
                out.push((ssrc, seqs));
            }
        }
        out
    }

    fn ask(&mut self, media_ssrc: u32, seqs: &[u16], now: Instant) {
        let nack = TransportLayerNack {
            sender_ssrc: self.sender_ssrc,
            media_ssrc,
            nacks: nack_pairs_from_sequence_numbers(seqs),
        };
        self.write.push_back(TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(nack)])),
        });
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for AskForRepairs {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(p) = &msg.message.packet {
            let (ssrc, now) = (p.header.ssrc, msg.now);
            let holes = self.on_packet(ssrc, p.header.sequence_number, now);
            if !holes.is_empty() {
                self.ask(ssrc, &holes, now);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        for (ssrc, seqs) in self.overdue(now) {
            self.ask(ssrc, &seqs, now);
        }
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let again = self.ask_again_after();
        self.streams
            .values()
            .flat_map(|s| s.holes.values())
            .map(|h| h.last_asked + again)
            .min()
    }
}

impl Interceptor for AskForRepairs {
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        let nack = info
            .rtcp_feedback
            .iter()
            .any(|fb| fb.typ == "nack" && fb.parameter.is_empty());
        if nack {
            self.streams.insert(info.ssrc, Stream::default());
        }
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.streams.remove(&info.ssrc);
    }

    fn bind_local_stream(&mut self, _: &StreamInfo) {}

    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 7;

    fn asker() -> AskForRepairs {
        let mut a = AskForRepairs::default();
        a.streams.insert(SSRC, Stream::default());
        a
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_hole_is_asked_for_when_the_next_packet_arrives() {
        let mut a = asker();
        let t = Instant::now();
        assert!(a.on_packet(SSRC, 10, t).is_empty());
        assert!(a.on_packet(SSRC, 11, t).is_empty());
        assert_eq!(a.on_packet(SSRC, 14, t), [12, 13]);
        // Nothing more until the repair is overdue.
        assert!(a.overdue(t + ms(49)).is_empty());
        assert_eq!(a.overdue(t + ms(50)), [(SSRC, vec![12, 13])]);
    }

    #[test]
    fn repairs_measure_the_round_trip_and_set_the_next_ask() {
        let mut a = asker();
        let t = Instant::now();
        a.on_packet(SSRC, 1, t);
        a.on_packet(SSRC, 3, t);
        a.on_packet(SSRC, 2, t + ms(4));
        assert_eq!(a.rtt(), Some(ms(4)));
        // 4 ms of round trip: asked again after the 20 ms floor.
        a.on_packet(SSRC, 5, t + ms(10));
        assert!(a.overdue(t + ms(29)).is_empty());
        assert_eq!(a.overdue(t + ms(30)), [(SSRC, vec![4])]);
        // A packet asked for twice measures nothing (Karn).
        a.on_packet(SSRC, 4, t + ms(200));
        assert_eq!(a.rtt(), Some(ms(4)));
    }

    #[test]
    fn a_hole_is_given_up_after_its_asks_or_its_second() {
        let mut a = asker();
        let t = Instant::now();
        a.on_packet(SSRC, 1, t);
        a.on_packet(SSRC, 3, t);
        let asks = (1..20)
            .filter(|i| !a.overdue(t + ms(50) * *i).is_empty())
            .count();
        assert_eq!(asks, usize::from(MAX_ASKS) - 1);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn sequence_numbers_wrap_and_jumps_are_not_losses() {
        let mut a = asker();
        let t = Instant::now();
        a.on_packet(SSRC, 65_534, t);
        assert_eq!(a.on_packet(SSRC, 1, t), [65_535, 0]);
        // A jump past the parent's history is a new stream.
        assert!(a.on_packet(SSRC, 10_000, t).is_empty());
        assert_eq!(a.poll_timeout(), None);
        // Streams without NACK are left alone.
        assert!(a.on_packet(SSRC + 1, 5, t).is_empty());
        assert!(a.on_packet(SSRC + 1, 9, t).is_empty());
    }
}
