//! Churn driver: a real tree on loopback, every member its own process, with
//! members killed and replaced at a steady pace.
//!
//! ```sh
//! cargo build --release --bins --examples
//! cargo run --release --example churn -- --relays 8 --leaves 24 --duration 60s --kill-every 3s
//! cargo run --release --example churn -- --relays 2 --leaves 4 --duration 20s --kill-every 4s --keep
//! ```
//!
//! The processes, all of `target/release/peer-tree-relay` (beside this
//! example's own executable, or `--bin`):
//!
//! * `signal --listen 127.0.0.1:0 --k K --k1 K1`;
//! * `source --file <sample> --loop --signal ws://ADDR/ws --k1 K1 --data-in -`,
//!   whose stdin gets numbered lines (`seq-000001`, ...) at `--data-rate`;
//! * `--relays` relays `join <tree> --k K`, started first so they sit near
//!   the top, then `--leaves` leaves `join <tree> --k 0 --record X.ivf
//!   --data-out X.txt`.
//!
//! The first relay is long-lived: it is never killed, so its descriptors
//! show what the churn of its children leaves behind. It starts alone, after
//! the source, and both are measured with no child at all; the other relays
//! and the leaves follow. Once every relay has joined and every leaf has
//! recorded a frame (or `--setup-timeout` has passed), the churn phase runs
//! for `--duration`: every `--kill-every` (each kill moved by up to a quarter
//! period either way) a random relay (not the long-lived one) or leaf (seeded
//! xorshift, `--seed`) is SIGKILLed and a fresh process of the same kind
//! started in its place. Then `--drain` more without kills, so the last
//! orphans can recover and the last data lines arrive; then the members are
//! stopped in two steps (below) and everything is killed and reaped.
//!
//! Each process's stderr is read line by line by a thread of its own (and
//! copied to `<name>.log` in the scratch directory); events are timed by the
//! RFC 3339 timestamp tracing puts first on each line, falling back to the
//! arrival time when a line has none. Figures:
//!
//! * recovery per orphaned member: the killed node's children (from an
//!   `/api/trees/{tree}` snapshot taken just before the kill), from the kill
//!   to that child's first `media from the parent` line naming another
//!   parent, split at its `new parent` (the server's heal) and `connected to
//!   parent` (the new connection up; the rest is the new parent's wait for
//!   a keyframe);
//! * frames across each heal, per recovered orphan that records (a leaf):
//!   each recorded frame is found in the source's file by its bytes; in the
//!   recording from a group of pictures' greatest age (`GOP_MAX_AGE`) before
//!   the kill to as long after its first media from the new parent, the
//!   frames recorded twice (repeated: a new parent's replay passed on) and
//!   the file's frames in that span it does not hold (missing). Printed;
//!   tests/churn_short.rs holds repeats to 0 (relay/src/splice.rs). Frames
//!   are missing only where the new parent no longer held them (its group
//!   started after the orphan's last frame);
//! * leaf-seconds with media flowing: every leaf's recording is sampled
//!   every 250 ms (IVF frames, read incrementally); a second counts as
//!   flowing if the recording grew in it; only seconds of the churn phase
//!   after the leaf's first frame count;
//! * data lines lost per surviving leaf: lines the source sent after the
//!   leaf's first received line that it never wrote (a live feed: lines sent
//!   while a leaf has no parent are not replayed, so this loss is real);
//! * crashes (exits not caused by the driver) and `panicked` in any log:
//!   both must be 0, or the driver exits non-zero;
//! * the tree's `max_depth` and `size`, once a second;
//! * leaks, each compared at the same connections as before the churn: every
//!   member but the long-lived relay is stopped, and its descriptors (sockets
//!   and others, from /proc/PID/fd) must come back to what it held with only
//!   its parent; then it is stopped too, and the source's must come back to
//!   what it held before any child, and the server's `/metrics` gauges
//!   (peers, connections, trees) to theirs with the source alone. Each
//!   reading is polled until it stays put for a while, within a bound, and
//!   how long it took is printed. Any difference fails the run: the
//!   readings compare the same connections, so no allowance is needed (and
//!   none was, in the runs that set this);
//! * after shutdown: processes left over (none may be; each is waited for).
//!
//! The scratch directory (under the system temp directory) also gets every
//! snapshot (`snapshots.jsonl`) and every kill with the victim's children
//! (`kills.txt`), for reading a run afterwards; `--log` sets the processes'
//! RUST_LOG (e.g. adding `rtc_ice=debug` to time ICE). It is removed at the
//! end unless `--keep`, or unless the run failed. Only 127.0.0.1 is
//! contacted.

#[path = "procfs/mod.rs"]
mod procfs;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;

const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The snapshot before a kill must be fresh, but a slow server must not stall
/// the schedule: after this the last periodic snapshot is used.
const HTTP_TIMEOUT: Duration = Duration::from_millis(800);
const START_TIMEOUT: Duration = Duration::from_secs(20);
const RUST_LOG: &str = "warn,relay=info,peer_tree_relay=info,signalling=info";
/// The recovery target on loopback.
const TARGET_P95: Duration = Duration::from_secs(1);
/// A recorded frame larger than this means the file is not what we think.
const MAX_IVF_FRAME: u64 = 64 << 20;
/// Lines kept per process for crash reports.
const TAIL_LINES: usize = 12;
/// How often a leak reading (descriptors, the server's gauges) is taken.
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// A reading counts as settled once it stayed the same this long: a closing
/// peer connection gives its sockets back within a few tens of ms of the
/// close, and the server drops a peer when its WebSocket closes.
const SETTLE_STABLE: Duration = Duration::from_millis(500);
/// A reading that has not come back by then is a leak.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    about = "Churn driver: a tree of relay and leaf processes on loopback; members are \
             SIGKILLed and replaced at a steady pace while recovery, media, data and depth \
             are measured"
)]
struct Args {
    /// Relay processes (`join --k K`), started before the leaves; the first
    /// is never killed, and what its children's churn leaves behind in it
    /// is checked.
    #[arg(long, default_value_t = 8)]
    relays: usize,
    /// Leaf processes (`join --k 0`, recording video and data).
    #[arg(long, default_value_t = 24)]
    leaves: usize,
    /// Length of the churn phase (after the tree is built).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// One random relay (not the first) or leaf is SIGKILLed and replaced
    /// this often.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// Children per relay (also the server's cap).
    #[arg(long, default_value_t = 4)]
    k: u32,
    /// Children of the source.
    #[arg(long, default_value_t = 4)]
    k1: u32,
    /// RNG seed for the choice of victims (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the scratch directory (logs, recordings, data files).
    #[arg(long)]
    keep: bool,
    /// The peer-tree-relay binary (default: beside this example's target directory).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The video the source loops.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/media/testsrc-640x360-vp8.ivf"))]
    file: PathBuf,
    /// Numbered data lines per second into the source.
    #[arg(long, default_value_t = 20)]
    data_rate: u32,
    /// Building the tree may take at most this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    setup_timeout: Duration,
    /// RUST_LOG for the processes; the lines the figures come from are at
    /// info level under `relay`, `peer_tree_relay` and `signalling`.
    #[arg(long, default_value = RUST_LOG)]
    log: String,
    /// After the churn phase: no kills and no new data lines for this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Signal,
    Source,
    Relay,
    Leaf,
}

/// One line from a child's stdout or stderr, with when it was read.
struct Line {
    proc: usize,
    stdout: bool,
    arrived: Instant,
    text: String,
}

/// The frames of an IVF file that another process is still writing, read
/// incrementally (a partial last frame waits for the next call), each found
/// in the source's file by its bytes.
struct Recording {
    path: PathBuf,
    file: Option<File>,
    /// Where the next frame header starts, once the file header was read.
    next: Option<u64>,
    /// Per recorded frame its index in the source's file; `None` for a
    /// frame that is none of the file's (the recording promises byte for
    /// byte).
    frames: Vec<Option<u32>>,
    broken: Option<String>,
}

impl Recording {
    fn new(path: PathBuf) -> Recording {
        Recording {
            path,
            file: None,
            next: None,
            frames: Vec::new(),
            broken: None,
        }
    }

    /// Frames recorded so far.
    fn poll(&mut self, source: &FileIndex) -> u64 {
        if self.broken.is_none() {
            if let Err(why) = self.advance(source) {
                self.broken = Some(why);
            }
        }
        self.frames.len() as u64
    }

