//! Load driver for the signalling server: many peers join one tree.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example signal_load -- --peers 18000
//! cargo run --release --example signal_load -- --peers 2000 --url ws://127.0.0.1:8080/ws
//! cargo run --release --example signal_load -- --peers 2000 --no-seed
//! ```
//!
//! Without `--url` it starts `target/release/peer-tree-relay signal --listen
//! 127.0.0.1:0` itself (the binary next to this example's directory) and stops
//! it at the end. Then: one connection creates a tree; `--peers` connections
//! open (each reads its `hello`, and keeps a reader so it answers the server's
//! pings); every connection sends `join`, at most `--concurrency` outstanding,
//! and the time from send to `joined` is its latency. The driver prints joins
//! per second, p50/p99/max latency, the server's resident memory (from
//! `/metrics`) and the tree's depth and size (from `/api/trees/{id}`).
//!
//! Then it runs the original JavaScript server ("the seed") the same way, with
//! the same peers, concurrency, k and k1, through
//! `../shared/anchors/seed-signalling/run.sh` (its own load driver, on Node),
//! and prints the two side by side. Runs on the shared build machine vary by
//! 25-35% (the seed's README), so a baseline typed in from another day says
//! little: only figures from the same invocation are compared.
//!
//! Only 127.0.0.1 is ever contacted; our run is bounded by `--timeout` and the
//! seed's by `--seed-timeout`. Each peer is one socket in this process and one
//! in the server's, so `ulimit -n` must exceed `--peers` by a margin (20,000
//! allows 18,000 peers). The seed runs after ours has closed every socket.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// File descriptors this process needs besides one per peer.
const FD_MARGIN: u64 = 64;
const EMFILE: i32 = 24;
const EADDRNOTAVAIL: i32 = 99;

/// Exit status when our run passed but the seed's figures are missing or
/// incomplete: a script that needs the comparison can tell it from a failure
/// of ours (1).
const NO_BASELINE: u8 = 2;

#[derive(Parser)]
#[command(
    about = "Load driver: N WebSocket peers join one tree of the signalling server, \
             then of the original JavaScript server (the seed), side by side",
    after_help = "Exit status: 0 when every peer joined our server and the seed was \
                  measured beside it (or --no-seed was given); 1 when our run failed or \
                  could not run; 2 when ours passed but the seed's figures are missing or \
                  incomplete (bash, node, npm or its script not found, the script failed or \
                  timed out, or not all of its peers joined). Ours are printed alone then, \
                  with the reason."
)]
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
    /// Give up on our server's run after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The seed's load script, run as `bash SCRIPT PEERS CONCURRENCY` with K
    /// and K1 in its environment. Default: ../shared/anchors/seed-signalling/run.sh
    /// beside this crate.
    #[arg(long, env = "SIGNAL_LOAD_SEED_SCRIPT")]
    seed_script: Option<PathBuf>,
    /// Give up on the seed's run after this long (its first run also installs
    /// its npm dependencies).
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    seed_timeout: Duration,
    /// Measure our server alone, without the seed beside it.
    #[arg(long)]
    no_seed: bool,
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

