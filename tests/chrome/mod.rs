//! Headless Chromium driven through chromedriver's WebDriver endpoint: each
//! `Page` is its own browser process with its own profile, loading the
//! signalling server's watch page and read through `window.watch`.

#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::Scratch;

/// Set by CI: a machine without Chromium fails these tests instead of
/// skipping them.
pub(crate) const REQUIRE: &str = "PEER_TREE_REQUIRE_BROWSER";

/// Chromium's switches for every test (DESIGN.md, "Loopback only"): no
/// background traffic, a fake camera at 30 fps. A page on loopback also
/// gets [`LOOPBACK_SWITCHES`]; a page in the network lab keeps Chromium's
/// default mDNS hiding, as browsers in the wild do.
const SWITCHES: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream=fps=30",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=800,600",
];

/// On loopback: host candidates visible (no mDNS names, so no multicast
/// leaves the machine), loopback allowed for peer connections, and the
/// resolver rule that keeps Chromium from looking up Google hosts.
const LOOPBACK_SWITCHES: &[&str] = &[
    "--allow-loopback-in-peer-connection",
    // Chromium takes only the last --disable-features: keep every one here.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
];

/// Where a page's browser runs and how it shows itself to peers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Where {
    /// A lab host's network namespace (tests/netlab); None: this machine,
    /// on loopback.
    pub netns: Option<String>,
    /// The address pages are loaded from inside the namespace: made a secure
    /// context (camera access) and exempt from the resolver rule.
    pub origin: Option<String>,
}

fn in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

fn tool(var: &str, names: &[&str]) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => in_path(names),
    }
}

/// Every outside tool a browser test needs (`CHROMIUM` and `CHROMEDRIVER`
/// override where Chromium and chromedriver are), or `None` (and a line saying the
/// test was skipped) when one is missing and CI did not require them.
pub(crate) fn tools(test: &str, also: &[&str]) -> Option<(PathBuf, PathBuf)> {
    let chromium = tool(
        "CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let driver = tool("CHROMEDRIVER", &["chromedriver"]);
    let mut missing: Vec<&str> = Vec::new();
    if chromium.is_none() {
        missing.push("chromium");
    }
    if driver.is_none() {
        missing.push("chromedriver");
    }
    missing.extend(also.iter().filter(|t| in_path(&[t]).is_none()));
    if missing.is_empty() {
        return Some((chromium?, driver?));
    }
    let what = format!(
        "{test}: needs {} (Debian: apt-get install -y chromium chromium-driver ffmpeg)",
        missing.join(", ")
    );
    if std::env::var_os(REQUIRE).is_some_and(|v| v != "0") {
        panic!("{what}; {REQUIRE} is set, so this is a failure");
    }
    eprintln!("skipped: {what}");
    None
}

/// One chromedriver serving every page of a test.
pub(crate) struct Chrome {
    driver: Child,
    url: String,
    chromium: PathBuf,
    profiles: PathBuf,
    pages: AtomicUsize,
    scratch: PathBuf,
}

impl Chrome {
    pub(crate) fn start(scratch: &Scratch, chromium: &Path, chromedriver: &Path) -> Chrome {
        // chromedriver cannot take port 0; a port the kernel just handed out
        // is free in practice.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = scratch.path("chromedriver.log");
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let chrome = Chrome {
            driver,
            url: format!("http://127.0.0.1:{port}"),
            chromium: chromium.to_owned(),
            profiles: scratch.path("profiles"),
            pages: AtomicUsize::new(0),
            scratch: scratch.0.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        chrome
    }

    /// A new browser showing `url`, once its page has loaded.
    pub(crate) async fn page(&self, name: &str, url: &str) -> Page {
        self.page_at(name, url, &Where::default()).await
    }

    /// A new browser at `at`. In a lab host, as viewers are in the wild:
    /// Chromium's default mDNS hiding of local addresses stays on.
    /// chromedriver stays in this machine's namespace and drives the browser
    /// over a pipe (`--remote-debugging-pipe`), which needs no network
    /// between them.
    pub(crate) async fn page_at(&self, name: &str, url: &str, at: &Where) -> Page {
        let n = self.pages.fetch_add(1, Ordering::Relaxed);
        let profile = self.profiles.join(format!("{n}-{name}"));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let mut args: Vec<String> = SWITCHES.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let binary = match (&at.netns, &at.origin) {
            (Some(ns), origin) => {
                args.push("--remote-debugging-pipe".into());
                if let Some(origin) = origin {
                    let host = origin
                        .trim_start_matches("http://")
                        .split(':')
                        .next()
                        .unwrap_or_default();
                    args.push(format!(
                        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}"
                    ));
                    args.push(format!(
                        "--unsafely-treat-insecure-origin-as-secure={origin}"
                    ));
                }
                self.wrapper(ns)
            }
            (None, _) => {
                args.extend(LOOPBACK_SWITCHES.iter().map(|s| s.to_string()));
                self.chromium.clone()
            }
        };
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": binary, "args": args }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot start Chromium: {e}"));
        client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot load {url}: {e}"));
        Page {
            client,
            name: name.to_owned(),
        }
    }
}

