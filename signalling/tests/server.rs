//! The signalling server over real WebSockets on loopback: placement, healing,
//! reclaim, reachability (rule 8), edge-checked signalling, and every kind of
//! bad input.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use signalling::client::JoinOptions;
use signalling::protocol::{ErrorCode, Event, IceServer, Role};
use signalling::server::{parse_ice_url, ServerConfig, TokenKey, TurnRest};
use tokio_tungstenite::tungstenite::Message;

/// The seed's own scenario: k1 = 4, k = 2, 30 peers. Rule 3 gives exact
/// breadth-first order: peers 1-4 under the source, then two under each.
#[tokio::test]
async fn seed_scenario_places_thirty_peers_breadth_first() {
    let srv = start(cfg(2, 4)).await;
    let (mut src, tree, _) = source(&srv, None).await;
    let mut peers = Vec::new();
    for i in 1..=30usize {
        let (p, parent, depth) = joiner(&srv, &tree, None, None).await;
        let (want_parent, want_depth) = if i <= 4 {
            (src.id(), 1)
        } else {
            let parent_index = (i - 5) / 2; // 0-based index into peers
            let pp: &Peer = &peers[parent_index];
            (
                pp.id(),
                if i <= 12 {
                    2
                } else if i <= 28 {
                    3
                } else {
                    4
                },
            )
        };
        assert_eq!(parent, want_parent, "parent of peer {i}");
        assert_eq!(depth, want_depth, "depth of peer {i}");
        peers.push(p);
    }
    // Each parent heard `child` for exactly its children, in order.
    for p in &peers[..4] {
        src.expect_child(&p.id()).await;
    }
    let ids: Vec<String> = peers.iter().map(Peer::id).collect();
    for (i, parent) in peers.iter_mut().enumerate() {
        for c in [4 + 2 * i, 5 + 2 * i].into_iter().filter(|c| *c < 30) {
            parent.expect_child(&ids[c]).await;
        }
    }
    let snap = snapshot(&srv, &tree).await;
    assert_eq!(snap["size"], 31);
    assert_eq!(snap["max_depth"], 4);
    for (i, p) in peers.iter().enumerate() {
        let want = if i < 4 {
            src.id()
        } else {
            peers[(i - 4) / 2].id()
        };
        assert_eq!(
            parent_in(&snap, &p.id()),
            Some(want),
            "snapshot parent of peer {}",
            i + 1
        );
    }
}

/// Builds source + `n` joiners with k = 2, k1 = 2: a binary tree in join order.
async fn binary_tree(
    srv: &signalling::server::ServerHandle,
    n: usize,
) -> (Peer, String, String, Vec<Peer>) {
    let (src, tree, token) = source(srv, None).await;
    let mut peers = Vec::new();
    for _ in 0..n {
        let (p, _, _) = joiner(srv, &tree, None, None).await;
        peers.push(p);
    }
    (src, tree, token, peers)
}

/// Drains `child` events a parent got while the tree was being built.
async fn drain_children(p: &mut Peer, n: usize) {
    for _ in 0..n {
        p.wait_for("child", |e| matches!(e, Event::Child(_))).await;
    }
}

/// A depth-1 peer dies: its children get `parent` at once (the server does
/// not wait for anyone to time out) and keep their own subtrees.
#[tokio::test]
async fn mid_tree_death_replaces_children_with_subtrees_within_100ms() {
    let srv = start(cfg(2, 2)).await;
    // src -> a, b; a -> c, d; b -> e, f; c -> g, h; d -> i, j
    let (_src, tree, _, mut peers) = binary_tree(&srv, 10).await;
    let ids: Vec<String> = peers.iter().map(Peer::id).collect();
    let before = snapshot(&srv, &tree).await;
    assert_eq!(parent_in(&before, &ids[6]), Some(ids[2].clone()));

    // Children c (2) and d (3) of a (0) drain their `child` events first.
    drain_children(&mut peers[2], 2).await;
    drain_children(&mut peers[3], 2).await;
    let a = peers.remove(0);
    let t0 = Instant::now();
    a.client.close();
    let (pc, dc) = peers[1].expect_parent().await; // c
    let t_c = t0.elapsed();
    let (pd, dd) = peers[2].expect_parent().await; // d
    let t_d = t0.elapsed();
    assert!(
        t_c < Duration::from_millis(100),
        "c re-placed after {t_c:?}"
    );
    assert!(
        t_d < Duration::from_millis(100),
        "d re-placed after {t_d:?}"
    );
    // c takes a's freed slot under the source (depth 1); d goes to the
    // shallowest free slot outside its own subtree: under e (depth 2).
    assert_eq!((pc.as_str(), dc), (_src.id().as_str(), 1));
    assert_eq!((pd.as_str(), dd), (ids[4].as_str(), 3));
    let after = snapshot(&srv, &tree).await;
    for (child, parent) in [(6, 2), (7, 2), (8, 3), (9, 3)] {
        assert_eq!(
            parent_in(&after, &ids[child]),
            Some(ids[parent].clone()),
            "subtree of {} kept",
            ids[parent]
        );
    }
    assert_eq!(after["size"], 10);
}

