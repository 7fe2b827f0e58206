//! The codec description shared by the file source, the relay and the recorder.
//!
//! Besides the SDP-facing facts (MIME type, clock rate, fmtp line, default payload
//! type, all matching rtc's `register_default_codecs` so a source and a browser agree
//! without extra configuration) this module holds the little bitstream parsing the
//! media path needs: is this frame a keyframe, how big is the picture, and is an AV1
//! temporal unit well formed. None of it decodes anything.

use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9,
};
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

/// A codec the source can send, the relay can forward and (video only) the recorder
/// can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Vp8,
    Vp9,
    Av1,
    H264,
    Opus,
}

/// Every codec, in the order error messages list them.
pub const ALL_CODECS: [Codec; 5] = [Codec::Vp8, Codec::Vp9, Codec::Av1, Codec::H264, Codec::Opus];

/// The H.264 variants every link offers, as (fmtp, payload type, RTX payload
/// type): packetization mode 1 (what WebRTC stacks, OBS and ffmpeg send) in
/// the profiles browsers decode. A relay mirrors its parent's fmtp line, so a
/// stream keeps its profile and level down the tree; with these registered,
/// the common ones match exactly. The first is the default (rtc's 125).
pub const H264_VARIANTS: [(&str, u8, u8); 4] = [
    (
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        125,
        107,
    ),
    (
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        102,
        103,
    ),
    (
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
        104,
        105,
    ),
    (
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
        112,
        113,
    ),
];

/// H.264 NAL unit types (ITU-T H.264 Table 7-1) and RTP packet types (RFC
/// 6184 §5.4) that keyframe detection reads.
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

