//! The async Rust signalling client that sources, relays and the tests use.
//!
//! The protocol has no request ids: a connection's replies come back in the
//! order of its requests, interleaved with events. So each request method
//! queues the reply kinds it waits for, and the reader task hands the first
//! matching message to the oldest waiter of that kind; everything else
//! (`child`, `signal`, `parent`, `tree-closed`, errors nobody waits for) goes
//! to the [`Events`] stream. `parent` goes to the stream even when it answers
//! a `reconnect`, because the media side must act on it either way.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::Connector;

use crate::protocol::{
    Create, Created, ErrorMsg, Event, Hello, Join, Joined, Parent, Reach, Reclaim, Request, Role,
    SignalTo, Stats,
};
use crate::tls::{self, PemError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `option` is the [`ClientOptions`] field.
    #[error("{option} {rule}")]
    InvalidOption {
        option: &'static str,
        rule: &'static str,
    },
    #[error("cannot connect to the signalling server at {url} (is it running? check --signal)")]
    Connect {
        url: String,
        #[source]
        source: tokio_tungstenite::tungstenite::Error,
    },
    #[error("the signalling server at {url} refused the WebSocket with HTTP {status}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Rejected {
        url: String,
        status: u16,
        /// The response body, trimmed: the server's explanation.
        reason: String,
    },
    #[error(
        "the signalling server at {url} presented a TLS certificate this client does not trust \
         ({hint})"
    )]
    Certificate {
        url: String,
        /// What to do about it, as far as the error tells.
        hint: &'static str,
        /// Always `rustls::Error::InvalidCertificate`, saying what was wrong.
        #[source]
        source: rustls::Error,
    },
    #[error("the TLS handshake with the signalling server at {url} failed (is it serving TLS on that port?)")]
    Tls {
        url: String,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot read the CA certificate file {}", path.display())]
    CaCertRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA certificate file {} is not valid PEM", path.display())]
    CaCertPem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "the CA certificate file {} holds no certificate (expected a PEM block \
         -----BEGIN CERTIFICATE-----)",
        path.display()
    )]
    NoCaCert { path: PathBuf },
    #[error("the CA certificate file {} holds a certificate that cannot be a trust anchor", path.display())]
    CaCertUnusable {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "the server at {url} did not answer as a WebSocket server (if it serves TLS, the URL \
         must start with wss://)"
    )]
    NotWebSocket {
        url: String,
        #[source]
        source: tokio_tungstenite::tungstenite::Error,
    },
    #[error("the signalling server did not say hello: {0}")]
    NoHello(String),
    #[error("the signalling connection is closed")]
    Closed,
    #[error("no reply to `{0}` within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the server refused `{re}`: {code}: {message}", re = .0.re.as_deref().unwrap_or("?"), code = .0.code, message = .0.message)]
    Refused(ErrorMsg),
    #[error("HTTP request to the signalling server failed: {0}")]
    Http(String),
    #[error("the server answered with an unexpected `{0}`")]
    Unexpected(&'static str),
    #[error("could not encode the signal payload: {0}")]
    Encode(#[from] serde_json::Error),
}

impl ClientError {
    /// The protocol error code, when the server refused the request.
    pub fn code(&self) -> Option<crate::protocol::ErrorCode> {
        match self {
            ClientError::Refused(e) => Some(e.code),
            _ => None,
        }
    }
}

/// Which replies a waiting request accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Awaits {
    Create,
    Join,
    Reconnect,
    Leave,
    Reclaim,
}

impl Awaits {
    fn request(self) -> &'static str {
        match self {
            Awaits::Create => "create",
            Awaits::Join => "join",
            Awaits::Reconnect => "reconnect",
            Awaits::Leave => "leave",
            Awaits::Reclaim => "reclaim",
        }
    }

    fn accepts(self, ev: &Event) -> bool {
        match ev {
            Event::Created(_) => matches!(self, Awaits::Create | Awaits::Reclaim),
            Event::Joined(_) => self == Awaits::Join,
            Event::Parent(_) => self == Awaits::Reconnect,
            Event::Left => self == Awaits::Leave,
            Event::Error(e) => e.re.as_deref() == Some(self.request()),
            _ => false,
        }
    }
}

type Waiters = Arc<Mutex<VecDeque<(Awaits, oneshot::Sender<Event>)>>>;