impl Chrome {
    /// A script that starts Chromium inside `ns`: chromedriver runs it as
    /// the browser binary.
    fn wrapper(&self, ns: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.scratch.join(format!("chromium-in-{ns}.sh"));
        let script = format!(
            "#!/bin/sh\nexec ip netns exec {ns} {} \"$@\"\n",
            self.chromium.display()
        );
        std::fs::write(&path, script).expect("write the Chromium wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make the wrapper executable");
        path
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A browser that was still shutting down when chromedriver went
        // (a page that used the fake camera can take a while), or whose
        // test failed before closing it, is left to init: end every one
        // started with a profile of this test.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", "--"])
            .arg(format!("--user-data-dir={}", self.profiles.display()))
            .status();
    }
}

/// What the tests read of the watch page's `watch.state()`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PageState {
    pub peer: Option<String>,
    pub tree: Option<String>,
    pub depth: Option<u32>,
    pub parent: Option<String>,
    pub children: Vec<String>,
    pub frames_decoded: u64,
    /// The video's MIME type as the browser decodes it (`video/VP8`).
    pub video_codec: Option<String>,
    pub frame_width: u32,
    pub frame_height: u32,
    /// Upstream connections opened so far.
    pub upstreams: u32,
    pub freeze_count: u64,
    /// Seconds of playback frozen (W3C webrtc-stats).
    pub total_freezes_duration: f64,
    pub packets_lost: i64,
    pub nack_count: u64,
    pub retransmitted_packets_received: u64,
    /// Milliseconds from page load to the first frame shown.
    pub first_frame_ms: Option<f64>,
}

pub(crate) struct Page {
    pub client: Client,
    pub name: String,
}

impl Page {
    /// Runs `script` as a function body; a returned promise is awaited.
    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    pub(crate) async fn state(&self) -> PageState {
        let v = self
            .eval("return window.watch ? window.watch.state() : null")
            .await;
        serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{}: unexpected state {v}: {e}", self.name))
    }

    /// Data messages received so far that start with `prefix`.
    pub(crate) async fn messages(&self, prefix: &str) -> Vec<String> {
        let v = self
            .eval(&format!(
                "return window.watch.messages.filter(m => m.startsWith({}))",
                json!(prefix)
            ))
            .await;
        serde_json::from_value(v).expect("messages are strings")
    }

    pub(crate) async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("{}: no #{id}: {e}", self.name))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: cannot click #{id}: {e}", self.name));
    }

    /// Closes the page's window, which ends its browser: its WebSocket and
    /// peer connections go with it, as when a viewer closes the tab.
    pub(crate) async fn close(self) {
        let _ = self.client.close_window().await;
        let _ = self.client.close().await;
    }
}

/// Polls `f` every 50 ms until it returns Some, failing after `within`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
