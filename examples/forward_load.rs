//! Load driver for the relay's forwarding path, with webrtc's own `broadcast`
//! example as the baseline in the same run.
//!
//! ```sh
//! cargo build --release --bins --examples      # the relay binary and this driver
//! cargo run --release --example forward_load   # k = 1, 4, 8; at most 9 minutes
//! cargo run --release --example forward_load -- --repeat 3        # medians of 3
//! cargo run --release --example forward_load -- --ks 8 --rates 40000,50000,60000 --grow 1
//! ```
//!
//! For each k (default 1, 4 and 8) and each relay kind, one tree on loopback:
//!
//! * an in-process signalling server on 127.0.0.1 and a synthetic publisher
//!   (a `relay::node::Node` whose hub has one VP8 track) that creates a tree
//!   with k1 = 2;
//! * a direct sink, which joins first and so hangs off the publisher: the
//!   reference path (publisher -> sink, no relay);
//! * the relay under test, in a process of its own so that its CPU time and
//!   memory are its own: ours is `target/release/peer-tree-relay join <tree>
//!   --k K`; the baseline is this example re-executed in a hidden
//!   `--baseline-relay` mode that forwards the way webrtc 0.21.1's
//!   `examples/broadcast` does (one `broadcast_channel(256)` per track, one
//!   task per child awaiting `TrackLocalStaticRTP::write_rtp`);
//! * K in-process leaf sinks (k = 0) under the relay.
//!
//! The publisher sends synthetic RTP with 1200-byte VP8 payloads: each packet
//! passes the relay's keyframe gate and carries its send time, step number
//! and index. First a latency phase (`--latency-rate`, with the direct sink:
//! hop = relay path - direct path, per percentile); then the direct sink
//! leaves and the rate rises in steps (`--rates`, in packet-copies/s =
//! packets into the relay times k), each `--step` long plus `--drain` of
//! silence. Past the last listed rate it keeps rising by `--grow` per step:
//! a run where every listed step passes says nothing about the limit. A step
//! passes when every relay sink got every packet of it (NACK repairs
//! included). The first failing step of a configuration is repeated once,
//! because one lost packet on a shared machine can be a neighbour's burst;
//! the repeat is announced with what failed, and a pass on it is counted
//! and marked as a pass on retry in the summary. The next failure ends that
//! configuration, as do `--max-rate` and its share of `--timeout`.
//!
//! Per step the driver reads the relay's utime+stime from /proc/<pid>/stat
//! (CPU µs per copy), its VmRSS from /proc/<pid>/status, the latency of every
//! packet at every sink, and where packets were dropped: the kernel's `drops`
//! for each process's UDP sockets (/proc/net/udp), webrtc's "track queue
//! full" errors (the relay's from its stderr, the driver's through its own
//! tracing subscriber), our relay's child-queue overflows and the baseline's
//! lagged receivers. A loss with drops only on the driver's side measured the
//! driver, not the relay: it ends that configuration as "driver-limited" and
//! the summary marks the figure ">=".
//!
//! By default the relay is pinned to the last CPU and the driver to the
//! others (`taskset`), so "copies/s without loss" is what one core does.
//! Only 127.0.0.1 is contacted; `--timeout` bounds the run.

#[path = "procfs/mod.rs"]
mod procfs;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use clap::{Parser, ValueEnum};
use relay::forward::{Hub, TrackHub, TrackSpec};
use relay::media::Codec;
use relay::node::{Node, NodeOptions};
use relay::peer::{Link, LinkConfig, LinkEvent};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use signalling::client::{http_get, Client, Events};
use signalling::protocol::{Event, Role};
use signalling::server::{self, ServerConfig, ServerHandle};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::RTCPeerConnectionState;
use webrtc::rtp_transceiver::RtpSender;
use webrtc::runtime::{broadcast_channel, BroadcastRecvError, BroadcastSender};

/// RTP payload bytes per packet.
const PAYLOAD_LEN: usize = 1200;
/// The generator sends what is due every this often.
const PACE_TICK: Duration = Duration::from_micros(250);
/// Warm-up rate (packets/s) while the sinks connect and see their first keyframe.
const WARMUP_RATE: f64 = 500.0;
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// webrtc's `broadcast` example: `broadcast_channel::<rtp::Packet>(256)`.
const BASELINE_CHANNEL: usize = 256;
/// What the baseline relay prints when a child's receiver lagged, before the count.
const BASELINE_LAGGED: &str = "lagged, packets skipped: ";
/// The issue's targets for our relay.
const TARGET_COPIES: f64 = 50_000.0;
const TARGET_P50_US: f64 = 200.0;
const TARGET_P99_US: f64 = 2_000.0;
const TARGET_RSS_MIB: f64 = 64.0;
/// Default `--timeout` per configuration: setup, the latency phase, 11
/// listed steps and 9 more at x1.25 up to 1,000,000 copies/s come to about
/// 65 s at the default step and drain.
const PER_CONFIG_SECS: u64 = 90;
/// Left at the end of `--timeout` for the last teardown and the summary.
const END_RESERVE: Duration = Duration::from_secs(10);

#[derive(Parser, Clone)]
#[command(
    about = "Load driver: one relay process forwards synthetic RTP to k children, \
                   beside webrtc's broadcast example as the baseline"
)]
struct Args {
    /// Fan-outs to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    ks: Vec<u32>,
    /// Rising steps, in packet-copies/s (packets into the relay times k).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,20000,30000,40000,50000,60000,70000,80000,100000,120000"
    )]
    rates: Vec<u64>,
    /// After the listed rates, each step is this many times the last
    /// (rounded to two significant digits) until a step loses packets; 1
    /// stops at the listed rates.
    #[arg(long, default_value_t = 1.25)]
    grow: f64,
    /// The rising steps past `--rates` stop here, lossless or not.
    #[arg(long, default_value_t = 1_000_000)]
    max_rate: u64,
    /// Length of each rate step.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    step: Duration,
    /// Silence after each step for its tail (and NACK repairs) to arrive.
    #[arg(long, default_value = "400ms", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// The latency phase (before the rising steps, with the direct sink as
    /// the reference path) runs at this rate, in copies/s.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    /// Length of the latency phase.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    latency_time: Duration,
    /// Run every configuration this many times and report medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Which relays to run.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    relays: Which,
    /// CPU pinning: the relay process on the last CPU and the driver on the
    /// others (`both`), only the relay (`relay`), or none.
    #[arg(long, value_enum, default_value_t = Pin::Both)]
    pin: Pin,
    /// The relay binary (default: target/release/peer-tree-relay beside this example).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The whole run stops after this long and prints the figures so far;
    /// each configuration (k, relay, run) gets an equal share of what is
    /// left and stops rising when it is spent (default: 90 s per
    /// configuration).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,

    /// Internal: run as the baseline relay for this tree.
    #[arg(long, hide = true, value_name = "TREE")]
    baseline_relay: Option<String>,
    /// Internal (baseline relay): the signalling server.
    #[arg(long, hide = true)]
    signal: Option<String>,
    /// Internal (baseline relay): most children.
    #[arg(long, hide = true)]
    k: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Both,
    Ours,
    Baseline,
}

