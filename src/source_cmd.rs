//! `peer-tree-relay source --file video.ivf` (or `--rtp ADDR --codec C`, or
//! `--whip ADDR`): create a tree and stream a file, what a live sender sends
//! over RTP, or what a WHIP publisher sends, into it, with an embedded
//! signalling server unless --signal names one.

use std::io::{BufRead, IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use relay::forward::{ChannelSpec, DataMsg, Hub, TrackSpec};
use relay::ingest::{self, IngestStats};
use relay::media::Codec;
use relay::node::{Node, NodeOptions, Seat};
use relay::peer::LinkConfig;
use relay::publish::{self, Progress};
use relay::rtp_sdp::{self, RtpInput};
use relay::source::{AudioFile, VideoFile};
use relay::whip::WhipIngest;
use signalling::server::{self, ServerConfig, ServerHandle};
use tracing::info;

use crate::media_cmd::{http_link, report_exit, udp_addrs, SignalTls, WhepArgs};
use crate::offer_http::{self, Protocol};
use crate::shutdown_signal;

#[derive(Args)]
pub(crate) struct SourceArgs {
    /// IVF file with VP8, VP9 or AV1 video.
    #[arg(long, value_name = "VIDEO.ivf", required_unless_present_any = ["rtp", "sdp", "whip"])]
    file: Option<PathBuf>,
    /// Ogg file with Opus audio, played alongside.
    #[arg(long, value_name = "AUDIO.ogg", requires = "file")]
    audio: Option<PathBuf>,
    /// Start again at the end, seamlessly (sequence numbers and timestamps
    /// continue).
    #[arg(long = "loop", requires = "file")]
    looping: bool,
    /// Instead of a file: take a track from plain RTP arriving on this UDP
    /// address, as sent by `ffmpeg -re -i in.ivf -c copy -f rtp
    /// rtp://127.0.0.1:5004` or GStreamer's udpsink. Repeatable, one per
    /// track (one video, one audio), each with its --codec in the same
    /// order. Packets are forwarded as they come.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "file")]
    rtp: Vec<SocketAddr>,
    /// The codec of each --rtp input: vp8, vp9, av1, h264 or opus. H.264 is
    /// offered as packetization mode 1, constrained baseline (42e01f).
    #[arg(long, value_name = "CODEC", value_parser = parse_codec, requires = "rtp")]
    codec: Vec<Codec>,
    /// Instead of --rtp and --codec: the streams a session description
    /// announces, as `ffmpeg ... -f rtp -sdp_file out.sdp` writes it (each
    /// audio or video section's address, port and codec). Its fmtp lines
    /// are kept: H.264 is offered in the profile the sender has.
    #[arg(long, value_name = "FILE.sdp", conflicts_with_all = ["file", "rtp"])]
    sdp: Option<PathBuf>,
    /// Instead of a file: serve WHIP (RFC 9725) on this address, for OBS
    /// (Settings > Stream > Service: WHIP), GStreamer or a browser. The
    /// endpoint is http://ADDR:PORT/whip; the tree is created when the first
    /// publisher arrives and stays when it leaves, for the next one.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with_all = ["file", "rtp", "sdp"])]
    whip: Option<SocketAddr>,
    /// The bearer token WHIP publishers must send (`Authorization: Bearer
    /// TOKEN`; OBS's "Bearer Token" field). Without it anyone who reaches
    /// the address may publish.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PEER_TREE_WHIP_TOKEN",
        requires = "whip"
    )]
    whip_token: Option<String>,
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
    #[command(flatten)]
    whep: WhepArgs,
}

/// The embedded server's first choice of port, and how many after it to try.
const EMBEDDED_PORT: u16 = 8080;
const EMBEDDED_PORT_TRIES: u16 = 20;

fn parse_codec(name: &str) -> Result<Codec, String> {
    Codec::from_encoding_name(name)
        .ok_or_else(|| format!("unknown codec {name}: vp8, vp9, av1, h264 or opus"))
}

