//! Real processes on loopback: the signalling server, sources and relays,
//! each a child process of the test, killed when the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_peer-tree-relay");

/// The sample committed with the project.
pub fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/media")
        .join(name)
}

/// A scratch directory for one test, removed at the end.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ptr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
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
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub stdout: mpsc::Receiver<String>,
    pub stdin: Option<ChildStdin>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(scratch: &Scratch, name: &str, args: &[&str], stdin: bool) -> Proc {
        let log = scratch.path(&format!("{name}.log"));
        let err = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(BIN)
            .args(args)
            .env(
                "RUST_LOG",
                "warn,peer_tree_relay=info,relay=info,signalling=info",
            )
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn peer-tree-relay");
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
    pub fn line(&self, prefix: &str, within: Duration) -> String {
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

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits for the process to end by itself.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
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

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A signalling server on a free loopback port; returns it and its ws URL.
pub fn signal_server(scratch: &Scratch, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["signal", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let p = Proc::spawn(scratch, "signal", &args, false);
    let line = p.line("listening on ", Duration::from_secs(20));
    let addr = line.trim_start_matches("listening on ").trim().to_owned();
    (p, format!("ws://{addr}/ws"))
}

/// Polls `f` every 20 ms until it returns Some, failing after `within`.
pub fn until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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