/// The source drops and comes back within the grace period with its token.
#[tokio::test]
async fn source_reclaims_within_grace() {
    let srv = start(ServerConfig {
        grace: Duration::from_secs(10),
        ..cfg(2, 2)
    })
    .await;
    let (src, tree, token, mut peers) = binary_tree(&srv, 3).await;
    src.client.close();
    // A wrong token is refused and changes nothing.
    let thief = Peer::connect(&srv).await;
    let err = thief
        .client
        .reclaim(&tree, "not-the-token", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadToken));

    let mut back = Peer::connect(&srv).await;
    let c = back
        .client
        .reclaim(&tree, &token, None)
        .await
        .expect("reclaim");
    assert_eq!(
        (c.tree.as_str(), c.token.as_str()),
        (tree.as_str(), token.as_str())
    );
    back.expect_child(&peers[0].id()).await;
    back.expect_child(&peers[1].id()).await;
    for p in peers.iter_mut().take(2) {
        let (parent, depth) = p.wait_parent().await;
        assert_eq!((parent, depth), (back.id(), 1));
    }
    let snap = snapshot(&srv, &tree).await;
    assert_eq!(snap["source_connected"], true);
    assert_eq!(parent_in(&snap, &peers[0].id()), Some(back.id()));
    // The tree keeps working: a newcomer joins under the reclaimed tree.
    let (_late, _, depth) = joiner(&srv, &tree, None, None).await;
    assert_eq!(depth, 2);
}

/// The source drops and does not return: every member gets `tree-closed`.
#[tokio::test]
async fn tree_closes_when_source_does_not_reclaim() {
    let srv = start(ServerConfig {
        grace: Duration::from_millis(300),
        ..cfg(2, 2)
    })
    .await;
    let (src, tree, token, mut peers) = binary_tree(&srv, 5).await;
    src.client.close();
    for p in peers.iter_mut() {
        let ev = p
            .wait_for("tree-closed", |e| matches!(e, Event::TreeClosed(_)))
            .await;
        let Event::TreeClosed(tc) = ev else {
            unreachable!()
        };
        assert_eq!(
            (tc.tree.as_str(), tc.reason.as_str()),
            (tree.as_str(), "source-left")
        );
    }
    let (status, _) = http_get(&srv, &format!("/api/trees/{tree}")).await;
    assert_eq!(status, 404);
    let late = Peer::connect(&srv).await;
    let err = late.client.reclaim(&tree, &token, None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSuchTree));
    // Former members belong to no tree and may create or join again.
    peers[0]
        .client
        .create(None)
        .await
        .expect("create after tree-closed");
}

/// A restarted server (same token key) lets the source take its tree back
/// within one grace period of starting, with the `k` it asks for; members
/// rejoin the same tree id. Another key, or a late reclaim, finds no tree.
#[tokio::test]
async fn source_reclaims_its_tree_from_a_restarted_server() {
    let key = TokenKey::random();
    let with_key = |key: &TokenKey, grace| ServerConfig {
        token_key: key.clone(),
        grace,
        ..cfg(2, 4)
    };
    let first = start(with_key(&key, Duration::from_secs(10))).await;
    let (src, tree, token) = source(&first, Some(1)).await;
    drop(src);
    first.shutdown().await.expect("shutdown");

    let other_key = start(with_key(&TokenKey::random(), Duration::from_secs(10))).await;
    let stranger = Peer::connect(&other_key).await;
    let err = stranger
        .client
        .reclaim(&tree, &token, Some(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSuchTree));

    let restarted = start(with_key(&key, Duration::from_secs(10))).await;
    let thief = Peer::connect(&restarted).await;
    let err = thief
        .client
        .reclaim(&tree, "forged-token", Some(4))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSuchTree), "nothing leaks");
    let back = Peer::connect(&restarted).await;
    let c = back
        .client
        .reclaim(&tree, &token, Some(1))
        .await
        .expect("reclaim after a restart");
    assert_eq!(
        (c.tree.as_str(), c.token.as_str()),
        (tree.as_str(), token.as_str())
    );
    let (_a, _, depth) = joiner(&restarted, &tree, None, None).await;
    assert_eq!(depth, 1);
    // k = 1 as the source asked: the second member goes below the first.
    let (_b, _, depth) = joiner(&restarted, &tree, None, None).await;
    assert_eq!(depth, 2);

    let short = start(with_key(&key, Duration::from_millis(200))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = Peer::connect(&short).await;
    let err = late
        .client
        .reclaim(&tree, &token, Some(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSuchTree), "after the grace");
}

