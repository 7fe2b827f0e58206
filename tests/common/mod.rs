//! Real processes on loopback: the signalling server, sources and relays,
//! each a child process of the test, killed when the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_peer-tree-relay");

/// The sample committed with the project.
pub(crate) fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/media")
        .join(name)
}

/// A scratch directory for one test, removed at the end.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ptr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process killed on drop; its stderr goes to `<name>.log` in the
/// scratch directory (kept when a test fails), its stdout lines to a channel.
pub(crate) struct Proc {
    pub child: Child,
    pub name: String,
    pub stdout: mpsc::Receiver<String>,
    pub stdin: Option<ChildStdin>,
    pub log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(scratch: &Scratch, name: &str, args: &[&str], stdin: bool) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env(
            "RUST_LOG",
            "warn,peer_tree_relay=info,relay=info,signalling=info",
        );
        Proc::spawn_command(scratch, name, cmd, stdin)
    }

    /// Any command (the binary inside a lab host, a browser, a TURN server),
    /// with the same care: stderr to `<name>.log`, stdout lines to a channel,
    /// killed on drop.
    pub(crate) fn spawn_command(
        scratch: &Scratch,
        name: &str,
        mut cmd: Command,
        stdin: bool,
    ) -> Proc {
        let log = scratch.path(&format!("{name}.log"));
        let err = std::fs::File::create(&log).expect("log file");
        let mut child = cmd
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            stdin: child.stdin.take(),
            child,
            name: name.to_owned(),
            stdout: rx,
            log,
        }
    }

    /// The next stdout line starting with `prefix`, within `within`.
    pub(crate) fn line(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(_) => panic!(
                    "{}: no line starting {prefix:?} within {within:?}; log:\n{}",
                    self.name,
                    self.log_text()
                ),
            }
        }
    }

    pub(crate) fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits for the process to end by itself.
    pub(crate) fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {within:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`INT`, `STOP`, `CONT`, ...).
    pub(crate) fn signal(&self, sig: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{sig} {}", self.name);
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        // CI keeps only the test's output, not the scratch directory: a
        // failing test shows how each of its processes ended.
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!(
                "---- {} (last {} of {} log lines) ----\n{}",
                self.name,
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
    }
}

/// Log lines of each process a failing test prints.
const LOG_TAIL: usize = 30;