impl Codec {
    /// The MIME type as rtc spells it, e.g. `video/VP8`.
    pub fn mime(self) -> &'static str {
        match self {
            Codec::Vp8 => MIME_TYPE_VP8,
            Codec::Vp9 => MIME_TYPE_VP9,
            Codec::Av1 => MIME_TYPE_AV1,
            Codec::H264 => MIME_TYPE_H264,
            Codec::Opus => MIME_TYPE_OPUS,
        }
    }

    /// RTP clock rate in Hz: 90 kHz for video, 48 kHz for Opus (RFC 7587 fixes it
    /// at 48 kHz whatever the input sample rate was).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Vp8 | Codec::Vp9 | Codec::Av1 | Codec::H264 => 90_000,
            Codec::Opus => 48_000,
        }
    }

    /// Channel count as written in SDP: 0 for video, 2 for Opus (RFC 7587 requires
    /// `opus/48000/2` even for mono streams).
    pub fn channels(self) -> u16 {
        match self {
            Codec::Opus => 2,
            _ => 0,
        }
    }

    /// The fmtp line rtc's `register_default_codecs` registers for this codec's
    /// default payload type; using the same line keeps codec matching exact.
    pub fn sdp_fmtp_line(self) -> &'static str {
        match self {
            Codec::Vp8 => "",
            Codec::Vp9 | Codec::Av1 => "profile-id=0",
            Codec::H264 => H264_VARIANTS[0].0,
            Codec::Opus => "minptime=10;useinbandfec=1",
        }
    }

    /// The payload type rtc's default media engine gives this codec.
    pub fn default_payload_type(self) -> u8 {
        match self {
            Codec::Vp8 => 96,
            Codec::Vp9 => 98,
            Codec::Av1 => 41,
            Codec::H264 => H264_VARIANTS[0].1,
            Codec::Opus => 111,
        }
    }

    /// The payload type of this codec's RTX (RFC 4588) companion, as
    /// webrtc-rs and Chromium number them by default; None for audio.
    pub fn default_rtx_payload_type(self) -> Option<u8> {
        match self {
            Codec::Vp8 => Some(97),
            Codec::Vp9 => Some(99),
            Codec::Av1 => Some(106),
            Codec::H264 => Some(H264_VARIANTS[0].2),
            Codec::Opus => None,
        }
    }

    pub fn is_video(self) -> bool {
        !matches!(self, Codec::Opus)
    }

    /// The MIME type and, when there is one, the fmtp line, for logs.
    pub fn describe(self, fmtp: &str) -> String {
        if fmtp.is_empty() {
            self.mime().to_owned()
        } else {
            format!("{} {fmtp}", self.mime())
        }
    }

    /// By its encoding name, the MIME type's subtype (`VP8`, `h264`, `opus`),
    /// as `--codec` and an SDP `a=rtpmap` line give it; case-insensitive.
    pub fn from_encoding_name(name: &str) -> Option<Codec> {
        ALL_CODECS.into_iter().find(|c| {
            c.mime()
                .rsplit('/')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    }

    /// Case-insensitive, as MIME types are.
    pub fn from_mime(mime: &str) -> Option<Codec> {
        ALL_CODECS
            .into_iter()
            .find(|c| c.mime().eq_ignore_ascii_case(mime))
    }

    /// The IVF fourcc: `VP80`, `VP90` or `AV01`.
    pub fn from_fourcc(fourcc: &[u8; 4]) -> Option<Codec> {
        ALL_CODECS
            .into_iter()
            .find(|c| c.fourcc().as_ref() == Some(fourcc))
    }

    /// The IVF fourcc; `None` for Opus, which IVF cannot carry, and for H.264,
    /// which players expect as an Annex B stream instead.
    pub fn fourcc(self) -> Option<[u8; 4]> {
        match self {
            Codec::Vp8 => Some(*b"VP80"),
            Codec::Vp9 => Some(*b"VP90"),
            Codec::Av1 => Some(*b"AV01"),
            Codec::H264 | Codec::Opus => None,
        }
    }

    /// Whether a decoder can start at this frame.
    ///
    /// VP8: the frame tag's P bit is clear and the keyframe start code follows.
    /// VP9: the uncompressed header says KEY_FRAME and not show_existing_frame (for a
    /// superframe the first frame decides, as it is the one decoded first). AV1: the
    /// temporal unit carries a sequence header and a key frame header; a key frame
    /// without a sequence header is no use to a decoder joining mid-stream. H.264
    /// (an Annex B access unit): an IDR slice with a sequence parameter set
    /// before it, for the same reason. Opus: every packet.
    pub fn is_keyframe(self, frame: &[u8]) -> bool {
        match self {
            Codec::Vp8 => vp8_keyframe_size(frame).is_some(),
            Codec::Vp9 => vp9_keyframe(frame).is_some(),
            Codec::Av1 => av1_keyframe(frame).is_some(),
            Codec::H264 => h264_keyframe(frame),
            Codec::Opus => true,
        }
    }

    /// Picture size from a keyframe (`None` for non-keyframes, audio, or sizes that do
    /// not fit the 16-bit fields of an IVF header). AV1 gives the sequence's maximum
    /// frame size, which is what an IVF header records.
    pub fn keyframe_size(self, frame: &[u8]) -> Option<(u16, u16)> {
        match self {
            Codec::Vp8 => vp8_keyframe_size(frame),
            Codec::Vp9 => vp9_keyframe(frame).flatten(),
            Codec::Av1 => av1_keyframe(frame).flatten(),
            Codec::H264 | Codec::Opus => None,
        }
    }

    /// Checks that a frame is safe to hand to rtc's payloader. Only AV1 needs it: its
    /// payloader slices OBUs by their declared sizes and panics when one overruns.
    /// The error is a short description of what is wrong.
    pub fn check_frame(self, frame: &[u8]) -> Result<(), String> {
        match self {
            Codec::Av1 => for_each_obu(frame, |_| true).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Every (codec, payload type, RTX payload type) a link registers for
    /// this codec: one, or for H.264 each of [`H264_VARIANTS`].
    pub fn sdp_variants(self) -> Vec<(RTCRtpCodec, u8, Option<u8>)> {
        match self {
            Codec::H264 => H264_VARIANTS
                .iter()
                .map(|&(fmtp, pt, rtx)| (self.rtc_codec_with(fmtp), pt, Some(rtx)))
                .collect(),
            _ => vec![(
                self.rtc_codec(),
                self.default_payload_type(),
                self.default_rtx_payload_type(),
            )],
        }
    }

    /// Whether a negotiated codec line `offered` carries a stream described
    /// by `fmtp`: for H.264 the packetization mode and the profile must agree
    /// (RFC 6184 §8.2.2; the level may differ), other codecs have one format.
    pub fn same_format(self, fmtp: &str, offered: &str) -> bool {
        if self != Codec::H264 {
            return true;
        }
        let param = |line: &str, key: &str| {
            line.split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
        };
        // Mode 0 when absent; the profile is the first byte of profile-level-id.
        let mode = |line: &str| param(line, "packetization-mode").unwrap_or_else(|| "0".into());
        let profile =
            |line: &str| param(line, "profile-level-id").map(|v| v.get(..2).map(str::to_owned));
        mode(fmtp) == mode(offered) && profile(fmtp) == profile(offered)
    }

    /// The codec as rtc describes it, with this fmtp line.
    pub fn rtc_codec_with(self, fmtp: &str) -> RTCRtpCodec {
        RTCRtpCodec {
            sdp_fmtp_line: fmtp.to_owned(),
            ..self.rtc_codec()
        }
    }

    /// The codec as rtc describes it, with no RTCP feedback (the media engine and
    /// interceptors add those).
    pub fn rtc_codec(self) -> RTCRtpCodec {
        RTCRtpCodec {
            mime_type: self.mime().to_owned(),
            clock_rate: self.clock_rate(),
            channels: self.channels(),
            sdp_fmtp_line: self.sdp_fmtp_line().to_owned(),
            rtcp_feedback: vec![],
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::Av1 => "AV1",
            Codec::H264 => "H.264",
            Codec::Opus => "Opus",
        })
    }
}

/// MSB-first bit reader that answers `None` past the end instead of panicking, so
/// every header parser below is total over arbitrary input.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(b))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        debug_assert!(n <= 32);
        let mut v: u64 = 0;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        u32::try_from(v).ok()
    }

    fn flag(&mut self) -> Option<bool> {
        self.bit().map(|b| b == 1)
    }

    /// AV1 uvlc(): only skipped here, so the value may saturate.
    fn uvlc(&mut self) -> Option<u32> {
        let mut leading = 0u32;
        while !self.flag()? {
            leading += 1;
            if leading >= 32 {
                return Some(u32::MAX);
            }
        }
        let v = self.bits(leading)?;
        Some(v.saturating_add((1u32 << leading) - 1))
    }
}