/// Rule 4: a relay joining late takes the shallowest non-relay leaf's place.
#[tokio::test]
async fn late_relay_takes_a_leafs_place() {
    let srv = start(cfg(2, 2)).await;
    let (mut src, tree, _, mut peers) = binary_tree(&srv, 2).await;
    // src -> a, b: both leaves at depth 1; the free slots are at depth 2.
    drain_children(&mut src, 2).await;
    let (mut relay, parent, depth) = joiner(&srv, &tree, Some(2), Some(Role::Relay)).await;
    assert_eq!((parent, depth), (src.id(), 1));
    let a = peers[0].id();
    src.expect_child_gone(&a).await;
    src.expect_child(&relay.id()).await;
    relay.expect_child(&a).await;
    let (p, d) = peers[0].expect_parent().await;
    assert_eq!((p, d), (relay.id(), 2));
    // A plain peer joining now lands under the relay (ties go to relays).
    let (_x, parent, depth) = joiner(&srv, &tree, None, None).await;
    assert_eq!((parent, depth), (relay.id(), 2));
}

/// Rule 8: a member that says only TURN reaches it keeps its place, its
/// children go as if it had left, and nobody is placed under it until it
/// says it is directly reachable again.
#[tokio::test]
async fn relayed_member_gives_up_its_children_and_stays() {
    let srv = start(cfg(2, 2)).await;
    // src -> a, b; a -> c, d; b -> e
    let (src, tree, _, mut peers) = binary_tree(&srv, 5).await;
    let ids: Vec<String> = peers.iter().map(Peer::id).collect();
    drain_children(&mut peers[0], 2).await;
    drain_children(&mut peers[1], 1).await;

    peers[0].client.reach(true).unwrap();
    peers[0].expect_child_gone(&ids[2]).await;
    peers[0].expect_child_gone(&ids[3]).await;
    // As rule 5 moves a dead member's children: c (earliest) takes b's free
    // slot at depth 1; d then goes to the earliest of the depth-2 slots, c.
    assert_eq!(peers[2].expect_parent().await, (ids[1].clone(), 2));
    assert_eq!(peers[3].expect_parent().await, (ids[2].clone(), 3));
    peers[1].expect_child(&ids[2]).await;
    peers[2].expect_child(&ids[3]).await;
    let snap = snapshot(&srv, &tree).await;
    let a = node_in(&snap, &ids[0]);
    assert_eq!(a["parent"], src.id(), "a keeps its place");
    assert_eq!(a["relayed"], true);
    assert_eq!(a["children"], json!([]));
    assert_eq!(snap["size"], 6, "nobody left the tree");

    // A newcomer goes to depth 3 rather than under a at depth 2.
    let (_x, parent, depth) = joiner(&srv, &tree, None, None).await;
    assert_eq!((parent, depth), (ids[2].clone(), 3));

    // Directly reachable again: a's free slots at depth 1 are the best.
    peers[0].client.reach(false).unwrap();
    let (y, parent, depth) = joiner(&srv, &tree, None, None).await;
    assert_eq!((parent, depth), (ids[0].clone(), 2));
    // The first event a has had since its two `child-gone`.
    peers[0].expect_child(&y.id()).await;
    let snap = snapshot(&srv, &tree).await;
    assert_eq!(node_in(&snap, &ids[0]).get("relayed"), None);
}

/// `join` with `relayed`: even a relay joins as a leaf (no rule 4), and
/// later joiners go elsewhere.
#[tokio::test]
async fn relayed_joiner_is_placed_as_a_leaf() {
    let srv = start(cfg(2, 2)).await;
    // src -> a, b: both leaves at depth 1; a plain relay would take a's place.
    let (mut src, tree, _, peers) = binary_tree(&srv, 2).await;
    drain_children(&mut src, 2).await;
    let relay = Peer::connect(&srv).await;
    let opts = JoinOptions {
        k: Some(2),
        role: Some(Role::Relay),
        relayed: true,
    };
    let j = relay.client.join_with(&tree, opts).await.expect("join");
    assert_eq!((j.parent.as_str(), j.depth), (peers[0].id().as_str(), 2));
    // Three slots left (one under a, two under b); none is the relay's.
    for _ in 0..3 {
        let (_p, parent, _) = joiner(&srv, &tree, Some(0), None).await;
        assert_ne!(parent, relay.id());
    }
    let snap = snapshot(&srv, &tree).await;
    assert_eq!(node_in(&snap, &relay.id())["relayed"], true);
    assert_eq!(node_in(&snap, &relay.id())["role"], "relay");
    src.expect_quiet(Duration::from_millis(100)).await;
}

