//! WHIP in (RFC 9725): `source --whip` takes a publisher's session.
//!
//! The publishers are independent stacks: werift and node-datachannel
//! (tests/interop/whip_publish.mjs) forwarding what ffmpeg sends them (VP8,
//! VP9, H.264, Opus) or, for AV1, libdatachannel's own packetizer, and
//! GStreamer's webrtcbin (tests/interop/gst_whip.py) playing the sample; a
//! recording relay below the source gets their frames byte for byte and
//! their data messages in order.
//! Bad requests get the RFC's status codes before any publisher is there, a
//! second publisher gets 409 while the first sends, and after the first one
//! DELETEs its session (or dies without) the tree stays, its member keeps
//! its parent, and the next publisher resumes it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use relay::media::annex_b_nal_units;
use relay::source::VideoFile;

const TOKEN: &str = "s3cret";

/// A source serving WHIP with the token, and its endpoint's URL.
fn whip_source(s: &Scratch, url: &str) -> (Proc, String) {
    let src = Proc::spawn(
        s,
        "source",
        &[
            "source",
            "--whip",
            "127.0.0.1:0",
            "--whip-token",
            TOKEN,
            "--signal",
            url,
        ],
        false,
    );
    let whip = endpoint(&src, "whip:");
    (src, whip)
}

/// A tree waiting for its WHIP publisher, and what the test needs around
/// it. Fields drop in reverse order: the processes first, the scratch
/// directory last.
struct WhipTree {
    s: Scratch,
    /// tests/interop, the drivers.
    dir: std::path::PathBuf,
    _sig: Proc,
    url: String,
    src: Proc,
    /// The source's WHIP endpoint.
    whip: String,
}

/// A signalling server and a source serving WHIP (scratch `slug`), or None
/// (the test skipped) without the node drivers or what `needs` checks.
fn whip_tree(test: &str, slug: &str, needs: fn(&str) -> Option<()>) -> Option<WhipTree> {
    let dir = drivers_and(test, needs)?;
    let s = Scratch::new(slug);
    let (sig, url) = signal_server(&s, &[]);
    let (src, whip) = whip_source(&s, &url);
    Some(WhipTree {
        s,
        dir,
        _sig: sig,
        url,
        src,
        whip,
    })
}

/// A werift publisher POSTing to `url`; its stdout lines say what happened.
fn publisher(s: &Scratch, dir: &Path, name: &str, url: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("whip_publish.mjs"))
        .args([url, "--token", TOKEN])
        .args(extra);
    Proc::spawn_command(s, name, cmd, false)
}

/// The UDP port a publisher forwards video RTP from.
fn rtp_port(p: &Proc) -> std::net::SocketAddr {
    port_line(p, "rtp-port:")
}

/// The loopback UDP port a driver printed after `what`.
fn port_line(p: &Proc, what: &str) -> std::net::SocketAddr {
    let line = p.line(what, Duration::from_secs(20));
    let port: u16 = line[what.len()..].trim().parse().expect("a port");
    ([127, 0, 0, 1], port).into()
}

/// `seconds` of ffmpeg's testsrc2 at 320x240, 30 frames/s, with a keyframe
/// every second, encoded by `encoder` (ffmpeg's options for it) into the
/// IVF file `name`.
fn encode_testsrc(s: &Scratch, name: &str, seconds: u32, encoder: &[&str]) -> std::path::PathBuf {
    let out = s.path(name);
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .args(["testsrc2=size=320x240:rate=30", "-t", &seconds.to_string()])
        .args(encoder)
        .args(["-g", "30"])
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(
        status.success(),
        "ffmpeg could not encode {name} with {encoder:?}"
    );
    out
}

/// A second VP8 stream, as a publisher that comes back sends new pictures.
fn encode_vp8(s: &Scratch) -> std::path::PathBuf {
    let vp8 = ["-c:v", "libvpx", "-b:v", "300k", "-deadline", "realtime"];
    encode_testsrc(s, "other.ivf", 3, &vp8)
}