/// Runs while the input feeds the tree; ends at the end of a file or when
/// an input fails.
type Feeding = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// What feeds the tree.
enum Input {
    File {
        video: VideoFile,
        audio: Option<AudioFile>,
        looping: bool,
    },
    /// Bound sockets, each with its track's codec and fmtp line.
    Rtp(Vec<(tokio::net::UdpSocket, Codec, String)>),
    /// A WHIP endpoint's address.
    Whip(SocketAddr),
}

impl Input {
    /// Opens the files or binds the sockets: the most likely mistakes fail
    /// here, before anything starts listening for members.
    async fn open(args: &SourceArgs) -> Result<Input> {
        if let Some(file) = &args.file {
            let video = VideoFile::open(file)?;
            let audio = args.audio.as_deref().map(AudioFile::open).transpose()?;
            info!(
                "{}: {} {}x{}, {} frames, keyframe at least every {:?}",
                file.display(),
                video.codec().mime(),
                video.width(),
                video.height(),
                video.frames().len(),
                video.keyframe_interval().unwrap_or_default()
            );
            return Ok(Input::File {
                video,
                audio,
                looping: args.looping,
            });
        }
        if let Some(addr) = args.whip {
            return Ok(Input::Whip(addr));
        }
        let wanted: Vec<RtpInput> = match &args.sdp {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                rtp_sdp::parse(&text).with_context(|| format!("{}", path.display()))?
            }
            None => {
                if args.codec.len() != args.rtp.len() {
                    anyhow::bail!(
                        "{} --rtp inputs but {} --codec: give each --rtp its --codec, in the same order",
                        args.rtp.len(),
                        args.codec.len()
                    );
                }
                args.rtp
                    .iter()
                    .zip(&args.codec)
                    .map(|(&addr, &codec)| RtpInput {
                        addr,
                        codec,
                        fmtp: codec.sdp_fmtp_line().to_owned(),
                    })
                    .collect()
            }
        };
        let videos = wanted.iter().filter(|i| i.codec.is_video()).count();
        if videos > 1 || wanted.len() - videos > 1 {
            anyhow::bail!("at most one video and one audio RTP input");
        }
        let mut inputs = Vec::new();
        for RtpInput { addr, codec, fmtp } in wanted {
            let socket = tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("cannot listen for RTP on {addr}"))?;
            let addr = socket.local_addr()?;
            println!("rtp in: udp://{addr} ({})", codec.describe(&fmtp));
            inputs.push((socket, codec, fmtp));
        }
        Ok(Input::Rtp(inputs))
    }
}

