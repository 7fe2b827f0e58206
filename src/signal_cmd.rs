//! `peer-tree-relay signal`: the signalling server on its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use signalling::protocol::IceServer;
use signalling::server::{
    self, lacks_credentials, parse_ice_url, ServerConfig, ServerError, TlsIdentity, TokenKey,
    TurnRest, DEFAULT_MAX_CONNS_PER_IP,
};
use tracing::info;

use crate::shutdown_signal;

#[derive(Args)]
pub(crate) struct SignalArgs {
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
    /// ICE server handed to every peer in `hello` (repeatable). Forms:
    /// stun:HOST[:PORT] (also stuns:), and
    /// turn:[USER:CREDENTIAL@]HOST[:PORT][?transport=udp|tcp] (also turns:),
    /// e.g. turn:alice:s3cret@turn.example.org:3478. USER and CREDENTIAL are
    /// the TURN server's static credentials, percent-encoded (@ as %40, % as
    /// %25, : in USER as %3A); peers get the URL without them and the two
    /// beside it. A turn: URL without USER:CREDENTIAL@ needs
    /// --turn-secret-file, which makes credentials for each connection.
    #[arg(long = "ice-server", value_name = "URL")]
    ice_servers: Vec<String>,
    /// The secret shared with the TURN server (coturn: use-auth-secret and
    /// static-auth-secret=SECRET), as the only text in FILE; a trailing
    /// newline is ignored. Every turn: URL given without credentials then
    /// reaches each connection with short-lived credentials of its own:
    /// username EXPIRY:PEER_ID (EXPIRY in Unix seconds, now + --turn-ttl),
    /// credential base64(HMAC-SHA1(SECRET, username)).
    #[arg(long, value_name = "FILE")]
    turn_secret_file: Option<PathBuf>,
    /// How long the credentials made with --turn-secret-file stay valid,
    /// counted from the peer's connection (e.g. 12h, 90m).
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    turn_ttl: Duration,
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
    /// Most WebSocket connections open at once from one client IP address
    /// (IPv6: per /64); more are refused with HTTP 429. 0 = unlimited. Plain
    /// HTTP requests are not counted, but an address's TCP connections of
    /// any kind are capped at twice N (more are closed at once), and every
    /// connection must send its first request within 10 s. Behind a reverse
    /// proxy every client has the proxy's address: use 0 there and limit at
    /// the proxy.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNS_PER_IP)]
    max_conns_per_ip: u32,
    /// Accept browser WebSockets only from pages of this origin (repeatable),
    /// e.g. https://example.org; pages of other origins get HTTP 403. List
    /// this server's own address too (http://HOST:PORT, or https://) if
    /// browsers should use its watch page. Clients that send no Origin header
    /// (relays, sources and other native programs) are always accepted: a
    /// browser always sends it, a native client can send anything, so this
    /// keeps other sites' pages out but is not authentication. Default:
    /// every origin.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// PEM certificate chain (the server's certificate first): serve HTTPS
    /// and wss:// instead of plain HTTP and ws://, on the same --listen
    /// port. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Keep the key that signs reclaim tokens in FILE (created, mode 0600,
    /// when missing). Restarted with the same file, the server lets each
    /// source take its tree back for --grace after the start, and the
    /// members rejoin by themselves. Without it a restart loses every tree.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
}

