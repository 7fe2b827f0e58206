//! Packets back in sequence order, waiting a bounded time for a missing one.
//!
//! Every hop repairs its losses with NACK: the receiver asks, the sender
//! sends the packet again, and it arrives a round trip and a NACK interval
//! late, after packets that were sent later. A consumer that needs order
//! (the IVF recorder, which writes a frame only when all of its packets are
//! in) would otherwise take the hole for a loss and wait for the next
//! keyframe, throwing away a whole group of pictures for one late packet.
//!
//! [`Reorder`] holds what comes after a hole until the hole fills, and gives
//! up on it (reporting a [`Released::Gap`]) when the hole is older than its
//! time bound or more packets wait than its packet bound. Sans-I/O: the
//! caller passes the time in and calls [`Reorder::poll`] by
//! [`Reorder::deadline`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rtc::rtp::packet::Packet;

/// What comes out, in sequence order.
#[derive(Debug)]
pub enum Released {
    Packet(Packet),
    /// This many packets never came (or came too late): whatever they
    /// carried is lost.
    Gap(u64),
}

/// A reorder buffer for one RTP stream (one SSRC's sequence numbers).
#[derive(Debug)]
pub struct Reorder {
    max_wait: Duration,
    max_packets: usize,
    /// Extended (unwrapped) sequence number of the next packet to release.
    next: Option<u64>,
    /// The newest extended sequence number seen: the reference for
    /// unwrapping the next one.
    newest: u64,
    held: BTreeMap<u64, (Packet, Instant)>,
}

impl Reorder {
    pub fn new(max_wait: Duration, max_packets: usize) -> Reorder {
        Reorder {
            max_wait,
            max_packets: max_packets.max(1),
            next: None,
            newest: 0,
            held: BTreeMap::new(),
        }
    }

    /// Sequence numbers are 16 bits; a stream runs through them every few
    /// minutes at video rates. Unwraps relative to the newest seen.
    fn extend(&mut self, seq: u16) -> u64 {
        let Some(_) = self.next else {
            // 2^32 leaves room below the first packet for late ones.
            self.newest = (1 << 32) | u64::from(seq);
            return self.newest;
        };
        let delta = seq.wrapping_sub(self.newest as u16) as i16;
        let ext = self.newest.wrapping_add_signed(i64::from(delta));
        self.newest = self.newest.max(ext);
        ext
    }

    /// Takes one packet; returns what can go out now, in order. Duplicates
    /// and packets older than what was already released are dropped.
    pub fn push(&mut self, p: Packet, now: Instant) -> Vec<Released> {
        let ext = self.extend(p.header.sequence_number);
        let next = *self.next.get_or_insert(ext);
        if ext < next || self.held.contains_key(&ext) {
            return Vec::new();
        }
        self.held.insert(ext, (p, now));
        self.poll(now)
    }

    /// Takes a packet that follows a gap that will never fill (its sender
    /// knows: a join at a keyframe, splice.rs): what waits before it goes
    /// out now, the holes given up as gaps, instead of at their deadline.
    pub fn push_after_gap(&mut self, p: Packet, now: Instant) -> Vec<Released> {
        let Some(mut next) = self.next else {
            return self.push(p, now);
        };
        let ext = self.extend(p.header.sequence_number);
        let mut out = Vec::new();
        while next < ext {
            if let Some((q, _)) = self.held.remove(&next) {
                out.push(Released::Packet(q));
                next += 1;
                continue;
            }
            let resume = self.held.range(next..ext).next().map_or(ext, |(&k, _)| k);
            out.push(Released::Gap(resume - next));
            next = resume;
        }
        self.next = Some(next);
        out.extend(self.push(p, now));
        out
    }

    /// Releases what is in order, and gives up on a hole that waited too
    /// long or holds too many packets behind it.
    pub fn poll(&mut self, now: Instant) -> Vec<Released> {
        let mut out = Vec::new();
        let Some(mut next) = self.next else {
            return out;
        };
        loop {
            if let Some((p, _)) = self.held.remove(&next) {
                out.push(Released::Packet(p));
                next += 1;
                continue;
            }
            let Some((&first, &(_, since))) = self.held.iter().next() else {
                break;
            };
            let overdue = now.saturating_duration_since(since) >= self.max_wait;
            if !overdue && self.held.len() <= self.max_packets {
                break;
            }
            out.push(Released::Gap(first - next));
            next = first;
        }
        self.next = Some(next);
        out
    }