pub(crate) async fn run(args: SourceArgs) -> Result<()> {
    let input = Input::open(&args).await?;
    let whep_listener = args.whep.bind().await?;

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
    let link = LinkConfig {
        udp_addrs: udp_addrs(&signal_url, &args.udp_addrs)?,
        ice_servers: client.hello().ice_servers.clone(),
    };
    let (hub, overflow) = Hub::new();
    if let Input::Whip(addr) = &input {
        let listener = offer_http::bind(*addr, Protocol::Whip).await?;
        let whip_link = http_link(&link, listener.local_addr()?, &args.udp_addrs)?;
        let (ingest, first) = WhipIngest::new(whip_link, hub.clone());
        let url = offer_http::serve(listener, Protocol::Whip, ingest, args.whip_token.clone())?;
        println!("whip:  {url}");
        let _ = std::io::stdout().flush();
        info!(
            "waiting for a WHIP publisher{}",
            if args.whip_token.is_some() {
                " (with the bearer token)"
            } else {
                ""
            }
        );
        tokio::select! {
            r = first => r.context("the WHIP endpoint stopped")?,
            () = shutdown_signal() => return Ok(()),
        }
    }
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

    // The id comes from the server: cut by characters, not bytes.
    let short: String = created.tree.chars().take(8).collect();
    let stream_id = format!("peer-tree-{short}");
    let track = |codec: Codec, fmtp: String| {
        let kind = if codec.is_video() { "video" } else { "audio" };
        hub.track(TrackSpec {
            fmtp,
            ..TrackSpec::new(codec, stream_id.clone(), kind)
        })
    };
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

    let (feeding, fed) = match input {
        Input::File {
            video,
            audio,
            looping,
        } => {
            let progress = Arc::new(Progress::default());
            let in_default_format = |c: Codec| track(c, c.sdp_fmtp_line().to_owned());
            let video_track = in_default_format(video.codec());
            let audio_track = audio.as_ref().map(|a| in_default_format(a.codec()));
            let player = tokio::spawn(publish::play(
                video,
                audio,
                looping,
                video_track,
                audio_track,
                progress.clone(),
            ));
            let feeding = async move {
                player.await.context("the file player stopped")??;
                info!("end of file");
                anyhow::Ok(())
            };
            (Box::pin(feeding) as Feeding, Fed::File(progress))
        }
        Input::Rtp(inputs) => {
            let mut receivers = tokio::task::JoinSet::new();
            let mut stats = Vec::new();
            for (socket, codec, fmtp) in inputs {
                let s = Arc::new(IngestStats::default());
                let addr = socket.local_addr()?;
                stats.push((addr, s.clone()));
                let t = track(codec, fmtp);
                receivers.spawn(async move {
                    ingest::receive(socket, t, s)
                        .await
                        .with_context(|| format!("RTP in on {addr}"))
                });
            }
            let feeding = async move {
                match receivers.join_next().await {
                    Some(r) => r.context("an RTP input stopped")?,
                    None => Ok(()),
                }
            };
            (Box::pin(feeding) as Feeding, Fed::Rtp(stats))
        }
        // Publishers come and go; the tree stays until the source is stopped.
        Input::Whip(_) => (
            Box::pin(std::future::pending()) as Feeding,
            Fed::Whip(hub.clone()),
        ),
    };
    let reporter = tokio::spawn(report_progress(
        fed,
        hub.clone(),
        http_base,
        created.tree.clone(),
    ));

    let whep = args
        .whep
        .serve(whep_listener, &link, &args.udp_addrs, &hub)?;
    let opts = NodeOptions {
        link,
        whep,
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
        fed = feeding => {
            fed?;
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

/// What the progress line reports on.
enum Fed {
    File(Arc<Progress>),
    Rtp(Vec<(SocketAddr, Arc<IngestStats>)>),
    Whip(Arc<Hub>),
}

impl Fed {
    /// Payload bytes taken in so far.
    fn bytes(&self) -> u64 {
        match self {
            Fed::File(p) => p.bytes(),
            Fed::Rtp(inputs) => inputs
                .iter()
                .map(|(_, s)| s.bytes.load(Ordering::Relaxed))
                .sum(),
            Fed::Whip(hub) => hub
                .tracks()
                .iter()
                .map(|t| t.bytes_in.load(Ordering::Relaxed))
                .sum(),
        }
    }

    fn position(&self) -> String {
        match self {
            Fed::File(p) => format!(
                "at {:>7.1}s (loop {})",
                p.position().as_secs_f64(),
                p.loops()
            ),
            Fed::Rtp(inputs) => {
                let packets: u64 = inputs
                    .iter()
                    .map(|(_, s)| s.packets.load(Ordering::Relaxed))
                    .sum();
                let bad: u64 = inputs
                    .iter()
                    .map(|(_, s)| {
                        s.malformed.load(Ordering::Relaxed) + s.foreign.load(Ordering::Relaxed)
                    })
                    .sum();
                format!("{packets} RTP packets in ({bad} dropped)")
            }
            Fed::Whip(hub) => {
                let packets: u64 = hub
                    .tracks()
                    .iter()
                    .map(|t| t.packets_in.load(Ordering::Relaxed))
                    .sum();
                format!("{packets} RTP packets in from WHIP")
            }
        }
    }
}

/// Once a second: position, bitrate, children and tree size; a live line on
/// a terminal, log lines otherwise.
async fn report_progress(fed: Fed, hub: Arc<Hub>, http_base: String, tree: String) {
    let live = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_bytes = 0u64;
    let mut last_at = Instant::now();
    loop {
        tick.tick().await;
        let bytes = fed.bytes();
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
            "{}, {:>6.0} kbit/s, {children} children, {peers} peers in tree",
            fed.position(),
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
