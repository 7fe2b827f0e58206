//! Frames to RTP packets, one packetizer per track.
//!
//! rtc's `Packetizer` is not used as a whole: it advances its timestamp by a sample
//! count per frame, which accumulates rounding (1/30 s is not a whole number of
//! 90 kHz ticks in every timebase) and cannot express a loop restart. Here the
//! timestamp is computed from each frame's absolute time instead, and only rtc's
//! per-codec payloaders do the fragmenting.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use rtc::rtp::codec::{
    av1::Av1Payloader, h264::H264Payloader, opus::OpusPayloader, vp8::Vp8Payloader,
    vp9::Vp9Payloader,
};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::rtp::packetizer::Payloader;

use super::{loop_time_nanos, Frame};
use crate::media::Codec;

/// Bytes of the fixed RTP header; these packets carry no CSRCs or extensions.
const RTP_HEADER_LEN: usize = 12;
/// MTUs below this are raised to it: the payloaders need room for their descriptors.
pub(super) const MIN_MTU: usize = 64;

/// Turns one track's frames into RTP packets: one sequence-number space and one
/// timestamp base for the track's whole life, across loops.
#[derive(Debug)]
pub struct TrackPacketizer {
    codec: Codec,
    ssrc: u32,
    payload_type: u8,
    mtu: usize,
    payloader: Box<dyn Payloader>,
    next_sequence: u16,
    timestamp_base: u32,
    current_loop: Option<u64>,
}

impl TrackPacketizer {
    /// `mtu` is the whole RTP packet size (1200 is the usual choice, leaving room
    /// for SRTP and tunnels); random first sequence number and timestamp base, as
    /// RFC 3550 asks.
    pub fn new(codec: Codec, ssrc: u32, payload_type: u8, mtu: usize) -> Self {
        let r = random_u64();
        Self::with_initial_state(codec, ssrc, payload_type, mtu, r as u16, (r >> 32) as u32)
    }

    /// Like [`new`](Self::new) with a chosen first sequence number and timestamp
    /// base, for tests and reproducible runs.
    pub fn with_initial_state(
        codec: Codec,
        ssrc: u32,
        payload_type: u8,
        mtu: usize,
        first_sequence_number: u16,
        timestamp_base: u32,
    ) -> Self {
        let payloader: Box<dyn Payloader> = match codec {
            Codec::Vp8 => {
                let mut p = Vp8Payloader::default();
                // Picture ids let receivers tell a lost packet from a new frame.
                p.enable_picture_id = true;
                Box::new(p)
            }
            Codec::Vp9 => Box::<Vp9Payloader>::default(),
            Codec::Av1 => Box::<Av1Payloader>::default(),
            Codec::H264 => Box::<H264Payloader>::default(),
            Codec::Opus => Box::<OpusPayloader>::default(),
        };
        TrackPacketizer {
            codec,
            ssrc,
            payload_type,
            mtu: mtu.max(MIN_MTU),
            payloader,
            next_sequence: first_sequence_number,
            timestamp_base,
            current_loop: None,
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// The sequence number the next packet will carry.
    pub fn next_sequence_number(&self) -> u16 {
        self.next_sequence
    }

    /// The RTP timestamp of time zero of the first pass.
    pub fn timestamp_base(&self) -> u32 {
        self.timestamp_base
    }

    /// base + (loop_index × loop_period + pts) × clock rate, rounded to the nearest
    /// tick and wrapped to 32 bits. Computed from absolute time, so nothing drifts
    /// however long the source loops.
    pub fn rtp_timestamp(&self, loop_index: u64, loop_period: Duration, pts: Duration) -> u32 {
        let nanos = loop_time_nanos(loop_index, loop_period, pts);
        let ticks = (nanos * u128::from(self.codec.clock_rate()) + 500_000_000) / 1_000_000_000;
        // Truncating to 32 bits is the RTP timestamp's wrap-around.
        self.timestamp_base.wrapping_add(ticks as u32)
    }

    /// Packets for one frame: consecutive sequence numbers, all with the frame's
    /// timestamp; for video the marker bit is on the last packet of the frame, for
    /// audio on the first packet of each pass (a new talkspurt after the silence a
    /// loop restart may leave). An empty frame gives no packets.
    pub fn packetize(
        &mut self,
        frame: &Frame,
        loop_index: u64,
        loop_period: Duration,
    ) -> Vec<Packet> {
        let payloads = match self
            .payloader
            .payload(self.mtu - RTP_HEADER_LEN, &frame.data)
        {
            Ok(p) => p,
            Err(e) => {
                // VideoFile validates frames so this does not happen for files; a
                // hand-built Frame could still be malformed.
                tracing::warn!(codec = %self.codec, pts = ?frame.pts, error = %e, "cannot packetize frame; skipping it");
                return Vec::new();
            }
        };
        let timestamp = self.rtp_timestamp(loop_index, loop_period, frame.pts);
        let new_pass = self.current_loop != Some(loop_index);
        self.current_loop = Some(loop_index);
        let last = payloads.len().saturating_sub(1);
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                let marker = if self.codec.is_video() {
                    i == last
                } else {
                    new_pass && i == 0
                };
                let sequence_number = self.next_sequence;
                self.next_sequence = self.next_sequence.wrapping_add(1);
                Packet {
                    header: Header {
                        version: 2,
                        marker,
                        payload_type: self.payload_type,
                        sequence_number,
                        timestamp,
                        ssrc: self.ssrc,
                        ..Default::default()
                    },
                    payload,
                }
            })
            .collect()
    }
}

