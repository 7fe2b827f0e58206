//! `peer-tree-relay join <treeID>`: a headless relay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use relay::forward::Hub;
use relay::node::{join_role, Node, NodeOptions, Seat};
use relay::peer::LinkConfig;
use tracing::info;

use crate::media_cmd::{data_out, report_exit, udp_addrs, SignalTls, WhepArgs};
use crate::shutdown_signal;

#[derive(Args)]
pub(crate) struct JoinArgs {
    /// The tree to join, as `source` printed it.
    #[arg(allow_hyphen_values = true)]
    tree: String,
    /// The signalling server's WebSocket URL (ws:// or wss://).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    signal: String,
    #[command(flatten)]
    tls: SignalTls,
    /// Most children this relay accepts (capped by the server's k). With 0
    /// it joins as an ordinary leaf (role "peer"), which a later relay may
    /// take the place of.
    #[arg(long)]
    k: Option<u32>,
    /// Write the first video track to this file, from the first keyframe: IVF
    /// for VP8, VP9 and AV1, an Annex B stream for H.264 (name it .h264).
    #[arg(long, value_name = "OUT.ivf|OUT.h264")]
    record: Option<PathBuf>,
    /// Write every data-channel message to this file (`-` for stdout), one per
    /// line; binary messages as `base64:...`.
    #[arg(long, value_name = "-|FILE")]
    data_out: Option<String>,
    /// UDP address to gather ICE candidates on (repeatable), e.g.
    /// 192.168.1.5:0. Default: every interface, or loopback when --signal is
    /// a loopback address.
    #[arg(long = "udp-addr", value_name = "ADDR")]
    udp_addrs: Vec<SocketAddr>,
    /// Ask the server for another parent when the parent has sent media and
    /// then nothing for this long (a frozen or cut-off parent), or its
    /// connection failed.
    #[arg(long, default_value = "1.5s", value_parser = humantime::parse_duration)]
    silence: Duration,
    #[command(flatten)]
    whep: WhepArgs,
}

pub(crate) async fn run(args: JoinArgs) -> Result<()> {
    let udp = udp_addrs(&args.signal, &args.udp_addrs)?;
    let data_out = args.data_out.as_deref().map(data_out).transpose()?;
    let whep_listener = args.whep.bind().await?;
    let (client, events) = args.tls.connect(&args.signal).await?;
    let joined = client
        .join(&args.tree, args.k, Some(join_role(args.k)))
        .await
        .with_context(|| format!("cannot join tree {}", args.tree))?;
    info!(
        parent = %joined.parent,
        depth = joined.depth,
        "joined tree {} as relay {}",
        joined.tree,
        client.peer_id()
    );
    let (hub, overflow) = Hub::new();
    let link = LinkConfig {
        udp_addrs: udp,
        ice_servers: client.hello().ice_servers.clone(),
    };
    let whep = args
        .whep
        .serve(whep_listener, &link, &args.udp_addrs, &hub)?;
    let opts = NodeOptions {
        link,
        whep,
        record: args.record,
        data_out,
        silence: args.silence,
        ..NodeOptions::default()
    };
    let seat = Seat::Relay {
        tree: joined.tree.clone(),
        k: args.k,
    };
    let node = Node::new(client, events, hub, overflow, Some(joined.parent), opts)
        .rejoin_with(args.tls.rejoin(&args.signal, seat));
    report_exit(node.run(shutdown_signal()).await?);
    Ok(())
}
