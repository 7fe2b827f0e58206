//! Off loopback: trees of real processes on hosts made of network
//! namespaces (tests/netlab), with the faults of real networks. Needs root;
//! without it every test here says it was skipped, unless
//! PEER_TREE_REQUIRE_LAB is set (CI), which makes that a failure.
//!
//! Run with `--nocapture` to see the figures each scenario measured.

mod chrome;
mod common;
mod netlab;

use std::process::Command;
use std::time::{Duration, Instant};

use chrome::{eventually, Chrome, Page, Where};
use common::*;
use netlab::{lab_or_skip, Host, Lab, Nat};
use relay::source::VideoFile;

/// Media tests share two cores: one lab at a time. (An async lock, as in
/// tests/browser.rs: the browser tests hold it across awaits.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

async fn one_at_a_time_async() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The binary inside `host`, logging at its default level (no RUST_LOG), so
/// that what an operator would see is what the test reads.
fn bin_in(host: &Host, args: &[&str]) -> Command {
    let mut c = host.command(BIN);
    c.args(args);
    // PEER_TREE_LAB_LOG: a RUST_LOG for the lab's processes, when debugging.
    match std::env::var_os("PEER_TREE_LAB_LOG") {
        Some(filter) => c.env("RUST_LOG", filter),
        None => c.env_remove("RUST_LOG"),
    };
    c
}

/// A signalling server on `host`, port 8080; returns it and its ws URL.
fn signal_on(s: &Scratch, host: &Host, extra: &[&str]) -> (Proc, String) {
    signal_on_port(s, host, 8080, extra)
}

fn signal_on_port(s: &Scratch, host: &Host, port: u16, extra: &[&str]) -> (Proc, String) {
    let listen = format!("{}:{port}", host.addr);
    let mut args = vec!["signal", "--listen", &listen];
    args.extend_from_slice(extra);
    let name = format!("signal@{}:{port}", host.name);
    let p = Proc::spawn_command(s, &name, bin_in(host, &args), false);
    p.line("listening on ", Duration::from_secs(20));
    (p, format!("ws://{listen}/ws"))
}

/// A source looping the sample on `host`; returns it and the tree id.
fn source_on(s: &Scratch, host: &Host, url: &str, k1: u32) -> (Proc, String) {
    let args = looping_source_args(url, &sample("testsrc-640x360-vp8.ivf"), k1);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::spawn_command(
        s,
        &format!("source@{}", host.name),
        bin_in(host, &args),
        false,
    );
    let tree = tree_id(&p);
    (p, tree)
}

/// `join` on `host`, once its log shows `ready`.
fn join_on(
    s: &Scratch,
    host: &Host,
    name: &str,
    url: &str,
    tree: &str,
    extra: &[&str],
    ready: &str,
) -> Proc {
    let args = join_args(url, tree, extra);
    once_ready(
        Proc::spawn_command(s, name, bin_in(host, &args), false),
        ready,
    )
}

