//! Hostile input against a live tree: 500 WebSocket connections send garbage,
//! oversized messages, binary frames, unknown requests and floods to the
//! signalling server that a real tree (source -> relay -> recording leaf) is
//! using, while the test checks that the leaf keeps recording every frame of
//! the file at the source's rate and every data message, and that each kind of
//! abuse got the answer the protocol gives it.
//!
//! Run with `--nocapture` to see the figures.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

/// Attackers, spread over this many loopback addresses (127.0.0.11, ...) so
/// that each address stays under the server's default per-address limit (64).
const ATTACKERS: usize = 500;
const ADDRESSES: usize = 10;
/// How long the attack lasts; the leaf's frame rate is measured over it.
const ATTACK: Duration = Duration::from_secs(10);
/// The sample's frame rate.
const SOURCE_FPS: f64 = 30.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Abuse {
    /// Text that is not JSON, until the server closes (8 in a row: 1008).
    Garbage,
    /// One 100 KiB message (the limit is 64 KiB): `too-large`, close 1009.
    Oversized,
    /// Binary frames (`bad-request`), until the server closes.
    Binary,
    /// Well-formed JSON of an unknown type: `unknown-type`, which counts as
    /// malformed, so the server closes after 8 in a row too.
    Unknown,
    /// Joins of a tree that does not exist at 200 per second, four times
    /// the server's rate limit: `rate-limited`, excess dropped.
    Flood,
}

const ABUSES: [Abuse; 5] = [
    Abuse::Garbage,
    Abuse::Oversized,
    Abuse::Binary,
    Abuse::Unknown,
    Abuse::Flood,
];

/// What the attackers saw, summed.
#[derive(Default)]
struct Tally {
    connected: AtomicU64,
    failed: AtomicU64,
    open_now: AtomicUsize,
    open_max: AtomicUsize,
    sent: AtomicU64,
    /// (abuse, error code) -> count of `error` replies.
    errors: Mutex<HashMap<(Abuse, String), u64>>,
    /// (abuse, close code) -> count of server closes.
    closes: Mutex<HashMap<(Abuse, u16), u64>>,
}

impl Tally {
    fn error(&self, abuse: Abuse, code: &str) -> u64 {
        let e = self.errors.lock().unwrap();
        e.get(&(abuse, code.to_owned())).copied().unwrap_or(0)
    }

    fn closed(&self, abuse: Abuse, code: u16) -> u64 {
        let c = self.closes.lock().unwrap();
        c.get(&(abuse, code)).copied().unwrap_or(0)
    }
}

/// Opens a WebSocket from `from` (a loopback address of its own).
async fn connect(
    server: SocketAddr,
    from: IpAddr,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    tokio_tungstenite::tungstenite::Error,
> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let tcp = sock.connect(server).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{server}/ws"), tcp).await?;
    Ok(ws)
}

