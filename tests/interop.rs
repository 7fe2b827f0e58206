//! Independent WebRTC stacks as ordinary members of a tree, speaking
//! signalling/PROTOCOL.md: the start of the interop matrix.
//!
//! werift (pure TypeScript, npm) joins as a leaf below a relay through
//! `tests/interop/leaf.mjs`, which writes every RTP packet it received; the
//! test reassembles them with the recorder and compares the frames with the
//! file the source plays. The drivers' packages are installed by `npm ci
//! --prefix tests/interop` (`.ci/run` does it); without them the tests say
//! they were skipped, unless PEER_TREE_REQUIRE_BROWSER is set (CI).
//!
//! Known, not asserted yet: werift's data channel never opens below one of
//! our relays. After DTLS neither side sends the SCTP INIT: rtc 0.21 sends it
//! only as the DTLS client, and werift takes its SCTP role from its ICE role
//! (an ICE-controlled answerer waits as the SCTP server) while it answers
//! `setup:active`, which makes our relay the DTLS server. RFC 8841 §9.3 has
//! both ends initiate.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use relay::media::Codec;
use relay::record::Recorder;
use relay::source::VideoFile;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::Unmarshal;

/// The driver directory, if node and its packages are there.
fn interop_or_skip(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if node && dir.join("node_modules/werift").is_dir() {
        return Some(dir);
    }
    let what =
        format!("{test}: needs node and the drivers' packages (npm ci --prefix tests/interop)");
    assert!(
        std::env::var_os("PEER_TREE_REQUIRE_BROWSER").is_none(),
        "{what}; PEER_TREE_REQUIRE_BROWSER is set, so this is a failure"
    );
    eprintln!("skipped: {what}");
    None
}

/// The packets `leaf.mjs --rtp-out` wrote, each behind its 2-byte length.
fn packets_written(path: &std::path::Path) -> Vec<Packet> {
    let bytes = std::fs::read(path).expect("the driver's RTP file");
    let mut packets = Vec::new();
    let mut rest = &bytes[..];
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        assert!(tail.len() >= len, "RTP file cut inside a packet");
        let mut raw = &tail[..len];
        packets.push(Packet::unmarshal(&mut raw).expect("an RTP packet"));
        rest = &tail[len..];
    }
    packets
}

#[test]
fn werift_leaf_below_a_relay_gets_every_frame_byte_for_byte() {
    let Some(dir) = interop_or_skip("werift leaf") else {
        return;
    };
    let s = Scratch::new("interop-werift");
    let (_sig, url) = signal_server(&s, &[]);
    let video = sample("testsrc-640x360-vp8.ivf");
    let (_src, tree) = looping_source(&s, &url, &video);
    let _relay = relay(
        &s,
        "relay",
        &url,
        &tree,
        &["--k", "1"],
        "connected to parent",
    );
    let rtp = s.path("werift.rtp");
    let out = Command::new("node")
        .arg(dir.join("leaf.mjs"))
        .args([&url, &tree, "--seconds", "8", "--rtp-out"])
        .arg(&rtp)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "leaf.mjs failed:\n{stdout}\n{stderr}");
    let summary: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no summary from leaf.mjs:\n{stdout}\n{stderr}"));
    // Reassembled as a recording relay would, from the first keyframe on.
    let packets = packets_written(&rtp);
    let ivf = s.path("werift.ivf");
    let mut rec = Recorder::create(&ivf, Codec::Vp8).expect("recorder");
    for p in &packets {
        rec.push(p).expect("record");
    }
    rec.finish().expect("finish");
    let frames = ivf_frames(&ivf);
    let file = VideoFile::open(&video).expect("sample parses");
    let start = assert_run_of_file(&frames, file.frames(), "werift leaf");
    assert!(
        frames.len() >= 150,
        "{} frames in 8 s ({} packets)",
        frames.len(),
        packets.len()
    );
    eprintln!(
        "werift leaf below a relay: {} packets, {} frames byte for byte from file frame {start}, \
         first packet {} ms after it started; data channel open: {}, messages {}",
        packets.len(),
        frames.len(),
        summary["first_packet_ms"],
        summary["channel_open_ms"],
        summary["messages"]
    );
}
