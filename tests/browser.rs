//! Browsers and relays mixed in one tree, with real headless Chromium: the
//! watch page (and so peer-tree-client.js) joins, plays, forwards and can be
//! the source. Without Chromium these tests say they were skipped, unless
//! PEER_TREE_REQUIRE_BROWSER is set (CI), which makes that a failure.
//!
//! Run with `--nocapture` to see the figures each scenario measured.

mod chrome;
mod common;

use std::io::Write;
use std::process::ChildStdin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrome::{eventually, parent_in, tree_snapshot, Chrome, Page};
use common::*;

/// Browsers are heavy for these 2 cores (a forwarding page takes a third of
/// one): the scenarios run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn watch_url(ws_url: &str, k: u32, tree: &str) -> String {
    format!("http://{}/?k={k}#{tree}", http_addr(ws_url))
}

fn feed(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").expect("write to the source's --data-in");
    stdin.flush().expect("flush --data-in");
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

/// Sends `n` numbered lines, 2 ms apart; returns what every receiver owes.
fn send_numbered(stdin: &mut ChildStdin, n: usize) -> Vec<String> {
    let lines: Vec<String> = (0..n).map(|i| format!("msg-{i:04}")).collect();
    for l in &lines {
        feed(stdin, l);
        std::thread::sleep(Duration::from_millis(2));
    }
    lines
}

/// Waits until `page` decodes `more` frames beyond what it has decoded now;
/// returns the frame rate over that stretch.
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
    (end - start) as f64 / t0.elapsed().as_secs_f64()
}

/// (a) Rust source -> Rust relay -> browser leaf: the browser decodes the
/// sample's 640x360 VP8 and receives every data message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_leaf_under_a_relay_decodes_and_gets_every_message() {
    let Some((chromium, driver)) = chrome::tools("browser leaf", &[]) else {
        return;
    };
    let _one = one_at_a_time();
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
    let got = eventually("500 messages in the page", Duration::from_secs(20), || async {
        let got = page.messages("msg-").await;
        (got.len() >= sent.len()).then_some(got)
    })
    .await;
    assert_eq!(got, sent, "every message, in order, once");
    println!(
        "(a) browser leaf at depth 2: first frame {:.2} s after the page loaded, {} frames decoded, \
         {fps:.1} fps over 90 frames, {}x{}; {} of {} messages in order",
        first_frame.as_secs_f64(),
        st.frames_decoded,
        st.frame_width,
        st.frame_height,
        got.len(),
        sent.len()
    );
    page.close().await;
}
