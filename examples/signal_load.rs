//! Load driver for the signalling server: many peers join one tree.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example signal_load -- --peers 18000
//! cargo run --release --example signal_load -- --peers 2000 --url ws://127.0.0.1:8080/ws
//! ```
//!
//! Without `--url` it starts `target/release/peer-tree-relay signal --listen
//! 127.0.0.1:0` itself (the binary next to this example's directory) and stops
//! it at the end. Then: one connection creates a tree; `--peers` connections
//! open (each reads its `hello`, and keeps a reader so it answers the server's
//! pings); every connection sends `join`, at most `--concurrency` outstanding,
//! and the time from send to `joined` is its latency. The driver prints joins
//! per second, p50/p99/max latency, the server's resident memory (from
//! `/metrics`) and the tree's depth and size (from `/api/trees/{id}`), beside
//! the figures the original JavaScript server gave on the same machine.
//!
//! Only 127.0.0.1 is ever contacted, and the whole run is bounded by
//! `--timeout`. Each peer is one socket in this process and one in the
//! server's, so `ulimit -n` must exceed `--peers` by a margin (20,000 allows
//! 18,000 peers).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::stream::{self, SplitSink};
use futures_util::{SinkExt, StreamExt};
use signalling::protocol::{Event, Joined};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The original JavaScript server, measured earlier on this machine with the
/// same kind of driver, at 18,000 peers.
const BASELINE_PEERS: usize = 18_000;
const BASELINE_JOINS_PER_S: f64 = 789.0;
const BASELINE_P50_MS: f64 = 5.0;
const BASELINE_P99_MS: f64 = 77.0;
const BASELINE_RSS_MB: f64 = 325.0;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// File descriptors this process needs besides one per peer.
const FD_MARGIN: u64 = 64;
const EMFILE: i32 = 24;
const EADDRNOTAVAIL: i32 = 99;

