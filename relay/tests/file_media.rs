//! File media without a network: IVF/Ogg reading, packetizing, scheduling and
//! recording, checked against the committed sample files and synthetic
//! corruptions.
//!
//! `tests/data/testsrc2-640x360-vp9.ivf` (300 frames at 30 fps, keyframe every
//! 30 frames) was made with
//! `ffmpeg -f lavfi -i testsrc2=size=640x360:rate=30 -t 10 -c:v libvpx-vp9 -b:v 80k
//! -g 30 -keyint_min 30 -deadline realtime -cpu-used 8 -f ivf testsrc2-640x360-vp9.ivf`.
//!
//! `tests/data/testsrc-160x90-av1.ivf` (23 KB, 60 frames at 15 fps, keyframe every
//! 15 frames) was made with
//! `ffmpeg -f lavfi -i testsrc=size=160x90:rate=15 -t 4 -c:v libaom-av1 -cpu-used 8
//! -b:v 100k -g 15 -f ivf testsrc-160x90-av1.ivf`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use relay::media::Codec;
use relay::record::Recorder;
use relay::source::{
    AudioFile, Frame, Schedule, SourceError, TrackKind, TrackPacketizer, VideoFile,
};
use rtc::rtp::packet::Packet;

/// The samples committed under the workspace's examples/media/.
fn example_media(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/media")
        .join(name)
}

fn vp8_path() -> PathBuf {
    example_media("testsrc-640x360-vp8.ivf")
}

fn vp9_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/testsrc2-640x360-vp9.ivf")
}

fn ogg_path() -> PathBuf {
    example_media("sine-440hz.ogg")
}

fn av1_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/testsrc-160x90-av1.ivf")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ───────────────────────── reading the samples ─────────────────────────

#[test]
fn samples_open_with_expected_shape() {
    for (path, codec, w, h, frames, interval, keyframes) in [
        (vp8_path(), Codec::Vp8, 640, 360, 300, 1, 10),
        (vp9_path(), Codec::Vp9, 640, 360, 300, 1, 10),
        (av1_path(), Codec::Av1, 160, 90, 60, 1, 4),
    ] {
        let v = VideoFile::open(&path).unwrap();
        let name = path.display();
        assert_eq!(v.codec(), codec, "{name}");
        assert_eq!((v.width(), v.height()), (w, h), "{name}");
        assert_eq!(v.frames().len(), frames, "{name}");
        assert_eq!(v.keyframe_count(), keyframes, "{name}");
        assert_eq!(
            v.keyframe_interval(),
            Some(Duration::from_secs(interval)),
            "{name}"
        );
        assert!(v.frames()[0].keyframe, "{name}");
        assert_eq!(v.frames()[0].pts, Duration::ZERO);
        let fps = frames as u64 / if codec == Codec::Av1 { 4 } else { 10 };
        let exact_period = Duration::from_secs(frames as u64 / fps);
        assert_eq!(
            v.loop_period(),
            exact_period,
            "{name}: loop period is exact"
        );
        let rounded = Duration::from_nanos((1_000_000_000 + fps / 2) / fps);
        assert_eq!(v.frame_interval(), rounded, "{name}");
        assert!(v.frames().windows(2).all(|w| w[0].pts < w[1].pts));
        // Keyframes where the encoder put them: every second.
        let keys: Vec<usize> = (0..frames).filter(|&i| v.frames()[i].keyframe).collect();
        let every_second: Vec<usize> = (0..frames).step_by(fps as usize).collect();
        assert_eq!(keys, every_second, "{name}");
    }
}

#[test]
fn ogg_sample_parses_to_20ms_packets() {
    let a = AudioFile::open(ogg_path()).unwrap();
    assert_eq!(a.codec(), Codec::Opus);
    assert_eq!(a.channels(), 1);
    assert_eq!(a.pre_skip(), 312);
    // 10 s of audio: 500 packets plus the encoder's trailing, end-trimmed one.
    assert_eq!(a.packets().len(), 501);
    for (i, p) in a.packets().iter().enumerate() {
        assert_eq!(p.pts, ms(20 * i as u64), "packet {i}");
        assert!(p.keyframe);
        assert!(!p.data.is_empty());
    }
    // Final granule 480312 minus 312 pre-skip: exactly 10 s.
    assert_eq!(a.loop_period(), Duration::from_secs(10));
}

// ───────────────────────── corrupt IVF files ─────────────────────────

fn ivf_err(data: Vec<u8>) -> SourceError {
    match VideoFile::from_bytes("video.ivf", Bytes::from(data)) {
        Ok(v) => panic!("expected an error, got {} frames", v.frames().len()),
        Err(e) => e,
    }
}

fn assert_msg(e: &SourceError, parts: &[&str]) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        msg.starts_with("video.ivf: ") || msg.starts_with("audio.ogg: "),
        "starts with the file name: {msg}"
    );
    for p in parts {
        assert!(msg.contains(p), "{msg:?} should contain {p:?}");
    }
}

/// Offsets of each frame header in an IVF file.
fn frame_offsets(data: &[u8]) -> Vec<usize> {
    let mut offsets = vec![];
    let mut at = 32;
    while at + 12 <= data.len() {
        offsets.push(at);
        let size = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        at += 12 + size;
    }
    offsets
}