/// Lines at WARN or ERROR in a process's log.
fn alarms(p: &Proc) -> Vec<String> {
    p.log_text()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

/// Waits for `n` recorded frames in `path`; they must be the file's own.
fn recorded(path: &std::path::Path, n: usize, within: Duration) -> Vec<Vec<u8>> {
    until(&format!("{n} frames in {}", path.display()), within, || {
        let f = ivf_frames(path);
        (f.len() >= n).then_some(f)
    })
}

/// A host with only a LAN address and no default route (an isolated LAN, a
/// venue network without internet, a container without a gateway) joins,
/// forwards and records. webrtc-rs's mDNS socket needs a route for its
/// multicast group; without one it used to fail every connection.
#[test]
fn members_without_a_default_route_connect_forward_and_record() {
    let Some(lab) = lab_or_skip("members_without_a_default_route_connect_forward_and_record")
    else {
        return;
    };
    let _serial = one_at_a_time();
    let s = Scratch::new("lab-noroute");
    let lan = lab.switch("lan");
    let a = lab.host("a", &lan, "203.0.113.1/24");
    let b = lab.host("b", &lan, "203.0.113.2/24");
    let c = lab.host("c", &lan, "203.0.113.3/24");
    let (sig, url) = signal_on(&s, &a, &["--k", "1", "--k1", "1"]);
    let (src, tree) = source_on(&s, &a, &url, 1);
    let t0 = Instant::now();
    let relay = join_on(&s, &b, "relay@b", &url, &tree, &["--k", "1"], "depth=1");
    let rec = s.path("c.ivf");
    let leaf = join_on(
        &s,
        &c,
        "recorder@c",
        &url,
        &tree,
        &["--k", "0", "--record", rec.to_str().unwrap()],
        "depth=2",
    );
    let frames = recorded(&rec, 60, Duration::from_secs(20));
    eprintln!(
        "no default route: 60 frames recorded two hops down {} ms after the relay started",
        t0.elapsed().as_millis()
    );
    let file = VideoFile::open(sample("testsrc-640x360-vp8.ivf"))
        .expect("sample parses")
        .frames()
        .to_vec();
    assert_run_of_file(&frames, &file, "recorder on a host without a default route");
    for p in [&sig, &src, &relay, &leaf] {
        let a = alarms(p);
        assert!(
            a.is_empty(),
            "{}: WARN/ERROR lines:\n{}",
            p.name,
            a.join("\n")
        );
        let mdns = p.log_text().matches("mDNS").count();
        assert!(mdns <= 1, "{}: mDNS logged {mdns} times", p.name);
    }
}

/// What one loss run measured.
struct LossRun {
    loss: u32,
    /// source -> relay -> recorder: two lossy hops.
    deep: Coverage,
    /// source -> recorder: one lossy hop, the reference.
    direct: Coverage,
    /// UDP packets the lab dropped, and what the hosts sent.
    dropped: u64,
    sent: u64,
}

/// source (host a) -> relay (b) -> recorder (c), and source -> recorder (d)
/// beside it as the reference; every host drops `loss` % of the UDP it
/// sends, media and feedback alike. Records for `secs` seconds.
fn loss_run(lab: &Lab, s: &Scratch, loss: u32, secs: u64) -> LossRun {
    let lan = lab.switch("lan");
    let a = lab.host("a", &lan, "203.0.113.1/24");
    let b = lab.host("b", &lan, "203.0.113.2/24");
    let c = lab.host("c", &lan, "203.0.113.3/24");
    let d = lab.host("d", &lan, "203.0.113.4/24");
    for h in [&a, &b, &c, &d] {
        h.drop_udp(loss);
    }
    let (_sig, url) = signal_on(s, &a, &["--k", "1", "--k1", "2"]);
    let (_src, tree) = source_on(s, &a, &url, 2);
    let _relay = join_on(s, &b, "relay@b", &url, &tree, &["--k", "1"], "depth=1");
    let direct = s.path("direct.ivf");
    let deep = s.path("deep.ivf");
    let _d = join_on(
        s,
        &d,
        "direct@d",
        &url,
        &tree,
        &["--k", "0", "--record", direct.to_str().unwrap()],
        "depth=1",
    );
    let _c = join_on(
        s,
        &c,
        "deep@c",
        &url,
        &tree,
        &["--k", "0", "--record", deep.to_str().unwrap()],
        "depth=2",
    );
    recorded(&deep, 1, Duration::from_secs(20));
    recorded(&direct, 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(secs));
    let file = VideoFile::open(sample("testsrc-640x360-vp8.ivf")).expect("sample parses");
    LossRun {
        loss,
        deep: coverage(
            &ivf_frames_timed(&deep),
            &file,
            &format!("depth 2 at {loss}%"),
        ),
        direct: coverage(
            &ivf_frames_timed(&direct),
            &file,
            &format!("depth 1 at {loss}%"),
        ),
        dropped: [&a, &b, &c, &d].iter().map(|h| h.udp_dropped()).sum(),
        sent: [&a, &b, &c, &d].iter().map(|h| h.udp_counters().0).sum(),
    }
}

/// Losses are repaired on every hop (NACK, retransmissions forwarded at
/// once, a reorder buffer in the recorder), so a recording two lossy hops
/// down holds (nearly) every frame. Three labs side by side, at 1, 3 and 5 %.
#[test]
fn losses_are_repaired_on_every_hop() {
    let Some(first) = lab_or_skip("losses_are_repaired_on_every_hop") else {
        return;
    };
    let _serial = one_at_a_time();
    let secs = 40;
    let levels = [1, 3, 5];
    let labs = [first, Lab::new(), Lab::new()];
    let scratches: Vec<Scratch> = levels
        .iter()
        .map(|l| Scratch::new(&format!("lab-loss{l}")))
        .collect();
    let runs: Vec<LossRun> = std::thread::scope(|scope| {
        let handles: Vec<_> = levels
            .iter()
            .zip(labs.iter().zip(&scratches))
            .map(|(&loss, (lab, s))| scope.spawn(move || loss_run(lab, s, loss, secs)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    eprintln!(
        "UDP loss per host | depth 2 (via a relay)         | depth 1 (direct, reference)   | \
         UDP dropped by the lab"
    );
    for r in &runs {
        eprintln!(
            "{:>16}% | {:>6.2}% ({:>4} of {:>4} frames) | {:>6.2}% ({:>4} of {:>4} frames) | \
             {} of {} datagrams",
            r.loss,
            r.deep.percent(),
            r.deep.held,
            r.deep.span,
            r.direct.percent(),
            r.direct.held,
            r.direct.span,
            r.dropped,
            r.sent
        );
    }
    for (r, target) in runs.iter().zip([99.9, 99.5, 98.0]) {
        assert!(
            r.deep.percent() >= target,
            "at {}% loss a recording two hops down held {:.2}% of the frames (target {target}%)",
            r.loss,
            r.deep.percent()
        );
        assert_eq!(r.deep.repeated, 0, "at {}%: frames recorded twice", r.loss);
    }
}

/// Seconds since midnight of a log line's timestamp
/// (`2026-11-30T19:50:43.687694Z ...`), for differences within one run.
fn log_secs(line: &str) -> Option<f64> {
    let clock = line.get(11..26)?;
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Milliseconds from the first line containing `from` to the first
/// containing `to` in a process's log.
fn log_gap_ms(p: &Proc, from: &str, to: &str) -> Option<f64> {
    let log = p.log_text();
    let at = |needle: &str| log.lines().find(|l| l.contains(needle)).and_then(log_secs);
    Some((at(to)? - at(from)?) * 1000.0)
}

/// Handshakes finish however their datagrams are lost: with a fifth of the
/// UDP lost each way, every member connects. webrtc-rs's DTLS stopped its
/// retransmit timer when the peer repeated a flight, so one lost datagram of
/// flight 4 or 5 hung a handshake for good (vendor/README.md); with that,
/// this test failed in 2 of 3 runs.
#[test]
fn handshakes_complete_through_heavy_loss() {
    let Some(lab) = lab_or_skip("handshakes_complete_through_heavy_loss") else {
        return;
    };
    let _serial = one_at_a_time();
    let members = 12;
    let s = Scratch::new("lab-handshake");
    let lan = lab.switch("lan");
    let a = lab.host("a", &lan, "203.0.113.1/24");
    let b = lab.host("b", &lan, "203.0.113.2/24");
    a.drop_udp(20);
    b.drop_udp(20);
    let k1 = members.to_string();
    let (_sig, url) = signal_on(&s, &a, &["--k1", &k1]);
    let (_src, tree) = source_on(&s, &a, &url, members);
    let joined: Vec<Proc> = (0..members)
        .map(|i| {
            Proc::spawn_command(
                &s,
                &format!("member{i}@b"),
                bin_in(&b, &["join", &tree, "--signal", &url, "--k", "0"]),
                false,
            )
        })
        .collect();
    let connected = "connected to parent";
    until(
        &format!("{members} members connected through 20% loss"),
        Duration::from_secs(40),
        || {
            joined
                .iter()
                .all(|p| log_has(p, connected).is_some())
                .then_some(())
        },
    );
    let times: Vec<f64> = joined
        .iter()
        .map(|p| log_gap_ms(p, "joined tree", connected).expect("timestamps in the log"))
        .collect();
    let worst = times.iter().copied().fold(0.0, f64::max);
    let (median, _) = percentiles(times);
    eprintln!(
        "20% UDP loss each way: {members} of {members} members connected, median {median:.0} ms \
         from join to connected, longest {worst:.0} ms; {} of {} datagrams dropped",
        a.udp_dropped() + b.udp_dropped(),
        a.udp_counters().0 + b.udp_counters().0
    );
}

// ---------------------------------------------------------------------------
// Browsers as they are in the wild, in lab hosts of their own.

/// A browser in `host`, loading pages from the signalling server on
/// `server` (made a secure context, so a page may use the camera).
fn browser_at(host: &Host, server: &Host) -> Where {
    Where {
        netns: Some(host.ns.clone()),
        origin: Some(format!("http://{}:8080", server.addr)),
    }
}

fn watch_url(server: &Host, k: u32, tree: &str) -> String {
    format!("http://{}:8080/?k={k}#{tree}", server.addr)
}

/// Waits for `page`'s first frame; returns it in ms after the page began
/// loading.
async fn first_frame_ms(page: &Page) -> f64 {
    eventually(
        &format!("a first frame at {}", page.name),
        Duration::from_secs(20),
        || async { page.state().await.first_frame_ms },
    )
    .await
}

/// Chromium with its default mDNS hiding of local addresses (a viewer never
/// asked for its camera offers only `<uuid>.local` names), each in a host of
/// its own: two viewers below a relay, one of whose mDNS answers never reach
/// the relay (as for a viewer on another network), and a browser that feeds
/// a recording relay below it. They play within 2 s of page load, and the
/// relays' logs stay clean at their default level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_as_in_the_wild_play_at_once_and_feed_a_relay() {
    let Some(lab) = lab_or_skip("browsers_as_in_the_wild_play_at_once_and_feed_a_relay") else {
        return;
    };
    let Some((chromium, driver)) = chrome::tools("browsers in the lab", &["ffprobe"]) else {
        return;
    };
    let _serial = one_at_a_time_async().await;
    let s = Scratch::new("lab-wild");
    let lan = lab.switch("lan");
    let a = lab.host("a", &lan, "203.0.113.1/24");
    let b = lab.host("b", &lan, "203.0.113.2/24");
    let c = lab.host("c", &lan, "203.0.113.3/24");
    let v1 = lab.host("v1", &lan, "203.0.113.11/24");
    let v2 = lab.host("v2", &lan, "203.0.113.12/24");
    let m = lab.host("m", &lan, "203.0.113.13/24");
    // Browsers' hosts have a gateway, as at home (nothing answers there).
    for h in [&a, &b, &c, &v1, &v2, &m] {
        h.default_route("203.0.113.254".parse().expect("address"));
    }
    v2.block_udp_port(5353);
    let (_sig, url) = signal_on(&s, &a, &["--k", "3", "--k1", "1"]);
    let (_src, tree) = source_on(&s, &a, &url, 1);
    let relay = join_on(&s, &b, "relay@b", &url, &tree, &["--k", "3"], "depth=1");
    let relay_id = relay_peer(&relay);
    let chrome = Chrome::start(&s, &chromium, &driver);

    let p1 = chrome
        .page_at("v1", &watch_url(&a, 0, &tree), &browser_at(&v1, &a))
        .await;
    let first1 = first_frame_ms(&p1).await;
    let p2 = chrome
        .page_at("v2", &watch_url(&a, 0, &tree), &browser_at(&v2, &a))
        .await;
    let first2 = first_frame_ms(&p2).await;
    let v2_playing = Instant::now();
    for p in [&p1, &p2] {
        let st = p.state().await;
        assert_eq!(st.parent.as_deref(), Some(relay_id.as_str()), "{}", p.name);
        assert_eq!((st.frame_width, st.frame_height), (640, 360));
    }
    eprintln!(
        "viewers with mDNS names: first frame {first1:.0} ms after page load (mDNS reachable), \
         {first2:.0} ms (mDNS answers blocked)"
    );
    assert!(first1 < 2000.0, "v1 played after {first1:.0} ms");
    assert!(first2 < 2000.0, "v2 played after {first2:.0} ms");

    // A browser in the middle, and a recording relay below it.
    let pm = chrome
        .page_at("m", &watch_url(&a, 1, &tree), &browser_at(&m, &a))
        .await;
    let first_m = first_frame_ms(&pm).await;
    let rec = s.path("below-browser.ivf");
    let mut below = join_on(
        &s,
        &c,
        "recorder@c",
        &url,
        &tree,
        &["--k", "0", "--record", rec.to_str().expect("UTF-8 path")],
        "depth=3",
    );
    let t0 = Instant::now();
    let frames = eventually(
        "90 frames below the browser",
        Duration::from_secs(30),
        || async {
            let n = ivf_frames(&rec).len();
            (n >= 90).then_some(n)
        },
    )
    .await;
    eprintln!(
        "browser in the middle: played {first_m:.0} ms after load; the relay below it recorded \
         {frames} frames {} ms after joining",
        t0.elapsed().as_millis()
    );
    assert_eq!(
        pm.state().await.children,
        vec![relay_peer(&below)],
        "the recorder hangs below the browser"
    );

    // An unanswered `.local` name times out after 10 s in webrtc-rs: the
    // logs are read after that.
    let quiet_until = v2_playing + Duration::from_secs(11);
    tokio::time::sleep(quiet_until.saturating_duration_since(Instant::now())).await;
    below.signal("INT");
    assert!(below.wait(Duration::from_secs(10)).success());
    let (codec, w, h, decoded) = decode_with_ffmpeg(&rec);
    assert_eq!((codec.as_str(), w, h), ("vp8", 640, 360));
    assert!(decoded >= frames as u64, "{decoded} < {frames}");
    for p in [&relay, &below] {
        let a = alarms(p);
        assert!(
            a.is_empty(),
            "{}: WARN/ERROR lines:\n{}",
            p.name,
            a.join("\n")
        );
    }
    for p in [p1, p2, pm] {
        p.close().await;
    }
}

/// A Chromium viewer below a relay, every host dropping 3% of the UDP it
/// sends: repairs reach it in time to play on without freezing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_two_lossy_hops_down_plays_without_freezing() {
    let Some(lab) = lab_or_skip("a_browser_two_lossy_hops_down_plays_without_freezing") else {
        return;
    };
    let Some((chromium, driver)) = chrome::tools("a browser at 3% loss", &[]) else {
        return;
    };
    let _serial = one_at_a_time_async().await;
    let s = Scratch::new("lab-browser-loss");
    let lan = lab.switch("lan");
    let a = lab.host("a", &lan, "203.0.113.1/24");
    let b = lab.host("b", &lan, "203.0.113.2/24");
    let v = lab.host("v", &lan, "203.0.113.11/24");
    for h in [&a, &b, &v] {
        h.default_route("203.0.113.254".parse().expect("address"));
        h.drop_udp(3);
    }
    let (_sig, url) = signal_on(&s, &a, &["--k", "1", "--k1", "1"]);
    let (_src, tree) = source_on(&s, &a, &url, 1);
    let _relay = join_on(&s, &b, "relay@b", &url, &tree, &["--k", "1"], "depth=1");
    let chrome = Chrome::start(&s, &chromium, &driver);
    let page = chrome
        .page_at("viewer", &watch_url(&a, 0, &tree), &browser_at(&v, &a))
        .await;
    first_frame_ms(&page).await;
    let play = Duration::from_secs(30);
    let before = page.state().await;
    let t0 = Instant::now();
    tokio::time::sleep(play).await;
    let after = page.state().await;
    let secs = t0.elapsed().as_secs_f64();
    let fps = (after.frames_decoded - before.frames_decoded) as f64 / secs;
    let frozen = after.total_freezes_duration - before.total_freezes_duration;
    let dropped: u64 = [&a, &b, &v].iter().map(|h| h.udp_dropped()).sum();
    eprintln!(
        "browser two hops down at 3% loss per host: {fps:.1} frames/s decoded over {secs:.0} s, \
         frozen {:.0} ms ({:.2}% of play time, {} freezes); {} packets lost before repair, \
         {} NACKs sent, {} retransmissions received; the lab dropped {dropped} datagrams",
        frozen * 1000.0,
        100.0 * frozen / secs,
        after.freeze_count - before.freeze_count,
        after.packets_lost - before.packets_lost,
        after.nack_count - before.nack_count,
        after.retransmitted_packets_received - before.retransmitted_packets_received,
    );
    assert!(frozen < secs / 100.0, "frozen {frozen:.2} s of {secs:.0} s");
    assert!(fps >= 25.0, "{fps:.1} frames/s");
    page.close().await;
}

// ---------------------------------------------------------------------------
// Glass to glass.

const CLOCK_JS: &str = include_str!("chrome/clock.js");

/// p50 and p95 of a sample, in its unit.
fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

/// Starts reading the clock from `page`'s video; `latencies` then returns
/// what it has read.
async fn start_reading_clock(page: &Page) {
    page.eval(&format!(
        "{CLOCK_JS}\nwindow.clockRecord = ptClock.readClock(watch.video); return true;"
    ))
    .await;
}

/// Glass-to-glass latencies (ms) `page` has read so far, and how many
/// frames it could not read.
async fn latencies(page: &Page) -> (Vec<f64>, u64) {
    let v = page
        .eval("return [window.clockRecord.latencies, window.clockRecord.unreadable]")
        .await;
    let l: Vec<f64> = serde_json::from_value(v[0].clone()).expect("latencies");
    (l, v[1].as_u64().unwrap_or_default())
}

/// Latency of one viewer over `secs`, after its first frame.
async fn measure_latency(page: &Page, secs: u64) -> (f64, f64, usize, u64) {
    first_frame_ms(page).await;
    start_reading_clock(page).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (l, unreadable) = latencies(page).await;
    let n = l.len();
    assert!(n as u64 > secs * 20, "{}: only {n} frames read", page.name);
    let earliest = l.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        earliest >= 0.0,
        "{}: a frame seen {earliest} ms after it was drawn",
        page.name
    );
    let (p50, p95) = percentiles(l);
    (p50, p95, n, unreadable)
}

/// A browser source draws the wall clock into its frames; a browser leaf
/// reads it from every frame it presents. Through two relays on hosts of
/// their own, against a leaf connected to the source directly, in the same
/// run; then the same with every host dropping 3% of the UDP it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glass_to_glass_through_two_relays_against_a_direct_viewer() {
    let Some(lab) = lab_or_skip("glass_to_glass_through_two_relays_against_a_direct_viewer") else {
        return;
    };
    let Some((chromium, driver)) = chrome::tools("glass-to-glass latency", &[]) else {
        return;
    };
    let _serial = one_at_a_time_async().await;
    let s = Scratch::new("lab-latency");
    let lan = lab.switch("lan");
    let a = lab.host("a", &lan, "203.0.113.1/24");
    let src = lab.host("src", &lan, "203.0.113.10/24");
    let b = lab.host("b", &lan, "203.0.113.2/24");
    let c = lab.host("c", &lan, "203.0.113.3/24");
    let leaf = lab.host("leaf", &lan, "203.0.113.11/24");
    let direct = lab.host("direct", &lan, "203.0.113.12/24");
    let hosts = [&a, &src, &b, &c, &leaf, &direct];
    for h in hosts {
        h.default_route("203.0.113.254".parse().expect("address"));
    }
    let (_sig, url) = signal_on(&s, &a, &["--k", "1", "--k1", "1"]);
    let chrome = Chrome::start(&s, &chromium, &driver);
    let source = chrome
        .page_at(
            "source",
            &format!("http://{}:8080/?k=1", a.addr),
            &browser_at(&src, &a),
        )
        .await;
    let tree = source
        .eval(&format!(
            "{CLOCK_JS}\nreturn await watch.client.create(ptClock.clockStream());"
        ))
        .await
        .as_str()
        .expect("tree id")
        .to_owned();
    let secs = 15;
    let mut rows = Vec::new();
    for loss in [0, 3] {
        for h in hosts {
            h.drop_udp(loss);
        }
        // The source has one slot: first the direct viewer...
        let d = chrome
            .page_at(
                &format!("direct{loss}"),
                &watch_url(&a, 0, &tree),
                &browser_at(&direct, &a),
            )
            .await;
        let direct_lat = measure_latency(&d, secs).await;
        d.close().await;
        // ...then source -> relay -> relay -> leaf.
        let r1 = join_on(
            &s,
            &b,
            &format!("r1-{loss}"),
            &url,
            &tree,
            &["--k", "1"],
            "depth=1",
        );
        let r2 = join_on(
            &s,
            &c,
            &format!("r2-{loss}"),
            &url,
            &tree,
            &["--k", "1"],
            "depth=2",
        );
        let l = chrome
            .page_at(
                &format!("leaf{loss}"),
                &watch_url(&a, 0, &tree),
                &browser_at(&leaf, &a),
            )
            .await;
        let tree_lat = measure_latency(&l, secs).await;
        assert_eq!(l.state().await.depth, Some(3));
        l.close().await;
        drop((r1, r2));
        rows.push((loss, direct_lat, tree_lat));
        if loss > 0 {
            break;
        }
        // Lab loss rules are added, never removed: the 3% pass comes last.
        // Let the server notice the relays' exit before the next pass.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "glass to glass (ms) | direct p50 / p95 | via two relays p50 / p95 | tree adds (p50)"
    );
    for (loss, d, t) in &rows {
        eprintln!(
            "{loss:>18}% | {:>6.1} / {:>6.1} | {:>6.1} / {:>6.1} | {:+.1} ms ({} and {} frames read, \
             {} and {} unreadable)",
            d.0, d.1, t.0, t.1, t.0 - d.0, d.2, t.2, d.3, t.3
        );
    }
    for (loss, d, t) in &rows {
        assert!(
            t.0 - d.0 < 5.0,
            "at {loss}% loss two relays add {:.1} ms at p50",
            t.0 - d.0
        );
    }
    source.close().await;
}

// ---------------------------------------------------------------------------
// NAT and TURN.

/// A host alone on a LAN of its own behind a NAT router on `wan`; returns
/// the host and its router.
fn behind_nat(lab: &Lab, wan: &netlab::Switch, name: &str, n: u8, nat: Nat) -> (Host, Host) {
    let lan = lab.switch(&format!("lan-{name}"));
    let router = lab.router(
        &format!("nat-{name}"),
        (wan, &format!("203.0.113.{}/24", 100 + n)),
        (&lan, &format!("100.64.{n}.1/24")),
        nat,
    );
    let h = lab.host(name, &lan, &format!("100.64.{n}.2/24"));
    h.default_route(format!("100.64.{n}.1").parse().expect("address"));
    (h, router)
}

/// Milliseconds from `since` to the first frame in `path`.
fn first_frame_after(path: &std::path::Path, since: Instant, within: Duration) -> u128 {
    recorded(path, 1, within);
    since.elapsed().as_millis()
}

/// The NAT lab: the signalling server and the sources on a public host
/// (`a`), coturn beside it, members behind NAT routers of every kind.
struct NatLab {
    _lab: Lab,
    s: Scratch,
    a: Host,
    /// Public hosts for members that need no NAT.
    p: Host,
    g: Host,
    /// Behind port-preserving NATs.
    ha: Host,
    hb: Host,
    /// Behind symmetric-like NATs.
    hc: Host,
    hd: Host,
    /// Behind a router that passes UDP to the TURN server only.
    hf: Host,
    /// The server with STUN and TURN, and one with STUN alone.
    url: String,
    url_stun: String,
    _procs: Vec<Proc>,
    /// Last, so it is released after the lab's processes and namespaces
    /// are gone: the whole lab, its setup included, is one test's.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

fn nat_lab(test: &str) -> Option<NatLab> {
    let lab = lab_or_skip(test)?;
    if !netlab::have("turnserver") {
        let what = format!("{test}: needs coturn (Debian: apt-get install -y coturn)");
        assert!(
            std::env::var_os(netlab::REQUIRE).is_none_or(|v| v == "0"),
            "{what}; {} is set, so this is a failure",
            netlab::REQUIRE
        );
        eprintln!("skipped: {what}");
        return None;
    }
    let serial = one_at_a_time();
    let s = Scratch::new(test);
    let wan = lab.switch("wan");
    let a = lab.host("a", &wan, "203.0.113.1/24");
    let turn = lab.host("turn", &wan, "203.0.113.3/24");
    // A TURN server on the Internet has a default route (netlab::coturn
    // says why it must).
    let internet = lab.internet(&wan, "203.0.113.254/24");
    turn.default_route(internet.addr);
    let p = lab.host("p", &wan, "203.0.113.50/24");
    let g = lab.host("g", &wan, "203.0.113.51/24");
    let (ha, _) = behind_nat(&lab, &wan, "ha", 1, Nat::PortPreserving);
    let (hb, _) = behind_nat(&lab, &wan, "hb", 2, Nat::PortPreserving);
    let (hc, _) = behind_nat(&lab, &wan, "hc", 3, Nat::Symmetric);
    let (hd, _) = behind_nat(&lab, &wan, "hd", 4, Nat::Symmetric);
    let (hf, firewall) = behind_nat(&lab, &wan, "hf", 5, Nat::PortPreserving);
    // hf's router passes UDP to the TURN server only (and TCP to the
    // signalling server): only a relay candidate of its own connects it.
    firewall.nft(
        "table inet turn_only {\n chain forward_udp {\n  type filter hook forward priority filter;\n  \
         iifname \"eth1\" meta l4proto udp ip daddr != 203.0.113.3 drop\n }\n}\n",
    );
    let secret_file = s.path("turn-secret");
    std::fs::write(&secret_file, "lab-shared-secret").expect("write the TURN secret");
    let coturn = Proc::spawn_command(
        &s,
        "coturn",
        netlab::coturn(&turn, "lab-shared-secret", &s.0),
        false,
    );
    let turn_log = s.path("turnserver.log");
    until("coturn to start", Duration::from_secs(20), || {
        std::fs::read_to_string(&turn_log)
            .ok()
            .filter(|l| l.contains("Total General servers"))
    });
    let (sig, url) = signal_on(
        &s,
        &a,
        &[
            "--k",
            "2",
            "--k1",
            "2",
            "--ice-server",
            "stun:203.0.113.3:3478",
            "--ice-server",
            "turn:203.0.113.3:3478",
            "--turn-secret-file",
            secret_file.to_str().expect("UTF-8 path"),
        ],
    );
    let (sig_stun, url_stun) = signal_on_port(
        &s,
        &a,
        8081,
        &[
            "--k",
            "2",
            "--k1",
            "2",
            "--ice-server",
            "stun:203.0.113.3:3478",
        ],
    );
    Some(NatLab {
        _lab: lab,
        s,
        a,
        p,
        g,
        ha,
        hb,
        hc,
        hd,
        hf,
        url,
        url_stun,
        _procs: vec![coturn, sig, sig_stun],
        _serial: serial,
    })
}

/// (a) A relay behind a NAT joins and records (the source learns its
/// address from its checks: peer-reflexive candidates); (b) it feeds a leaf
/// behind another NAT, with STUN from the server's `--ice-server` list.
#[test]
fn members_behind_nats_connect_with_stun() {
    let Some(n) = nat_lab("lab-nat-stun") else {
        return;
    };
    let (a_ms, b_ms, procs) = relay_and_leaf_behind_nats(&n, &n.url);
    eprintln!(
        "join to first recorded frame: (a) relay behind a NAT, source public: {a_ms} ms; \
         (b) leaf behind NAT B below the relay behind NAT A (STUN): {b_ms} ms"
    );
    for p in &procs {
        let a = alarms(p);
        assert!(
            a.is_empty(),
            "{}: WARN/ERROR lines:\n{}",
            p.name,
            a.join("\n")
        );
    }
}

/// A tree from the public source: a relay behind port-preserving NAT A,
/// a leaf behind NAT B below it, both recording. Returns the ms from each
/// one's join to its first recorded frame, and the processes (the source
/// first).
fn relay_and_leaf_behind_nats(n: &NatLab, url: &str) -> (u128, u128, Vec<Proc>) {
    let s = &n.s;
    let (src, tree) = source_on(s, &n.a, url, 1);
    let rec_a = s.path(&format!("a-{}.ivf", tree));
    let t0 = Instant::now();
    let ra = join_on(
        s,
        &n.ha,
        "relay@ha",
        url,
        &tree,
        &["--k", "1", "--record", rec_a.to_str().expect("UTF-8 path")],
        "depth=1",
    );
    let a_ms = first_frame_after(&rec_a, t0, Duration::from_secs(20));
    let rec_b = s.path(&format!("b-{}.ivf", tree));
    let t0 = Instant::now();
    let lb = join_on(
        s,
        &n.hb,
        "leaf@hb",
        url,
        &tree,
        &["--k", "0", "--record", rec_b.to_str().expect("UTF-8 path")],
        "depth=2",
    );
    let b_ms = first_frame_after(&rec_b, t0, Duration::from_secs(20));
    (a_ms, b_ms, vec![src, ra, lb])
}

/// (c) Behind two symmetric-like NATs (a new port per destination) a relay
/// feeds a leaf through TURN, with credentials made per connection from a
/// secret shared with coturn. The same without TURN fails, which proves
/// TURN carried it.
#[test]
fn symmetric_nats_connect_through_turn_and_only_through_turn() {
    let Some(n) = nat_lab("lab-nat-turn") else {
        return;
    };
    let s = &n.s;
    let (_src, tree) = source_on(s, &n.a, &n.url, 1);
    let _rc = join_on(
        s,
        &n.hc,
        "relay@hc",
        &n.url,
        &tree,
        &["--k", "1"],
        "depth=1",
    );
    let rec = s.path("c.ivf");
    let t0 = Instant::now();
    let _ld = join_on(
        s,
        &n.hd,
        "leaf@hd",
        &n.url,
        &tree,
        &["--k", "0", "--record", rec.to_str().unwrap()],
        "depth=2",
    );
    let c_ms = first_frame_after(&rec, t0, Duration::from_secs(20));
    eprintln!(
        "join to first recorded frame: (c) both behind symmetric NATs, through TURN: {c_ms} ms"
    );
    // The first packets through TURN were once dropped before the track was
    // registered (the replayed group with them), and a viewer there is as
    // healthy as any: its log stays clean.
    recorded(&rec, 60, Duration::from_secs(10));
    for p in [&_rc, &_ld] {
        let a = alarms(p);
        assert!(
            a.is_empty(),
            "{}: WARN/ERROR lines:\n{}",
            p.name,
            a.join("\n")
        );
    }

    let (_src3, tree3) = source_on(s, &n.a, &n.url_stun, 1);
    let _rc3 = join_on(
        s,
        &n.hc,
        "relay@hc-stun",
        &n.url_stun,
        &tree3,
        &["--k", "1"],
        "depth=1",
    );
    let rec_none = s.path("c-without-turn.ivf");
    let ld3 = join_on(
        s,
        &n.hd,
        "leaf@hd-stun",
        &n.url_stun,
        &tree3,
        &["--k", "0", "--record", rec_none.to_str().unwrap()],
        "depth=2",
    );
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        ivf_frames(&rec_none).is_empty(),
        "without TURN the leaf behind a symmetric NAT recorded frames: TURN was not what \
         carried (c)"
    );
    assert!(
        !ld3.log_text().contains("connected to parent"),
        "without TURN the leaf connected:\n{}",
        ld3.log_text()
    );
}

/// (d) A member that only its own TURN allocation connects (its router lets
/// UDP through to the TURN server alone) says so, and the server gives it no
/// children: a leaf that joined below it moves to a public relay, and a
/// later one goes there at once.
#[test]
fn a_member_only_turn_reaches_gets_no_children() {
    let Some(n) = nat_lab("lab-nat-relayed") else {
        return;
    };
    let s = &n.s;
    let (_src, tree) = source_on(s, &n.a, &n.url, 2);
    let rec_f = s.path("f.ivf");
    let t0 = Instant::now();
    let f = join_on(
        s,
        &n.hf,
        "relay@hf",
        &n.url,
        &tree,
        &["--k", "2", "--record", rec_f.to_str().unwrap()],
        "depth=1",
    );
    let p = join_on(s, &n.p, "relay@p", &n.url, &tree, &["--k", "2"], "depth=1");
    let g = join_on(s, &n.g, "leaf@g", &n.url, &tree, &["--k", "0"], "depth=2");
    let f_ms = first_frame_after(&rec_f, t0, Duration::from_secs(20));
    until(
        "relay@hf to say only TURN reaches it",
        Duration::from_secs(10),
        || log_has(&f, "only a TURN relay reaches this member"),
    );
    let snapshot = || -> serde_json::Value {
        let (code, body) =
            n.a.http_get(
                &format!("http://{}:8080/api/trees/{tree}", n.a.addr),
                Duration::from_secs(5),
            )
            .expect("the server answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("snapshot JSON")
    };
    let (f_id, p_id, g_id) = (relay_peer(&f), relay_peer(&p), relay_peer(&g));
    let snap = until(
        "the leaf below the public relay",
        Duration::from_secs(10),
        || {
            let snap = snapshot();
            (parent_in(&snap, &g_id).as_deref() == Some(p_id.as_str())).then_some(snap)
        },
    );
    let node = snap["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["peer"] == f_id))
        .cloned()
        .unwrap_or_else(|| panic!("{f_id} not in {snap}"));
    assert_eq!(node["relayed"], true, "{snap}");
    assert_eq!(node["children"], serde_json::json!([]), "{snap}");
    let h = join_on(s, &n.g, "leaf@g2", &n.url, &tree, &["--k", "0"], "depth=2");
    let snap = snapshot();
    assert_eq!(
        parent_in(&snap, &relay_peer(&h)).as_deref(),
        Some(p_id.as_str()),
        "a later leaf went below the relayed member: {snap}"
    );
    eprintln!(
        "join to first recorded frame: (d) relay whose router passes UDP to the TURN server \
         only: {f_ms} ms; it said so and holds no children"
    );
}

// ---------------------------------------------------------------------------
// A slow child.

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One child of a relay sits behind a 200 kbit/s link (both ways) while the
/// sample needs about 250 kbit/s. Its siblings lose nothing, the relay's
/// memory stays bounded, and the slow child gets what it can carry.
#[test]
fn a_slow_child_hurts_nobody_else() {
    let Some(lab) = lab_or_skip("a_slow_child_hurts_nobody_else") else {
        return;
    };
    let _serial = one_at_a_time();
    let s = Scratch::new("lab-slow");
    let lan = lab.switch("lan");
    let a = lab.host("a", &lan, "203.0.113.1/24");
    let b = lab.host("b", &lan, "203.0.113.2/24");
    let c1 = lab.host("c1", &lan, "203.0.113.11/24");
    let c2 = lab.host("c2", &lan, "203.0.113.12/24");
    let slow = lab.host("slow", &lan, "203.0.113.13/24");
    slow.rate_limit(200, 200);
    let (_sig, url) = signal_on(&s, &a, &["--k", "3", "--k1", "1"]);
    let (_src, tree) = source_on(&s, &a, &url, 1);
    let relay = join_on(&s, &b, "relay@b", &url, &tree, &["--k", "3"], "depth=1");
    let rss_start = rss_kib(relay.child.id());
    let recorder = |host: &Host, name: &str| {
        let path = s.path(&format!("{name}.ivf"));
        let p = join_on(
            &s,
            host,
            name,
            &url,
            &tree,
            &["--k", "0", "--record", path.to_str().expect("UTF-8 path")],
            "depth=2",
        );
        (p, path)
    };
    let (_p1, r1) = recorder(&c1, "fast1");
    let (_p2, r2) = recorder(&c2, "fast2");
    let (_p3, r3) = recorder(&slow, "slow");
    recorded(&r1, 1, Duration::from_secs(20));
    recorded(&r2, 1, Duration::from_secs(20));
    let mut rss_peak = rss_start;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        rss_peak = rss_peak.max(rss_kib(relay.child.id()));
    }
    let file = VideoFile::open(sample("testsrc-640x360-vp8.ivf")).expect("sample parses");
    let fast1 = coverage(&ivf_frames_timed(&r1), &file, "fast sibling 1");
    let fast2 = coverage(&ivf_frames_timed(&r2), &file, "fast sibling 2");
    let slow_frames = ivf_frames(&r3);
    let slow_cov = coverage(&ivf_frames_timed(&r3), &file, "slow child");
    let runs: Vec<usize> = runs_of(&slow_frames, file.frames(), "slow child")
        .iter()
        .map(|r| r.len)
        .collect();
    let median = {
        let mut r = runs.clone();
        r.sort_unstable();
        r.get(r.len() / 2).copied().unwrap_or(0)
    };
    eprintln!(
        "slow child (200 kbit/s both ways): siblings {:.2}% and {:.2}% of {} and {} frames; the slow \
         child holds {:.1}% of its span ({} of {} frames) in {} runs (longest {}, median {}); relay \
         RSS {} KiB at the start, {} KiB at most",
        fast1.percent(),
        fast2.percent(),
        fast1.span,
        fast2.span,
        slow_cov.percent(),
        slow_cov.held,
        slow_cov.span,
        runs.len(),
        runs.iter().max().copied().unwrap_or(0),
        median,
        rss_start,
        rss_peak
    );
    assert!(
        fast1.percent() >= 99.9 && fast2.percent() >= 99.9,
        "a sibling of the slow child lost frames"
    );
    // Bounded: per-child queues are bounded, so the relay's memory is too.
    assert!(rss_peak < 64 * 1024, "relay RSS reached {rss_peak} KiB");
    // Whole groups of pictures (30 frames each in the sample), not a
    // frame here and there.
    assert!(
        slow_cov.percent() >= 30.0 && median >= 30,
        "the slow child got {:.1}% in runs of median {median} frames",
        slow_cov.percent()
    );
}

/// A bad or unreachable ICE server costs only the candidates it would have
/// given, never the connection: a STUN server nobody runs, a TURN server
/// nobody runs, and the real TURN server with a wrong credential.
#[test]
fn bad_ice_servers_cost_only_their_candidates() {
    let Some(n) = nat_lab("lab-nat-bad-ice") else {
        return;
    };
    let s = &n.s;
    let (_sig, url) = signal_on_port(
        s,
        &n.a,
        8082,
        &[
            "--ice-server",
            "stun:203.0.113.99:3478",
            "--ice-server",
            "turn:nobody:nothing@203.0.113.98:3478",
            "--ice-server",
            "turn:lab:wrong@203.0.113.3:3478",
            "--ice-server",
            "stun:203.0.113.3:3478",
        ],
    );
    let (a_ms, b_ms, _procs) = relay_and_leaf_behind_nats(&n, &url);
    eprintln!(
        "with a dead STUN server, a dead TURN server and a wrong TURN credential in the list: \
         relay behind a NAT recorded {a_ms} ms after joining, the leaf behind another NAT \
         {b_ms} ms"
    );
}