/// Asserts `member` stayed with the parent it first connected to: while
/// the tree waited for a publisher, the source's padding kept it from
/// taking the silence for a dead parent.
fn kept_its_parent(member: &Proc) {
    let log = member.log_text();
    assert_eq!(
        (
            log.matches("connected to parent").count(),
            log.contains("another parent")
        ),
        (1, false),
        "{}: it left its parent while the tree waited:\n{log}",
        member.name
    );
}

/// ffmpeg sends `other` to the next publisher's `rtp` port, and the member
/// recording `rec` (`n` frames before it) gets every frame of it, from the
/// first, byte for byte; returns how many.
fn next_stream_recorded(
    s: &Scratch,
    rec: &Path,
    n: usize,
    other: &Path,
    rtp: std::net::SocketAddr,
    what: &str,
) -> usize {
    let file = VideoFile::open(other).expect("the new stream parses");
    let m = file.frames().len();
    let mut ff = ffmpeg_sends(s, other, rtp);
    let last = &file.frames()[m - 1].data;
    let frames = until(
        "the next stream's last frame",
        Duration::from_secs(30),
        || {
            let f = ivf_frames(rec);
            (f.len() > n && f.last().map(|l| &l[..]) == Some(&last[..])).then_some(f)
        },
    );
    assert!(ff.wait(Duration::from_secs(10)).success(), "ffmpeg failed");
    let from = assert_run_of_file(&frames[n..], file.frames(), what);
    assert_eq!(
        (from, frames.len() - n),
        (0, m),
        "{what}: every frame of the next stream"
    );
    m
}

/// The summary a publisher prints last.
fn summary(p: &Proc, within: Duration) -> serde_json::Value {
    serde_json::from_str(&p.line("{", within)).expect("summary JSON")
}

