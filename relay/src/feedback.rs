//! Feedback from children: keyframe requests merged on their way upstream.
//!
//! NACKs are answered elsewhere: every downstream connection carries
//! webrtc's NACK responder, which answers from that leg's own buffer of
//! recently sent packets (resend.rs decides what it answers), so a loss
//! between this relay and a child is repaired by this relay, never by the
//! source.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Packet, Registry, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;

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