/// `reach` errors: the source must be directly reachable; a request that
/// fails changes nothing, and `relayed:false` from the source is no error.
#[tokio::test]
async fn reach_refusals() {
    let srv = start(cfg(2, 2)).await;
    let (mut src, tree, _, _peers) = binary_tree(&srv, 2).await;
    drain_children(&mut src, 2).await;
    src.client.reach(true).unwrap();
    let Event::Error(e) = src.expect_error(ErrorCode::BadRequest).await else {
        unreachable!()
    };
    assert_eq!(e.re.as_deref(), Some("reach"));
    assert!(e.message.contains("directly reachable"), "{}", e.message);
    // The next event answers the `reconnect` after it: `reach` false from
    // the source is accepted silently.
    src.client.reach(false).unwrap();
    src.client.send_text(r#"{"type":"reconnect"}"#).unwrap();
    let Event::Error(e) = src.expect_error(ErrorCode::BadRequest).await else {
        unreachable!()
    };
    assert_eq!(e.re.as_deref(), Some("reconnect"));
    let snap = snapshot(&srv, &tree).await;
    assert_eq!(node_in(&snap, &src.id()).get("relayed"), None);
    assert_eq!(
        node_in(&snap, &src.id())["children"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let mut outsider = Peer::connect(&srv).await;
    outsider.client.reach(false).unwrap();
    outsider.expect_error(ErrorCode::NotInTree).await;
}

/// `reconnect` gives another parent and keeps the peer's own subtree.
#[tokio::test]
async fn reconnect_picks_another_parent() {
    let srv = start(cfg(2, 2)).await;
    // src -> a, b; a -> c, d; b -> e
    let (_src, tree, _, mut peers) = binary_tree(&srv, 5).await;
    let ids: Vec<String> = peers.iter().map(Peer::id).collect();
    drain_children(&mut peers[0], 2).await;
    drain_children(&mut peers[1], 1).await;
    let p = peers[2].client.reconnect().await.expect("reconnect c");
    assert_eq!(
        (p.parent.as_str(), p.depth),
        (ids[1].as_str(), 2),
        "c moves under b"
    );
    peers[0].expect_child_gone(&ids[2]).await;
    peers[1].expect_child(&ids[2]).await;
    // The stream also carries `parent`, for the media side to act on.
    assert_eq!(peers[2].expect_parent().await, (ids[1].clone(), 2));
    let snap = snapshot(&srv, &tree).await;
    assert_eq!(parent_in(&snap, &ids[2]), Some(ids[1].clone()));
    // The source has no upstream to change.
    let err = _src.client.reconnect().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
}

/// `signal` goes parent <-> child only, verbatim; anything else is refused
/// with `not-a-neighbour` and never delivered.
#[tokio::test]
async fn signal_only_along_tree_edges() {
    let srv = start(cfg(2, 2)).await;
    // src -> a, b; a -> c
    let (mut src, _tree, _, mut peers) = binary_tree(&srv, 3).await;
    drain_children(&mut src, 2).await;
    drain_children(&mut peers[0], 1).await;
    let ids: Vec<String> = peers.iter().map(Peer::id).collect();
    let offer = json!({"sdp": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}});

    // Sibling b -> c and grandparent src -> c are not edges.
    peers[1].client.signal(&ids[2], &offer).unwrap();
    peers[1].expect_error(ErrorCode::NotANeighbour).await;
    src.client.signal(&ids[2], &offer).unwrap();
    src.expect_error(ErrorCode::NotANeighbour).await;
    // Those refusals were processed before this line; had either been
    // forwarded it would sit in c's queue ahead of a's signal.
    peers[0].client.signal(&ids[2], &offer).unwrap();
    match peers[2].next().await {
        Event::Signal(s) => {
            assert_eq!(s.from, ids[0]);
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(s.data.get()).unwrap(),
                offer
            );
        }
        other => panic!("expected a's signal, got {}", other.to_json()),
    }
    // Child to parent works too (answers, candidates).
    let cand = json!({"candidate": null});
    peers[2].client.signal(&ids[0], &cand).unwrap();
    match peers[0].next().await {
        Event::Signal(s) => assert_eq!(
            (s.from.as_str(), s.data.get()),
            (ids[2].as_str(), r#"{"candidate":null}"#)
        ),
        other => panic!("expected c's signal, got {}", other.to_json()),
    }
    // An unknown peer id is no neighbour either.
    peers[2].client.signal("nobody", &cand).unwrap();
    peers[2].expect_error(ErrorCode::NotANeighbour).await;
}

/// A connection that stops answering pings is removed as if it had closed,
/// and its children are re-placed.
#[tokio::test]
async fn silent_connection_is_removed_and_children_replaced() {
    let srv = start(ServerConfig {
        ping_interval: Duration::from_millis(200),
        ..cfg(2, 1)
    })
    .await;
    let (mut src, tree, _) = source(&srv, None).await;
    let (ws, mute_id) = mute_member(&srv, &tree).await;
    src.expect_child(&mute_id).await;
    let (mut child, parent, _) = joiner(&srv, &tree, None, None).await;
    assert_eq!(parent, mute_id);

    let t0 = Instant::now();
    src.expect_child_gone(&mute_id).await;
    let gone_after = t0.elapsed();
    src.expect_child(&child.id()).await;
    assert_eq!(child.expect_parent().await, (src.id(), 1));
    // Two 200 ms intervals without a pong, checked on a 200 ms tick.
    assert!(
        gone_after >= Duration::from_millis(200),
        "removed too early: {gone_after:?}"
    );
    drop(ws);
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket that joins `tree` and then never reads again, so it
/// answers no ping: a frozen member. Returns it and its peer id.
async fn mute_member(srv: &signalling::server::ServerHandle, tree: &str) -> (RawWs, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url())
        .await
        .unwrap();
    let hello = next_text(&mut ws).await;
    let id = match Event::parse(hello.as_bytes()).unwrap() {
        Event::Hello(h) => h.peer,
        other => panic!("expected hello, got {}", other.to_json()),
    };
    ws.send(Message::Text(
        json!({"type":"join","tree":tree}).to_string().into(),
    ))
    .await
    .unwrap();
    assert!(next_text(&mut ws).await.contains("\"joined\""));
    (ws, id)
}

/// A `reconnect` has the server check the old parent at once: a frozen one
/// (it answers no ping) is removed within PROBE_DEADLINE and its child
/// re-placed, even though no other slot was free and the request itself
/// failed; the regular pings (5 s here) would have taken 10 s.
#[tokio::test]
async fn a_parent_its_child_calls_silent_is_checked_at_once() {
    let srv = start(cfg(1, 1)).await;
    let (mut src, tree, _) = source(&srv, None).await;
    let (ws, frozen) = mute_member(&srv, &tree).await;
    src.expect_child(&frozen).await;
    let (mut child, parent, _) = joiner(&srv, &tree, None, None).await;
    assert_eq!(parent, frozen);

    let t0 = Instant::now();
    let err = child.client.reconnect().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TreeFull));
    src.expect_child_gone(&frozen).await;
    let gone_after = t0.elapsed();
    assert_eq!(child.wait_parent().await, (src.id(), 1));
    assert!(
        gone_after < Duration::from_secs(2),
        "the frozen parent went after {gone_after:?}"
    );
    drop(ws);
}