#[test]
fn a_whip_publisher_feeds_a_tree_that_outlives_it() {
    let Some(WhipTree {
        s,
        dir,
        _sig,
        url,
        src,
        whip,
    }) = whip_tree("WHIP publisher", "whip", ffmpeg_or_skip)
    else {
        return;
    };

    // Refused, each with its status, before any publisher is there.
    let sdp = [("Content-Type", "application/sdp")];
    let bearer = format!("Bearer {TOKEN}");
    let auth = |ct: &'static str| [("Content-Type", ct), ("Authorization", bearer.as_str())];
    let h265 = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n\
        a=rtpmap:96 H265/90000\r\n";
    let refused = [
        ("no token", http(&whip, "POST", &sdp, h265)),
        (
            "a wrong token",
            http(
                &whip,
                "POST",
                &[
                    ("Content-Type", "application/sdp"),
                    ("Authorization", "Bearer nope"),
                ],
                h265,
            ),
        ),
        (
            "another content type",
            http(&whip, "POST", &auth("text/plain"), h265),
        ),
        (
            "a body that is not SDP",
            http(&whip, "POST", &auth("application/sdp"), b"{\"sdp\":1}"),
        ),
        (
            "no codec the tree carries",
            http(&whip, "POST", &auth("application/sdp"), h265),
        ),
        (
            "an offer of 100 KB",
            http(&whip, "POST", &auth("application/sdp"), &[b'a'; 100_000]),
        ),
        (
            "DELETE of an unknown session",
            http(
                &format!("{whip}/0123"),
                "DELETE",
                &auth("application/sdp"),
                b"",
            ),
        ),
    ];
    let statuses: Vec<(&str, u16)> = refused.to_vec();
    assert_eq!(
        statuses,
        vec![
            ("no token", 401),
            ("a wrong token", 401),
            ("another content type", 415),
            ("a body that is not SDP", 400),
            ("no codec the tree carries", 422),
            ("an offer of 100 KB", 413),
            ("DELETE of an unknown session", 404),
        ]
    );

    // The first publisher: the tree is created when it arrives.
    let a = publisher(
        &s,
        &dir,
        "publisher-a",
        &whip,
        &[
            "--seconds",
            "18",
            "--messages",
            "100",
            "--messages-at",
            "6000",
            "--prefix",
            "a",
        ],
    );
    let a_rtp = rtp_port(&a);
    assert_eq!(a.line("status:", Duration::from_secs(20)), "status: 201");
    let location = endpoint(&a, "location:");
    // A trickled candidate (RFC 8840 fragment): 204. Then one for a session
    // that does not exist: 404.
    let fragment = b"a=mid:0\r\na=candidate:9 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let trickle = [
        ("Content-Type", "application/trickle-ice-sdpfrag"),
        ("Authorization", bearer.as_str()),
    ];
    assert_eq!(http(&location, "PATCH", &trickle, fragment), 204);
    assert_eq!(
        http(&format!("{whip}/0123"), "PATCH", &trickle, fragment),
        404
    );
    // With the session's entity tag in If-Match (RFC 9725 §4.3.1): 204;
    // with another one: 412.
    let etag = endpoint(&a, "etag:");
    let current = [trickle[0], trickle[1], ("If-Match", etag.as_str())];
    assert_eq!(http(&location, "PATCH", &current, fragment), 204);
    let other = [trickle[0], trickle[1], ("If-Match", "\"5ca1ab1e\"")];
    assert_eq!(http(&location, "PATCH", &other, fragment), 412);
    let tree = tree_id(&src);
    let Member {
        proc: leaf,
        rec,
        data,
    } = recording_member(&s, &url, &tree);
    a.line("channel-open", Duration::from_secs(20));
    let started = std::time::Instant::now();
    let video = sample("testsrc-640x360-vp8.ivf");
    let mut ff = ffmpeg_sends(&s, &video, a_rtp);

    // A second publisher while the first sends: 409.
    let b = publisher(&s, &dir, "publisher-b", &whip, &["--seconds", "1"]);
    assert_eq!(b.line("status:", Duration::from_secs(20)), "status: 409");

    let file = VideoFile::open(sample("testsrc-640x360-vp8.ivf")).expect("sample parses");
    let n = file.frames().len();
    let first_frame = until("a first frame recorded", Duration::from_secs(20), || {
        (!ivf_frames(&rec).is_empty()).then(|| started.elapsed())
    });
    let frames = until("every frame recorded", Duration::from_secs(30), || {
        let f = ivf_frames(&rec);
        (f.len() >= n).then_some(f)
    });
    assert!(ff.wait(Duration::from_secs(10)).success(), "ffmpeg failed");
    let start = assert_run_of_file(&frames[..n], file.frames(), "WHIP in");
    assert_eq!(start, 0, "from the file's first frame");
    let want: Vec<String> = (0..100).map(|i| format!("a-{i:04}")).collect();
    let got = messages_at(&data, "a-", want.len());
    assert_eq!(got, want, "the publisher's messages, complete and in order");

    // DELETE (at the publisher's end): the source and its member stay.
    let a_summary = summary(&a, Duration::from_secs(30));
    assert_eq!(a_summary["delete_status"], 200, "{a_summary}");
    until("the session ended", Duration::from_secs(10), || {
        log_has(&src, "ended its session")
    });

    // The next publisher resumes the same tree: the member keeps recording.
    // Another stream: the same file again would be taken for a repeat of
    // what the tree already sent (splice.rs).
    let other = encode_vp8(&s);
    let c = publisher(&s, &dir, "publisher-c", &whip, &["--seconds", "15"]);
    let c_rtp = rtp_port(&c);
    assert_eq!(c.line("status:", Duration::from_secs(20)), "status: 201");
    c.line("ready", Duration::from_secs(20));
    let m = next_stream_recorded(&s, &rec, n, &other, c_rtp, "WHIP in, resumed");
    kept_its_parent(&leaf);
    eprintln!(
        "WHIP in (werift publisher, ffmpeg behind it): {n} of {n} frames byte for byte, first \
         {} ms after ffmpeg started; 100 of 100 messages in order; a second publisher 409; after \
         DELETE the next publisher resumed the tree: its frames 0..{m} of {m} byte for byte at \
         the same member",
        first_frame.as_millis(),
        m = m
    );
}

