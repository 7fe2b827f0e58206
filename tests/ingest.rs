//! A live sender feeds a tree over plain RTP: ffmpeg sends the sample
//! (`-c copy -f rtp`) to `source --rtp`, and a relay below records it.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use common::*;
use relay::media::annex_b_nal_units;
use relay::source::VideoFile;

/// A relay recording to `file` (leaf.ivf, leaf.h264) in the scratch
/// directory, once connected; ready before the sender starts, it gets the
/// stream from its first frame.
fn recorder(s: &Scratch, url: &str, tree: &str, file: &str) -> (Proc, std::path::PathBuf) {
    let rec = s.path(file);
    let p = relay(
        s,
        "leaf",
        url,
        tree,
        &["--k", "0", "--record", rec.to_str().expect("UTF-8 path")],
        "connected to parent",
    );
    (p, rec)
}

#[test]
fn ffmpeg_feeds_a_tree_frame_for_frame_with_its_timestamps() {
    if ffmpeg_or_skip("ffmpeg_feeds_a_tree").is_none() {
        return;
    }
    let s = Scratch::new("ingest-ffmpeg");
    let (_sig, url) = signal_server(&s, &[]);
    let (src, port, tree) = rtp_source(&s, &url, "vp8");
    let (_leaf, rec) = recorder(&s, &url, &tree, "leaf.ivf");
    let mut ff = ffmpeg_sends(&s, &sample("testsrc-640x360-vp8.ivf"), port);
    let file = VideoFile::open(sample("testsrc-640x360-vp8.ivf")).expect("sample parses");
    let n = file.frames().len();
    let recorded = until("every frame recorded", Duration::from_secs(30), || {
        let f = ivf_frames_timed(&rec);
        (f.len() >= n).then_some(f)
    });
    assert!(ff.wait(Duration::from_secs(10)).success(), "ffmpeg failed");
    // Byte for byte, in order, from the first frame on.
    let frames: Vec<Vec<u8>> = recorded.iter().map(|(_, f)| f.clone()).collect();
    let start = assert_run_of_file(&frames[..n], file.frames(), "RTP in");
    assert_eq!(start, 0, "from the file's first frame");
    // The sender's timestamps, kept: the recorder writes them in 90 kHz.
    for (i, pair) in recorded[..n].windows(2).enumerate() {
        let want = (file.frames()[i + 1].pts - file.frames()[i].pts).as_secs_f64() * 90_000.0;
        let got = pair[1].0 - pair[0].0;
        assert_eq!(
            got,
            want.round() as u64,
            "timestamps of frames {i} and {}",
            i + 1
        );
    }
    let log = src.log_text();
    assert!(log.contains("RTP in on 127.0.0.1:"), "{log}");
    eprintln!("RTP in from ffmpeg: {n} of {n} frames recorded byte for byte, timestamps kept");
}

