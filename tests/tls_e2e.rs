//! TLS end to end, every process real, on loopback: `signal --tls-cert
//! --tls-key` with a self-signed certificate, a source and a recording relay
//! that reach it over wss:// trusting that certificate with `--ca-cert`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use relay::source::VideoFile;

/// A self-signed certificate for `localhost` and 127.0.0.1 in `s`; returns
/// the certificate's and the key's PEM files.
fn self_signed(s: &Scratch) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("generate a certificate");
    let (cert, key) = (s.path("cert.pem"), s.path("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `signal` with TLS on a free loopback port; returns it and its wss:// URL.
/// Scripts read the port from the first stdout line, so TLS must not put
/// anything before it.
fn tls_signal_server(s: &Scratch, cert: &Path, key: &Path) -> (Proc, String) {
    let args = [
        "signal",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        arg(cert),
        "--tls-key",
        arg(key),
    ];
    let p = Proc::spawn(s, "signal", &args, false);
    let first = p
        .stdout
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("signal printed nothing; log:\n{}", p.log_text()));
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first stdout line is {first:?}"))
        .trim()
        .to_owned();
    (p, format!("wss://{addr}/ws"))
}

/// `looping_source` over wss://, trusting `ca`.
fn tls_source(s: &Scratch, url: &str, video: &Path, ca: &Path) -> (Proc, String) {
    let args = [
        "source",
        "--file",
        arg(video),
        "--loop",
        "--signal",
        url,
        "--ca-cert",
        arg(ca),
        "--k1",
        "1",
    ];
    let src = Proc::spawn(s, "source", &args, false);
    let tree = tree_id(&src);
    (src, tree)
}

#[test]
fn relay_records_frames_from_a_source_over_wss() {
    let s = Scratch::new("tls-chain");
    let video = sample("testsrc-640x360-vp8.ivf");
    let file_frames = VideoFile::open(&video)
        .expect("sample parses")
        .frames()
        .to_vec();
    let (cert, key) = self_signed(&s);
    let (_sig, url) = tls_signal_server(&s, &cert, &key);
    let (_src, tree) = tls_source(&s, &url, &video, &cert);

    // Without the CA the relay stops at once with the reason on stderr.
    let out = Command::new(BIN)
        .args(["join", &tree, "--signal", &url])
        .output()
        .expect("run join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains("does not trust") && stderr.contains("--ca-cert"),
        "the error names the certificate problem and the fix:\n{stderr}"
    );

    let rec = s.path("relay.ivf");
    let _relay = relay(
        &s,
        "relay",
        &url,
        &tree,
        &["--ca-cert", arg(&cert), "--record", arg(&rec)],
        "joined tree",
    );
    let t0 = Instant::now();
    let first = until("30 recorded frames", Duration::from_secs(30), || {
        let f = ivf_frames(&rec);
        (f.len() >= 30).then_some(f.len())
    });
    eprintln!(
        "relay recorded {first} frames {:?} after joining",
        t0.elapsed()
    );
    // Still flowing, not a burst that stopped.
    until("the recording to grow", Duration::from_secs(10), || {
        (ivf_frames(&rec).len() >= first + 30).then_some(())
    });
    let start = assert_run_of_file(&ivf_frames(&rec), &file_frames, "relay over wss");
    assert!(
        file_frames[start].keyframe,
        "recording starts at a keyframe"
    );
}

fn one_line_error(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run peer-tree-relay");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    stderr
}

#[test]
fn tls_flag_mistakes_are_one_line_errors_naming_the_file() {
    let s = Scratch::new("tls-flags");
    let (cert, key) = self_signed(&s);
    let missing = s.path("missing.pem");
    let listen = ["signal", "--listen", "127.0.0.1:0"];

    let err = one_line_error(
        &[
            &listen[..],
            &["--tls-cert", arg(&missing), "--tls-key", arg(&key)],
        ]
        .concat(),
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot read the TLS certificate file")
            && err.contains(arg(&missing)),
        "{err}"
    );

    // The key file given for both: no certificate in it.
    let err = one_line_error(
        &[
            &listen[..],
            &["--tls-cert", arg(&key), "--tls-key", arg(&key)],
        ]
        .concat(),
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("holds no certificate") && err.contains(arg(&key)),
        "{err}"
    );

    // One without the other is refused by the argument parser, in one line
    // like every other error.
    let err = one_line_error(&[&listen[..], &["--tls-cert", arg(&cert)]].concat());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: the following required arguments were not provided")
            && err.contains("--tls-key"),
        "{err}"
    );
}