#[test]
fn gstreamer_webrtcbin_publishes_over_whip() {
    let Some(WhipTree {
        s,
        dir,
        _sig,
        url,
        src,
        whip,
    }) = whip_tree("GStreamer WHIP publisher", "whip-gst", gstreamer_or_skip)
    else {
        return;
    };
    let video = sample("testsrc-640x360-vp8.ivf");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(dir.join("gst_whip.py"))
        .arg(&whip)
        .arg(&video)
        .args(["--token", TOKEN, "--host", "127.0.0.1", "--prefix", "gst"])
        .args(["--messages", "100", "--messages-at", "5000"]);
    let started = std::time::Instant::now();
    let gst = Proc::spawn_command(&s, "gstreamer", cmd, false);
    assert_eq!(gst.line("status:", Duration::from_secs(20)), "status: 201");
    let tree = tree_id(&src);
    let Member {
        proc: _leaf,
        rec,
        data,
    } = recording_member(&s, &url, &tree);
    let summary = summary(&gst, Duration::from_secs(40));
    assert_eq!(summary["delete_status"], 200, "{summary}");
    // The member joined while the file played: from the group it joined
    // in, through the file's last frame.
    let file = VideoFile::open(&video).expect("sample parses");
    let frames = ivf_frames(&rec);
    let start = assert_run_of_file(&frames, file.frames(), "GStreamer over WHIP");
    assert_eq!(
        start + frames.len(),
        file.frames().len(),
        "through the file's last frame"
    );
    let want: Vec<String> = (0..100).map(|i| format!("gst-{i:04}")).collect();
    assert_eq!(
        data_lines(&data, "gst-"),
        want,
        "GStreamer's messages, complete and in order"
    );
    eprintln!(
        "WHIP in (GStreamer webrtcbin): frames {start}..{} of {} byte for byte at a member that \
         joined while it played, 100 of 100 messages in order, connected {} ms after it started \
         ({} ms in all), DELETE 200",
        file.frames().len(),
        file.frames().len(),
        summary["connected_ms"],
        started.elapsed().as_millis()
    );
}

/// node-datachannel (libdatachannel, the stack of OBS's WHIP output) as the
/// publisher, with ffmpeg behind it.
#[test]
fn libdatachannel_publishes_over_whip() {
    let Some(WhipTree {
        s,
        dir,
        _sig,
        url,
        src,
        whip,
    }) = whip_tree("libdatachannel WHIP publisher", "whip-ndc", ffmpeg_or_skip)
    else {
        return;
    };
    let p = publisher(
        &s,
        &dir,
        "libdatachannel",
        &whip,
        &[
            "--stack",
            "ndc",
            "--seconds",
            "16",
            "--messages",
            "100",
            "--messages-at",
            "4000",
            "--prefix",
            "ndc",
        ],
    );
    let rtp = rtp_port(&p);
    assert_eq!(p.line("status:", Duration::from_secs(20)), "status: 201");
    let tree = tree_id(&src);
    let Member {
        proc: _leaf,
        rec,
        data,
    } = recording_member(&s, &url, &tree);
    let video = sample("testsrc-640x360-vp8.ivf");
    // libdatachannel drops what is sent before its track opens.
    p.line("ready", Duration::from_secs(20));
    let started = std::time::Instant::now();
    let mut ff = ffmpeg_sends(&s, &video, rtp);
    let file = VideoFile::open(&video).expect("sample parses");
    let n = file.frames().len();
    let first = until("a first frame", Duration::from_secs(20), || {
        (!ivf_frames(&rec).is_empty()).then(|| started.elapsed())
    });
    assert!(ff.wait(Duration::from_secs(20)).success(), "ffmpeg failed");
    let last = &file.frames()[n - 1].data;
    let frames = recorded_to(&rec, last, Duration::from_secs(20));
    let start = assert_run_of_file(&frames, file.frames(), "libdatachannel over WHIP");
    assert_eq!((start, frames.len()), (0, n), "every frame of the file");
    let want: Vec<String> = (0..100).map(|i| format!("ndc-{i:04}")).collect();
    let got = messages_at(&data, "ndc-", want.len());
    assert_eq!(
        got, want,
        "libdatachannel's messages, complete and in order"
    );
    let summary = summary(&p, Duration::from_secs(30));
    assert_eq!(summary["delete_status"], 200, "{summary}");
    eprintln!(
        "WHIP in (node-datachannel, ffmpeg behind it): frames {start}..{n} of {n} byte for byte, \
         the first {} ms after ffmpeg started; 100 of 100 messages in order; connected {} ms \
         after it started; DELETE 200",
        first.as_millis(),
        summary["connected_ms"]
    );
}