/// Options for [`Client::connect_with`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long a request waits for its reply.
    pub timeout: Duration,
    /// Events buffered before the reader stops reading the socket.
    pub event_buffer: usize,
    /// A PEM file of CA certificates that `wss://` servers may chain to, in
    /// addition to the public web PKI roots (Mozilla's, built in): for a
    /// server with a self-signed or privately issued certificate.
    pub ca_cert: Option<PathBuf>,
}

impl ClientOptions {
    /// Refuses the values a client cannot run with (a zero buffer panics
    /// the connection; a zero timeout fails every request).
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.event_buffer == 0 {
            return Err(ClientError::InvalidOption {
                option: "event_buffer",
                rule: "must be at least 1 event",
            });
        }
        if self.timeout.is_zero() {
            return Err(ClientError::InvalidOption {
                option: "timeout",
                rule: "must be more than 0",
            });
        }
        Ok(())
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            event_buffer: 1024,
            ca_cert: None,
        }
    }
}

/// What a `join` asks for besides the tree, for [`Client::join_with`].
/// `Default` is a plain peer with the server's `k`, directly reachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// The most children this peer accepts; `None`: the server's `k`.
    pub k: Option<u32>,
    pub role: Option<Role>,
    /// Only a TURN relay reaches this peer (rule 8): it is placed as a leaf.
    pub relayed: bool,
}

/// A connection to the signalling server. Cheap to clone; all clones share
/// the one WebSocket.
#[derive(Clone)]
pub struct Client {
    out: mpsc::UnboundedSender<Message>,
    waiters: Waiters,
    hello: Arc<Hello>,
    timeout: Duration,
}

