//! The server's defences at the door: the per-address WebSocket limit, the
//! Origin allow-list, and TLS (wss://) with the Rust client trusting a
//! private CA, all over loopback.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use signalling::client::{Client, ClientError, ClientOptions};
use signalling::protocol::{Event, Role};
use signalling::server::{ServerConfig, ServerError, ServerHandle, TlsIdentity, TlsPart};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket handshake with an optional `Origin`, as a browser would send
/// it; returns the open socket or the HTTP status and body of the refusal.
async fn ws_with_origin(srv: &ServerHandle, origin: Option<&str>) -> Result<Ws, (u16, String)> {
    let mut req = srv.ws_url().into_client_request().expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", o.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101, "an accepted upgrade switches protocols");
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            Err((
                resp.status().as_u16(),
                String::from_utf8_lossy(body).into_owned(),
            ))
        }
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

/// The first text frame, which on an admitted connection is `hello`.
async fn hello_of<S>(ws: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no hello: {other:?}"),
        }
    }
}

/// The value of one sample line of /metrics, e.g.
/// `peer_tree_refused_total{reason="origin"}`.
async fn metric(srv: &ServerHandle, sample: &str) -> u64 {
    let (status, body) = http_get(srv, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{body}"))
}

const PER_IP: &str = r#"peer_tree_refused_total{reason="per-ip-limit"}"#;
const ORIGIN: &str = r#"peer_tree_refused_total{reason="origin"}"#;

/// Connects with the Rust client until admitted; a 429 (the server has not
/// yet seen a just-closed connection end) is retried, anything else fails.
async fn connect_once_a_slot_frees(srv: &ServerHandle) -> Peer {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Client::connect(&srv.ws_url()).await {
            Ok((client, events)) => return Peer { client, events },
            Err(ClientError::Rejected { status: 429, .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("not admitted after a slot was freed: {e}"),
        }
    }
}

#[tokio::test]
async fn per_ip_limit_refuses_the_next_websocket_with_429_and_frees_slots() {
    let srv = start(ServerConfig {
        max_conns_per_ip: 3,
        ..ServerConfig::default()
    })
    .await;
    let (src, tree, _) = source(&srv, None).await;
    let (mut a, _, _) = joiner(&srv, &tree, None, None).await;
    let b = Peer::connect(&srv).await;

    // The fourth from 127.0.0.1 is refused at the upgrade, with a reason.
    match Client::connect(&srv.ws_url()).await {
        Err(ClientError::Rejected { status, reason, .. }) => {
            assert_eq!(status, 429);
            assert!(
                reason.contains("3 connections from your address"),
                "the body explains: {reason:?}"
            );
        }
        Err(e) => panic!("expected a 429 refusal, got {e}"),
        Ok(_) => panic!("a fourth connection from one address was admitted"),
    }
    assert_eq!(metric(&srv, PER_IP).await, 1);
    assert_eq!(metric(&srv, ORIGIN).await, 0);

    // Another address has a count of its own: bind the client to 127.0.0.2.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap())
        .expect("bind 127.0.0.2 (all of 127/8 is loopback on Linux)");
    let tcp = sock.connect(srv.addr()).await.expect("TCP from 127.0.0.2");
    let (mut other, resp) = tokio_tungstenite::client_async(srv.ws_url(), tcp)
        .await
        .expect("127.0.0.2 is admitted");
    assert_eq!(resp.status(), 101);
    assert!(hello_of(&mut other).await.contains(r#""type":"hello""#));

    // Those already in were not disturbed: they still work as a tree.
    let j = b.client.join(&tree, None, None).await.expect("join");
    assert!(!j.parent.is_empty());
    src.client
        .signal(&a.id(), &serde_json::json!({"candidate": null}))
        .unwrap();
    assert!(matches!(a.next().await, Event::Signal(_)));

    // Closing one frees its slot.
    a.client.close();
    let c = connect_once_a_slot_frees(&srv).await;
    assert!(
        Client::connect(&srv.ws_url()).await.is_err(),
        "the limit still holds after the freed slot was taken"
    );

    // Connections that end without a close handshake (dropped sockets) give
    // their slots back too.
    drop((src, b, c));
    let _again: Vec<Peer> = vec![
        connect_once_a_slot_frees(&srv).await,
        connect_once_a_slot_frees(&srv).await,
        connect_once_a_slot_frees(&srv).await,
    ];
}

/// Reads until the server closes the connection (EOF or reset); returns
/// how long that took, or None if it stayed open for `within`.
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let t0 = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(t0 + within, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Slowloris: connections that never finish their first request are closed
/// at the deadline, and one address cannot hold more than twice its
/// WebSocket limit in TCP connections meanwhile; others still get in.
#[tokio::test]
async fn unfinished_requests_are_cut_off_and_capped_per_address() {
    use tokio::io::AsyncWriteExt;
    let srv = start(ServerConfig {
        max_conns_per_ip: 2,
        first_request_deadline: Duration::from_millis(500),
        ..ServerConfig::default()
    })
    .await;
    // Four half-sent requests from 127.0.0.1: the TCP cap (2 x 2).
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    // A fifth is closed at once, before it sends anything.
    let mut fifth = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let cut = closed_within(&mut fifth, Duration::from_millis(400)).await;
    assert!(
        cut.is_some(),
        "a fifth TCP connection from one address was kept"
    );
    // Another address is not affected.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let tcp = sock.connect(srv.addr()).await.unwrap();
    let (mut other, _) = tokio_tungstenite::client_async(srv.ws_url(), tcp)
        .await
        .expect("127.0.0.3 is admitted");
    assert!(hello_of(&mut other).await.contains(r#""type":"hello""#));
    // The slow ones are closed at the deadline, which frees their slots.
    for tcp in &mut slow {
        let t = closed_within(tcp, Duration::from_secs(5))
            .await
            .expect("a half-sent request held its connection past the deadline");
        assert!(t < Duration::from_secs(2), "closed after {t:?}");
    }
    let _again = connect_once_a_slot_frees(&srv).await;
    // A connection that sent its whole request in time is not cut off later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    other
        .send(Message::text(r#"{"type":"create"}"#))
        .await
        .unwrap();
    let created = loop {
        match other.next().await {
            Some(Ok(Message::Text(t))) => break t,
            Some(Ok(_)) => continue,
            e => panic!("the WebSocket closed: {e:?}"),
        }
    };
    assert!(created.contains(r#""type":"created""#), "{created}");
}

#[tokio::test]
async fn allowed_origin_refuses_other_pages_with_403_but_not_native_clients() {
    let srv = start(ServerConfig {
        allowed_origins: vec!["https://watch.example".into()],
        // One slot: a refused origin must not take it.
        max_conns_per_ip: 1,
        ..ServerConfig::default()
    })
    .await;
    for _ in 0..3 {
        let (status, body) = ws_with_origin(&srv, Some("https://evil.example"))
            .await
            .expect_err("a foreign origin is refused");
        assert_eq!(status, 403);
        assert!(body.contains("origin is not allowed"), "body: {body:?}");
    }
    assert_eq!(metric(&srv, ORIGIN).await, 3);
    assert_eq!(metric(&srv, PER_IP).await, 0);

    let mut ws = ws_with_origin(&srv, Some("https://watch.example"))
        .await
        .expect("the allowed origin gets 101");
    assert!(hello_of(&mut ws).await.contains(r#""type":"hello""#));
    drop(ws);

    // No Origin at all (a native client): 101, raw and through our client.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ws = loop {
        match ws_with_origin(&srv, None).await {
            Ok(ws) => break ws,
            // The dropped socket above may still hold the one slot.
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("no Origin must be admitted: {e:?}"),
        }
    };
    assert!(hello_of(&mut ws).await.contains(r#""type":"hello""#));
    drop(ws);
    let p = connect_once_a_slot_frees(&srv).await;
    p.client
        .create(None)
        .await
        .expect("the native client works");
    assert_eq!(
        metric(&srv, ORIGIN).await,
        3,
        "only the foreign ones counted"
    );
}

/// A scratch directory removed at the end (kept when the test fails).
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("ptr-hardening-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1; returns the
/// certificate's and the key's PEM files.
fn self_signed(dir: &Dir) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("generate a certificate");
    (
        dir.write("cert.pem", &ck.cert.pem()),
        dir.write("key.pem", &ck.signing_key.serialize_pem()),
    )
}

fn trusting(ca: &Path) -> ClientOptions {
    ClientOptions {
        ca_cert: Some(ca.to_owned()),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn tls_serves_wss_to_clients_that_trust_its_ca_only() {
    let dir = Dir::new("tls");
    let (cert, key) = self_signed(&dir);
    let srv = start(ServerConfig {
        tls: Some(TlsIdentity::from_pem_files(&cert, &key).expect("load the PEM files")),
        ..ServerConfig::default()
    })
    .await;
    let url = srv.ws_url();
    assert_eq!(url, format!("wss://{}/ws", srv.addr()));
    assert_eq!(srv.http_url(), format!("https://{}", srv.addr()));

    // Without the CA: refused for the certificate, and the error says so.
    match Client::connect(&url).await {
        Err(ClientError::Certificate { source, .. }) => assert!(
            matches!(
                source,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "an unknown issuer, got {source:?}"
        ),
        Err(e) => panic!("expected a certificate error, got {e}"),
        Ok(_) => panic!("a client without the CA trusted a self-signed certificate"),
    }
    // Plain ws:// to the TLS port does not get a WebSocket either.
    let plain = url.replacen("wss://", "ws://", 1);
    match Client::connect(&plain).await {
        Err(e @ ClientError::NotWebSocket { .. }) => {
            assert!(
                e.to_string().contains("wss://"),
                "the error points at wss://: {e}"
            )
        }
        other => panic!("expected NotWebSocket, got {:?}", other.err()),
    }

    // With it: a create/join exchange and a signal along the new edge.
    let (src, mut src_events) = Client::connect_with(&url, trusting(&cert))
        .await
        .expect("connect over wss:// with the CA");
    let created = src.create(None).await.expect("create over TLS");
    // By name too: the certificate is for localhost as well as 127.0.0.1.
    let by_name = format!("wss://localhost:{}/ws", srv.addr().port());
    let (relay, mut relay_events) = Client::connect_with(&by_name, trusting(&cert))
        .await
        .expect("connect to wss://localhost");
    let joined = relay
        .join(&created.tree, None, Some(Role::Relay))
        .await
        .expect("join over TLS");
    assert_eq!(joined.parent, src.peer_id());
    assert_eq!(joined.depth, 1);
    let child = tokio::time::timeout(WAIT, src_events.next())
        .await
        .expect("child in time");
    assert!(
        matches!(&child, Some(Event::Child(c)) if c.peer == relay.peer_id()),
        "the source is told of its child: {child:?}"
    );
    src.signal(relay.peer_id(), &serde_json::json!({"candidate": null}))
        .unwrap();
    match tokio::time::timeout(WAIT, relay_events.next()).await {
        Ok(Some(Event::Signal(s))) => assert_eq!(s.from, src.peer_id()),
        other => panic!("expected the source's signal, got {other:?}"),
    }

    // Shutdown also stops the TLS accept loop: the port stops answering.
    srv.shutdown().await.expect("clean shutdown");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Client::connect_with(&url, trusting(&cert)).await {
            Err(ClientError::Connect { .. }) => break,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("still served after shutdown: {:?}", other.err()),
        }
    }
}

/// `openssl req -x509` makes CA:TRUE certificates by default; a client
/// given one as --ca-cert must say that the certificate is the problem, not
/// that --ca-cert is missing.
#[tokio::test]
async fn a_ca_certificate_as_the_servers_own_is_named_as_the_problem() {
    let dir = Dir::new("ca-leaf");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert = dir.write("ca-cert.pem", &cert.pem());
    let key = dir.write("ca-key.pem", &key.serialize_pem());
    let srv = start(ServerConfig {
        tls: Some(TlsIdentity::from_pem_files(&cert, &key).unwrap()),
        ..ServerConfig::default()
    })
    .await;
    match Client::connect_with(&srv.ws_url(), trusting(&cert)).await {
        Err(e @ ClientError::Certificate { .. }) => {
            assert!(e.to_string().contains("CA:TRUE"), "{e}")
        }
        Err(e) => panic!("expected a certificate error, got {e}"),
        Ok(_) => panic!("a CA certificate was accepted as a server's"),
    }
}

#[test]
fn tls_file_errors_name_the_file() {
    let dir = Dir::new("files");
    let (cert, key) = self_signed(&dir);
    let missing = dir.0.join("missing.pem");

    let e = TlsIdentity::from_pem_files(&missing, &key).unwrap_err();
    assert!(
        matches!(&e, ServerError::TlsRead { what: TlsPart::Certificate, path, source }
            if path == &missing && source.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    let e = TlsIdentity::from_pem_files(&cert, &missing).unwrap_err();
    assert!(
        matches!(&e, ServerError::TlsRead { what: TlsPart::Key, path, .. } if path == &missing),
        "{e:?}"
    );

    // A key where the certificate belongs, and the other way round.
    let e = TlsIdentity::from_pem_files(&key, &key).unwrap_err();
    assert!(
        matches!(&e, ServerError::NoCertificate { path } if path == &key),
        "{e:?}"
    );
    assert!(e.to_string().contains(&key.display().to_string()), "{e}");
    let e = TlsIdentity::from_pem_files(&cert, &cert).unwrap_err();
    assert!(
        matches!(&e, ServerError::NoKey { path } if path == &cert),
        "{e:?}"
    );

    // A key that is not the certificate's.
    let other = rcgen::KeyPair::generate().unwrap();
    let wrong = dir.write("other-key.pem", &other.serialize_pem());
    let e = TlsIdentity::from_pem_files(&cert, &wrong).unwrap_err();
    assert!(matches!(e, ServerError::TlsConfig { .. }), "{e:?}");

    TlsIdentity::from_pem_files(&cert, &key).expect("the matching pair loads");
}

#[tokio::test]
async fn client_ca_file_errors_name_the_file() {
    let dir = Dir::new("ca");
    let (_, key) = self_signed(&dir);
    let missing = dir.0.join("missing.pem");
    // No server is needed: the CA file is read before connecting.
    let url = "wss://127.0.0.1:9/ws";
    match Client::connect_with(url, trusting(&missing)).await {
        Err(e @ ClientError::CaCertRead { .. }) => {
            assert!(
                e.to_string().contains(&missing.display().to_string()),
                "{e}"
            )
        }
        Err(e) => panic!("expected CaCertRead, got {e}"),
        Ok(_) => panic!("connected to port 9"),
    }
    match Client::connect_with(url, trusting(&key)).await {
        Err(ClientError::NoCaCert { path }) => assert_eq!(path, key),
        Err(e) => panic!("expected NoCaCert, got {e}"),
        Ok(_) => panic!("connected to port 9"),
    }
}

/// Zeros that used to panic the server after it registered a peer (its
/// entry then leaked) or the client's connection are refused up front,
/// naming the setting.
#[tokio::test]
async fn zero_settings_are_refused_before_anything_starts() {
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
    for (cfg, setting) in [
        (
            ServerConfig {
                ping_interval: Duration::ZERO,
                ..ServerConfig::default()
            },
            "ping_interval",
        ),
        (
            ServerConfig {
                outbox_capacity: 0,
                ..ServerConfig::default()
            },
            "outbox_capacity",
        ),
        (
            ServerConfig {
                k1: 0,
                ..ServerConfig::default()
            },
            "k1",
        ),
    ] {
        let Err(e) = signalling::server::spawn(cfg, addr).await else {
            panic!("a server with {setting} = 0 started");
        };
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<ServerError>());
        assert!(
            matches!(inner, Some(ServerError::InvalidSetting { setting: s, .. }) if *s == setting),
            "{e}"
        );
    }

    let srv = signalling::server::spawn(ServerConfig::default(), addr)
        .await
        .expect("server");
    let opts = ClientOptions {
        event_buffer: 0,
        ..ClientOptions::default()
    };
    match Client::connect_with(&srv.ws_url(), opts).await {
        Err(ClientError::InvalidOption { option, .. }) => assert_eq!(option, "event_buffer"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a client with event_buffer = 0 connected"),
    }
    srv.shutdown().await.expect("shutdown");
}