/// The same check leaves a live parent, which answers the ping, in place.
#[tokio::test]
async fn a_live_parent_its_child_calls_silent_stays() {
    let srv = start(cfg(1, 1)).await;
    let (mut src, tree, _) = source(&srv, None).await;
    let (live, _, _) = joiner(&srv, &tree, None, None).await;
    let live_id = live.id();
    src.expect_child(&live_id).await;
    let (mut child, parent, _) = joiner(&srv, &tree, None, None).await;
    assert_eq!(parent, live_id);

    let err = child.client.reconnect().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TreeFull));
    // Past the check's deadline: nobody moved.
    child
        .expect_quiet(signalling::server::PROBE_DEADLINE * 2)
        .await;
    let snap = snapshot(&srv, &tree).await;
    assert_eq!(parent_in(&snap, &live_id), Some(src.id()));
    assert_eq!(parent_in(&snap, &child.id()), Some(live_id));
}

async fn next_text<S>(ws: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code.
async fn close_code<S>(ws: &mut S) -> Option<u16>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
            Err(_) => panic!("server did not close within {WAIT:?}"),
        }
    }
}

/// Every kind of bad input gets its documented error, and a tree on the same
/// server goes on working throughout.
#[tokio::test]
async fn bad_inputs_get_their_errors_while_another_tree_works() {
    let srv = start(ServerConfig {
        max_message: 4096,
        ..cfg(2, 1)
    })
    .await;
    // The bystander tree: a source and one child that signal each other.
    let (mut bsrc, btree, _) = source(&srv, None).await;
    let (mut bchild, _, _) = joiner(&srv, &btree, None, None).await;
    bsrc.expect_child(&bchild.id()).await;
    let ping_pong = |n: u32| json!({"sdp": {"type": "offer", "sdp": format!("round {n}")}});

    let mut bad = Peer::connect(&srv).await;
    let (_other_src, other_tree, _) = source(&srv, Some(1)).await;
    let (_filler, _, _) = joiner(&srv, &other_tree, Some(0), None).await;
    let cases: Vec<(String, ErrorCode)> = vec![
        ("not json".into(), ErrorCode::BadJson),
        ("{\"type\":\"join\",".into(), ErrorCode::BadJson),
        ("[1,2,3]".into(), ErrorCode::BadRequest),
        ("{\"no_type\":1}".into(), ErrorCode::BadRequest),
        ("{\"type\":\"teleport\"}".into(), ErrorCode::UnknownType),
        ("{\"type\":\"join\"}".into(), ErrorCode::BadRequest),
        (
            "{\"type\":\"join\",\"tree\":42}".into(),
            ErrorCode::BadRequest,
        ),
        (
            json!({"type":"join","tree":btree,"k":-1}).to_string(),
            ErrorCode::BadRequest,
        ),
        (
            json!({"type":"join","tree":btree,"k":1.5}).to_string(),
            ErrorCode::BadRequest,
        ),
        (
            json!({"type":"join","tree":btree,"k":99999999999u64}).to_string(),
            ErrorCode::BadRequest,
        ),
        (
            json!({"type":"join","tree":"no-such-tree-id"}).to_string(),
            ErrorCode::NoSuchTree,
        ),
        (
            json!({"type":"join","tree":other_tree}).to_string(),
            ErrorCode::TreeFull,
        ),
        (
            json!({"type":"signal","to":bsrc.id(),"data":{}}).to_string(),
            ErrorCode::NotInTree,
        ),
        (
            json!({"type":"reconnect"}).to_string(),
            ErrorCode::NotInTree,
        ),
        (json!({"type":"leave"}).to_string(), ErrorCode::NotInTree),
        (
            json!({"type":"reclaim","tree":btree,"token":"guess"}).to_string(),
            ErrorCode::BadToken,
        ),
        (
            json!({"type":"reclaim","tree":"nope","token":"guess"}).to_string(),
            ErrorCode::NoSuchTree,
        ),
        (json!({"type":"reach"}).to_string(), ErrorCode::BadRequest),
        (
            json!({"type":"reach","relayed":"yes"}).to_string(),
            ErrorCode::BadRequest,
        ),
        (
            json!({"type":"reach","relayed":true}).to_string(),
            ErrorCode::NotInTree,
        ),
    ];
    for (i, (text, code)) in cases.iter().enumerate() {
        bad.client.send_text(text.clone()).unwrap();
        let ev = bad.expect_error(*code).await;
        // The malformed streak resets on a good request; keep it under 8.
        if i % 4 == 3 {
            bad.client.send_text("{\"type\":\"stats\"}").unwrap();
        }
        let Event::Error(e) = ev else { unreachable!() };
        assert!(!e.message.is_empty(), "error {code} explains itself");
        // Meanwhile the bystander tree still signals both ways.
        bsrc.client
            .signal(&bchild.id(), &ping_pong(i as u32))
            .unwrap();
        assert!(matches!(bchild.next().await, Event::Signal(s) if s.from == bsrc.id()));
    }
    // A failed request changed nothing: `bad` is in no tree and can create.
    bad.client.create(None).await.expect("create");
    let err = bad.client.create(None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AlreadyInTree), "create twice");
    let err = bad.client.join(&btree, None, None).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::AlreadyInTree),
        "join while in a tree"
    );

    // A binary frame is bad-request; an oversized one is too-large + 1009.
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url())
        .await
        .unwrap();
    next_text(&mut ws).await; // hello
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert!(next_text(&mut ws)
        .await
        .contains("\"code\":\"bad-request\""));
    let huge = json!({"type":"stats","pad":"x".repeat(5000)}).to_string();
    ws.send(Message::Text(huge.into())).await.unwrap();
    assert!(next_text(&mut ws).await.contains("\"code\":\"too-large\""));
    assert_eq!(close_code(&mut ws).await, Some(1009));

    // Eight malformed messages in a row close with 1008.
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url())
        .await
        .unwrap();
    next_text(&mut ws).await;
    for _ in 0..8 {
        ws.send(Message::Text("garbage".into())).await.unwrap();
    }
    for _ in 0..8 {
        assert!(next_text(&mut ws).await.contains("\"code\":\"bad-json\""));
    }
    assert_eq!(close_code(&mut ws).await, Some(1008));

    // A flood over the rate: messages are dropped with one rate-limited
    // error, and the connection still works once the second has passed.
    let flood = Peer::connect(&srv).await;
    let mut flood = flood;
    for _ in 0..200 {
        flood
            .client
            .send_text("{\"type\":\"stats\",\"rx_bps\":1}")
            .unwrap();
    }
    flood.expect_error(ErrorCode::RateLimited).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the bucket refill
    flood
        .client
        .create(None)
        .await
        .expect("works again after the flood");

    // The bystander tree saw none of it.
    bsrc.client.signal(&bchild.id(), &ping_pong(999)).unwrap();
    assert!(matches!(bchild.next().await, Event::Signal(s) if s.from == bsrc.id()));
    let (_late, parent, _) = joiner(&srv, &btree, None, None).await;
    assert_eq!(parent, bchild.id());
    let (_, metrics) = http_get(&srv, "/metrics").await;
    for code in [
        "bad-json",
        "bad-request",
        "unknown-type",
        "too-large",
        "rate-limited",
        "no-such-tree",
        "tree-full",
        "bad-token",
        "not-in-tree",
        "already-in-tree",
    ] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("peer_tree_errors_total") && l.contains(&format!("code=\"{code}\""))
            })
            .unwrap_or_else(|| panic!("no errors_total line for {code}:\n{metrics}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1.0, "{line}");
    }
}

