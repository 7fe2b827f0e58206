//! Feedback from children: keyframe requests merged on their way upstream.
//!
//! NACKs need no code here: every downstream connection carries webrtc's
//! NACK responder, which answers from that leg's own buffer of recently sent
//! packets, so a loss between this relay and a child is repaired by this
//! relay, never by the source.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;

/// At most one keyframe request per track per this interval goes upstream
/// (PROTOCOL.md, media rules).
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Marks PLI and FIR for delivery to the application. Without it webrtc's
/// terminal interceptor swallows all inbound RTCP and a relay never learns
/// that a child needs a keyframe.
#[derive(Default)]
pub struct FeedbackTap {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl FeedbackTap {
    /// Above the default chain (reports sit at 10000-11000), so the NACK
    /// responder still sees NACKs first.
    const SLOT: usize = 14_000;

    pub fn register(registry: Registry) -> Registry {
        registry.with(Slot::from(Self::SLOT), FeedbackTap::default())
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(pkts) = &msg.message.packet {
            let keyframe_requests: Vec<Box<dyn rtc::rtcp::Packet>> = pkts
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if !keyframe_requests.is_empty() {
                msg.message.packet = Packet::Rtcp(keyframe_requests);
                msg.message.add(Attribute::DeliverToApplication);
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
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

pub fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
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