    /// `Err` only for a file that cannot be an IVF file; a missing or short
    /// file is simply not written yet.
    fn advance(&mut self, source: &FileIndex) -> Result<(), String> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(_) => return Ok(()),
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let mut at = match self.next {
            Some(at) => at,
            None => {
                if len < 32 {
                    return Ok(());
                }
                let mut header = [0u8; 32];
                file.seek(SeekFrom::Start(0))
                    .and_then(|_| file.read_exact(&mut header))
                    .map_err(|e| e.to_string())?;
                if &header[..4] != b"DKIF" {
                    return Err("no DKIF signature".into());
                }
                let header_len = u16::from_le_bytes([header[6], header[7]]);
                if header_len < 32 {
                    return Err(format!("header length {header_len}"));
                }
                u64::from(header_len)
            }
        };
        self.next = Some(at);
        let mut data = Vec::new();
        while at + 12 <= len {
            let mut frame_header = [0u8; 12];
            file.seek(SeekFrom::Start(at))
                .and_then(|_| file.read_exact(&mut frame_header))
                .map_err(|e| e.to_string())?;
            let size = u64::from(u32::from_le_bytes([
                frame_header[0],
                frame_header[1],
                frame_header[2],
                frame_header[3],
            ]));
            if size > MAX_IVF_FRAME {
                return Err(format!("frame of {size} bytes at offset {at}"));
            }
            if at + 12 + size > len {
                break;
            }
            data.resize(size as usize, 0);
            file.read_exact(&mut data).map_err(|e| e.to_string())?;
            at += 12 + size;
            self.frames.push(source.frames.get(&data[..]).copied());
            self.next = Some(at);
        }
        Ok(())
    }
}

/// The source's file, frame by frame: where each recorded frame comes from.
struct FileIndex {
    frames: HashMap<bytes::Bytes, u32>,
    /// Frames in one pass of the loop.
    len: usize,
}

impl FileIndex {
    fn open(path: &std::path::Path) -> Result<FileIndex> {
        let file = relay::source::VideoFile::open(path)
            .with_context(|| format!("reading {}", path.display()))?;
        let frames = file
            .frames()
            .iter()
            .zip(0u32..)
            .map(|(f, i)| (f.data.clone(), i))
            .collect();
        Ok(FileIndex {
            frames,
            len: file.frames().len(),
        })
    }

    /// Two frames of the file are the same bytes (a still picture): a
    /// recorded copy cannot be placed.
    fn ambiguous(&self) -> bool {
        self.frames.len() < self.len
    }
}

/// A process the driver started.
struct Proc {
    kind: Kind,
    name: String,
    child: Child,
    pid: u32,
    /// From `joined tree T as relay P`.
    peer: Option<String>,
    /// When the driver SIGKILLed it.
    killed_at: Option<Instant>,
    /// When it was seen gone, and how it ended.
    exited: Option<(Instant, ExitStatus)>,
    /// A first `media from the parent` line was seen.
    media: bool,
    record: Option<Recording>,
    data: Option<PathBuf>,
    /// (time, frames recorded) every `SAMPLE_EVERY`, leaves only.
    samples: Vec<(Instant, u64)>,
    tail: VecDeque<String>,
}

impl Proc {
    fn alive(&self) -> bool {
        self.exited.is_none()
    }

    /// Frames recorded by `t`, as the samples saw it.
    fn frames_at(&self, t: Instant) -> u64 {
        self.samples
            .iter()
            .take_while(|s| s.0 <= t)
            .last()
            .map_or(0, |s| s.1)
    }
}

struct Kill {
    at: Instant,
    victim: String,
    kind: Kind,
    peer: String,
    /// Whether the children come from a fresh snapshot or the last periodic one.
    fresh: bool,
}

/// A child of a killed node, and how it came back.
struct Orphan {
    kill: usize,
    peer: String,
    /// Its process, if the driver knew the peer.
    proc: Option<usize>,
    /// Frames it had recorded at the kill, if it records.
    frames_at_kill: Option<usize>,
    new_parent_at: Option<Instant>,
    /// `connected to parent` from another parent.
    connected_at: Option<Instant>,
    media_at: Option<Instant>,
    /// `asking the server for another parent` lines between kill and media.
    asked: u32,
    /// Killed by the driver before it recovered: no figure.
    cut_short: bool,
}

struct Snapshot {
    at: Instant,
    size: u64,
    max_depth: u64,
    children: HashMap<String, Vec<String>>,
    /// Nodes the server still holds though their connection is gone.
    disconnected: usize,
}

/// A process's open file descriptors.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fds {
    sockets: usize,
    /// Files, pipes, eventfds, epoll and timer descriptors.
    other: usize,
}

impl std::fmt::Display for Fds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sockets {}, other fds {}", self.sockets, self.other)
    }
}

/// The signalling server's gauges from `/metrics`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Gauges {
    peers: u64,
    connections: u64,
    trees: u64,
}

impl std::fmt::Display for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peers {}, connections {}, trees {}",
            self.peers, self.connections, self.trees
        )
    }
}

/// A reading polled until it stayed the same for `SETTLE_STABLE`.
#[derive(Clone, Copy)]
struct Settled<T> {
    value: T,
    /// From the first reading to the last change.
    after: Duration,
    /// False when `SETTLE_WITHIN` ran out first.
    stable: bool,
}