/// VP8 (RFC 6386 §9.1): 3-byte frame tag, then on keyframes the start code
/// 9d 01 2a and two 16-bit little-endian fields of 14-bit size + 2-bit scale.
fn vp8_keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    let tag = frame.first()?;
    if tag & 1 != 0 || frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([*frame.get(6)?, *frame.get(7)?]) & 0x3fff;
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    Some((w, h))
}

/// VP9 uncompressed header (VP9 bitstream spec §6.2). `Some(size)` on a keyframe,
/// the size being `None` when the header ends before it.
fn vp9_keyframe(frame: &[u8]) -> Option<Option<(u16, u16)>> {
    let mut r = Bits::new(frame);
    if r.bits(2)? != 2 {
        return None; // frame_marker
    }
    let low = r.bit()?;
    let high = r.bit()?;
    let profile = (high << 1) | low;
    if profile == 3 && r.bit()? != 0 {
        return None; // reserved_zero
    }
    if r.flag()? {
        return None; // show_existing_frame: repeats an old frame, decodes nothing new
    }
    if r.flag()? {
        return None; // frame_type 1 = NON_KEY_FRAME
    }
    Some(vp9_keyframe_rest(&mut r, profile))
}

fn vp9_keyframe_rest(r: &mut Bits<'_>, profile: u32) -> Option<(u16, u16)> {
    r.bits(2)?; // show_frame, error_resilient_mode
    if r.bits(24)? != 0x49_83_42 {
        return None; // frame_sync_code
    }
    if profile >= 2 {
        r.bit()?; // ten_or_twelve_bit
    }
    let color_space = r.bits(3)?;
    if color_space != 7 {
        r.bit()?; // color_range
        if profile == 1 || profile == 3 {
            r.bits(3)?; // subsampling_x, subsampling_y, reserved_zero
        }
    } else if profile == 1 || profile == 3 {
        r.bit()?; // reserved_zero
    }
    let w = r.bits(16)? + 1;
    let h = r.bits(16)? + 1;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

/// True if this VP9 RTP payload (RFC 9628) starts a keyframe: B set, P
/// clear, the base spatial layer, and a keyframe's uncompressed header
/// after the descriptor. The P bit alone is not enough: ffmpeg's
/// packetizer never sets it, and every picture it sends would pass.
pub(crate) fn vp9_payload_starts_keyframe(payload: &[u8]) -> bool {
    vp9_descriptor_len(payload)
        .and_then(|at| payload.get(at..))
        .is_some_and(|frame| vp9_keyframe(frame).is_some())
}

/// The length of the payload descriptor of a packet that could start a
/// keyframe (B set, P clear, spatial layer 0); None for any other.
fn vp9_descriptor_len(payload: &[u8]) -> Option<usize> {
    let &first = payload.first()?;
    let flag = |bit: u8| first & bit != 0;
    let (picture_id, predicted, layers, flexible) =
        (flag(0x80), flag(0x40), flag(0x20), flag(0x10));
    let (begins, structure) = (flag(0x08), flag(0x02));
    if !begins || predicted {
        return None;
    }
    let byte = |at: usize| payload.get(at).copied();
    let mut at = 1;
    if picture_id {
        at += if byte(at)? & 0x80 != 0 { 2 } else { 1 };
    }
    if layers {
        if (byte(at)? >> 1) & 0x07 != 0 {
            return None; // an upper spatial layer: predicted from the base
        }
        at += if flexible { 1 } else { 2 }; // TL0PICIDX in non-flexible mode
    }
    if structure {
        let ss = byte(at)?;
        at += 1;
        if ss & 0x10 != 0 {
            at += 4 * (usize::from(ss >> 5) + 1); // each layer's width and height
        }
        if ss & 0x08 != 0 {
            let groups = byte(at)?;
            at += 1;
            for _ in 0..groups {
                at += 1 + usize::from((byte(at)? >> 2) & 0x03); // its P_DIFFs
            }
        }
    }
    Some(at)
}

/// The NAL units of an Annex B stream (start codes of three or four bytes),
/// without their start codes. Trailing zero bytes of a NAL unit are part of
/// the next start code, as the spec's byte stream format says.
pub fn annex_b_nal_units(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    let starts: Vec<usize> = stream
        .windows(3)
        .enumerate()
        .filter(|(_, w)| *w == [0, 0, 1])
        .map(|(i, _)| i + 3)
        .collect();
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&next| {
            let mut end = next - 3;
            while end > 0 && stream[end - 1] == 0 {
                end -= 1;
            }
            end
        })
        .chain(std::iter::once(stream.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .map(move |(s, e)| &stream[s..e.max(s)])
}

fn h264_keyframe(access_unit: &[u8]) -> bool {
    let mut sps = false;
    for nal in annex_b_nal_units(access_unit) {
        match nal.first().map(|b| b & 0x1f) {
            Some(NAL_SPS) => sps = true,
            Some(NAL_IDR) if sps => return true,
            _ => {}
        }
    }
    false
}

/// Whether an H.264 RTP payload (RFC 6184) begins with a sequence parameter
/// set: as a single NAL unit, inside an aggregation (STAP-A), or as the first
/// fragment of one. Encoders put SPS and PPS in front of each IDR picture, so
/// the access unit of a keyframe starts here; an IDR slice on its own is not
/// taken as a start, because a decoder joining there lacks the parameter sets
/// (and a group-of-pictures cache reset there would lose them).
pub(crate) fn h264_payload_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    match b0 & 0x1f {
        NAL_SPS => true,
        NAL_STAP_A => {
            let mut at = 1usize;
            while let Some(len) = payload.get(at..at + 2) {
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                match payload.get(at + 2) {
                    Some(h) if h & 0x1f == NAL_SPS => return true,
                    Some(_) => at += 2 + len,
                    None => return false,
                }
            }
            false
        }
        NAL_FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == NAL_SPS),
        _ => false,
    }
}

