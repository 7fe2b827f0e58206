//! The server's decisions: connected peers, the trees they belong to, and
//! the protocol's requests applied to them, one method per request.
//!
//! Nothing here does I/O, reads the clock or draws random numbers: the time
//! and the tree ids come in as arguments, and each request turns into
//! [`Effects`] that name peers by id (messages to send, a peer to check, a
//! timer to start). The connection layer owns the sockets and their queues
//! and carries the effects out after the lock is released, so a slow socket
//! can never hold up another peer's request, and every rule can be tested
//! without one (the tests at the end of this file).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

mod tokens;
use crate::protocol::{
    Create, Created, ErrorCode, Event, Join, Joined, Parent, PeerRef, ProtocolError, Reach,
    Reclaim, Role, SignalFrom, SignalTo, Stats, TreeClosed,
};
use crate::tree::{Moved, Newcomer, NodeId, Removal, Tree, TreeError};
pub use tokens::TokenKey;

pub(crate) type PeerId = Arc<str>;
pub(crate) type TreeId = Arc<str>;

pub(crate) const REASON_SOURCE_LEFT: &str = "source-left";
pub(crate) const REASON_TREE_FULL: &str = "tree-full";

struct PeerEntry {
    member: Option<Membership>,
    stats: Option<Stats>,
}

#[derive(Clone)]
struct Membership {
    tree: TreeId,
    node: NodeId,
    role: Role,
}

struct TreeEntry {
    tree: Tree<PeerId>,
    /// False from the source's death until it reclaims or the grace ends.
    source_connected: bool,
    /// Bumped whenever a grace period starts or ends, so a stale timer that
    /// wakes after a reclaim knows it has nothing to do.
    epoch: u64,
}

/// What a request caused, to be carried out once the lock is released.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Events to send, in order, each to a connected peer.
    pub out: Vec<(PeerId, Event)>,
    /// Start a grace timer for this tree at this epoch; when it fires, call
    /// [`Registry::grace_expired`] with both.
    pub grace: Option<(TreeId, u64)>,
    pub joins: u64,
}

impl Effects {
    fn send(&mut self, to: &PeerId, ev: Event) {
        self.out.push((to.clone(), ev));
    }
}

/// What `reconnect` caused. The old parent is to be checked whether or not
/// the move succeeded: a child asks because its parent went silent (or for
/// no reason the server can know), and a frozen parent must go within a
/// second even when no other slot is free and the request fails.
pub(crate) struct Reconnected {
    /// Ask this peer to prove it is alive; if it does not, disconnect it.
    pub check: Option<PeerId>,
    pub result: Result<Effects, ProtocolError>,
}

/// The protocol's caps and the key tokens are signed with: what the rules
/// need of the server's configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub k: u32,
    pub k1: u32,
    pub grace: Duration,
    pub token_key: TokenKey,
}

/// Where tree ids come from: random in the server, a counter in tests.
pub(crate) type TreeIds = Box<dyn FnMut() -> String + Send>;

pub(crate) struct Registry {
    settings: Settings,
    peers: HashMap<PeerId, PeerEntry>,
    trees: HashMap<TreeId, TreeEntry>,
    /// A restart is every source dying at once: for one grace period after
    /// it, a source may reclaim a tree this process never saw.
    started: Instant,
    tree_ids: TreeIds,
}

/// Counts for `/metrics`, read under the lock in one pass.
pub(crate) struct Gauges {
    pub connections: usize,
    pub peers_in_trees: usize,
    pub trees: usize,
    pub max_depth: u32,
}

impl Registry {
    /// `started`: when this server started, for the reclaim of trees it
    /// never saw (rule 6).
    pub(super) fn new(settings: Settings, started: Instant, tree_ids: TreeIds) -> Self {
        Registry {
            settings,
            peers: HashMap::new(),
            trees: HashMap::new(),
            started,
            tree_ids,
        }
    }

    pub(super) fn connect(&mut self, peer: PeerId) {
        self.peers.insert(
            peer,
            PeerEntry {
                member: None,
                stats: None,
            },
        );
    }

    /// The connection is gone (closed, failed, or stopped answering pings):
    /// exactly the effects of a `leave`, except that a source's tree waits
    /// for a reclaim instead of closing at once (rule 6).
    pub(super) fn disconnect(&mut self, peer: &PeerId) -> Effects {
        let mut fx = Effects::default();
        let Some(entry) = self.peers.remove(peer) else {
            return fx;
        };
        if let Some(m) = entry.member {
            self.detach(peer, &m, true, &mut fx);
        }
        fx
    }