/// Between ffmpeg and the source, a proxy that swaps neighbours, drops a
/// packet now and then and slips in a datagram that is not RTP.
#[test]
fn reordered_lost_and_foreign_datagrams_in_the_input_are_survived() {
    if ffmpeg_or_skip("reordered_lost_and_foreign").is_none() {
        return;
    }
    let s = Scratch::new("ingest-rough");
    let (_sig, url) = signal_server(&s, &[]);
    let (src, port, tree) = rtp_source(&s, &url, "vp8");
    let (_leaf, rec) = recorder(&s, &url, &tree, "leaf.ivf");
    let proxy = UdpSocket::bind("127.0.0.1:0").expect("proxy socket");
    proxy
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let proxy_addr = proxy.local_addr().expect("proxy address");
    let mut ff = ffmpeg_sends(&s, &sample("testsrc-640x360-vp8.ivf"), proxy_addr);
    let (mut passed, mut swapped, mut dropped) = (0u32, 0u32, 0u32);
    let mut held: Option<Vec<u8>> = None;
    let mut buf = [0u8; 2048];
    // Until ffmpeg has sent it all (then reads time out).
    while let Ok(n) = proxy.recv(&mut buf) {
        let packet = buf[..n].to_vec();
        passed += 1;
        if passed == 50 {
            proxy.send_to(b"not rtp at all", port).expect("send");
        }
        if passed % 150 == 0 {
            dropped += 1;
            continue;
        }
        match held.take() {
            Some(h) => {
                proxy.send_to(&packet, port).expect("send");
                proxy.send_to(&h, port).expect("send");
                swapped += 1;
            }
            None if passed % 7 == 0 => held = Some(packet),
            None => {
                proxy.send_to(&packet, port).expect("send");
            }
        }
    }
    assert!(ff.wait(Duration::from_secs(10)).success(), "ffmpeg failed");
    let file = VideoFile::open(sample("testsrc-640x360-vp8.ivf")).expect("sample parses");
    // The drops fall in the middle of the file (packets 150 and 300 of
    // about 340), so the recording ends with the file's last frame; a hole
    // waits a second for its repair before it counts as lost.
    let last = file.frames().last().expect("frames").data.to_vec();
    let frames = until(
        "the file's last frame recorded",
        Duration::from_secs(10),
        || {
            let f = ivf_frames(&rec);
            (f.last() == Some(&last)).then_some(f)
        },
    );
    let runs = runs_of(&frames, file.frames(), "RTP in through the proxy");
    eprintln!(
        "RTP in through a rough proxy: {passed} packets, {swapped} pairs swapped, {dropped} \
         dropped, one datagram not RTP; recorded {} of {} frames in runs {runs:?}",
        frames.len(),
        file.frames().len()
    );
    // Swaps cost nothing; each drop costs at most the rest of its group,
    // after which the recording goes on from a keyframe.
    assert!(runs.len() as u32 <= dropped + 1, "{runs:?}");
    assert_eq!(runs[0].from, 0, "{runs:?}");
    for r in &runs[1..] {
        assert!(file.frames()[r.from].keyframe, "{runs:?}");
    }
    let group = 30;
    assert!(
        frames.len() + (dropped as usize) * group >= file.frames().len(),
        "{} frames recorded with {dropped} drops",
        frames.len()
    );
    let log = src.log_text();
    assert!(log.contains("is not RTP"), "{log}");
    assert_eq!(log.matches("is not RTP").count(), 1, "said once");
}

#[test]
fn h264_from_ffmpeg_reaches_a_recording_two_hops_down_nal_for_nal() {
    if ffmpeg_or_skip("h264_from_ffmpeg").is_none() {
        return;
    }
    let s = Scratch::new("ingest-h264");
    let published = encode_h264(&s);
    let (_sig, url) = signal_server(&s, &["--k1", "1"]);
    let (_src, port, tree) = rtp_source(&s, &url, "h264");
    // source -> mid -> leaf: the leaf gets the track as a relay mirrors it.
    let mid = relay(&s, "mid", &url, &tree, &["--k", "1"], "connected to parent");
    let (leaf, rec) = recorder(&s, &url, &tree, "leaf.h264");
    let mut ff = ffmpeg_sends_h264(&s, &published, port, None);
    let source = std::fs::read(&published).expect("read the published stream");
    let want: Vec<&[u8]> = annex_b_nal_units(&source).collect();
    let last = *want.last().expect("NAL units");
    let recorded = recorded_through(&rec, last, Duration::from_secs(30));
    assert!(ff.wait(Duration::from_secs(10)).success(), "ffmpeg failed");
    let got: Vec<&[u8]> = annex_b_nal_units(&recorded).collect();
    assert_eq!(got.len(), want.len(), "NAL units recorded");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w,
            "NAL unit {i} differs ({} vs {} bytes)",
            g.len(),
            w.len()
        );
    }
    let (codec, width, height, frames) = decode_with_ffmpeg(&rec);
    assert_eq!((codec.as_str(), width, height), ("h264", 640, 360));
    assert_eq!(frames, 300, "pictures decoded from the recording");
    // The relay in the middle offered its child the format it was given.
    let fmtp = "packetization-mode=1;profile-level-id=42e01f";
    for p in [&mid, &leaf] {
        let log = p.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("upstream track"))
            .unwrap_or_else(|| panic!("no upstream track logged:\n{log}"));
        assert!(line.contains("video/H264") && line.contains(fmtp), "{line}");
    }
    eprintln!(
        "H.264 from ffmpeg two hops down: {} of {} NAL units byte for byte, {frames} pictures \
         decoded by ffprobe",
        got.len(),
        want.len()
    );
}