impl Which {
    fn kinds(self) -> Vec<Impl> {
        match self {
            Which::Both => vec![Impl::Ours, Impl::Baseline],
            Which::Ours => vec![Impl::Ours],
            Which::Baseline => vec![Impl::Baseline],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pin {
    None,
    Relay,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Impl {
    Ours,
    Baseline,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Baseline => "baseline",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(tree) = args.baseline_relay.clone() {
        return baseline_main(tree, args.signal.clone(), args.k);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = if cpus < 2 { Pin::None } else { args.pin };
    if pin == Pin::Both {
        // Before the runtime starts, so every thread inherits it.
        let cpu_list = format!("0-{}", cpus - 2);
        let ok = std::process::Command::new("taskset")
            .args(["-p", "-c", &cpu_list, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("warning: could not pin the driver with taskset");
        }
    }
    tracing_subscriber::fmt()
        // Errors only: webrtc warns about every connection's setup.
        .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
        .with_ansi(false)
        .with_writer(|| LogCounter)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut results: Vec<ConfigResult> = Vec::new();
    let configs = args.ks.len() * args.relays.kinds().len() * args.repeat.max(1);
    let limit = args.timeout.unwrap_or(Duration::from_secs(
        PER_CONFIG_SECS.saturating_mul(configs.max(1) as u64),
    ));
    let started = Instant::now();
    let deadline = started + limit;
    let outcome = rt.block_on(async {
        tokio::time::timeout(limit, drive(&args, pin, cpus, deadline, &mut results)).await
    });
    let code = match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: the run passed its time limit ({limit:?}); figures so far follow");
            ExitCode::FAILURE
        }
    };
    print_summary(&args, &results);
    println!(
        "\nforward_load took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // Relay processes are killed on drop; give the runtime a moment to reap them.
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

// ---------------------------------------------------------------------------
// Shared bits: clock, payload layout, /proc readers.

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since this process's epoch; send and receive times are both
/// taken in the driver process, so they share it.
fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn loopback() -> LinkConfig {
    LinkConfig {
        udp_addrs: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        ice_servers: Vec::new(),
    }
}

/// Payload: VP8 descriptor (S = 1, partition 0) and a keyframe tag, so every
/// packet passes the relay's keyframe gate; then the send time (ns, u64 LE),
/// the step (u32 LE) and the index within the step (u32 LE); zeros to 1200.
const OFF_TIME: usize = 2;
const OFF_STEP: usize = 10;
const OFF_INDEX: usize = 14;

fn parse_payload(p: &[u8]) -> Option<(u64, u32, u32)> {
    let time = u64::from_le_bytes(p.get(OFF_TIME..OFF_TIME + 8)?.try_into().ok()?);
    let step = u32::from_le_bytes(p.get(OFF_STEP..OFF_STEP + 4)?.try_into().ok()?);
    let index = u32::from_le_bytes(p.get(OFF_INDEX..OFF_INDEX + 4)?.try_into().ok()?);
    Some((time, step, index))
}

/// utime + stime of a whole process, in µs.
fn proc_cpu_us(pid: u32, clk_tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1e6 / clk_tck)
}

/// CPU time every CPU spent busy (not idle or waiting for I/O), in µs.
fn system_busy_us(clk_tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Some(busy * 1e6 / clk_tck)
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Datagrams the kernel dropped on this process's UDP sockets (receive
/// buffer full): the `drops` column of /proc/net/udp{,6} for the socket
/// inodes among the process's file descriptors.
fn udp_drops(pid: u32) -> Option<u64> {
    let inodes = procfs::socket_inodes(pid)?;
    let mut drops = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let (Some(inode), Some(d)) = (cols.get(9), cols.get(12)) {
                if inodes.contains(*inode) {
                    drops += d.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Some(drops)
}

/// webrtc logs (at error level) every packet its driver could not hand to
/// a remote track because the track's 256-packet queue was full.
const TRACK_QUEUE_FULL: &str = "Failed to send RtpPacket to track remote";

/// The driver's own such drops, and its other warnings.
static DRIVER_TRACK_DROPS: AtomicU64 = AtomicU64::new(0);
static DRIVER_LOG_LINES: AtomicU64 = AtomicU64::new(0);

/// Where the driver's tracing output goes: track-queue drops are counted,
/// the first few other lines are shown (shortened; webrtc prints whole packets).
struct LogCounter;

impl std::io::Write for LogCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if text.contains(TRACK_QUEUE_FULL) {
            DRIVER_TRACK_DROPS.fetch_add(1, Ordering::Relaxed);
        } else if DRIVER_LOG_LINES.fetch_add(1, Ordering::Relaxed) < 5 {
            let line: String = text.trim_end().chars().take(240).collect();
            eprintln!("   driver log: {line}");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Percentiles (µs) of latencies in ns.
#[derive(Clone, Copy, Default, Debug)]
struct Lat {
    p50: f64,
    p99: f64,
}

fn percentiles(mut ns: Vec<u32>) -> Lat {
    if ns.is_empty() {
        return Lat::default();
    }
    ns.sort_unstable();
    let at = |q: f64| {
        let i = ((ns.len() as f64 - 1.0) * q).round() as usize;
        f64::from(ns[i]) / 1000.0
    };
    Lat {
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// The lower of the two middle values for an even count: a rate that some
/// run actually sustained.
fn median_low(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[(v.len() - 1) / 2])
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

// ---------------------------------------------------------------------------
// Sinks: leaf peers that answer their parent's offer and count what arrives.

/// What one sink received of one step.
#[derive(Default)]
struct StepAcc {
    /// Bit per index: a NACK retransmission of a packet that did arrive is
    /// not counted twice.
    seen: Vec<u64>,
    distinct: u64,
    lat_ns: Vec<u32>,
}

impl StepAcc {
    fn record(&mut self, index: u32, lat_ns: u64) {
        let (word, bit) = ((index / 64) as usize, index % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            return;
        }
        self.seen[word] |= 1 << bit;
        self.distinct += 1;
        self.lat_ns.push(u32::try_from(lat_ns).unwrap_or(u32::MAX));
    }
}

#[derive(Default)]
struct SinkStats {
    packets: AtomicU64,
    steps: Mutex<Vec<StepAcc>>,
}

impl SinkStats {
    fn on_packet(&self, payload: &[u8]) {
        let now = now_ns();
        self.packets.fetch_add(1, Ordering::Relaxed);
        let Some((sent, step, index)) = parse_payload(payload) else {
            return;
        };
        let mut steps = lock(&self.steps);
        let step = step as usize;
        if steps.len() <= step {
            steps.resize_with(step + 1, StepAcc::default);
        }
        steps[step].record(index, now.saturating_sub(sent));
    }

    fn take(&self, step: u32) -> StepAcc {
        lock(&self.steps)
            .get_mut(step as usize)
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

struct Sink {
    client: Client,
    parent: String,
    stats: Arc<SinkStats>,
    link: Arc<Mutex<Option<Arc<Link>>>>,
    task: JoinHandle<()>,
}

impl Sink {
    async fn join(url: &str, tree: &str) -> Result<Sink> {
        let (client, events) = Client::connect(url).await?;
        let joined = client
            .join(tree, Some(0), Some(Role::Peer))
            .await
            .context("sink join")?;
        let stats = Arc::new(SinkStats::default());
        let link = Arc::new(Mutex::new(None));
        let task = tokio::spawn(sink_loop(
            client.clone(),
            events,
            stats.clone(),
            link.clone(),
        ));
        Ok(Sink {
            client,
            parent: joined.parent,
            stats,
            link,
            task,
        })
    }

    async fn close(self) {
        self.task.abort();
        let link = lock(&self.link).take();
        if let Some(link) = link {
            link.close().await;
        }
        self.client.close();
    }
}

async fn sink_loop(
    client: Client,
    mut events: Events,
    stats: Arc<SinkStats>,
    slot: Arc<Mutex<Option<Arc<Link>>>>,
) {
    let cfg = loopback();
    let (links_tx, mut links_rx) = mpsc::unbounded_channel();
    let mut link: Option<Arc<Link>> = None;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Event::Signal(s)) => {
                    if link.as_ref().is_some_and(|l| l.remote != s.from) {
                        // A new parent: the old connection is done.
                        if let Some(old) = link.take() {
                            old.close().await;
                        }
                    }
                    if link.is_none() {
                        match Link::new(&cfg, &client, &s.from, links_tx.clone()).await {
                            Ok(l) => {
                                *lock(&slot) = Some(l.clone());
                                link = Some(l);
                            }
                            Err(e) => {
                                eprintln!("sink: cannot create a connection: {e}");
                                continue;
                            }
                        }
                    }
                    if let Some(l) = &link {
                        if let Err(e) = l.on_signal(s.data.get()).await {
                            eprintln!("sink: bad signal: {e}");
                        }
                    }
                }
                Some(_) => {}
                None => break,
            },
            Some((_, ev)) = links_rx.recv() => {
                if let LinkEvent::Track(_, mut packets) = ev {
                    let stats = stats.clone();
                    tokio::spawn(async move {
                        while let Some(p) = packets.recv().await {
                            stats.on_packet(&p.payload);
                        }
                    });
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The publisher's packet generator.

struct Generator {
    track: Arc<TrackHub>,
    seq: u16,
    ssrc: u32,
}

impl Generator {
    /// Sends `count` packets of `step` at `rate` packets/s, in bursts every
    /// PACE_TICK; returns how long that took.
    fn run(&mut self, step: u32, rate: f64, count: u64) -> Duration {
        let mut template = [0u8; PAYLOAD_LEN];
        template[0] = 0x10; // VP8 descriptor: S = 1, partition 0
        template[1] = 0x00; // frame tag: P = 0, a keyframe
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < count {
            let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(count);
            while sent < due {
                let now = now_ns();
                let mut payload = BytesMut::from(&template[..]);
                payload[OFF_TIME..OFF_TIME + 8].copy_from_slice(&now.to_le_bytes());
                payload[OFF_STEP..OFF_STEP + 4].copy_from_slice(&step.to_le_bytes());
                payload[OFF_INDEX..OFF_INDEX + 4].copy_from_slice(&(sent as u32).to_le_bytes());
                let pkt = Packet {
                    header: Header {
                        version: 2,
                        marker: true,
                        payload_type: Codec::Vp8.default_payload_type(),
                        sequence_number: self.seq,
                        timestamp: (now / 11_111) as u32, // 90 kHz
                        ssrc: self.ssrc,
                        ..Default::default()
                    },
                    payload: payload.freeze(),
                };
                self.seq = self.seq.wrapping_add(1);
                self.track.forward(&pkt);
                sent += 1;
            }
            if sent < count {
                std::thread::sleep(PACE_TICK);
            }
        }
        start.elapsed()
    }
}

/// Runs the generator on a blocking thread (it paces with thread sleeps).
async fn generate(
    gen: Generator,
    step: u32,
    rate: f64,
    count: u64,
) -> Result<(Generator, Duration)> {
    tokio::task::spawn_blocking(move || {
        let mut gen = gen;
        let took = gen.run(step, rate, count);
        (gen, took)
    })
    .await
    .context("generator thread")
}

// ---------------------------------------------------------------------------
// The relay process under test.

/// Warnings webrtc 0.21 prints while any loopback connection is set up.
const BENIGN: [&str; 3] = [
    "pingAllCandidates called with no candidate pairs",
    "password is empty",
    "conn.remote_addr is empty",
];

/// What the relay process reported on stderr.
#[derive(Default)]
struct RelayLog {
    /// Packets its webrtc driver dropped because the upstream track's
    /// 256-packet queue was full (the reader did not keep up).
    track_drops: AtomicU64,
    /// Fan-out drops: ours logs each episode of a child's queue overflowing
    /// (at debug level, enabled below); the baseline logs the packets a
    /// lagging broadcast receiver skipped.
    leg_drops: AtomicU64,
    /// Other warning and error lines (setup noise aside).
    warnings: AtomicU64,
    last: Mutex<VecDeque<String>>,
}

impl RelayLog {
    fn line(&self, line: &str) {
        if line.contains(TRACK_QUEUE_FULL) {
            self.track_drops.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if line.contains("queue overflowed; waiting for a keyframe") {
            self.leg_drops.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(n) = line
            .split_once(BASELINE_LAGGED)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            self.leg_drops.fetch_add(n, Ordering::Relaxed);
            return;
        }
        if !(line.contains("WARN") || line.contains("ERROR") || line.starts_with("error"))
            || BENIGN.iter().any(|b| line.contains(b))
        {
            return;
        }
        self.warnings.fetch_add(1, Ordering::Relaxed);
        // webrtc logs whole packets; a line's start says enough.
        let line: String = line.chars().take(240).collect();
        let mut last = lock(&self.last);
        if last.len() >= 8 {
            last.pop_front();
        }
        last.push_back(line);
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.track_drops.load(Ordering::Relaxed),
            self.leg_drops.load(Ordering::Relaxed),
        )
    }
}

struct RelayProc {
    child: Child,
    pid: u32,
    log: Arc<RelayLog>,
}

impl RelayProc {
    fn spawn(
        program: &PathBuf,
        args: &[String],
        pin_cpu: Option<usize>,
        rust_log: &str,
    ) -> Result<RelayProc> {
        let mut cmd = match pin_cpu {
            Some(cpu) => {
                // taskset execs the program: the pid is the relay's own.
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("relay exited at once"))?;
        let log = Arc::new(RelayLog::default());
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.line(&line);
                }
            });
        }
        Ok(RelayProc { child, pid, log })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn last_lines(&self) -> String {
        lock(&self.log.last)
            .iter()
            .map(|l| format!("    | {l}\n"))
            .collect()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The peer id of the relay placed under the publisher, from the server's
/// `/api/trees/{tree}` snapshot.
async fn relay_in_tree(http: SocketAddr, tree: &str, publisher: &str) -> Option<String> {
    let path = format!("/api/trees/{tree}");
    let (status, body) = http_get(&http.to_string(), &path, Duration::from_secs(2))
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.get("nodes")?
        .as_array()?
        .iter()
        .find(|n| {
            n.get("role").and_then(|r| r.as_str()) == Some("relay")
                && n.get("parent").and_then(|p| p.as_str()) == Some(publisher)
        })?
        .get("peer")?
        .as_str()
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------
// One configuration: (k, relay kind): the latency phase, then the rising steps.

/// What one step measured. Drops are counted where they happen, so a loss
/// can be pinned on the relay or on the driver.
#[derive(Clone, Debug, Default)]
struct StepResult {
    k: u32,
    rate: u64,
    sent: u64,
    achieved_copies: f64,
    /// Copies that never reached the relay's sinks.
    relay_lost: u64,
    sinks_short: usize,
    /// Packets that never reached the direct sink (latency phase only).
    direct_lost: Option<u64>,
    relay_cpu_pct: f64,
    us_per_copy: f64,
    driver_cpu_pct: f64,
    /// CPU that neither the relay nor the driver used (other processes,
    /// interrupts), in % of one CPU: a noisy neighbour shows here.
    other_cpu_pct: f64,
    rss_kib: u64,
    relay_udp_drops: u64,
    relay_track_drops: u64,
    relay_leg_drops: u64,
    driver_udp_drops: u64,
    driver_track_drops: u64,
    publisher_drops: u64,
    relay_lat: Lat,
    direct_lat: Option<Lat>,
    /// This step repeats the one before it, which failed at the same rate.
    retry: bool,
}

impl StepResult {
    /// Every copy arrived, at (nearly) the nominal rate.
    fn passed(&self) -> bool {
        self.relay_lost == 0 && self.sent > 0 && self.achieved_copies >= 0.95 * self.rate as f64
    }

    /// Why this step may have measured the driver rather than the relay.
    fn driver_trouble(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.driver_udp_drops > 0 {
            why.push(format!(
                "{} datagrams dropped by the kernel on the driver's sockets",
                self.driver_udp_drops
            ));
        }
        if self.driver_track_drops > 0 {
            why.push(format!(
                "{} packets dropped at the sinks' full track queues",
                self.driver_track_drops
            ));
        }
        if self.publisher_drops > 0 {
            why.push(format!(
                "{} packets dropped at the publisher's queues",
                self.publisher_drops
            ));
        }
        if self.direct_lost.unwrap_or(0) > 0 {
            why.push(format!(
                "the direct sink lost {}",
                self.direct_lost.unwrap_or(0)
            ));
        }
        if self.achieved_copies < 0.95 * self.rate as f64 {
            why.push(format!(
                "the generator reached {:.0}% of the rate",
                100.0 * self.achieved_copies / self.rate as f64
            ));
        }
        (!why.is_empty()).then(|| why.join(", "))
    }

    /// Where the relay itself dropped packets.
    fn relay_trouble(&self) -> String {
        format!(
            "relay: {} kernel UDP drops on its sockets, {} upstream track-queue drops, {} fan-out drops",
            self.relay_udp_drops, self.relay_track_drops, self.relay_leg_drops
        )
    }

    /// What a failed step lost and where, in one line.
    fn failure(&self) -> String {
        let mut what = format!(
            "lost {} of {} copies, {} of {} sinks short; {}",
            self.relay_lost,
            self.sent * u64::from(self.k),
            self.sinks_short,
            self.k,
            self.relay_trouble()
        );
        if let Some(d) = self.driver_trouble() {
            what.push_str("; driver: ");
            what.push_str(&d);
        }
        what
    }

    fn hop(&self) -> Option<(f64, f64)> {
        let d = self.direct_lat?;
        Some((self.relay_lat.p50 - d.p50, self.relay_lat.p99 - d.p99))
    }
}

/// Why a configuration's rising steps stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// Packets were lost with the relay dropping them (or no one else): the
    /// relay's limit lies between the last passing step and this one.
    Loss,
    /// Only the driver dropped packets or fell behind the rate: it measured
    /// itself, and the relay's limit is higher.
    Driver,
    /// No loss up to `--max-rate` (or the last of `--rates` with `--grow 1`).
    Ceiling,
    /// No loss when the configuration's share of `--timeout` ran out.
    Time,
}

impl Stop {
    /// The highest passing step is a lower bound, not the limit.
    fn lower_bound(self) -> bool {
        self != Stop::Loss
    }
}

/// A step that failed and was run again at the same rate.
#[derive(Clone, Debug)]
struct Retry {
    rate: u64,
    /// What the first try lost and where.
    first: String,
    passed: bool,
}

#[derive(Debug)]
struct ConfigResult {
    k: u32,
    imp: Impl,
    /// Which `--repeat` run this was, from 1.
    run: usize,
    /// The latency phase: relay sinks and the direct sink at `--latency-rate`.
    latency: Option<StepResult>,
    steps: Vec<StepResult>,
    /// Why the rising steps ended, and the same in a few words.
    end: String,
    end_short: String,
    stop: Stop,
    retries: Vec<Retry>,
    rss_connected_kib: u64,
    warnings: u64,
}

impl ConfigResult {
    /// The highest passing step; a failed step's passing repeat counts, and
    /// `best_on_retry` says so.
    fn best(&self) -> Option<&StepResult> {
        self.steps
            .iter()
            .filter(|s| s.passed())
            .max_by_key(|s| s.rate)
    }

    fn best_on_retry(&self) -> bool {
        self.best().is_some_and(|s| s.retry)
    }

    /// The first step where a relay sink missed a packet (a retried step's
    /// first try included), whoever dropped it.
    fn first_loss(&self) -> Option<u64> {
        self.steps.iter().find(|s| s.relay_lost > 0).map(|s| s.rate)
    }

    fn peak_rss_kib(&self) -> u64 {
        self.steps
            .iter()
            .chain(self.latency.iter())
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0)
            .max(self.rss_connected_kib)
    }
}

struct Env {
    url: String,
    http: SocketAddr,
    relay_bin: PathBuf,
    self_exe: PathBuf,
    relay_cpu: Option<usize>,
    clk_tck: f64,
}

async fn drive(
    args: &Args,
    pin: Pin,
    cpus: usize,
    deadline: Instant,
    results: &mut Vec<ConfigResult>,
) -> Result<()> {
    let self_exe = std::env::current_exe().context("locating this example")?;
    let relay_bin = match &args.relay_bin {
        Some(p) => p.clone(),
        None => self_exe
            .parent()
            .and_then(|examples| examples.parent())
            .map(|release| release.join("peer-tree-relay"))
            .ok_or_else(|| anyhow!("cannot find target/release from {}", self_exe.display()))?,
    };
    if args.relays != Which::Baseline && !relay_bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release` first (or pass --relay-bin)",
            relay_bin.display()
        );
    }
    if args.ks.is_empty()
        || args.rates.is_empty()
        || args.ks.contains(&0)
        || args.rates.contains(&0)
    {
        bail!("--ks and --rates need at least one value each, and each at least 1");
    }
    if !(args.grow.is_finite() && (1.0..=10.0).contains(&args.grow)) {
        bail!("--grow must be between 1 (no steps past --rates) and 10");
    }
    let max_k = args.ks.iter().copied().max().unwrap_or(1);
    let server: ServerHandle = server::spawn(
        ServerConfig {
            k: max_k.max(4),
            k1: 10,
            rate: 500,
            ..ServerConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .context("starting the signalling server")?;
    let env = Env {
        url: server.ws_url(),
        http: server.addr(),
        relay_bin,
        self_exe,
        relay_cpu: (pin != Pin::None).then_some(cpus - 1),
        clk_tck: clk_tck(),
    };
    let _ = now_ns();
    println!(
        "forward_load: {cpus} CPUs; relay process {}; driver {}; {PAYLOAD_LEN}-byte payloads; \
         steps of {:?} + {:?} drain",
        env.relay_cpu
            .map_or("unpinned".into(), |c| format!("pinned to CPU {c}")),
        if pin == Pin::Both {
            format!("pinned to CPUs 0-{}", cpus - 2)
        } else {
            "unpinned".into()
        },
        args.step,
        args.drain,
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average before the run: {} (other processes share these CPUs)",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let kinds = args.relays.kinds();
    let configs = args.ks.len() * kinds.len() * args.repeat.max(1);
    let t0 = Instant::now();
    let mut done = 0;
    for rep in 0..args.repeat.max(1) {
        for &k in &args.ks {
            for &imp in &kinds {
                // An equal share of what is left, so a configuration that
                // never loses cannot starve the ones after it; what one
                // leaves unused passes on.
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(END_RESERVE);
                let until = Instant::now() + left / (configs - done).max(1) as u32;
                done += 1;
                println!(
                    "\n== k={k}, {} relay (run {}/{}; configuration {done}/{configs}, \
                     {:.0} s into the run, {:.0} s for this one) ==",
                    imp.name(),
                    rep + 1,
                    args.repeat.max(1),
                    t0.elapsed().as_secs_f64(),
                    until
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64(),
                );
                match run_config(args, &env, k, imp, rep + 1, until).await {
                    Ok(r) => {
                        println!("   ended: {}", r.end);
                        results.push(r);
                    }
                    Err(e) => println!("   FAILED: {e:#}"),
                }
            }
        }
    }
    let _ = server.shutdown().await;
    Ok(())
}

/// Everything one configuration started, so it can all be stopped.
#[derive(Default)]
struct Rig {
    publisher: Option<(Client, oneshot::Sender<()>, JoinHandle<()>)>,
    direct: Option<Sink>,
    sinks: Vec<Sink>,
    relay: Option<RelayProc>,
}

impl Rig {
    async fn teardown(self) {
        for s in self.sinks {
            s.close().await;
        }
        if let Some(s) = self.direct {
            s.close().await;
        }
        if let Some(r) = self.relay {
            r.stop().await;
        }
        if let Some((client, stop, node)) = self.publisher {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), node).await;
            client.close();
        }
    }
}

async fn run_config(
    args: &Args,
    env: &Env,
    k: u32,
    imp: Impl,
    run: usize,
    until: Instant,
) -> Result<ConfigResult> {
    let mut rig = Rig::default();
    let result = async {
        let gen = setup(env, k, imp, &mut rig).await?;
        let mut out = measure(args, env, k, imp, gen, &mut rig, until).await?;
        out.run = run;
        Ok(out)
    }
    .await;
    if let (Err(_), Some(relay)) = (&result, rig.relay.as_ref()) {
        let lines = relay.last_lines();
        if !lines.is_empty() {
            println!("   relay's last log lines:\n{lines}");
        }
    }
    rig.teardown().await;
    result
}

async fn setup(env: &Env, k: u32, imp: Impl, rig: &mut Rig) -> Result<Generator> {
    let t0 = Instant::now();
    // The publisher: a tree with two slots, one for the relay under test and
    // one for the direct (reference) sink.
    let (client, events) = Client::connect(&env.url).await?;
    let created = client.create(Some(2)).await?;
    let tree = created.tree;
    let publisher_id = client.peer_id().to_owned();
    let (hub, overflow) = Hub::new();
    let track = hub.track(TrackSpec::new(Codec::Vp8, "forward-load", "video"));
    let opts = NodeOptions {
        link: loopback(),
        ..NodeOptions::default()
    };
    let node = Node::new(client.clone(), events, hub, overflow, None, opts);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let node_task = tokio::spawn(async move {
        let _ = node
            .run(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    rig.publisher = Some((client, stop_tx, node_task));

    // Direct sink first: it takes one of the publisher's slots.
    let direct = Sink::join(&env.url, &tree).await?;
    if direct.parent != publisher_id {
        bail!(
            "the direct sink was placed under {}, not the publisher",
            direct.parent
        );
    }
    rig.direct = Some(direct);

    // The relay under test takes the other.
    let args: Vec<String> = match imp {
        Impl::Ours => vec![
            // Tree ids are URL-safe base64 and may start with '-': after
            // `--` clap cannot take one for a flag.
            "join".into(),
            "--signal".into(),
            env.url.clone(),
            "--k".into(),
            k.to_string(),
            "--".into(),
            tree.clone(),
        ],
        Impl::Baseline => vec![
            format!("--baseline-relay={tree}"),
            "--signal".into(),
            env.url.clone(),
            "--k".into(),
            k.to_string(),
        ],
    };
    let program = match imp {
        Impl::Ours => &env.relay_bin,
        Impl::Baseline => &env.self_exe,
    };
    // Ours logs each child-queue overflow at debug level: count them.
    let rust_log = match imp {
        Impl::Ours => "warn,relay::downstream=debug",
        Impl::Baseline => "warn",
    };
    rig.relay = Some(RelayProc::spawn(program, &args, env.relay_cpu, rust_log)?);
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let relay_id = loop {
        if let Some(id) = relay_in_tree(env.http, &tree, &publisher_id).await {
            break id;
        }
        if let Some(r) = rig.relay.as_mut() {
            if !r.alive() {
                bail!("the relay process exited during setup");
            }
        }
        if Instant::now() > deadline {
            bail!("the relay did not join the tree within {SETUP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Then the relay's children.
    for _ in 0..k {
        let s = Sink::join(&env.url, &tree).await?;
        if s.parent != relay_id {
            bail!(
                "a sink was placed under {}, not the relay {relay_id}",
                s.parent
            );
        }
        rig.sinks.push(s);
    }

    // Warm up until every sink has media (connections up, first keyframe through).
    let mut gen = Generator {
        track,
        seq: 0,
        ssrc: 0x5eed_0001,
    };
    loop {
        let (g, _) = generate(gen, 0, WARMUP_RATE, (WARMUP_RATE / 10.0) as u64).await?;
        gen = g;
        let all = rig
            .sinks
            .iter()
            .chain(rig.direct.iter())
            .all(|s| s.stats.packets.load(Ordering::Relaxed) > 0);
        if all {
            break;
        }
        if let Some(r) = rig.relay.as_mut() {
            if !r.alive() {
                bail!("the relay process exited during setup");
            }
        }
        if Instant::now() > deadline {
            let got = rig
                .sinks
                .iter()
                .filter(|s| s.stats.packets.load(Ordering::Relaxed) > 0)
                .count();
            bail!(
                "only {got} of {k} relay sinks received media within {SETUP_TIMEOUT:?} \
                 (direct sink: {})",
                rig.direct
                    .as_ref()
                    .map_or(0, |d| d.stats.packets.load(Ordering::Relaxed))
            );
        }
    }
    let (g, _) = generate(gen, 0, WARMUP_RATE, (WARMUP_RATE * 0.3) as u64).await?;
    println!(
        "   set up in {} ms: publisher -> {} relay -> {k} sinks, publisher -> direct sink",
        t0.elapsed().as_millis(),
        imp.name()
    );
    Ok(g)
}

/// The rate of step `i` (from 0) of the rising steps, after one at `prev`:
/// the listed rates, then `--grow` times the last up to `--max-rate`.
fn rate_at(args: &Args, i: usize, prev: u64) -> Option<u64> {
    if let Some(&r) = args.rates.get(i) {
        return Some(r);
    }
    if args.grow <= 1.0 {
        return None;
    }
    // Two significant digits keep the rates readable in the tables.
    let raw = prev as f64 * args.grow;
    let unit = 10f64.powi(raw.log10().floor() as i32 - 1).max(1.0);
    let rate = ((raw / unit).round() * unit) as u64;
    let rate = if rate > prev { rate } else { raw.ceil() as u64 };
    (rate > prev && rate <= args.max_rate).then_some(rate)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    env: &Env,
    k: u32,
    imp: Impl,
    mut gen: Generator,
    rig: &mut Rig,
    until: Instant,
) -> Result<ConfigResult> {
    let relay_pid = rig.relay.as_ref().map(|r| r.pid).unwrap_or_default();
    let mut out = ConfigResult {
        k,
        imp,
        run: 1,
        latency: None,
        steps: Vec::new(),
        end: String::new(),
        end_short: String::new(),
        stop: Stop::Ceiling,
        retries: Vec::new(),
        rss_connected_kib: proc_rss_kib(relay_pid).unwrap_or(0),
        warnings: 0,
    };
    println!(
        "   {:>9} {:>8} {:>6} {:>9} {:>6} {:>7} {:>5} {:>5} {:>13} {:>13} {:>11} {:>6}  drops relay udp/track/fan-out | driver udp/track/pub",
        "copies/s",
        "achieved",
        "in/s",
        "lost",
        "relay%",
        "µs/copy",
        "drv%",
        "oth%",
        "relay p50/99",
        "direct p50/99",
        "hop p50/99",
        "RSS MB"
    );
    let mut step_id = 1u32;

    // Latency phase: the direct sink is still there, the reference path.
    let (g, lat) = run_step(
        env,
        k,
        rig,
        gen,
        step_id,
        args.latency_rate,
        args.latency_time,
        args.drain,
    )
    .await?;
    gen = g;
    step_id += 1;
    print_step("lat", &lat);
    out.latency = Some(lat);
    // From here on the driver feeds the relay only.
    if let Some(d) = rig.direct.take() {
        d.close().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // What the first try of the step being repeated lost; one repeat per
    // configuration.
    let mut repeating: Option<String> = None;
    let mut retried = false;
    let mut i = 0;
    let mut rate = args.rates[0];
    loop {
        if Instant::now() + args.step + args.drain > until {
            if let Some(first) = repeating.take() {
                // Unconfirmed, but a loss: reporting the rate below it as a
                // lower bound would claim more than was seen.
                out.stop = Stop::Loss;
                out.end_short = format!("loss at {rate}, not repeated (time share)");
                out.end = format!(
                    "loss at {rate} copies/s ({first}); this configuration's share of --timeout \
                     ran out before the repeat"
                );
                break;
            }
            out.stop = Stop::Time;
            out.end_short = format!("time share spent before {rate}");
            out.end = format!(
                "no loss up to the last step; this configuration's share of --timeout ran out \
                 before {rate} copies/s, so the relay's limit is higher"
            );
            break;
        }
        if i == args.rates.len() && repeating.is_none() {
            println!(
                "   every listed rate passed: raising by x{} per step until a step loses \
                 packets (at most {} copies/s, {:.0} s left for this configuration)",
                args.grow,
                args.max_rate,
                until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            );
        }
        let (g, mut step) =
            run_step(env, k, rig, gen, step_id, rate, args.step, args.drain).await?;
        gen = g;
        step_id += 1;
        step.retry = repeating.is_some();
        print_step("", &step);
        out.steps.push(step.clone());
        if let Some(first) = repeating.take() {
            println!(
                "   retry at {rate} copies/s {}",
                if step.passed() {
                    "passed: the step counts as passed on retry (marked r in the summary)"
                } else {
                    "lost packets again"
                }
            );
            out.retries.push(Retry {
                rate,
                first,
                passed: step.passed(),
            });
        }
        if step.passed() {
            i += 1;
            match rate_at(args, i, rate) {
                Some(r) => rate = r,
                None => {
                    out.stop = Stop::Ceiling;
                    out.end_short = format!("no loss up to {rate}");
                    out.end = if args.grow <= 1.0 {
                        "every listed step passed".into()
                    } else {
                        format!(
                            "no loss up to {rate} copies/s; the next step would pass --max-rate \
                             {}",
                            args.max_rate
                        )
                    };
                    break;
                }
            }
            continue;
        }
        // Loss with drops in the driver and none in the relay measured the
        // driver; with drops in the relay it counts against the relay.
        let relay_dropped =
            step.relay_udp_drops + step.relay_track_drops + step.relay_leg_drops > 0;
        let driver_trouble = step.driver_trouble().filter(|_| !relay_dropped);
        if let Some(why) = driver_trouble {
            out.stop = Stop::Driver;
            out.end_short = format!("driver-limited at {rate}");
            out.end = format!(
                "stopped at {rate} copies/s, driver-limited ({why}); the relay's own limit is \
                 above the last passing step; {}",
                step.relay_trouble()
            );
            break;
        }
        if !retried {
            retried = true;
            let first = step.failure();
            println!(
                "   RETRY: the step at {rate} copies/s failed ({first}); running it once more"
            );
            repeating = Some(first);
            continue;
        }
        out.stop = Stop::Loss;
        out.end_short = format!(
            "loss at {rate} (relay drops {}/{}/{})",
            step.relay_udp_drops, step.relay_track_drops, step.relay_leg_drops
        );
        out.end = format!("loss at {rate} copies/s: {}", step.failure());
        break;
    }
    out.warnings = rig
        .relay
        .as_ref()
        .map_or(0, |r| r.log.warnings.load(Ordering::Relaxed));
    if out.warnings > 0 {
        if let Some(r) = &rig.relay {
            println!(
                "   the relay logged {} other warnings/errors; the last ones:\n{}",
                out.warnings,
                r.last_lines()
            );
        }
    }
    Ok(out)
}

/// One step: `rate` copies/s for `length`, then `drain` of silence; reads
/// every counter before and after.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    env: &Env,
    k: u32,
    rig: &mut Rig,
    gen: Generator,
    step_id: u32,
    rate: u64,
    length: Duration,
    drain: Duration,
) -> Result<(Generator, StepResult)> {
    let Some(relay) = rig.relay.as_mut() else {
        bail!("no relay");
    };
    let relay_pid = relay.pid;
    let self_pid = std::process::id();
    let in_rate = rate as f64 / f64::from(k);
    let count = (in_rate * length.as_secs_f64()).round().max(1.0) as u64;

    let cpu0 = proc_cpu_us(relay_pid, env.clk_tck);
    let self0 = proc_cpu_us(self_pid, env.clk_tck);
    let busy0 = system_busy_us(env.clk_tck);
    let relay_udp0 = udp_drops(relay_pid);
    let self_udp0 = udp_drops(self_pid);
    let (track0, leg0) = relay.log.counts();
    let driver_track0 = DRIVER_TRACK_DROPS.load(Ordering::Relaxed);
    let pub0 = gen.track.packets_dropped.load(Ordering::Relaxed);
    let wall0 = Instant::now();

    let (gen, took) = generate(gen, step_id, in_rate, count).await?;
    tokio::time::sleep(drain).await;

    let wall = wall0.elapsed();
    let cpu1 = proc_cpu_us(relay_pid, env.clk_tck);
    let self1 = proc_cpu_us(self_pid, env.clk_tck);
    let busy1 = system_busy_us(env.clk_tck);
    let relay_udp1 = udp_drops(relay_pid);
    let self_udp1 = udp_drops(self_pid);
    let (track1, leg1) = relay.log.counts();
    let driver_track1 = DRIVER_TRACK_DROPS.load(Ordering::Relaxed);
    let pub1 = gen.track.packets_dropped.load(Ordering::Relaxed);
    let rss = proc_rss_kib(relay_pid).unwrap_or(0);
    if !relay.alive() {
        bail!("the relay process died at {rate} copies/s");
    }

    let mut relay_lost = 0;
    let mut sinks_short = 0;
    let mut relay_ns = Vec::new();
    for s in &rig.sinks {
        let acc = s.stats.take(step_id);
        let lost = count.saturating_sub(acc.distinct);
        relay_lost += lost;
        sinks_short += usize::from(lost > 0);
        relay_ns.extend(acc.lat_ns);
    }
    let direct = rig.direct.as_ref().map(|d| {
        let acc = d.stats.take(step_id);
        (count.saturating_sub(acc.distinct), percentiles(acc.lat_ns))
    });
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let udelta = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    // The relay's work happens during the step and its drain: both count.
    let relay_cpu = delta(cpu0, cpu1);
    let driver_cpu = delta(self0, self1);
    let other_cpu = (delta(busy0, busy1) - relay_cpu - driver_cpu).max(0.0);
    let copies = count as f64 * f64::from(k);
    let step = StepResult {
        k,
        rate,
        sent: count,
        achieved_copies: copies / took.as_secs_f64().max(1e-9),
        relay_lost,
        sinks_short,
        direct_lost: direct.as_ref().map(|d| d.0),
        relay_cpu_pct: relay_cpu / took.as_secs_f64() / 1e4,
        us_per_copy: relay_cpu / copies,
        driver_cpu_pct: driver_cpu / wall.as_secs_f64() / 1e4,
        other_cpu_pct: other_cpu / wall.as_secs_f64() / 1e4,
        rss_kib: rss,
        relay_udp_drops: udelta(relay_udp0, relay_udp1),
        relay_track_drops: track1 - track0,
        relay_leg_drops: leg1 - leg0,
        driver_udp_drops: udelta(self_udp0, self_udp1),
        driver_track_drops: driver_track1 - driver_track0,
        publisher_drops: pub1 - pub0,
        relay_lat: percentiles(relay_ns),
        direct_lat: direct.map(|d| d.1),
        retry: false,
    };
    Ok((gen, step))
}

fn print_step(label: &str, s: &StepResult) {
    let lost = match s.direct_lost {
        Some(d) if s.relay_lost > 0 || d > 0 => format!("{}+{d}d", s.relay_lost),
        _ => s.relay_lost.to_string(),
    };
    let pair = |a: f64, b: f64| format!("{a:.0}/{b:.0}");
    let (direct, hop) = match (s.direct_lat, s.hop()) {
        (Some(d), Some(h)) => (pair(d.p50, d.p99), pair(h.0, h.1)),
        _ => ("-".into(), "-".into()),
    };
    println!(
        "   {:>9} {:>8.0} {:>6.0} {:>9} {:>6.1} {:>7.2} {:>5.0} {:>5.0} {:>13} {:>13} {:>11} {:>6.1}  {}/{}/{} | {}/{}/{}{}",
        format!("{label}{}", s.rate),
        s.achieved_copies,
        s.rate as f64 / f64::from(s.k.max(1)),
        lost,
        s.relay_cpu_pct,
        s.us_per_copy,
        s.driver_cpu_pct,
        s.other_cpu_pct,
        pair(s.relay_lat.p50, s.relay_lat.p99),
        direct,
        hop,
        s.rss_kib as f64 / 1024.0,
        s.relay_udp_drops,
        s.relay_track_drops,
        s.relay_leg_drops,
        s.driver_udp_drops,
        s.driver_track_drops,
        s.publisher_drops,
        match (s.retry, s.passed()) {
            (false, _) => "",
            (true, true) => "  (repeat of a failed step: passed on retry)",
            (true, false) => "  (repeat of a failed step: lost again)",
        }
    );
}

// ---------------------------------------------------------------------------
// The summary.

fn print_summary(args: &Args, results: &[ConfigResult]) {
    if results.is_empty() {
        return;
    }
    let mut ks: Vec<u32> = results.iter().map(|r| r.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let reps = args.repeat.max(1);
    let fmt = |v: Option<f64>, prec: usize| v.map_or("-".into(), |v| format!("{v:.prec$}"));
    let pair = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{a:.0}/{b:.0}"),
        _ => "-".into(),
    };
    println!(
        "\n== Throughput{} (packet-copies/s = packets into the relay x k; CPU = the relay \
         process's utime+stime; oth% = median CPU used by other processes during the steps, \
         in % of one CPU; \">=\" = stopped before the relay lost packets: the driver ran out, \
         --max-rate or the time share; \"r\" = that step passed only on its repeat; first \
         loss = the first step where a sink missed a packet, a retried step's first try \
         included; retried = steps repeated after a loss, and how many of them passed then) ==",
        if reps > 1 {
            format!(", medians of {reps} runs")
        } else {
            String::new()
        }
    );
    println!(
        "{:>2} {:<8} {:>12} {:>10} {:>11} {:>8} {:>7} {:>12} {:>16} {:>8} {:>9} {:>5}  stopped (relay drops udp/track/fan-out)",
        "k",
        "relay",
        "max no-loss",
        "first loss",
        "retried",
        "µs/copy",
        "relay%",
        "copies/core",
        "µs/copy @common",
        "RSS MiB",
        "RSS peak",
        "oth%"
    );
    let best_rate = |rs: &[&ConfigResult]| {
        median_low(
            rs.iter()
                .map(|r| r.best().map_or(0.0, |s| s.rate as f64))
                .collect(),
        )
        .unwrap_or(0.0)
    };
    let mut lat_rows = Vec::new();
    for &k in &ks {
        // The highest rate every relay kind sustained at this k: CPU per
        // copy falls as the rate rises, so compare the kinds there.
        let common = [Impl::Ours, Impl::Baseline]
            .into_iter()
            .map(|imp| {
                let rs: Vec<&ConfigResult> = results
                    .iter()
                    .filter(|r| r.k == k && r.imp == imp)
                    .collect();
                if rs.is_empty() {
                    f64::INFINITY
                } else {
                    best_rate(&rs)
                }
            })
            .fold(f64::INFINITY, f64::min);
        for imp in [Impl::Ours, Impl::Baseline] {
            let rs: Vec<&ConfigResult> = results
                .iter()
                .filter(|r| r.k == k && r.imp == imp)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let at_best = |f: &dyn Fn(&StepResult) -> f64| {
                median(rs.iter().filter_map(|r| r.best().map(f)).collect())
            };
            let max_rate = median_low(
                rs.iter()
                    .map(|r| r.best().map_or(0.0, |s| s.rate as f64))
                    .collect(),
            );
            let usc = at_best(&|s| s.us_per_copy);
            let limited = rs.iter().any(|r| r.stop.lower_bound());
            let on_retry = rs
                .iter()
                .any(|r| r.best_on_retry() && r.best().map(|s| s.rate as f64) == max_rate);
            let losses: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.first_loss().map(|l| l as f64))
                .collect();
            let first_loss = match (losses.len(), median_low(losses)) {
                (_, None) => "none".to_owned(),
                (n, Some(l)) if n == rs.len() => format!("{l:.0}"),
                (n, Some(l)) => format!("{l:.0}({n}/{})", rs.len()),
            };
            let retried: usize = rs.iter().map(|r| r.retries.len()).sum();
            let passed_on_retry = rs
                .iter()
                .flat_map(|r| &r.retries)
                .filter(|t| t.passed)
                .count();
            let at_common = median(
                rs.iter()
                    .filter_map(|r| {
                        r.steps
                            .iter()
                            .rfind(|s| s.passed() && s.rate as f64 == common)
                            .map(|s| s.us_per_copy)
                    })
                    .collect(),
            );
            println!(
                "{:>2} {:<8} {:>12} {:>10} {:>11} {:>8} {:>7} {:>12} {:>16} {:>8} {:>9} {:>5}  {}",
                k,
                if rs.len() < reps {
                    format!("{}({}/{reps})", imp.name(), rs.len())
                } else {
                    imp.name().to_owned()
                },
                format!(
                    "{}{}{}",
                    if limited { ">=" } else { "" },
                    fmt(max_rate, 0),
                    if on_retry { "r" } else { "" }
                ),
                first_loss,
                if retried == 0 {
                    "none".to_owned()
                } else {
                    format!("{retried}, {passed_on_retry} passed")
                },
                fmt(usc, 2),
                fmt(at_best(&|s| s.relay_cpu_pct), 0),
                fmt(usc.map(|u| 1e6 / u), 0),
                match at_common {
                    Some(u) => format!("{u:.2} @{common:.0}"),
                    None => "-".into(),
                },
                fmt(
                    median(
                        rs.iter()
                            .map(|r| r.rss_connected_kib as f64 / 1024.0)
                            .collect()
                    ),
                    1
                ),
                fmt(
                    median(
                        rs.iter()
                            .map(|r| r.peak_rss_kib() as f64 / 1024.0)
                            .collect()
                    ),
                    1
                ),
                fmt(
                    median(
                        rs.iter()
                            .flat_map(|r| r.steps.iter().map(|s| s.other_cpu_pct))
                            .collect()
                    ),
                    0
                ),
                rs.iter()
                    .map(|r| r.end_short.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let lat = |f: &dyn Fn(&StepResult) -> Option<f64>| {
                median(
                    rs.iter()
                        .filter_map(|r| r.latency.as_ref().and_then(f))
                        .collect(),
                )
            };
            lat_rows.push((
                k,
                imp,
                [
                    lat(&|s| Some(s.relay_lat.p50)),
                    lat(&|s| Some(s.relay_lat.p99)),
                    lat(&|s| s.direct_lat.map(|d| d.p50)),
                    lat(&|s| s.direct_lat.map(|d| d.p99)),
                    lat(&|s| s.hop().map(|h| h.0)),
                    lat(&|s| s.hop().map(|h| h.1)),
                    at_best(&|s| s.relay_lat.p50),
                    at_best(&|s| s.relay_lat.p99),
                ],
                rs.iter()
                    .filter_map(|r| r.latency.as_ref())
                    .any(|s| !s.passed()),
            ));
        }
    }
    print_retries(results);
    println!(
        "\n== Latency, µs: at {} copies/s with the direct sink in the same tree (relay path = \
         publisher -> relay -> sink, direct = publisher -> sink, hop = relay - direct per \
         percentile); and the relay path at the highest no-loss step ==",
        args.latency_rate
    );
    println!(
        "{:>2} {:<8} {:>13} {:>13} {:>13} {:>18}",
        "k", "relay", "relay p50/99", "direct p50/99", "hop p50/99", "relay p50/99 @max"
    );
    for (k, imp, v, lossy) in &lat_rows {
        println!(
            "{:>2} {:<8} {:>13} {:>13} {:>13} {:>18}{}",
            k,
            imp.name(),
            pair(v[0], v[1]),
            pair(v[2], v[3]),
            pair(v[4], v[5]),
            pair(v[6], v[7]),
            if *lossy {
                "  (this phase lost packets)"
            } else {
                ""
            }
        );
    }

    // The issue's targets, for our relay.
    let ours: Vec<&ConfigResult> = results.iter().filter(|r| r.imp == Impl::Ours).collect();
    if ours.is_empty() {
        return;
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("\n== Targets (ours) ==");
    let per_k_best: Vec<(u32, f64, bool)> = ks
        .iter()
        .map(|&k| {
            let rs: Vec<&&ConfigResult> = ours.iter().filter(|r| r.k == k).collect();
            let best = median_low(
                rs.iter()
                    .map(|r| r.best().map_or(0.0, |s| s.rate as f64))
                    .collect(),
            )
            .unwrap_or(0.0);
            (k, best, rs.iter().any(|r| r.stop.lower_bound()))
        })
        .collect();
    let top = per_k_best.iter().map(|b| b.1).fold(0.0, f64::max);
    println!(
        "  >= {TARGET_COPIES:.0} packet-copies/s without loss{}: {} -> {}",
        if args.pin == Pin::None {
            ""
        } else {
            " (relay on one core)"
        },
        per_k_best
            .iter()
            .map(|(k, b, l)| format!("k={k}: {}{b:.0}", if *l { ">=" } else { "" }))
            .collect::<Vec<_>>()
            .join(", "),
        verdict(top >= TARGET_COPIES)
    );
    for (k, imp, v, _) in &lat_rows {
        if *imp != Impl::Ours {
            continue;
        }
        if let (Some(h50), Some(h99)) = (v[4], v[5]) {
            println!(
                "  k={k}: hop p50 {h50:.0} µs (< {TARGET_P50_US:.0}: {}), p99 {h99:.0} µs (< {TARGET_P99_US:.0}: {}) at {} copies/s",
                verdict(h50 < TARGET_P50_US),
                verdict(h99 < TARGET_P99_US),
                args.latency_rate
            );
        }
    }
    if let Some(rss) = median(
        ours.iter()
            .filter(|r| r.k == 8)
            .map(|r| r.peak_rss_kib() as f64 / 1024.0)
            .collect(),
    ) {
        println!(
            "  RSS with k=8 < {TARGET_RSS_MIB:.0} MiB: peak {rss:.1} MiB -> {}",
            verdict(rss < TARGET_RSS_MIB)
        );
    }
}

/// Every repeated step, so a figure that rests on a second try is never
/// mistaken for a first-try pass.
fn print_retries(results: &[ConfigResult]) {
    let steps: usize = results.iter().map(|r| r.steps.len()).sum();
    let retries: Vec<(&ConfigResult, &Retry)> = results
        .iter()
        .flat_map(|r| r.retries.iter().map(move |t| (r, t)))
        .collect();
    let passed = retries.iter().filter(|(_, t)| t.passed).count();
    if retries.is_empty() {
        println!("\nRetried steps: none of the {steps} rising steps was repeated");
        return;
    }
    println!(
        "\nRetried steps: {} of {steps} rising steps were repeats of a step that lost packets; \
         {passed} passed on the repeat (counted as passes above, \"r\" where that is the \
         max no-loss figure), {} lost again and ended their configuration",
        retries.len(),
        retries.len() - passed
    );
    for (r, t) in retries {
        println!(
            "  k={} {} run {}: {} copies/s, first try {}; repeat {}",
            r.k,
            r.imp.name(),
            r.run,
            t.rate,
            t.first,
            if t.passed { "passed" } else { "lost again" }
        );
    }
}

// ---------------------------------------------------------------------------
// The baseline relay: webrtc 0.21.1's `examples/broadcast`, driven by our
// signalling. As there, the parent's track feeds one `broadcast_channel(256)`
// (webrtc::runtime's, which the example uses) and every child gets its own
// `TrackLocalStaticRTP` (added with `add_track`, SSRC set per child) and its
// own task that awaits `write_rtp` for each packet it receives. Changes, each
// needed for it to work here: signalling goes through `relay::peer::Link`
// (the relay offers, rule 1); a child's writer subscribes once the child is
// connected (before that `write_rtp` fails and the example's task would end);
// payload type and header extensions are set per leg as our relay does
// (webrtc drops packets with the wrong ones); a lagging receiver keeps going
// and counts the skipped packets (the example ends the viewer); the 3 s PLI
// timer is left out (this publisher cannot make keyframes).

fn baseline_main(tree: String, signal: Option<String>, k: Option<u32>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let Some(signal) = signal else {
        eprintln!("error: --baseline-relay needs --signal");
        return ExitCode::FAILURE;
    };
    let run = async {
        let main = baseline_relay(tree, signal, k.unwrap_or(4));
        tokio::select! {
            r = main => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    };
    match tokio::runtime::Runtime::new().map(|rt| rt.block_on(run)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: baseline relay: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

struct UpTrack {
    codec: RTCRtpCodec,
    stream_id: String,
    track_id: String,
}

struct BaselineChild {
    link: Arc<Link>,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    mime: String,
    tasks: Vec<JoinHandle<()>>,
}

impl BaselineChild {
    async fn open(
        cfg: &LinkConfig,
        client: &Client,
        peer: &str,
        links: &mpsc::UnboundedSender<(String, LinkEvent)>,
        up: &UpTrack,
        ssrc: u32,
    ) -> Result<BaselineChild> {
        let link = Link::new(cfg, client, peer, links.clone()).await?;
        // "Each viewer gets its own track with a unique SSRC."
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            up.stream_id.clone(),
            up.track_id.clone(),
            up.track_id.clone(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: up.codec.clone(),
                ..Default::default()
            }],
        )));
        let sender = link
            .pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await?;
        // Child RTCP that the feedback tap delivers must be read, or its
        // queue fills (the example has no such tap).
        let rtcp = track.clone();
        let tasks = vec![tokio::spawn(async move {
            while let Some(ev) = rtcp.poll().await {
                if !matches!(ev, TrackLocalEvent::OnRtcpPacket(_)) {
                    continue;
                }
            }
        })];
        link.offer().await?;
        Ok(BaselineChild {
            link,
            track,
            sender,
            ssrc,
            mime: up.codec.mime_type.clone(),
            tasks,
        })
    }

    /// The example's per-viewer task: subscribe, then `write_rtp` each packet.
    async fn start(&mut self, broadcast_tx: &BroadcastSender<Packet>) {
        let pt = self
            .sender
            .get_parameters()
            .await
            .ok()
            .and_then(|p| {
                p.rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&self.mime))
                    .map(|c| c.payload_type)
            })
            .unwrap_or(Codec::Vp8.default_payload_type());
        let mut viewer_rx = broadcast_tx.subscribe();
        let track = self.track.clone();
        let ssrc = self.ssrc;
        let child = self.link.remote.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                match viewer_rx.recv().await {
                    Ok(mut packet) => {
                        packet.header.ssrc = ssrc;
                        packet.header.payload_type = pt;
                        packet.header.extension = false;
                        packet.header.extensions.clear();
                        packet.header.extensions_padding = 0;
                        if let Err(err) = track.write_rtp(packet).await {
                            eprintln!("baseline: viewer {child} write_rtp error: {err}");
                            break;
                        }
                    }
                    // The example ends the viewer here; carrying on keeps
                    // the child and reports the loss.
                    Err(BroadcastRecvError::Lagged(n)) => {
                        eprintln!("baseline: viewer {child} {BASELINE_LAGGED}{n}");
                    }
                    Err(BroadcastRecvError::Closed) => break,
                }
            }
        }));
    }

    async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.link.close().await;
    }
}

async fn baseline_relay(tree: String, url: String, k: u32) -> Result<()> {
    let cfg = loopback();
    let (client, mut events) = Client::connect(&url).await?;
    let joined = client.join(&tree, Some(k), Some(Role::Relay)).await?;
    let mut parent = joined.parent;
    let (links_tx, mut links_rx) = mpsc::unbounded_channel::<(String, LinkEvent)>();
    // "Broadcast sender: each viewer will subscribe to get its own receiver."
    let broadcast_tx = broadcast_channel::<Packet>(BASELINE_CHANNEL);
    let mut upstream: Option<Arc<Link>> = None;
    let mut up_track: Option<UpTrack> = None;
    let mut waiting: Vec<String> = Vec::new();
    let mut children: HashMap<String, BaselineChild> = HashMap::new();
    let mut next_ssrc = 0x0ba5_e000u32 ^ std::process::id();
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            ev = events.next() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::Child(c) => match &up_track {
                        Some(up) => {
                            next_ssrc = next_ssrc.wrapping_add(1);
                            match BaselineChild::open(&cfg, &client, &c.peer, &links_tx, up, next_ssrc).await {
                                Ok(ch) => {
                                    children.insert(c.peer, ch);
                                }
                                Err(e) => eprintln!("baseline: cannot open child {}: {e:#}", c.peer),
                            }
                        }
                        None => waiting.push(c.peer),
                    },
                    Event::ChildGone(c) => {
                        waiting.retain(|w| *w != c.peer);
                        if let Some(ch) = children.remove(&c.peer) {
                            ch.close().await;
                        }
                    }
                    Event::Parent(p) if p.parent != parent => {
                        if let Some(up) = upstream.take() {
                            up.close().await;
                        }
                        parent = p.parent;
                    }
                    Event::Signal(s) => {
                        if s.from == parent {
                            if upstream.is_none() {
                                upstream = Some(Link::new(&cfg, &client, &s.from, links_tx.clone()).await?);
                            }
                            if let Some(up) = &upstream {
                                if let Err(e) = up.on_signal(s.data.get()).await {
                                    eprintln!("baseline: bad signal from parent: {e}");
                                }
                            }
                        } else if let Some(ch) = children.get(&s.from) {
                            if let Err(e) = ch.link.on_signal(s.data.get()).await {
                                eprintln!("baseline: bad signal from child: {e}");
                            }
                        }
                    }
                    Event::TreeClosed(_) => break,
                    _ => {}
                }
            }
            Some((from, ev)) = links_rx.recv() => match ev {
                LinkEvent::Track(track, packets) if from == parent && up_track.is_none() => {
                    let Some(up) = baseline_upstream(track, packets, &broadcast_tx, &mut readers).await else {
                        continue;
                    };
                    for peer in std::mem::take(&mut waiting) {
                        next_ssrc = next_ssrc.wrapping_add(1);
                        match BaselineChild::open(&cfg, &client, &peer, &links_tx, &up, next_ssrc).await {
                            Ok(ch) => {
                                children.insert(peer, ch);
                            }
                            Err(e) => eprintln!("baseline: cannot open child {peer}: {e:#}"),
                        }
                    }
                    up_track = Some(up);
                }
                LinkEvent::State(RTCPeerConnectionState::Connected) => {
                    if let Some(ch) = children.get_mut(&from) {
                        if ch.tasks.len() == 1 {
                            ch.start(&broadcast_tx).await;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for (_, ch) in children.drain() {
        ch.close().await;
    }
    if let Some(up) = upstream {
        up.close().await;
    }
    for r in readers {
        r.abort();
    }
    Ok(())
}

/// The example's `on_track`: read the parent's track into the broadcast channel.
async fn baseline_upstream(
    track: Arc<dyn TrackRemote>,
    mut packets: relay::peer::TrackPackets,
    broadcast_tx: &BroadcastSender<Packet>,
    readers: &mut Vec<JoinHandle<()>>,
) -> Option<UpTrack> {
    let ssrc = *track.ssrcs().await.first()?;
    let codec = track.codec(ssrc).await?;
    let up = UpTrack {
        codec,
        stream_id: track.stream_id().await,
        track_id: track.track_id().await,
    };
    let broadcast_tx = broadcast_tx.clone();
    readers.push(tokio::spawn(async move {
        while let Some(packet) = packets.recv().await {
            let _ = broadcast_tx.send(packet);
        }
    }));
    Some(up)
}