    pub(super) fn gauges(&self) -> Gauges {
        Gauges {
            connections: self.peers.len(),
            peers_in_trees: self.trees.values().map(|t| t.tree.len()).sum(),
            trees: self.trees.len(),
            max_depth: self
                .trees
                .values()
                .map(|t| t.tree.max_depth())
                .max()
                .unwrap_or(0),
        }
    }

    /// The membership of `peer`, which must be connected. Every request
    /// method starts here; a failed request changes nothing (rule 7).
    fn member(&self, peer: &PeerId, re: &'static str) -> Result<Option<Membership>, ProtocolError> {
        match self.peers.get(peer) {
            Some(entry) => Ok(entry.member.clone()),
            // The connection layer only asks between connect and
            // disconnect; treat a race as "not in tree" rather than panic.
            None => Err(ProtocolError::new(
                ErrorCode::NotInTree,
                "connection is closing",
                Some(re),
            )),
        }
    }

    /// The membership of `peer`, which must be in a tree.
    fn in_tree(&self, peer: &PeerId, re: &'static str) -> Result<Membership, ProtocolError> {
        self.member(peer, re)?
            .ok_or_else(|| ProtocolError::new(ErrorCode::NotInTree, "join a tree first", Some(re)))
    }

    fn not_in_tree(&self, peer: &PeerId, re: &'static str) -> Result<(), ProtocolError> {
        match self.member(peer, re)? {
            Some(_) => Err(ProtocolError::new(
                ErrorCode::AlreadyInTree,
                "leave your tree first",
                Some(re),
            )),
            None => Ok(()),
        }
    }

    /// `create`: a new tree with `peer` as its source.
    pub(super) fn create(&mut self, peer: &PeerId, c: Create) -> Result<Effects, ProtocolError> {
        self.not_in_tree(peer, "create")?;
        let mut fx = Effects::default();
        let tree_id: TreeId = (self.tree_ids)().into();
        self.new_tree(peer, tree_id, c.k, &mut fx);
        Ok(fx)
    }

    /// `join`: placement by rules 3, 4 and 8.
    pub(super) fn join(&mut self, peer: &PeerId, j: Join) -> Result<Effects, ProtocolError> {
        let re = Some("join");
        let err = |code, msg: &str| ProtocolError::new(code, msg, re);
        self.not_in_tree(peer, "join")?;
        let k = self.settings.k;
        let Some((tree_id, t)) = self.tree_mut(&j.tree) else {
            return Err(err(ErrorCode::NoSuchTree, "no tree with that id"));
        };
        let role = j.role.unwrap_or_default();
        if role == Role::Source {
            return Err(err(
                ErrorCode::BadRequest,
                "role must be relay, browser or peer",
            ));
        }
        let who = Newcomer {
            capacity: j.k.unwrap_or(k).min(k),
            relay: role == Role::Relay,
            relayed: j.relayed.unwrap_or(false),
        };
        let joined = t
            .tree
            .join_as(peer.clone(), who)
            .map_err(|e| tree_error(e, re))?;
        let parent_peer = t.tree.peer(joined.parent).cloned();
        let adopted_peer = joined.adopted.and_then(|n| t.tree.peer(n).cloned());
        let parent_peer = parent_peer.unwrap_or_else(|| peer.clone());
        self.set_member(peer, tree_id.clone(), joined.node, role);
        let mut fx = Effects::default();
        fx.joins += 1;
        // Rule 4's order: old parent hears child-gone then child; the
        // relay hears joined then child; the leaf hears parent.
        if let Some(leaf) = &adopted_peer {
            self.send_to(&parent_peer, child_gone(leaf), &mut fx);
        }
        self.send_to(&parent_peer, child(peer), &mut fx);
        fx.send(
            peer,
            Event::Joined(Joined {
                tree: tree_id.to_string(),
                parent: parent_peer.to_string(),
                depth: joined.depth,
            }),
        );
        if let Some(leaf) = &adopted_peer {
            fx.send(peer, child(leaf));
            self.send_to(leaf, parent_event(peer, joined.depth + 1), &mut fx);
        }
        Ok(fx)
    }

    /// `signal`: forwarded only between a parent and its child (rule 2).
    pub(super) fn signal(&mut self, peer: &PeerId, s: SignalTo) -> Result<Effects, ProtocolError> {
        let m = self.in_tree(peer, "signal")?;
        let neighbour = self
            .peers
            .get_key_value(s.to.as_str())
            .and_then(|(id, to)| {
                let tm = to.member.as_ref()?;
                let t = self.trees.get(&m.tree)?;
                let adjacent = tm.tree == m.tree
                    && (t.tree.parent(m.node) == Some(tm.node)
                        || t.tree.parent(tm.node) == Some(m.node));
                adjacent.then(|| id.clone())
            });
        let Some(to) = neighbour else {
            return Err(ProtocolError::new(
                ErrorCode::NotANeighbour,
                "signal goes only to your parent or your children",
                Some("signal"),
            ));
        };
        let mut fx = Effects::default();
        fx.send(
            &to,
            Event::Signal(SignalFrom {
                from: peer.to_string(),
                data: s.data,
            }),
        );
        Ok(fx)
    }

