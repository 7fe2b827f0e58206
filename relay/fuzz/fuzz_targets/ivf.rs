//! Any byte string given to `VideoFile::from_bytes` yields a video file or a
//! `SourceError` whose message is one line naming the file, never a panic.
//! Whatever parses must keep the promises the accessors document, and every
//! frame must survive the per-frame bitstream parsing (keyframe detection,
//! picture size, the AV1 check), rtc's payloader and the schedule: the source
//! runs all of these on a file that has passed validation, so they must be
//! total over what validation lets through.

#![no_main]

use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relay::source::{Schedule, TrackKind, TrackPacketizer, VideoFile};

const PATH: &str = "fuzz.ivf";
const RTP_HEADER_LEN: usize = 12;

fuzz_target!(|data: &[u8]| {
    let video = match VideoFile::from_bytes(PATH, Bytes::copy_from_slice(data)) {
        Ok(v) => v,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("fuzz.ivf: ") && !msg.contains('\n'),
                "{msg:?}"
            );
            return;
        }
    };
    let codec = video.codec();
    assert!(codec.is_video());
    let (num, den) = video.timebase();
    assert!(num != 0 && den != 0);
    let _ = (video.width(), video.height(), video.frame_interval());
    let frames = video.frames();
    assert!(!frames.is_empty(), "frames() is documented never empty");
    assert_eq!(frames[0].pts, Duration::ZERO);
    assert!(frames.windows(2).all(|w| w[0].pts <= w[1].pts));
    let period = video.loop_period();
    assert!(!period.is_zero(), "loop_period() is documented never zero");

    let mut keyframes = 0;
    for f in frames {
        assert_eq!(f.keyframe, codec.is_keyframe(&f.data));
        keyframes += usize::from(f.keyframe);
        if codec.keyframe_size(&f.data).is_some() {
            assert!(f.keyframe, "a size from a frame that is not a keyframe");
        }
        assert!(
            codec.check_frame(&f.data).is_ok(),
            "validated frame fails check_frame"
        );
    }
    assert_eq!(video.keyframe_count(), keyframes);
    assert_eq!(video.keyframe_interval().is_some(), keyframes > 0);

    // 0 is raised to the packetizer's minimum, the tightest a payloader gets.
    for mtu in [0, 1200] {
        let mut p =
            TrackPacketizer::with_initial_state(codec, 1, codec.default_payload_type(), mtu, 0, 0);
        for f in frames {
            for packet in p.packetize(f, 0, period) {
                assert!(
                    packet.payload.len() + RTP_HEADER_LEN <= p.mtu(),
                    "{codec} packet of {} bytes exceeds the {}-byte MTU",
                    packet.payload.len() + RTP_HEADER_LEN,
                    p.mtu()
                );
            }
        }
    }

    // Without looping every frame is due once, at its own time.
    let once: Vec<_> = Schedule::new(&video, None, false).collect();
    assert_eq!(once.len(), frames.len());
    for (i, s) in once.iter().enumerate() {
        assert_eq!(
            (s.track, s.index, s.due),
            (TrackKind::Video, i, frames[i].pts)
        );
    }
    // Looping: bounded, as a looping schedule never ends by design.
    let mut last = Duration::ZERO;
    for s in Schedule::new(&video, None, true).take(2 * frames.len() + 2) {
        assert!(s.due >= last);
        last = s.due;
        assert!(s.index < frames.len());
    }
});
