//! RTX (RFC 4588) repairs turned back into the packets they repair, where
//! the NACK generator can see them.
//!
//! With RTX negotiated, a sender answers a NACK with a packet on a separate
//! SSRC and payload type, carrying the original sequence number (OSN) in
//! its first two bytes. webrtc-rs 0.21 unwraps it only after the
//! interceptor chain, so its NACK generator never learns that the hole was
//! filled: it NACKs the packet every interval until 512 newer ones arrive,
//! and every answer reaches the application as another copy (measured: one
//! lost packet on an idle stream, 586 NACKs and as many duplicates in 60 s).
//! This interceptor sits below the generator and unwraps first, so one loss
//! costs one NACK and one repair.

use std::collections::HashMap;

use rtc::interceptor::{Attribute, Packet, Registry, StreamInfo, TaggedPacket};

use crate::tap::{self, ReadTap};

/// Remote RTX streams: RTX SSRC -> (primary SSRC, primary payload type, RTX
/// payload type).
#[derive(Default)]
pub struct UnwrapRtx {
    streams: HashMap<u32, (u32, u8, u8)>,
}

impl UnwrapRtx {
    /// Below the NACK generator (7000), above the responder (4000).
    const SLOT: usize = 6_500;

    pub fn register(registry: Registry) -> Registry {
        tap::register(registry, Self::SLOT, UnwrapRtx::default())
    }
}

/// The packet an RTX packet repairs, or None for a padding-only probe
/// (nothing to repair). Other packets come back unchanged.
pub fn unwrap(
    mut p: rtc::rtp::packet::Packet,
    primary: (u32, u8, u8),
) -> Option<rtc::rtp::packet::Packet> {
    let (ssrc, payload_type, rtx_payload_type) = primary;
    if p.header.payload_type != rtx_payload_type {
        return Some(p);
    }
    let osn = p.payload.get(..2)?;
    p.header.sequence_number = u16::from_be_bytes([osn[0], osn[1]]);
    p.header.ssrc = ssrc;
    p.header.payload_type = payload_type;
    p.header.padding = false;
    p.payload = p.payload.slice(2..);
    Some(p)
}

impl ReadTap for UnwrapRtx {
    fn on_read(&mut self, msg: &mut TaggedPacket) -> bool {
        if let Packet::Rtp(p) = &mut msg.message.packet {
            if let Some(&primary) = self.streams.get(&p.header.ssrc) {
                match unwrap(std::mem::take(p), primary) {
                    Some(repaired) => {
                        *p = repaired;
                        msg.message.add(Attribute::Retransmission);
                    }
                    None => return false,
                }
            }
        }
        true
    }

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        if let (Some(rtx), Some(rtx_pt)) = (info.ssrc_rtx, info.payload_type_rtx) {
            self.streams
                .insert(rtx, (info.ssrc, info.payload_type, rtx_pt));
        }
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        if let Some(rtx) = info.ssrc_rtx {
            self.streams.remove(&rtx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rtx_packet(rtx_seq: u16, osn: u16, body: &[u8]) -> rtc::rtp::packet::Packet {
        let mut p = rtc::rtp::packet::Packet::default();
        p.header.ssrc = 2222;
        p.header.payload_type = 97;
        p.header.sequence_number = rtx_seq;
        let mut payload = osn.to_be_bytes().to_vec();
        payload.extend_from_slice(body);
        p.payload = Bytes::from(payload);
        p
    }

    #[test]
    fn an_rtx_packet_becomes_the_packet_it_repairs() {
        let p = unwrap(rtx_packet(5, 40_000, b"frame"), (1111, 96, 97)).unwrap();
        assert_eq!(p.header.ssrc, 1111);
        assert_eq!(p.header.payload_type, 96);
        assert_eq!(p.header.sequence_number, 40_000);
        assert_eq!(&p.payload[..], b"frame");
    }

    #[test]
    fn padding_probes_are_dropped_and_other_packets_pass() {
        let mut probe = rtx_packet(6, 0, b"");
        probe.payload = Bytes::from_static(&[0x01]);
        assert!(unwrap(probe, (1111, 96, 97)).is_none());
        let mut media = rtx_packet(7, 0, b"x");
        media.header.payload_type = 96;
        let same = unwrap(media.clone(), (1111, 96, 97)).unwrap();
        assert_eq!(same, media);
    }
}