    /// `reconnect`: `peer` moves, with its subtree, to another parent, and
    /// its old parent is checked (see [`Reconnected`]).
    pub(super) fn reconnect(&mut self, peer: &PeerId) -> Reconnected {
        let re = Some("reconnect");
        let m = match self.in_tree(peer, "reconnect") {
            Ok(m) => m,
            Err(e) => {
                return Reconnected {
                    check: None,
                    result: Err(e),
                }
            }
        };
        let Some(t) = self.trees.get_mut(&m.tree) else {
            return Reconnected {
                check: None,
                result: Err(ProtocolError::new(
                    ErrorCode::NotInTree,
                    "join a tree first",
                    re,
                )),
            };
        };
        if m.node == t.tree.root() {
            return Reconnected {
                check: None,
                result: Err(ProtocolError::new(
                    ErrorCode::BadRequest,
                    "the source has no upstream",
                    re,
                )),
            };
        }
        let old_parent = t.tree.parent(m.node).and_then(|p| t.tree.peer(p).cloned());
        let check = old_parent
            .clone()
            .filter(|p| self.peers.contains_key(p.as_ref()));
        let result = match t.tree.reconnect(m.node) {
            Err(e) => Err(tree_error(e, re)),
            Ok(moved) => {
                let mut fx = Effects::default();
                if let Some(old) = old_parent {
                    self.send_to(&old, child_gone(peer), &mut fx);
                }
                self.announce_move(&m.tree, &moved, &mut fx);
                Ok(fx)
            }
        };
        Reconnected { check, result }
    }

    /// `leave`: as a death (rule 5), except that a source's tree closes at
    /// once.
    pub(super) fn leave(&mut self, peer: &PeerId) -> Result<Effects, ProtocolError> {
        let Some(m) = self.member(peer, "leave")? else {
            return Err(ProtocolError::new(
                ErrorCode::NotInTree,
                "not in a tree",
                Some("leave"),
            ));
        };
        let mut fx = Effects::default();
        self.detach(peer, &m, false, &mut fx);
        fx.send(peer, Event::Left);
        Ok(fx)
    }

    /// `stats`: kept for `/api/trees`; never refused.
    pub(super) fn stats(&mut self, peer: &PeerId, mut s: Stats) -> Effects {
        s.trim_extra();
        if let Some(e) = self.peers.get_mut(peer) {
            e.stats = Some(s);
        }
        Effects::default()
    }

    /// `reach` (rule 8).
    pub(super) fn reach(&mut self, peer: &PeerId, r: Reach) -> Result<Effects, ProtocolError> {
        let m = self.in_tree(peer, "reach")?;
        let mut fx = Effects::default();
        self.set_reach(peer, &m, r.relayed, &mut fx)?;
        Ok(fx)
    }

    /// Rule 8: a member reachable only through TURN keeps its place but
    /// gives up its children, which go as if it had left (rule 5).
    fn set_reach(
        &mut self,
        peer: &PeerId,
        m: &Membership,
        relayed: bool,
        fx: &mut Effects,
    ) -> Result<(), ProtocolError> {
        let re = Some("reach");
        let Some(t) = self.trees.get_mut(&m.tree) else {
            return Err(ProtocolError::new(
                ErrorCode::NotInTree,
                "join a tree first",
                re,
            ));
        };
        if relayed && m.node == t.tree.root() {
            return Err(ProtocolError::new(
                ErrorCode::BadRequest,
                "the source must be directly reachable: every member's media comes \
                 through it, so it cannot be reached only through a TURN relay",
                re,
            ));
        }
        // Only becoming relayed takes children away; becoming reachable
        // again leaves the member's children where they are.
        let former: Vec<PeerId> = if relayed {
            t.tree
                .children(m.node)
                .iter()
                .filter_map(|c| t.tree.peer(*c).cloned())
                .collect()
        } else {
            Vec::new()
        };
        let removal = t
            .tree
            .set_relayed(m.node, relayed)
            .map_err(|e| tree_error(e, re))?;
        for c in &former {
            self.send_to(peer, child_gone(c), fx);
        }
        self.announce_removal(&m.tree, removal, fx);
        Ok(())
    }