#[derive(Parser)]
#[command(about = "Load driver: N WebSocket peers join one tree of the signalling server")]
struct Args {
    /// Peers that join the tree (besides the source). At most about
    /// `ulimit -n` minus 100: 18000 with the usual limit of 20000.
    #[arg(long)]
    peers: usize,
    /// Signalling server to load (ws://127.0.0.1:PORT/ws). Without it a
    /// server is started from target/release/peer-tree-relay.
    #[arg(long)]
    url: Option<String>,
    /// `--k` of the server started here.
    #[arg(long, default_value_t = 4)]
    k: u32,
    /// `--k1` of the server started here.
    #[arg(long, default_value_t = 10)]
    k1: u32,
    /// Most connects, and most joins, in flight at once.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Give up after this long in all.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

// ---------------------------------------------------------------------------
// Connections

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a connection's reader passes on to the driver.
enum Note {
    /// A reply the driver waits for, with the moment it arrived.
    Reply(Event, Instant),
    /// The connection ended; why.
    Closed(String),
}

/// Events every reader counts, and connections lost while the run went on.
#[derive(Default)]
struct Counters {
    child: AtomicU64,
    child_gone: AtomicU64,
    parent: AtomicU64,
    tree_closed: AtomicU64,
    other: AtomicU64,
    unparsable: AtomicU64,
    closed: AtomicU64,
}

struct Conn {
    /// This connection's peer id, from `hello`.
    peer: String,
    sink: SplitSink<Ws, Message>,
    notes: mpsc::Receiver<Note>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    /// The reader owns the socket's read half: stopping it closes the socket.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads every frame of one connection for as long as it lives, so the
/// client answers pings (tungstenite queues the pong and sends it on the next
/// read), and passes replies on.
async fn reader(
    mut stream: futures_util::stream::SplitStream<Ws>,
    tx: mpsc::Sender<Note>,
    counters: Arc<Counters>,
) {
    let why = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                let at = Instant::now();
                let counter = match Event::parse(text.as_bytes()) {
                    Ok(
                        ev @ (Event::Hello(_)
                        | Event::Created(_)
                        | Event::Joined(_)
                        | Event::Error(_)),
                    ) => {
                        // The driver waits for one reply at a time: the queue
                        // cannot fill unless the server sends unasked replies.
                        let _ = tx.try_send(Note::Reply(ev, at));
                        continue;
                    }
                    Ok(Event::Child(_)) => &counters.child,
                    Ok(Event::ChildGone(_)) => &counters.child_gone,
                    Ok(Event::Parent(_)) => &counters.parent,
                    Ok(Event::TreeClosed(_)) => &counters.tree_closed,
                    Ok(_) => &counters.other,
                    Err(_) => &counters.unparsable,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(Message::Close(frame))) => {
                break match frame {
                    Some(f) => format!("closed by the server ({} {})", f.code, f.reason),
                    None => "closed by the server".to_owned(),
                };
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("socket error: {e}"),
            None => break "connection ended".to_owned(),
        }
    };
    counters.closed.fetch_add(1, Ordering::Relaxed);
    let _ = tx.try_send(Note::Closed(why));
}

/// Classifies a failure for the error tally (few distinct keys).
fn connect_failure(e: &tungstenite::Error) -> String {
    if let tungstenite::Error::Io(io) = e {
        match io.raw_os_error() {
            Some(EMFILE) => return "connect: EMFILE (too many open files)".to_owned(),
            Some(EADDRNOTAVAIL) => return "connect: EADDRNOTAVAIL (out of local ports)".to_owned(),
            _ => return format!("connect: {:?}", io.kind()),
        }
    }
    let text = e.to_string();
    format!("connect: {}", text.chars().take(60).collect::<String>())
}

/// Opens one connection and reads its `hello`.
async fn open(url: &str, counters: Arc<Counters>) -> Result<Conn, String> {
    // Signalling frames are small: 8 KiB buffers rather than 128 KiB, so
    // 18,000 clients do not cost the machine gigabytes.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(cfg), true),
    )
    .await
    .map_err(|_| "connect: timed out".to_owned())?
    .map_err(|e| connect_failure(&e))?;
    let (sink, stream) = ws.split();
    let (tx, notes) = mpsc::channel(8);
    let reader = tokio::spawn(reader(stream, tx, counters));
    let mut conn = Conn {
        peer: String::new(),
        sink,
        notes,
        reader,
    };
    match conn.reply().await {
        Ok((Event::Hello(h), _)) => {
            conn.peer = h.peer;
            Ok(conn)
        }
        Ok((ev, _)) => Err(format!("expected hello, got {}", ev.type_name())),
        Err(e) => Err(format!("hello: {e}")),
    }
}

impl Conn {
    /// The next reply, its arrival time, or why there is none.
    async fn reply(&mut self) -> Result<(Event, Instant), String> {
        match tokio::time::timeout(REPLY_TIMEOUT, self.notes.recv()).await {
            Err(_) => Err("no reply within 30 s".to_owned()),
            Ok(Some(Note::Reply(ev, at))) => Ok((ev, at)),
            Ok(Some(Note::Closed(why))) => Err(format!("connection lost ({why})")),
            Ok(None) => Err("connection lost".to_owned()),
        }
    }

    async fn send(&mut self, text: &str) -> Result<(), String> {
        self.sink
            .send(Message::text(text))
            .await
            .map_err(|e| format!("send failed: {e}"))
    }

    /// Sends `join` and waits for `joined`; the latency runs from just before
    /// the send to the reader seeing the reply.
    async fn join(mut self, msg: Arc<str>) -> (Conn, Result<(Duration, Joined), String>) {
        let t0 = Instant::now();
        if let Err(e) = self.send(&msg).await {
            return (self, Err(e));
        }
        let r = match self.reply().await {
            Ok((Event::Joined(j), at)) => Ok((at.saturating_duration_since(t0), j)),
            Ok((Event::Error(e), _)) => Err(format!("join error: {}", e.code)),
            Ok((ev, _)) => Err(format!("join: unexpected {}", ev.type_name())),
            Err(e) => Err(format!("join: {}", e.split(" (").next().unwrap_or(&e))),
        };
        (self, r)
    }
}