/// Whether rtc 0.21's H.264 depacketizer can take this payload without
/// panicking: it reads a STAP-A's 16-bit size field even when only one byte
/// of it is left. The walk is the depacketizer's own.
pub(crate) fn h264_payload_is_safe(payload: &[u8]) -> bool {
    if payload.first().map(|b| b & 0x1f) != Some(NAL_STAP_A) {
        return true;
    }
    let mut at = 1usize;
    while at < payload.len() {
        let Some(len) = payload.get(at..at + 2) else {
            return false;
        };
        at += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
        if at > payload.len() {
            return false;
        }
    }
    true
}

pub(crate) const OBU_SEQUENCE_HEADER: u8 = 1;
pub(crate) const OBU_FRAME_HEADER: u8 = 3;
pub(crate) const OBU_FRAME: u8 = 6;

/// One OBU of an AV1 temporal unit: its type and its payload (after the header and
/// size field).
pub(crate) struct Obu<'a> {
    pub(crate) kind: u8,
    pub(crate) payload: &'a [u8],
}

/// Standard unsigned LEB128 (AV1 spec §4.10.5), at most 8 bytes, value within u32
/// (rtc truncates larger values to u32, so anything larger is refused rather than
/// read two different ways). Returns the value and the bytes used.
pub(crate) fn read_leb128(data: &[u8]) -> Option<(u32, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in data.iter().take(8).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((u32::try_from(value).ok()?, i + 1));
        }
    }
    None
}