    /// `reclaim` (rule 6), at `now`.
    pub(super) fn reclaim(
        &mut self,
        peer: &PeerId,
        r: Reclaim,
        now: Instant,
    ) -> Result<Effects, ProtocolError> {
        let re = Some("reclaim");
        let member = self.member(peer, "reclaim")?;
        let mut fx = Effects::default();
        let gone = || {
            ProtocolError::new(
                ErrorCode::NoSuchTree,
                "no tree with that id (closed, or the grace period ended)",
                re,
            )
        };
        let known = self.trees.contains_key(r.tree.as_str());
        if !self.settings.token_key.verify(&r.tree, &r.token) {
            // An unknown tree with a token this key did not sign is simply
            // unknown: the answer must not tell a guesser more.
            return Err(if known {
                ProtocolError::new(ErrorCode::BadToken, "wrong token for this tree", re)
            } else {
                gone()
            });
        }
        if member.is_some() {
            return Err(ProtocolError::new(
                ErrorCode::AlreadyInTree,
                "leave your tree first",
                re,
            ));
        }
        if !known {
            if now.saturating_duration_since(self.started) > self.settings.grace {
                return Err(gone());
            }
            // The token is ours but the tree is not: this server restarted
            // (with the same --secret-file) and the source comes back first.
            // Its members rejoin by themselves.
            let tree_id: TreeId = r.tree.as_str().into();
            self.new_tree(peer, tree_id, r.k, &mut fx);
            return Ok(fx);
        }
        let token = self.settings.token_key.token(&r.tree);
        let Some((tree_id, t)) = self.tree_mut(&r.tree) else {
            return Err(gone());
        };
        let root = t.tree.root();
        let old = t.tree.peer(root).cloned();
        // A live old connection (a source that reconnected before its old
        // socket was noticed dead) simply loses the tree to the new one.
        let _ = t.tree.set_peer(root, peer.clone());
        t.source_connected = true;
        t.epoch += 1;
        let children: Vec<PeerId> = t
            .tree
            .children(root)
            .iter()
            .filter_map(|c| t.tree.peer(*c).cloned())
            .collect();
        if let Some(old) = old.filter(|o| o != peer) {
            if let Some(e) = self.peers.get_mut(&old) {
                e.member = None;
                fx.send(&old, Event::Left);
            }
        }
        self.set_member(peer, tree_id.clone(), root, Role::Source);
        fx.send(
            peer,
            Event::Created(Created {
                tree: tree_id.to_string(),
                token,
            }),
        );
        for c in &children {
            fx.send(peer, child(c));
            self.send_to(c, parent_event(peer, 1), &mut fx);
        }
        Ok(fx)
    }

    /// A tree with `peer` as its source, and `created` for it.
    fn new_tree(&mut self, peer: &PeerId, tree_id: TreeId, k: Option<u32>, fx: &mut Effects) {
        let k1 = self.settings.k1;
        let k = k.unwrap_or(k1).min(k1);
        let tree = Tree::new(peer.clone(), k);
        let root = tree.root();
        let token = self.settings.token_key.token(&tree_id);
        self.trees.insert(
            tree_id.clone(),
            TreeEntry {
                tree,
                source_connected: true,
                epoch: 0,
            },
        );
        self.set_member(peer, tree_id.clone(), root, Role::Source);
        fx.send(
            peer,
            Event::Created(Created {
                tree: tree_id.to_string(),
                token,
            }),
        );
    }