/// A random u64 from the standard library's per-process random hash keys; RTP bases
/// only need to be unpredictable enough not to collide, not cryptographically
/// strong (SRTP protects the media).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(len: usize, pts_ms: u64) -> Frame {
        Frame {
            data: Bytes::from(vec![0x10; len]),
            pts: Duration::from_millis(pts_ms),
            keyframe: false,
        }
    }

    #[test]
    fn fragments_fit_the_mtu_and_wrap_sequence_numbers() {
        let mut p = TrackPacketizer::with_initial_state(Codec::Vp8, 7, 96, 1200, 65534, u32::MAX);
        let packets = p.packetize(&frame(3000, 0), 0, Duration::from_secs(10));
        assert_eq!(packets.len(), 3);
        let seqs: Vec<u16> = packets.iter().map(|p| p.header.sequence_number).collect();
        assert_eq!(seqs, [65534, 65535, 0]);
        assert!(packets
            .iter()
            .all(|p| p.payload.len() + RTP_HEADER_LEN <= 1200));
        let markers: Vec<bool> = packets.iter().map(|p| p.header.marker).collect();
        assert_eq!(markers, [false, false, true]);
        assert!(packets.iter().all(|p| p.header.timestamp == u32::MAX));
        // 1 s later wraps the 32-bit timestamp
        let next = p.packetize(&frame(10, 1000), 0, Duration::from_secs(10));
        assert_eq!(next[0].header.timestamp, 89_999);
        assert!(!next[0].header.extension && next[0].header.extensions.is_empty());
    }

    #[test]
    fn audio_marks_the_start_of_each_pass() {
        let mut p = TrackPacketizer::with_initial_state(Codec::Opus, 1, 111, 1200, 0, 0);
        let period = Duration::from_secs(10);
        let first = p.packetize(&frame(100, 0), 0, period);
        let second = p.packetize(&frame(100, 20), 0, period);
        let wrapped = p.packetize(&frame(100, 0), 1, period);
        assert!(first[0].header.marker && !second[0].header.marker && wrapped[0].header.marker);
        assert_eq!(second[0].header.timestamp, 960);
        assert_eq!(wrapped[0].header.timestamp, 480_000);
    }

    #[test]
    fn tiny_mtu_is_raised() {
        let mut p = TrackPacketizer::new(Codec::Vp9, 1, 98, 0);
        assert_eq!(p.mtu(), MIN_MTU);
        assert!(!p
            .packetize(&frame(500, 0), 0, Duration::from_secs(1))
            .is_empty());
    }
}
