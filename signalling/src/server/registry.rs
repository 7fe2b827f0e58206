//! The server's state: connected peers and the trees they belong to, and the
//! protocol's requests applied to them.
//!
//! Everything here runs under one mutex and does no I/O: each request turns
//! into [`Effects`] (messages to queue and timers to start) that the caller
//! carries out after the lock is released, so a slow socket can never hold up
//! another peer's request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{new_id, Outbox, ServerConfig};

mod tokens;
use crate::protocol::{
    Created, ErrorCode, Event, Joined, Parent, PeerRef, ProtocolError, Reclaim, Request, Role,
    SignalFrom, Stats, TreeClosed,
};
use crate::tree::{Moved, Newcomer, NodeId, Removal, Tree, TreeError};
pub use tokens::TokenKey;

pub(crate) type PeerId = Arc<str>;
pub(crate) type TreeId = Arc<str>;

pub(crate) const REASON_SOURCE_LEFT: &str = "source-left";
pub(crate) const REASON_TREE_FULL: &str = "tree-full";

struct PeerEntry {
    outbox: Outbox,
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
#[derive(Default)]
pub(crate) struct Effects {
    pub out: Vec<(Outbox, Event)>,
    /// Start a grace timer for this tree at this epoch.
    pub grace: Option<(TreeId, u64)>,
    pub joins: u64,
}

impl Effects {
    fn send(&mut self, to: &Outbox, ev: Event) {
        self.out.push((to.clone(), ev));
    }
}

pub(crate) struct Registry {
    peers: HashMap<PeerId, PeerEntry>,
    trees: HashMap<TreeId, TreeEntry>,
    /// A restart is every source dying at once: for one grace period after
    /// it, a source may reclaim a tree this process never saw.
    started: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            peers: HashMap::new(),
            trees: HashMap::new(),
            started: Instant::now(),
        }
    }
}

/// Counts for `/metrics`, read under the lock in one pass.
pub(crate) struct Gauges {
    pub connections: usize,
    pub peers_in_trees: usize,
    pub trees: usize,
    pub max_depth: u32,
}

impl Registry {
    pub fn connect(&mut self, peer: PeerId, outbox: Outbox) {
        self.peers.insert(
            peer,
            PeerEntry {
                outbox,
                member: None,
                stats: None,
            },
        );
    }

    /// The connection is gone (closed, failed, or stopped answering pings):
    /// exactly the effects of a `leave`, except that a source's tree waits
    /// for a reclaim instead of closing at once (rule 6).
    pub fn disconnect(&mut self, peer: &PeerId) -> Effects {
        let mut fx = Effects::default();
        let Some(entry) = self.peers.remove(peer) else {
            return fx;
        };
        if let Some(m) = entry.member {
            self.detach(peer, &m, true, &mut fx);
        }
        fx
    }