    /// Takes `peer` out of its tree. A source that leaves closes the tree at
    /// once; a source that died leaves it waiting for a reclaim.
    fn detach(&mut self, peer: &PeerId, m: &Membership, died: bool, fx: &mut Effects) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.member = None;
        }
        let Some(t) = self.trees.get_mut(&m.tree) else {
            return;
        };
        if m.node == t.tree.root() {
            if died {
                t.source_connected = false;
                t.epoch += 1;
                fx.grace = Some((m.tree.clone(), t.epoch));
            } else {
                self.close_tree(&m.tree, fx);
            }
            return;
        }
        let parent = t.tree.parent(m.node).and_then(|p| t.tree.peer(p).cloned());
        let Ok(removal) = t.tree.remove(m.node) else {
            return;
        };
        if let Some(p) = parent {
            self.send_to(&p, child_gone(peer), fx);
        }
        self.announce_removal(&m.tree, removal, fx);
    }

    /// Rule 5's messages: each re-placed child hears `parent` (its new parent
    /// `child`), and each child that fit nowhere is out of the tree.
    fn announce_removal(&mut self, tree: &TreeId, removal: Removal<PeerId>, fx: &mut Effects) {
        for moved in &removal.moved {
            self.announce_move(tree, moved, fx);
        }
        for (_, evicted) in removal.evicted {
            if let Some(e) = self.peers.get_mut(&evicted) {
                e.member = None;
                fx.send(
                    &evicted,
                    Event::TreeClosed(TreeClosed {
                        tree: tree.to_string(),
                        reason: REASON_TREE_FULL.into(),
                    }),
                );
            }
        }
    }

    /// The moved node hears `parent`, its new parent hears `child`.
    fn announce_move(&self, tree: &TreeId, moved: &Moved, fx: &mut Effects) {
        let Some(t) = self.trees.get(tree) else {
            return;
        };
        let (Some(node), Some(parent)) = (t.tree.peer(moved.node), t.tree.peer(moved.parent))
        else {
            return;
        };
        self.send_to(parent, child(node), fx);
        self.send_to(node, parent_event(parent, moved.depth), fx);
    }

    /// Called by the grace timer: closes the tree if its source never came back.
    pub(super) fn grace_expired(&mut self, tree: &TreeId, epoch: u64) -> Effects {
        let mut fx = Effects::default();
        if let Some(t) = self.trees.get(tree) {
            if !t.source_connected && t.epoch == epoch {
                self.close_tree(tree, &mut fx);
            }
        }
        fx
    }

    fn close_tree(&mut self, tree: &TreeId, fx: &mut Effects) {
        let Some(t) = self.trees.remove(tree) else {
            return;
        };
        let root = t.tree.root();
        for n in t.tree.iter() {
            let Some(p) = t.tree.peer(n) else { continue };
            let Some(e) = self.peers.get_mut(p) else {
                continue;
            };
            e.member = None;
            // A source that left is answered `left` by its own request.
            if n == root {
                continue;
            }
            fx.send(
                p,
                Event::TreeClosed(TreeClosed {
                    tree: tree.to_string(),
                    reason: REASON_SOURCE_LEFT.into(),
                }),
            );
        }
    }

    /// The tree with this id, and its shared id to store in memberships.
    fn tree_mut(&mut self, id: &str) -> Option<(TreeId, &mut TreeEntry)> {
        let (key, _) = self.trees.get_key_value(id)?;
        let key = key.clone();
        let t = self.trees.get_mut(id)?;
        Some((key, t))
    }

    fn set_member(&mut self, peer: &PeerId, tree: TreeId, node: NodeId, role: Role) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.member = Some(Membership { tree, node, role });
        }
    }

    /// Queues `ev` for `peer` if it is still connected (a tree keeps a dead
    /// source's place during the grace period).
    fn send_to(&self, peer: &PeerId, ev: Event, fx: &mut Effects) {
        if self.peers.contains_key(peer) {
            fx.send(peer, ev);
        }
    }

    /// `/api/trees/{id}`: every node with its parent, depth, role, k,
    /// children and, when only TURN reaches it, `relayed`.
    pub(super) fn snapshot(&self, tree: &str) -> Option<TreeSnapshot> {
        let (id, t) = self.trees.get_key_value(tree)?;
        let root = t.tree.root();
        let mut nodes = Vec::with_capacity(t.tree.len());
        // Depths by one walk down from the root rather than a walk up per node.
        let mut stack = vec![(root, 0u32)];
        while let Some((n, depth)) = stack.pop() {
            let Some(peer) = t.tree.peer(n) else { continue };
            let children = t.tree.children(n);
            stack.extend(children.iter().map(|c| (*c, depth + 1)));
            let entry = self.peers.get(peer);
            let role = entry
                .and_then(|e| e.member.as_ref())
                .map(|m| m.role)
                .unwrap_or(if n == root { Role::Source } else { Role::Peer });
            nodes.push(NodeSnapshot {
                peer: peer.to_string(),
                parent: t
                    .tree
                    .parent(n)
                    .and_then(|p| t.tree.peer(p))
                    .map(|p| p.to_string()),
                depth,
                role: role.as_str(),
                k: t.tree.capacity(n).unwrap_or(0),
                relayed: t.tree.is_relayed(n),
                children: children
                    .iter()
                    .filter_map(|c| t.tree.peer(*c).map(|p| p.to_string()))
                    .collect(),
                connected: entry.is_some(),
                stats: entry.and_then(|e| e.stats.clone()),
            });
        }
        Some(TreeSnapshot {
            tree: id.to_string(),
            source_connected: t.source_connected,
            size: t.tree.len(),
            max_depth: t.tree.max_depth(),
            nodes,
        })
    }
}

#[derive(Serialize)]
pub(crate) struct TreeSnapshot {
    pub tree: String,
    pub source_connected: bool,
    pub size: usize,
    pub max_depth: u32,
    pub nodes: Vec<NodeSnapshot>,
}