#[test]
fn corrupt_ivf_files_give_typed_errors() {
    let good = read(&vp8_path());
    let offsets = frame_offsets(&good);
    assert_eq!(offsets.len(), 300);

    // Truncated inside frame 12's data.
    let cut = offsets[12] + 12 + 100;
    let e = ivf_err(good[..cut].to_vec());
    assert!(
        matches!(e, SourceError::FrameOverrun { frame: 12, .. }),
        "{e}"
    );
    let size = u32::from_le_bytes(good[offsets[12]..offsets[12] + 4].try_into().unwrap());
    assert_msg(
        &e,
        &[&format!(
            "frame 12 at byte {} claims {size} bytes but only 100 remain",
            offsets[12]
        )],
    );

    // Truncated inside frame 7's 12-byte header.
    let e = ivf_err(good[..offsets[7] + 5].to_vec());
    assert!(
        matches!(
            e,
            SourceError::TruncatedFrameHeader {
                frame: 7,
                remaining: 5,
                ..
            }
        ),
        "{e}"
    );
    assert_msg(
        &e,
        &[
            "frame 7",
            &format!("byte {}", offsets[7]),
            "truncated frame header",
        ],
    );

    // A frame size far past the end.
    let mut big = good.clone();
    big[offsets[3]..offsets[3] + 4].copy_from_slice(&900_000u32.to_le_bytes());
    let e = ivf_err(big);
    assert!(
        matches!(
            e,
            SourceError::FrameOverrun {
                frame: 3,
                size: 900_000,
                ..
            }
        ),
        "{e}"
    );
    assert_msg(&e, &["claims 900000 bytes"]);

    // Bad magic.
    let mut magic = good.clone();
    magic[..4].copy_from_slice(b"RIFF");
    let e = ivf_err(magic);
    assert!(matches!(e, SourceError::BadMagic { .. }), "{e}");
    assert_msg(&e, &["not an IVF file", "RIFF", "DKIF"]);
    let e = ivf_err(b"\x00\x01".to_vec());
    assert!(matches!(e, SourceError::BadMagic { .. }), "{e}");

    // Header too short: the file ends inside it.
    let e = ivf_err(good[..20].to_vec());
    assert!(
        matches!(
            e,
            SourceError::HeaderTooShort {
                len: 20,
                needed: 32,
                ..
            }
        ),
        "{e}"
    );
    assert_msg(&e, &["20 bytes", "32-byte IVF header"]);
    let e = ivf_err(b"DK".to_vec());
    assert!(matches!(e, SourceError::HeaderTooShort { .. }), "{e}");

    // Header length field too small.
    let mut hl = good.clone();
    hl[6..8].copy_from_slice(&16u16.to_le_bytes());
    let e = ivf_err(hl);
    assert!(
        matches!(e, SourceError::BadHeaderLength { declared: 16, .. }),
        "{e}"
    );

    // Zero timebase, either term.
    for at in [16, 20] {
        let mut tb = good.clone();
        tb[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        let e = ivf_err(tb);
        assert!(matches!(e, SourceError::ZeroTimebase { .. }), "{e}");
        assert_msg(&e, &["timebase", "zero"]);
    }

    // Unsupported fourccs name themselves and the supported ones.
    for fourcc in [b"H264", b"XXXX"] {
        let mut cc = good.clone();
        cc[8..12].copy_from_slice(fourcc);
        let e = ivf_err(cc);
        assert!(matches!(e, SourceError::UnsupportedCodec { .. }), "{e}");
        assert_msg(
            &e,
            &[std::str::from_utf8(fourcc).unwrap(), "VP80", "VP90", "AV01"],
        );
    }

    // No frames at all.
    let e = ivf_err(good[..32].to_vec());
    assert!(matches!(e, SourceError::NoFrames { .. }), "{e}");
    assert_msg(&e, &["no frames"]);

    // Timestamps running backwards.
    let mut back = good.clone();
    back[offsets[9] + 4..offsets[9] + 12].copy_from_slice(&2u64.to_le_bytes());
    let e = ivf_err(back);
    assert!(
        matches!(
            e,
            SourceError::TimestampBackwards {
                frame: 9,
                timestamp: 2,
                previous: 8,
                ..
            }
        ),
        "{e}"
    );

    // An AV1 OBU that claims more than its frame holds.
    let mut av1 = read(&av1_path());
    let av1_offsets = frame_offsets(&av1);
    let f = av1_offsets[2] + 12; // frame 2: TD, then a frame OBU of 48 bytes
    assert_eq!(&av1[f..f + 4], &[0x12, 0x00, 0x32, 48]);
    av1[f + 3] = 100;
    let e = ivf_err(av1);
    assert!(matches!(e, SourceError::BadFrame { frame: 2, .. }), "{e}");
    assert_msg(&e, &["frame 2", "claims 100 bytes"]);
}

#[test]
fn file_level_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.ivf");
    let e = VideoFile::open(&missing).unwrap_err();
    assert!(matches!(e, SourceError::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing.ivf: cannot read"), "{e}");

    // Sparse, so the test costs nothing; refused before any of it is read.
    let huge = dir.path().join("huge.ivf");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(relay::source::MAX_FILE_SIZE + 1).unwrap();
    let e = VideoFile::open(&huge).unwrap_err();
    assert!(matches!(e, SourceError::TooLarge { .. }), "{e}");
    let e = AudioFile::open(&huge).unwrap_err();
    assert!(matches!(e, SourceError::TooLarge { .. }), "{e}");
}

// ───────────────────────── Ogg: synthetic files and corruption ─────────────────────────

fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

struct OggWriter {
    out: Vec<u8>,
    serial: u32,
    sequence: u32,
}

impl OggWriter {
    fn new(serial: u32) -> Self {
        OggWriter {
            out: vec![],
            serial,
            sequence: 0,
        }
    }

    fn page(&mut self, flags: u8, granule: u64, lacing: &[u8], body: &[u8]) {
        assert!(lacing.len() <= 255);
        let start = self.out.len();
        self.out.extend_from_slice(b"OggS");
        self.out.push(0);
        self.out.push(flags);
        self.out.extend_from_slice(&granule.to_le_bytes());
        self.out.extend_from_slice(&self.serial.to_le_bytes());
        self.out.extend_from_slice(&self.sequence.to_le_bytes());
        self.out.extend_from_slice(&[0; 4]);
        self.out.push(lacing.len() as u8);
        self.out.extend_from_slice(lacing);
        self.out.extend_from_slice(body);
        let crc = ogg_crc(&self.out[start..]);
        self.out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.sequence += 1;
    }

    /// One packet alone on its page.
    fn single(&mut self, flags: u8, granule: u64, packet: &[u8]) {
        let mut lacing = vec![255u8; packet.len() / 255];
        lacing.push((packet.len() % 255) as u8);
        self.page(flags, granule, &lacing, packet);
    }

    /// Audio packets packed into pages of at most `max_body` bytes, splitting packets
    /// across pages wherever a page fills. `granule_of(i)` is the granule at the end
    /// of packet i.
    fn packed(&mut self, packets: &[Bytes], max_body: usize, granule_of: impl Fn(usize) -> u64) {
        let mut lacing: Vec<u8> = vec![];
        let mut body: Vec<u8> = vec![];
        let mut continued = false;
        let mut last_complete: Option<usize> = None;
        for (i, p) in packets.iter().enumerate() {
            let mut rest: &[u8] = p;
            loop {
                let seg = rest.len().min(255);
                lacing.push(seg as u8);
                body.extend_from_slice(&rest[..seg]);
                rest = &rest[seg..];
                let done = seg < 255;
                if done {
                    last_complete = Some(i);
                }
                let is_last_packet = i + 1 == packets.len();
                if body.len() >= max_body || lacing.len() == 255 || (done && is_last_packet) {
                    let granule = last_complete.map_or(u64::MAX, &granule_of);
                    let mut flags = if continued { 1 } else { 0 };
                    if done && is_last_packet {
                        flags |= 4;
                    }
                    self.page(flags, granule, &lacing, &body);
                    continued = !done;
                    lacing.clear();
                    body.clear();
                    last_complete = None;
                }
                if done {
                    break;
                }
            }
        }
    }
}

fn opus_head(pre_skip: u16) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1); // version
    h.push(2); // channels
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.push(0); // mapping family
    h
}

