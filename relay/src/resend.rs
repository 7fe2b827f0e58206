//! Which repairs go to a child, and when: each lost packet once per round
//! trip however often it is asked for, and a second copy a round trip after
//! the first while the child's link loses little.
//!
//! The NACK responder below this stage answers every NACK it sees from
//! its send history. This stage decides what it sees.
//!
//! **Once per round trip.** A receiver asks again every NACK interval until
//! the repair lands (our relays once the round trip has passed, browsers at
//! their own pace). On a link whose queue holds a few hundred milliseconds
//! (a slow home uplink), each loss was repaired four to ten times before
//! the first repair could arrive. The repairs alone filled the link:
//! measured in the lab, three times the media's own rate to a child behind
//! 200 kbit/s, which then lost half of everything. So a repair goes again
//! only once the one before should have arrived: after the round trip the
//! receiver's own reports give (RFC 3550 §6.4.1), with a margin. A packet
//! this relay forwards late (its own repair from upstream, nack.rs) counts
//! as a repair: the child that asked for it before it came gets it then.
//!
//! **A second copy.** A browser that only receives cannot measure its round
//! trip. Chromium then asks again only after 100 ms. Captures in the lab
//! (3% loss on every host) showed every freeze of a browser two hops down
//! with the same cause: a lost repair or a lost NACK on the last hop. The
//! browser asked again 105 to 130 ms later, and the frame came 150 to
//! 190 ms late. So every repair (an answer to a NACK, or a late packet)
//! goes out a second time, byte for byte, one repair deadline after the
//! first, so that one burst rarely takes both. The receiver's SRTP drops
//! the copy when the first arrived. This costs one more packet per loss,
//! and saves the lost-repair half of those freezes; a lost NACK still costs
//! the browser's 100 ms. It stops while the child reports over 10% lost:
//! losses that high come from a full queue, where more packets only make
//! more losses (pace.rs deals with that child).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Packet, Registry, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};

use crate::feedback::loss_report;
use crate::nack::{repair_deadline, smoothed};
use crate::tap::{self, ReadTap};

/// Until a report gives the round trip, a repair may go again this soon.
pub const REPAIR_AGAIN_DEFAULT: Duration = Duration::from_millis(100);
/// Repairs remembered at most (the oldest are forgotten first); second
/// copies pending at most.
const REPAIRS_REMEMBERED: usize = 4096;
/// Above this share of packets lost (as the child reports it), no second
/// copies.
const SECOND_COPY_MAX_LOSS: f64 = 0.10;

#[derive(Default)]
pub struct ChildRepairs {
    /// (media SSRC, sequence number) -> when a repair last went out.
    repaired: HashMap<(u32, u16), Instant>,
    /// Second copies, and when they are due (in the order they were made,
    /// which is the order they are due while the round trip holds still).
    second: VecDeque<(Instant, TaggedPacket)>,
    /// The newest sequence number sent, per SSRC: an older one going out is
    /// a late packet, a repair.
    newest_sent: HashMap<u32, u16>,
    /// Round trip to the receiver, smoothed.
    rtt: Option<Duration>,
    /// The share of packets lost in the receiver's last report.
    loss: f64,
}

impl ChildRepairs {
    /// Below the NACK responder (4000) on the way in, so after it on the
    /// way out.
    const SLOT: usize = 3_000;

    pub fn register(registry: Registry) -> Registry {
        tap::register(registry, Self::SLOT, ChildRepairs::default())
    }

    /// How long after a repair the same packet may be repaired again.
    pub fn repair_again_after(&self) -> Duration {
        self.rtt.map_or(REPAIR_AGAIN_DEFAULT, repair_deadline)
    }

    /// A report block from the receiver: `lsr` echoes the middle 32 bits of
    /// the NTP time of our last sender report, `dlsr` is how long it held
    /// that (both in 1/65536 s); `now_ntp` is the NTP time now.
    pub fn on_report_block(&mut self, lsr: u32, dlsr: u32, now_ntp: u64) {
        if lsr == 0 {
            return;
        }
        let units = ((now_ntp >> 16) as u32)
            .wrapping_sub(lsr)
            .wrapping_sub(dlsr);
        // Over 5 s is a clock step or a stale echo, not a round trip.
        if units > 5 << 16 {
            return;
        }
        let rtt = Duration::from_secs_f64(f64::from(units) / 65_536.0);
        self.rtt = Some(smoothed(self.rtt, rtt));
    }