/// "2.0x more" / "1.5x less": ours against the seed's, in words.
fn compare(ours: f64, base: f64, up: &str, down: &str) -> String {
    // A zero (nobody joined) has no ratio worth printing.
    if !(ours > 0.0 && base > 0.0) {
        return "-".to_owned();
    }
    if ours >= base {
        format!("{:.1}x {up}", ours / base)
    } else {
        format!("{:.1}x {down}", base / ours)
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

/// Our server's figures, for the table beside the seed's.
struct Ours {
    ok: bool,
    joins_per_s: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    rss_mb: f64,
    depth: Option<u64>,
}

fn tally(failures: &mut BTreeMap<String, u64>, key: String) {
    *failures.entry(key).or_default() += 1;
}

async fn run(args: &Args, url: &str, http: SocketAddr) -> Result<Ours> {
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
    println!(
        "joins/s {joins_per_s:.0}; join latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(p50),
        ms(p99),
        ms(max)
    );
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
    Ok(Ours {
        ok,
        joins_per_s,
        p50,
        p99,
        max,
        rss_mb: rss,
        depth,
    })
}

// ---------------------------------------------------------------------------
// The seed, measured in the same invocation

/// The seed's figures, from the `RESULT seed ...` line of its driver.
struct Seed {
    joins_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// `null` when its driver could not read the server's RSS.
    rss_mb: Option<f64>,
    max_depth: Option<u64>,
    joined: u64,
    /// Every peer joined, none was lost, no error: the figures are whole.
    ok: bool,
}

fn default_seed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/anchors/seed-signalling/run.sh")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The seed's process group: run.sh, the node server it starts in the
/// background and the node driver. Killing bash alone would leave the two
/// node processes holding thousands of sockets, so the whole group is sent
/// SIGTERM unless the script finished by itself (its trap stops the server).
struct SeedGroup(Option<u32>);

impl Drop for SeedGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs the seed's script with our peers, concurrency, k and k1, echoing
/// what it prints; its figures, or why there are none.
async fn run_seed(args: &Args, conc: usize) -> Result<Seed, String> {
    let script = args.seed_script.clone().unwrap_or_else(default_seed_script);
    if !script.is_file() {
        return Err(format!(
            "its script {} does not exist (give it with --seed-script or \
             SIGNAL_LOAD_SEED_SCRIPT)",
            script.display()
        ));
    }
    // Printed for a reader to rerun by hand: where it lives, without `main/..`.
    let script = script.canonicalize().unwrap_or(script);
    let missing: Vec<&str> = ["bash", "node", "npm"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} not found on PATH (the seed runs on Node 20 through a bash script)",
            missing.join(", ")
        ));
    }
    println!(
        "running the seed: K={} K1={} bash {} {} {conc}",
        args.k,
        args.k1,
        script.display(),
        args.peers
    );
    let mut child = Command::new("bash")
        .arg(&script)
        .args([args.peers.to_string(), conc.to_string()])
        .env("K", args.k.to_string())
        .env("K1", args.k1.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting bash {}: {e}", script.display()))?;
    let mut group = SeedGroup(child.id());
    let stdout = child.stdout.take().ok_or("its stdout was not captured")?;
    let stderr = child.stderr.take().ok_or("its stderr was not captured")?;
    // The last lines of stderr say why a failed script failed (npm, node).
    let errors = tokio::spawn(async move {
        let mut tail = VecDeque::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("  seed ! {line}");
            if tail.len() == 3 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail
    });
    let work = async {
        let mut result = None;
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| format!("reading its output: {e}"))?
        {
            println!("  seed | {line}");
            if line.starts_with("RESULT seed ") {
                result = Some(line);
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for its script: {e}"))?;
        Ok::<_, String>((status, result))
    };
    // The group is not the terminal's foreground group, so Ctrl-C would not
    // reach it: catch it here and stop the group on the way out.
    let (status, result) = tokio::select! {
        r = tokio::time::timeout(args.seed_timeout, work) => r.map_err(|_| {
            format!(
                "its run did not finish within {} (--seed-timeout)",
                humantime::format_duration(args.seed_timeout)
            )
        })??,
        _ = tokio::signal::ctrl_c() => return Err("interrupted (Ctrl-C)".to_owned()),
    };
    group.0 = None;
    match result {
        Some(line) => parse_seed_result(&line, args.peers, conc),
        None => {
            let tail = tokio::time::timeout(Duration::from_secs(2), errors)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let said = Vec::from(tail).join(" / ");
            Err(format!(
                "its script exited ({status}) without a RESULT line{}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!("; its stderr ended: {said}")
                }
            ))
        }
    }
}