/// A peer that stops reading while messages pile up for it is dropped; its
/// parent and everyone else carry on.
#[tokio::test]
async fn slow_reader_is_dropped_not_waited_for() {
    let srv = start(ServerConfig {
        outbox_capacity: 8,
        rate: 100_000,
        max_message: 64 * 1024,
        ..cfg(2, 2)
    })
    .await;
    let (mut src, tree, _) = source(&srv, None).await;
    // The slow child: a raw socket that never reads after joining.
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url())
        .await
        .unwrap();
    let slow_id = match Event::parse(next_text(&mut ws).await.as_bytes()).unwrap() {
        Event::Hello(h) => h.peer,
        _ => panic!("expected hello"),
    };
    ws.send(Message::Text(
        json!({"type":"join","tree":tree}).to_string().into(),
    ))
    .await
    .unwrap();
    assert!(next_text(&mut ws).await.contains("joined"));
    src.expect_child(&slow_id).await;
    let (mut fast, _, _) = joiner(&srv, &tree, None, None).await;
    src.expect_child(&fast.id()).await;

    // 60 KB signals until the server gives up on the slow child (kernel
    // buffers take a few MB first). Bounded: at most 2000 messages.
    let big = json!({"sdp": {"type": "offer", "sdp": "a".repeat(60_000)}});
    let mut sent = 0;
    let dropped = loop {
        for _ in 0..50 {
            src.client.signal(&slow_id, &big).unwrap();
            sent += 1;
        }
        // The fast sibling is served promptly all along.
        src.client
            .signal(&fast.id(), &json!({"candidate": null}))
            .unwrap();
        assert!(matches!(fast.next().await, Event::Signal(_)));
        if let Some(Event::ChildGone(g)) = src.next_within(Duration::from_millis(50)).await {
            break g.peer;
        }
        assert!(
            sent < 2000,
            "slow reader never dropped after {sent} messages"
        );
    };
    assert_eq!(dropped, slow_id);
    drop(ws);
}