// ---------------------------------------------------------------------------
// The server under test

/// A server started here, killed on drop as well as at the end.
struct Server {
    child: Child,
    /// Kept open so the server's stdout never hits a closed pipe.
    _stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

async fn start_server(k: u32, k1: u32) -> Result<Server> {
    let exe = std::env::current_exe().context("finding this example's own path")?;
    let bin: PathBuf = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("peer-tree-relay"))
        .context("this example is not inside a target directory")?;
    if !bin.is_file() {
        bail!(
            "the server binary {} does not exist: run `cargo build --release` first \
             (or pass --url ws://127.0.0.1:PORT/ws of a running server)",
            bin.display()
        );
    }
    let mut child = Command::new(&bin)
        .args(["signal", "--listen", "127.0.0.1:0"])
        .args(["--k", &k.to_string(), "--k1", &k1.to_string()])
        // Every simulated peer comes from 127.0.0.1.
        .args(["--max-conns-per-ip", "0"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("server stdout not captured")?;
    let mut stdout = BufReader::new(stdout);
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line).await? == 0 {
                bail!("the server exited before printing `listening on ADDR`");
            }
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                return addr
                    .parse::<SocketAddr>()
                    .with_context(|| format!("bad address in {line:?}"));
            }
        }
    })
    .await
    .context("the server did not print `listening on ADDR` within 10 s")??;
    Ok(Server {
        child,
        _stdout: stdout,
        addr,
    })
}

impl Server {
    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// `ws://127.0.0.1:PORT/ws` → `127.0.0.1:PORT`; anything not on the loopback
/// interface is refused.
fn loopback_addr(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--url {url:?} must start with ws://"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = authority
        .replace("localhost", "127.0.0.1")
        .parse()
        .with_context(|| format!("--url {url:?}: expected ws://127.0.0.1:PORT/ws"))?;
    if !addr.ip().is_loopback() {
        bail!("--url {url:?}: this driver only talks to the loopback interface");
    }
    Ok(addr)
}

// ---------------------------------------------------------------------------
// Plain HTTP, for /metrics and /api/trees

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let (status, body) =
        signalling::client::http_get(&addr.to_string(), path, HTTP_TIMEOUT).await?;
    if status != 200 {
        bail!("GET {path}: HTTP {status}");
    }
    Ok(body)
}

/// `name value` lines of the Prometheus text format (labels kept in the name).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
}

async fn server_rss_mb(addr: SocketAddr) -> Result<f64> {
    let text = http_get(addr, "/metrics").await?;
    metric(&text, "process_resident_memory_bytes")
        .map(|b| b / 1e6)
        .context("/metrics has no process_resident_memory_bytes")
}

// ---------------------------------------------------------------------------

/// The open-files soft and hard limits, from /proc (Linux).
fn open_files_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line["Max open files".len()..]
        .split_whitespace()
        .map(|w| w.parse::<u64>().unwrap_or(u64::MAX));
    Some((nums.next()?, nums.next()?))
}