/// Reads `RESULT seed peers=N inflight=C joins_per_s=X ... ok=true`, the line
/// driver.js prints for programs.
fn parse_seed_result(line: &str, peers: usize, conc: usize) -> Result<Seed, String> {
    let fields: HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let count = |key: &str| fields.get(key).and_then(|v| v.parse::<u64>().ok());
    let number = |key: &str| {
        fields
            .get(key)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let need =
        |key: &str| number(key).ok_or_else(|| format!("no {key} in its RESULT line: {line}"));
    if count("peers") != Some(peers as u64) || count("inflight") != Some(conc as u64) {
        return Err(format!(
            "its RESULT line is not for peers={peers} inflight={conc}: {line}"
        ));
    }
    Ok(Seed {
        joins_per_s: need("joins_per_s")?,
        p50_ms: need("p50_ms")?,
        p99_ms: need("p99_ms")?,
        max_ms: need("max_ms")?,
        rss_mb: number("server_rss_mb"),
        max_depth: count("max_depth"),
        joined: count("joined").unwrap_or(0),
        ok: fields.get("ok") == Some(&"true"),
    })
}

/// One line of the table: ours, the seed's, and ours against the seed's in
/// words ("more"/"fewer" and the like).
fn row(name: &str, ours: f64, seed: Option<f64>, unit: &str, decimals: usize, words: (&str, &str)) {
    let seed_text = seed.map_or("-".to_owned(), |v| format!("{v:.decimals$}{unit}"));
    let ratio = seed.map_or(String::new(), |s| compare(ours, s, words.0, words.1));
    table_line(
        name,
        &format!("{ours:.decimals$}{unit}"),
        &seed_text,
        &ratio,
    );
}

fn table_line(name: &str, ours: &str, seed: &str, words: &str) {
    let line = format!("{name:<20}{ours:>14}{seed:>14}   {words}");
    println!("{}", line.trim_end());
}

fn print_comparison(args: &Args, ours: &Ours, seed: Option<&Result<Seed, String>>) {
    let conc = args.concurrency.max(1);
    let s = seed.and_then(|r| r.as_ref().ok());
    println!();
    println!(
        "== ours and the seed: {} peers, k={}, k1={}, {conc} in flight ==",
        args.peers, args.k, args.k1
    );
    table_line("", "ours", "seed", "ours against the seed");
    let rows = [
        (
            "joins/s",
            ours.joins_per_s,
            s.map(|s| s.joins_per_s),
            "",
            0,
            ("more", "fewer"),
        ),
        (
            "p50 join latency",
            ms(ours.p50),
            s.map(|s| s.p50_ms),
            " ms",
            2,
            ("higher", "lower"),
        ),
        (
            "p99 join latency",
            ms(ours.p99),
            s.map(|s| s.p99_ms),
            " ms",
            2,
            ("higher", "lower"),
        ),
        (
            "max join latency",
            ms(ours.max),
            s.map(|s| s.max_ms),
            " ms",
            2,
            ("higher", "lower"),
        ),
        (
            "server RSS",
            ours.rss_mb,
            s.and_then(|s| s.rss_mb),
            " MB",
            1,
            ("more", "less"),
        ),
    ];
    for (name, o, b, unit, decimals, words) in rows {
        row(name, o, b, unit, decimals, words);
    }
    let depth = |d: Option<u64>| d.map_or("?".to_owned(), |d| d.to_string());
    let depth_words = match (ours.depth, s.and_then(|s| s.max_depth)) {
        (Some(o), Some(b)) if o == b => "same".to_owned(),
        (Some(o), Some(b)) if o > b => format!("{} deeper", o - b),
        (Some(o), Some(b)) => format!("{} shallower", b - o),
        _ => String::new(),
    };
    table_line(
        "tree max depth",
        &depth(ours.depth),
        &s.map_or("-".to_owned(), |s| depth(s.max_depth)),
        &depth_words,
    );
    match seed {
        None => println!("seed: not run (--no-seed)"),
        Some(Err(why)) => println!("seed: NOT MEASURED: {why}"),
        Some(Ok(s)) if !s.ok => println!(
            "seed: its run FAILED ({} of {} peers joined; see its lines above): its figures \
             are incomplete",
            s.joined, args.peers
        ),
        Some(Ok(_)) => println!(
            "seed: measured just after ours on this machine, by its own driver (socket.io \
             client, the same peers and concurrency)"
        ),
    }
    if conc > 1 && ours.joins_per_s > 0.0 {
        println!(
            "(with {conc} joins outstanding, queueing alone makes the mean latency about \
             {:.1} ms for ours (Little's law); --concurrency 1 measures unloaded latency)",
            conc as f64 / ours.joins_per_s * 1e3
        );
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match main_inner(args).await {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("signal_load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The exit status: 0, 1 (ours failed) or NO_BASELINE.
async fn main_inner(args: Args) -> Result<u8> {
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
    let ours = match result {
        Ok(r) => r?,
        Err(_) => bail!(
            "the run did not finish within {} (--timeout)",
            humantime::format_duration(args.timeout)
        ),
    };

    let seed = if args.no_seed {
        None
    } else {
        println!();
        Some(run_seed(&args, args.concurrency.max(1)).await)
    };
    print_comparison(&args, &ours, seed.as_ref());
    Ok(match &seed {
        _ if !ours.ok => 1,
        Some(Err(_)) => NO_BASELINE,
        Some(Ok(s)) if !s.ok => NO_BASELINE,
        _ => 0,
    })
}