/// One attacker: connects, abuses, and connects again whenever the server
/// closes it, until `stop`.
async fn attacker(
    server: SocketAddr,
    from: IpAddr,
    abuse: Abuse,
    stop: Instant,
    t: Arc<Tally>,
    all_open: Arc<tokio::sync::Barrier>,
) {
    let mut first = Some(all_open);
    while Instant::now() < stop {
        let ws = match connect(server, from).await {
            Ok(ws) => ws,
            Err(_) => {
                t.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        t.connected.fetch_add(1, Ordering::Relaxed);
        let now = t.open_now.fetch_add(1, Ordering::Relaxed) + 1;
        t.open_max.fetch_max(now, Ordering::Relaxed);
        // The first round: all 500 are open before any of them misbehaves.
        if let Some(b) = first.take() {
            b.wait().await;
        }
        let (mut tx, mut rx) = ws.split();
        let reader = {
            let t = t.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = rx.next().await {
                    match m {
                        Message::Text(text) => {
                            let v: serde_json::Value = match serde_json::from_str(&text) {
                                Ok(v) => v,
                                Err(_) => continue,
                            };
                            if v["type"] == "error" {
                                let code = v["code"].as_str().unwrap_or("?").to_owned();
                                *t.errors.lock().unwrap().entry((abuse, code)).or_default() += 1;
                            }
                        }
                        Message::Close(frame) => {
                            let code = frame.map_or(0, |f| u16::from(f.code));
                            *t.closes.lock().unwrap().entry((abuse, code)).or_default() += 1;
                            break;
                        }
                        _ => {}
                    }
                }
            })
        };
        // (message, how many at a time, pause between bursts)
        let (payload, burst, gap): (Message, usize, u64) = match abuse {
            Abuse::Garbage => ("}{ not json".into(), 1, 20),
            Abuse::Oversized => (Message::text("x".repeat(100 * 1024)), 1, 20),
            Abuse::Binary => (Message::binary(vec![0xde, 0xad, 0xbe, 0xef]), 1, 20),
            Abuse::Unknown => (r#"{"type":"teleport"}"#.into(), 1, 20),
            // 20 every 100 ms: 200 per second, four times the limit, in
            // bursts so that a slow test process cannot fall under it.
            Abuse::Flood => (
                r#"{"type":"join","tree":"AAAAAAAAAAAAAAAAAAAAAA"}"#.into(),
                20,
                100,
            ),
        };
        'abuse: while Instant::now() < stop && !reader.is_finished() {
            for _ in 0..burst {
                if tx.feed(payload.clone()).await.is_err() {
                    break 'abuse;
                }
            }
            if tx.flush().await.is_err() {
                break;
            }
            t.sent.fetch_add(burst as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        let _ = tx.close().await;
        reader.abort();
        t.open_now.fetch_sub(1, Ordering::Relaxed);
        // A closed attacker comes back, but not in a tight loop: the point
        // is pressure on the server while it serves a tree, not a SYN flood.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_hostile_connections_leave_a_streaming_tree_untouched() {
    let s = Scratch::new("hostile");
    let video = sample("testsrc-640x360-vp8.ivf");
    let (sig, url) = signal_server(&s, &[]);
    let server: SocketAddr = http_addr(&url).parse().expect("server address");
    let (mut src, tree) = looping_source(&s, &url, &video);
    let mid = relay(&s, "relay", &url, &tree, &["--k", "1"], "joined tree");
    let rec = s.path("leaf.ivf");
    let data = s.path("leaf.txt");
    let leaf = relay(
        &s,
        "leaf",
        &url,
        &tree,
        &[
            "--k",
            "0",
            "--record",
            rec.to_str().unwrap(),
            "--data-out",
            data.to_str().unwrap(),
        ],
        "joined tree",
    );
    let stdin = src.stdin.as_mut().expect("source stdin");
    until(
        "the leaf records and gets data",
        Duration::from_secs(20),
        || {
            feed(stdin, "warmup");
            (ivf_frames(&rec).len() >= 30 && !data_lines(&data, "warmup").is_empty()).then_some(())
        },
    );
    let snap = tree_snapshot(&url, &tree).await;
    assert_eq!(parent_in(&snap, &relay_peer(&leaf)), Some(relay_peer(&mid)));
    let before = snapshot_peers(&url, &tree).await;

    // The attack, plus one address that opens 70 and keeps them: the
    // server's default per-address limit (64) refuses the last 6.
    let t0 = Instant::now();
    let stop = t0 + ATTACK;
    let tally = Arc::new(Tally::default());
    let all_open = Arc::new(tokio::sync::Barrier::new(ATTACKERS + 1));
    let mut tasks = Vec::new();
    for i in 0..ATTACKERS {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + (i % ADDRESSES) as u8));
        let abuse = ABUSES[i % ABUSES.len()];
        tasks.push(tokio::spawn(attacker(
            server,
            from,
            abuse,
            stop,
            tally.clone(),
            all_open.clone(),
        )));
    }
    tokio::time::timeout(Duration::from_secs(5), all_open.wait())
        .await
        .expect("500 attackers connected within 5 s");
    let frames_at_start = ivf_frames(&rec).len();
    let measured_from = Instant::now();
    let hog = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 99));
    let mut held = Vec::new();
    let mut hog_refused = 0;
    for _ in 0..70 {
        match connect(server, hog).await {
            Ok(ws) => held.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429 => {
                hog_refused += 1
            }
            Err(e) => panic!("unexpected refusal for the 127.0.0.99 hog: {e}"),
        }
    }

    // Meanwhile: the leaf's recording, sampled, and data through the tree.
    let sender = {
        let mut stdin = src.stdin.take().expect("source stdin");
        std::thread::spawn(move || {
            let lines = send_numbered_every(&mut stdin, 250, Duration::from_millis(30));
            (stdin, lines)
        })
    };
    let mut longest_pause = Duration::ZERO;
    let (mut last_count, mut last_change) = (frames_at_start, Instant::now());
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = ivf_frames(&rec).len();
        let now = Instant::now();
        if n != last_count {
            (last_count, last_change) = (n, now);
        }
        longest_pause = longest_pause.max(now - last_change);
    }
    let frames_in_attack = ivf_frames(&rec).len() - frames_at_start;
    let attack_secs = measured_from.elapsed().as_secs_f64();
    for task in tasks {
        task.await.expect("attacker task");
    }
    drop(held);
    let (stdin, sent) = sender.join().expect("sender thread");
    src.stdin = Some(stdin);
    let got = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            until("every message at the leaf", Duration::from_secs(20), || {
                let got = data_lines(&data, "msg-");
                (got.len() >= 250).then_some(got)
            })
        }
    })
    .await
    .unwrap();

    let fps = frames_in_attack as f64 / attack_secs;
    let g = |a, c| tally.error(a, c);
    println!(
        "{} attacker connections opened ({} open at most at once, {} failed to \
         connect), {} messages sent in {attack_secs:.1} s; the 127.0.0.99 hog held \
         {} and was refused {hog_refused}",
        tally.connected.load(Ordering::Relaxed),
        tally.open_max.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.sent.load(Ordering::Relaxed),
        70 - hog_refused,
    );
    println!(
        "answers: garbage bad-json {} / close 1008 {}; oversized too-large {} / close 1009 {}; \
         binary bad-request {} / close 1008 {}; unknown unknown-type {} / close 1008 {}; flood no-such-tree {} \
         / rate-limited {}",
        g(Abuse::Garbage, "bad-json"),
        tally.closed(Abuse::Garbage, 1008),
        g(Abuse::Oversized, "too-large"),
        tally.closed(Abuse::Oversized, 1009),
        g(Abuse::Binary, "bad-request"),
        tally.closed(Abuse::Binary, 1008),
        g(Abuse::Unknown, "unknown-type"),
        tally.closed(Abuse::Unknown, 1008),
        g(Abuse::Flood, "no-such-tree"),
        g(Abuse::Flood, "rate-limited"),
    );
    println!(
        "the leaf meanwhile: {frames_in_attack} frames in {attack_secs:.1} s = {fps:.1} fps \
         (source {SOURCE_FPS}), longest pause {} ms (sampled every 50 ms), {} of {} messages in order",
        longest_pause.as_millis(),
        got.len(),
        sent.len()
    );

    // Every kind of abuse met its answer.
    assert!(tally.open_max.load(Ordering::Relaxed) >= ATTACKERS);
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "under the limit");
    assert_eq!(hog_refused, 6, "per-address limit 64 of 70");
    assert!(g(Abuse::Garbage, "bad-json") >= 8);
    assert!(tally.closed(Abuse::Garbage, 1008) > 0);
    assert!(g(Abuse::Oversized, "too-large") > 0);
    assert!(tally.closed(Abuse::Oversized, 1009) > 0);
    assert!(g(Abuse::Binary, "bad-request") >= 8);
    assert!(tally.closed(Abuse::Binary, 1008) > 0);
    assert!(g(Abuse::Unknown, "unknown-type") > 0);
    assert!(tally.closed(Abuse::Unknown, 1008) > 0);
    let flood_closed: u64 = tally
        .closes
        .lock()
        .unwrap()
        .iter()
        .filter(|((a, _), _)| *a == Abuse::Flood)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        flood_closed, 0,
        "valid requests over the rate: dropped, never closed"
    );
    assert!(g(Abuse::Flood, "rate-limited") > 0);
    assert!(g(Abuse::Flood, "no-such-tree") > 0);

    // And the tree did not notice: same members, every frame in order at the
    // source's rate, every message.
    assert!(
        fps >= SOURCE_FPS * 0.9,
        "the leaf recorded {fps:.1} fps during the attack"
    );
    assert!(longest_pause < Duration::from_secs(1), "{longest_pause:?}");
    let file = relay::source::VideoFile::open(&video).expect("sample");
    assert_run_of_file(&ivf_frames(&rec), file.frames(), "leaf");
    assert_eq!(got, sent, "every message, in order, once");
    assert_eq!(snapshot_peers(&url, &tree).await, before, "same members");
    for p in [&mid, &leaf] {
        assert!(
            !p.log_text().contains("joined the tree again"),
            "{}",
            p.name
        );
    }
    assert!(!sig.log_text().contains("panicked"));

    // The server still places newcomers: a relay takes the leaf's place
    // (rule 4; the tree has no free slot).
    let late = relay(&s, "late", &url, &tree, &["--k", "2"], "joined tree");
    let snap = tree_snapshot(&url, &tree).await;
    assert_eq!(
        parent_in(&snap, &relay_peer(&leaf)),
        Some(relay_peer(&late))
    );
}

/// Peer ids in a tree's snapshot, sorted.
async fn snapshot_peers(url: &str, tree: &str) -> Vec<String> {
    let snap = tree_snapshot(url, tree).await;
    let mut peers: Vec<String> = snap["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["peer"].as_str().expect("peer").to_owned())
        .collect();
    peers.sort();
    peers
}
