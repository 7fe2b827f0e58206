//! WHEP out: `join --whep` and `source --whep` serve players, apart from
//! the tree's children.
//!
//! The players are independent stacks, werift (tests/interop/whep_play.mjs)
//! and GStreamer's webrtcbin (tests/interop/gst_whep.py): below a relay
//! each gets the tree's frames byte for byte and the source's messages in
//! order. Its slot is its own (a second player gets
//! 503 while `--whep-max 1` is taken, and 201 once the first DELETEs),
//! `/api/trees/{id}` shows the relay's WHEP URL, and bad requests get their
//! status codes.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use relay::source::VideoFile;

/// A werift player of `url`; its stdout lines say what happened.
fn player(s: &Scratch, dir: &Path, name: &str, url: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("whep_play.mjs")).arg(url).args(extra);
    Proc::spawn_command(s, name, cmd, false)
}

#[test]
fn a_whep_player_below_a_relay_gets_every_frame_and_message() {
    let Some(dir) = node_drivers_or_skip("WHEP player") else {
        return;
    };
    let s = Scratch::new("whep");
    let (_sig, url) = signal_server(&s, &[]);
    let video = sample("testsrc-640x360-vp8.ivf");
    let (mut src, tree) = looping_source(&s, &url, &video);
    let (relay, whep) = whep_relay(&s, &url, &tree, &["--whep-max", "1"]);

    // The server's view of the tree names the relay's WHEP URL.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let peer = relay_peer(&relay);
    let listed = until(
        "the WHEP URL in /api/trees",
        Duration::from_secs(10),
        || {
            let snap = rt.block_on(tree_snapshot(&url, &tree));
            snap["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["peer"] == peer.as_str())?["stats"]["whep"]
                .as_str()
                .map(str::to_owned)
        },
    );
    assert_eq!(listed, whep);

    // Refused, each with its status, now that there is something to play.
    let sdp = [("Content-Type", "application/sdp")];
    let h265 = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n\
        a=rtpmap:96 H265/90000\r\na=mid:0\r\na=ice-ufrag:abcd\r\n\
        a=ice-pwd:0123456789012345678901\r\na=setup:actpass\r\n\
        a=fingerprint:sha-256 00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:\
        00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00\r\n";
    let refused = vec![
        (
            "another content type",
            http(&whep, "POST", &[("Content-Type", "text/plain")], h265),
        ),
        (
            "a body that is not SDP",
            http(&whep, "POST", &sdp, b"hello"),
        ),
        (
            "an offer in a codec the tree does not carry",
            http(&whep, "POST", &sdp, h265),
        ),
        (
            "DELETE of an unknown session",
            http(&format!("{whep}/0123"), "DELETE", &[], b""),
        ),
    ];
    assert_eq!(
        refused,
        vec![
            ("another content type", 415),
            ("a body that is not SDP", 400),
            ("an offer in a codec the tree does not carry", 422),
            ("DELETE of an unknown session", 404),
        ]
    );

    let rtp = s.path("player.rtp");
    let messages = s.path("player.messages");
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("whep_play.mjs"))
        .arg(&whep)
        .args(["--seconds", "8", "--rtp-out"])
        .arg(&rtp)
        .arg("--messages")
        .arg(&messages);
    let p = Proc::spawn_command(&s, "player", cmd, false);
    assert_eq!(p.line("status:", Duration::from_secs(20)), "status: 201");
    p.line("channel-open", Duration::from_secs(20));
    let sent = send_numbered(src.stdin.as_mut().expect("source stdin"), 200);

    // The one slot is taken: a second player gets 503.
    let second = player(&s, &dir, "second", &whep, &["--seconds", "1"]);
    assert_eq!(
        second.line("status:", Duration::from_secs(20)),
        "status: 503"
    );

    let summary: serde_json::Value =
        serde_json::from_str(&p.line("{", Duration::from_secs(30))).expect("summary JSON");
    assert_eq!(summary["delete_status"], 200, "{summary}");
    let got = messages_written(&messages, "msg-");
    assert_eq!(got, sent, "WHEP player: messages complete and in order");
    let packets = packets_written(&rtp);
    let frames = vp8_frames_of(&s, &packets, "player.ivf");
    let file = VideoFile::open(&video).expect("sample parses");
    let start = assert_run_of_file(&frames, file.frames(), "WHEP player");
    assert!(frames.len() >= 150, "{} frames in 8 s", frames.len());

    // Its slot is free again.
    until("the session ended", Duration::from_secs(10), || {
        log_has(&relay, "ended its session")
    });
    // A player that dies without DELETE: its session ends when its
    // connection fails, and the slot comes back.
    let mut third = player(&s, &dir, "third", &whep, &["--seconds", "30", "--keep"]);
    assert_eq!(
        third.line("status:", Duration::from_secs(20)),
        "status: 201"
    );
    let connected = |p: &Proc| {
        p.log_text()
            .lines()
            .filter(|l| l.contains("WHEP: whep-player-") && l.ends_with(" connected"))
            .count()
    };
    until(
        "the third player connected",
        Duration::from_secs(10),
        || (connected(&relay) == 2).then_some(()),
    );
    third.kill();
    let killed = std::time::Instant::now();
    until(
        "the dead player's session ended",
        Duration::from_secs(20),
        || log_has(&relay, "connection failed; its session ends"),
    );
    let gone_after = killed.elapsed();
    let fourth = player(&s, &dir, "fourth", &whep, &["--seconds", "1"]);
    assert_eq!(
        fourth.line("status:", Duration::from_secs(20)),
        "status: 201"
    );
    eprintln!(
        "WHEP player (werift) below a relay: {} frames byte for byte from file frame {start}, \
         first packet {} ms after the player started, {} of {} messages in order; a second \
         player 503 while the slot was taken, 201 after DELETE; a killed player's session \
         ended {} ms after it died, and its slot was taken again",
        frames.len(),
        summary["first_packet_ms"],
        got.len(),
        sent.len(),
        gone_after.as_millis()
    );
}

