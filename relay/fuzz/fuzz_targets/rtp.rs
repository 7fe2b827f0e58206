//! The RTP path a relay runs on every packet from its parent, over packets
//! of any shape: keyframe detection on the payload, the splice that keeps
//! one numbering across parents (`Splice`), the group-of-pictures cache and
//! its replay (`GopCache`, `Replayed`), and the recorder (`Recorder::push`).
//! None of it may panic on what a parent sends, and each keeps the bounds it
//! documents.
//!
//! The input is a codec byte, then packets: a flags byte (marker, a new
//! upstream, a new SSRC, time passing), a sequence number step, a timestamp
//! step, a length and that many payload bytes.

#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relay::forward::starts_keyframe;
use relay::gop::{AfterReplay, GopCache, Replayed, GOP_MAX_BYTES, GOP_MAX_PACKETS};
use relay::media::ALL_CODECS;
use relay::record::Recorder;
use relay::splice::{Mapped, Splice};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let codec = ALL_CODECS[usize::from(pick) % ALL_CODECS.len()];
    let path = std::env::temp_dir().join(format!("fuzz-rtp-{}.rec", std::process::id()));
    let mut recorder = Recorder::create(&path, codec).ok();
    assert_eq!(recorder.is_some(), codec.is_video(), "{codec}");
    let mut splice = Splice::default();
    let mut gop = GopCache::default();
    let mut replayed: Option<Replayed> = None;
    let mut now = Instant::now();
    let (mut seq, mut ts, mut ssrc) = (0u16, 0u32, 1u32);
    let mut first_ssrc = None;
    let mut packets = 0u64;
    while let [flags, seq_step, ts_step, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let payload = Bytes::copy_from_slice(&tail[..len]);
        rest = &tail[len..];
        packets += 1;
        seq = seq.wrapping_add(u16::from(*seq_step).wrapping_sub(8));
        ts = ts.wrapping_add(u32::from(*ts_step) * 1500);
        if flags & 0x02 != 0 {
            splice.restart();
        }
        if flags & 0x04 != 0 {
            ssrc = ssrc.wrapping_add(1);
        }
        if flags & 0x08 != 0 {
            now += Duration::from_millis(u64::from(flags >> 4) * 100);
        }
        let pkt = Packet {
            header: Header {
                version: 2,
                marker: flags & 0x01 != 0,
                payload_type: 96,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                ..Default::default()
            },
            payload,
        };
        let _ = starts_keyframe(codec, &pkt.payload);
        let _ = (
            codec.is_keyframe(&pkt.payload),
            codec.keyframe_size(&pkt.payload),
        );
        let _ = codec.check_frame(&pkt.payload);
        let out = match splice.map(&pkt, codec, now) {
            Mapped::Send(out) => out.into_owned(),
            Mapped::SentBefore | Mapped::AwaitingKeyframe => continue,
        };
        // The children see one stream: the first upstream's SSRC throughout.
        assert_eq!(*first_ssrc.get_or_insert(out.header.ssrc), out.header.ssrc);
        splice.sent(&out);
        gop.push(&out, codec, now);
        if let Some(r) = &replayed {
            if let AfterReplay::Repair(_) = r.judge(&out) {
                assert!(!r.expired(now) || flags & 0x08 != 0);
            }
            if r.expired(now) {
                replayed = None;
            }
        }
        if let Some(mut group) = gop.snapshot(now) {
            assert!(group.len() <= GOP_MAX_PACKETS);
            assert!(group.iter().map(|p| p.payload.len()).sum::<usize>() <= GOP_MAX_BYTES);
            let numbers: Vec<u16> = group.iter().map(|p| p.header.sequence_number).collect();
            if replayed.is_none() && flags & 0x80 != 0 {
                replayed = Replayed::retime(&mut group, codec.clock_rate(), now);
                assert!(replayed.is_some());
                let after: Vec<u16> = group.iter().map(|p| p.header.sequence_number).collect();
                assert_eq!(numbers, after, "a replay keeps the sequence numbers");
            }
        }
        if let Some(rec) = recorder.as_mut() {
            let written = rec.push_at(&out, now).expect("writes to a temporary file");
            assert!(rec.frames_written() <= packets);
            // Frames come out in order, each once.
            for pair in written.windows(2) {
                assert_eq!(pair[0].index + 1, pair[1].index);
            }
            if flags & 0x40 != 0 {
                rec.poll(now + Duration::from_secs(2)).expect("poll");
            }
        }
    }
    if let Some(rec) = recorder {
        let frames = rec.finish().expect("finish");
        assert!(frames <= packets);
    }
    let _ = std::fs::remove_file(&path);
});
