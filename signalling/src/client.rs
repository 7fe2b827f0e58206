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
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::protocol::{
    Create, Created, ErrorMsg, Event, Hello, Join, Joined, Parent, Reclaim, Request, Role,
    SignalTo, Stats,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the signalling server at {url} (is it running? check --signal)")]
    Connect {
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            event_buffer: 1024,
        }
    }
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
    /// Connects to `ws://host:port/ws` and waits for `hello`.
    pub async fn connect(url: &str) -> Result<(Client, Events), ClientError> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        opts: ClientOptions,
    ) -> Result<(Client, Events), ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_owned(),
                source,
            })?;
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
        let req = Request::Join(Join {
            tree: tree.to_owned(),
            k,
            role,
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
    pub async fn reclaim(&self, tree: &str, token: &str) -> Result<Created, ClientError> {
        let req = Request::Reclaim(Reclaim {
            tree: tree.to_owned(),
            token: token.to_owned(),
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

/// GETs `path` from the signalling server's HTTP side (`/healthz`,
/// `/metrics`, `/api/trees/{id}`) at `addr` (`host:port`); returns the status
/// and the body. A bare HTTP/1.1 request: three small endpoints of our own
/// server do not warrant an HTTP client dependency in every tool.
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
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
