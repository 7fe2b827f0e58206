//! `peer-tree-relay source --file video.ivf`: create a tree and stream a
//! file into it, with an embedded signalling server unless --signal names one.

use std::io::{BufRead, IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use relay::forward::{ChannelSpec, DataMsg, Hub, TrackSpec};
use relay::node::{Node, NodeOptions, Seat};
use relay::peer::LinkConfig;
use relay::publish::{self, Progress};
use relay::source::{AudioFile, VideoFile};
use signalling::server::{self, ServerConfig, ServerHandle};
use tracing::info;

use crate::media_cmd::{report_exit, udp_addrs, SignalTls};
use crate::shutdown_signal;

#[derive(Args)]
pub struct SourceArgs {
    /// IVF file with VP8, VP9 or AV1 video.
    #[arg(long, value_name = "VIDEO.ivf")]
    file: PathBuf,
    /// Ogg file with Opus audio, played alongside.
    #[arg(long, value_name = "AUDIO.ogg")]
    audio: Option<PathBuf>,
    /// Start again at the end, seamlessly (sequence numbers and timestamps
    /// continue).
    #[arg(long = "loop")]
    looping: bool,
    /// An existing signalling server (ws:// or wss://). Without it the
    /// source runs its own on 127.0.0.1:8080 (or the next free port).
    #[arg(long, value_name = "ws://HOST:PORT/ws")]
    signal: Option<String>,
    #[command(flatten)]
    tls: SignalTls,
    /// Most children of the source (capped by the server's k1).
    #[arg(long)]
    k1: Option<u32>,
    /// Send each line read from this file (`-` for stdin) as one text message
    /// on the `data` channel.
    #[arg(long, value_name = "-|FILE")]
    data_in: Option<String>,
    /// UDP address to gather ICE candidates on (repeatable). Default: every
    /// interface, or loopback when the signalling server is on loopback.
    #[arg(long = "udp-addr", value_name = "ADDR")]
    udp_addrs: Vec<SocketAddr>,
}

/// The embedded server's first choice of port, and how many after it to try.
const EMBEDDED_PORT: u16 = 8080;
const EMBEDDED_PORT_TRIES: u16 = 20;

pub async fn run(args: SourceArgs) -> Result<()> {
    // Files first: a bad file is the most likely mistake and must fail
    // before anything starts listening.
    let video = VideoFile::open(&args.file)?;
    let audio = args.audio.as_deref().map(AudioFile::open).transpose()?;
    info!(
        "{}: {} {}x{}, {} frames, keyframe at least every {:?}",
        args.file.display(),
        video.codec().mime(),
        video.width(),
        video.height(),
        video.frames().len(),
        video.keyframe_interval().unwrap_or_default()
    );

    let mut _embedded: Option<ServerHandle> = None;
    let signal_url = match &args.signal {
        Some(url) => url.clone(),
        None => {
            let handle = start_embedded_server().await?;
            let url = handle.ws_url();
            _embedded = Some(handle);
            url
        }
    };
    let (client, events) = args.tls.connect(&signal_url).await?;
    let created = client.create(args.k1).await?;
    let http_base = signal_url
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1)
        .trim_end_matches("/ws")
        .to_owned();
    println!("tree:  {}", created.tree);
    println!("watch: {http_base}/#{}", created.tree);
    // A relay needs the same CA to trust the same server.
    let ca = match &args.tls.ca_cert {
        Some(path) => format!(" --ca-cert {}", path.display()),
        None => String::new(),
    };
    println!(
        "relay: peer-tree-relay join {} --signal {signal_url}{ca}",
        created.tree
    );
    if running_from_checkout() {
        println!(
            "       (from this checkout: cargo run --release -- join {} --signal {signal_url}{ca})",
            created.tree
        );
    }
    let _ = std::io::stdout().flush();

    let (hub, overflow) = Hub::new();
    // The id comes from the server: cut by characters, not bytes.
    let short: String = created.tree.chars().take(8).collect();
    let stream_id = format!("peer-tree-{short}");
    let video_track = hub.track(TrackSpec {
        codec: video.codec(),
        stream_id: stream_id.clone(),
        track_id: "video".into(),
    });
    let audio_track = audio.as_ref().map(|a| {
        hub.track(TrackSpec {
            codec: a.codec(),
            stream_id: stream_id.clone(),
            track_id: "audio".into(),
        })
    });
    let data = hub.channel(ChannelSpec {
        label: "data".into(),
        protocol: String::new(),
        ordered: true,
        max_retransmits: None,
        max_packet_life_time: None,
    });
    if let Some(src) = &args.data_in {
        let lines = read_lines(src)?;
        let data = data.clone();
        std::thread::spawn(move || {
            for line in lines {
                data.publish(&DataMsg {
                    text: true,
                    data: line.into_bytes().into(),
                });
            }
        });
    }

    let progress = Arc::new(Progress::default());
    let player = tokio::spawn(publish::play(
        video,
        audio,
        args.looping,
        video_track.clone(),
        audio_track,
        progress.clone(),
    ));
    let reporter = tokio::spawn(report_progress(
        progress,
        hub.clone(),
        http_base,
        created.tree.clone(),
    ));

    let opts = NodeOptions {
        link: LinkConfig {
            udp_addrs: udp_addrs(&signal_url, &args.udp_addrs)?,
            ice_servers: client.hello().ice_servers.clone(),
        },
        ..NodeOptions::default()
    };
    let seat = Seat::Source {
        tree: created.tree.clone(),
        token: created.token.clone(),
        k: args.k1,
    };
    let node = Node::new(client, events, hub, overflow, None, opts)
        .rejoin_with(args.tls.rejoin(&signal_url, seat));
    let exit = tokio::select! {
        r = node.run(shutdown_signal()) => r?,
        played = player => {
            played.context("the file player stopped")??;
            info!("end of file");
            relay::node::Exit::Shutdown
        }
    };
    reporter.abort();
    report_exit(exit);
    Ok(())
}

