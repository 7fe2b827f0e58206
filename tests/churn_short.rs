//! The churn driver (examples/churn.rs) in a short run, as CI can afford it:
//! a real tree of processes on loopback with members SIGKILLed and replaced
//! every 3 s. The driver itself fails on a crash, a panic in any log, a
//! process left over, or a leak: descriptors the long-lived relay or the
//! source still hold once the members are gone, or server gauges that do
//! not come back. This test also requires every orphan to have recovered,
//! and reads those verdicts itself, so that a driver that stopped checking
//! fails here. The full run and its figures are in the README.

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
            // Three children a node: the source holds the relays, and the
            // first two relays (the first one is never killed) three leaves
            // each, so a relay's death orphans leaves, which record.
            "--k",
            "3",
            "--k1",
            "3",
            "--duration",
            "15s",
            "--kill-every",
            "3s",
            // This seed's victims include both relays that can be killed
            // (3 or 5 orphans in five runs: which relays hold the leaves
            // depends on the order they joined in).
            "--seed",
            "8",
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
    let line = |start: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| {
                panic!(
                    "no line starting {start:?}: is {} older than examples/churn.rs? \
                     `cargo test --test churn_short` does not rebuild it",
                    churn.display()
                )
            })
    };
    let recovery = line("recovery ");
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
    // Each compared at the same connections as before any child, after
    // polling until it stayed put: nothing may differ at all.
    for who in ["the long-lived relay", "the source"] {
        let leaked = line(&format!("leaked by {who}: "));
        assert!(leaked.ends_with(": sockets 0, other fds 0"), "{leaked}");
    }
    assert_eq!(
        line("server gauges back to the baseline: "),
        "server gauges back to the baseline: yes"
    );
    // The heals of this run were measured, and none repeated a frame
    // (relay/src/splice.rs). Frames missing are printed: where the new
    // parent's group started after an orphan's last frame, they are gone
    // for good.
    let heals = line("== Frames across each heal");
    let measured: u32 = heals
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the count of orphans measured");
    assert!(measured >= 1, "no heal measured: {heals}");
    let repeated = line("repeated (recorded twice");
    assert!(repeated.contains(", total 0;"), "{repeated}");
}
