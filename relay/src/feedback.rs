//! Feedback from children: keyframe requests merged on their way upstream.
//!
//! NACKs need no code here: every downstream connection carries webrtc's
//! NACK responder, which answers from that leg's own buffer of recently sent
//! packets, so a loss between this relay and a child is repaired by this
//! relay, never by the source.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Packet, Registry, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};

use crate::tap::{self, ReadTap};

/// At most one keyframe request per track per this interval goes upstream
/// (PROTOCOL.md, media rules).
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Marks PLI and FIR, and receiver reports, for delivery to the
/// application. Without it webrtc's terminal interceptor swallows all
/// inbound RTCP, and a relay never learns that a child needs a keyframe or
/// how much of its stream is lost on the way (pace.rs).
#[derive(Default)]
pub struct FeedbackTap;

impl FeedbackTap {
    /// Above the default chain (reports sit at 10000-11000), so the NACK
    /// responder still sees NACKs first.
    const SLOT: usize = 14_000;

    pub fn register(registry: Registry) -> Registry {
        tap::register(registry, Self::SLOT, FeedbackTap)
    }
}

impl ReadTap for FeedbackTap {
    fn on_read(&mut self, msg: &mut TaggedPacket) -> bool {
        if let Packet::Rtcp(pkts) = &msg.message.packet {
            // webrtc-rs routes a compound by its first packet's destination
            // SSRC, and drops it whole when that packet names none (a report
            // without blocks): keyframe requests first, then reports that
            // carry blocks, nothing else.
            let wanted: Vec<Box<dyn rtc::rtcp::Packet>> = pkts
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .chain(pkts.iter().filter(|p| loss_report(p.as_ref()).is_some()))
                .cloned()
                .collect();
            if !wanted.is_empty() {
                msg.message.packet = Packet::Rtcp(wanted);
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        true
    }
}

/// Suppresses NACKs for packets repaired less than a round trip ago,
/// before webrtc-rs's NACK responder sees them.
///
/// A receiver asks again every NACK interval until the repair lands (webrtc-rs
/// every 50 ms as configured here, browsers at their own pace), and the
/// responder answers every ask. On a link whose queue holds a few hundred
/// milliseconds (a slow home uplink) each loss was repaired four to ten
/// times before the first repair could arrive, and the repairs alone filled
/// the link: measured in the lab, three times the media's own rate to a
/// child behind 200 kbit/s, which then lost half of everything. A repair is
/// sent again only once the one before should have arrived: after the round
/// trip the receiver's own reports give (RFC 3550 §6.4.1), with a margin.
#[derive(Default)]
pub struct NackDedup {
    /// (media SSRC, sequence number) -> when a repair was last let through.
    repaired: HashMap<(u32, u16), Instant>,
    /// Round trip to the receiver, smoothed.
    rtt: Option<Duration>,
}

/// Until a report gives the round trip, a repair may go again this soon.
pub const REPAIR_AGAIN_DEFAULT: Duration = Duration::from_millis(100);
/// The wait between repairs of one packet stays within these.
const REPAIR_AGAIN_MIN: Duration = Duration::from_millis(20);
const REPAIR_AGAIN_MAX: Duration = Duration::from_millis(500);
/// Repairs remembered at most (the oldest are forgotten first).
const REPAIRS_REMEMBERED: usize = 4096;

impl NackDedup {
    /// Below the NACK responder (4000) on the way in.
    const SLOT: usize = 3_000;

    pub fn register(registry: Registry) -> Registry {
        tap::register(registry, Self::SLOT, NackDedup::default())
    }

    /// How long after a repair the same packet may be repaired again.
    pub fn repair_again_after(&self) -> Duration {
        self.rtt.map_or(REPAIR_AGAIN_DEFAULT, |rtt| {
            (rtt + rtt / 2 + Duration::from_millis(10)).clamp(REPAIR_AGAIN_MIN, REPAIR_AGAIN_MAX)
        })
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
        self.rtt = Some(self.rtt.map_or(rtt, |r| (r * 7 + rtt) / 8));
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

impl ReadTap for NackDedup {
    fn on_read(&mut self, msg: &mut TaggedPacket) -> bool {
        let now = msg.now;
        if let Packet::Rtcp(pkts) = &mut msg.message.packet {
            for p in pkts.iter_mut() {
                if let Some(rr) = p.as_any().downcast_ref::<ReceiverReport>() {
                    let ntp = ntp_now();
                    for b in &rr.reports {
                        self.on_report_block(b.last_sender_report, b.delay, ntp);
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

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.repaired.retain(|(ssrc, _), _| *ssrc != info.ssrc);
    }
}

pub fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
}

/// A receiver report's blocks as (source SSRC, fraction lost, 0.0 to 1.0);
/// None for anything else, or a report without blocks.
pub fn loss_report(p: &dyn rtc::rtcp::Packet) -> Option<Vec<(u32, f64)>> {
    let rr = p.as_any().downcast_ref::<ReceiverReport>()?;
    (!rr.reports.is_empty()).then(|| {
        rr.reports
            .iter()
            .map(|b| (b.ssrc, f64::from(b.fraction_lost) / 256.0))
            .collect()
    })
}

/// Merges keyframe requests for one track: many children asking at once
/// cost the upstream one PLI per interval.
#[derive(Default)]
pub struct KeyframeThrottle {
    last: Mutex<Option<Instant>>,
}

impl KeyframeThrottle {
    /// True when a request may go upstream now (and records it).
    pub fn admit(&self, now: Instant) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some(t) if now.duration_since(t) < KEYFRAME_REQUEST_INTERVAL => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_repaired_again_only_after_a_round_trip() {
        let mut d = NackDedup::default();
        let t0 = Instant::now();
        assert_eq!(d.admit(7, &[10, 11], t0), [10, 11]);
        let soon = t0 + Duration::from_millis(50);
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
        assert!(
            again > Duration::from_millis(305) && again < Duration::from_millis(315),
            "{again:?}"
        );
        // On a fast link the floor holds.
        d.rtt = Some(Duration::from_millis(1));
        assert_eq!(d.repair_again_after(), REPAIR_AGAIN_MIN);
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

    #[test]
    fn throttle_merges_requests_within_the_interval() {
        let t = KeyframeThrottle::default();
        let t0 = Instant::now();
        assert!(t.admit(t0));
        assert!(!t.admit(t0 + Duration::from_millis(10)));
        assert!(!t.admit(t0 + Duration::from_millis(499)));
        assert!(t.admit(t0 + Duration::from_millis(500)));
        assert!(!t.admit(t0 + Duration::from_millis(900)));
        assert!(t.admit(t0 + Duration::from_millis(1001)));
    }
}