impl SignalArgs {
    pub(crate) fn config(&self) -> Result<ServerConfig> {
        let ice_servers = self
            .ice_servers
            .iter()
            .map(|url| parse_ice_url(url).context("--ice-server"))
            .collect::<Result<Vec<_>>>()?;
        let turn_rest = self.turn_rest(&ice_servers)?;
        let allowed_origins = self
            .allowed_origins
            .iter()
            .map(|o| origin(o))
            .collect::<Result<Vec<_>>>()?;
        let token_key = match &self.secret_file {
            Some(path) => TokenKey::load_or_create(path)
                .with_context(|| format!("--secret-file {}", path.display()))?,
            None => TokenKey::random(),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity::from_pem_files(cert, key)?),
            // clap's `requires` rejects one without the other.
            _ => None,
        };
        let cfg = ServerConfig {
            k: self.k,
            k1: self.k1,
            ice_servers,
            turn_rest,
            ping_interval: self.ping_interval,
            grace: self.grace,
            max_message: self.max_message,
            rate: self.rate,
            max_conns_per_ip: self.max_conns_per_ip,
            allowed_origins,
            tls,
            token_key,
            ..ServerConfig::default()
        };
        match cfg.validate() {
            Err(ServerError::InvalidSetting { setting, rule }) => {
                bail!("--{} {rule}", setting.replace('_', "-"))
            }
            other => other?,
        }
        Ok(cfg)
    }

    /// The secret for TURN servers listed without credentials. Either both
    /// or neither: a TURN server refuses peers without credentials, and a
    /// secret with no server to use it on is a forgotten --ice-server.
    fn turn_rest(&self, ice_servers: &[IceServer]) -> Result<Option<TurnRest>> {
        let bare = ice_servers.iter().find(|s| lacks_credentials(s));
        match (&self.turn_secret_file, bare) {
            (Some(path), Some(_)) => {
                if self.turn_ttl.is_zero() {
                    bail!("--turn-ttl must be more than 0 (for example 12h)");
                }
                let rest = TurnRest::from_file(path, self.turn_ttl)
                    .with_context(|| format!("--turn-secret-file {}", path.display()))?;
                Ok(Some(rest))
            }
            (Some(_), None) => bail!(
                "--turn-secret-file makes credentials for --ice-server turn: URLs given \
                 without them, and there is none: add one, e.g. \
                 --ice-server turn:turn.example.org:3478"
            ),
            (None, Some(s)) => bail!(
                "--ice-server {} has no credentials, and a TURN server refuses peers without \
                 them: write them in the URL (turn:USER:CREDENTIAL@HOST:PORT) or give \
                 --turn-secret-file FILE holding the TURN server's static-auth-secret",
                s.urls.join(" ")
            ),
            (None, None) => Ok(None),
        }
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, lower case, no
/// path. Checked here because a typo (a trailing path, a missing scheme)
/// would otherwise match nothing and silently lock every browser out.
fn origin(text: &str) -> Result<String> {
    let bad = || {
        anyhow::anyhow!(
            "--allowed-origin {text:?} is not an origin: write scheme://host[:port], \
             e.g. https://example.org or http://127.0.0.1:8080, with no path"
        )
    };
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    let uri: http::Uri = trimmed.parse().map_err(|_| bad())?;
    if uri.scheme().is_none()
        || uri.authority().is_none_or(|a| a.as_str().contains('@'))
        || uri.path_and_query().is_some_and(|p| p != "/")
    {
        return Err(bad());
    }
    Ok(trimmed.to_ascii_lowercase())
}

pub(crate) async fn run(args: SignalArgs) -> Result<()> {
    let cfg = args.config()?;
    let listener = server::bind(args.listen).with_context(|| {
        format!(
            "cannot listen on {}; is another server using that port? Pick another with --listen",
            args.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let (http, ws) = if cfg.tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    info!(
        k = cfg.k,
        k1 = cfg.k1,
        max_conns_per_ip = cfg.max_conns_per_ip,
        "signalling server listening on {http}://{addr} (WebSocket {ws}://{addr}/ws)"
    );
    // Printed on stdout too, so scripts and tests can read the bound port.
    println!("listening on {addr}");
    server::serve(cfg, listener, shutdown_signal()).await?;
    info!("signalling server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{origin, SignalArgs};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SignalArgs,
    }

    fn config(flags: &[&str]) -> anyhow::Result<signalling::server::ServerConfig> {
        let argv = std::iter::once("signal").chain(flags.iter().copied());
        Cli::try_parse_from(argv)?.args.config()
    }

    fn error(flags: &[&str]) -> String {
        format!("{:#}", config(flags).expect_err("refused"))
    }

    #[test]
    fn turn_servers_need_credentials_in_the_url_or_a_secret() {
        let e = error(&["--ice-server", "turn:turn.example.org:3478"]);
        assert!(
            e.contains("--turn-secret-file") && e.contains("USER:CREDENTIAL"),
            "{e}"
        );
        let cfg = config(&["--ice-server", "turn:alice:pa%24s@turn.example.org"]).unwrap();
        assert_eq!(cfg.ice_servers[0].urls, ["turn:turn.example.org"]);
        assert_eq!(cfg.ice_servers[0].credential.as_deref(), Some("pa$s"));
        assert!(cfg.turn_rest.is_none());

        let dir = std::env::temp_dir().join(format!("ptr-signal-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("turn-secret");
        std::fs::write(&secret, "north-wind\n").unwrap();
        let secret = secret.to_str().unwrap();
        let cfg = config(&[
            "--ice-server",
            "turn:turn.example.org",
            "--turn-secret-file",
            secret,
            "--turn-ttl",
            "30m",
        ])
        .unwrap();
        let rest = cfg.turn_rest.expect("secret kept");
        assert_eq!(rest.ttl(), std::time::Duration::from_secs(1800));
        let e = error(&[
            "--ice-server",
            "stun:stun.example.org",
            "--turn-secret-file",
            secret,
        ]);
        assert!(e.contains("there is none"), "{e}");
        let e = error(&["--ice-server", "stun:u:p@stun.example.org"]);
        assert!(e.contains("--ice-server") && !e.contains(":p@"), "{e}");
        std::fs::write(dir.join("empty"), "").unwrap();
        let empty = dir.join("empty");
        let e = error(&[
            "--ice-server",
            "turns:turn.example.org",
            "--turn-secret-file",
            empty.to_str().unwrap(),
        ]);
        assert!(e.contains("empty"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn origins_are_checked_and_normalised() {
        assert_eq!(
            origin("https://Example.org/").unwrap(),
            "https://example.org"
        );
        assert_eq!(
            origin("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "example.org",
            "https://example.org/watch",
            "https://example.org/?x=1",
            "https://user@example.org",
            "",
        ] {
            assert!(origin(bad).is_err(), "{bad:?} accepted");
        }
    }
}
