//! `join --record out.ivf`: received RTP back into an IVF file (VP8, VP9,
//! AV1) or an Annex B stream (H.264, which players open as `.h264`).
//!
//! The promise is byte-for-byte: every frame written equals the frame the source
//! read from its file, starting at the first keyframe received. For H.264 that
//! holds for NAL units: each is written after a four-byte start code, which
//! may differ from the three-byte one an encoder put before it. So a frame is
//! written only when all of its packets are in, and after a loss nothing is
//! written until the next keyframe, because the frames in between would
//! reference a picture the recording does not have.
//!
//! Packets pass through a [`Reorder`] buffer first: a lost packet repaired by
//! NACK arrives late, after its successors, and fills its hole there instead
//! of costing the rest of the group of pictures. Only a hole that stays open
//! past [`REORDER_WAIT`] (or with more than [`REORDER_PACKETS`] behind it)
//! counts as a loss.
//!
//! For AV1 "byte-for-byte" holds for temporal units as encoders write them (a
//! temporal delimiter first, every OBU with a minimal size field, no padding OBUs):
//! RTP drops delimiters and size fields and the depacketizer rebuilds them in that
//! canonical form, so other layouts come back equivalent but not identical.
//!
//! rtc has an `IVFWriter`, but it neither detects loss nor waits for a keyframe
//! after one; so the assembly is done here with rtc's depacketizers and the
//! 32-byte IVF header is written directly.
//!
//! Each frame goes to the file with one `write` call as soon as it is complete, so a
//! process killed mid-recording leaves every finished frame on disk. The header's
//! frame count is only filled in by [`Recorder::finish`] (or on drop); until
//! then it says 0. IVF readers (libvpx, ffmpeg, our [`VideoFile`](crate::source::VideoFile))
//! ignore the count and read frames until the data ends.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use rtc::rtp::codec::{av1::Av1Depacketizer, h264::H264Packet, vp8::Vp8Packet, vp9::Vp9Packet};
use rtc::rtp::packet::Packet;
use rtc::rtp::packetizer::Depacketizer;

use crate::media::{h264_payload_is_safe, read_leb128, Codec};
use crate::reorder::{Released, Reorder};

/// IVF timestamps are in this clock, the RTP video clock, so no conversion rounds.
const TIMEBASE_DENOMINATOR: u32 = 90_000;
/// A temporal delimiter OBU with an empty payload. rtc's AV1 payloader leaves
/// temporal delimiters out of RTP (RFC 9628 §5), but each temporal unit in an IVF
/// file starts with one (AV1 spec §7.5), so it is put back.
const AV1_TEMPORAL_DELIMITER: [u8; 2] = [0x12, 0x00];
/// A frame growing past this is treated as lost: far above any real frame, it stops
/// a sender that never sets the marker bit or changes timestamp from growing the
/// buffer without bound.
pub const MAX_FRAME_BYTES: usize = 32 << 20;
/// How long a hole in the sequence may wait for its retransmission. A
/// repair takes a NACK interval (100 ms) and a round trip per hop, again if
/// the NACK or the repair is lost too: a second covers several rounds over
/// two hops, and a recording can afford the wait.
pub const REORDER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Packets held behind one hole at most: about 2 s of the sample, 0.2 s of
/// 5 Mbit/s video.
pub const REORDER_PACKETS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{}: cannot write recording: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot record {codec}: recordings hold VP8, VP9 or AV1 video (IVF) or H.264 (Annex B)"
    )]
    UnsupportedCodec { codec: Codec },
}

/// What [`Recorder::push`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// 0 for the first frame of the recording.
    pub index: u64,
    pub rtp_timestamp: u32,
    /// In 1/90000 s, counted from the first recorded frame.
    pub ivf_timestamp: u64,
    pub size: usize,
    pub keyframe: bool,
}

/// Reassembles one video track's RTP packets into frames, and writes them.
pub struct Recorder {
    path: PathBuf,
    file: Option<File>,
    codec: Codec,
    size_hint: Option<(u16, u16)>,
    frames_written: u64,
    frames_dropped: u64,
    ssrc: Option<u32>,
    reorder: Reorder,
    frame: Option<PartialFrame>,
    waiting_for_keyframe: bool,
    /// (RTP timestamp, IVF timestamp) of the last frame written.
    last_written: Option<(u32, u64)>,
    av1: Av1Depacketizer,
    /// Holds a fragmented NAL unit (FU-A) until its last piece.
    h264: H264Packet,
}