impl<T> Settled<T> {
    fn when(&self, from: &str) -> String {
        if self.stable {
            format!("settled {} ms after {from}", self.after.as_millis())
        } else {
            format!("still changing {} s after {from}", SETTLE_WITHIN.as_secs())
        }
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> Settled<U> {
        Settled {
            value: f(self.value),
            after: self.after,
            stable: self.stable,
        }
    }
}

/// What the long-lived processes and the server held before any churn.
#[derive(Default)]
struct Baseline {
    /// The source with no child.
    source: Option<Settled<Fds>>,
    /// The long-lived relay with only its parent.
    relay: Option<Settled<Fds>>,
    /// With the source alone in its tree.
    gauges: Option<Gauges>,
}

struct Crash {
    name: String,
    status: String,
    reason: String,
    tail: Vec<String>,
}

/// A tally of WARN and ERROR lines, by their text with ids and numbers masked.
#[derive(Default)]
struct WarnKind {
    count: u64,
    procs: HashSet<String>,
    example: String,
}

/// xorshift64*: a reproducible choice of victims without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Run {
    args: Args,
    bin: PathBuf,
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    tx: mpsc::Sender<Line>,
    rx: mpsc::Receiver<Line>,
    procs: Vec<Proc>,
    /// Wall clock and monotonic clock read together, to place log timestamps.
    base_sys: SystemTime,
    base: Instant,
    http: Option<String>,
    tree: Option<String>,
    source_stdin: Option<ChildStdin>,
    writer: Option<(Arc<AtomicBool>, JoinHandle<Vec<Instant>>)>,
    snapshots: Vec<Snapshot>,
    snapshot_errors: u64,
    kills: Vec<Kill>,
    orphans: Vec<Orphan>,
    crashes: Vec<Crash>,
    panics: Vec<String>,
    warns: BTreeMap<String, WarnKind>,
    asks: BTreeMap<String, u64>,
    relay_no: usize,
    leaf_no: usize,
    churn: Option<(Instant, Instant)>,
    next_sample: Instant,
    next_snapshot: Instant,
    next_progress: Instant,
    /// The relay that is never killed.
    long_lived: Option<usize>,
    baseline: Baseline,
    /// The gauges when the churn started and when the drain ended.
    gauges_around_churn: [Option<Gauges>; 2],
    source_file: FileIndex,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<bool> {
    if args.relays + args.leaves == 0 {
        bail!("--relays plus --leaves must be at least 1");
    }
    if args.kill_every.is_zero() || args.duration.is_zero() {
        bail!("--duration and --kill-every must be positive");
    }
    if args.k == 0 || args.k1 == 0 {
        bail!("--k and --k1 must be at least 1 (a relay with k = 0 is a leaf)");
    }
    if args.data_rate == 0 || args.data_rate > 1000 {
        bail!("--data-rate must be between 1 and 1000 lines per second");
    }
    // One killed relay's slots are gone until its replacement joins: below
    // this the server may answer `tree-full`, which is not what is measured.
    let slots = u64::from(args.k1) + (args.relays.saturating_sub(1) as u64) * u64::from(args.k);
    let members = (args.relays + args.leaves) as u64;
    if slots < members {
        eprintln!(
            "warning: {slots} child slots with one relay down for {members} members: \
             expect tree-full while a relay is being replaced"
        );
    }
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => {
            let exe = std::env::current_exe().context("locating this example")?;
            exe.parent()
                .and_then(|examples| examples.parent())
                .map(|dir| dir.join("peer-tree-relay"))
                .context("this example is not inside a target directory; pass --bin")?
        }
    };
    if !bin.is_file() {
        bail!(
            "{} is missing: run `cargo build --release --bins --examples` first (or pass --bin)",
            bin.display()
        );
    }
    if !args.file.is_file() {
        bail!("the sample {} is missing (--file)", args.file.display());
    }
    let seed = args.seed.unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    let source_file = FileIndex::open(&args.file)?;
    let dir = std::env::temp_dir().join(format!("ptr-churn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let (tx, rx) = mpsc::channel();
    let now = Instant::now();
    let mut r = Run {
        bin,
        dir: dir.clone(),
        rt,
        tx,
        rx,
        procs: Vec::new(),
        base_sys: SystemTime::now(),
        base: now,
        http: None,
        tree: None,
        source_stdin: None,
        writer: None,
        snapshots: Vec::new(),
        snapshot_errors: 0,
        kills: Vec::new(),
        orphans: Vec::new(),
        crashes: Vec::new(),
        panics: Vec::new(),
        warns: BTreeMap::new(),
        asks: BTreeMap::new(),
        relay_no: 0,
        leaf_no: 0,
        churn: None,
        next_sample: now,
        next_snapshot: now,
        next_progress: now,
        long_lived: None,
        baseline: Baseline::default(),
        gauges_around_churn: [None, None],
        source_file,
        args,
    };
    println!(
        "churn: {} relays (k={}) + {} leaves under a source (k1={}); churn {:?}, a kill every \
         {:?} (+-25%); seed {seed}; {} CPUs, load average {}; scratch {}",
        r.args.relays,
        r.args.k,
        r.args.leaves,
        r.args.k1,
        r.args.duration,
        r.args.kill_every,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg(),
        dir.display()
    );
    let outcome = r.drive(Rng::new(seed));
    let mut ok = match &outcome {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: {e:#}");
            false
        }
    };
    ok &= r.report_and_shutdown();
    if r.args.keep || !ok {
        println!("logs, recordings and data files kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ok)
}

impl Run {
    fn drive(&mut self, mut rng: Rng) -> Result<()> {
        let setup_start = Instant::now();
        let setup_deadline = setup_start + self.args.setup_timeout;
        self.start_server()?;
        let source = self.start_source()?;
        // What the churn is compared with, each read before its process has
        // a child: the source's descriptors and the server's gauges with the
        // source alone, then the long-lived relay's with only its parent.
        let alone = self.settle(|r| Some((r.fds(source)?, r.gauges()?)), |_| true);
        self.baseline.source = alone.map(|s| s.map(|v| v.0));
        self.baseline.gauges = alone.map(|s| s.value.1);
        if self.args.relays > 0 {
            let p = self.spawn_member(Kind::Relay)?;
            self.long_lived = Some(p);
            if !self.wait_for(setup_deadline, |r| r.procs[p].media) {
                eprintln!("warning: the long-lived relay had no media within --setup-timeout");
            }
            self.baseline.relay = self.settle(|r| r.fds(p), |_| true);
        }
        for _ in 1..self.args.relays {
            self.spawn_member(Kind::Relay)?;
        }
        // Relays first, so that they take the slots near the top.
        let relays_joined = self.wait_for(setup_deadline, |r| {
            r.live(Kind::Relay).all(|p| r.procs[p].peer.is_some())
        });
        if !relays_joined {
            eprintln!("warning: not every relay joined within --setup-timeout");
        }
        for _ in 0..self.args.leaves {
            self.spawn_member(Kind::Leaf)?;
        }
        let all_recording = self.wait_for(setup_deadline, |r| {
            r.live(Kind::Leaf)
                .all(|p| r.procs[p].samples.last().is_some_and(|s| s.1 > 0))
        });
        let recording = self
            .live(Kind::Leaf)
            .filter(|&p| self.procs[p].samples.last().is_some_and(|s| s.1 > 0))
            .count();
        println!(
            "setup: {} processes started in {:.1} s; {recording} of {} leaves recording{}",
            self.procs.len(),
            setup_start.elapsed().as_secs_f64(),
            self.args.leaves,
            if all_recording {
                ""
            } else {
                " (setup timed out; churn starts anyway)"
            }
        );
        let setup_snapshot = self.snapshot();
        if let Some(s) = &setup_snapshot {
            println!("        tree size {}, max depth {}", s.size, s.max_depth);
        }
        self.gauges_around_churn[0] = self.gauges();
        let start = Instant::now();
        let end = start + self.args.duration;
        self.churn = Some((start, end));
        self.next_progress = start + PROGRESS_EVERY;
        // Kills on an exact period that is a multiple of the file's keyframe
        // interval would all land at the same keyframe phase, and recovery
        // (which waits for a keyframe) would look constant: each kill is
        // moved by up to a quarter period either way.
        let quarter = self.args.kill_every / 4;
        for n in 1u32.. {
            let jitter = Duration::from_nanos(rng.next() % (2 * quarter.as_nanos() as u64).max(1));
            let at = start + self.args.kill_every * n + jitter;
            let Some(at) = at.checked_sub(quarter) else {
                break;
            };
            if at >= end {
                break;
            }
            self.service(at);
            self.kill_one(&mut rng)?;
        }
        self.service(end);
        // No new lines in the drain: what is still in flight arrives, and
        // the loss figure counts only lines a leaf had time to get.
        self.stop_writer_flag();
        self.service(end + self.args.drain);
        self.gauges_around_churn[1] = self.gauges();
        Ok(())
    }

    // -----------------------------------------------------------------
    // Processes

    fn spawn(&mut self, kind: Kind, name: String, args: &[String], stdin: bool) -> Result<usize> {
        let log_path = self.dir.join(format!("{name}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("RUST_LOG", &self.args.log)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(if matches!(kind, Kind::Signal | Kind::Source) {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} ({name})", self.bin.display()))?;
        let idx = self.procs.len();
        if let Some(err) = child.stderr.take() {
            pipe_reader(err, Some(log), idx, false, self.tx.clone());
        }
        if let Some(out) = child.stdout.take() {
            let out_log = File::create(self.dir.join(format!("{name}.out"))).ok();
            pipe_reader(out, out_log, idx, true, self.tx.clone());
        }
        if stdin {
            self.source_stdin = child.stdin.take();
        }
        self.procs.push(Proc {
            kind,
            name,
            pid: child.id(),
            child,
            peer: None,
            killed_at: None,
            exited: None,
            media: false,
            record: None,
            data: None,
            samples: Vec::new(),
            tail: VecDeque::new(),
        });
        Ok(idx)
    }

    fn start_server(&mut self) -> Result<()> {
        let args: Vec<String> = [
            "signal",
            "--listen",
            "127.0.0.1:0",
            "--k",
            &self.args.k.to_string(),
            "--k1",
            &self.args.k1.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        self.spawn(Kind::Signal, "signal".into(), &args, false)?;
        let deadline = Instant::now() + START_TIMEOUT;
        if !self.wait_for(deadline, |r| r.http.is_some()) {
            bail!("the signalling server did not print `listening on ADDR` within 20 s");
        }
        Ok(())
    }

    fn start_source(&mut self) -> Result<usize> {
        let url = self.ws_url();
        let file = self
            .args
            .file
            .to_str()
            .context("the sample's path is not UTF-8")?
            .to_owned();
        let args: Vec<String> = [
            "source",
            "--file",
            &file,
            "--loop",
            "--signal",
            &url,
            "--k1",
            &self.args.k1.to_string(),
            "--data-in",
            "-",
        ]
        .map(str::to_owned)
        .to_vec();
        let idx = self.spawn(Kind::Source, "source".into(), &args, true)?;
        let deadline = Instant::now() + START_TIMEOUT;
        if !self.wait_for(deadline, |r| r.tree.is_some()) {
            bail!("the source did not print `tree: <id>` within 20 s");
        }
        let stdin = self
            .source_stdin
            .take()
            .context("the source's stdin was not captured")?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = data_writer(stdin, self.args.data_rate, stop.clone());
        self.writer = Some((stop, handle));
        Ok(idx)
    }

    fn spawn_member(&mut self, kind: Kind) -> Result<usize> {
        let tree = self.tree.clone().context("no tree yet")?;
        let url = self.ws_url();
        let (name, k) = match kind {
            Kind::Relay => {
                self.relay_no += 1;
                (format!("relay-{:02}", self.relay_no), self.args.k)
            }
            _ => {
                self.leaf_no += 1;
                (format!("leaf-{:02}", self.leaf_no), 0)
            }
        };
        let mut args: Vec<String> = vec![
            "join".into(),
            tree,
            "--signal".into(),
            url,
            "--k".into(),
            k.to_string(),
        ];
        let (mut record, mut data) = (None, None);
        if kind == Kind::Leaf {
            let ivf = self.dir.join(format!("{name}.ivf"));
            let txt = self.dir.join(format!("{name}.txt"));
            for (flag, path) in [("--record", &ivf), ("--data-out", &txt)] {
                args.push(flag.into());
                args.push(path.to_str().context("scratch path is not UTF-8")?.into());
            }
            record = Some(Recording::new(ivf));
            data = Some(txt);
        }
        let idx = self.spawn(kind, name, &args, false)?;
        self.procs[idx].record = record;
        self.procs[idx].data = data;
        Ok(idx)
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http.as_deref().unwrap_or("127.0.0.1:0"))
    }

    /// Live members of a kind.
    fn live(&self, kind: Kind) -> impl Iterator<Item = usize> + '_ {
        (0..self.procs.len()).filter(move |&p| self.procs[p].kind == kind && self.procs[p].alive())
    }

    /// A live process's descriptors.
    fn fds(&self, p: usize) -> Option<Fds> {
        let q = &self.procs[p];
        if !q.alive() {
            return None;
        }
        let (sockets, other) = procfs::descriptors(q.pid)?;
        Some(Fds {
            sockets: sockets.len(),
            other,
        })
    }

    fn gauges(&self) -> Option<Gauges> {
        let addr = self.http.as_deref()?;
        let got = self
            .rt
            .block_on(signalling::client::http_get(addr, "/metrics", HTTP_TIMEOUT));
        let Ok((200, body)) = got else {
            return None;
        };
        let gauge = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        Some(Gauges {
            peers: gauge("peer_tree_peers")?,
            connections: gauge("peer_tree_connections")?,
            trees: gauge("peer_tree_trees")?,
        })
    }

    /// Reads `read` every `SETTLE_POLL`, servicing the processes in between,
    /// until it has stayed the same for `SETTLE_STABLE` with a value that is
    /// `enough`, or `SETTLE_WITHIN` has passed; `None` if it never read.
    fn settle<T: Copy + PartialEq>(
        &mut self,
        read: impl Fn(&Run) -> Option<T>,
        enough: impl Fn(&T) -> bool,
    ) -> Option<Settled<T>> {
        let start = Instant::now();
        let deadline = start + SETTLE_WITHIN;
        let mut last: Option<(T, Instant)> = None;
        loop {
            let now = Instant::now();
            if let Some(v) = read(self) {
                if last.is_none_or(|(l, _)| l != v) {
                    last = Some((v, now));
                }
            }
            let stable = last.is_some_and(|(_, since)| now - since >= SETTLE_STABLE);
            if (stable && last.is_some_and(|(v, _)| enough(&v))) || now >= deadline {
                return last.map(|(value, since)| Settled {
                    value,
                    after: since - start,
                    stable,
                });
            }
            self.service(now + SETTLE_POLL);
        }
    }

    /// SIGKILLs the live members `which` picks and waits for each; how many.
    fn stop(&mut self, which: impl Fn(usize, &Proc) -> bool) -> usize {
        let mut stopped = 0;
        for (i, p) in self.procs.iter_mut().enumerate() {
            if p.alive() && which(i, p) {
                let _ = p.child.kill();
                if let Ok(st) = p.child.wait() {
                    p.exited = Some((Instant::now(), st));
                    stopped += 1;
                }
            }
        }
        stopped
    }

    fn orphan_name<'a>(&'a self, o: &'a Orphan) -> &'a str {
        o.proc.map_or(&o.peer, |p| &self.procs[p].name)
    }

    fn kill_one(&mut self, rng: &mut Rng) -> Result<()> {
        let candidates: Vec<usize> = (0..self.procs.len())
            .filter(|&p| {
                let q = &self.procs[p];
                matches!(q.kind, Kind::Relay | Kind::Leaf)
                    && q.alive()
                    && q.peer.is_some()
                    && Some(p) != self.long_lived
            })
            .collect();
        if candidates.is_empty() {
            println!("  (no joined member to kill this time)");
            return Ok(());
        }
        let victim = candidates[rng.below(candidates.len())];
        let (fresh, children) = {
            let peer = self.procs[victim].peer.clone().unwrap_or_default();
            match self.snapshot() {
                Some(s) => (true, s.children.get(&peer).cloned().unwrap_or_default()),
                None => (
                    false,
                    self.snapshots
                        .last()
                        .and_then(|s| s.children.get(&peer).cloned())
                        .unwrap_or_default(),
                ),
            }
        };
        let at = Instant::now();
        let p = &mut self.procs[victim];
        let _ = p.child.kill();
        let status = p.child.wait();
        p.killed_at = Some(at);
        if let Ok(st) = status {
            p.exited = Some((Instant::now(), st));
        }
        let peer = p.peer.clone().unwrap_or_default();
        let kind = p.kind;
        let victim_name = p.name.clone();
        for o in &mut self.orphans {
            if o.peer == peer && o.media_at.is_none() {
                o.cut_short = true;
            }
        }
        let kill = self.kills.len();
        let first_orphan = self.orphans.len();
        for child in children {
            let proc = self
                .procs
                .iter()
                .position(|q| q.peer.as_deref() == Some(child.as_str()));
            // What came before the heal is all from the dead parent.
            let frames_at_kill = proc
                .and_then(|q| self.procs[q].record.as_mut())
                .map(|rec| rec.poll(&self.source_file) as usize);
            self.orphans.push(Orphan {
                kill,
                peer: child,
                proc,
                frames_at_kill,
                new_parent_at: None,
                connected_at: None,
                media_at: None,
                asked: 0,
                cut_short: false,
            });
        }
        let children_names: Vec<String> = self.orphans[first_orphan..]
            .iter()
            .map(|o| format!("{}={}", self.orphan_name(o), o.peer))
            .collect();
        self.journal(
            "kills.txt",
            &format!(
                "{} kill #{} {victim_name} {peer} children [{}]{}",
                wall_now(),
                kill + 1,
                children_names.join(", "),
                if fresh {
                    ""
                } else {
                    " (from an older snapshot)"
                }
            ),
        );
        self.kills.push(Kill {
            at,
            victim: victim_name,
            kind,
            peer,
            fresh,
        });
        self.spawn_member(kind)?;
        Ok(())
    }

    // -----------------------------------------------------------------
    // The loop: log lines, samples, snapshots, exits, progress

    /// Pumps log lines and does what falls due until `until`.
    fn service(&mut self, until: Instant) {
        loop {
            let now = Instant::now();
            if now >= self.next_sample {
                self.sample();
                self.check_exits();
                self.next_sample = now + SAMPLE_EVERY;
            }
            if now >= self.next_snapshot {
                if let Some(s) = self.snapshot() {
                    self.snapshots.push(s);
                }
                self.next_snapshot = now + SNAPSHOT_EVERY;
            }
            let churning = self
                .churn
                .is_some_and(|(_, end)| now < end + self.args.drain);
            if churning && now >= self.next_progress {
                self.progress();
                self.next_progress = now + PROGRESS_EVERY;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            let wake = until.min(self.next_sample).min(self.next_snapshot);
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(line) => {
                    self.absorb(line);
                    // Drain what is queued before the next duty.
                    while let Ok(line) = self.rx.try_recv() {
                        self.absorb(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                }
            }
        }
    }

    /// Services until `done` holds or `deadline` passes; whether it held.
    fn wait_for(&mut self, deadline: Instant, done: impl Fn(&Run) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.service((Instant::now() + Duration::from_millis(50)).min(deadline));
        }
    }

    fn sample(&mut self) {
        let now = Instant::now();
        for p in &mut self.procs {
            if !p.alive() {
                continue;
            }
            if let Some(rec) = p.record.as_mut() {
                let frames = rec.poll(&self.source_file);
                p.samples.push((now, frames));
            }
        }
    }

    fn check_exits(&mut self) {
        for p in &mut self.procs {
            if !p.alive() {
                continue;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exited = Some((Instant::now(), status));
                let reason = exit_reason(p);
                println!("  !! {} exited by itself: {status}, {reason}", p.name);
                self.crashes.push(Crash {
                    name: p.name.clone(),
                    status: status.to_string(),
                    reason,
                    tail: p.tail.iter().cloned().collect(),
                });
            }
        }
    }

    fn snapshot(&mut self) -> Option<Snapshot> {
        let (Some(addr), Some(tree)) = (self.http.clone(), self.tree.clone()) else {
            return None;
        };
        let path = format!("/api/trees/{tree}");
        let got = self
            .rt
            .block_on(signalling::client::http_get(&addr, &path, HTTP_TIMEOUT));
        let parsed = match got {
            Ok((200, body)) => {
                // Kept for reading the tree's shape at a kill afterwards.
                self.journal(
                    "snapshots.jsonl",
                    &format!("{{\"wall\":\"{}\",\"tree\":{}}}", wall_now(), body.trim()),
                );
                parse_snapshot(&body, Instant::now())
            }
            _ => None,
        };
        if parsed.is_none() {
            self.snapshot_errors += 1;
        }
        parsed
    }

    /// Appends a line to a file in the scratch directory; losing it costs
    /// only the record, so errors are ignored.
    fn journal(&self, name: &str, line: &str) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name));
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Maps a line's own RFC 3339 timestamp onto the monotonic clock; the
    /// arrival time when there is none or it is implausible (a stepped
    /// clock, a line that is not a log line).
    fn line_time(&self, text: &str, arrived: Instant) -> Instant {
        let Some(stamp) = text
            .split_whitespace()
            .next()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
        else {
            return arrived;
        };
        let t = match stamp.duration_since(self.base_sys) {
            Ok(d) => self.base.checked_add(d),
            Err(e) => self.base.checked_sub(e.duration()),
        };
        match t {
            Some(t)
                if t <= arrived + Duration::from_millis(50)
                    && arrived.saturating_duration_since(t) < Duration::from_secs(10) =>
            {
                t
            }
            _ => arrived,
        }
    }

    fn absorb(&mut self, line: Line) {
        let Some(p) = self.procs.get_mut(line.proc) else {
            return;
        };
        let text = line.text;
        if p.tail.len() == TAIL_LINES {
            p.tail.pop_front();
        }
        p.tail.push_back(text.clone());
        let (name, kind) = (p.name.clone(), p.kind);
        if text.contains("panicked") {
            self.panics.push(format!("{name}: {text}"));
        }
        if line.stdout {
            match kind {
                Kind::Signal => {
                    if let Some(addr) = text.trim().strip_prefix("listening on ") {
                        self.http.get_or_insert_with(|| addr.trim().to_owned());
                    }
                }
                Kind::Source => {
                    if let Some(tree) = text.trim().strip_prefix("tree:") {
                        self.tree.get_or_insert_with(|| tree.trim().to_owned());
                    }
                }
                _ => {}
            }
            return;
        }
        let at = self.line_time(&text, line.arrived);
        let level = text.split_whitespace().nth(1).unwrap_or("");
        if level == "WARN" || level == "ERROR" {
            let w = self.warns.entry(warn_key(&text)).or_default();
            w.count += 1;
            w.procs.insert(name.clone());
            if w.example.is_empty() {
                w.example = format!("{name}: {}", shorten(&text, 300));
            }
        }
        if text.contains("joined tree ") {
            if let Some(rest) = text.split(" as relay ").nth(1) {
                self.procs[line.proc].peer = rest.split_whitespace().next().map(str::to_owned);
            }
            return;
        }
        let Some(me) = self.procs[line.proc].peer.clone() else {
            return;
        };
        if text.contains(" new parent ") {
            for o in &mut self.orphans {
                if o.peer == me && o.new_parent_at.is_none() && self.kills[o.kill].at <= at {
                    o.new_parent_at = Some(at);
                }
            }
        } else if text.contains(" connected to parent ") {
            let parent = field(&text, "parent").unwrap_or("");
            for o in &mut self.orphans {
                let k = &self.kills[o.kill];
                if o.peer == me && o.connected_at.is_none() && k.at <= at && parent != k.peer {
                    o.connected_at = Some(at);
                }
            }
        } else if text.contains("media from the parent ") && text.contains(" after its offer") {
            self.procs[line.proc].media = true;
            let parent = field(&text, "parent").unwrap_or("");
            for o in &mut self.orphans {
                let k = &self.kills[o.kill];
                if o.peer == me && o.media_at.is_none() && k.at <= at && parent != k.peer {
                    o.media_at = Some(at);
                }
            }
        } else if let Some((before, _)) = text.split_once("; asking the server for another parent")
        {
            // The reason is the message after the target, without its figure.
            let reason = before
                .split_once(": ")
                .map_or(before, |(_, m)| m)
                .split(" for ")
                .next()
                .unwrap_or("")
                .to_owned();
            *self.asks.entry(reason).or_default() += 1;
            for o in &mut self.orphans {
                if o.peer == me && o.media_at.is_none() && self.kills[o.kill].at <= at {
                    o.asked += 1;
                }
            }
        }
    }

    fn progress(&mut self) {
        let Some((start, _)) = self.churn else {
            return;
        };
        let recovered = self.orphans.iter().filter(|o| o.media_at.is_some()).count();
        let flowing = self
            .live(Kind::Leaf)
            .filter(|&p| {
                let s = &self.procs[p].samples;
                // Grew over the last second (four samples).
                s.len() >= 5 && s[s.len() - 1].1 > s[s.len() - 5].1
            })
            .count();
        let (size, depth) = self
            .snapshots
            .last()
            .map_or((0, 0), |s| (s.size, s.max_depth));
        println!(
            "[{:>4.0}s] kills {:>3}  orphans {:>3} (media again {:>3})  tree size {size:>3} \
             depth {depth}  leaves flowing {flowing}/{}  crashes {}  panics {}",
            start.elapsed().as_secs_f64(),
            self.kills.len(),
            self.orphans.len(),
            recovered,
            self.live(Kind::Leaf).count(),
            self.crashes.len(),
            self.panics.len(),
        );
    }

    fn stop_writer_flag(&mut self) {
        if let Some((stop, _)) = &self.writer {
            stop.store(true, Ordering::Relaxed);
        }
    }

    // -----------------------------------------------------------------
    // The end

    /// Prints the figures, stops the members and checks what they leave
    /// behind, kills and reaps everything, checks for leftovers; whether
    /// every must-be-zero figure was zero.
    fn report_and_shutdown(&mut self) -> bool {
        self.stop_writer_flag();
        let sent: Vec<Instant> = match self.writer.take() {
            Some((_, h)) => h.join().unwrap_or_default(),
            None => Vec::new(),
        };
        // The last frames a killed leaf wrote are read too.
        for p in &mut self.procs {
            if let Some(rec) = p.record.as_mut() {
                rec.poll(&self.source_file);
            }
        }
        let (orphan_ok, recovery_p95) = self.report_recovery();
        self.report_heal_frames();
        self.report_flowing();
        self.report_data(&sent);
        self.report_depth();
        self.report_warnings();
        let leaks = self.check_leaks();

        // Shutdown: SIGKILL, then wait for each, so none stays a zombie.
        let shutdown_start = Instant::now();
        self.source_stdin = None;
        let reaped = self.stop(|_, _| true);
        let left = leftover_children();
        println!(
            "\nshutdown: {} processes started over the run, {reaped} killed at the end, all \
             waited for in {} ms; left over (alive or zombie): {}",
            self.procs.len(),
            shutdown_start.elapsed().as_millis(),
            if left.is_empty() {
                "0".to_owned()
            } else {
                format!("{} ({left:?})", left.len())
            }
        );

        println!("\n== Verdict (load average now {}) ==", loadavg());
        let crashes = self.crashes.len();
        println!("crashes (exits not caused by the driver): {crashes}");
        for c in &self.crashes {
            println!("    {}: {}, {}", c.name, c.status, c.reason);
            for l in c.tail.iter().rev().take(5).rev() {
                println!("        {}", shorten(l, 240));
            }
        }
        println!("log lines with `panicked`: {}", self.panics.len());
        for l in self.panics.iter().take(5) {
            println!("    {}", shorten(l, 300));
        }
        for (line, _) in &leaks {
            println!("{line}");
        }
        match recovery_p95 {
            Some(p95) => println!(
                "target: p95 recovery under {} ms on loopback: p95 {} ms -> {}",
                TARGET_P95.as_millis(),
                p95.as_millis(),
                if p95 < TARGET_P95 && orphan_ok {
                    "met"
                } else if p95 < TARGET_P95 {
                    "met for those that recovered, but some never did"
                } else {
                    "MISSED"
                }
            ),
            None => println!("target: p95 recovery under 1 s: no orphan recovered, nothing to say"),
        }
        crashes == 0 && self.panics.is_empty() && left.is_empty() && leaks.iter().all(|l| l.1)
    }

    fn report_recovery(&self) -> (bool, Option<Duration>) {
        let relays = self.kills.iter().filter(|k| k.kind == Kind::Relay).count();
        println!(
            "\n== Kills: {} ({} relays, {} leaves); {} orphaned members (children of the \
             killed){} ==",
            self.kills.len(),
            relays,
            self.kills.len() - relays,
            self.orphans.len(),
            if self.kills.iter().all(|k| k.fresh) {
                String::new()
            } else {
                format!(
                    "; {} kills used a snapshot up to 1 s old",
                    self.kills.iter().filter(|k| !k.fresh).count()
                )
            }
        );
        let mut rec: Vec<Duration> = Vec::new();
        let mut healed: Vec<Duration> = Vec::new();
        let mut connected: Vec<Duration> = Vec::new();
        let mut keyframe_wait: Vec<Duration> = Vec::new();
        let mut never = Vec::new();
        let mut cut = 0;
        for o in &self.orphans {
            let k = &self.kills[o.kill];
            if let Some(t) = o.new_parent_at {
                healed.push(t.saturating_duration_since(k.at));
            }
            if let Some(c) = o.connected_at {
                connected.push(c.saturating_duration_since(k.at));
                if let Some(m) = o.media_at {
                    keyframe_wait.push(m.saturating_duration_since(c));
                }
            }
            match o.media_at {
                Some(t) => rec.push(t.saturating_duration_since(k.at)),
                None if o.cut_short => cut += 1,
                None => never.push(o),
            }
        }
        let p95 = percentile(&rec, 0.95);
        println!(
            "recovery (kill -> first `media from the parent` from another parent), per orphan: \
             n {}, p50 {}, p95 {}, max {}; never recovered within the run: {}; killed \
             before recovering: {cut}",
            rec.len(),
            ms(percentile(&rec, 0.5)),
            ms(p95),
            ms(rec.iter().max().copied()),
            never.len()
        );
        println!(
            "server heal (kill -> `new parent` at the orphan): n {} of {}, p50 {}, max {}",
            healed.len(),
            self.orphans.len(),
            ms(percentile(&healed, 0.5)),
            ms(healed.iter().max().copied())
        );
        println!(
            "    of which: kill -> `connected to parent` (new connection up) p50 {}, p95 {}, max \
             {}; connected -> first media (the new parent's wait for a keyframe) p50 {}, p95 \
             {}, max {}",
            ms(percentile(&connected, 0.5)),
            ms(percentile(&connected, 0.95)),
            ms(connected.iter().max().copied()),
            ms(percentile(&keyframe_wait, 0.5)),
            ms(percentile(&keyframe_wait, 0.95)),
            ms(keyframe_wait.iter().max().copied()),
        );
        if !rec.is_empty() {
            let mut sorted = rec.clone();
            sorted.sort();
            let ms_list: Vec<String> = sorted.iter().map(|d| d.as_millis().to_string()).collect();
            println!("    all, ms: {}", ms_list.join(" "));
        }
        // The slowest ones, with what happened in between, for the logs.
        let mut slow: Vec<&Orphan> = self
            .orphans
            .iter()
            .filter(|o| o.media_at.is_some())
            .collect();
        slow.sort_by_key(|o| {
            std::cmp::Reverse(
                o.media_at
                    .map(|t| t.saturating_duration_since(self.kills[o.kill].at)),
            )
        });
        for o in slow.iter().take(5).chain(never.iter()) {
            let k = &self.kills[o.kill];
            let since = |t: Option<Instant>| {
                t.map_or("never".to_owned(), |t| {
                    format!("{} ms", t.saturating_duration_since(k.at).as_millis())
                })
            };
            let exit = self
                .procs
                .iter()
                .find(|p| p.peer.as_deref() == Some(o.peer.as_str()))
                .filter(|p| p.killed_at.is_none() && p.exited.is_some())
                .map(|p| format!("; it exited by itself: {}", exit_reason(p)))
                .unwrap_or_default();
            println!(
                "    kill #{} of {} at {:.1} s: child {} `new parent` {}, connected {}, media \
                 {}{}{exit}",
                o.kill + 1,
                k.victim,
                self.churn.map_or(0.0, |(s, _)| k
                    .at
                    .saturating_duration_since(s)
                    .as_secs_f64()),
                self.orphan_name(o),
                since(o.new_parent_at),
                since(o.connected_at),
                since(o.media_at),
                if o.asked > 0 {
                    format!(", asked for another parent {} times first", o.asked)
                } else {
                    String::new()
                }
            );
        }
        if !self.asks.is_empty() {
            let list: Vec<String> = self
                .asks
                .iter()
                .map(|(k, v)| format!("{v} x {k}"))
                .collect();
            println!(
                "relays asking for another parent (all members, whole run): {}",
                list.join("; ")
            );
        }
        (never.is_empty(), p95)
    }

    /// Frames recorded twice and frames missing across each heal, per
    /// recovered orphan that records. Its window runs from a group of
    /// pictures' greatest age (`GOP_MAX_AGE`) before the kill, so that it
    /// holds every frame the new parent's replay can repeat, to as long after
    /// its first media from the new parent, so that it holds frames from the
    /// new parent even when its recorder waited for a keyframe. The same
    /// orphan's kills before and after bound it: what it recorded before the
    /// last one came from the parent before, so each seam is counted once.
    fn report_heal_frames(&self) {
        let reach = relay::gop::GOP_MAX_AGE;
        let mut rows: Vec<(usize, HealFrames)> = Vec::new();
        let (mut no_recording, mut unrecovered, mut nothing_after) = (0, 0, 0);
        let mut last_kill: HashMap<usize, usize> = HashMap::new();
        for (i, o) in self.orphans.iter().enumerate() {
            let (Some(p), Some(at_kill)) = (o.proc, o.frames_at_kill) else {
                no_recording += 1;
                continue;
            };
            let before = last_kill.insert(p, at_kill).unwrap_or(0);
            let q = &self.procs[p];
            let Some(rec) = q.record.as_ref() else {
                no_recording += 1;
                continue;
            };
            let Some(media) = o.media_at else {
                unrecovered += 1;
                continue;
            };
            let frames_at = |t: Instant| match q.samples.last() {
                Some(&(last, _)) if t <= last => q.frames_at(t) as usize,
                // Past the last sample: all it wrote.
                _ => rec.frames.len(),
            };
            let kill_at = self.kills[o.kill].at;
            let from = kill_at
                .checked_sub(reach)
                .map_or(0, frames_at)
                .max(before)
                .min(at_kill);
            let next_heal = self.orphans[i + 1..]
                .iter()
                .find(|n| n.proc == Some(p))
                .and_then(|n| n.frames_at_kill);
            let to = frames_at(media + reach)
                .min(next_heal.unwrap_or(usize::MAX))
                .min(rec.frames.len());
            if to <= at_kill {
                nothing_after += 1;
                continue;
            }
            rows.push((i, heal_frames(&rec.frames[from..to], self.source_file.len)));
        }
        let reach = reach.as_secs_f64();
        println!(
            "\n== Frames across each heal, per recovered orphan that records: {} of {} orphans \
             ({no_recording} record nothing; {unrecovered} did not recover or were killed first; \
             {nothing_after} recorded nothing after the heal in time); each from {reach} s before \
             the kill to {reach} s after its first media from the new parent ==",
            rows.len(),
            self.orphans.len(),
        );
        if self.source_file.ambiguous() {
            println!(
                "    the source's file holds the same frame twice: recorded frames cannot be \
                 placed, no figures"
            );
            return;
        }
        if rows.is_empty() {
            return;
        }
        let repeated: Vec<usize> = rows.iter().map(|r| r.1.repeated).collect();
        let missing: Vec<usize> = rows.iter().map(|r| r.1.missing).collect();
        let summary = |v: &[usize]| {
            format!(
                "median {}, max {}, total {}; orphans with any {}",
                percentile(v, 0.5).unwrap_or(0),
                v.iter().max().copied().unwrap_or(0),
                v.iter().sum::<usize>(),
                v.iter().filter(|&&n| n > 0).count()
            )
        };
        println!(
            "repeated (recorded twice: a new parent's replay passed on): {}",
            summary(&repeated)
        );
        println!(
            "missing (source frames in the window's span not held): {}",
            summary(&missing)
        );
        let foreign: usize = rows.iter().map(|r| r.1.foreign).sum();
        if foreign > 0 {
            println!("    recorded frames that are none of the file's: {foreign}");
        }
        let list: Vec<String> = rows
            .iter()
            .map(|(i, h)| {
                let o = &self.orphans[*i];
                format!(
                    "{} (kill #{} of {}) {}/{}",
                    self.orphan_name(o),
                    o.kill + 1,
                    self.kills[o.kill].victim,
                    h.repeated,
                    h.missing
                )
            })
            .collect();
        println!("    per orphan, repeated/missing: {}", list.join(", "));
    }

    fn report_flowing(&self) {
        let Some((start, end)) = self.churn else {
            return;
        };
        let (mut total, mut flowing) = (0u64, 0u64);
        let (mut intervals, mut grew) = (0u64, 0u64);
        let mut per_leaf: Vec<(String, u64, u64)> = Vec::new();
        let mut broken = Vec::new();
        for p in &self.procs {
            if p.kind != Kind::Leaf {
                continue;
            }
            if let Some(why) = p.record.as_ref().and_then(|r| r.broken.as_ref()) {
                broken.push(format!("{}: {why}", p.name));
            }
            let Some(first) = p.samples.iter().find(|s| s.1 > 0).map(|s| s.0) else {
                continue;
            };
            let Some(last) = p.samples.last().map(|s| s.0) else {
                continue;
            };
            let from = first.max(start);
            let to = last.min(end);
            let (mut t, mut n, mut f) = (from, 0, 0);
            while t + Duration::from_secs(1) <= to {
                let next = t + Duration::from_secs(1);
                n += 1;
                if p.frames_at(next) > p.frames_at(t) {
                    f += 1;
                }
                t = next;
            }
            total += n;
            flowing += f;
            for w in p.samples.windows(2) {
                if w[0].0 >= from && w[1].0 <= to {
                    intervals += 1;
                    grew += u64::from(w[1].1 > w[0].1);
                }
            }
            per_leaf.push((p.name.clone(), f, n));
        }
        println!(
            "\n== Media: {flowing} of {total} leaf-seconds flowing ({:.1}%) over {} leaves \
             (recordings sampled every {} ms, churn phase only, after each leaf's first frame) ==",
            if total == 0 {
                0.0
            } else {
                100.0 * flowing as f64 / total as f64
            },
            per_leaf.len(),
            SAMPLE_EVERY.as_millis()
        );
        println!(
            "    finer: {grew} of {intervals} sample intervals ({:.1}%) had new frames",
            if intervals == 0 {
                0.0
            } else {
                100.0 * grew as f64 / intervals as f64
            }
        );
        let mut worst: Vec<&(String, u64, u64)> = per_leaf.iter().filter(|l| l.1 < l.2).collect();
        worst.sort_by_key(|l| std::cmp::Reverse(l.2 - l.1));
        if !worst.is_empty() {
            let list: Vec<String> = worst
                .iter()
                .take(8)
                .map(|(n, f, t)| format!("{n} {}/{t}", t - f))
                .collect();
            println!(
                "    seconds without media, worst leaves: {}",
                list.join(", ")
            );
        }
        let never: Vec<&str> = self
            .procs
            .iter()
            .filter(|p| p.kind == Kind::Leaf && !p.samples.iter().any(|s| s.1 > 0))
            .map(|p| p.name.as_str())
            .collect();
        if !never.is_empty() {
            println!(
                "    leaves that never recorded a frame: {} ({})",
                never.len(),
                never.join(", ")
            );
        }
        for b in broken {
            println!("    unreadable recording: {b}");
        }
    }

    fn report_data(&self, sent: &[Instant]) {
        let last = sent.len() as u64;
        let mut losses: Vec<u64> = Vec::new();
        let (mut total_lost, mut total_expected, mut disorder) = (0u64, 0u64, 0u64);
        let mut empty = Vec::new();
        let mut too_late = 0;
        let mut worst: Vec<(String, u64, u64)> = Vec::new();
        for p in &self.procs {
            if p.kind != Kind::Leaf || p.killed_at.is_some() || p.exited.is_some() {
                continue;
            }
            let Some(path) = &p.data else { continue };
            let text = std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let seqs: Vec<u64> = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("seq-"))
                .filter_map(|n| n.parse().ok())
                .filter(|&n| n >= 1 && n <= last)
                .collect();
            let Some(&first) = seqs.first() else {
                // A leaf that had video only in the last second of data
                // lines had no time to get one.
                let recording = p.samples.iter().find(|s| s.1 > 0).map(|s| s.0);
                let late = match (recording, sent.last()) {
                    (Some(r), Some(&l)) => r + Duration::from_secs(1) > l,
                    _ => true,
                };
                if late {
                    too_late += 1;
                } else {
                    empty.push(p.name.clone());
                }
                continue;
            };
            disorder += seqs.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
            let got: HashSet<u64> = seqs.iter().copied().collect();
            let expected = last + 1 - first;
            let lost = (first..=last).filter(|n| !got.contains(n)).count() as u64;
            losses.push(lost);
            total_lost += lost;
            total_expected += expected;
            worst.push((p.name.clone(), lost, expected));
        }
        let rate = self.args.data_rate;
        println!(
            "\n== Data: {last} lines sent at {rate}/s; per surviving leaf ({}): lost p50 {}, \
             max {}, total {total_lost} of {total_expected} expected ({:.2}%); out of order or \
             repeated: {disorder} ==",
            losses.len(),
            percentile(&losses, 0.5).unwrap_or(0),
            losses.iter().max().copied().unwrap_or(0),
            if total_expected == 0 {
                0.0
            } else {
                100.0 * total_lost as f64 / total_expected as f64
            }
        );
        worst.sort_by_key(|w| std::cmp::Reverse(w.1));
        let list: Vec<String> = worst
            .iter()
            .filter(|w| w.1 > 0)
            .take(8)
            .map(|(n, l, e)| format!("{n} {l}/{e}"))
            .collect();
        if !list.is_empty() {
            println!("    most lost: {}", list.join(", "));
        }
        if !empty.is_empty() {
            println!(
                "    surviving leaves that received no line at all: {}",
                empty.join(", ")
            );
        }
        if too_late > 0 {
            println!(
                "    surviving leaves left out, joined too late for data (no video before the \
                 last second of lines): {too_late}"
            );
        }
    }

    fn report_depth(&self) {
        let Some((start, end)) = self.churn else {
            return;
        };
        let during: Vec<&Snapshot> = self
            .snapshots
            .iter()
            .filter(|s| s.at >= start && s.at <= end)
            .collect();
        let depths: Vec<u64> = during.iter().map(|s| s.max_depth).collect();
        let sizes: Vec<u64> = during.iter().map(|s| s.size).collect();
        let stale = during.iter().filter(|s| s.disconnected > 0).count();
        let fmt = |v: &[u64]| {
            format!(
                "min {} median {} max {}",
                v.iter().min().copied().unwrap_or(0),
                percentile(v, 0.5).unwrap_or(0),
                v.iter().max().copied().unwrap_or(0)
            )
        };
        println!(
            "\n== Tree, once a second over the churn phase ({} snapshots, {} failed): max_depth \
             {}; size {} (full: {}) ==",
            during.len(),
            self.snapshot_errors,
            fmt(&depths),
            fmt(&sizes),
            1 + self.args.relays + self.args.leaves
        );
        let mut hist: BTreeMap<u64, usize> = BTreeMap::new();
        for d in &depths {
            *hist.entry(*d).or_default() += 1;
        }
        let h: Vec<String> = hist.iter().map(|(d, n)| format!("{d}: {n}s")).collect();
        println!(
            "    depth histogram {}; snapshots holding a dead member: {stale}",
            h.join(", ")
        );
    }

    /// Stops the members in two steps and compares what the long-lived
    /// processes and the server hold then with what they held before any
    /// child: every member but the long-lived relay, which must come back to
    /// what it held with only its parent; then that one too, and the source
    /// and the server must come back to the source alone. Returns verdict
    /// lines, each with whether it passed.
    fn check_leaks(&mut self) -> Vec<(String, bool)> {
        println!(
            "\n== Leaks: descriptors of the long-lived processes and the server's gauges, \
             compared at the same connections as before any child =="
        );
        let member = |p: &Proc| matches!(p.kind, Kind::Relay | Kind::Leaf);
        if let [Some(start), Some(end)] = self.gauges_around_churn {
            println!(
                "    server at the churn's start: {start}; at the drain's end: {end}, with {} \
                 members and the source alive",
                self.procs.iter().filter(|p| member(p) && p.alive()).count()
            );
        }
        let mut verdict = Vec::new();
        let (Some(alone), Some(source)) = (
            self.baseline.gauges,
            self.procs.iter().position(|p| p.kind == Kind::Source),
        ) else {
            verdict.push(("leaks: no baseline was read, cannot tell".to_owned(), false));
            return verdict;
        };
        let mut gauges_back = true;
        if let Some(relay) = self.long_lived {
            let want = Gauges {
                peers: alone.peers + 1,
                connections: alone.connections + 1,
                ..alone
            };
            let peer = self.procs[relay].peer.clone().unwrap_or_default();
            let children: HashSet<&String> = self
                .snapshots
                .iter()
                .filter_map(|s| s.children.get(&peer))
                .flatten()
                .collect();
            let what = format!(
                "{} (the long-lived relay, {} children over the run)",
                self.procs[relay].name,
                children.len()
            );
            let base = self.baseline.relay;
            let (line, ok, g) = self.leak_step(
                |i, p| member(p) && i != relay,
                relay,
                &what,
                "with only its parent",
                base,
                want,
            );
            verdict.push((format!("leaked by the long-lived relay: {line}"), ok));
            gauges_back &= g;
        }
        let base = self.baseline.source;
        let (line, ok, g) = self.leak_step(
            |_, p| member(p),
            source,
            "source",
            "before any child",
            base,
            alone,
        );
        verdict.push((format!("leaked by the source: {line}"), ok));
        gauges_back &= g;
        verdict.push((
            format!(
                "server gauges back to the baseline: {}",
                if gauges_back { "yes" } else { "NO" }
            ),
            gauges_back,
        ));
        verdict
    }

    /// One step of [`Run::check_leaks`]: stops the members `which` picks,
    /// then polls `keeper`'s descriptors and the server's gauges until both
    /// are back at `base` and `want` (or stay put otherwise). Prints what it
    /// read; returns the descriptors leaked, whether none was, and whether
    /// the gauges came back.
    fn leak_step(
        &mut self,
        which: impl Fn(usize, &Proc) -> bool,
        keeper: usize,
        what: &str,
        base_when: &str,
        base: Option<Settled<Fds>>,
        want: Gauges,
    ) -> (String, bool, bool) {
        let stopped = self.stop(which);
        let base_fds = base.map(|b| b.value);
        let end = self.settle(
            |r| Some((r.fds(keeper)?, r.gauges()?)),
            |&(fds, gauges)| Some(fds) == base_fds && gauges == want,
        );
        let (Some(b), Some(e)) = (base, end) else {
            println!("    {what}: no reading {base_when} or after the stop, cannot tell");
            return ("cannot tell".to_owned(), false, false);
        };
        let (fds, gauges) = e.value;
        println!(
            "    {what}: {} {base_when} ({}) -> {fds} once {stopped} more members were stopped \
             ({}); server then: {gauges} (want {want})",
            b.value,
            b.when("the first reading"),
            e.when("the stop"),
        );
        let sockets = fds.sockets as i64 - b.value.sockets as i64;
        let other = fds.other as i64 - b.value.other as i64;
        (
            format!("sockets {sockets}, other fds {other}"),
            sockets == 0 && other == 0,
            gauges == want,
        )
    }

    fn report_warnings(&self) {
        if self.warns.is_empty() {
            println!("\n== WARN/ERROR log lines: none ==");
            return;
        }
        let total: u64 = self.warns.values().map(|w| w.count).sum();
        println!(
            "\n== WARN/ERROR log lines: {total}, {} kinds (ids and numbers masked); most \
             frequent ==",
            self.warns.len()
        );
        let mut kinds: Vec<(&String, &WarnKind)> = self.warns.iter().collect();
        kinds.sort_by_key(|(_, w)| std::cmp::Reverse(w.count));
        for (_, w) in kinds.iter().take(12) {
            println!(
                "    {:>5} x in {:>2} processes, e.g. {}",
                w.count,
                w.procs.len(),
                w.example
            );
        }
    }
}

impl Drop for Run {
    /// On an early error nothing may outlive the driver.
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.exited.is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// Why a process ended, from its last words: the one-line `error: ...`
/// or `tree closed (...)` the binary prints, else its last log line.
fn exit_reason(p: &Proc) -> String {
    let said = p.tail.iter().rev().find(|l| {
        l.starts_with("error:") || l.starts_with("tree closed (") || l.contains("panicked")
    });
    match said.or(p.tail.back()) {
        Some(l) => shorten(l, 200),
        None => "no output".to_owned(),
    }
}

/// The wall clock as the processes' log lines show it.
fn wall_now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// The 1, 5 and 15 minute load averages: this machine is shared, and a
/// loaded machine stretches every figure here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

/// Reads a pipe line by line until it closes, copying each line to `log`.
/// Bytes, not `lines()`: a line that is not UTF-8 must not end the reading
/// (the child would then block on a full pipe).
fn pipe_reader(
    pipe: impl Read + Send + 'static,
    mut log: Option<File>,
    proc: usize,
    stdout: bool,
    tx: mpsc::Sender<Line>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let arrived = Instant::now();
            if let Some(f) = log.as_mut() {
                let _ = f.write_all(&buf);
            }
            // After the driver stops listening the pipe is still drained.
            let _ = tx.send(Line {
                proc,
                stdout,
                arrived,
                text: String::from_utf8_lossy(&buf).trim_end().to_owned(),
            });
        }
    });
}

