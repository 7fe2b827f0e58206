//! What `source` and `join` share: how they reach the signalling server,
//! where ICE gathers, where data-channel messages are written, how a node's
//! end is reported.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use clap::Args;
use relay::forward::{DataMsg, Hub};
use relay::node::{Exit, Rejoin, Seat, Whep};
use relay::peer::LinkConfig;
use relay::whep::WhepEgress;
use signalling::client::{Client, ClientOptions, Events};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How to trust a `wss://` signalling server; flattened into `source` and
/// `join`.
#[derive(Args)]
pub(crate) struct SignalTls {
    /// PEM file with the CA certificate (or the self-signed certificate
    /// itself) of a wss:// --signal server whose certificate is not from a
    /// public CA. Public CAs (Mozilla's list, built in) are always trusted.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

impl SignalTls {
    fn options(&self) -> ClientOptions {
        ClientOptions {
            ca_cert: self.ca_cert.clone(),
            ..ClientOptions::default()
        }
    }

    /// Connects to the signalling server at `url` (ws:// or wss://).
    pub(crate) async fn connect(&self, url: &str) -> Result<(Client, Events)> {
        Ok(Client::connect_with(url, self.options()).await?)
    }

    /// How a node reconnects to `url` after losing it, taking `seat` again.
    pub(crate) fn rejoin(&self, url: &str, seat: Seat) -> Rejoin {
        let (url, opts) = (url.to_owned(), self.options());
        Rejoin {
            connect: Box::new(move || {
                let (url, opts) = (url.clone(), opts.clone());
                Box::pin(async move { Client::connect_with(&url, opts).await })
            }),
            seat,
            give_up_after: REJOIN_FOR,
        }
    }
}

/// How long a source or relay tries to get back into its tree after losing
/// the signalling server: a restart plus the source's reclaim fit easily.
const REJOIN_FOR: Duration = Duration::from_secs(60);

/// Host candidates on every interface by default; only loopback when the
/// server the peers reach this node through (the signalling server; for
/// WHIP and WHEP sessions the HTTP endpoint) is on loopback: nothing else
/// could reach it anyway, and webrtc-rs skips loopback when it binds every
/// interface. `--udp-addr` wins over both.
pub(crate) fn udp_addrs(signal_url: &str, explicit: &[SocketAddr]) -> Result<Vec<SocketAddr>> {
    if !explicit.is_empty() {
        return Ok(explicit.to_vec());
    }
    let uri: http::Uri = signal_url
        .parse()
        .with_context(|| format!("--signal {signal_url:?} is not a URL like ws://host:8080/ws"))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let loopback = match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback().then_some(ip),
        Err(_) => (host == "localhost").then_some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    Ok(match loopback {
        Some(IpAddr::V6(_)) => vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)],
        Some(IpAddr::V4(_)) => vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)],
        None => Vec::new(),
    })
}

/// `--data-out -|FILE`: one line per message; text as it came, binary as
/// `base64:` and its bytes in base64, so every message stays one line.
pub(crate) fn data_out(target: &str) -> Result<mpsc::UnboundedSender<DataMsg>> {
    let mut out: Box<dyn Write + Send> = if target == "-" {
        Box::new(std::io::stdout())
    } else {
        let path = PathBuf::from(target);
        Box::new(
            std::fs::File::create(&path)
                .with_context(|| format!("cannot create --data-out file {}", path.display()))?,
        )
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<DataMsg>();
    std::thread::spawn(move || {
        while let Some(m) = rx.blocking_recv() {
            let line = if m.text {
                String::from_utf8_lossy(&m.data).into_owned()
            } else {
                format!(
                    "base64:{}",
                    base64::engine::general_purpose::STANDARD.encode(&m.data)
                )
            };
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                warn!("--data-out: cannot write; stopping");
                break;
            }
        }
    });
    Ok(tx)
}

/// Says why the node stopped. Both ends are a normal exit (status 0).
pub(crate) fn report_exit(exit: Exit) {
    match exit {
        Exit::TreeClosed(reason) => {
            info!("the tree was closed ({reason}); exiting");
            eprintln!("tree closed ({reason})");
        }
        Exit::Shutdown => info!("stopped"),
    }
}

/// `--whep`: players' sessions, apart from the tree's children.
#[derive(Args)]
pub(crate) struct WhepArgs {
    /// Serve WHEP on this address: any WHEP player POSTs its offer to
    /// http://ADDR:PORT/whep and gets this node's tracks (and its data
    /// channels, when the offer has a data section).
    #[arg(long, value_name = "ADDR:PORT")]
    whep: Option<SocketAddr>,
    /// Most WHEP players at a time; more get 503. They do not count
    /// against the tree's k children.
    #[arg(long, value_name = "N", default_value_t = 10, requires = "whep")]
    whep_max: usize,
}

impl WhepArgs {
    /// Binds the WHEP address, if one was given: a taken port fails here,
    /// before the node joins anything.
    pub(crate) async fn bind(&self) -> Result<Option<tokio::net::TcpListener>> {
        match self.whep {
            Some(addr) => Ok(Some(
                crate::offer_http::bind(addr, crate::offer_http::Protocol::Whep).await?,
            )),
            None => Ok(None),
        }
    }

    /// Serves WHEP for `hub` on the bound listener; prints its URL.
    pub(crate) fn serve(
        &self,
        listener: Option<tokio::net::TcpListener>,
        link: &LinkConfig,
        explicit_udp: &[SocketAddr],
        hub: &Arc<Hub>,
    ) -> Result<Option<Whep>> {
        let Some(listener) = listener else {
            return Ok(None);
        };
        let link = http_link(link, listener.local_addr()?, explicit_udp)?;
        let egress = WhepEgress::new(link, hub.clone(), self.whep_max);
        let url = crate::offer_http::serve(
            listener,
            crate::offer_http::Protocol::Whep,
            egress.clone(),
            None,
        )?;
        println!("whep:  {url}");
        let _ = std::io::stdout().flush();
        Ok(Some(Whep { url, egress }))
    }
}

/// The link settings for sessions set up through an HTTP endpoint bound to
/// `bound`: a player or publisher reaches this node where it reaches the
/// endpoint, which may be another interface than the signalling server's.
pub(crate) fn http_link(
    link: &LinkConfig,
    bound: SocketAddr,
    explicit_udp: &[SocketAddr],
) -> Result<LinkConfig> {
    Ok(LinkConfig {
        udp_addrs: udp_addrs(&format!("http://{bound}"), explicit_udp)?,
        ..link.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_sessions_gather_where_their_endpoint_listens() {
        // A loopback signalling server: loopback candidates for the tree.
        let tree = LinkConfig {
            udp_addrs: udp_addrs("ws://127.0.0.1:8080/ws", &[]).unwrap(),
            ice_servers: Vec::new(),
        };
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(tree.udp_addrs, vec![lo]);
        // A WHIP endpoint on every interface: so are the publisher's.
        let any = http_link(&tree, "0.0.0.0:8000".parse().unwrap(), &[]).unwrap();
        assert!(any.udp_addrs.is_empty(), "{:?}", any.udp_addrs);
        let local = http_link(&tree, "127.0.0.1:8000".parse().unwrap(), &[]).unwrap();
        assert_eq!(local.udp_addrs, tree.udp_addrs);
        // --udp-addr wins.
        let chosen: SocketAddr = "192.0.2.7:0".parse().unwrap();
        let pinned = http_link(&tree, "0.0.0.0:8000".parse().unwrap(), &[chosen]).unwrap();
        assert_eq!(pinned.udp_addrs, vec![chosen]);
    }
}