struct PartialFrame {
    rtp_timestamp: u32,
    data: BytesMut,
}

impl Recorder {
    /// Creates (or truncates) `path`. VP8, VP9 and AV1 get an IVF header with
    /// a 1/90000 timebase; H.264 is written as a bare Annex B stream.
    pub fn create(path: impl AsRef<Path>, codec: Codec) -> Result<Recorder, RecordError> {
        let path = path.as_ref().to_path_buf();
        let fourcc = codec.fourcc();
        if fourcc.is_none() && codec != Codec::H264 {
            return Err(RecordError::UnsupportedCodec { codec });
        }
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::create(&path).map_err(io)?;
        if let Some(fourcc) = fourcc {
            let mut header = [0u8; 32];
            header[..4].copy_from_slice(b"DKIF");
            header[6..8].copy_from_slice(&32u16.to_le_bytes());
            header[8..12].copy_from_slice(&fourcc);
            header[16..20].copy_from_slice(&TIMEBASE_DENOMINATOR.to_le_bytes());
            header[20..24].copy_from_slice(&1u32.to_le_bytes());
            file.write_all(&header).map_err(io)?;
        }
        Ok(Recorder {
            path,
            file: Some(file),
            codec,
            size_hint: None,
            frames_written: 0,
            frames_dropped: 0,
            ssrc: None,
            reorder: Reorder::new(REORDER_WAIT, REORDER_PACKETS),
            frame: None,
            waiting_for_keyframe: true,
            last_written: None,
            av1: Av1Depacketizer::new(),
            h264: H264Packet::default(),
        })
    }

    /// Picture size for the IVF header if the first keyframe's own cannot be parsed.
    /// Only the header uses it; decoders take the size from the bitstream.
    pub fn set_size_hint(&mut self, width: u16, height: u16) {
        self.size_hint = Some((width, height));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn frames_written(&self) -> u64 {
        self.frames_written
    }

    /// True until the first keyframe and after a loss: the sender should be
    /// asked for a keyframe, since one that only sends them on request (a
    /// browser) would otherwise leave the recording empty.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    /// Frames assembled (or begun) but not written: incomplete after a loss, or
    /// waiting for a keyframe.
    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped
    }

    /// Takes the track's next RTP packet, in arrival order, now. Returns the
    /// frames written as a result, in order (none while packets wait behind a
    /// hole; several when a late packet fills one).
    ///
    /// Duplicates and packets older than the reorder window are ignored; a
    /// hole that stays open past [`REORDER_WAIT`], a new SSRC, a payload the
    /// codec's depacketizer rejects, or a frame over [`MAX_FRAME_BYTES`] drops
    /// the frame in progress and everything up to the next keyframe.
    pub fn push(&mut self, packet: &Packet) -> Result<Vec<FrameInfo>, RecordError> {
        self.push_at(packet, std::time::Instant::now())
    }

    /// [`Recorder::push`] for a packet after a gap that will never fill (a
    /// join at a keyframe, splice.rs): the recording goes on from it at
    /// once instead of waiting [`REORDER_WAIT`] for the hole.
    pub fn push_after_gap(&mut self, packet: &Packet) -> Result<Vec<FrameInfo>, RecordError> {
        self.push_with(packet, std::time::Instant::now(), true)
    }

    /// [`Recorder::push`] with the arrival time given.
    pub fn push_at(
        &mut self,
        packet: &Packet,
        now: std::time::Instant,
    ) -> Result<Vec<FrameInfo>, RecordError> {
        self.push_with(packet, now, false)
    }