/// Writes `seq-000001`, `seq-000002`, ... at `rate` per second on an absolute
/// schedule (a late line does not shift the rest) until `stop`; returns when
/// each was written.
fn data_writer(
    mut stdin: ChildStdin,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Instant>> {
    std::thread::spawn(move || {
        let period = Duration::from_secs(1) / rate;
        let start = Instant::now();
        let mut sent = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let n = sent.len() as u32 + 1;
            let due = start + period * n;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if writeln!(stdin, "seq-{n:06}")
                .and_then(|_| stdin.flush())
                .is_err()
            {
                break;
            }
            sent.push(Instant::now());
        }
        sent
    })
}

fn parse_snapshot(body: &str, at: Instant) -> Option<Snapshot> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let size = v.get("size")?.as_u64()?;
    let max_depth = v.get("max_depth")?.as_u64()?;
    let mut children = HashMap::new();
    let mut disconnected = 0;
    for node in v.get("nodes")?.as_array()? {
        let Some(peer) = node.get("peer").and_then(|p| p.as_str()) else {
            continue;
        };
        let kids: Vec<String> = node
            .get("children")
            .and_then(|c| c.as_array())
            .map(|c| {
                c.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if node.get("connected").and_then(|c| c.as_bool()) == Some(false) {
            disconnected += 1;
        }
        children.insert(peer.to_owned(), kids);
    }
    Some(Snapshot {
        at,
        size,
        max_depth,
        children,
        disconnected,
    })
}

/// `key=value` from tracing's default format (values without spaces).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

/// A WARN/ERROR line without its timestamp, with ids and numbers masked, so
/// that the same complaint from different peers counts as one kind.
fn warn_key(line: &str) -> String {
    let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
    let words: Vec<String> = rest
        .split_whitespace()
        .map(|w| {
            let long_id =
                w.len() >= 16 && w.chars().filter(|c| c.is_ascii_alphanumeric()).count() >= 12;
            if long_id {
                "<id>".to_owned()
            } else {
                w.chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect()
            }
        })
        .collect();
    shorten(&words.join(" "), 160)
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push_str("...");
        t
    }
}

