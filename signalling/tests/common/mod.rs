//! Shared test harness: a server on a free loopback port and peers that
//! speak to it through the real client over real WebSockets.

#![allow(dead_code)]

use std::time::Duration;

use signalling::client::{Client, Events};
use signalling::protocol::{ErrorCode, Event, Role};
use signalling::server::{self, ServerConfig, ServerHandle};

pub(crate) const WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn start(cfg: ServerConfig) -> ServerHandle {
    server::spawn(cfg, "127.0.0.1:0".parse().expect("loopback address"))
        .await
        .expect("bind a free loopback port")
}

pub(crate) fn cfg(k: u32, k1: u32) -> ServerConfig {
    ServerConfig {
        k,
        k1,
        ..ServerConfig::default()
    }
}

pub(crate) struct Peer {
    pub client: Client,
    pub events: Events,
}

impl Peer {
    pub(crate) async fn connect(srv: &ServerHandle) -> Peer {
        let (client, events) = Client::connect(&srv.ws_url()).await.expect("connect");
        Peer { client, events }
    }

    pub(crate) fn id(&self) -> String {
        self.client.peer_id().to_owned()
    }

    /// The next event, failing the test if none comes within `WAIT`.
    pub(crate) async fn next(&mut self) -> Event {
        self.next_within(WAIT)
            .await
            .expect("an event within the wait")
    }

    pub(crate) async fn next_within(&mut self, d: Duration) -> Option<Event> {
        tokio::time::timeout(d, self.events.next())
            .await
            .ok()
            .flatten()
    }

    /// Skips events until one matches; returns it.
    pub(crate) async fn wait_for(&mut self, what: &str, f: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(ev) if f(&ev) => return ev,
                Some(_) => continue,
                None => panic!("no {what} within {WAIT:?}"),
            }
        }
    }

    pub(crate) async fn expect_error(&mut self, code: ErrorCode) -> Event {
        let ev = self.next().await;
        match &ev {
            Event::Error(e) if e.code == code => ev,
            other => panic!("expected error {code}, got {}", other.to_json()),
        }
    }

    pub(crate) async fn expect_child(&mut self, peer: &str) {
        match self.next().await {
            Event::Child(c) if c.peer == peer => {}
            other => panic!("expected child {peer}, got {}", other.to_json()),
        }
    }

    pub(crate) async fn expect_child_gone(&mut self, peer: &str) {
        match self.next().await {
            Event::ChildGone(c) if c.peer == peer => {}
            other => panic!("expected child-gone {peer}, got {}", other.to_json()),
        }
    }

    /// Returns (parent, depth) of the next `parent` event.
    pub(crate) async fn expect_parent(&mut self) -> (String, u32) {
        match self.next().await {
            Event::Parent(p) => (p.parent, p.depth),
            other => panic!("expected parent, got {}", other.to_json()),
        }
    }

    /// Skips other events up to the next `parent`; returns (parent, depth).
    pub(crate) async fn wait_parent(&mut self) -> (String, u32) {
        match self
            .wait_for("parent", |e| matches!(e, Event::Parent(_)))
            .await
        {
            Event::Parent(p) => (p.parent, p.depth),
            _ => unreachable!("wait_for returned a non-matching event"),
        }
    }

    /// Asserts that nothing arrives: only for the end of a test, where the
    /// bound is a courtesy, not a correctness condition.
    pub(crate) async fn expect_quiet(&mut self, d: Duration) {
        if let Some(ev) = self.next_within(d).await {
            panic!("unexpected event {}", ev.to_json());
        }
    }
}

/// A source that created a tree; returns (source, tree id, token).
pub(crate) async fn source(srv: &ServerHandle, k: Option<u32>) -> (Peer, String, String) {
    let p = Peer::connect(srv).await;
    let c = p.client.create(k).await.expect("create");
    (p, c.tree, c.token)
}

/// Joins a fresh peer; returns it with its (parent, depth).
pub(crate) async fn joiner(
    srv: &ServerHandle,
    tree: &str,
    k: Option<u32>,
    role: Option<Role>,
) -> (Peer, String, u32) {
    let p = Peer::connect(srv).await;
    let j = p.client.join(tree, k, role).await.expect("join");
    (p, j.parent, j.depth)
}

/// GET a path from the server; returns (status, body).
pub(crate) async fn http_get(srv: &ServerHandle, path: &str) -> (u16, String) {
    signalling::client::http_get(&srv.addr().to_string(), path, WAIT)
        .await
        .expect("HTTP GET")
}

pub(crate) async fn snapshot(srv: &ServerHandle, tree: &str) -> serde_json::Value {
    let (status, body) = http_get(srv, &format!("/api/trees/{tree}")).await;
    assert_eq!(status, 200, "snapshot of {tree}: {body}");
    serde_json::from_str(&body).expect("snapshot is JSON")
}

/// parent peer id of `peer` in a snapshot.
pub(crate) fn parent_in(snap: &serde_json::Value, peer: &str) -> Option<String> {
    snap["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["peer"] == peer)?["parent"]
        .as_str()
        .map(str::to_owned)
}

/// The node of `peer` in a snapshot (`Null` if absent).
pub(crate) fn node_in<'a>(snap: &'a serde_json::Value, peer: &str) -> &'a serde_json::Value {
    snap["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["peer"] == peer))
        .unwrap_or(&serde_json::Value::Null)
}