/// Checks each `joined` reply against the tree snapshot (nobody moved during
/// the run, so they must agree); returns the number of nodes at each depth.
fn check_placement(
    snapshot: &serde_json::Value,
    placed: &HashMap<String, (String, u32)>,
) -> Result<Vec<u64>, String> {
    let nodes = snapshot
        .get("nodes")
        .and_then(serde_json::Value::as_array)
        .ok_or("snapshot has no nodes array")?;
    let mut per_depth = Vec::new();
    let mut seen = 0usize;
    for node in nodes {
        let field = |k: &str| node.get(k).and_then(serde_json::Value::as_str);
        let peer = field("peer").ok_or("node without peer")?;
        let depth = node
            .get("depth")
            .and_then(serde_json::Value::as_u64)
            .ok_or("node without depth")?;
        let d = usize::try_from(depth).map_err(|_| "depth out of range")?;
        if per_depth.len() <= d {
            per_depth.resize(d + 1, 0u64);
        }
        per_depth[d] += 1;
        if let Some((parent, jdepth)) = placed.get(peer) {
            seen += 1;
            if field("parent") != Some(parent.as_str()) || u64::from(*jdepth) != depth {
                return Err(format!(
                    "peer {peer} was told parent {parent} depth {jdepth}, snapshot says {:?} depth {depth}",
                    field("parent")
                ));
            }
        }
    }
    if seen != placed.len() {
        return Err(format!(
            "{} joined peers are missing from the snapshot",
            placed.len() - seen
        ));
    }
    Ok(per_depth)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// "2.0x more" / "1.5x less": ours against the baseline, in words.
fn compare(ours: f64, base: f64, up: &str, down: &str) -> String {
    if ours >= base {
        format!("{:.1}x {up}", ours / base.max(f64::MIN_POSITIVE))
    } else {
        format!("{:.1}x {down}", base / ours.max(f64::MIN_POSITIVE))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Depth of the last peer if the tree were filled breadth-first.
fn ideal_depth(peers: usize, k: u32, k1: u32) -> u32 {
    let (mut placed, mut level, mut depth) = (0usize, k1 as usize, 0u32);
    while placed < peers && level > 0 {
        depth += 1;
        placed += level;
        level = level.saturating_mul(k as usize);
    }
    depth
}

struct Report {
    ok: bool,
}

fn tally(failures: &mut BTreeMap<String, u64>, key: String) {
    *failures.entry(key).or_default() += 1;
}

async fn run(args: &Args, url: &str, http: SocketAddr) -> Result<Report> {
    let counters = Arc::new(Counters::default());
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let idle_rss = server_rss_mb(http).await?;

    // The source.
    let mut source = open(url, counters.clone())
        .await
        .map_err(anyhow::Error::msg)
        .context("opening the source connection")?;
    source
        .send(r#"{"type":"create"}"#)
        .await
        .map_err(anyhow::Error::msg)?;
    let tree = match source.reply().await.map_err(anyhow::Error::msg)? {
        (Event::Created(c), _) => c.tree,
        (ev, _) => bail!("create: got {}", ev.to_json()),
    };
    println!("tree {tree} created; server RSS idle {idle_rss:.1} MB");

    // Connect phase.
    let conc = args.concurrency.max(1);
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(args.peers);
    let mut last = Instant::now();
    let mut opening = stream::iter(0..args.peers)
        .map(|_| open(url, counters.clone()))
        .buffer_unordered(conc);
    while let Some(r) = opening.next().await {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                let emfile = e.contains("EMFILE");
                tally(&mut failures, e);
                if emfile {
                    bail!(
                        "a connect failed with EMFILE (too many open files) after {} connections: \
                         raise `ulimit -n` (it must exceed --peers by ~100 in this process and \
                         in the server) or run with fewer --peers",
                        conns.len()
                    );
                }
            }
        }
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            println!(
                "  connecting: {}/{} open ({:.0}/s)",
                conns.len(),
                args.peers,
                conns.len() as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    drop(opening);
    let connect_time = t0.elapsed();
    let connect_rate = conns.len() as f64 / connect_time.as_secs_f64();
    let connected_rss = server_rss_mb(http).await?;
    println!(
        "connected {}/{} peers in {:.2} s: {:.0} connections/s; server RSS {:.1} MB",
        conns.len(),
        args.peers,
        connect_time.as_secs_f64(),
        connect_rate,
        connected_rss
    );

    // Join phase.
    let msg: Arc<str> = format!(r#"{{"type":"join","tree":"{tree}"}}"#).into();
    let t0 = Instant::now();
    let mut latencies = Vec::with_capacity(conns.len());
    // peer → (parent, depth) as each `joined` said.
    let mut placed: HashMap<String, (String, u32)> = HashMap::with_capacity(conns.len());
    let mut members = Vec::with_capacity(conns.len());
    let mut last = Instant::now();
    let attempted = conns.len();
    let mut joining = stream::iter(conns)
        .map(|c| c.join(msg.clone()))
        .buffer_unordered(conc);
    while let Some((conn, r)) = joining.next().await {
        match r {
            Ok((d, j)) => {
                latencies.push(d);
                placed.insert(conn.peer.clone(), (j.parent, j.depth));
            }
            Err(e) => tally(&mut failures, e),
        }
        members.push(conn);
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            println!(
                "  joining: {}/{} joined ({:.0}/s)",
                latencies.len(),
                attempted,
                latencies.len() as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    drop(joining);
    let join_time = t0.elapsed();
    let joins_per_s = latencies.len() as f64 / join_time.as_secs_f64();
    latencies.sort_unstable();
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    let max = latencies.last().copied().unwrap_or_default();

    // The server's view, with every peer still connected.
    let metrics = http_get(http, "/metrics").await?;
    let rss = metric(&metrics, "process_resident_memory_bytes")
        .map(|b| b / 1e6)
        .context("/metrics has no process_resident_memory_bytes")?;
    let snapshot = http_get(http, &format!("/api/trees/{tree}")).await?;
    let snapshot: serde_json::Value =
        serde_json::from_str(&snapshot).context("/api/trees: not JSON")?;
    let size = snapshot.get("size").and_then(serde_json::Value::as_u64);
    let depth = snapshot
        .get("max_depth")
        .and_then(serde_json::Value::as_u64);
    let placement = check_placement(&snapshot, &placed);
    // Counted now: tearing the connections down makes the server re-place
    // peers, and readers still running would count those events.
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let events = [
        ("child", load(&counters.child)),
        ("parent", load(&counters.parent)),
        ("child-gone", load(&counters.child_gone)),
        ("tree-closed", load(&counters.tree_closed)),
        ("other", load(&counters.other)),
        ("unparsable", load(&counters.unparsable)),
    ];
    let closed = load(&counters.closed);
    drop(members);
    drop(source);

    // Report.
    let n = args.peers;
    println!();
    println!(
        "== signal_load: {n} peers, k={}, k1={}, concurrency {conc} ==",
        args.k, args.k1
    );
    println!(
        "connect: {} in {:.2} s ({connect_rate:.0}/s)",
        attempted,
        connect_time.as_secs_f64()
    );
    println!(
        "join:    {} in {:.2} s",
        latencies.len(),
        join_time.as_secs_f64()
    );
    let base_note = if n == BASELINE_PEERS {
        String::new()
    } else {
        format!(" (baseline was measured at {BASELINE_PEERS} peers, not {n})")
    };
    println!();
    println!(
        "{:<20}{:>12}{:>16}   ratio{base_note}",
        "", "ours", "JS baseline"
    );
    println!(
        "{:<20}{:>12.0}{:>16.0}   {}",
        "joins/s",
        joins_per_s,
        BASELINE_JOINS_PER_S,
        compare(joins_per_s, BASELINE_JOINS_PER_S, "more", "fewer")
    );
    for (name, ours, base) in [
        ("p50 join latency", ms(p50), BASELINE_P50_MS),
        ("p99 join latency", ms(p99), BASELINE_P99_MS),
    ] {
        println!(
            "{name:<20}{:>9.2} ms{:>13.0} ms   {}",
            ours,
            base,
            compare(ours, base, "higher", "lower")
        );
    }
    println!("{:<20}{:>9.2} ms{:>16}", "max join latency", ms(max), "-");
    println!(
        "{:<20}{:>9.1} MB{:>13.0} MB   {}",
        "server RSS",
        rss,
        BASELINE_RSS_MB,
        compare(rss, BASELINE_RSS_MB, "more", "less")
    );
    if conc > 1 && joins_per_s > 0.0 {
        println!(
            "(with {conc} joins outstanding, queueing alone makes the mean latency about \
             {:.1} ms (Little's law); --concurrency 1 measures unloaded latency)",
            conc as f64 / joins_per_s * 1e3
        );
    }
    println!(
        "server RSS: {idle_rss:.1} MB idle, {connected_rss:.1} MB with {attempted} connections, \
         {rss:.1} MB with the tree built"
    );
    for (name, label) in [
        ("peer_tree_peers", "peers in trees"),
        ("peer_tree_connections", "connections"),
        ("peer_tree_joins_total", "joins"),
    ] {
        if let Some(v) = metric(&metrics, name) {
            println!("server metric {name} ({label}): {v}");
        }
    }
    let ideal = ideal_depth(n, args.k, args.k1);
    println!(
        "tree: size {} (expected {}), max depth {} (breadth-first ideal {ideal})",
        size.map_or("?".to_owned(), |s| s.to_string()),
        n + 1,
        depth.map_or("?".to_owned(), |d| d.to_string()),
    );
    let events: Vec<String> = events.iter().map(|(n, c)| format!("{c} {n}")).collect();
    println!(
        "events seen: {}; {closed} connections lost during the run",
        events.join(", ")
    );
    match &placement {
        Ok(depths) => println!(
            "placement: every `joined` (parent, depth) matches the snapshot; peers per depth {depths:?}"
        ),
        Err(e) => println!("placement: MISMATCH: {e}"),
    }
    if failures.is_empty() {
        println!("errors: none");
    } else {
        println!("errors:");
        for (what, count) in &failures {
            println!("  {count:>6}  {what}");
        }
    }
    let ok = failures.is_empty()
        && size == Some(n as u64 + 1)
        && latencies.len() == n
        && placement.is_ok()
        && closed == 0;
    println!(
        "{}",
        if ok {
            "PASS: every peer joined, tree size is peers+1"
        } else {
            "FAIL: see above"
        }
    );
    Ok(Report { ok })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match main_inner(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("signal_load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_inner(args: Args) -> Result<bool> {
    if args.peers == 0 {
        bail!("--peers must be at least 1");
    }
    match open_files_limit() {
        Some((soft, hard)) if soft < args.peers as u64 + FD_MARGIN => {
            let raise = if hard > soft {
                format!("Raise it with `ulimit -n {hard}` (the hard limit) in this shell, or")
            } else {
                "The hard limit is no higher, so".to_owned()
            };
            bail!(
                "the open-files limit (ulimit -n) is {soft} (hard limit {hard}); {} peers need \
                 about {} descriptors in this process and as many in the server. {raise} \
                 use fewer --peers (at most {}).",
                args.peers,
                args.peers as u64 + FD_MARGIN,
                soft.saturating_sub(FD_MARGIN)
            )
        }
        Some(_) => {}
        None => eprintln!("signal_load: cannot read the open-files limit; carrying on"),
    }

    let (server, url, http) = match &args.url {
        Some(url) => {
            let addr = loopback_addr(url)?;
            (None, url.clone(), addr)
        }
        None => {
            let server = start_server(args.k, args.k1).await?;
            let addr = server.addr;
            println!(
                "started peer-tree-relay signal on {addr} (k={}, k1={})",
                args.k, args.k1
            );
            (Some(server), format!("ws://{addr}/ws"), addr)
        }
    };

    let result = tokio::time::timeout(args.timeout, run(&args, &url, http)).await;
    if let Some(server) = server {
        server.stop().await;
    }
    match result {
        Ok(r) => r.map(|r| r.ok),
        Err(_) => bail!(
            "the run did not finish within {} (--timeout)",
            humantime::format_duration(args.timeout)
        ),
    }
}