    /// The sequence numbers of a NACK that may be repaired now (and marks
    /// them repaired).
    pub fn admit(&mut self, media_ssrc: u32, seqs: &[u16], now: Instant) -> Vec<u16> {
        let again = self.repair_again_after();
        if self.repaired.len() >= REPAIRS_REMEMBERED {
            self.repaired
                .retain(|_, at| now.saturating_duration_since(*at) < again);
        }
        seqs.iter()
            .copied()
            .filter(|&seq| {
                let last = self.repaired.get(&(media_ssrc, seq));
                let due = last.is_none_or(|at| now.saturating_duration_since(*at) >= again);
                if due && self.repaired.len() < REPAIRS_REMEMBERED {
                    self.repaired.insert((media_ssrc, seq), now);
                }
                due
            })
            .collect()
    }

    /// A packet on its way out. A repair (the responder's answer, or a
    /// packet older than the newest: a late one) gets a second copy.
    fn on_sent(&mut self, msg: &TaggedPacket) {
        let Packet::Rtp(p) = &msg.message.packet else {
            return;
        };
        let (ssrc, seq) = (p.header.ssrc, p.header.sequence_number);
        let repair = if msg.message.has(&Attribute::Retransmission) {
            true
        } else {
            let newest = self.newest_sent.entry(ssrc).or_insert(seq);
            if (seq.wrapping_sub(*newest) as i16) > 0 {
                *newest = seq;
                false
            } else if seq != *newest {
                // The child may have asked for it before it came.
                if self.repaired.len() < REPAIRS_REMEMBERED {
                    self.repaired.insert((ssrc, seq), msg.now);
                }
                true
            } else {
                false
            }
        };
        if repair && self.loss <= SECOND_COPY_MAX_LOSS && self.second.len() < REPAIRS_REMEMBERED {
            self.second
                .push_back((msg.now + self.repair_again_after(), copy(msg)));
        }
    }

    /// Second copies due at `now`.
    fn due(&mut self, now: Instant) -> Vec<TaggedPacket> {
        let mut out = Vec::new();
        while let Some((_, mut msg)) = self.second.pop_front_if(|(at, _)| *at <= now) {
            msg.now = now;
            out.push(msg);
        }
        out
    }
}

/// `msg` again (webrtc-rs's packets are not `Clone`).
fn copy(msg: &TaggedPacket) -> TaggedPacket {
    TaggedPacket {
        now: msg.now,
        transport: msg.transport,
        message: msg.message.clone(),
    }
}