/// Walks the OBUs of a temporal unit in low-overhead format (AV1 spec §5.2); `visit`
/// returns false to stop early. Errors describe the first malformed OBU.
pub(crate) fn for_each_obu<'a>(
    tu: &'a [u8],
    mut visit: impl FnMut(Obu<'a>) -> bool,
) -> Result<(), String> {
    let mut pos = 0usize;
    let mut index = 0usize;
    while pos < tu.len() {
        let rest = &tu[pos..];
        let header = rest[0];
        if header & 0x80 != 0 {
            return Err(format!(
                "OBU {index} at byte {pos} has its forbidden bit set"
            ));
        }
        let kind = (header >> 3) & 0x0f;
        let header_len = if header & 0x04 != 0 { 2 } else { 1 };
        if rest.len() < header_len {
            return Err(format!(
                "OBU {index} at byte {pos} is cut off inside its extension header"
            ));
        }
        let (payload, used) = if header & 0x02 != 0 {
            let (size, leb_len) = read_leb128(&rest[header_len..]).ok_or_else(|| {
                format!("OBU {index} at byte {pos} has a truncated or oversized size field")
            })?;
            let start = header_len + leb_len;
            let size = size as usize;
            let available = rest.len() - start;
            if size > available {
                return Err(format!(
                    "OBU {index} at byte {pos} claims {size} bytes but only {available} remain"
                ));
            }
            (&rest[start..start + size], start + size)
        } else {
            (&rest[header_len..], rest.len())
        };
        if !visit(Obu { kind, payload }) {
            return Ok(());
        }
        pos += used;
        index += 1;
    }
    Ok(())
}