/// True when this binary was started by `cargo run` from a checkout (it
/// lives under `target/`), where `peer-tree-relay` is not on the PATH.
fn running_from_checkout() -> bool {
    std::env::current_exe()
        .map(|p| p.components().any(|c| c.as_os_str() == "target"))
        .unwrap_or(false)
}

/// 127.0.0.1:8080, or the next free port: a second source on the same
/// machine should just work.
async fn start_embedded_server() -> Result<ServerHandle> {
    let mut last_err = None;
    for port in EMBEDDED_PORT..EMBEDDED_PORT + EMBEDDED_PORT_TRIES {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        match server::bind(addr) {
            Ok(listener) => {
                let handle = server::spawn_on(ServerConfig::default(), listener)?;
                info!("embedded signalling server on http://{addr}");
                return Ok(handle);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no port")))
    .with_context(|| {
        format!(
            "no free port in 127.0.0.1:{EMBEDDED_PORT}-{}; pass --signal to use a running server",
            EMBEDDED_PORT + EMBEDDED_PORT_TRIES - 1
        )
    })
}

fn read_lines(src: &str) -> Result<Box<dyn Iterator<Item = String> + Send>> {
    let reader: Box<dyn BufRead + Send> = if src == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(src).with_context(|| format!("cannot open --data-in {src}"))?,
        ))
    };
    Ok(Box::new(reader.lines().map_while(Result::ok)))
}

/// Once a second: position, bitrate, children and tree size; a live line on
/// a terminal, log lines otherwise.
async fn report_progress(progress: Arc<Progress>, hub: Arc<Hub>, http_base: String, tree: String) {
    let live = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_bytes = 0u64;
    let mut last_at = Instant::now();
    loop {
        tick.tick().await;
        let bytes = progress.bytes();
        let now = Instant::now();
        let kbps = (bytes.saturating_sub(last_bytes)) as f64 * 8.0
            / now.duration_since(last_at).as_secs_f64()
            / 1000.0;
        last_bytes = bytes;
        last_at = now;
        let children = hub.tracks().first().map(|t| t.leg_count()).unwrap_or(0);
        let peers = tree_size(&http_base, &tree).await;
        let peers = peers.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
        let line = format!(
            "at {:>7.1}s (loop {}), {:>6.0} kbit/s, {children} children, {peers} peers in tree",
            progress.position().as_secs_f64(),
            progress.loops(),
            kbps
        );
        if live {
            eprint!("\r{line}   ");
        } else {
            info!("{line}");
        }
    }
}

/// Peers in the tree, from the server's `/api/trees/{id}`.
async fn tree_size(http_base: &str, tree: &str) -> Option<u64> {
    // Over https:// the size shows as `?`: http_get speaks plain HTTP only.
    let hostport = http_base.strip_prefix("http://")?;
    let path = format!("/api/trees/{tree}");
    let (status, body) = signalling::client::http_get(hostport, &path, Duration::from_secs(1))
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.get("size")?.as_u64()
}