    /// When [`Reorder::poll`] must run next to give up on the current hole
    /// in time (None: nothing waits).
    pub fn deadline(&self) -> Option<Instant> {
        self.held
            .values()
            .next()
            .map(|(_, since)| *since + self.max_wait)
    }

    /// Packets waiting behind a hole.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Forgets everything (a new stream follows).
    pub fn reset(&mut self) {
        self.next = None;
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p
    }

    /// Sequence numbers released, with gaps as negative counts.
    fn seqs(out: Vec<Released>) -> Vec<i64> {
        out.into_iter()
            .map(|r| match r {
                Released::Packet(p) => i64::from(p.header.sequence_number),
                Released::Gap(n) => -(n as i64),
            })
            .collect()
    }

    #[test]
    fn a_late_packet_fills_its_hole_and_releases_what_waited() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_secs(1), 100);
        assert_eq!(seqs(r.push(pkt(10), t0)), [10]);
        assert_eq!(seqs(r.push(pkt(12), t0)), Vec::<i64>::new());
        assert_eq!(seqs(r.push(pkt(13), t0)), Vec::<i64>::new());
        assert_eq!(r.held(), 2);
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(seqs(r.push(pkt(11), t1)), [11, 12, 13]);
        assert_eq!(r.deadline(), None);
        // The same packet again, or one already released: dropped.
        assert_eq!(seqs(r.push(pkt(11), t1)), Vec::<i64>::new());
        assert_eq!(seqs(r.push(pkt(14), t1)), [14]);
    }

    #[test]
    fn a_hole_is_given_up_after_the_time_bound() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_millis(500), 100);
        r.push(pkt(1), t0);
        r.push(pkt(4), t0);
        r.push(pkt(5), t0 + Duration::from_millis(100));
        assert!(r.poll(t0 + Duration::from_millis(499)).is_empty());
        assert_eq!(seqs(r.poll(t0 + Duration::from_millis(500))), [-2, 4, 5]);
        // Too late now: a retransmission of 2 is dropped.
        assert!(r.push(pkt(2), t0 + Duration::from_millis(600)).is_empty());
    }

    #[test]
    fn a_final_gap_is_given_up_at_once() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_secs(1), 100);
        r.push(pkt(1), t0);
        assert!(r.push(pkt(3), t0).is_empty(), "2 may still come");
        // The sender says nothing before 7 will come: 2 and 4-6 are given
        // up without waiting, 3 goes out between them.
        assert_eq!(seqs(r.push_after_gap(pkt(7), t0)), [-1, 3, -3, 7]);
        assert_eq!(r.deadline(), None);
        assert_eq!(seqs(r.push(pkt(8), t0)), [8]);
        // With nothing missing it is an ordinary push.
        assert_eq!(seqs(r.push_after_gap(pkt(9), t0)), [9]);
    }

    #[test]
    fn a_hole_is_given_up_past_the_packet_bound() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_secs(10), 3);
        r.push(pkt(0), t0);
        for s in 2..5 {
            assert!(r.push(pkt(s), t0).is_empty());
        }
        assert_eq!(seqs(r.push(pkt(5), t0)), [-1, 2, 3, 4, 5]);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_secs(1), 100);
        r.push(pkt(65534), t0);
        assert!(r.push(pkt(0), t0).is_empty());
        assert!(r.push(pkt(1), t0).is_empty());
        assert_eq!(seqs(r.push(pkt(65535), t0)), [65535, 0, 1]);
        // Two holes across the wrap, the second filled first.
        r.push(pkt(4), t0);
        r.push(pkt(3), t0);
        assert_eq!(seqs(r.push(pkt(2), t0)), [2, 3, 4]);
    }

    #[test]
    fn a_late_packet_before_the_first_is_dropped_and_reset_starts_over() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_secs(1), 100);
        r.push(pkt(100), t0);
        assert!(r.push(pkt(99), t0).is_empty());
        r.push(pkt(102), t0);
        r.reset();
        assert_eq!(seqs(r.push(pkt(7), t0)), [7]);
        assert_eq!(r.held(), 0);
    }
}