/// An ICE restart in the middle of the stream (RFC 9725 §4.3.3): the
/// publisher PATCHes new credentials, gets 200 with the source's new ones,
/// and its media goes on through the restarted session.
#[test]
fn an_ice_restart_keeps_the_publisher_sending() {
    let Some(WhipTree {
        s,
        dir,
        _sig,
        url,
        src,
        whip,
    }) = whip_tree("WHIP ICE restart", "whip-restart", ffmpeg_or_skip)
    else {
        return;
    };
    let p = publisher(
        &s,
        &dir,
        "publisher",
        &whip,
        &["--seconds", "18", "--restart-at", "8000"],
    );
    let rtp = rtp_port(&p);
    assert_eq!(p.line("status:", Duration::from_secs(20)), "status: 201");
    let location = endpoint(&p, "location:");
    let first_tag = endpoint(&p, "etag:");
    let tree = tree_id(&src);
    let rec = s.path("leaf.ivf");
    let _leaf = relay(
        &s,
        "leaf",
        &url,
        &tree,
        &["--k", "0", "--record", rec.to_str().expect("UTF-8 path")],
        "connected to parent",
    );
    let video = sample("testsrc-640x360-vp8.ivf");
    let mut ff = ffmpeg_sends(&s, &video, rtp);
    assert_eq!(p.line("restart:", Duration::from_secs(20)), "restart: 200");
    let restarted = ivf_frames(&rec).len();
    // The restart gave the session a new entity tag: a PATCH written for
    // the ICE session before it is refused (RFC 9725 §4.3.1).
    let bearer = format!("Bearer {TOKEN}");
    let stale = [
        ("Content-Type", "application/trickle-ice-sdpfrag"),
        ("Authorization", bearer.as_str()),
        ("If-Match", first_tag.as_str()),
    ];
    let fragment = b"a=mid:0\r\na=candidate:9 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    assert_eq!(http(&location, "PATCH", &stale, fragment), 412);
    assert!(ff.wait(Duration::from_secs(20)).success(), "ffmpeg failed");
    let file = VideoFile::open(&video).expect("sample parses");
    let last = &file.frames()[file.frames().len() - 1].data;
    let frames = recorded_to(&rec, last, Duration::from_secs(20));
    let runs = runs_of(&frames, file.frames(), "across the ICE restart");
    let summary = summary(&p, Duration::from_secs(30));
    assert_eq!(summary["delete_status"], 200, "{summary}");
    eprintln!(
        "WHIP ICE restart (werift): PATCH 200 with {restarted} frames recorded; after it, the \
         recording went on to the file's last frame: {} frames in {} run(s) ({:?})",
        frames.len(),
        runs.len(),
        runs.iter().map(|r| (r.from, r.len)).collect::<Vec<_>>()
    );
}

