//! `peer-tree-relay`: the command line. Argument parsing, wiring and progress
//! output only; the work happens in the `signalling` and `relay` crates.

mod join_cmd;
mod media_cmd;
mod offer_http;
mod signal_cmd;
mod source_cmd;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "peer-tree-relay",
    version,
    about = "Low-latency WebRTC broadcast trees: a signalling server that places peers \
             breadth-first in a k-tree, and headless relay nodes that forward media unchanged",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the signalling server: places peers in trees, heals them when peers
    /// leave, and serves the browser client and the watch page on the same port.
    Signal(signal_cmd::SignalArgs),
    /// Create a tree and stream a video file (and optionally audio and data
    /// lines) into it. Without --signal it runs its own signalling server.
    Source(source_cmd::SourceArgs),
    /// Join a tree as a headless relay: receive every track and data channel
    /// from the parent and forward them unchanged to up to k children.
    Join(join_cmd::JoinArgs),
}

/// Our own progress at info; webrtc's per-connection chatter only when it
/// warns. Some webrtc-rs modules warn on every connection about normal
/// events, so they speak only of errors, or not at all:
/// - checks before the first remote candidate, no DTLS server name, STUN
///   before the remote credentials: ~200 lines in a churn run;
/// - a browser viewer in the wild (mDNS names for its addresses): an mDNS
///   warning for every AAAA record announced on the LAN (six per answer),
///   an ERROR when its `.local` name goes unanswered for 10 s (a viewer on
///   another network, connected all along through its own checks), and 18
///   "Unsupported Extension Type" lines per connection (Chromium offers
///   DTLS 1.3 extensions; webrtc-rs skips them and speaks DTLS 1.2);
/// - "refusing first packet due to empty server_config", once per
///   connection where both ends send the SCTP INIT (Chromium does, and our
///   DTLS server when none came in time): the other INIT sets up the
///   association; it is the SCTP endpoint's only warning.
///
/// `RUST_LOG` overrides.
const DEFAULT_LOG: &str = "warn,peer_tree_relay=info,relay=info,signalling=info,\
                           rtc_ice::agent=error,rtc_ice::agent::agent_proto=off,\
                           rtc_dtls::config=error,rtc_dtls::handshake=error,\
                           rtc_mdns::proto=error,rtc::peer_connection::handler=error,\
                           rtc_sctp::endpoint=error";

/// webrtc-rs errors that say something failed when nothing did, left out
/// of the log. `RUST_LOG` does not bring them back: they are the driver's
/// lines of normal events.
const NOISE: &[DriverNoise] = &[
    // Over TURN, webrtc-rs drops the packets that arrive in the same read as
    // a track's first one, before it has registered the track, with an
    // ERROR each. So every relay starts a child's stream with a padding
    // packet that opens the track and carries no media, and its media 20 ms
    // later (relay/src/downstream.rs, the primer): that padding packet is
    // what is dropped, once per such child.
    DriverNoise {
        starts: "Failed to get track_remote",
        contains: "",
    },
    // ICE checks every pair of candidates, and a peer's LAN address behind
    // its NAT, or any address at all from a host without a default route,
    // is one this host has no route to: each check to it is an ERROR, 20 a
    // second until another pair wins. A pair that fails is ICE's own
    // business; a connection that fails is reported by the node.
    DriverNoise {
        starts: "Failed to write packet to",
        contains: "Network is unreachable",
    },
    DriverNoise {
        starts: "Failed to write packet to",
        contains: "No route to host",
    },
];

struct DriverNoise {
    starts: &'static str,
    contains: &'static str,
}

impl DriverNoise {
    fn matches(&self, message: &str) -> bool {
        message.starts_with(self.starts) && message.contains(self.contains)
    }
}

struct LeaveOutNoise;

impl<S> tracing_subscriber::layer::Filter<S> for LeaveOutNoise {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // webrtc-rs logs through the `log` crate: its events arrive with the
        // target "log" and the real one in a field.
        let target = event.metadata().target();
        if target != DRIVER && target != "log" {
            return true;
        }
        let mut seen = IsNoise {
            driver: target == DRIVER,
            message: false,
        };
        event.record(&mut seen);
        !(seen.driver && seen.message)
    }
}

const DRIVER: &str = "webrtc::peer_connection::driver";

struct IsNoise {
    driver: bool,
    message: bool,
}

impl tracing::field::Visit for IsNoise {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" && value == DRIVER {
            self.driver = true;
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let message = format!("{value:?}");
            self.message = NOISE.iter().any(|n| n.matches(&message));
        }
    }
}

/// Errors end the process with one line on stderr and exit code 2, the code
/// clap uses for bad arguments: everything that fails here is something the
/// user can fix (a flag, a port, a file), never a panic with a backtrace.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// clap's own errors run over several lines (the message, a list of
/// arguments, a tip, the usage); like every other error here they become
/// one line. `--help` and `--version` print as clap prints them.
fn parse_args() -> Result<Cli> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            let text = e.render().to_string();
            let said: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("Usage:")
                        && !l.starts_with("For more information")
                })
                .collect();
            let said = said.join(" ").replace(" tip: ", "; tip: ");
            let said = said.strip_prefix("error: ").unwrap_or(&said);
            Err(anyhow::anyhow!("{said} (see --help)"))
        }
    }
}

fn run() -> Result<()> {
    let cli = parse_args()?;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(LeaveOutNoise),
        )
        .init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        match cli.command {
            Command::Signal(args) => signal_cmd::run(args).await,
            Command::Source(args) => source_cmd::run(args).await,
            Command::Join(args) => join_cmd::run(args).await,
        }
    })
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
    }
}
