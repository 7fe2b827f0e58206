//! `peer-tree-relay signal`: the signalling server on its own.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use signalling::protocol::IceServer;
use signalling::server::{self, ServerConfig};
use tracing::info;

use crate::shutdown_signal;

#[derive(Args)]
pub struct SignalArgs {
    /// Address and port for HTTP and WebSocket (`/ws`). Use 0.0.0.0:8080 to
    /// accept peers from other machines.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Most children any peer may accept (a peer may ask for fewer).
    #[arg(long, default_value_t = 4)]
    k: u32,
    /// Most children a tree's source may accept.
    #[arg(long, default_value_t = 10)]
    k1: u32,
    /// ICE server URL handed to every peer in `hello` (repeatable), e.g.
    /// stun:stun.example.org:3478.
    #[arg(long = "ice-server", value_name = "URL")]
    ice_servers: Vec<String>,
    /// How often every connection is pinged; two missed intervals remove it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// How long a tree whose source dropped waits for it to reclaim the tree.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Largest message accepted, in bytes; larger ones close the connection (1009).
    #[arg(long, default_value_t = 65536)]
    max_message: usize,
    /// Messages per second allowed per connection; more are dropped.
    #[arg(long, default_value_t = 50)]
    rate: u32,
}

impl SignalArgs {
    pub fn config(&self) -> Result<ServerConfig> {
        if self.k1 == 0 {
            bail!("--k1 must be at least 1: a source with no children can reach nobody");
        }
        if self.ping_interval.is_zero() {
            bail!("--ping-interval must be more than 0 (for example 5s)");
        }
        if self.rate == 0 {
            bail!("--rate must be at least 1 message per second");
        }
        if self.max_message < 1024 {
            bail!("--max-message must be at least 1024 bytes: SDP offers are larger than that");
        }
        for url in &self.ice_servers {
            if !["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                bail!("--ice-server {url:?} must start with stun:, stuns:, turn: or turns:");
            }
        }
        Ok(ServerConfig {
            k: self.k,
            k1: self.k1,
            ice_servers: self
                .ice_servers
                .iter()
                .map(|u| IceServer {
                    urls: vec![u.clone()],
                    username: None,
                    credential: None,
                })
                .collect(),
            ping_interval: self.ping_interval,
            grace: self.grace,
            max_message: self.max_message,
            rate: self.rate,
            ..ServerConfig::default()
        })
    }
}

pub async fn run(args: SignalArgs) -> Result<()> {
    let cfg = args.config()?;
    let listener = server::bind(args.listen).with_context(|| {
        format!(
            "cannot listen on {}; is another server using that port? Pick another with --listen",
            args.listen
        )
    })?;
    let addr = listener.local_addr()?;
    info!(
        k = cfg.k,
        k1 = cfg.k1,
        "signalling server listening on http://{addr} (WebSocket ws://{addr}/ws)"
    );
    // Printed on stdout too, so scripts and tests can read the bound port.
    println!("listening on {addr}");
    server::serve(cfg, listener, shutdown_signal()).await?;
    info!("signalling server stopped");
    Ok(())
}