fn opus_tags() -> Vec<u8> {
    let mut t = b"OpusTags".to_vec();
    t.extend_from_slice(&4u32.to_le_bytes());
    t.extend_from_slice(b"test");
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

/// A 20 ms CELT packet (TOC 0xfc) of `len` bytes.
fn opus_packet(len: usize, fill: u8) -> Bytes {
    let mut p = vec![fill; len];
    p[0] = 0xfc;
    Bytes::from(p)
}

fn ogg_file(packets: &[Bytes], max_body: usize) -> Vec<u8> {
    let mut w = OggWriter::new(0x1234);
    w.single(2, 0, &opus_head(312));
    w.single(0, 0, &opus_tags());
    w.packed(packets, max_body, |i| 960 * (i as u64 + 1));
    w.out
}

fn ogg_err(data: Vec<u8>) -> SourceError {
    match AudioFile::from_bytes("audio.ogg", Bytes::from(data)) {
        Ok(a) => panic!("expected an error, got {} packets", a.packets().len()),
        Err(e) => e,
    }
}

#[test]
fn ogg_pages_with_many_packets_and_packets_across_pages() {
    let sample = AudioFile::open(ogg_path()).unwrap();
    let packets: Vec<Bytes> = sample.packets().iter().map(|p| p.data.clone()).collect();
    // Several packets per page, packets split across pages, and sizes that are
    // multiples of 255 (whose lacing ends with a 0).
    let mut extra = packets.clone();
    extra.push(opus_packet(255, 1));
    extra.push(opus_packet(510, 2));
    extra.push(opus_packet(1000, 3));
    for max_body in [100, 700, 4000, 65_000] {
        let file = ogg_file(&extra, max_body);
        let a = AudioFile::from_bytes("audio.ogg", Bytes::from(file)).unwrap();
        let got: Vec<Bytes> = a.packets().iter().map(|p| p.data.clone()).collect();
        assert_eq!(got, extra, "max_body {max_body}");
        for (i, p) in a.packets().iter().enumerate() {
            assert_eq!(p.pts, ms(20 * i as u64), "max_body {max_body} packet {i}");
        }
        // Final granule 960 × n minus 312 pre-skip.
        let n = extra.len() as u64;
        assert_eq!(
            a.loop_period(),
            Duration::from_nanos((960 * n - 312) * 1_000_000_000 / 48_000)
        );
    }
}

#[test]
fn ogg_granules_place_packets() {
    // First page's packets end at its granule; a later page starts where the previous
    // one ended, even when packets on the page do not add up.
    let p: Vec<Bytes> = (0..4).map(|i| opus_packet(50, i)).collect();
    let mut w = OggWriter::new(7);
    w.single(2, 0, &opus_head(0));
    w.single(0, 0, &opus_tags());
    // Two packets (1920 samples) ending at 2880: the stream starts at 960.
    w.page(0, 2880, &[50, 50], &[&p[0][..], &p[1][..]].concat());
    // Granule jumps by 4800 for 1920 samples of packets: the third packet starts
    // at the previous granule, the fourth 960 later.
    w.page(4, 7680, &[50, 50], &[&p[2][..], &p[3][..]].concat());
    let a = AudioFile::from_bytes("audio.ogg", Bytes::from(w.out)).unwrap();
    let pts: Vec<Duration> = a.packets().iter().map(|f| f.pts).collect();
    assert_eq!(pts, [ms(0), ms(20), ms(40), ms(60)]);
    assert_eq!(a.loop_period(), ms(140)); // (7680 - 960) / 48
}

#[test]
fn corrupt_ogg_files_give_typed_errors() {
    let packets: Vec<Bytes> = (0..20).map(|i| opus_packet(120, i)).collect();
    let good = ogg_file(&packets, 500);
    AudioFile::from_bytes("audio.ogg", Bytes::from(good.clone())).unwrap();

    let e = ogg_err(b"RIFF....WAVE".to_vec());
    assert!(matches!(e, SourceError::BadMagic { .. }), "{e}");
    assert_msg(&e, &["not an Ogg file", "OggS"]);

    let e = ogg_err(vec![]);
    assert!(matches!(e, SourceError::HeaderTooShort { .. }), "{e}");

    // A flipped byte in the third page's body breaks its checksum.
    let third = find_pages(&good)[2];
    let mut flipped = good.clone();
    flipped[third + 40] ^= 0x55;
    let e = ogg_err(flipped);
    assert!(matches!(e, SourceError::BadOggPage { page: 2, .. }), "{e}");
    assert_msg(&e, &["page 2", &format!("byte {third}"), "checksum"]);

    // Cut in the middle of the last page.
    let e = ogg_err(good[..good.len() - 10].to_vec());
    assert!(matches!(e, SourceError::BadOggPage { .. }), "{e}");
    assert_msg(&e, &["claims", "remain"]);

    // A missing page.
    let pages = find_pages(&good);
    let mut gap = good[..pages[3]].to_vec();
    gap.extend_from_slice(&good[pages[4]..]);
    let e = ogg_err(gap);
    assert!(matches!(e, SourceError::BadOggPage { .. }), "{e}");
    assert_msg(&e, &["sequence", "missing"]);

    // Garbage after a page.
    let mut junk = good[..pages[4]].to_vec();
    junk.extend_from_slice(b"junkjunkjunkjunkjunkjunkjunkjunk");
    let e = ogg_err(junk);
    assert_msg(&e, &["page 4", "capture pattern"]);

    // Ogg Vorbis.
    let mut w = OggWriter::new(1);
    let mut vorbis_id = b"\x01vorbis".to_vec();
    vorbis_id.extend_from_slice(&[0; 22]);
    w.single(2, 0, &vorbis_id);
    w.single(0, 0, b"\x03vorbis");
    let e = ogg_err(w.out);
    assert!(matches!(e, SourceError::UnsupportedCodec { .. }), "{e}");
    assert_msg(&e, &["Vorbis", "Opus"]);

    // A malformed OpusHead.
    let mut w = OggWriter::new(1);
    w.single(2, 0, b"OpusHead\x01\x02");
    let e = ogg_err(w.out);
    assert!(matches!(e, SourceError::BadOpusHead { .. }), "{e}");

    // Headers only.
    let mut w = OggWriter::new(1);
    w.single(2, 0, &opus_head(312));
    w.single(4, 0, &opus_tags());
    let e = ogg_err(w.out);
    assert!(matches!(e, SourceError::NoFrames { .. }), "{e}");

    // An empty audio packet is not Opus.
    let mut w = OggWriter::new(1);
    w.single(2, 0, &opus_head(312));
    w.single(0, 0, &opus_tags());
    w.page(4, 960, &[0], &[]);
    let e = ogg_err(w.out);
    assert!(
        matches!(e, SourceError::BadOpusPacket { packet: 0, .. }),
        "{e}"
    );
    assert_msg(&e, &["Opus packet 0", "empty"]);

    // The stream ends inside a packet.
    let mut w = OggWriter::new(1);
    w.single(2, 0, &opus_head(312));
    w.single(0, 0, &opus_tags());
    w.page(0, u64::MAX, &[255], &[0xfc; 255]);
    let e = ogg_err(w.out);
    assert_msg(&e, &["ends in the middle of a packet"]);
}

#[test]
fn ogg_granule_at_the_top_of_its_range_is_an_error() {
    // The 182-byte input the ogg fuzz target (relay/fuzz) checks this with: the
    // third audio page's packet would start at granule u64::MAX - 1, so its end
    // overflowed the sample count (a panic in debug builds, a wrapped time in
    // release ones).
    let mut w = OggWriter::new(1);
    w.single(2, 0, &opus_head(0));
    w.single(0, 0, &opus_tags());
    w.single(0, 960, &[0xfc]);
    w.single(0, u64::MAX - 1, &[0xfc]);
    w.single(4, u64::MAX - 1, &[0xfc]);
    let e = ogg_err(w.out);
    assert!(
        matches!(
            e,
            SourceError::BadOggPage {
                page: 4,
                offset: 153,
                ..
            }
        ),
        "{e}"
    );
    assert_msg(
        &e,
        &[
            "page 4",
            "packets would end past the largest granule position",
        ],
    );
}

fn find_pages(data: &[u8]) -> Vec<usize> {
    let mut pages = vec![];
    let mut at = 0;
    while at + 27 <= data.len() {
        pages.push(at);
        let n = data[at + 26] as usize;
        let Some(lacing) = data.get(at + 27..at + 27 + n) else {
            break; // truncated: the last page start is still reported
        };
        at += 27 + n + lacing.iter().map(|&v| v as usize).sum::<usize>();
    }
    pages
}

// ───────────────────────── packetize → record round trips ─────────────────────────

/// Every packet of `loops` passes over the file, tagged with its frame index.
fn packetize_file(v: &VideoFile, loops: u64) -> Vec<(usize, Packet)> {
    let mut p = TrackPacketizer::new(
        v.codec(),
        0x1234_5678,
        v.codec().default_payload_type(),
        1200,
    );
    let mut out = vec![];
    for l in 0..loops {
        for (i, f) in v.frames().iter().enumerate() {
            for pkt in p.packetize(f, l, v.loop_period()) {
                out.push((i, pkt));
            }
        }
    }
    out
}

fn record(
    codec: Codec,
    packets: impl IntoIterator<Item = Packet>,
) -> (VideoFile, u64, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.ivf");
    let mut rec = Recorder::create(&path, codec).unwrap();
    let mut reported = 0;
    for p in packets {
        for info in rec.push(&p).unwrap() {
            assert_eq!(info.index, reported);
            reported += 1;
        }
    }
    assert_eq!(rec.frames_written(), reported);
    // Packets behind a hole that never filled wait in the reorder buffer
    // (up to a second or 512 packets); finishing writes what they complete.
    let written = rec.finish().unwrap();
    assert!(written >= reported, "{written} < {reported}");
    let header_count = u32::from_le_bytes(read(&path)[24..28].try_into().unwrap());
    assert_eq!(u64::from(header_count), written);
    (VideoFile::open(&path).unwrap(), written, dir)
}

/// The recording holds exactly `source[indices]`, byte for byte, with the source's
/// relative timing.
fn assert_recorded(recording: &VideoFile, source: &VideoFile, indices: &[(u64, usize)]) {
    let name = source.path().display();
    assert_eq!(
        recording.frames().len(),
        indices.len(),
        "{name}: frame count"
    );
    assert_eq!(recording.codec(), source.codec());
    assert_eq!(
        (recording.width(), recording.height()),
        (source.width(), source.height())
    );
    assert_eq!(recording.timebase(), (1, 90_000));
    let (l0, i0) = indices[0];
    let t0 = source.loop_period() * l0 as u32 + source.frames()[i0].pts;
    for (j, (&(l, i), got)) in indices.iter().zip(recording.frames()).enumerate() {
        let want = &source.frames()[i];
        assert!(
            got.data == want.data,
            "{name}: recorded frame {j} differs from source frame {i}"
        );
        let t = source.loop_period() * l as u32 + want.pts;
        assert_eq!(got.pts, t - t0, "{name}: recorded frame {j} time");
        assert_eq!(got.keyframe, want.keyframe);
    }
}

#[test]
fn round_trip_is_byte_exact() {
    for path in [vp8_path(), vp9_path(), av1_path()] {
        let v = VideoFile::open(&path).unwrap();
        let packets = packetize_file(&v, 1);
        assert!(packets.iter().all(|(_, p)| p.payload.len() + 12 <= 1200));
        let (rec, written, _dir) = record(v.codec(), packets.into_iter().map(|(_, p)| p));
        assert_eq!(written as usize, v.frames().len());
        let all: Vec<(u64, usize)> = (0..v.frames().len()).map(|i| (0, i)).collect();
        assert_recorded(&rec, &v, &all);
    }
}

#[test]
fn recording_over_a_loop_boundary_keeps_time_running() {
    let v = VideoFile::open(av1_path()).unwrap();
    let (rec, _, _dir) = record(v.codec(), packetize_file(&v, 2).into_iter().map(|(_, p)| p));
    let all: Vec<(u64, usize)> = (0..2)
        .flat_map(|l| (0..v.frames().len()).map(move |i| (l, i)))
        .collect();
    assert_recorded(&rec, &v, &all);
}

#[test]
fn joining_mid_stream_starts_at_the_next_keyframe() {
    for path in [vp8_path(), vp9_path(), av1_path()] {
        let v = VideoFile::open(&path).unwrap();
        let packets = packetize_file(&v, 1);
        // Start one packet into frame 5: mid-frame if it has several packets, else
        // at the start of frame 6. Neither is a keyframe.
        let skip = packets.iter().position(|(i, _)| *i == 5).unwrap() + 1;
        let first_key = (6..v.frames().len())
            .find(|&i| v.frames()[i].keyframe)
            .unwrap();
        let (rec, _, _dir) = record(v.codec(), packets[skip..].iter().map(|(_, p)| p.clone()));
        let expected: Vec<(u64, usize)> = (first_key..v.frames().len()).map(|i| (0, i)).collect();
        assert_recorded(&rec, &v, &expected);
    }
}

#[test]
fn a_lost_packet_skips_to_the_next_keyframe() {
    for path in [vp8_path(), vp9_path(), av1_path()] {
        let v = VideoFile::open(&path).unwrap();
        let packets = packetize_file(&v, 1);
        let fps = if v.codec() == Codec::Av1 { 15 } else { 30 };
        // Lose the last packet of frame fps + 3 (a marker packet), then separately
        // a packet in the middle of a keyframe.
        let victim_frame = fps + 3;
        let lost = packets
            .iter()
            .rposition(|(i, _)| *i == victim_frame)
            .unwrap();
        // Records all packets but `lost`; expects frames `..gap_start` and
        // `gap_end..`.
        let record_without = |lost: usize, gap_start: usize, gap_end: usize| {
            let kept = packets
                .iter()
                .enumerate()
                .filter(|(n, _)| *n != lost)
                .map(|(_, (_, p))| p.clone());
            let (rec, _, _dir) = record(v.codec(), kept);
            let expected: Vec<(u64, usize)> = (0..gap_start)
                .chain(gap_end..v.frames().len())
                .map(|i| (0, i))
                .collect();
            assert_recorded(&rec, &v, &expected);
        };
        record_without(lost, victim_frame, 2 * fps);

        let key_frame = 2 * fps;
        let key_packets: Vec<usize> = (0..packets.len())
            .filter(|&n| packets[n].0 == key_frame)
            .collect();
        record_without(key_packets[key_packets.len() / 2], key_frame, 3 * fps);
    }
}

#[test]
fn a_late_repair_fills_its_hole_and_nothing_is_lost() {
    // A NACK repair arrives after the packets sent after it: here a packet
    // of a keyframe and one of a delta frame each come 7 packets late.
    let v = VideoFile::open(vp8_path()).unwrap();
    let mut packets: Vec<Packet> = packetize_file(&v, 1).into_iter().map(|(_, p)| p).collect();
    for at in [5, 300] {
        let late = packets.remove(at);
        packets.insert(at + 7, late);
    }
    let (rec, _, _dir) = record(v.codec(), packets);
    let all: Vec<(u64, usize)> = (0..v.frames().len()).map(|i| (0, i)).collect();
    assert_recorded(&rec, &v, &all);
}

#[test]
fn duplicates_late_packets_and_padding_do_not_disturb_recording() {
    let v = VideoFile::open(vp8_path()).unwrap();
    let packets: Vec<Packet> = packetize_file(&v, 1).into_iter().map(|(_, p)| p).collect();
    // A padding-only packet (empty payload) after some frames; it takes a sequence
    // number of its own, so every packet after one is renumbered.
    let mut padded = vec![];
    let mut shift = 0u16;
    for (n, mut p) in packets.into_iter().enumerate() {
        p.header.sequence_number = p.header.sequence_number.wrapping_add(shift);
        let marker = p.header.marker;
        let (seq, ts, ssrc) = (p.header.sequence_number, p.header.timestamp, p.header.ssrc);
        padded.push(p);
        if marker && n % 5 == 0 {
            let mut pad = Packet::default();
            pad.header.version = 2;
            pad.header.sequence_number = seq.wrapping_add(1);
            pad.header.timestamp = ts;
            pad.header.ssrc = ssrc;
            padded.push(pad);
            shift = shift.wrapping_add(1);
        }
    }
    assert!(shift > 10);
    // Then duplicates and late copies (retransmissions that arrive after the gap
    // they were meant to fill was already passed).
    let mut stream = vec![];
    for (n, p) in padded.iter().enumerate() {
        stream.push(p.clone());
        if n % 7 == 0 {
            stream.push(p.clone());
        }
        if n % 11 == 0 && n >= 3 {
            stream.push(padded[n - 3].clone());
        }
    }
    let (rec, _, _dir) = record(v.codec(), stream);
    assert_eq!(rec.frames().len(), v.frames().len());
    let all: Vec<(u64, usize)> = (0..v.frames().len()).map(|i| (0, i)).collect();
    assert_recorded(&rec, &v, &all);
}

#[test]
fn killed_recorder_leaves_a_readable_file() {
    let v = VideoFile::open(vp8_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.ivf");
    let mut rec = Recorder::create(&path, Codec::Vp8).unwrap();
    for (i, p) in packetize_file(&v, 1) {
        if i == 40 {
            break;
        }
        rec.push(&p).unwrap();
    }
    // Without finish (or drop) the header still says 0 frames; the data is there.
    let mid = VideoFile::open(&path).unwrap();
    assert_eq!(mid.frames().len(), 40);
    assert_eq!(
        u32::from_le_bytes(read(&path)[24..28].try_into().unwrap()),
        0
    );
    assert_eq!((mid.width(), mid.height()), (640, 360));
    drop(rec); // drop fills the count in as finish would
    assert_eq!(
        u32::from_le_bytes(read(&path)[24..28].try_into().unwrap()),
        40
    );
}

// ───────────────────────── schedule and loop continuity ─────────────────────────

#[test]
fn three_loops_of_vp8_are_exact_and_continuous() {
    let v = VideoFile::open(vp8_path()).unwrap();
    let schedule = Schedule::new(&v, None, true);
    assert_eq!(schedule.period(), Duration::from_secs(10));
    let n = v.frames().len();
    let entries: Vec<_> = schedule.take(3 * n).collect();
    assert!(
        entries.windows(2).all(|w| w[0].due <= w[1].due),
        "due never decreases"
    );
    for (k, e) in entries.iter().enumerate() {
        let (l, i) = ((k / n) as u64, k % n);
        assert_eq!((e.track, e.index, e.loop_index), (TrackKind::Video, i, l));
        assert_eq!(
            e.due,
            Duration::from_secs(10) * l as u32 + v.frames()[i].pts,
            "entry {k}"
        );
    }

    let mut p =
        TrackPacketizer::with_initial_state(Codec::Vp8, 1, 96, 1200, 65_000, u32::MAX - 500_000);
    let mut last: Option<Packet> = None;
    let mut frame_starts = vec![];
    for e in &entries {
        let packets = p.packetize(&v.frames()[e.index], e.loop_index, Duration::from_secs(10));
        frame_starts.push(packets[0].header.timestamp);
        for pkt in packets {
            if let Some(prev) = &last {
                assert_eq!(
                    pkt.header.sequence_number,
                    prev.header.sequence_number.wrapping_add(1)
                );
            }
            last = Some(pkt);
        }
    }
    // One frame interval (3000 ticks) between every pair of frames, including across
    // the loop boundaries and the 32-bit wrap.
    for (k, w) in frame_starts.windows(2).enumerate() {
        assert_eq!(w[1].wrapping_sub(w[0]), 3000, "frame {k} -> {}", k + 1);
    }
}

#[test]
fn schedule_merges_audio_and_video() {
    let v = VideoFile::open(vp8_path()).unwrap();
    let a = AudioFile::open(ogg_path()).unwrap();

    let once: Vec<_> = Schedule::new(&v, Some(&a), false).collect();
    assert_eq!(once.len(), 300 + 501, "a single pass plays everything");
    assert!(once.windows(2).all(|w| w[0].due <= w[1].due));
    assert_eq!(once.last().unwrap().track, TrackKind::Audio);
    assert_eq!(once.last().unwrap().due, Duration::from_secs(10));

    let looping = Schedule::new(&v, Some(&a), true);
    assert_eq!(looping.period(), Duration::from_secs(10));
    let entries: Vec<_> = looping.take(3 * 800).collect();
    assert!(entries.windows(2).all(|w| w[0].due <= w[1].due));
    for l in 0..3u64 {
        let pass: Vec<_> = entries.iter().filter(|e| e.loop_index == l).collect();
        // The trailing end-trimmed packet at 10 s would collide with the next pass.
        assert_eq!(
            pass.iter().filter(|e| e.track == TrackKind::Audio).count(),
            500
        );
        assert_eq!(
            pass.iter().filter(|e| e.track == TrackKind::Video).count(),
            300
        );
        for e in pass {
            let pts = match e.track {
                TrackKind::Video => v.frames()[e.index].pts,
                TrackKind::Audio => a.packets()[e.index].pts,
            };
            assert_eq!(e.due, Duration::from_secs(10) * l as u32 + pts);
        }
    }
    // Audio RTP timestamps step by 960 across the loop boundary too.
    let mut p = TrackPacketizer::with_initial_state(Codec::Opus, 2, 111, 1200, 0, 0);
    let ts: Vec<u32> = entries
        .iter()
        .filter(|e| e.track == TrackKind::Audio)
        .map(|e| {
            p.packetize(&a.packets()[e.index], e.loop_index, looping_period())[0]
                .header
                .timestamp
        })
        .collect();
    assert!(ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 960));
}

fn looping_period() -> Duration {
    Duration::from_secs(10)
}

#[test]
fn shorter_audio_waits_for_the_next_pass() {
    let v = VideoFile::open(vp8_path()).unwrap();
    let packets: Vec<Bytes> = (0..50).map(|i| opus_packet(40, i)).collect(); // 1 s
    let a = AudioFile::from_bytes("audio.ogg", Bytes::from(ogg_file(&packets, 4000))).unwrap();
    let s = Schedule::new(&v, Some(&a), true);
    assert_eq!(s.period(), Duration::from_secs(10));
    let second_pass_audio: Vec<_> = s
        .take(2 * 350)
        .filter(|e| e.track == TrackKind::Audio && e.loop_index == 1)
        .collect();
    assert_eq!(second_pass_audio.len(), 50);
    assert_eq!(second_pass_audio[0].due, Duration::from_secs(10));
}

// ───────────────────────── properties ─────────────────────────

/// An IVF file with the given timestamps (1/1000 timebase) and tiny VP8-like frames.
fn synthetic_ivf(timestamps: &[u64]) -> Vec<u8> {
    let mut out = b"DKIF".to_vec();
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&32u16.to_le_bytes());
    out.extend_from_slice(b"VP80");
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&1000u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(timestamps.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for (i, ts) in timestamps.iter().enumerate() {
        let frame = [0x01, i as u8, 0, 0, 0];
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&ts.to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn schedule_dues_are_exact_and_monotonic(
        steps in prop::collection::vec(0u64..200, 1..40),
        audio_packets in 0usize..30,
        loops in 1u64..4,
    ) {
        let ts: Vec<u64> = steps.iter().scan(0, |t, s| { *t += s; Some(*t) }).collect();
        let v = VideoFile::from_bytes("p.ivf", Bytes::from(synthetic_ivf(&ts))).unwrap();
        let a = (audio_packets > 0).then(|| {
            let packets: Vec<Bytes> = (0..audio_packets).map(|i| opus_packet(10, i as u8)).collect();
            AudioFile::from_bytes("p.ogg", Bytes::from(ogg_file(&packets, 100))).unwrap()
        });
        let s = Schedule::new(&v, a.as_ref(), true);
        let period = s.period();
        prop_assert!(period >= v.loop_period());
        let mut last = Duration::ZERO;
        for e in s.take_while(|e| e.loop_index < loops) {
            prop_assert!(e.due >= last);
            last = e.due;
            let pts = match e.track {
                TrackKind::Video => v.frames()[e.index].pts,
                TrackKind::Audio => a.as_ref().unwrap().packets()[e.index].pts,
            };
            prop_assert!(pts < period);
            prop_assert_eq!(e.due, period * e.loop_index as u32 + pts);
        }
    }

    #[test]
    fn corrupted_ivf_never_panics(
        cut in prop::option::of(0usize..24_000),
        flips in prop::collection::vec((0usize..24_000, any::<u8>()), 0..8),
        // (frame, byte within its first 8): where the OBU headers and sizes are.
        header_flips in prop::collection::vec((0usize..60, 0usize..8, any::<u8>()), 0..4),
    ) {
        let mut data = read(&av1_path());
        let offsets = frame_offsets(&data);
        for (frame, at, byte) in header_flips {
            if let Some(b) = data.get_mut(offsets[frame] + 12 + at) { *b = byte; }
        }
        for (at, byte) in flips {
            if let Some(b) = data.get_mut(at) { *b = byte; }
        }
        if let Some(cut) = cut {
            data.truncate(cut);
        }
        if let Ok(v) = VideoFile::from_bytes("fuzz.ivf", Bytes::from(data)) {
            // Whatever parses must packetize without panicking too.
            let mut p = TrackPacketizer::new(v.codec(), 1, 41, 1200);
            for f in v.frames() {
                p.packetize(f, 0, v.loop_period());
            }
        }
    }

    #[test]
    fn corrupted_ogg_never_panics(
        cut in prop::option::of(0usize..6_000),
        flips in prop::collection::vec((0usize..6_000, any::<u8>()), 0..8),
        fix_crc in any::<bool>(),
    ) {
        let packets: Vec<Bytes> = (0..30).map(|i| opus_packet(150, i)).collect();
        let mut data = ogg_file(&packets, 400);
        for (at, byte) in flips {
            if let Some(b) = data.get_mut(at) { *b = byte; }
        }
        if let Some(cut) = cut {
            data.truncate(cut);
        }
        if fix_crc {
            // Let corruption past the checksum so the deeper checks are exercised.
            for at in find_pages(&data) {
                let n = data[at + 26] as usize;
                if at + 27 + n > data.len() { break; }
                let body: usize = data[at + 27..at + 27 + n].iter().map(|&v| v as usize).sum();
                let end = at + 27 + n + body;
                if end > data.len() { break; }
                data[at + 22..at + 26].copy_from_slice(&[0; 4]);
                let crc = ogg_crc(&data[at..end]);
                data[at + 22..at + 26].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let _ = AudioFile::from_bytes("fuzz.ogg", Bytes::from(data));
    }

    #[test]
    fn recorder_survives_arbitrary_packets(
        codec in prop::sample::select(vec![Codec::Vp8, Codec::Vp9, Codec::Av1]),
        packets in prop::collection::vec(
            (
                any::<u16>(),
                0u32..4,
                any::<bool>(),
                // Short payloads often, to hit the header-parsing edge cases.
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..4),
                    prop::collection::vec(any::<u8>(), 0..40),
                ],
            ),
            0..60,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::create(dir.path().join("fuzz.ivf"), codec).unwrap();
        let mut seq = 0u16;
        for (jump, ts, marker, payload) in packets {
            // Mostly contiguous, sometimes jumping.
            seq = if jump % 4 == 0 { jump } else { seq.wrapping_add(1) };
            let mut p = Packet::default();
            p.header.version = 2;
            p.header.sequence_number = seq;
            p.header.timestamp = ts * 3000;
            p.header.marker = marker;
            p.payload = Bytes::from(payload);
            rec.push(&p).unwrap();
        }
        rec.finish().unwrap();
    }
}

#[test]
fn frames_are_plain_values() {
    // Frame is what the source shares with the relay; make sure it stays cheap to clone.
    let f = Frame {
        data: Bytes::from_static(b"abc"),
        pts: ms(5),
        keyframe: true,
    };
    let g = f.clone();
    assert_eq!(f, g);
}