#[test]
fn gstreamer_webrtcbin_plays_over_whep() {
    let Some(dir) = drivers_and("GStreamer WHEP player", gstreamer_or_skip) else {
        return;
    };
    plays_below_a_relay("GStreamer webrtcbin", |whep| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(dir.join("gst_whep.py"))
            .arg(whep)
            .args(["--host", "127.0.0.1"]);
        cmd
    });
}

#[test]
fn libdatachannel_plays_over_whep() {
    let Some(dir) = node_drivers_or_skip("libdatachannel WHEP player") else {
        return;
    };
    plays_below_a_relay("node-datachannel", |whep| {
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("whep_play.mjs"))
            .arg(whep)
            .args(["--stack", "ndc"]);
        cmd
    });
}

/// The player `player(whep)` makes (its --seconds, --rtp-out and
/// --messages added here) below a relay: frames byte for byte and 200
/// messages in order, then DELETE.
fn plays_below_a_relay(name: &str, player: impl Fn(&str) -> Command) {
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = Scratch::new(&format!("whep-{slug}"));
    let (_sig, url) = signal_server(&s, &[]);
    let video = sample("testsrc-640x360-vp8.ivf");
    let (mut src, tree) = looping_source(&s, &url, &video);
    let (_relay, whep) = whep_relay(&s, &url, &tree, &[]);
    let rtp = s.path("player.rtp");
    let messages = s.path("player.messages");
    let mut cmd = player(&whep);
    cmd.args(["--seconds", "8", "--rtp-out"])
        .arg(&rtp)
        .arg("--messages")
        .arg(&messages);
    let p = Proc::spawn_command(&s, "player", cmd, false);
    assert_eq!(p.line("status:", Duration::from_secs(20)), "status: 201");
    p.line("channel-open", Duration::from_secs(20));
    let sent = send_numbered(src.stdin.as_mut().expect("source stdin"), 200);
    let summary: serde_json::Value =
        serde_json::from_str(&p.line("{", Duration::from_secs(30))).expect("summary JSON");
    assert_eq!(summary["delete_status"], 200, "{summary}");
    let got = messages_written(&messages, "msg-");
    assert_eq!(got, sent, "{name}: messages complete and in order");
    let frames = vp8_frames_of(&s, &packets_written(&rtp), "player.ivf");
    let file = VideoFile::open(&video).expect("sample parses");
    let start = assert_run_of_file(&frames, file.frames(), name);
    assert!(frames.len() >= 150, "{} frames in 8 s", frames.len());
    eprintln!(
        "WHEP player ({name}) below a relay: {} frames byte for byte from file frame {start}, \
         first packet {} ms after it started, {} of {} messages in order, DELETE 200",
        frames.len(),
        summary["first_packet_ms"],
        got.len(),
        sent.len()
    );
}