/// H.264 over WHIP, as OBS sends it: node-datachannel offering H.264
/// (packetization mode 1, constrained baseline), with x264's stream from
/// ffmpeg behind it; a member records it as Annex B.
#[test]
fn h264_over_whip_reaches_a_member_nal_for_nal() {
    let Some(WhipTree {
        s,
        dir,
        _sig,
        url,
        src,
        whip,
    }) = whip_tree("H.264 over WHIP", "whip-h264", ffmpeg_or_skip)
    else {
        return;
    };
    let published = encode_h264(&s);
    let p = publisher(
        &s,
        &dir,
        "libdatachannel",
        &whip,
        &["--stack", "ndc", "--codec", "h264", "--seconds", "16"],
    );
    let rtp = rtp_port(&p);
    assert_eq!(p.line("status:", Duration::from_secs(20)), "status: 201");
    let tree = tree_id(&src);
    let rec = s.path("leaf.h264");
    let _leaf = relay(
        &s,
        "leaf",
        &url,
        &tree,
        &["--k", "0", "--record", rec.to_str().expect("UTF-8 path")],
        "connected to parent",
    );
    p.line("ready", Duration::from_secs(20));
    let started = std::time::Instant::now();
    let mut ff = ffmpeg_sends_h264(&s, &published, rtp, None);
    let source = std::fs::read(&published).expect("read the published stream");
    let want: Vec<&[u8]> = annex_b_nal_units(&source).collect();
    let first = until("a first NAL unit", Duration::from_secs(20), || {
        std::fs::metadata(&rec)
            .is_ok_and(|m| m.len() > 0)
            .then(|| started.elapsed())
    });
    let last = *want.last().expect("NAL units");
    let recorded = recorded_through(&rec, last, Duration::from_secs(30));
    assert!(ff.wait(Duration::from_secs(10)).success(), "ffmpeg failed");
    let got: Vec<&[u8]> = annex_b_nal_units(&recorded).collect();
    let from = want.len() - got.len();
    assert!(
        got[..] == want[from..],
        "the recording is not the published stream's tail"
    );
    assert_eq!(from, 0, "every NAL unit of the stream");
    let (codec, width, height, frames) = decode_with_ffmpeg(&rec);
    assert_eq!((codec.as_str(), width, height), ("h264", 640, 360));
    let log = src.log_text();
    assert!(log.contains("offered video/H264"), "{log}");
    eprintln!(
        "H.264 over WHIP (node-datachannel): NAL units {from}..{} of {} byte for byte at a \
         member, the first {} ms after ffmpeg started; {frames} pictures decoded by ffprobe",
        want.len(),
        want.len(),
        first.as_millis()
    );
}