/// A signalling server on a free loopback port; returns it and its ws URL.
pub(crate) fn signal_server(scratch: &Scratch, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["signal", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let p = Proc::spawn(scratch, "signal", &args, false);
    let line = p.line("listening on ", Duration::from_secs(20));
    let addr = line.trim_start_matches("listening on ").trim().to_owned();
    (p, format!("ws://{addr}/ws"))
}

/// Polls `f` every 20 ms until it returns Some, failing after `within`.
pub(crate) fn until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// IVF frames of a file that may still be growing: a partial last frame is
/// left out rather than treated as corruption.
pub(crate) fn ivf_frames(path: &Path) -> Vec<Vec<u8>> {
    ivf_frames_timed(path).into_iter().map(|(_, f)| f).collect()
}

/// A source looping `video` with one child slot and its data channel fed
/// from stdin; returns it and its tree id.
pub(crate) fn looping_source(s: &Scratch, url: &str, video: &Path) -> (Proc, String) {
    looping_source_k1(s, url, video, 1)
}

/// `looping_source` with `k1` child slots.
pub(crate) fn looping_source_k1(s: &Scratch, url: &str, video: &Path, k1: u32) -> (Proc, String) {
    let mut args = looping_source_args(url, video, k1);
    args.extend(["--data-in".to_owned(), "-".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let src = Proc::spawn(s, "source", &args, true);
    let tree = tree_id(&src);
    (src, tree)
}

/// `source` looping `video` into a tree of `url`'s server with `k1` slots.
pub(crate) fn looping_source_args(url: &str, video: &Path, k1: u32) -> Vec<String> {
    [
        "source",
        "--file",
        video.to_str().expect("UTF-8 path"),
        "--loop",
        "--signal",
        url,
        "--k1",
        &k1.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The tree id a source prints on its `tree:` line.
pub(crate) fn tree_id(src: &Proc) -> String {
    src.line("tree:", Duration::from_secs(30))
        .trim_start_matches("tree:")
        .trim()
        .to_owned()
}

/// A relay joining `tree`, once its log shows `ready`.
pub(crate) fn relay(
    s: &Scratch,
    name: &str,
    url: &str,
    tree: &str,
    extra: &[&str],
    ready: &str,
) -> Proc {
    let p = Proc::spawn(s, name, &join_args(url, tree, extra), false);
    once_ready(p, ready)
}

/// `join TREE --signal URL` and `extra`.
pub(crate) fn join_args<'a>(url: &'a str, tree: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["join", tree, "--signal", url];
    args.extend_from_slice(extra);
    args
}

/// `p`, once its log shows `ready`.
pub(crate) fn once_ready(p: Proc, ready: &str) -> Proc {
    until(
        &format!("{}: {ready}", p.name),
        Duration::from_secs(20),
        || log_has(&p, ready),
    );
    p
}

pub(crate) fn log_has(p: &Proc, needle: &str) -> Option<()> {
    p.log_text().contains(needle).then_some(())
}

/// The peer id a relay's log gives for itself ("joined tree T as relay P").
pub(crate) fn relay_peer(p: &Proc) -> String {
    let log = p.log_text();
    let at = log
        .find(" as relay ")
        .unwrap_or_else(|| panic!("{}: no 'as relay' in its log:\n{log}", p.name));
    log[at + " as relay ".len()..]
        .split_whitespace()
        .next()
        .expect("peer id")
        .to_owned()
}

/// `host:port` of a `ws://host:port/ws` URL.
pub(crate) fn http_addr(ws_url: &str) -> String {
    ws_url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned()
}

/// Like [`assert_run_of_file`] for a recording across changes of parent:
/// the relays splice the new parent's stream onto the old (relay/src/
/// splice.rs), so nothing is recorded twice and the stream never jumps
/// back. Where the new parent no longer held the frames missed during a
/// heal, the recording skips ahead once, to a keyframe. Returns the frames
/// skipped that way.
pub(crate) fn assert_spliced_run_of_file(
    recorded: &[Vec<u8>],
    file: &[relay::source::Frame],
    heals: usize,
    what: &str,
) -> usize {
    let runs = runs_of(recorded, file, what);
    let n = file.len();
    let mut missing = 0;
    for pair in runs.windows(2) {
        let (before, run) = (pair[0], pair[1]);
        let end = (before.from + before.len - 1) % n;
        // Frames between the run before and this one, if this one is ahead.
        let skipped = (run.from + n - end - 1) % n;
        assert!(
            skipped < n / 2 && file[run.from].keyframe,
            "{what}: after file frame {end} the recording goes on at file frame {} ({}): \
             a jump back or a seam; runs {runs:?}",
            run.from,
            if file[run.from].keyframe {
                "a keyframe"
            } else {
                "not a keyframe"
            },
        );
        missing += skipped;
    }
    assert!(
        runs.len() <= heals + 1,
        "{what}: {} breaks for {heals} heals: {runs:?}",
        runs.len() - 1
    );
    missing
}

/// Asserts `recorded` is an unbroken run of `file`'s frames, byte for byte,
/// wrapping around as a looping source does; returns the file index of the
/// first one. A lost or altered frame anywhere fails.
pub(crate) fn assert_run_of_file(
    recorded: &[Vec<u8>],
    file: &[relay::source::Frame],
    what: &str,
) -> usize {
    let recorded: Vec<&[u8]> = recorded.iter().map(|f| &f[..]).collect();
    let file: Vec<&[u8]> = file.iter().map(|f| &f.data[..]).collect();
    unbroken_run(&recorded, &file, true, what)
}

/// Where `got` starts in `of` (read around from its end when `wrap`, as a
/// looping file is sent), asserting that every next item follows
/// unbroken: frames, packets' payloads or their hashes.
pub(crate) fn unbroken_run<T: PartialEq>(got: &[T], of: &[T], wrap: bool, what: &str) -> usize {
    let first = got
        .first()
        .unwrap_or_else(|| panic!("{what}: nothing received"));
    let start = of
        .iter()
        .position(|x| x == first)
        .unwrap_or_else(|| panic!("{what}: the first received is not one sent"));
    for (i, x) in got.iter().enumerate() {
        let at = if wrap {
            (start + i) % of.len()
        } else {
            start + i
        };
        assert!(
            of.get(at) == Some(x),
            "{what}: received {i} is not sent {at}"
        );
    }
    start
}

/// An unbroken run of a looping file's frames in a recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// The file index of its first frame.
    pub from: usize,
    /// Frames in it.
    pub len: usize,
}

/// Splits a recording into its unbroken runs of the file's frames, byte for
/// byte and wrapping around as a looping source does. A recorded frame that
/// is not one of the file's fails.
pub(crate) fn runs_of(recorded: &[Vec<u8>], file: &[relay::source::Frame], what: &str) -> Vec<Run> {
    let index: std::collections::HashMap<&[u8], usize> = file
        .iter()
        .enumerate()
        .map(|(i, f)| (&f.data[..], i))
        .collect();
    let mut runs: Vec<Run> = Vec::new();
    let mut last: Option<usize> = None;
    for (k, f) in recorded.iter().enumerate() {
        let i = *index
            .get(&f[..])
            .unwrap_or_else(|| panic!("{what}: recorded frame {k} is not one of the file's"));
        match (last, runs.last_mut()) {
            (Some(l), Some(run)) if (l + 1) % file.len() == i => run.len += 1,
            _ => runs.push(Run { from: i, len: 1 }),
        }
        last = Some(i);
    }
    runs
}

/// One line to a source's `--data-in -`.
pub(crate) fn feed(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").expect("write to the source's --data-in");
    stdin.flush().expect("flush --data-in");
}

/// Sends `n` numbered lines (`msg-0000`, ...), `gap` apart; returns what
/// every receiver owes.
pub(crate) fn send_numbered_every(stdin: &mut ChildStdin, n: usize, gap: Duration) -> Vec<String> {
    let lines: Vec<String> = (0..n).map(|i| format!("msg-{i:04}")).collect();
    for l in &lines {
        feed(stdin, l);
        std::thread::sleep(gap);
    }
    lines
}

/// Sends `n` numbered lines 2 ms apart.
pub(crate) fn send_numbered(stdin: &mut ChildStdin, n: usize) -> Vec<String> {
    send_numbered_every(stdin, n, Duration::from_millis(2))
}

/// The lines of a `--data-out` file that start with `prefix`.
pub(crate) fn data_lines(path: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// `/api/trees/{tree}` of the server behind `ws_url`.
pub(crate) async fn tree_snapshot(ws_url: &str, tree: &str) -> serde_json::Value {
    let addr = http_addr(ws_url);
    let (status, body) =
        signalling::client::http_get(&addr, &format!("/api/trees/{tree}"), Duration::from_secs(5))
            .await
            .expect("GET /api/trees");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("snapshot JSON")
}

/// The parent of `peer` in a snapshot.
pub(crate) fn parent_in(snapshot: &serde_json::Value, peer: &str) -> Option<String> {
    snapshot["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["peer"] == peer)?["parent"]
        .as_str()
        .map(str::to_owned)
}

/// How much of a looping source's stream a recording holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Coverage {
    /// Source frames from the recording's first to its last, loops unwrapped.
    pub span: usize,
    /// Distinct source frames of that span the recording holds.
    pub held: usize,
    /// Recorded frames that repeat one already held.
    pub repeated: usize,
}

impl Coverage {
    pub(crate) fn percent(&self) -> f64 {
        if self.span == 0 {
            return 0.0;
        }
        100.0 * self.held as f64 / self.span as f64
    }
}

/// IVF frames of a growing file with their timestamps (in the file's
/// timebase: the recorder's is 1/90000 s).
pub(crate) fn ivf_frames_timed(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    if bytes.len() < 32 {
        return Vec::new();
    }
    let header_len = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
    let mut at = header_len;
    let mut frames = Vec::new();
    while at + 12 <= bytes.len() {
        let size =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let mut pts = [0u8; 8];
        pts.copy_from_slice(&bytes[at + 4..at + 12]);
        let start = at + 12;
        if start + size > bytes.len() {
            break;
        }
        frames.push((u64::from_le_bytes(pts), bytes[start..start + size].to_vec()));
        at = start + size;
    }
    frames
}

/// The share of the source frames in a recording's span that it holds.
/// Each recorded frame must be one of the file's, byte for byte; a looping
/// source repeats the file, so its place in the unwrapped stream is found
/// from the frame before: the file's frames in between, plus as many whole
/// loops as the recording's clock says passed (the source keeps its RTP
/// clock going across loops, and the recorder writes it as IVF time; a
/// replayed group's frames sit a millisecond apart, so they count as the
/// next frames).
pub(crate) fn coverage(
    recorded: &[(u64, Vec<u8>)],
    file: &relay::source::VideoFile,
    what: &str,
) -> Coverage {
    use std::collections::{HashMap, HashSet};
    let frames = file.frames();
    let n = frames.len();
    let index: HashMap<&[u8], usize> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| (&f.data[..], i))
        .collect();
    assert_eq!(index.len(), n, "{what}: the file repeats a frame");
    // 90 kHz ticks per frame.
    let tick = file.loop_period().as_secs_f64() * 90_000.0 / n as f64;
    let mut seen = HashSet::new();
    let mut repeated = 0;
    let mut at: Option<(usize, usize, u64)> = None; // (unwrapped, file index, pts)
    let mut first = 0;
    for (k, (pts, data)) in recorded.iter().enumerate() {
        let i = *index
            .get(&data[..])
            .unwrap_or_else(|| panic!("{what}: recorded frame {k} is not one of the file's"));
        let u = match at {
            None => {
                first = i;
                i
            }
            Some((u, prev, prev_pts)) => {
                let ahead = ((i + n - prev) % n) as f64;
                let by_clock = (pts.saturating_sub(prev_pts)) as f64 / tick;
                let loops = ((by_clock - ahead) / n as f64).round().max(0.0);
                u + (ahead + loops * n as f64) as usize
            }
        };
        if !seen.insert(u) {
            repeated += 1;
        }
        at = Some((u, i, *pts));
    }
    let span = at.map_or(0, |(u, _, _)| u - first + 1);
    Coverage {
        span,
        held: seen.len(),
        repeated,
    }
}

/// Decodes every frame of an IVF file with ffprobe: (codec, width, height,
/// frames decoded). Any decoding error fails the test.
pub(crate) fn decode_with_ffmpeg(path: &std::path::Path) -> (String, u32, u32, u64) {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffprobe {}: {stderr}",
        path.display()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let st = &v["streams"][0];
    (
        st["codec_name"].as_str().unwrap_or_default().to_owned(),
        st["width"].as_u64().unwrap_or_default() as u32,
        st["height"].as_u64().unwrap_or_default() as u32,
        st["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or_default(),
    )
}

/// A source taking one codec over RTP on a free port: the process, the
/// port and the tree id.
pub(crate) fn rtp_source(s: &Scratch, url: &str, codec: &str) -> (Proc, SocketAddr, String) {
    let src = Proc::spawn(
        s,
        "source",
        &[
            "source",
            "--rtp",
            "127.0.0.1:0",
            "--codec",
            codec,
            "--signal",
            url,
        ],
        false,
    );
    let line = src.line("rtp in: ", Duration::from_secs(20));
    let addr: SocketAddr = line
        .trim_start_matches("rtp in: udp://")
        .split(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let tree = tree_id(&src);
    (src, addr, tree)
}

/// The sample as a live H.264 publisher sends it: x264, constrained
/// baseline, a keyframe (with its SPS and PPS) every second, no B-frames.
pub(crate) fn encode_h264(s: &Scratch) -> std::path::PathBuf {
    let out = s.path("publisher.h264");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(sample("testsrc-640x360-vp8.ivf"))
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-preset",
            "veryfast",
            "-g",
            "30",
            "-bf",
            "0",
            "-f",
            "h264",
        ])
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(
        status.success(),
        "ffmpeg could not encode H.264 with libx264"
    );
    out
}

/// ffmpeg sending an Annex B H.264 file once, in real time, to `to`, as a
/// live publisher does (`-c copy -f rtp`: its NAL units as they are),
/// announcing the stream in `sdp` if given (`-sdp_file`).
pub(crate) fn ffmpeg_sends_h264(
    s: &Scratch,
    file: &Path,
    to: SocketAddr,
    sdp: Option<&Path>,
) -> Proc {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-framerate",
        "30",
        "-i",
    ])
    .arg(file)
    .args(["-c", "copy", "-f", "rtp"]);
    if let Some(sdp) = sdp {
        cmd.arg("-sdp_file").arg(sdp);
    }
    cmd.arg(format!("rtp://{to}"));
    Proc::spawn_command(s, "ffmpeg", cmd, false)
}

/// The recording at `rec` once it holds `last`, the published stream's
/// last NAL unit.
pub(crate) fn recorded_through(rec: &Path, last: &[u8], within: Duration) -> Vec<u8> {
    until("the last NAL unit recorded", within, || {
        let r = std::fs::read(rec).ok()?;
        relay::media::annex_b_nal_units(&r)
            .last()
            .is_some_and(|n| n == last)
            .then_some(r)
    })
}

/// ffmpeg, or None (with the reason printed) where it is missing and the
/// run does not require it; `.ci/run` installs it and requires it.
pub(crate) fn ffmpeg_or_skip(test: &str) -> Option<()> {
    let found = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(());
    }
    assert!(
        std::env::var_os("PEER_TREE_REQUIRE_BROWSER").is_none(),
        "{test}: ffmpeg is required (PEER_TREE_REQUIRE_BROWSER is set) but not found"
    );
    eprintln!("{test}: skipped: ffmpeg not found (apt-get install ffmpeg)");
    None
}