    pub fn gauges(&self) -> Gauges {
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

    /// Applies one request from `peer`. Errors leave the registry unchanged
    /// (rule 7); the caller sends them back.
    pub fn handle(
        &mut self,
        cfg: &ServerConfig,
        peer: &PeerId,
        req: Request,
    ) -> Result<Effects, ProtocolError> {
        let re = Some(req.type_name());
        let err = |code, msg: &str| ProtocolError::new(code, msg, re);
        let Some(entry) = self.peers.get(peer) else {
            // The connection task only calls this between connect and
            // disconnect; treat a race as "not in tree" rather than panic.
            return Err(err(ErrorCode::NotInTree, "connection is closing"));
        };
        let me = entry.outbox.clone();
        let member = entry.member.clone();
        let mut fx = Effects::default();
        match req {
            Request::Create(c) => {
                if member.is_some() {
                    return Err(err(ErrorCode::AlreadyInTree, "leave your tree first"));
                }
                let tree_id: TreeId = new_id(16).into();
                self.new_tree(cfg, peer, &me, tree_id, c.k, &mut fx);
            }
            Request::Join(j) => {
                if member.is_some() {
                    return Err(err(ErrorCode::AlreadyInTree, "leave your tree first"));
                }
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
                    capacity: j.k.unwrap_or(cfg.k).min(cfg.k),
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
                fx.joins += 1;
                // Rule 4's order: old parent hears child-gone then child; the
                // relay hears joined then child; the leaf hears parent.
                if let Some(leaf) = &adopted_peer {
                    self.send_to(&parent_peer, child_gone(leaf), &mut fx);
                }
                self.send_to(&parent_peer, child(peer), &mut fx);
                fx.send(
                    &me,
                    Event::Joined(Joined {
                        tree: tree_id.to_string(),
                        parent: parent_peer.to_string(),
                        depth: joined.depth,
                    }),
                );
                if let Some(leaf) = &adopted_peer {
                    fx.send(&me, child(leaf));
                    self.send_to(leaf, parent_event(peer, joined.depth + 1), &mut fx);
                }
            }
            Request::Signal(s) => {
                let Some(m) = member else {
                    return Err(err(ErrorCode::NotInTree, "join a tree first"));
                };
                let neighbour = self.peers.get(s.to.as_str()).and_then(|to| {
                    let tm = to.member.as_ref()?;
                    let t = self.trees.get(&m.tree)?;
                    let adjacent = tm.tree == m.tree
                        && (t.tree.parent(m.node) == Some(tm.node)
                            || t.tree.parent(tm.node) == Some(m.node));
                    adjacent.then(|| to.outbox.clone())
                });
                let Some(to) = neighbour else {
                    return Err(err(
                        ErrorCode::NotANeighbour,
                        "signal goes only to your parent or your children",
                    ));
                };
                fx.send(
                    &to,
                    Event::Signal(SignalFrom {
                        from: peer.to_string(),
                        data: s.data,
                    }),
                );
            }
            Request::Reconnect => {
                let Some(m) = member else {
                    return Err(err(ErrorCode::NotInTree, "join a tree first"));
                };
                let Some(t) = self.trees.get_mut(&m.tree) else {
                    return Err(err(ErrorCode::NotInTree, "join a tree first"));
                };
                if m.node == t.tree.root() {
                    return Err(err(ErrorCode::BadRequest, "the source has no upstream"));
                }
                let old_parent = t.tree.parent(m.node).and_then(|p| t.tree.peer(p).cloned());
                // A child asks because its parent went silent (or for no
                // reason the server can know): check that parent now, so a
                // frozen one goes in a second even when no other slot is
                // free and this request fails.
                if let Some(e) = old_parent.as_ref().and_then(|p| self.peers.get(p)) {
                    e.outbox.probe();
                }
                let moved = t.tree.reconnect(m.node).map_err(|e| tree_error(e, re))?;
                if let Some(old) = old_parent {
                    self.send_to(&old, child_gone(peer), &mut fx);
                }
                self.announce_move(&m.tree, &moved, &mut fx);
            }
            Request::Leave => {
                let Some(m) = member else {
                    return Err(err(ErrorCode::NotInTree, "not in a tree"));
                };
                self.detach(peer, &m, false, &mut fx);
                fx.send(&me, Event::Left);
            }
            Request::Reclaim(r) => self.reclaim(cfg, peer, &me, member, r, &mut fx)?,
            Request::Stats(mut s) => {
                s.trim_extra();
                if let Some(e) = self.peers.get_mut(peer) {
                    e.stats = Some(s);
                }
            }
            Request::Reach(r) => {
                let Some(m) = member else {
                    return Err(err(ErrorCode::NotInTree, "join a tree first"));
                };
                self.reach(peer, &m, r.relayed, &mut fx)?;
            }
        }
        Ok(fx)
    }

    /// Rule 8: a member reachable only through TURN keeps its place but
    /// gives up its children, which go as if it had left (rule 5).
    fn reach(
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

    fn reclaim(
        &mut self,
        cfg: &ServerConfig,
        peer: &PeerId,
        me: &Outbox,
        member: Option<Membership>,
        r: Reclaim,
        fx: &mut Effects,
    ) -> Result<(), ProtocolError> {
        let re = Some("reclaim");
        let gone = || {
            ProtocolError::new(
                ErrorCode::NoSuchTree,
                "no tree with that id (closed, or the grace period ended)",
                re,
            )
        };
        let known = self.trees.contains_key(r.tree.as_str());
        if !cfg.token_key.verify(&r.tree, &r.token) {
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
            if self.started.elapsed() > cfg.grace {
                return Err(gone());
            }
            // The token is ours but the tree is not: this server restarted
            // (with the same --secret-file) and the source comes back first.
            // Its members rejoin by themselves.
            let tree_id: TreeId = r.tree.as_str().into();
            self.new_tree(cfg, peer, me, tree_id, r.k, fx);
            return Ok(());
        }
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
        let token = cfg.token_key.token(&tree_id);
        let children: Vec<PeerId> = t
            .tree
            .children(root)
            .iter()
            .filter_map(|c| t.tree.peer(*c).cloned())
            .collect();
        if let Some(old) = old.filter(|o| o != peer) {
            if let Some(e) = self.peers.get_mut(&old) {
                e.member = None;
                fx.send(&e.outbox, Event::Left);
            }
        }
        self.set_member(peer, tree_id.clone(), root, Role::Source);
        fx.send(
            me,
            Event::Created(Created {
                tree: tree_id.to_string(),
                token,
            }),
        );
        for c in &children {
            fx.send(me, child(c));
            self.send_to(c, parent_event(peer, 1), fx);
        }
        Ok(())
    }

    /// A tree with `peer` as its source, and `created` for it.
    fn new_tree(
        &mut self,
        cfg: &ServerConfig,
        peer: &PeerId,
        me: &Outbox,
        tree_id: TreeId,
        k: Option<u32>,
        fx: &mut Effects,
    ) {
        let k = k.unwrap_or(cfg.k1).min(cfg.k1);
        let tree = Tree::new(peer.clone(), k);
        let root = tree.root();
        let token = cfg.token_key.token(&tree_id);
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
            me,
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
                    &e.outbox,
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
    pub fn grace_expired(&mut self, tree: &TreeId, epoch: u64) -> Effects {
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
                &e.outbox,
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

    fn send_to(&self, peer: &PeerId, ev: Event, fx: &mut Effects) {
        if let Some(e) = self.peers.get(peer) {
            fx.send(&e.outbox, ev);
        }
    }

    /// `/api/trees/{id}`: every node with its parent, depth, role, k,
    /// children and, when only TURN reaches it, `relayed`.
    pub fn snapshot(&self, tree: &str) -> Option<TreeSnapshot> {
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