#[derive(Serialize)]
pub(crate) struct NodeSnapshot {
    pub peer: String,
    pub parent: Option<String>,
    pub depth: u32,
    pub role: &'static str,
    /// The member's own k, kept while it is relayed (and then unused).
    pub k: u32,
    /// Rule 8; absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub relayed: bool,
    pub children: Vec<String>,
    pub connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

fn tree_error(e: TreeError, re: Option<&'static str>) -> ProtocolError {
    match e {
        TreeError::TreeFull => ProtocolError::new(
            ErrorCode::TreeFull,
            "no free slot in this tree; try again later or join another",
            re,
        ),
        other => ProtocolError::new(ErrorCode::NotInTree, other.to_string(), re),
    }
}

fn child(peer: &PeerId) -> Event {
    Event::Child(PeerRef {
        peer: peer.to_string(),
    })
}

fn child_gone(peer: &PeerId) -> Event {
    Event::ChildGone(PeerRef {
        peer: peer.to_string(),
    })
}

fn parent_event(parent: &PeerId, depth: u32) -> Event {
    Event::Parent(Parent {
        parent: parent.to_string(),
        depth,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    const GRACE: Duration = Duration::from_secs(15);

    /// A registry with caps `k` and `k1` and tree ids t1, t2, ...
    fn registry(k: u32, k1: u32, key: &TokenKey, started: Instant) -> Registry {
        let mut n = 0;
        let ids: TreeIds = Box::new(move || {
            n += 1;
            format!("t{n}")
        });
        let settings = Settings {
            k,
            k1,
            grace: GRACE,
            token_key: key.clone(),
        };
        Registry::new(settings, started, ids)
    }

    fn connect(reg: &mut Registry, name: &str) -> PeerId {
        let p: PeerId = name.into();
        reg.connect(p.clone());
        p
    }

    fn create(reg: &mut Registry, src: &PeerId) -> String {
        let fx = reg.create(src, Create { k: None }).expect("create");
        match &fx.out[..] {
            [(to, Event::Created(c))] if to == src => c.tree.clone(),
            other => panic!("create sent {other:?}"),
        }
    }

    fn join(reg: &mut Registry, p: &PeerId, tree: &str) -> Result<Effects, ProtocolError> {
        let j = Join {
            tree: tree.to_owned(),
            k: None,
            role: None,
            relayed: None,
        };
        reg.join(p, j)
    }

    /// A registry with caps `k` and `k1`, source `s`'s tree, and `members`
    /// joined in order: the registry, the source and the tree id.
    fn tree_of(k: u32, k1: u32, members: &[&str]) -> (Registry, PeerId, String) {
        let mut reg = registry(k, k1, &TokenKey::random(), Instant::now());
        let s = connect(&mut reg, "s");
        let tree = create(&mut reg, &s);
        for name in members {
            let p = connect(&mut reg, name);
            join(&mut reg, &p, &tree).expect("join");
        }
        (reg, s, tree)
    }

    /// `peer`'s parent and depth as `/api/trees` shows them.
    fn place(reg: &Registry, tree: &str, peer: &str) -> (Option<String>, u32) {
        let snap = reg.snapshot(tree).expect("tree");
        let n = snap.nodes.iter().find(|n| n.peer == peer).expect("member");
        (n.parent.clone(), n.depth)
    }

    /// The events for `to`, as JSON, in order.
    fn to(fx: &Effects, to: &str) -> Vec<String> {
        fx.out
            .iter()
            .filter(|(p, _)| &**p == to)
            .map(|(_, e)| e.to_json())
            .collect()
    }

    fn ev(json: &str) -> String {
        json.replace('\'', "\"")
    }

    #[test]
    fn joins_fill_the_shallowest_free_slot_breadth_first_and_caps_k() {
        let key = TokenKey::random();
        let mut reg = registry(2, 2, &key, Instant::now());
        let s = connect(&mut reg, "s");
        let tree = create(&mut reg, &s);
        assert_eq!(tree, "t1", "tree ids come from the id source");
        let mut peers = Vec::new();
        for name in ["a", "b", "c", "d", "e", "f", "g"] {
            let p = connect(&mut reg, name);
            let fx = if name == "a" {
                // Asks for 10 children; the server's k of 2 caps it.
                let j = Join {
                    tree: tree.clone(),
                    k: Some(10),
                    role: None,
                    relayed: None,
                };
                reg.join(&p, j).expect("join")
            } else {
                join(&mut reg, &p, &tree).expect("join")
            };
            assert_eq!(fx.joins, 1);
            peers.push((p, fx));
        }
        let expect = [
            ("a", "s", 1),
            ("b", "s", 1),
            ("c", "a", 2),
            ("d", "a", 2),
            ("e", "b", 2),
            ("f", "b", 2),
            ("g", "c", 3),
        ];
        for ((p, fx), (name, parent, depth)) in peers.iter().zip(expect) {
            assert_eq!(place(&reg, &tree, name), (Some(parent.into()), depth));
            assert_eq!(
                to(fx, name),
                [ev(&format!(
                    "{{'type':'joined','tree':'t1','parent':'{parent}','depth':{depth}}}"
                ))]
            );
            assert_eq!(
                to(fx, parent),
                [ev(&format!("{{'type':'child','peer':'{p}'}}"))]
            );
        }
    }

    /// s - {a, b}, a - {c, d}, b - {e, f}, c - g: a dies.
    #[test]
    fn a_dead_parents_children_are_re_placed_with_their_subtrees() {
        let (mut reg, _, tree) = tree_of(2, 2, &["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(place(&reg, &tree, "g"), (Some("c".into()), 3));
        let fx = reg.disconnect(&"a".into());
        // c takes a's slot under s, with g; d goes to the shallowest free
        // slot left, c's second one.
        assert_eq!(
            to(&fx, "s"),
            [
                ev("{'type':'child-gone','peer':'a'}"),
                ev("{'type':'child','peer':'c'}")
            ]
        );
        assert_eq!(
            to(&fx, "c"),
            [
                ev("{'type':'parent','parent':'s','depth':1}"),
                ev("{'type':'child','peer':'d'}")
            ]
        );
        assert_eq!(
            to(&fx, "d"),
            [ev("{'type':'parent','parent':'c','depth':2}")]
        );
        assert!(to(&fx, "g").is_empty(), "g keeps its parent c");
        assert_eq!(place(&reg, &tree, "g"), (Some("c".into()), 2));
        assert!(fx.grace.is_none());
    }

    /// A chain s - a - b with k = 1: b has nowhere else to go.
    #[test]
    fn reconnect_when_the_tree_is_full_fails_but_still_checks_the_parent() {
        let (mut reg, s, tree) = tree_of(1, 1, &["a", "b"]);
        let (a, b): (PeerId, PeerId) = ("a".into(), "b".into());
        let r = reg.reconnect(&b);
        assert_eq!(
            r.check.as_deref(),
            Some("a"),
            "the silent parent is checked"
        );
        let e = r.result.expect_err("no other slot");
        assert_eq!(e.code, ErrorCode::TreeFull);
        assert_eq!(
            place(&reg, &tree, "b"),
            (Some("a".into()), 2),
            "nothing moved"
        );
        // The check goes unanswered: a is removed as if it had died, and b
        // takes its place.
        let fx = reg.disconnect(&a);
        assert_eq!(
            to(&fx, "b"),
            [ev("{'type':'parent','parent':'s','depth':1}")]
        );
        assert_eq!(place(&reg, &tree, "b"), (Some("s".into()), 1));
        // The source has no parent to check or leave.
        let r = reg.reconnect(&s);
        assert!(r.check.is_none());
        assert_eq!(r.result.expect_err("source").code, ErrorCode::BadRequest);
    }

    #[test]
    fn reconnect_moves_the_member_with_its_subtree_and_checks_the_old_parent() {
        let (mut reg, _, tree) = tree_of(1, 2, &["a", "b", "c"]);
        // s - {a, b}, a - c; s is full, b has a free slot.
        assert_eq!(place(&reg, &tree, "c"), (Some("a".into()), 2));
        let r = reg.reconnect(&"c".into());
        assert_eq!(r.check.as_deref(), Some("a"));
        let fx = r.result.expect("moved");
        assert_eq!(to(&fx, "a"), [ev("{'type':'child-gone','peer':'c'}")]);
        assert_eq!(to(&fx, "b"), [ev("{'type':'child','peer':'c'}")]);
        assert_eq!(
            to(&fx, "c"),
            [ev("{'type':'parent','parent':'b','depth':2}")]
        );
    }

    #[test]
    fn a_dead_source_waits_for_reclaim_and_a_stale_grace_timer_does_nothing() {
        let key = TokenKey::random();
        let t0 = Instant::now();
        let mut reg = registry(2, 2, &key, t0);
        let s = connect(&mut reg, "s");
        let tree = create(&mut reg, &s);
        let a = connect(&mut reg, "a");
        join(&mut reg, &a, &tree).expect("join");
        let fx = reg.disconnect(&s);
        let (grace_tree, epoch) = fx.grace.clone().expect("grace timer");
        assert_eq!(&*grace_tree, "t1");
        assert!(fx.out.is_empty(), "members hear nothing yet");

        let s2 = connect(&mut reg, "s2");
        let token = key.token(&tree);
        let fx = reg
            .reclaim(
                &s2,
                Reclaim {
                    tree: tree.clone(),
                    token,
                    k: None,
                },
                t0,
            )
            .expect("reclaim");
        assert_eq!(
            to(&fx, "s2")[1..],
            [ev("{'type':'child','peer':'a'}")],
            "created, then a child for each child"
        );
        assert_eq!(
            to(&fx, "a"),
            [ev("{'type':'parent','parent':'s2','depth':1}")]
        );
        let fx = reg.grace_expired(&grace_tree, epoch);
        assert!(
            fx.out.is_empty(),
            "the timer from before the reclaim is stale"
        );
        assert!(reg.snapshot(&tree).is_some());

        // The new source dies too and this time nobody comes back.
        let fx = reg.disconnect(&s2);
        let (_, second) = fx.grace.expect("grace timer");
        let fx = reg.grace_expired(&grace_tree, epoch);
        assert!(
            fx.out.is_empty(),
            "the first timer still belongs to the first death"
        );
        assert!(reg.snapshot(&tree).is_some());
        let fx = reg.grace_expired(&grace_tree, second);
        assert_eq!(
            to(&fx, "a"),
            [ev(
                "{'type':'tree-closed','tree':'t1','reason':'source-left'}"
            )]
        );
        assert!(reg.snapshot(&tree).is_none());
    }

    #[test]
    fn after_a_restart_a_signed_token_re_creates_its_tree_within_the_grace_only() {
        let key = TokenKey::random();
        let t0 = Instant::now();
        let reclaim = |reg: &mut Registry, p: &PeerId, tree: &str, at: Instant| {
            let token = key.token(tree);
            let r = Reclaim {
                tree: tree.into(),
                token,
                k: None,
            };
            reg.reclaim(p, r, at)
        };
        let mut reg = registry(2, 2, &key, t0);
        let s = connect(&mut reg, "s");
        let fx = reclaim(
            &mut reg,
            &s,
            "old-tree",
            t0 + GRACE - Duration::from_secs(1),
        )
        .expect("within the grace");
        assert!(to(&fx, "s")[0].contains("\"tree\":\"old-tree\""));

        let mut reg = registry(2, 2, &key, t0);
        let s = connect(&mut reg, "s");
        let e = reclaim(
            &mut reg,
            &s,
            "old-tree",
            t0 + GRACE + Duration::from_secs(1),
        )
        .expect_err("after the grace");
        assert_eq!(e.code, ErrorCode::NoSuchTree);
        let forged = Reclaim {
            tree: "old-tree".into(),
            token: "forged".into(),
            k: None,
        };
        let e = reg.reclaim(&s, forged, t0).expect_err("unsigned");
        assert_eq!(
            e.code,
            ErrorCode::NoSuchTree,
            "an unknown tree stays unknown"
        );
    }

    #[test]
    fn signal_goes_only_between_parent_and_child() {
        let (mut reg, _, _) = tree_of(2, 2, &["a", "b"]);
        let a: PeerId = "a".into();
        let data = || serde_json::value::RawValue::from_string("{}".into()).expect("json");
        let fx = reg
            .signal(
                &a,
                SignalTo {
                    to: "s".into(),
                    data: data(),
                },
            )
            .expect("to the parent");
        assert_eq!(to(&fx, "s"), [ev("{'type':'signal','from':'a','data':{}}")]);
        let e = reg
            .signal(
                &a,
                SignalTo {
                    to: "b".into(),
                    data: data(),
                },
            )
            .expect_err("a sibling");
        assert_eq!(e.code, ErrorCode::NotANeighbour);
    }

    #[test]
    fn a_member_that_becomes_relayed_gives_up_its_children_but_not_its_place() {
        let (mut reg, s, tree) = tree_of(2, 1, &["a", "b", "c"]);
        // s - a - {b, c}: once a is relayed, b and c fit nowhere.
        let fx = reg
            .reach(&"a".into(), Reach { relayed: true })
            .expect("reach");
        assert_eq!(
            to(&fx, "a"),
            [
                ev("{'type':'child-gone','peer':'b'}"),
                ev("{'type':'child-gone','peer':'c'}")
            ]
        );
        assert_eq!(
            to(&fx, "b"),
            [ev(
                "{'type':'tree-closed','tree':'t1','reason':'tree-full'}"
            )]
        );
        assert_eq!(place(&reg, &tree, "a"), (Some("s".into()), 1));
        let e = reg.reach(&s, Reach { relayed: true }).expect_err("source");
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