/// ffmpeg sending `file` (IVF or Ogg Opus) once, in real time, to `to`.
pub(crate) fn ffmpeg_sends(s: &Scratch, file: &Path, to: SocketAddr) -> Proc {
    // Each stream its own log and SDP, for tests that send video and audio.
    let stem = file
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("stream");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-loglevel", "error", "-re", "-i"])
        .arg(file)
        // ffmpeg 5.1 calls its VP9 packetizer experimental.
        .args([
            "-c",
            "copy",
            "-strict",
            "experimental",
            "-f",
            "rtp",
            "-sdp_file",
        ])
        .arg(s.path(&format!("ffmpeg-{stem}.sdp")))
        .arg(format!("rtp://{to}"));
    Proc::spawn_command(s, &format!("ffmpeg-{stem}"), cmd, false)
}

/// The driver directory, if node and its packages are there.
pub(crate) fn node_drivers_or_skip(test: &str) -> Option<PathBuf> {
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

/// The driver directory, if node and the drivers' packages are there and
/// so is what `needs` checks for (ffmpeg, GStreamer); None (the test
/// skipped, each missing piece said why) otherwise.
pub(crate) fn drivers_and(test: &str, needs: fn(&str) -> Option<()>) -> Option<PathBuf> {
    let dir = node_drivers_or_skip(test)?;
    needs(test)?;
    Some(dir)
}

/// The packets a node driver's `--rtp-out` wrote (tests/interop), each behind its 2-byte length.
pub(crate) fn packets_written(path: &std::path::Path) -> Vec<rtc::rtp::packet::Packet> {
    let bytes = std::fs::read(path).expect("the driver's RTP file");
    let mut packets = Vec::new();
    let mut rest = &bytes[..];
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        assert!(tail.len() >= len, "RTP file cut inside a packet");
        let mut raw = &tail[..len];
        let p = <rtc::rtp::packet::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut raw);
        packets.push(p.expect("an RTP packet"));
        rest = &tail[len..];
    }
    packets
}