    fn push_with(
        &mut self,
        packet: &Packet,
        now: std::time::Instant,
        gap_before: bool,
    ) -> Result<Vec<FrameInfo>, RecordError> {
        let ssrc = packet.header.ssrc;
        let mut written = Vec::new();
        if self.ssrc.is_some_and(|s| s != ssrc) {
            // What waits belongs to the old stream: write what it completes.
            let held = self.reorder.poll(now + REORDER_WAIT);
            self.take(held, &mut written)?;
            self.reorder.reset();
            self.lose("SSRC changed");
        }
        self.ssrc = Some(ssrc);
        let released = if gap_before {
            self.reorder.push_after_gap(packet.clone(), now)
        } else {
            self.reorder.push(packet.clone(), now)
        };
        self.take(released, &mut written)?;
        Ok(written)
    }

    /// Gives up on a hole that waited too long; call by
    /// [`Recorder::deadline`] when no packets come to do it.
    pub fn poll(&mut self, now: std::time::Instant) -> Result<Vec<FrameInfo>, RecordError> {
        let mut written = Vec::new();
        let released = self.reorder.poll(now);
        self.take(released, &mut written)?;
        Ok(written)
    }

    /// When [`Recorder::poll`] is due (None: no packet waits).
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.reorder.deadline()
    }

    fn take(
        &mut self,
        released: Vec<Released>,
        written: &mut Vec<FrameInfo>,
    ) -> Result<(), RecordError> {
        for r in released {
            match r {
                Released::Packet(p) => written.extend(self.push_in_order(&p)?),
                Released::Gap(n) => {
                    // Repairs did not come in time: the recording has a hole
                    // until the next keyframe, which an operator should hear of.
                    tracing::info!(
                        path = %self.path.display(),
                        "{n} packets never arrived within {} ms; the recording resumes at the \
                         next keyframe",
                        REORDER_WAIT.as_millis()
                    );
                    self.lose("packets lost");
                }
            }
        }
        Ok(())
    }

    /// One packet, the next in sequence after the one before (or after a
    /// reported gap).
    fn push_in_order(&mut self, packet: &Packet) -> Result<Option<FrameInfo>, RecordError> {
        let header = &packet.header;
        let mut written = None;
        if self
            .frame
            .as_ref()
            .is_some_and(|f| f.rtp_timestamp != header.timestamp)
        {
            // Contiguous sequence numbers, so nothing of it is missing.
            written = self.complete_frame()?;
        }
        if packet.payload.is_empty() {
            return Ok(written); // padding-only packet: takes a sequence number, no media
        }
        if self.frame.is_none() {
            if !self.is_frame_start(&packet.payload) {
                return Ok(written); // joined mid-frame; wait for the next one
            }
            self.av1 = Av1Depacketizer::new();
            self.h264 = H264Packet::default();
            self.frame = Some(PartialFrame {
                rtp_timestamp: header.timestamp,
                data: BytesMut::new(),
            });
        }
        match self.depacketize(&packet.payload) {
            Ok(media) => {
                let too_big = self
                    .frame
                    .as_ref()
                    .is_some_and(|f| f.data.len() + media.len() > MAX_FRAME_BYTES);
                if too_big {
                    self.lose("frame larger than MAX_FRAME_BYTES");
                    return Ok(written);
                }
                if let Some(frame) = self.frame.as_mut() {
                    frame.data.extend_from_slice(&media);
                }
            }
            Err(reason) => {
                self.lose(&reason);
                return Ok(written);
            }
        }
        if header.marker {
            if let Some(info) = self.complete_frame()? {
                written = Some(info);
            }
        }
        Ok(written)
    }

    /// Fills in the header's frame count. Any frame still incomplete is dropped.
    /// Returns the number of frames in the file.
    pub fn finish(mut self) -> Result<u64, RecordError> {
        self.finalize()?;
        Ok(self.frames_written)
    }

    fn finalize(&mut self) -> Result<(), RecordError> {
        if self.file.is_none() {
            return Ok(());
        }
        // Whatever waits behind a hole that will never fill now.
        let far = std::time::Instant::now() + REORDER_WAIT;
        let held = self.reorder.poll(far);
        self.take(held, &mut Vec::new())?;
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        if self.frame.take().is_some() {
            self.frames_dropped += 1;
        }
        if !self.is_ivf() {
            return file.flush().map_err(|source| RecordError::Io {
                path: self.path.clone(),
                source,
            });
        }
        // IVF counts in 32 bits; a longer recording says u32::MAX, which readers ignore.
        let count = u32::try_from(self.frames_written).unwrap_or(u32::MAX);
        let io = |source| RecordError::Io {
            path: self.path.clone(),
            source,
        };
        file.seek(SeekFrom::Start(24)).map_err(io)?;
        file.write_all(&count.to_le_bytes()).map_err(io)?;
        file.flush().map_err(io)
    }

    /// IVF, or (H.264, which has no fourcc) an Annex B stream with no
    /// header or frame records.
    fn is_ivf(&self) -> bool {
        self.codec.fourcc().is_some()
    }

    fn lose(&mut self, why: &str) {
        if self.frame.take().is_some() {
            self.frames_dropped += 1;
        }
        if !self.waiting_for_keyframe {
            tracing::debug!(path = %self.path.display(), why, "recording waits for the next keyframe");
        }
        self.waiting_for_keyframe = true;
    }

    fn is_frame_start(&self, payload: &Bytes) -> bool {
        match self.codec {
            // S bit set and partition index 0: the first packet of a frame.
            Codec::Vp8 => payload.first().is_some_and(|b| b & 0x17 == 0x10),
            Codec::Vp9 => Vp9Packet::default().is_partition_head(payload),
            Codec::Av1 => self.av1.is_partition_head(payload),
            // Anything but the middle or end of a fragmented NAL unit; a
            // frame begun inside an access unit is no keyframe and is dropped.
            Codec::H264 => self.h264.is_partition_head(payload),
            Codec::Opus => false,
        }
    }

    fn depacketize(&mut self, payload: &Bytes) -> Result<Bytes, String> {
        let result = match self.codec {
            // Fresh state per packet: these keep per-packet fields only, and Vp9Packet
            // would otherwise accumulate reference indices across calls.
            Codec::Vp8 => Vp8Packet::default().depacketize(payload),
            Codec::Vp9 => Vp9Packet::default().depacketize(payload),
            Codec::Av1 => {
                if !av1_payload_is_safe(payload) {
                    return Err("malformed AV1 payload".into());
                }
                self.av1.depacketize(payload)
            }
            Codec::H264 => {
                if !h264_payload_is_safe(payload) {
                    return Err("malformed H.264 aggregation packet".into());
                }
                self.h264.depacketize(payload)
            }
            Codec::Opus => return Err("Opus cannot be recorded".into()),
        };
        result.map_err(|e| format!("depacketizer rejected packet: {e}"))
    }

    fn complete_frame(&mut self) -> Result<Option<FrameInfo>, RecordError> {
        let Some(frame) = self.frame.take() else {
            return Ok(None);
        };
        let mut data = frame.data;
        if self.codec == Codec::Av1 {
            let mut tu = BytesMut::with_capacity(data.len() + 2);
            tu.extend_from_slice(&AV1_TEMPORAL_DELIMITER);
            tu.extend_from_slice(&data);
            data = tu;
        }
        let keyframe = self.codec.is_keyframe(&data);
        if self.waiting_for_keyframe && !keyframe {
            self.frames_dropped += 1;
            return Ok(None);
        }
        self.waiting_for_keyframe = false;
        if self.frames_written == 0 && self.is_ivf() {
            self.write_size(&data)?;
        }
        let ivf_timestamp = match self.last_written {
            None => 0,
            Some((rtp, ivf)) => {
                // Signed difference handles the 32-bit wrap; IVF time never goes back.
                let step = frame.rtp_timestamp.wrapping_sub(rtp) as i32;
                ivf + u64::from(step.max(0).unsigned_abs())
            }
        };
        if self.is_ivf() {
            let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
            let mut record = Vec::with_capacity(12 + data.len());
            record.extend_from_slice(&size.to_le_bytes());
            record.extend_from_slice(&ivf_timestamp.to_le_bytes());
            record.extend_from_slice(&data);
            self.write(&record)?;
        } else {
            // An Annex B stream has no timestamps: players read frames by
            // their access units, at the rate they are told.
            self.write(&data)?;
        }
        self.last_written = Some((frame.rtp_timestamp, ivf_timestamp));
        let info = FrameInfo {
            index: self.frames_written,
            rtp_timestamp: frame.rtp_timestamp,
            ivf_timestamp,
            size: data.len(),
            keyframe,
        };
        self.frames_written += 1;
        Ok(Some(info))
    }

    fn write_size(&mut self, keyframe: &[u8]) -> Result<(), RecordError> {
        let Some((width, height)) = self.codec.keyframe_size(keyframe).or(self.size_hint) else {
            tracing::warn!(path = %self.path.display(), "cannot tell the picture size; IVF header says 0x0");
            return Ok(());
        };
        let path = &self.path;
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut size = [0u8; 4];
        size[..2].copy_from_slice(&width.to_le_bytes());
        size[2..].copy_from_slice(&height.to_le_bytes());
        file.seek(SeekFrom::Start(12)).map_err(io)?;
        file.write_all(&size).map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(bytes).map_err(|source| RecordError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Err(e) = self.finalize() {
            tracing::warn!(error = %e, "could not finish recording");
        }
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("codec", &self.codec)
            .field("frames_written", &self.frames_written)
            .field("frames_dropped", &self.frames_dropped)
            .field("waiting_for_keyframe", &self.waiting_for_keyframe)
            .finish()
    }
}