/// AV1: `Some(size)` when the temporal unit holds a sequence header and a shown or
/// hidden key frame (not a show_existing_frame). The size comes from the sequence
/// header (`None` if it could not be parsed).
fn av1_keyframe(tu: &[u8]) -> Option<Option<(u16, u16)>> {
    let mut sequence: Option<SequenceHeader> = None;
    let mut key = false;
    let walked = for_each_obu(tu, |obu| {
        match obu.kind {
            OBU_SEQUENCE_HEADER => sequence = parse_sequence_header(obu.payload),
            OBU_FRAME_HEADER | OBU_FRAME => {
                if let Some(seq) = &sequence {
                    key = is_key_frame_header(obu.payload, seq.reduced_still_picture_header);
                }
                // The first frame header of a temporal unit decides, as for VP9.
                return false;
            }
            _ => {}
        }
        true
    });
    if walked.is_err() || !key {
        return None;
    }
    Some(sequence.and_then(|s| s.max_size))
}

struct SequenceHeader {
    reduced_still_picture_header: bool,
    max_size: Option<(u16, u16)>,
}

/// AV1 spec §5.5.1, as far as max_frame_{width,height}_minus_1.
fn parse_sequence_header(payload: &[u8]) -> Option<SequenceHeader> {
    let mut r = Bits::new(payload);
    r.bits(3)?; // seq_profile
    r.bit()?; // still_picture
    let reduced = r.flag()?;
    if reduced {
        r.bits(5)?; // seq_level_idx[0]
    } else {
        let timing_info_present = r.flag()?;
        let mut decoder_model_info_present = false;
        let mut buffer_delay_length = 0;
        if timing_info_present {
            r.bits(32)?; // num_units_in_display_tick
            r.bits(32)?; // time_scale
            if r.flag()? {
                r.uvlc()?; // num_ticks_per_picture_minus_1
            }
            decoder_model_info_present = r.flag()?;
            if decoder_model_info_present {
                buffer_delay_length = r.bits(5)? + 1;
                r.bits(32)?; // num_units_in_decoding_tick
                r.bits(10)?; // buffer_removal_time_length_minus_1, frame_presentation_time_length_minus_1
            }
        }
        let initial_display_delay_present = r.flag()?;
        let operating_points = r.bits(5)? + 1;
        for _ in 0..operating_points {
            r.bits(12)?; // operating_point_idc
            let level = r.bits(5)?;
            if level > 7 {
                r.bit()?; // seq_tier
            }
            if decoder_model_info_present && r.flag()? {
                r.bits(buffer_delay_length)?; // decoder_buffer_delay
                r.bits(buffer_delay_length)?; // encoder_buffer_delay
                r.bit()?; // low_delay_mode_flag
            }
            if initial_display_delay_present && r.flag()? {
                r.bits(4)?; // initial_display_delay_minus_1
            }
        }
    }
    let size = (|| {
        let width_bits = r.bits(4)? + 1;
        let height_bits = r.bits(4)? + 1;
        let w = u64::from(r.bits(width_bits)?) + 1;
        let h = u64::from(r.bits(height_bits)?) + 1;
        Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
    })();
    Some(SequenceHeader {
        reduced_still_picture_header: reduced,
        max_size: size,
    })
}