/// The texts starting with `prefix` of the messages a node driver's
/// `--messages` wrote, in arrival order (as `data_lines` reads a relay's
/// `--data-out`).
pub(crate) fn messages_written(path: &std::path::Path, prefix: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let m: serde_json::Value = serde_json::from_str(l).expect("a message line");
            let data = m["data"].as_str().expect("message data").to_owned();
            if m["binary"].as_bool() == Some(true) {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&data)
                    .expect("base64");
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                data
            }
        })
        .filter(|m| m.starts_with(prefix))
        .collect()
}

/// VP8 `packets` reassembled as a recording relay would (from the first
/// keyframe on), through `name` in the scratch directory.
pub(crate) fn vp8_frames_of(
    s: &Scratch,
    packets: &[rtc::rtp::packet::Packet],
    name: &str,
) -> Vec<Vec<u8>> {
    let ivf = s.path(name);
    let mut rec =
        relay::record::Recorder::create(&ivf, relay::media::Codec::Vp8).expect("recorder");
    for p in packets {
        rec.push(p).expect("record");
    }
    rec.finish().expect("finish");
    ivf_frames(&ivf)
}

/// One HTTP/1.1 request to `url` (http://HOST:PORT/PATH); the status.
pub(crate) fn http(url: &str, method: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut conn = std::net::TcpStream::connect(host).expect("connect to the WHIP endpoint");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).expect("send the request");
    // A server may answer (413) before reading a large body.
    let _ = conn.write_all(body);
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// Debian's python3 with GStreamer's webrtcbin, or None (with the reason
/// printed) where it is missing and the run does not require it.
pub(crate) fn gstreamer_or_skip(test: &str) -> Option<()> {
    let probe = "import websocket, gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); \
        gi.require_version('Nice', '0.1'); from gi.repository import Gst, GstWebRTC, Nice; \
        Gst.init(None); \
        assert all(Gst.ElementFactory.find(e) for e in ('webrtcbin', 'ivfparse', 'rtpvp8pay', 'nicesrc'))";
    let found = Command::new("/usr/bin/python3")
        .args(["-c", probe])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(());
    }
    let what = format!(
        "{test}: needs GStreamer's webrtcbin for /usr/bin/python3 (apt-get install python3-gst-1.0 \
         gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 gstreamer1.0-plugins-good \
         gstreamer1.0-plugins-bad gstreamer1.0-nice python3-websocket)"
    );
    assert!(
        std::env::var_os("PEER_TREE_REQUIRE_BROWSER").is_none(),
        "{what}; PEER_TREE_REQUIRE_BROWSER is set, so this is a failure"
    );
    eprintln!("skipped: {what}");
    None
}