/// ffmpeg announces its stream in an SDP file (`-sdp_file`) and the source
/// takes the port, the codec and the fmtp line from it: the tree offers
/// the publisher's H.264 profile and packetization mode. The source starts
/// after ffmpeg, as it would by hand, so the recording starts at a
/// keyframe and holds from there on every NAL unit.
#[test]
fn an_sdp_file_from_ffmpeg_sets_up_the_input_with_the_senders_fmtp() {
    if ffmpeg_or_skip("an_sdp_file_from_ffmpeg").is_none() {
        return;
    }
    let s = Scratch::new("ingest-sdp");
    let published = encode_h264(&s);
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|u| u.local_addr())
        .expect("a free port");
    let sdp = s.path("ffmpeg.sdp");
    let mut ff = ffmpeg_sends_h264(&s, &published, port, Some(&sdp));
    let text = until("ffmpeg's SDP file", Duration::from_secs(10), || {
        std::fs::read_to_string(&sdp)
            .ok()
            .filter(|t| t.contains("m=video"))
    });
    let (_sig, url) = signal_server(&s, &[]);
    let src = Proc::spawn(
        &s,
        "source",
        &[
            "source",
            "--sdp",
            sdp.to_str().expect("UTF-8"),
            "--signal",
            &url,
        ],
        false,
    );
    let line = src.line("rtp in: ", Duration::from_secs(20));
    assert!(line.contains(&port.to_string()), "{line}");
    assert!(line.contains("profile-level-id=42C01E"), "{line}\n{text}");
    let tree = tree_id(&src);
    let (leaf, rec) = recorder(&s, &url, &tree, "leaf.h264");
    assert!(ff.wait(Duration::from_secs(20)).success(), "ffmpeg failed");
    let source = std::fs::read(&published).expect("read the published stream");
    let want: Vec<&[u8]> = annex_b_nal_units(&source).collect();
    let last = *want.last().expect("NAL units");
    let recorded = recorded_through(&rec, last, Duration::from_secs(10));
    let got: Vec<&[u8]> = annex_b_nal_units(&recorded).collect();
    // From a keyframe (its SPS) to the end, nothing missing or repeated.
    assert_eq!(
        got[0].first().map(|b| b & 0x1f),
        Some(7),
        "starts with an SPS"
    );
    let from = want.len() - got.len();
    assert!(got[..] == want[from..], "a run of the published NAL units");
    assert!(got.len() >= 60, "only {} NAL units recorded", got.len());
    let log = leaf.log_text();
    let upstream = log
        .lines()
        .find(|l| l.contains("upstream track"))
        .unwrap_or_else(|| panic!("no upstream track logged:\n{log}"));
    assert!(upstream.contains("video/H264"), "{upstream}");
    eprintln!(
        "RTP in from ffmpeg's SDP file: {line}; the leaf recorded NAL units {from}..{} of {} \
         byte for byte",
        want.len(),
        want.len()
    );
}

#[test]
fn rtp_flag_mistakes_are_one_line_errors() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        err
    };
    let err = run(&["source", "--rtp", "127.0.0.1:0"]);
    assert!(err.contains("--codec"), "{err}");
    let err = run(&["source", "--rtp", "127.0.0.1:0", "--codec", "mp3"]);
    assert!(err.contains("unknown codec mp3"), "{err}");
    let err = run(&[
        "source",
        "--file",
        "x.ivf",
        "--rtp",
        "127.0.0.1:0",
        "--codec",
        "vp8",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    // A port taken: said before anything else starts.
    let taken = UdpSocket::bind("127.0.0.1:0").expect("socket");
    let addr = taken.local_addr().expect("address").to_string();
    let err = run(&["source", "--rtp", &addr, "--codec", "vp8"]);
    assert!(
        err.contains(&format!("cannot listen for RTP on {addr}")),
        "{err}"
    );
    let err = run(&["source", "--sdp", "/nonexistent/in.sdp"]);
    assert!(err.contains("cannot read /nonexistent/in.sdp"), "{err}");
    let err = run(&["source", "--sdp", "x.sdp", "--rtp", "127.0.0.1:0"]);
    assert!(err.contains("cannot be used with"), "{err}");
    let s = Scratch::new("ingest-bad-sdp");
    let bad = s.path("bad.sdp");
    std::fs::write(
        &bad,
        "v=0\nm=video 5004 RTP/AVP 96\na=rtpmap:96 VP8/90000\n",
    )
    .expect("write");
    let err = run(&["source", "--sdp", bad.to_str().expect("UTF-8")]);
    assert!(err.contains("has no connection address (c=)"), "{err}");
}
