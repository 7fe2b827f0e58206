//! Browsers and relays mixed in one tree, with real headless Chromium: the
//! watch page (and so peer-tree-client.js) joins, plays, forwards and can be
//! the source; and Chromium publishes over WHIP and plays over WHEP
//! (tests/chrome/offer_http.js). Without Chromium these tests say they were skipped, unless
//! PEER_TREE_REQUIRE_BROWSER is set (CI), which makes that a failure.
//!
//! Run with `--nocapture` to see the figures each scenario measured.

mod chrome;
mod common;

use std::process::ChildStdin;
use std::time::{Duration, Instant};

use chrome::{eventually, Chrome, Page};
use common::*;

/// Browsers are heavy for these 2 cores (a forwarding page takes a third of
/// one): the scenarios run one at a time.
/// (An async lock: each test has its own runtime and holds it throughout.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

fn watch_url(ws_url: &str, k: u32, tree: &str) -> String {
    format!("http://{}/?k={k}#{tree}", http_addr(ws_url))
}

/// The data channel is a live feed: lines go only to members connected when
/// they are sent. Sends `warmup` lines until `arrived` sees one, so that every
/// numbered line sent afterwards is owed to the receiver.
async fn warm_up<F, Fut>(stdin: &mut ChildStdin, what: &str, mut arrived: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        feed(stdin, "warmup");
        if arrived().await {
            return;
        }
        assert!(Instant::now() < deadline, "no warmup line reached {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The numbered messages `page` received, once it has `n` of them.
async fn numbered_messages(page: &Page, n: usize) -> Vec<String> {
    eventually(
        &format!("{n} messages at {}", page.name),
        Duration::from_secs(20),
        || async {
            let got = page.messages("msg-").await;
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

/// The sample and the page's canvas source run at 30 fps; a page that
/// decodes slower than this is dropping or stalling.
const MIN_FPS: f64 = 25.0;

/// Waits until `page` decodes `more` frames beyond what it has decoded now;
/// returns the frame rate over that stretch, which must be at least
/// [`MIN_FPS`].
async fn decoding_rate(page: &Page, more: u64) -> f64 {
    let start = page.state().await.frames_decoded;
    let t0 = Instant::now();
    let end = eventually(
        &format!("{} to decode {more} more frames", page.name),
        Duration::from_secs(20),
        || async {
            let f = page.state().await.frames_decoded;
            (f >= start + more).then_some(f)
        },
    )
    .await;
    let fps = (end - start) as f64 / t0.elapsed().as_secs_f64();
    assert!(
        fps >= MIN_FPS,
        "{} decoded {} frames at {fps:.1} fps (at least {MIN_FPS} expected)",
        page.name,
        end - start
    );
    fps
}

/// (a) Rust source -> Rust relay -> browser leaf: the browser decodes the
/// sample's 640x360 VP8 and receives every data message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_leaf_under_a_relay_decodes_and_gets_every_message() {
    let Some((chromium, driver)) = chrome::tools("browser leaf", &[]) else {
        return;
    };
    let _one = one_at_a_time().await;
    let s = Scratch::new("browser-leaf");
    let (_sig, url) = signal_server(&s, &[]);
    let (mut src, tree) = looping_source(&s, &url, &sample("testsrc-640x360-vp8.ivf"));
    let r = relay(&s, "relay", &url, &tree, &["--k", "1"], "joined tree");
    let chrome = Chrome::start(&s, &chromium, &driver);

    let page = chrome.page("leaf", &watch_url(&url, 0, &tree)).await;
    let t0 = Instant::now();
    let first = eventually("the leaf decodes", Duration::from_secs(30), || async {
        let st = page.state().await;
        (st.frames_decoded > 0).then_some(st)
    })
    .await;
    let first_frame = t0.elapsed();
    assert_eq!(first.depth, Some(2));
    assert_eq!(first.parent.as_deref(), Some(relay_peer(&r).as_str()));
    let fps = decoding_rate(&page, 90).await;
    let st = page.state().await;
    assert_eq!((st.frame_width, st.frame_height), (640, 360));

    let stdin = src.stdin.as_mut().expect("source stdin");
    warm_up(stdin, "the browser", || async {
        !page.messages("warmup").await.is_empty()
    })
    .await;
    let sent = send_numbered(stdin, 500);
    let got = numbered_messages(&page, sent.len()).await;
    assert_eq!(got, sent, "every message, in order, once");
    // The page reports its counters to the server, which shows them.
    let leaf = st.peer.clone().expect("peer id");
    let stats = eventually(
        "the leaf's stats in /api/trees",
        Duration::from_secs(10),
        || async {
            let snap = tree_snapshot(&url, &tree).await;
            let node = snap["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["peer"] == leaf.as_str())?;
            let stats = node.get("stats")?.clone();
            (stats["rx_bps"].as_f64()? > 0.0).then_some(stats)
        },
    )
    .await;
    assert_eq!(stats["agent"], "browser");
    println!(
        "(a) browser leaf at depth 2: first frame {:.2} s after the page loaded, {} frames decoded, \
         {fps:.1} fps over 90 frames, {}x{}; {} of {} messages in order; it reports {:.0} kbit/s",
        first_frame.as_secs_f64(),
        st.frames_decoded,
        st.frame_width,
        st.frame_height,
        got.len(),
        sent.len(),
        stats["rx_bps"].as_f64().unwrap_or_default() / 1000.0
    );
    page.close().await;
}

/// (e) H.264 as a live publisher sends it (x264, `ffmpeg -c copy -f rtp`)
/// -> source --rtp -> relay -> browser leaf: Chromium decodes the tree's
/// H.264 as the relay mirrored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_leaf_decodes_h264_from_a_live_rtp_publisher() {
    let Some((chromium, driver)) = chrome::tools("browser H.264 leaf", &["ffmpeg"]) else {
        return;
    };
    let _one = one_at_a_time().await;
    let s = Scratch::new("browser-h264");
    let published = encode_h264(&s);
    let (_sig, url) = signal_server(&s, &["--k1", "1"]);
    let (_src, port, tree) = rtp_source(&s, &url, "h264");
    let _relay = relay(
        &s,
        "relay",
        &url,
        &tree,
        &["--k", "1"],
        "connected to parent",
    );
    let chrome = Chrome::start(&s, &chromium, &driver);
    let page = chrome.page("leaf", &watch_url(&url, 0, &tree)).await;
    eventually("the leaf joins", Duration::from_secs(20), || async {
        (page.state().await.depth == Some(2)).then_some(())
    })
    .await;
    let mut ff = ffmpeg_sends_h264(&s, &published, port, None);
    let t0 = Instant::now();
    let first = eventually("the leaf decodes", Duration::from_secs(20), || async {
        let st = page.state().await;
        (st.frames_decoded > 0).then_some(st)
    })
    .await;
    let first_frame = t0.elapsed();
    assert_eq!(first.video_codec.as_deref(), Some("video/H264"));
    let fps = decoding_rate(&page, 90).await;
    let st = page.state().await;
    assert_eq!((st.frame_width, st.frame_height), (640, 360));
    println!(
        "(e) browser leaf below a relay, H.264 from ffmpeg over RTP: first frame {:.2} s after \
         ffmpeg started, {fps:.1} fps over 90 frames, {}x{}, decoded as {}",
        first_frame.as_secs_f64(),
        st.frame_width,
        st.frame_height,
        st.video_codec.as_deref().unwrap_or("?")
    );
    ff.kill();
    page.close().await;
}

/// (b) Rust source -> browser (k=2) -> Rust relay recording: the browser
/// re-encodes what it forwards, the relay records VP8 that ffmpeg decodes,
/// and the data channel passes through the browser message by message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_below_a_browser_records_decodable_video_and_every_message() {
    let Some((chromium, driver)) = chrome::tools("browser in the middle", &["ffprobe"]) else {
        return;
    };
    let _one = one_at_a_time().await;
    let s = Scratch::new("browser-middle");
    let (_sig, url) = signal_server(&s, &[]);
    let (mut src, tree) = looping_source(&s, &url, &sample("testsrc-640x360-vp8.ivf"));
    let chrome = Chrome::start(&s, &chromium, &driver);
    let page = chrome.page("middle", &watch_url(&url, 2, &tree)).await;
    let me = eventually("the browser joins", Duration::from_secs(20), || async {
        let st = page.state().await;
        (st.frames_decoded > 0).then_some(st)
    })
    .await;
    assert_eq!(me.depth, Some(1));

    // k=0: a recording leaf, placed by rule 3 alone (a relay that accepts
    // children would take the browser's place by rule 4).
    let rec = s.path("below-browser.ivf");
    let out = s.path("below-browser.txt");
    let mut r = relay(
        &s,
        "relay",
        &url,
        &tree,
        &[
            "--k",
            "0",
            "--record",
            rec.to_str().expect("UTF-8 path"),
            "--data-out",
            out.to_str().expect("UTF-8 path"),
        ],
        "joined tree",
    );
    let snap = tree_snapshot(&url, &tree).await;
    let browser = me.peer.clone().expect("peer id");
    assert_eq!(parent_in(&snap, &relay_peer(&r)), Some(browser.clone()));

    let t0 = Instant::now();
    let frames = eventually("150 recorded frames", Duration::from_secs(30), || async {
        let n = ivf_frames(&rec).len();
        (n >= 150).then_some(n)
    })
    .await;
    let record_secs = t0.elapsed().as_secs_f64();

    let stdin = src.stdin.as_mut().expect("source stdin");
    warm_up(stdin, "the relay below the browser", || async {
        !data_lines(&out, "warmup").is_empty()
    })
    .await;
    let sent = send_numbered(stdin, 500);
    let got = eventually(
        "500 messages at the relay",
        Duration::from_secs(20),
        || async {
            let got = data_lines(&out, "msg-");
            (got.len() >= sent.len()).then_some(got)
        },
    )
    .await;
    assert_eq!(got, sent, "every message, in order, once");
    let children = page.state().await.children;
    assert_eq!(children, vec![relay_peer(&r)]);

    // A clean stop finishes the IVF header before ffmpeg reads it.
    r.signal("INT");
    assert!(r.wait(Duration::from_secs(10)).success());
    let (codec, w, h, decoded) = decode_with_ffmpeg(&rec);
    assert_eq!(codec, "vp8");
    assert!(decoded >= frames as u64, "{decoded} < {frames}");
    println!(
        "(b) relay at depth 2 below a browser: {frames} frames recorded in {record_secs:.1} s, \
         ffmpeg decoded {decoded} {codec} frames ({w}x{h}) without an error; {} of {} messages \
         in order",
        got.len(),
        sent.len()
    );
    page.close().await;
}

/// (c) A browser source with a fake camera, two Rust relays below it and a
/// browser leaf under them that decodes and gets the source's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_source_through_relays_to_a_browser_leaf() {
    let Some((chromium, driver)) = chrome::tools("browser source", &[]) else {
        return;
    };
    let _one = one_at_a_time().await;
    let s = Scratch::new("browser-source");
    let (_sig, url) = signal_server(&s, &[]);
    let chrome = Chrome::start(&s, &chromium, &driver);
    let source = chrome
        .page("source", &format!("http://{}/?k=1", http_addr(&url)))
        .await;
    source.click("start-camera").await;
    let tree = eventually(
        "the browser creates a tree",
        Duration::from_secs(20),
        || async { source.state().await.tree },
    )
    .await;
    let share = eventually("the share link", Duration::from_secs(5), || async {
        let link = source
            .eval("return document.getElementById('share-link').textContent")
            .await;
        link.as_str().filter(|l| !l.is_empty()).map(str::to_owned)
    })
    .await;
    assert_eq!(share, format!("http://{}/#{tree}", http_addr(&url)));

    let r1 = relay(
        &s,
        "relay1",
        &url,
        &tree,
        &["--k", "1"],
        "connected to parent",
    );
    let r2 = relay(
        &s,
        "relay2",
        &url,
        &tree,
        &["--k", "1"],
        "connected to parent",
    );
    let page = chrome.page("leaf", &watch_url(&url, 0, &tree)).await;
    let t0 = Instant::now();
    let first = eventually("the leaf decodes", Duration::from_secs(30), || async {
        let st = page.state().await;
        (st.frames_decoded > 0).then_some(st)
    })
    .await;
    let first_frame = t0.elapsed();
    let snap = tree_snapshot(&url, &tree).await;
    let source_peer = source.state().await.peer.expect("source peer id");
    assert_eq!(parent_in(&snap, &relay_peer(&r1)), Some(source_peer));
    assert_eq!(parent_in(&snap, &relay_peer(&r2)), Some(relay_peer(&r1)));
    assert_eq!(first.parent, Some(relay_peer(&r2)));
    assert_eq!(first.depth, Some(3));
    let fps = decoding_rate(&page, 60).await;
    let st = page.state().await;
    assert!(st.frame_width > 0 && st.frame_height > 0);

    let warm = || async {
        source.eval("window.watch.client.send('warmup')").await;
        !page.messages("warmup").await.is_empty()
    };
    eventually(
        "a message from the browser source",
        Duration::from_secs(20),
        || async { warm().await.then_some(()) },
    )
    .await;
    source
        .eval(
            "for (let i = 0; i < 300; i++) \
             window.watch.client.send('msg-' + String(i).padStart(4, '0'))",
        )
        .await;
    let sent: Vec<String> = (0..300).map(|i| format!("msg-{i:04}")).collect();
    let got = numbered_messages(&page, sent.len()).await;
    assert_eq!(got, sent, "every message, in order, once");
    println!(
        "(c) browser source -> relay -> relay -> browser leaf at depth 3: first frame {:.2} s \
         after the page loaded, {} frames decoded, {fps:.1} fps over 60 frames, {}x{}; {} of {} \
         messages in order",
        first_frame.as_secs_f64(),
        st.frames_decoded,
        st.frame_width,
        st.frame_height,
        got.len(),
        sent.len()
    );
    page.close().await;
    source.close().await;
}

async fn plays(page: &Page) {
    eventually(
        &format!("{} decodes", page.name),
        Duration::from_secs(30),
        || async { (page.state().await.frames_decoded > 0).then_some(()) },
    )
    .await
}

/// How a member's recording went after `t0`: its longest pause and when that
/// pause ended. Fed one frame count at a time.
struct Resumption {
    last_count: usize,
    last_growth: Instant,
    /// When the longest pause since `t0` ended (from `t0`): with a heal
    /// fast enough there is no visible stall, and this is just when the
    /// recording next grew.
    resumed: Option<Duration>,
    longest_gap: Duration,
}

impl Resumption {
    fn new(count: usize, t0: Instant) -> Resumption {
        Resumption {
            last_count: count,
            last_growth: t0,
            resumed: None,
            longest_gap: Duration::ZERO,
        }
    }

    fn sample(&mut self, count: usize, now: Instant, t0: Instant) {
        if count > self.last_count {
            let gap = now - self.last_growth;
            if gap > self.longest_gap || self.resumed.is_none() {
                self.longest_gap = self.longest_gap.max(gap);
                self.resumed = Some(now - t0);
            }
            self.last_count = count;
            self.last_growth = now;
        }
    }

    /// Grew within the last half second.
    fn flowing(&self, now: Instant) -> bool {
        now - self.last_growth < Duration::from_millis(500)
    }
}

/// (d) Source -> {browser M, relay R1 -> R1b}; M -> {browser L, relay R2};
/// R2 -> relay R3. M's page closes: the server re-places its children at
/// once (R2 under the source, L under R2) and L, R2 and R3 play again within
/// 3 s while R1 never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_middle_browser_heals_its_subtree_within_3_s() {
    let Some((chromium, driver)) = chrome::tools("mixed tree", &[]) else {
        return;
    };
    let _one = one_at_a_time().await;
    let s = Scratch::new("browser-heal");
    let (_sig, url) = signal_server(&s, &[]);
    let (_src, tree) = looping_source_k1(&s, &url, &sample("testsrc-640x360-vp8.ivf"), 2);
    let chrome = Chrome::start(&s, &chromium, &driver);
    let recording = |name: &str, k: &str| {
        let rec = s.path(&format!("{name}.ivf"));
        let p = relay(
            &s,
            name,
            &url,
            &tree,
            &["--k", k, "--record", rec.to_str().expect("UTF-8 path")],
            "joined tree",
        );
        (p, rec)
    };

    // The join order matters: rule 4 lets a relay with child slots take the
    // place of a shallower leaf (a browser, or a `--k 0` relay, which joins
    // as a peer). So each browser has a child before a relay with slots
    // joins below it, and the bystander R1 is no leaf: its one slot is
    // filled by R1b.
    let middle = chrome.page("M", &watch_url(&url, 2, &tree)).await;
    plays(&middle).await;
    let (r1, r1_rec) = recording("R1", "1");
    let (r1b, _) = recording("R1b", "0");
    let leaf = chrome.page("L", &watch_url(&url, 1, &tree)).await;
    plays(&leaf).await;
    let (r2, r2_rec) = recording("R2", "2");
    let (r3, r3_rec) = recording("R3", "0");
    let m = middle.state().await.peer.expect("M's peer id");
    let l = leaf.state().await.peer.expect("L's peer id");
    let (p1, p2, p3) = (relay_peer(&r1), relay_peer(&r2), relay_peer(&r3));
    let snap = tree_snapshot(&url, &tree).await;
    let source = snap["nodes"][0]["peer"].as_str().expect("root").to_owned();
    assert_eq!(parent_in(&snap, &m), Some(source.clone()));
    assert_eq!(parent_in(&snap, &p1), Some(source.clone()));
    assert_eq!(parent_in(&snap, &relay_peer(&r1b)), Some(p1.clone()));
    assert_eq!(parent_in(&snap, &l), Some(m.clone()));
    assert_eq!(parent_in(&snap, &p2), Some(m.clone()));
    assert_eq!(parent_in(&snap, &p3), Some(p2.clone()));
    let recs = [&r1_rec, &r2_rec, &r3_rec];
    eventually("every relay records", Duration::from_secs(30), || async {
        recs.iter().all(|r| ivf_frames(r).len() >= 30).then_some(())
    })
    .await;

    let t0 = Instant::now();
    middle.close().await;
    let mut relays: Vec<Resumption> = recs
        .iter()
        .map(|r| Resumption::new(ivf_frames(r).len(), t0))
        .collect();
    let mut leaf_back = None;
    // Sampled over the whole bound (3 s), so that a pause anywhere in it
    // counts, and on until L is back.
    let bound = Duration::from_secs(3);
    let deadline = t0 + Duration::from_secs(10);
    while Instant::now() < deadline && (Instant::now() < t0 + bound || leaf_back.is_none()) {
        let now = Instant::now();
        for (r, path) in relays.iter_mut().zip(recs) {
            r.sample(ivf_frames(path).len(), now, t0);
        }
        if leaf_back.is_none() {
            let st = leaf.state().await;
            if st.parent.as_deref() != Some(m.as_str()) && st.frames_decoded > 0 {
                leaf_back = Some(Instant::now() - t0);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // One more second of all three: R1, the bystander, never stopped, and
    // R2 and R3 go on.
    let one_more = Instant::now() + Duration::from_secs(1);
    while Instant::now() < one_more {
        let now = Instant::now();
        for (r, path) in relays.iter_mut().zip(recs) {
            r.sample(ivf_frames(path).len(), now, t0);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let snap = tree_snapshot(&url, &tree).await;
    assert_eq!(
        parent_in(&snap, &p2),
        Some(source.clone()),
        "R2 took M's slot"
    );
    assert_eq!(parent_in(&snap, &l), Some(p2.clone()), "L moved under R2");
    assert_eq!(parent_in(&snap, &p3), Some(p2.clone()), "R3 stayed with R2");
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "(d) M closed: L decoding again after {:.2} s (under R2), R2's longest pause ended \
         after {:.2} s ({} ms), R3's after {:.2} s ({} ms); R1 (bystander) recorded {} frames, none missing, longest \
         pause {} ms",
        secs(leaf_back),
        secs(relays[1].resumed),
        relays[1].longest_gap.as_millis(),
        secs(relays[2].resumed),
        relays[2].longest_gap.as_millis(),
        ivf_frames(&r1_rec).len(),
        relays[0].longest_gap.as_millis()
    );
    assert!(leaf_back.is_some_and(|d| d < bound), "L: {leaf_back:?}");
    let now = Instant::now();
    for (r, name) in relays[1..].iter().zip(["R2", "R3"]) {
        assert!(r.resumed.is_some_and(|d| d < bound), "{name}");
        assert!(r.longest_gap < bound, "{name}: paused {:?}", r.longest_gap);
        assert!(r.flowing(now), "{name} stopped recording again");
    }
    // The bystander lost nothing: its recording is the file's frames
    // without a gap, from before M closed to after its subtree healed.
    let file = relay::source::VideoFile::open(sample("testsrc-640x360-vp8.ivf")).expect("sample");
    let r1_frames = ivf_frames(&r1_rec);
    assert_run_of_file(&r1_frames, file.frames(), "R1");
    let st = leaf.state().await;
    assert_eq!(st.depth, Some(2));

    // The seed's reconnectUpstream(): every free slot is L's own parent's or
    // in L's own subtree, so the server answers tree-full, and by rule 7 that
    // changes nothing: L keeps its parent and keeps playing.
    let refused = leaf
        .eval(
            "return window.watch.client.reconnectUpstream() \
             .then(r => r, e => ({ code: e.code, error: String(e) }))",
        )
        .await;
    assert_eq!(refused["code"], "tree-full", "{refused}");
    let fps = decoding_rate(&leaf, 30).await;
    let after = leaf.state().await;
    assert_eq!(after.parent, Some(p2.clone()));
    assert_eq!(after.upstreams, st.upstreams, "no new upstream connection");
    println!("(d) L's reconnectUpstream() refused with tree-full; L still decodes at {fps:.1} fps");
    leaf.close().await;
}

/// Sockets a process holds open, from /proc (Linux).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// A browser child that vanishes mid-handshake (its page joins, gets the
/// relay's offer, and closes before answering) leaves nothing behind in the
/// relay: the server says `child-gone`, the relay closes that connection,
/// and the relay's socket count returns to what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_vanishing_mid_handshake_leaves_no_state_in_the_relay() {
    let Some((chromium, driver)) = chrome::tools("vanishing browser", &[]) else {
        return;
    };
    let _one = one_at_a_time().await;
    let s = Scratch::new("browser-vanish");
    let (_sig, url) = signal_server(&s, &[]);
    let (_src, tree) = looping_source(&s, &url, &sample("testsrc-640x360-vp8.ivf"));
    let r = relay(
        &s,
        "relay",
        &url,
        &tree,
        &["--k", "2"],
        "connected to parent",
    );
    let pid = r.child.id();
    // Settled: connected to its parent, no child yet.
    let before = open_sockets(pid);
    let chrome = Chrome::start(&s, &chromium, &driver);
    let page = chrome
        .page("vanishing", &format!("http://{}/?k=0", http_addr(&url)))
        .await;
    // A page speaking the protocol by hand, so it can stop half-way: it
    // joins, waits for the relay's offer, and never answers.
    let got = page
        .eval(&format!(
            "return new Promise((resolve, reject) => {{ \
               const ws = new WebSocket({ws}); \
               setTimeout(() => reject(new Error('no offer')), 15000); \
               ws.onmessage = (ev) => {{ \
                 const m = JSON.parse(ev.data); \
                 if (m.type === 'hello') ws.send(JSON.stringify({{type: 'join', tree: {tree}, k: 0, role: 'browser'}})); \
                 if (m.type === 'signal' && m.data.sdp) resolve({{ from: m.from, type: m.data.sdp.type }}); \
               }}; \
             }})",
            ws = serde_json::json!(url),
            tree = serde_json::json!(tree),
        ))
        .await;
    assert_eq!(got["type"], "offer", "{got}");
    assert_eq!(got["from"], relay_peer(&r).as_str());
    let during = open_sockets(pid);
    let closed = Instant::now();
    page.close().await;
    until(
        "the relay closes the half-open child",
        Duration::from_secs(10),
        || log_has(&r, "child gone; closing its connection"),
    );
    let after = until(
        "the relay's sockets back to before",
        Duration::from_secs(10),
        || {
            let n = open_sockets(pid);
            (n <= before).then_some(n)
        },
    );
    println!(
        "vanishing browser: relay sockets {before} before, {during} mid-handshake, {after} \
         {} ms after closing the page began",
        closed.elapsed().as_millis()
    );
    assert!(
        during > before,
        "the half-open child held sockets: {during}"
    );
    let snap = tree_snapshot(&url, &tree).await;
    assert_eq!(snap["size"], 2, "only the source and the relay: {snap}");
}

/// What `tests/chrome/offer_http.js` installs in a page: `whipPublish`,
/// `whepPlay`, `endSession`, and `window.offerHttp`.
const OFFER_HTTP_JS: &str = include_str!("chrome/offer_http.js");

/// The bearer token of the WHIP tests.
const TOKEN: &str = "s3cret";

/// A page of the signalling server's origin (loopback: a secure context,
/// so the fake camera works) with `offer_http.js` in it.
async fn offer_http_page(chrome: &Chrome, name: &str, ws_url: &str) -> Page {
    let page = chrome
        .page(
            name,
            &format!("http://{}/peer-tree-client.js", http_addr(ws_url)),
        )
        .await;
    page.eval(OFFER_HTTP_JS).await;
    page
}

/// FNV-1a, 32 bits: what `offer_http.js` hashes each encoded frame with.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The page's `offerHttp.errors`, for a failure's text.
async fn page_errors(page: &Page) -> serde_json::Value {
    page.eval("return offerHttp.errors").await
}

/// (f) Chromium as a WHIP publisher (its fake camera and microphone, VP8
/// and Opus, and a data channel): a recording member below the source gets
/// every frame Chromium's encoder made from the one it starts at, byte for
/// byte, and every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_publishes_over_whip_frame_for_frame() {
    let Some((chromium, driver)) = chrome::tools("browser WHIP publisher", &["ffprobe"]) else {
        return;
    };
    let _one = one_at_a_time().await;
    let s = Scratch::new("browser-whip");
    let (_sig, url) = signal_server(&s, &[]);
    let args = ["source", "--whip", "127.0.0.1:0", "--whip-token", TOKEN];
    let src = Proc::spawn(
        &s,
        "source",
        &[&args[..], &["--signal", &url]].concat(),
        false,
    );
    let whip = endpoint(&src, "whip:");
    let chrome = Chrome::start(&s, &chromium, &driver);
    let page = offer_http_page(&chrome, "publisher", &url).await;
    let posted = Instant::now();
    let status = page
        .eval(&format!(
            "return whipPublish({}, {})",
            serde_json::json!(whip),
            serde_json::json!(TOKEN)
        ))
        .await;
    assert_eq!(status, 201, "{}", page_errors(&page).await);
    let tree = tree_id(&src);
    let Member {
        proc: mut member,
        rec,
        data,
    } = recording_member(&s, &url, &tree);
    page.eval("return offerHttp.channelOpen.then(() => true)")
        .await;
    page.eval("offerHttp.send(100, 'web'); return true").await;
    let first = eventually("a first frame", Duration::from_secs(20), || async {
        (!ivf_frames(&rec).is_empty()).then(|| posted.elapsed())
    })
    .await;
    let want: Vec<String> = (0..100).map(|i| format!("web-{i:04}")).collect();
    assert_eq!(
        messages_at(&data, "web-", 100),
        want,
        "Chromium's messages, in order"
    );
    eventually("150 recorded frames", Duration::from_secs(30), || async {
        (ivf_frames(&rec).len() >= 150).then_some(())
    })
    .await;
    // A clean stop finishes the IVF header before ffmpeg reads it.
    member.signal("INT");
    assert!(member.wait(Duration::from_secs(10)).success());
    let recorded: Vec<u32> = ivf_frames(&rec).iter().map(|f| fnv1a(f)).collect();
    let sent: Vec<u32> = serde_json::from_value(page.eval("return offerHttp.hashes").await)
        .expect("hashes are numbers");
    let from = unbroken_run(&recorded, &sent, false, "Chromium over WHIP");
    let (codec, w, h, decoded) = decode_with_ffmpeg(&rec);
    assert_eq!((codec.as_str(), w, h), ("vp8", 640, 360));
    assert_eq!(
        decoded,
        recorded.len() as u64,
        "every recorded frame decodes"
    );
    let log = src.log_text();
    assert!(log.contains("offered audio/opus and video/VP8"), "{log}");
    let member_log = member.log_text();
    assert!(
        member_log.contains("audio/opus"),
        "the member has no audio track:\n{member_log}"
    );
    let deleted = page
        .eval(&format!("return endSession({})", serde_json::json!(TOKEN)))
        .await;
    assert_eq!(deleted, 200);
    println!(
        "(f) Chromium over WHIP (VP8 + Opus): a member recorded {} frames, byte for byte \
         Chromium's encoded frames {from}..{} of the {} it had hashed, the first {} ms after the \
         POST; ffmpeg decoded all {decoded} ({w}x{h}); 100 of 100 messages in order; DELETE 200",
        recorded.len(),
        from + recorded.len(),
        sent.len(),
        first.as_millis()
    );
    page.close().await;
}

/// (g) Chromium as a WHEP player of a relay: it decodes the sample and
/// gets, through its encoded transform, the file's frames byte for byte,
/// and the source's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_plays_over_whep_frame_for_frame() {
    let Some((chromium, driver)) = chrome::tools("browser WHEP player", &[]) else {
        return;
    };
    let _one = one_at_a_time().await;
    let s = Scratch::new("browser-whep");
    let (_sig, url) = signal_server(&s, &[]);
    let video = sample("testsrc-640x360-vp8.ivf");
    let (mut src, tree) = looping_source(&s, &url, &video);
    let (_relay, whep) = whep_relay(&s, &url, &tree, &[]);
    let chrome = Chrome::start(&s, &chromium, &driver);
    let page = offer_http_page(&chrome, "player", &url).await;
    let posted = Instant::now();
    let status = page
        .eval(&format!("return whepPlay({})", serde_json::json!(whep)))
        .await;
    assert_eq!(status, 201, "{}", page_errors(&page).await);
    let stdin = src.stdin.as_mut().expect("source stdin");
    warm_up(stdin, "the WHEP player", || async {
        let m: Vec<String> =
            serde_json::from_value(page.eval("return offerHttp.messages").await).expect("strings");
        m.iter().any(|m| m == "warmup")
    })
    .await;
    let sent = send_numbered(stdin, 200);
    let got = eventually("200 messages", Duration::from_secs(20), || async {
        let m: Vec<String> =
            serde_json::from_value(page.eval("return offerHttp.messages").await).expect("strings");
        let m: Vec<String> = m.into_iter().filter(|m| m.starts_with("msg-")).collect();
        (m.len() >= sent.len()).then_some(m)
    })
    .await;
    assert_eq!(got, sent, "messages complete and in order");
    let (decoded, w, h) = eventually("150 decoded frames", Duration::from_secs(30), || async {
        let v = page
            .eval("return [offerHttp.framesDecoded, offerHttp.frameWidth, offerHttp.frameHeight]")
            .await;
        let (d, w, h): (u64, u32, u32) = serde_json::from_value(v).expect("numbers");
        (d >= 150).then_some((d, w, h))
    })
    .await;
    assert_eq!((w, h), (640, 360));
    let played = posted.elapsed();
    let hashes: Vec<u32> = serde_json::from_value(page.eval("return offerHttp.hashes").await)
        .expect("hashes are numbers");
    let file = relay::source::VideoFile::open(&video).expect("sample parses");
    let file_hashes: Vec<u32> = file.frames().iter().map(|f| fnv1a(&f.data)).collect();
    let from = unbroken_run(&hashes, &file_hashes, true, "Chromium over WHEP");
    let first_ms = page.eval("return offerHttp.firstFrameMs").await;
    let deleted = page.eval("return endSession()").await;
    assert_eq!(deleted, 200);
    println!(
        "(g) Chromium over WHEP from a relay: {} frames byte for byte from file frame {from} \
         on, {decoded} decoded ({w}x{h}) {} ms after the POST, the first {first_ms} ms after \
         it; 200 of 200 messages in order; DELETE 200",
        hashes.len(),
        played.as_millis()
    );
    page.close().await;
}