/// A leaf relay of `tree` recording its video to `leaf.ivf` and its
/// messages to `leaf.data` in the scratch directory, once connected.
pub(crate) struct Member {
    pub proc: Proc,
    pub rec: PathBuf,
    pub data: PathBuf,
}

pub(crate) fn recording_member(s: &Scratch, url: &str, tree: &str) -> Member {
    let rec = s.path("leaf.ivf");
    let data = s.path("leaf.data");
    let proc = relay(
        s,
        "leaf",
        url,
        tree,
        &[
            "--k",
            "0",
            "--record",
            rec.to_str().expect("UTF-8 path"),
            "--data-out",
            data.to_str().expect("UTF-8 path"),
        ],
        "connected to parent",
    );
    Member { proc, rec, data }
}

/// The recording at `rec` once it ends with `last`, a stream's last frame.
pub(crate) fn recorded_to(rec: &Path, last: &[u8], within: Duration) -> Vec<Vec<u8>> {
    until("the stream's last frame", within, || {
        let f = ivf_frames(rec);
        (f.last().map(|l| &l[..]) == Some(last)).then_some(f)
    })
}

/// The URL a process printed after `what:` (`whip:`, `whep:`).
pub(crate) fn endpoint(p: &Proc, what: &str) -> String {
    p.line(what, Duration::from_secs(20))[what.len()..]
        .trim()
        .to_owned()
}