/// Server messages that are not replies to this client's requests.
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Client {
    /// Connects to `ws://host:port/ws` or `wss://host:port/ws` and waits for
    /// `hello`.
    pub async fn connect(url: &str) -> Result<(Client, Events), ClientError> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        opts: ClientOptions,
    ) -> Result<(Client, Events), ClientError> {
        opts.validate()?;
        // A CA file is read even for ws://, so a wrong path fails the same
        // way whatever the URL.
        let connector = match &opts.ca_cert {
            Some(path) => Some(tls_config(url, Some(path))?),
            None if is_wss(url) => Some(tls_config(url, None)?),
            None => None,
        }
        .map(Connector::Rustls);
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector)
            .await
            .map_err(|e| connect_error(url, e))?;
        let (mut sink, mut stream) = ws.split();

        let hello = tokio::time::timeout(opts.timeout, async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return match Event::parse(t.as_bytes()) {
                            Ok(Event::Hello(h)) => Ok(h),
                            Ok(other) => Err(format!("first message was {}", other.type_name())),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("connection closed".into()),
                }
            }
        })
        .await
        .map_err(|_| ClientError::NoHello(format!("nothing within {:?}", opts.timeout)))?
        .map_err(ClientError::NoHello)?;

        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let waiters: Waiters = Arc::default();
        let (ev_tx, ev_rx) = mpsc::channel(opts.event_buffer);
        let reader_waiters = waiters.clone();
        tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                let text = match frame {
                    Ok(Message::Text(t)) => t,
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                let ev = match Event::parse(text.as_bytes()) {
                    Ok(ev) => ev,
                    Err(e) => {
                        // A newer server may send events this client does
                        // not know; skipping them is what rule 7 intends.
                        tracing::debug!("ignoring server message: {e}");
                        continue;
                    }
                };
                let waiter = {
                    let mut w = reader_waiters
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    w.iter()
                        .position(|(a, _)| a.accepts(&ev))
                        .and_then(|i| w.remove(i))
                        .map(|(_, tx)| tx)
                };
                let mut to_stream = Vec::with_capacity(2);
                match waiter {
                    Some(tx) => {
                        if let Event::Parent(p) = &ev {
                            to_stream.push(Event::Parent(p.clone()));
                        }
                        // A waiter that timed out is gone: the reply is
                        // still news, so it goes to the stream.
                        if let Err(ev) = tx.send(ev) {
                            if !matches!(ev, Event::Parent(_)) {
                                to_stream.push(ev);
                            }
                        }
                    }
                    None => to_stream.push(ev),
                }
                for ev in to_stream {
                    // Nobody may listen for events any more; replies to
                    // requests must still be served, so keep reading.
                    let _ = ev_tx.send(ev).await;
                }
            }
            // Dropping the waiters' senders wakes every request with Closed.
            reader_waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        });

        Ok((
            Client {
                out: out_tx,
                waiters,
                hello: Arc::new(hello),
                timeout: opts.timeout,
            },
            Events { rx: ev_rx },
        ))
    }

    /// This connection's peer id, as the server assigned it.
    pub fn peer_id(&self) -> &str {
        &self.hello.peer
    }

    /// The server's `hello`: caps and ICE servers.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Creates a tree whose source is this connection.
    pub async fn create(&self, k: Option<u32>) -> Result<Created, ClientError> {
        match self
            .request(Request::Create(Create { k }), Awaits::Create)
            .await?
        {
            Event::Created(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// Joins a tree; the reply names the parent, whose offer follows.
    pub async fn join(
        &self,
        tree: &str,
        k: Option<u32>,
        role: Option<Role>,
    ) -> Result<Joined, ClientError> {
        let opts = JoinOptions {
            k,
            role,
            ..JoinOptions::default()
        };
        self.join_with(tree, opts).await
    }

    /// [`Client::join`] with every field of the request, `relayed` included.
    pub async fn join_with(&self, tree: &str, opts: JoinOptions) -> Result<Joined, ClientError> {
        let req = Request::Join(Join {
            tree: tree.to_owned(),
            k: opts.k,
            role: opts.role,
            // Only when true: a plain join stays what it was on the wire.
            relayed: opts.relayed.then_some(true),
        });
        match self.request(req, Awaits::Join).await? {
            Event::Joined(j) => Ok(j),
            other => Err(unexpected(other)),
        }
    }

    /// Asks for another upstream; the reply is the new `parent`.
    pub async fn reconnect(&self) -> Result<Parent, ClientError> {
        match self.request(Request::Reconnect, Awaits::Reconnect).await? {
            Event::Parent(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    pub async fn leave(&self) -> Result<(), ClientError> {
        match self.request(Request::Leave, Awaits::Leave).await? {
            Event::Left => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Takes a tree back after this source's previous connection dropped.
    /// `k` is used if the server lost the tree (it restarted).
    pub async fn reclaim(
        &self,
        tree: &str,
        token: &str,
        k: Option<u32>,
    ) -> Result<Created, ClientError> {
        let req = Request::Reclaim(Reclaim {
            tree: tree.to_owned(),
            token: token.to_owned(),
            k,
        });
        match self.request(req, Awaits::Reclaim).await? {
            Event::Created(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// Sends WebRTC signalling to a neighbour. There is no reply; a refusal
    /// (`not-a-neighbour`) arrives on the event stream.
    pub fn signal(&self, to: &str, data: &serde_json::Value) -> Result<(), ClientError> {
        let data = RawValue::from_string(serde_json::to_string(data)?)?;
        self.send(&Request::Signal(SignalTo {
            to: to.to_owned(),
            data,
        }))
    }

    pub fn stats(&self, stats: Stats) -> Result<(), ClientError> {
        self.send(&Request::Stats(stats))
    }

    /// Tells the server whether only a TURN relay reaches this peer (rule
    /// 8). There is no reply: on `true` this peer's children go elsewhere
    /// (`child-gone` for each arrives on the event stream), on `false` it
    /// may be given children again. A refusal arrives on the event stream.
    pub fn reach(&self, relayed: bool) -> Result<(), ClientError> {
        self.send(&Request::Reach(Reach { relayed }))
    }

    /// Sends one text frame as is: for tools and tests that must speak
    /// malformed protocol on purpose.
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.out
            .send(Message::Text(text.into().into()))
            .map_err(|_| ClientError::Closed)
    }

    /// Closes the WebSocket (the server treats it as this peer's death).
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }

    fn send(&self, req: &Request) -> Result<(), ClientError> {
        self.send_text(req.to_json())
    }

    async fn request(&self, req: Request, awaits: Awaits) -> Result<Event, ClientError> {
        let (tx, rx) = oneshot::channel();
        // Queue the waiter before sending, or a fast reply could find no one.
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((awaits, tx));
        self.send(&req)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(ClientError::Timeout(awaits.request(), self.timeout)),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(Event::Error(e))) => Err(ClientError::Refused(e)),
            Ok(Ok(ev)) => Ok(ev),
        }
    }
}

fn unexpected(ev: Event) -> ClientError {
    ClientError::Unexpected(ev.type_name())
}

fn is_wss(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("wss://"))
}

/// The public web PKI roots plus, when given, the CA certificates in
/// `ca_cert`. Built-in roots rather than the system store: they are the
/// same on every machine, including minimal containers that have no CA
/// bundle, and a private CA is exactly what `ca_cert` is for.
fn tls_config(url: &str, ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_cert {
        let certs = tls::certificates(path).map_err(|e| match e {
            PemError::Read(source) => ClientError::CaCertRead {
                path: path.to_owned(),
                source,
            },
            PemError::Pem(source) => ClientError::CaCertPem {
                path: path.to_owned(),
                source,
            },
            PemError::Missing => ClientError::NoCaCert {
                path: path.to_owned(),
            },
        })?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|source| ClientError::CaCertUnusable {
                    path: path.to_owned(),
                    source,
                })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        // Only fails for a provider without cipher suites; ring has them.
        .map_err(|source| ClientError::Tls {
            url: url.to_owned(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Turns what tungstenite reports into the error a user can act on: the
/// server's refusal with its reason, an untrusted certificate, a failed
/// TLS handshake, or else "cannot connect".
fn connect_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let url = url.to_owned();
    match e {
        WsError::Http(resp) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let reason: String = String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(300)
                .collect();
            ClientError::Rejected {
                url,
                status: resp.status().as_u16(),
                reason,
            }
        }
        // tokio-rustls reports handshake failures as I/O errors that carry
        // the rustls error inside.
        WsError::Io(io) if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
            let tls = io
                .into_inner()
                .and_then(|i| i.downcast::<rustls::Error>().ok())
                .map(|b| *b);
            match tls {
                Some(rustls::Error::InvalidCertificate(cert)) => ClientError::Certificate {
                    url,
                    hint: certificate_hint(&cert),
                    source: rustls::Error::InvalidCertificate(cert),
                },
                Some(source) => ClientError::Tls { url, source },
                None => unreachable!("checked to be a rustls error above"),
            }
        }
        // What a TLS server's alert looks like to an HTTP parser.
        source @ WsError::Protocol(
            tokio_tungstenite::tungstenite::error::ProtocolError::HttparseError(_),
        ) if !is_wss(&url) => ClientError::NotWebSocket { url, source },
        source => ClientError::Connect { url, source },
    }
}

fn certificate_hint(e: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "a private or self-signed one needs its CA certificate: --ca-cert FILE",
        // A self-signed certificate whose name matches the one trusted,
        // but another key: usually a regenerated certificate.
        C::BadSignature => "it is not signed by the --ca-cert given nor by a public CA",
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not for this host: use a name or address the certificate lists"
        }
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            "it has expired or is not valid yet: renew it, or check the clocks"
        }
        // `openssl req -x509` marks its certificates CA:TRUE by default,
        // and such a certificate may only sign others, never be a server's.
        C::Other(o)
            if matches!(
                o.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            "it is a CA certificate (basicConstraints CA:TRUE), which cannot be a server's own: \
             make the server's certificate with CA:FALSE"
        }
        _ => "the reason follows",
    }
}

/// GETs `path` from the signalling server's HTTP side (`/healthz`,
/// `/metrics`, `/api/trees/{id}`) at `addr` (`host:port`); returns the status
/// and the body. A bare HTTP/1.1 request: three small endpoints of our own
/// server do not warrant an HTTP client dependency in every tool. It speaks
/// plain HTTP only, no TLS: it is for a server on loopback or otherwise
/// trusted network (a server started with a certificate cannot be asked).
pub async fn http_get(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ClientError::Http(format!("{what} {addr}{path}: {e}"))
    };
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail("connect", &e))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| fail("write", &e))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| fail("read", &e))?;
        Ok::<_, ClientError>(buf)
    };
    let buf = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| fail("timed out", &format!("{timeout:?}")))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("no HTTP header in reply from", &""))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail("no HTTP status from", &""))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        // A size that cuts a character (a body that was not UTF-8) ends it.
        let (Some(chunk), Some(after)) = (rest.get(..n), rest.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        s = after.trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_joins_chunks_and_stops_at_a_size_that_cuts_a_character() {
        assert_eq!(dechunk("3\r\né!\r\n2\r\nok\r\n0\r\n\r\n"), "é!ok");
        // "é" is two bytes: a size of 1 cuts it.
        assert_eq!(dechunk("2\r\nab\r\n1\r\né\r\n0\r\n\r\n"), "ab");
    }
}