/// Whether rtc 0.21's AV1 depacketizer can take this payload without panicking. It
/// slices past the end of an OBU element that is a single byte whose header claims
/// an extension byte, so such payloads are refused here (as corrupt: the frame is
/// treated as lost). The walk over elements follows the depacketizer's own, and
/// length fields that it and we could read differently (over 8 bytes or past 32
/// bits) are refused too.
fn av1_payload_is_safe(payload: &[u8]) -> bool {
    let Some(&aggregation) = payload.first() else {
        return true; // too short: the depacketizer reports that itself
    };
    let count = usize::from((aggregation >> 4) & 0x03);
    let mut offset = 1;
    let mut element = 0;
    while offset < payload.len() {
        let sized = count == 0 || element + 1 != count;
        let len = if sized {
            match read_leb128(&payload[offset..]) {
                Some((len, used)) => {
                    offset += used;
                    len as usize
                }
                None => return false,
            }
        } else {
            payload.len() - offset
        };
        let Some(bytes) = payload.get(offset..offset.saturating_add(len)) else {
            return true; // overruns: the depacketizer reports that itself
        };
        if bytes.len() == 1 && bytes[0] & 0x04 != 0 {
            return false;
        }
        offset += len;
        element += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn av1_guard_refuses_the_panicking_shape() {
        // W=1, one element of one byte: an OBU header with the extension bit.
        assert!(!av1_payload_is_safe(&[0x10, 0x34]));
        // W=0, length 1, same byte.
        assert!(!av1_payload_is_safe(&[0x00, 0x01, 0x34]));
        // Ordinary payloads pass.
        assert!(av1_payload_is_safe(&[0x10, 0x30, 0x01, 0x02]));
        assert!(av1_payload_is_safe(&[0x00, 0x02, 0x30, 0x01]));
        // Unterminated length field.
        assert!(!av1_payload_is_safe(&[0x00, 0x80]));
    }

    #[test]
    fn endless_frames_are_cut_off() {
        let path =
            std::env::temp_dir().join(format!("peer-tree-endless-{}.ivf", std::process::id()));
        let mut rec = Recorder::create(&path, Codec::Vp8).unwrap();
        let chunk = Bytes::from(vec![0u8; 1 << 20]);
        let mut packet = Packet::default();
        for seq in 0..(MAX_FRAME_BYTES >> 20) as u16 + 2 {
            let mut payload = BytesMut::from(&[if seq == 0 { 0x10 } else { 0x00 }, 0, 0, 0][..]);
            payload.extend_from_slice(&chunk);
            packet.header.sequence_number = seq;
            packet.payload = payload.freeze();
            rec.push(&packet).unwrap();
        }
        assert!(rec.frame.is_none(), "the oversized frame was dropped");
        assert_eq!(rec.frames_dropped(), 1);
        drop(rec);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn opus_cannot_be_recorded() {
        let dir = std::env::temp_dir().join("peer-tree-record-opus.ivf");
        let err = Recorder::create(&dir, Codec::Opus).unwrap_err();
        assert!(matches!(
            err,
            RecordError::UnsupportedCodec { codec: Codec::Opus }
        ));
        assert!(!dir.exists());
    }
}