/// What a stretch of a recording holds of the source's looping file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HealFrames {
    /// Frames recorded while already held.
    repeated: usize,
    /// The file's frames from the stretch's first to its last (loops
    /// unwrapped) that it does not hold.
    missing: usize,
    /// Frames that are none of the file's.
    foreign: usize,
}

/// Counts a recorded stretch (file indices, in recording order) against a
/// file of `len` frames played in a loop. A step from one frame to the next
/// is read as the shorter way round the loop: forward is a hole, backward
/// a replay. That reads a hole longer than half the loop (5 s of the
/// sample) as a replay; a heal takes about a second.
fn heal_frames(stretch: &[Option<u32>], len: usize) -> HealFrames {
    let len = len as i64;
    let mut counts = HealFrames::default();
    let mut held = HashSet::new();
    let mut at: Option<(i64, i64)> = None; // (unwrapped, file index)
    let (mut lowest, mut highest) = (i64::MAX, i64::MIN);
    for frame in stretch {
        let Some(i) = frame.map(i64::from) else {
            counts.foreign += 1;
            continue;
        };
        let u = match at {
            None => i,
            Some((u, prev)) => {
                let skip = (i - prev - 1).rem_euclid(len);
                u + 1 + if skip > len / 2 { skip - len } else { skip }
            }
        };
        if !held.insert(u) {
            counts.repeated += 1;
        }
        lowest = lowest.min(u);
        highest = highest.max(u);
        at = Some((u, i));
    }
    if at.is_some() {
        counts.missing = (highest - lowest + 1) as usize - held.len();
    }
    counts
}

/// Nearest rank.
fn percentile<T: Copy + Ord>(v: &[T], q: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()))
}

/// Children of this process that still exist, alive or zombie: after every
/// child was waited for there must be none.
fn leftover_children() -> Vec<String> {
    let me = std::process::id();
    let mut left = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return left;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command may hold spaces: fields count from the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("?");
        let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me {
            left.push(format!("pid {pid} state {state}"));
        }
    }
    left
}
