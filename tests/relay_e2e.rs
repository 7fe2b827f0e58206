//! End to end, every process real, on loopback: a signalling server, a file
//! source, relays at depths 1, 2 and 3, the last one recording.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use relay::source::VideoFile;

#[test]
fn three_hops_forward_frames_and_messages_unchanged_and_heal() {
    let s = Scratch::new("chain");
    let video = sample("testsrc-640x360-vp8.ivf");
    let source_frames = VideoFile::open(&video)
        .expect("sample parses")
        .frames()
        .to_vec();
    let (_sig, url) = signal_server(&s, &["--k", "2"]);
    let (mut src, tree) = looping_source(&s, &url, &video);

    // Join one at a time so the depths are 1, 2, 3: the two upper relays
    // take one child each.
    let mut r1 = relay(&s, "relay1", &url, &tree, &["--k", "1"], "joined tree");
    let _r2 = relay(&s, "relay2", &url, &tree, &["--k", "1"], "depth=2");
    let rec = s.path("leaf.ivf");
    let data = s.path("leaf-data.txt");
    let _leaf = relay(
        &s,
        "leaf",
        &url,
        &tree,
        &[
            "--record",
            rec.to_str().unwrap(),
            "--data-out",
            data.to_str().unwrap(),
        ],
        "depth=3",
    );

    // Video: the leaf's frames are the file's frames, byte for byte, from the
    // first keyframe it recorded (the source loops, so wrap around).
    let t0 = Instant::now();
    let frames = until("60 recorded frames", Duration::from_secs(30), || {
        let f = ivf_frames(&rec);
        (f.len() >= 60).then_some(f)
    });
    eprintln!(
        "leaf recorded its first 60 frames {:?} after joining",
        t0.elapsed()
    );
    let start = assert_run_of_file(&frames, &source_frames, "leaf");
    assert!(
        source_frames[start].keyframe,
        "recording starts at a keyframe"
    );

    // Data: 1000 lines into the source's stdin arrive complete and in order.
    let stdin = src.stdin.as_mut().expect("source stdin");
    until(
        "the data channel reaches the leaf",
        Duration::from_secs(20),
        || {
            writeln!(stdin, "ping").ok()?;
            stdin.flush().ok()?;
            std::fs::read_to_string(&data)
                .ok()?
                .contains("ping")
                .then_some(())
        },
    );
    for i in 0..1000 {
        writeln!(stdin, "line-{i}").unwrap();
    }
    stdin.flush().unwrap();
    let lines = until("1000 lines at depth 3", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&data).ok()?;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("line-"))
            .map(str::to_owned)
            .collect();
        (lines.len() >= 1000).then_some(lines)
    });
    let want: Vec<String> = (0..1000).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines, want, "messages complete and in order");

    // Kill the depth-1 relay: its child is re-placed under the source and
    // the leaf, two hops down, records again.
    let before = ivf_frames(&rec).len();
    let killed = Instant::now();
    r1.kill();
    until("the leaf records again", Duration::from_secs(2), || {
        (ivf_frames(&rec).len() > before + 5).then_some(())
    });
    eprintln!(
        "leaf recording again {:?} after SIGKILL of the depth-1 relay",
        killed.elapsed()
    );
    // Every frame recorded, from the first through the data phase and
    // across the heal: nothing twice, no jump back.
    let after = until("60 frames after the heal", Duration::from_secs(10), || {
        let f = ivf_frames(&rec);
        (f.len() > before + 60).then_some(f)
    });
    let missing = assert_spliced_run_of_file(&after, &source_frames, 1, "across the heal");
    eprintln!(
        "the leaf's recording across the heal: {} frames, none repeated, {missing} skipped",
        after.len()
    );
}

fn expect_one_line_error(args: &[&str], what: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run peer-tree-relay");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit status; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    stderr
}

