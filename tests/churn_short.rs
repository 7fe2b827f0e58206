//! The churn driver (examples/churn.rs) in a short run, as CI can afford it:
//! a real tree of processes on loopback with members SIGKILLed and replaced
//! every 3 s. The driver itself fails on a crash, a panic in any log, a
//! process left over or a socket leaked; this test also requires every
//! orphan to have recovered. The full run and its figures are in the README.

use std::path::Path;
use std::process::Command;

#[test]
fn a_short_churn_run_heals_every_orphan_without_crash_or_leak() {
    let bin = Path::new(env!("CARGO_BIN_EXE_peer-tree-relay"));
    let churn = bin
        .parent()
        .expect("target directory")
        .join("examples")
        .join(format!("churn{}", std::env::consts::EXE_SUFFIX));
    assert!(
        churn.is_file(),
        "{} is missing: `cargo test --workspace` builds the examples, or run \
         `cargo build --example churn` first",
        churn.display()
    );
    let out = Command::new(&churn)
        .args([
            "--relays",
            "3",
            "--leaves",
            "6",
            "--duration",
            "15s",
            "--kill-every",
            "3s",
            // This seed's victims include relays, so members are orphaned
            // and must be re-placed (5 orphans when it was chosen).
            "--seed",
            "3",
            "--bin",
        ])
        .arg(bin)
        .output()
        .expect("run the churn driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the churn driver failed: {}",
        out.status
    );
    let recovery = stdout
        .lines()
        .find(|l| l.starts_with("recovery "))
        .expect("a recovery line");
    assert!(
        recovery.contains("never recovered within the run: 0"),
        "{recovery}"
    );
    let orphans: u32 = recovery
        .split("per orphan: n ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("the orphan count");
    assert!(orphans >= 1, "no member was orphaned: {recovery}");
    assert!(stdout.contains("crashes (exits not caused by the driver): 0"));
    assert!(stdout.contains("log lines with `panicked`: 0"));
    // `ss` (iproute2, which .ci/run installs) must have answered.
    assert!(
        stdout.contains("(ss -tuanp): tcp 0, udp 0"),
        "no leak count from ss"
    );
}
