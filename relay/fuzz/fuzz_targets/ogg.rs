//! Any byte string given to `AudioFile::from_bytes` yields an audio file or a
//! `SourceError` whose message is one line naming the file, never a panic.
//! Whatever parses must keep the promises the accessors document, and every
//! packet must survive rtc's Opus payloader and the schedule.
//!
//! Each page carries a CRC, so almost every mutation would stop at the
//! checksum; each input is therefore also tried with the checksums of its
//! well-framed pages recomputed, which lets mutations reach the lacing,
//! packet and granule logic behind it.

#![no_main]

use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relay::media::Codec;
use relay::source::{AudioFile, Schedule, TrackKind, TrackPacketizer, VideoFile};

const PATH: &str = "fuzz.ogg";

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = with_valid_checksums(data) {
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    let audio = match AudioFile::from_bytes(PATH, Bytes::copy_from_slice(data)) {
        Ok(a) => a,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("fuzz.ogg: ") && !msg.contains('\n'),
                "{msg:?}"
            );
            return;
        }
    };
    assert_eq!(audio.codec(), Codec::Opus);
    assert!(audio.channels() != 0);
    let _ = (audio.pre_skip(), audio.input_sample_rate());
    let packets = audio.packets();
    assert!(!packets.is_empty(), "packets() is documented never empty");
    assert_eq!(packets[0].pts, Duration::ZERO);
    assert!(packets.windows(2).all(|w| w[0].pts <= w[1].pts));
    assert!(packets.iter().all(|p| p.keyframe && !p.data.is_empty()));
    let period = audio.loop_period();
    assert!(!period.is_zero(), "loop_period() is documented never zero");

    let mut p = TrackPacketizer::with_initial_state(Codec::Opus, 1, 111, 1200, 0, 0);
    for packet in packets {
        assert!(!p.packetize(packet, 0, period).is_empty());
    }

    let video = one_frame_video();
    let once: Vec<_> = Schedule::new(&video, Some(&audio), false).collect();
    assert_eq!(once.len(), 1 + packets.len());
    let audio_entries = once.iter().filter(|s| s.track == TrackKind::Audio);
    for (i, s) in audio_entries.enumerate() {
        assert_eq!((s.index, s.due), (i, packets[i].pts));
    }
    let mut last = Duration::ZERO;
    for s in Schedule::new(&video, Some(&audio), true).take(2 * packets.len() + 4) {
        assert!(s.due >= last);
        last = s.due;
    }
}

/// A VP8 file of one 1 ms frame: the schedule needs a video track to merge with.
fn one_frame_video() -> VideoFile {
    let mut ivf = b"DKIF\0\0\x20\0VP80".to_vec();
    ivf.extend_from_slice(&[0; 4]); // width, height: unknown
    ivf.extend_from_slice(&1000u32.to_le_bytes());
    ivf.extend_from_slice(&1u32.to_le_bytes());
    ivf.extend_from_slice(&1u32.to_le_bytes());
    ivf.extend_from_slice(&[0; 4]);
    ivf.extend_from_slice(&1u32.to_le_bytes());
    ivf.extend_from_slice(&0u64.to_le_bytes());
    ivf.push(0x01); // an inter frame: its content does not matter here
    VideoFile::from_bytes("fixed.ivf", Bytes::from(ivf)).expect("fixed IVF parses")
}

/// The input with every complete page's checksum recomputed, walking pages
/// from the start until one is cut off or lacks the capture pattern; `None`
/// when nothing changed.
fn with_valid_checksums(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = data.to_vec();
    let mut at = 0;
    let mut changed = false;
    while out.get(at..at + 4) == Some(b"OggS") {
        let Some(&segments) = out.get(at + 26) else {
            break;
        };
        let lacing_end = at + 27 + usize::from(segments);
        let Some(lacing) = out.get(at + 27..lacing_end) else {
            break;
        };
        let end = lacing_end + lacing.iter().map(|&v| usize::from(v)).sum::<usize>();
        if end > out.len() {
            break;
        }
        out[at + 22..at + 26].fill(0);
        let crc = ogg_crc(&out[at..end]).to_le_bytes();
        changed |= data[at + 22..at + 26] != crc;
        out[at + 22..at + 26].copy_from_slice(&crc);
        at = end;
    }
    changed.then_some(out)
}

/// RFC 3533's CRC-32: polynomial 0x04c11db7, MSB first, zero start, no final xor.
fn ogg_crc(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |mut crc, &b| {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = (crc << 1) ^ if crc >> 31 == 1 { 0x04c1_1db7 } else { 0 };
        }
        crc
    })
}