/// VP9 and Opus over WHIP: werift publishing both, ffmpeg's RTP of the
/// VP9 sample and of the Ogg Opus sample behind it. A recording member
/// gets the VP9 frames and a werift member the Opus packets, each byte for
/// byte from the first.
#[test]
fn vp9_and_opus_over_whip_reach_members_byte_for_byte() {
    let Some(WhipTree {
        s,
        dir,
        _sig,
        url,
        src,
        whip,
    }) = whip_tree("VP9 and Opus over WHIP", "whip-vp9-opus", ffmpeg_or_skip)
    else {
        return;
    };
    let p = publisher(
        &s,
        &dir,
        "werift",
        &whip,
        &[
            "--codec",
            "vp9",
            "--audio",
            "--seconds",
            "16",
            "--messages",
            "100",
            "--messages-at",
            "3000",
            "--prefix",
            "vp9",
        ],
    );
    let rtp = rtp_port(&p);
    let audio_rtp = port_line(&p, "audio-rtp-port:");
    assert_eq!(p.line("status:", Duration::from_secs(20)), "status: 201");
    let tree = tree_id(&src);
    let Member {
        proc: _member,
        rec,
        data,
    } = recording_member(&s, &url, &tree);
    let heard = s.path("audio.rtp");
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("leaf.mjs"))
        .args([
            &url,
            &tree,
            "--kind",
            "audio",
            "--seconds",
            "14",
            "--rtp-out",
        ])
        .arg(&heard);
    let listener = Proc::spawn_command(&s, "werift-listener", cmd, false);
    listener.line("channel-open", Duration::from_secs(20));
    p.line("ready", Duration::from_secs(20));

    let vp9 = [
        "-c:v",
        "libvpx-vp9",
        "-b:v",
        "300k",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
    ];
    let video = encode_testsrc(&s, "vp9.ivf", 10, &vp9);
    let sound = sample("sine-440hz.ogg");
    let started = std::time::Instant::now();
    let mut ff_video = ffmpeg_sends(&s, &video, rtp);
    let mut ff_audio = ffmpeg_sends(&s, &sound, audio_rtp);
    let file = VideoFile::open(&video).expect("sample parses");
    let n = file.frames().len();
    let first = until("a first frame", Duration::from_secs(20), || {
        (!ivf_frames(&rec).is_empty()).then(|| started.elapsed())
    });
    assert!(
        ff_video.wait(Duration::from_secs(20)).success(),
        "ffmpeg (VP9) failed"
    );
    assert!(
        ff_audio.wait(Duration::from_secs(20)).success(),
        "ffmpeg (Opus) failed"
    );
    let frames = recorded_to(&rec, &file.frames()[n - 1].data, Duration::from_secs(20));
    let start = assert_run_of_file(&frames, file.frames(), "VP9 over WHIP");
    assert_eq!((start, frames.len()), (0, n), "every VP9 frame of the file");
    let want: Vec<String> = (0..100).map(|i| format!("vp9-{i:04}")).collect();
    assert_eq!(
        messages_at(&data, "vp9-", 100),
        want,
        "messages complete and in order"
    );

    let summary_line = listener.line("{", Duration::from_secs(30));
    let heard_summary: serde_json::Value = serde_json::from_str(&summary_line).expect("JSON");
    let ogg = relay::source::AudioFile::open(&sound).expect("sample parses");
    let packets = packets_written(&heard);
    let (from, got) = opus_run_of_file(&packets, ogg.packets(), "Opus over WHIP");
    assert_eq!(
        (from, got),
        (0, ogg.packets().len()),
        "every Opus packet of the file, in order"
    );
    let summary = summary(&p, Duration::from_secs(30));
    assert_eq!(summary["delete_status"], 200, "{summary}");
    eprintln!(
        "WHIP in (werift, VP9 + Opus, ffmpeg behind it): VP9 frames 0..{n} of {n} byte for byte \
         at a recording member, the first {} ms after ffmpeg started; Opus packets 0..{got} of \
         {got} byte for byte at a werift member (its first packet {} ms after it started); 100 \
         of 100 messages in order; connected {} ms after the publisher started",
        first.as_millis(),
        heard_summary["first_packet_ms"],
        summary["connected_ms"]
    );
}