#[test]
fn bad_files_give_one_line_and_exit_code_2() {
    let s = Scratch::new("badfiles");
    let good = std::fs::read(sample("testsrc-640x360-vp8.ivf")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = s.path(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let truncated = write("truncated.ivf", &good[..good.len() / 2 + 7]);
    let mut bad_header = good.clone();
    bad_header[..4].copy_from_slice(b"RIFF");
    let bad_header = write("bad-header.ivf", &bad_header);
    let mut past_end = good.clone();
    past_end[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    let past_end = write("past-end.ivf", &past_end);
    let mut h264 = good.clone();
    h264[8..12].copy_from_slice(b"H264");
    let h264 = write("h264.ivf", &h264);
    let missing = s.path("missing.ivf").to_str().unwrap().to_owned();

    for (file, what, needle) in [
        (&missing, "missing file", "missing.ivf"),
        (&truncated, "truncated IVF", "truncated.ivf"),
        (&bad_header, "bad header", "bad-header.ivf"),
        (&past_end, "frame size past the end", "past-end.ivf"),
        (&h264, "unsupported codec", "H264"),
    ] {
        let err = expect_one_line_error(
            &["source", "--file", file, "--signal", "ws://127.0.0.1:9/ws"],
            what,
        );
        assert!(err.contains(needle), "{what}: {err}");
    }
}

#[test]
fn relay_with_unknown_tree_exits_with_no_such_tree() {
    let s = Scratch::new("unknown");
    let (_sig, url) = signal_server(&s, &[]);
    let err = expect_one_line_error(&["join", "not-a-tree", "--signal", &url], "unknown tree");
    assert!(err.contains("no-such-tree"), "{err}");
}

/// A child frozen with SIGSTOP stops acknowledging: its data backlog passes
/// the limit and its relay drops it, while its sibling receives every
/// message in order.
#[test]
fn stalled_child_is_dropped_and_its_sibling_loses_nothing() {
    let s = Scratch::new("stalled");
    let video = sample("testsrc-640x360-vp8.ivf");
    // A long ping interval keeps the server from removing the frozen child
    // first (SIGSTOP silences its WebSocket too): this test is about the
    // relay's own limit.
    let (_sig, url) = signal_server(&s, &["--k", "2", "--ping-interval", "120s"]);
    let (mut src, tree) = looping_source(&s, &url, &video);
    let mid = relay(&s, "relay", &url, &tree, &["--k", "2"], "joined tree");
    let frozen_data = s.path("frozen.txt");
    let frozen = relay(
        &s,
        "frozen",
        &url,
        &tree,
        &["--k", "0", "--data-out", frozen_data.to_str().unwrap()],
        "joined tree",
    );
    let fine_data = s.path("fine.txt");
    let _fine = relay(
        &s,
        "fine",
        &url,
        &tree,
        &["--k", "0", "--data-out", fine_data.to_str().unwrap()],
        "joined tree",
    );
    let stdin = src.stdin.as_mut().expect("source stdin");
    until("both leaves get data", Duration::from_secs(20), || {
        writeln!(stdin, "ping").ok()?;
        stdin.flush().ok()?;
        let a = std::fs::read_to_string(&frozen_data).ok()?.contains("ping");
        let b = std::fs::read_to_string(&fine_data).ok()?.contains("ping");
        (a && b).then_some(())
    });
    frozen.signal("STOP");

    // 4000 lines of 1 KB, at 500 per second (a rate every live child keeps
    // up with): more than the frozen child's receive window, the relay's
    // send buffer and the leg queue together.
    let pad = "x".repeat(1000);
    for i in 0..4000 {
        writeln!(stdin, "line-{i:04}-{pad}").unwrap();
        if i % 50 == 49 {
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    stdin.flush().unwrap();
    until(
        "the relay drops the frozen child",
        Duration::from_secs(30),
        || log_has(&mid, "backlog passed"),
    );
    let lines = until(
        "4000 lines at the other child",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&fine_data).ok()?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("line-"))
                .map(|l| l[..9].to_owned())
                .collect();
            (lines.len() >= 4000).then_some(lines)
        },
    );
    let want: Vec<String> = (0..4000).map(|i| format!("line-{i:04}")).collect();
    assert_eq!(lines, want, "the sibling got every message, in order");
    frozen.signal("CONT");
}

/// A frozen parent (SIGSTOP) whose child has nowhere else to go: the child
/// calls it silent (`reconnect`), the server checks it at once and removes
/// it, and the child records again from the source seconds later. It took
/// about 13 s, until the server's regular pings gave up on the parent.
#[test]
fn a_frozen_parent_is_found_in_seconds_without_a_spare_slot() {
    let s = Scratch::new("frozen-no-slot");
    let (_sig, url) = signal_server(&s, &["--k", "1", "--k1", "1"]);
    let (_src, tree) = looping_source(&s, &url, &sample("testsrc-640x360-vp8.ivf"));
    let r1 = relay(&s, "r1", &url, &tree, &["--k", "1"], "connected to parent");
    let rec = s.path("r2.ivf");
    let _r2 = relay(
        &s,
        "r2",
        &url,
        &tree,
        &["--k", "0", "--record", rec.to_str().unwrap()],
        "depth=2",
    );
    until("r2 records", Duration::from_secs(30), || {
        (ivf_frames(&rec).len() >= 30).then_some(())
    });
    r1.signal("STOP");
    let stopped = Instant::now();
    // What was on its way when r1 stopped lands first.
    std::thread::sleep(Duration::from_millis(300));
    let before = ivf_frames(&rec).len();
    until("r2 records again", Duration::from_secs(20), || {
        (ivf_frames(&rec).len() > before).then_some(())
    });
    let again = stopped.elapsed();
    eprintln!(
        "r1 stopped: r2 recorded again {} ms later",
        again.as_millis()
    );
    // The child's silence (1.5 s) + the server's check (1 s) + a new
    // connection; without the check, over 10 s.
    assert!(
        again < Duration::from_secs(6),
        "recorded again after {again:?}"
    );
    r1.signal("CONT");
}

/// Ctrl-C on the source closes the tree for everyone at once; a relay says
/// so and exits 0.
#[test]
fn relay_exits_0_when_the_source_stops() {
    let s = Scratch::new("closed");
    let (_sig, url) = signal_server(&s, &[]);
    let (mut src, tree) = looping_source(&s, &url, &sample("testsrc-640x360-vp8.ivf"));
    let mut r = relay(&s, "relay", &url, &tree, &[], "connected to parent");
    src.signal("INT");
    // Well inside the server's 15 s grace: the source said `leave`.
    let status = r.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "relay log:\n{}", r.log_text());
    assert!(r.log_text().contains("tree closed (source-left)"));
    assert!(src.wait(Duration::from_secs(5)).success());
}

/// The first line of a process's log that contains `needle` and was logged
/// at or after `since` (by the line's own timestamp), with how long after
/// `since` that was.
fn logged_after(
    p: &Proc,
    needle: &str,
    since: std::time::SystemTime,
) -> Option<(Duration, String)> {
    p.log_text().lines().find_map(|line| {
        if !line.contains(needle) {
            return None;
        }
        let stamp = line.split_whitespace().next()?.trim_end_matches('Z');
        let at = humantime::parse_rfc3339_weak(stamp).ok()?;
        let after = at.duration_since(since).ok()?;
        Some((after, line.to_owned()))
    })
}

/// What a child did after its parent froze.
struct Frozen {
    /// SIGSTOP to the child's log line asking for another parent.
    noticed: Duration,
    /// SIGSTOP to the child recording again under the spare relay.
    recording_again: Duration,
    /// The child's log line that gave the reason.
    why: String,
}

/// source -> {frozen relay -> leaf, spare relay}; the frozen relay gets
/// SIGSTOP and keeps its WebSocket (the server pings every 120 s, so only
/// the leaf can notice). The leaf runs with `leaf_args` besides recording.
fn freeze_the_parent(name: &str, leaf_args: &[&str]) -> Frozen {
    let s = Scratch::new(name);
    let video = sample("testsrc-640x360-vp8.ivf");
    let (_sig, url) = signal_server(&s, &["--ping-interval", "120s"]);
    let (_src, tree) = looping_source_k1(&s, &url, &video, 2);
    // Depth 1: two relays with a slot each; the leaf goes under the first.
    let frozen = relay(&s, "frozen", &url, &tree, &["--k", "1"], "joined tree");
    let spare = relay(&s, "spare", &url, &tree, &["--k", "1"], "joined tree");
    let rec = s.path("leaf.ivf");
    let mut args = vec!["--k", "0", "--record", rec.to_str().unwrap()];
    args.extend_from_slice(leaf_args);
    let leaf = relay(&s, "leaf", &url, &tree, &args, "joined tree");
    let first_parent = format!("parent={}", relay_peer(&frozen));
    assert!(
        leaf.log_text().contains(&first_parent),
        "{}",
        leaf.log_text()
    );
    until("the leaf records", Duration::from_secs(20), || {
        (ivf_frames(&rec).len() >= 30).then_some(())
    });

    let stopped = std::time::SystemTime::now();
    let t0 = Instant::now();
    frozen.signal("STOP");
    let asking = "asking the server for another parent";
    let (noticed, why) = until(
        "the leaf asks for another parent",
        Duration::from_secs(15),
        || logged_after(&leaf, asking, stopped),
    );
    let moved = format!("new parent parent={}", relay_peer(&spare));
    until(
        "the leaf is moved under the spare relay",
        Duration::from_secs(5),
        || log_has(&leaf, &moved),
    );
    let before = ivf_frames(&rec).len();
    until("the leaf records again", Duration::from_secs(5), || {
        (ivf_frames(&rec).len() > before + 5).then_some(())
    });
    let recording_again = t0.elapsed();
    frozen.signal("CONT");
    Frozen {
        noticed,
        recording_again,
        why,
    }
}

/// A parent frozen with SIGSTOP keeps its WebSocket and its connection open
/// (the server notices only after its heartbeat timeout) but sends nothing:
/// its child notices the silence within 2 s, asks for another parent, and
/// records again.
#[test]
fn frozen_parent_is_replaced_by_its_child() {
    let f = freeze_the_parent("frozen-parent", &[]);
    eprintln!(
        "frozen parent: the leaf noticed after {} ms and recorded again {} ms after SIGSTOP",
        f.noticed.as_millis(),
        f.recording_again.as_millis()
    );
    assert!(f.why.contains("no media from the parent"), "{}", f.why);
    assert!(
        f.noticed < Duration::from_secs(2),
        "noticed after {:?}",
        f.noticed
    );
}

/// The same freeze, with the child's media-silence watch turned off
/// (`--silence 1h`): what is left is ICE. The link's consent checks go
/// unanswered, the connection to the parent turns `failed`, and the child
/// asks for another parent instead of staying a dead child.
#[test]
fn ice_failure_on_the_parent_link_leads_to_reconnect() {
    let f = freeze_the_parent("ice-failed", &["--silence", "1h"]);
    eprintln!(
        "ICE failure: the leaf saw its parent link fail after {} ms and recorded again {} ms \
         after SIGSTOP",
        f.noticed.as_millis(),
        f.recording_again.as_millis()
    );
    assert!(
        f.why.contains("the connection to the parent failed"),
        "{}",
        f.why
    );
    assert!(
        f.recording_again < Duration::from_secs(6),
        "recording again only {:?} after SIGSTOP",
        f.recording_again
    );
}

/// The signalling server restarts (same address, same --secret-file): the
/// source reconnects with backoff and reclaims its tree id, the relay joins
/// that tree again, and media flows to the relay's recording again.
#[test]
fn a_restarted_server_gets_its_tree_back() {
    let s = Scratch::new("restart");
    let secret = s.path("secret");
    let secret = secret.to_str().unwrap();
    let (mut sig, url) = signal_server(&s, &["--secret-file", secret]);
    let addr = http_addr(&url);
    let (src, tree) = looping_source(&s, &url, &sample("testsrc-640x360-vp8.ivf"));
    let rec = s.path("leaf.ivf");
    let leaf = relay(
        &s,
        "leaf",
        &url,
        &tree,
        &["--k", "0", "--record", rec.to_str().unwrap()],
        "joined tree",
    );
    until("the leaf records", Duration::from_secs(20), || {
        (ivf_frames(&rec).len() >= 30).then_some(())
    });

    sig.kill();
    let down = Instant::now();
    // Down long enough for both to see it and back off at least once.
    until("both notice", Duration::from_secs(10), || {
        (log_has(&src, "lost the signalling server").is_some()
            && log_has(&leaf, "lost the signalling server").is_some())
        .then_some(())
    });
    let args = ["signal", "--listen", &addr, "--secret-file", secret];
    let again = Proc::spawn(&s, "signal-again", &args, false);
    again.line("listening on ", Duration::from_secs(20));
    until(
        "the source takes its tree back",
        Duration::from_secs(15),
        || log_has(&src, "took the tree back"),
    );
    until("the leaf joins again", Duration::from_secs(15), || {
        log_has(&leaf, "joined the tree again")
    });
    let before = ivf_frames(&rec).len();
    until("the leaf records again", Duration::from_secs(15), || {
        (ivf_frames(&rec).len() > before + 5).then_some(())
    });
    eprintln!(
        "server restart: the leaf records again {} ms after the server went down",
        down.elapsed().as_millis()
    );
    assert!(src.log_text().contains(&tree));
    // The members close their peer connections when the server goes (their
    // peer ids die with it) and build new ones when they join again: the
    // recording holds an unbroken run of the file's frames, byte for byte,
    // before the restart, and at most one more, from a keyframe, after it.
    let frames = until("60 frames more", Duration::from_secs(15), || {
        let f = ivf_frames(&rec);
        (f.len() > before + 60).then_some(f)
    });
    let file = VideoFile::open(sample("testsrc-640x360-vp8.ivf")).expect("sample parses");
    let runs = runs_of(&frames, file.frames(), "across the restart");
    assert!(runs.len() <= 2, "{runs:?}");
    assert!(
        runs.iter().all(|r| file.frames()[r.from].keyframe),
        "every run starts at a keyframe: {runs:?}"
    );
    eprintln!("server restart: recorded runs of the file {runs:?}");
}