/// The NTP time now (RFC 5905: seconds since 1900 in the high 32 bits),
/// as webrtc-rs's sender reports give it.
fn ntp_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = unix.as_secs() + 0x83AA_7E80;
    let frac = (u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

fn nack_seqs(nack: &TransportLayerNack) -> Vec<u16> {
    nack.nacks
        .iter()
        .flat_map(|pair| {
            std::iter::once(pair.packet_id).chain(
                (0..16u16)
                    .filter(move |i| pair.lost_packets & (1 << i) != 0)
                    .map(move |i| pair.packet_id.wrapping_add(i + 1)),
            )
        })
        .collect()
}

impl ReadTap for ChildRepairs {
    fn on_read(&mut self, msg: &mut TaggedPacket) -> bool {
        let now = msg.now;
        if let Packet::Rtcp(pkts) = &mut msg.message.packet {
            for p in pkts.iter_mut() {
                if let Some(rr) = p.as_any().downcast_ref::<ReceiverReport>() {
                    let ntp = ntp_now();
                    for b in &rr.reports {
                        self.on_report_block(b.last_sender_report, b.delay, ntp);
                    }
                    if let Some(blocks) = loss_report(p.as_ref()) {
                        self.loss = blocks.iter().map(|&(_, l)| l).fold(0.0, f64::max);
                    }
                    continue;
                }
                let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                    continue;
                };
                let seqs = nack_seqs(nack);
                let keep = self.admit(nack.media_ssrc, &seqs, now);
                if keep.len() != seqs.len() {
                    *p = Box::new(TransportLayerNack {
                        sender_ssrc: nack.sender_ssrc,
                        media_ssrc: nack.media_ssrc,
                        nacks: nack_pairs_from_sequence_numbers(&keep),
                    });
                }
            }
        }
        true
    }

    fn on_write(&mut self, msg: &TaggedPacket) {
        self.on_sent(msg);
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.second.front().map(|(at, _)| *at)
    }

    fn on_timeout(&mut self, now: Instant) -> Vec<TaggedPacket> {
        self.due(now)
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.repaired.retain(|(ssrc, _), _| *ssrc != info.ssrc);
        self.second.retain(
            |(_, m)| !matches!(&m.message.packet, Packet::Rtp(p) if p.header.ssrc == info.ssrc),
        );
        self.newest_sent.remove(&info.ssrc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_packet_is_repaired_again_only_after_a_round_trip() {
        let mut d = ChildRepairs::default();
        let t0 = Instant::now();
        assert_eq!(d.admit(7, &[10, 11], t0), [10, 11]);
        let soon = t0 + ms(50);
        assert_eq!(d.admit(7, &[10, 11, 12], soon), [12]);
        // Another stream's numbers are its own.
        assert_eq!(d.admit(8, &[10], soon), [10]);
        let later = t0 + REPAIR_AGAIN_DEFAULT;
        assert_eq!(d.admit(7, &[10, 11, 12], later), [10, 11]);
        // A report: our sender report went out 300 ms before now, and the
        // receiver held it 100 ms, so the round trip is 200 ms.
        let now_ntp: u64 = 0x1234_5678_9abc_0000;
        let lsr = ((now_ntp >> 16) as u32).wrapping_sub(300 * 65_536 / 1000);
        d.on_report_block(lsr, 100 * 65_536 / 1000, now_ntp);
        let again = d.repair_again_after();
        assert!(again > ms(305) && again < ms(315), "{again:?}");
        // On a fast link the floor holds.
        d.rtt = Some(ms(1));
        assert_eq!(d.repair_again_after(), ms(20));
    }

    fn rtp(ssrc: u32, seq: u16, at: Instant, retransmission: bool) -> TaggedPacket {
        let p = rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                ssrc,
                sequence_number: seq,
                ..Default::default()
            },
            payload: vec![1, 2, 3].into(),
        };
        let mut message = rtc::interceptor::AttributedPacket::new(Packet::Rtp(p));
        if retransmission {
            message.add(Attribute::Retransmission);
        }
        TaggedPacket {
            now: at,
            transport: Default::default(),
            message,
        }
    }

    fn sent(d: &mut ChildRepairs, ssrc: u32, seq: u16, at: Instant, retransmission: bool) {
        d.on_write(&rtp(ssrc, seq, at, retransmission));
    }

    /// (SSRC, sequence number) of the copies due at `now`.
    fn due(d: &mut ChildRepairs, now: Instant) -> Vec<(u32, u16)> {
        d.on_timeout(now)
            .iter()
            .map(|m| match &m.message.packet {
                Packet::Rtp(p) => (p.header.ssrc, p.header.sequence_number),
                other => panic!("not RTP: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_repair_goes_twice_a_deadline_apart() {
        let mut d = ChildRepairs {
            rtt: Some(ms(1)),
            ..Default::default()
        };
        let t0 = Instant::now();
        sent(&mut d, 7, 10, t0, false);
        sent(&mut d, 7, 11, t0, false);
        assert_eq!(d.next_timeout(), None, "new packets are not repairs");
        // The responder's answer (RTX, its own SSRC) goes again 20 ms on.
        sent(&mut d, 9, 1, t0, true);
        assert_eq!(d.next_timeout(), Some(t0 + ms(20)));
        assert!(due(&mut d, t0 + ms(19)).is_empty());
        assert_eq!(due(&mut d, t0 + ms(20)), [(9, 1)]);
        assert_eq!(d.next_timeout(), None);
    }

    #[test]
    fn a_late_packet_sent_is_a_repair() {
        let mut d = ChildRepairs {
            rtt: Some(ms(1)),
            ..Default::default()
        };
        let t0 = Instant::now();
        for seq in [65_534, 65_535, 1] {
            sent(&mut d, 7, seq, t0, false);
        }
        // 0 comes late (a repair from upstream): the child's NACK for it,
        // sent before it came, is not answered again, and it goes twice.
        sent(&mut d, 7, 0, t0, false);
        assert!(d.admit(7, &[0], t0 + ms(1)).is_empty());
        assert_eq!(due(&mut d, t0 + ms(20)), [(7, 0)]);
    }

    #[test]
    fn no_second_copy_on_a_link_that_loses_much() {
        let mut d = ChildRepairs {
            loss: 0.2,
            ..Default::default()
        };
        sent(&mut d, 9, 1, Instant::now(), true);
        assert_eq!(d.next_timeout(), None);
    }

    #[test]
    fn nack_bitmaps_unfold_into_sequence_numbers() {
        let nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 2,
            nacks: nack_pairs_from_sequence_numbers(&[65_535, 0, 3, 40]),
        };
        assert_eq!(nack_seqs(&nack), [65_535, 0, 3, 40]);
    }
}