/// AV1 over WHIP as OBS sends it: node-datachannel packetizing with
/// libdatachannel's own AV1 packetizer (one temporal unit per frame), from
/// an IVF file libaom encoded; a member records it, frame for frame.
#[test]
fn av1_over_whip_from_libdatachannels_packetizer() {
    let Some(WhipTree {
        s,
        dir,
        _sig,
        url,
        src,
        whip,
    }) = whip_tree("AV1 over WHIP", "whip-av1", ffmpeg_or_skip)
    else {
        return;
    };
    let av1 = [
        "-c:v",
        "libaom-av1",
        "-usage",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "300k",
    ];
    let video = encode_testsrc(&s, "av1.ivf", 10, &av1);
    let file = VideoFile::open(&video).expect("libaom's file parses");
    let n = file.frames().len();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("whip_publish.mjs"))
        .args([
            &whip, "--token", TOKEN, "--stack", "ndc", "--codec", "av1", "--ivf",
        ])
        .arg(&video)
        .args([
            "--seconds",
            "16",
            "--messages",
            "100",
            "--messages-at",
            "3000",
        ])
        .args(["--prefix", "av1"]);
    let p = Proc::spawn_command(&s, "libdatachannel", cmd, false);
    assert_eq!(p.line("status:", Duration::from_secs(20)), "status: 201");
    let tree = tree_id(&src);
    let Member {
        proc: _member,
        rec,
        data,
    } = recording_member(&s, &url, &tree);
    // The member is there before the publisher's track opens (`ready`),
    // which starts the file.
    p.line("ready", Duration::from_secs(20));
    let started = std::time::Instant::now();
    let first = until("a first frame", Duration::from_secs(20), || {
        (!ivf_frames(&rec).is_empty()).then(|| started.elapsed())
    });
    let frames = recorded_to(&rec, &file.frames()[n - 1].data, Duration::from_secs(20));
    let start = assert_run_of_file(&frames, file.frames(), "AV1 over WHIP");
    assert_eq!((start, frames.len()), (0, n), "every AV1 frame of the file");
    let (codec, width, height, decoded) = decode_with_ffmpeg(&rec);
    assert_eq!((codec.as_str(), width, height), ("av1", 320, 240));
    let want: Vec<String> = (0..100).map(|i| format!("av1-{i:04}")).collect();
    assert_eq!(
        messages_at(&data, "av1-", 100),
        want,
        "messages complete and in order"
    );
    let summary = summary(&p, Duration::from_secs(30));
    assert_eq!(summary["frames_out"], n, "{summary}");
    assert_eq!(summary["delete_status"], 200, "{summary}");
    eprintln!(
        "WHIP in (node-datachannel, its AV1 packetizer): frames 0..{n} of {n} byte for byte at a \
         recording member, the first {} ms after the publisher's track opened, {decoded} pictures \
         decoded by ffprobe; 100 of 100 messages in order; connected {} ms after it started",
        first.as_millis(),
        summary["connected_ms"]
    );
}

/// A publisher killed without DELETE: its session ends when its connection
/// fails, the next publisher (409 until then, as a reconnecting OBS would
/// see) resumes the tree, and the member never leaves its parent.
#[test]
fn a_publisher_that_dies_is_followed_by_the_next() {
    let Some(WhipTree {
        s,
        dir,
        _sig,
        url,
        src,
        whip,
    }) = whip_tree("WHIP publisher that dies", "whip-dies", ffmpeg_or_skip)
    else {
        return;
    };
    let mut a = publisher(&s, &dir, "publisher-a", &whip, &["--seconds", "60"]);
    let a_rtp = rtp_port(&a);
    assert_eq!(a.line("status:", Duration::from_secs(20)), "status: 201");
    let tree = tree_id(&src);
    let Member {
        proc: member,
        rec,
        data: _,
    } = recording_member(&s, &url, &tree);
    a.line("ready", Duration::from_secs(20));
    let mut ff = ffmpeg_sends(&s, &sample("testsrc-640x360-vp8.ivf"), a_rtp);
    until(
        "60 frames of the first publisher",
        Duration::from_secs(20),
        || (ivf_frames(&rec).len() >= 60).then_some(()),
    );
    a.kill();
    ff.kill();
    let died = std::time::Instant::now();
    let other = encode_vp8(&s);
    let mut tries = 0;
    let (b, b_rtp) = loop {
        tries += 1;
        let b = publisher(
            &s,
            &dir,
            &format!("publisher-b{tries}"),
            &whip,
            &["--seconds", "15"],
        );
        let b_rtp = rtp_port(&b);
        match b.line("status:", Duration::from_secs(20)).as_str() {
            "status: 201" => break (b, b_rtp),
            "status: 409" => {}
            other => panic!("publisher b: {other}"),
        }
        assert!(
            died.elapsed() < Duration::from_secs(20),
            "the dead publisher's session still holds the tree after {tries} tries"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let replaced = died.elapsed();
    b.line("ready", Duration::from_secs(20));
    let n = ivf_frames(&rec).len();
    let m = next_stream_recorded(&s, &rec, n, &other, b_rtp, "after the death");
    kept_its_parent(&member);
    eprintln!(
        "WHIP publisher killed without DELETE: the next publisher got 201 {} ms after (try \
         {tries}; 409 before), its frames 0..{m} of {m} byte for byte at the same member, which \
         kept its parent throughout",
        replaced.as_millis()
    );
}