/// Every message with `prefix` at `data` (a --data-out file), once there
/// are `n` of them.
pub(crate) fn messages_at(data: &Path, prefix: &str, n: usize) -> Vec<String> {
    until(&format!("{n} messages"), Duration::from_secs(20), || {
        let got = data_lines(data, prefix);
        (got.len() >= n).then_some(got)
    })
}

/// The run of `file`'s Opus packets that `packets` (RTP, as a driver wrote
/// them, retransmissions and reordering included; a relay's padding-only
/// primer left out) carry: the index of the first and how many follow it
/// unbroken, byte for byte. A payload that is not the file's next one
/// fails.
pub(crate) fn opus_run_of_file(
    packets: &[rtc::rtp::packet::Packet],
    file: &[relay::source::Frame],
    what: &str,
) -> (usize, usize) {
    let mut by_seq: Vec<&rtc::rtp::packet::Packet> =
        packets.iter().filter(|p| !p.payload.is_empty()).collect();
    // In order from the first to arrive: sequence numbers wrap at 2^16.
    let base = by_seq.first().map_or(0, |p| p.header.sequence_number);
    by_seq.sort_by_key(|p| p.header.sequence_number.wrapping_sub(base) as i16);
    by_seq.dedup_by_key(|p| p.header.sequence_number);
    let payloads: Vec<&[u8]> = by_seq.iter().map(|p| &p.payload[..]).collect();
    let file: Vec<&[u8]> = file.iter().map(|f| &f.data[..]).collect();
    let from = unbroken_run(&payloads, &file, false, what);
    (from, by_seq.len())
}

/// A relay of `tree` (k 1) serving WHEP on loopback, `extra` besides, and
/// its WHEP URL, once media from its parent reached it: before that a
/// player's offer gets 409 (nothing to play yet).
pub(crate) fn whep_relay(s: &Scratch, url: &str, tree: &str, extra: &[&str]) -> (Proc, String) {
    let args = [&["--k", "1", "--whep", "127.0.0.1:0"][..], extra].concat();
    let relay = relay(s, "relay", url, tree, &args, "connected to parent");
    let whep = endpoint(&relay, "whep:");
    until("media at the relay", Duration::from_secs(10), || {
        log_has(&relay, "media from the parent")
    });
    (relay, whep)
}