/// AV1 spec §5.9.2: the first bits of uncompressed_header().
fn is_key_frame_header(payload: &[u8], reduced_still_picture_header: bool) -> bool {
    if reduced_still_picture_header {
        return true; // such streams hold key frames only
    }
    let mut r = Bits::new(payload);
    match (r.flag(), r.bits(2)) {
        (Some(false), Some(frame_type)) => frame_type == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_facts_match_rtc_defaults() {
        assert_eq!(Codec::Vp8.mime(), "video/VP8");
        assert_eq!(Codec::Opus.mime(), "audio/opus");
        assert_eq!(Codec::from_mime("VIDEO/vp9"), Some(Codec::Vp9));
        assert_eq!(Codec::from_mime("video/H264"), Some(Codec::H264));
        assert_eq!(Codec::from_mime("video/H265"), None);
        assert_eq!(Codec::from_fourcc(b"AV01"), Some(Codec::Av1));
        assert_eq!(Codec::from_fourcc(b"H264"), None);
        for c in ALL_CODECS {
            assert_eq!(
                c.fourcc().and_then(|f| Codec::from_fourcc(&f)),
                c.fourcc().map(|_| c)
            );
            let rc = c.rtc_codec();
            assert_eq!(rc.clock_rate, c.clock_rate());
            assert!(rc.payloader().is_ok(), "{c} has an rtc payloader");
        }
        assert_eq!(
            [96, 98, 41, 125, 111],
            ALL_CODECS.map(|c| c.default_payload_type())
        );
    }

    #[test]
    fn h264_keyframes_are_idr_pictures_with_their_parameter_sets() {
        let sps = [0x67, 0x42, 0xc0, 0x1e];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let idr = [0x65, 0x88, 0x84, 0x00];
        let p_slice = [0x41, 0x9a, 0x02];
        let au = |nals: &[&[u8]]| {
            let mut v = Vec::new();
            for (i, n) in nals.iter().enumerate() {
                // Both start code lengths, as encoders mix them.
                v.extend_from_slice(if i == 0 {
                    &[0, 0, 0, 1][..]
                } else {
                    &[0, 0, 1]
                });
                v.extend_from_slice(n);
            }
            v
        };
        let key = au(&[&sps, &pps, &idr]);
        assert!(Codec::H264.is_keyframe(&key));
        assert_eq!(
            annex_b_nal_units(&key).collect::<Vec<_>>(),
            vec![&sps[..], &pps[..], &idr[..]]
        );
        assert!(!Codec::H264.is_keyframe(&au(&[&idr])), "no SPS: no start");
        assert!(!Codec::H264.is_keyframe(&au(&[&p_slice])));
        assert!(!Codec::H264.is_keyframe(&[]));
        assert_eq!(Codec::H264.keyframe_size(&key), None);
    }

    #[test]
    fn h264_payloads_that_start_a_keyframe() {
        let starts = |p: &[u8]| h264_payload_starts_keyframe(p);
        assert!(starts(&[0x67, 0x42, 0xc0]), "SPS alone");
        assert!(
            starts(&[0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]),
            "STAP-A, SPS first"
        );
        assert!(
            starts(&[0x78, 0, 1, 0x09, 0, 2, 0x67, 0x42]),
            "STAP-A, SPS after an AUD"
        );
        assert!(starts(&[0x7c, 0x87, 0x42]), "FU-A start of an SPS");
        assert!(!starts(&[0x65, 0x88]), "IDR slice without its SPS");
        assert!(!starts(&[0x7c, 0x85, 0x88]), "FU-A of an IDR slice");
        assert!(!starts(&[0x7c, 0x07, 0x42]), "FU-A middle");
        assert!(!starts(&[0x78, 0, 9, 0x68]), "STAP-A cut short");
        assert!(!starts(&[]));
        assert!(h264_payload_is_safe(&[0x78, 0, 1, 0x67]));
        assert!(
            !h264_payload_is_safe(&[0x78, 0, 1, 0x67, 0x00]),
            "one byte of a size"
        );
        assert!(
            !h264_payload_is_safe(&[0x78, 0, 5, 0x67]),
            "size past the end"
        );
        assert!(h264_payload_is_safe(&[0x65, 0x88]));
    }

    #[test]
    fn vp8_keyframe_and_size() {
        let key = [
            0x90, 0x9c, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01, 0x00,
        ];
        assert!(Codec::Vp8.is_keyframe(&key));
        assert_eq!(Codec::Vp8.keyframe_size(&key), Some((640, 360)));
        let mut inter = key;
        inter[0] |= 1;
        assert!(!Codec::Vp8.is_keyframe(&inter));
        assert!(!Codec::Vp8.is_keyframe(&[]));
        assert!(!Codec::Vp8.is_keyframe(&key[..5]));
    }

    #[test]
    fn vp9_keyframe_and_size() {
        // From the VP9 sample: profile 0 keyframe, 640x360.
        let key = [0x82, 0x49, 0x83, 0x42, 0x00, 0x27, 0xf0, 0x16, 0x76, 0x08];
        assert!(Codec::Vp9.is_keyframe(&key));
        assert_eq!(Codec::Vp9.keyframe_size(&key), Some((640, 360)));
        // frame_type = 1
        assert!(!Codec::Vp9.is_keyframe(&[0x86, 0x00]));
        // show_existing_frame = 1
        assert!(!Codec::Vp9.is_keyframe(&[0x88]));
        assert!(!Codec::Vp9.is_keyframe(&[]));
    }

    #[test]
    fn vp9_payload_keyframes() {
        let key = [0x82, 0x49, 0x83, 0x42, 0x00, 0x27, 0xf0, 0x16, 0x76, 0x08];
        let with = |descriptor: &[u8], frame: &[u8]| [descriptor, frame].concat();
        // ffmpeg's descriptor: B only; the header decides.
        assert!(vp9_payload_starts_keyframe(&with(&[0x08], &key)));
        assert!(!vp9_payload_starts_keyframe(&with(&[0x08], &[0x86, 0x00])));
        // Chromium's: I with a 15-bit picture id, L (SID 0, TL0PICIDX), V
        // with one layer's size and a group of one picture with one P_DIFF.
        let chromium = [
            0xaa, 0x80, 0x01, 0x00, 0x07, 0x18, 0x02, 0x80, 0x01, 0x68, 0x01, 0x04, 0x01,
        ];
        assert!(vp9_payload_starts_keyframe(&with(&chromium, &key)));
        // P set, an upper spatial layer, no B, cut short: never.
        assert!(!vp9_payload_starts_keyframe(&with(&[0x48], &key)));
        assert!(!vp9_payload_starts_keyframe(&with(
            &[0x28, 0x02, 0x00],
            &key
        )));
        assert!(!vp9_payload_starts_keyframe(&with(&[0x00], &key)));
        assert!(!vp9_payload_starts_keyframe(&[0xaa, 0x80]));
        assert!(!vp9_payload_starts_keyframe(&[]));
    }

    #[test]
    fn leb128_limits() {
        assert_eq!(read_leb128(&[0x05]), Some((5, 1)));
        assert_eq!(read_leb128(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(read_leb128(&[0x80]), None);
        assert_eq!(read_leb128(&[0xff, 0xff, 0xff, 0xff, 0x7f]), None); // > u32
        assert_eq!(read_leb128(&[0xff; 9]), None);
    }

    #[test]
    fn av1_obu_walk_reports_overruns() {
        // temporal delimiter, then an OBU_FRAME claiming 10 bytes with 2 present
        let tu = [0x12, 0x00, 0x32, 0x0a, 0x01, 0x02];
        let err = Codec::Av1.check_frame(&tu).unwrap_err();
        assert!(err.contains("claims 10 bytes but only 2 remain"), "{err}");
        assert!(Codec::Av1.check_frame(&[0x12, 0x00]).is_ok());
        assert!(Codec::Av1.check_frame(&[0x16]).is_err()); // extension header cut off
        assert!(!Codec::Av1.is_keyframe(&tu));
    }
}