/// `/healthz`, `/metrics` and `/api/trees/{id}` as documented.
#[tokio::test]
async fn http_endpoints() {
    let srv = start(cfg(2, 2)).await;
    let (status, body) = http_get(&srv, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (_src, tree, _, _peers) = binary_tree(&srv, 3).await;
    let (status, metrics) = http_get(&srv, "/metrics").await;
    assert_eq!(status, 200);
    for want in [
        "peer_tree_peers 4",
        "peer_tree_trees 1",
        "peer_tree_joins_total 3",
        "peer_tree_max_depth 2",
        "peer_tree_connections 4",
    ] {
        assert!(
            metrics.lines().any(|l| l == want),
            "missing {want:?} in\n{metrics}"
        );
    }
    let rss = metrics
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .expect("rss line");
    assert!(rss.parse::<u64>().unwrap() > 1_000_000);
    let snap = snapshot(&srv, &tree).await;
    let nodes = snap["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    let root = nodes.iter().find(|n| n["depth"] == 0).unwrap();
    assert_eq!(root["role"], "source");
    assert_eq!(root["children"].as_array().unwrap().len(), 2);
    assert_eq!(root["k"], 2);
    for n in nodes.iter().filter(|n| n["depth"] != 0) {
        assert_eq!(n["role"], "peer");
        assert!(n["parent"].is_string());
    }
    let (status, body) = http_get(&srv, "/api/trees/unknown").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_get(&srv, "/peer-tree-client.js").await;
    assert_eq!(status, 200);
    assert!(body.contains("PeerTreeClient"));
    srv.shutdown().await.expect("clean shutdown");
}

/// `leave`: a peer's children are re-placed at once and it may join again;
/// a source that leaves closes its tree for everyone at once.
#[tokio::test]
async fn leave_replaces_children_and_source_leave_closes_the_tree() {
    let srv = start(cfg(2, 2)).await;
    // src -> a, b; a -> c
    let (src, tree, _, mut peers) = binary_tree(&srv, 3).await;
    drain_children(&mut peers[0], 1).await;
    peers[0].client.leave().await.expect("leave");
    assert_eq!(peers[2].expect_parent().await, (src.id(), 1));
    let (_, body) = http_get(&srv, &format!("/api/trees/{tree}")).await;
    assert!(
        !body.contains(&peers[0].id()),
        "a is out of the tree: {body}"
    );
    // The same connection may join again.
    let j = peers[0]
        .client
        .join(&tree, None, None)
        .await
        .expect("rejoin");
    assert_eq!(j.depth, 2);

    src.client.leave().await.expect("source leaves");
    for p in peers.iter_mut() {
        let ev = p
            .wait_for("tree-closed", |e| matches!(e, Event::TreeClosed(_)))
            .await;
        assert!(matches!(ev, Event::TreeClosed(t) if t.reason == "source-left"));
    }
    let (status, _) = http_get(&srv, &format!("/api/trees/{tree}")).await;
    assert_eq!(status, 404);
}

/// `hello` carries the ICE servers as configured, credentials beside the
/// URL rather than in it; a TURN server without static credentials gets
/// ones made for this very connection from the shared secret.
#[tokio::test]
async fn hello_carries_static_and_per_connection_turn_credentials() {
    let ttl = Duration::from_secs(600);
    let urls = [
        "stun:stun.example.org:3478",
        "turn:alice:s%40cret@turn.example.org:3478",
        "turns:turn.example.org:5349?transport=tcp",
    ];
    let srv = start(ServerConfig {
        ice_servers: urls.iter().map(|u| parse_ice_url(u).unwrap()).collect(),
        turn_rest: Some(TurnRest::new(b"north-wind", ttl).unwrap()),
        ..cfg(2, 2)
    })
    .await;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"north-wind");
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut usernames = Vec::new();
    for _ in 0..2 {
        let before = SystemTime::now();
        let p = Peer::connect(&srv).await;
        let after = SystemTime::now();
        let hello = p.client.hello();
        let ice = &hello.ice_servers;
        assert_eq!(ice.len(), 3, "{ice:?}");
        let plain = |url: &str, user: Option<&str>, cred: Option<&str>| IceServer {
            urls: vec![url.to_owned()],
            username: user.map(str::to_owned),
            credential: cred.map(str::to_owned),
        };
        assert_eq!(ice[0], plain("stun:stun.example.org:3478", None, None));
        assert_eq!(
            ice[1],
            plain("turn:turn.example.org:3478", Some("alice"), Some("s@cret"))
        );
        assert_eq!(ice[2].urls, ["turns:turn.example.org:5349?transport=tcp"]);
        let user = ice[2].username.clone().expect("a username");
        let (expiry, peer) = user.split_once(':').expect("expiry:peer");
        assert_eq!(peer, hello.peer, "the username names this connection");
        let expiry: u64 = expiry.parse().expect("unix seconds");
        assert!(
            (secs(before) + 600..=secs(after) + 600).contains(&expiry),
            "expiry {expiry} is not now + 600 s"
        );
        let cred = ice[2].credential.as_deref().expect("a credential");
        let tag = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, cred)
            .expect("standard base64");
        ring::hmac::verify(&key, user.as_bytes(), &tag).expect("HMAC-SHA1 of the username");
        usernames.push(user);
    }
    assert_ne!(usernames[0], usernames[1], "each connection its own");
}
