//! The placement model: which peer is whose parent (PROTOCOL.md rules 3-5
//! and 8).
//!
//! A pure data structure: no I/O, no async, no sockets. The server owns one
//! [`Tree`] per broadcast and turns the results of its calls ([`Joined`],
//! [`Moved`], [`Removal`]) into `joined`, `child`, `child-gone` and `parent`
//! messages.
//!
//! # Why every operation is cheap
//!
//! The seed placed a newcomer by walking the tree breadth-first from the root
//! until it met a node with a free slot. Free slots live at the bottom of a
//! breadth-first tree, so that walk visits almost every node: O(n) per join and
//! O(n^2) to build a tree, which a server holding a large audience cannot pay
//! while holding the tree's lock.
//!
//! Here every node carries a summary of its own subtree (`Agg`): the best
//! free slot in it (least depth, then relays, then earliest joined), the best
//! leaf a relay could replace (rule 4) and the subtree's height. Depths in the
//! summary are *relative to the node itself*, so a summary stays true wherever
//! its subtree hangs: moving a subtree (rule 5, `reconnect`) touches only the
//! nodes on the two root paths involved, never the subtree's interior. The
//! root's summary is the answer to "where would a newcomer go" in O(1), and a
//! detached subtree drops out of the root's summary by itself, which is what
//! makes "never under its own subtree" free. A relayed node (rule 8) simply
//! offers no slot of its own, so no placement can choose it.
//!
//! After a change at node `x`, the summaries from `x` up to the root are
//! recomputed, each from the node's own state and its at most `k` children's
//! summaries, stopping as soon as one comes out unchanged. So join, remove
//! and reconnect cost O(h * k), where `h` is the tree's height, which rules 3
//! and 4 keep near log_k(n) (a property test checks
//! `max depth <= 1 + ceil(log_k n)` for trees built by joins). Rule 5 keeps
//! subtrees whole, so heavy churn can make the tree taller than that bound;
//! the cost then grows with the height, not with the number of peers.
//! Absolute depths are not stored (they would change for a whole subtree on
//! every move); [`Tree::depth`] walks to the root in O(h).
//!
//! Nodes live in an arena (`Vec`) addressed by index; a [`NodeId`] also
//! carries the slot's generation, so an id kept after its node left is
//! recognised as stale instead of silently naming a newcomer that reused the
//! slot. A node's summary is stored in its parent, beside the child's id
//! (`kid_aggs`): recomputing a node then reads one contiguous buffer instead
//! of one cache line per child, which matters once the tree outgrows the
//! caches and every level of a root path is a memory access.

use std::collections::VecDeque;

/// Marks "no node" in parent links: the root's parent, a detached subtree's.
const NIL: u32 = u32::MAX;

/// Set in a slot rank for non-relays, so relays sort first at equal depth.
const NON_RELAY: u64 = 1 << 63;

/// A node of one [`Tree`]. Stays valid until that node is removed or evicted;
/// afterwards every method treats it as unknown, even if its arena slot is
/// reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId {
    index: u32,
    generation: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum TreeError {
    /// No node has a free child slot that the operation may use.
    #[error("no free slot in the tree")]
    TreeFull,
    /// The id was never issued by this tree, or its node has left.
    #[error("no such node in the tree")]
    NoSuchNode,
    /// The root (the source) cannot leave, change its parent or be relayed
    /// (rule 8: every member's media comes through it).
    #[error("the root cannot be removed, moved or relayed")]
    IsRoot,
}

/// Result of [`Tree::join`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Joined {
    pub node: NodeId,
    pub parent: NodeId,
    /// Absolute depth of the new node (the root is at 0).
    pub depth: u32,
    /// Rule 4: the leaf whose place the new relay took. It is now the relay's
    /// only child, one level deeper than before.
    pub adopted: Option<NodeId>,
}

/// A node that got a new parent; its whole subtree came with it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Moved {
    pub node: NodeId,
    pub parent: NodeId,
    /// New absolute depth of `node`; its descendants shifted by the same amount.
    pub depth: u32,
}

/// What a newcomer brings to the tree: the inputs of rules 3, 4 and 8.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Newcomer {
    /// Its `k`, already capped by the server's `k`.
    pub capacity: u32,
    /// A headless relay: wins rule 3's ties and may take a leaf's place (rule 4).
    pub relay: bool,
    /// Reachable only through a TURN relay (rule 8): it joins as a leaf and
    /// is given no children until it says otherwise.
    pub relayed: bool,
}

/// Result of [`Tree::remove`] and [`Tree::set_relayed`]: where the children
/// a node gave up went.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Removal<P> {
    /// The re-placed nodes, in the order they were placed.
    pub moved: Vec<Moved>,
    /// Nodes that could not be placed anywhere (the tree was full); they are
    /// no longer in the tree.
    pub evicted: Vec<(NodeId, P)>,
}

/// Best free slot in a subtree. Only `(depth, rank)` orders it: `rank` holds
/// the join sequence number, which is unique, so `index` never breaks a tie
/// and is just the answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Slot {
    depth: u32,
    index: u32,
    rank: u64,
}

impl Slot {
    const NONE: Slot = Slot {
        depth: u32::MAX,
        index: NIL,
        rank: u64::MAX,
    };

    #[inline]
    fn is_some(self) -> bool {
        self.index != NIL
    }

    #[inline]
    fn lifted(self) -> Slot {
        // NONE stays NONE; real depths cannot reach u32::MAX because there
        // are fewer than u32::MAX nodes.
        Slot {
            depth: self.depth.saturating_add(1),
            ..self
        }
    }

    #[inline]
    fn better_than(self, other: Slot) -> bool {
        (self.depth, self.rank) < (other.depth, other.rank)
    }
}

/// Best rule-4 leaf in a subtree: least depth, then earliest joined.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Leaf {
    depth: u32,
    index: u32,
    seq: u64,
}

impl Leaf {
    const NONE: Leaf = Leaf {
        depth: u32::MAX,
        index: NIL,
        seq: u64::MAX,
    };

    #[inline]
    fn is_some(self) -> bool {
        self.index != NIL
    }

    #[inline]
    fn lifted(self) -> Leaf {
        Leaf {
            depth: self.depth.saturating_add(1),
            ..self
        }
    }

    #[inline]
    fn better_than(self, other: Leaf) -> bool {
        (self.depth, self.seq) < (other.depth, other.seq)
    }
}

/// A subtree's summary, depths relative to the subtree's top.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Agg {
    slot: Slot,
    leaf: Leaf,
    height: u32,
}

impl Agg {
    const EMPTY: Agg = Agg {
        slot: Slot::NONE,
        leaf: Leaf::NONE,
        height: 0,
    };
}

#[derive(Clone, Debug)]
struct Node<P> {
    generation: u32,
    parent: u32,
    /// Index of this node in its parent's `children` (and `kid_aggs`).
    pos: u32,
    capacity: u32,
    relay: bool,
    /// Rule 8: reachable only through TURN, so no slot of its own whatever
    /// its `capacity`, which is kept for when it becomes reachable again.
    relayed: bool,
    /// Set only during `reconnect`, to hide the old parent's slots.
    excluded: bool,
    seq: u64,
    children: Vec<NodeId>,
    /// `kid_aggs[i]` summarises the subtree of `children[i]`. Kept in the
    /// parent rather than in each child so that recomputing a node reads one
    /// contiguous buffer instead of one cache line per child.
    kid_aggs: Vec<Agg>,
    /// `None` marks a free arena slot.
    peer: Option<P>,
}

impl<P> Node<P> {
    #[inline]
    fn rank(&self) -> u64 {
        if self.relay {
            self.seq
        } else {
            self.seq | NON_RELAY
        }
    }
}

/// A broadcast tree: the root (the source) and every peer placed under it.
#[derive(Clone, Debug)]
pub struct Tree<P> {
    nodes: Vec<Node<P>>,
    /// The root's summary (every other node's sits in its parent).
    top: Agg,
    free: Vec<u32>,
    root: u32,
    len: usize,
    next_seq: u64,
}

impl<P> Tree<P> {
    /// A tree holding only its root. `root_capacity` is the source's `k`,
    /// already capped by the server's `k1`.
    pub fn new(root_peer: P, root_capacity: u32) -> Self {
        let mut tree = Tree {
            nodes: Vec::new(),
            top: Agg::EMPTY,
            free: Vec::new(),
            root: 0,
            len: 0,
            next_seq: 0,
        };
        // The arena is empty, so this cannot fail; the fallback keeps the
        // constructor panic-free regardless.
        let root = Newcomer {
            capacity: root_capacity,
            ..Newcomer::default()
        };
        tree.root = tree.alloc(root_peer, root).unwrap_or(0);
        tree.top = tree.compute(tree.root);
        tree
    }

    pub fn root(&self) -> NodeId {
        self.id(self.root)
    }

    /// Number of nodes, the root included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: the root is never removed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, n: NodeId) -> bool {
        self.live(n).is_some()
    }

    pub fn peer(&self, n: NodeId) -> Option<&P> {
        let i = self.live(n)?;
        self.nodes[i as usize].peer.as_ref()
    }

    /// Replaces the peer key of a node, e.g. when a source reclaims its tree
    /// from a new connection.
    pub fn set_peer(&mut self, n: NodeId, p: P) -> Result<(), TreeError> {
        let i = self.live(n).ok_or(TreeError::NoSuchNode)?;
        self.nodes[i as usize].peer = Some(p);
        Ok(())
    }

    pub fn parent(&self, n: NodeId) -> Option<NodeId> {
        let i = self.live(n)?;
        let p = self.nodes[i as usize].parent;
        (p != NIL).then(|| self.id(p))
    }

    /// Children in placement order; empty for an unknown node.
    pub fn children(&self, n: NodeId) -> &[NodeId] {
        match self.live(n) {
            Some(i) => &self.nodes[i as usize].children,
            None => &[],
        }
    }

    /// Absolute depth (root = 0), by walking up: O(height).
    pub fn depth(&self, n: NodeId) -> Option<u32> {
        let mut i = self.live(n)?;
        let mut d = 0u32;
        loop {
            let p = self.nodes[i as usize].parent;
            if p == NIL {
                return Some(d);
            }
            d += 1;
            i = p;
        }
    }

    pub fn capacity(&self, n: NodeId) -> Option<u32> {
        self.live(n).map(|i| self.nodes[i as usize].capacity)
    }

    pub fn is_relay(&self, n: NodeId) -> bool {
        self.live(n).is_some_and(|i| self.nodes[i as usize].relay)
    }

    /// Whether the node is reachable only through TURN (rule 8) and so
    /// takes no children.
    pub fn is_relayed(&self, n: NodeId) -> bool {
        self.live(n).is_some_and(|i| self.nodes[i as usize].relayed)
    }

    /// Depth of the deepest node.
    pub fn max_depth(&self) -> u32 {
        self.top.height
    }

    /// The depth a newcomer would get by rule 3 (its parent's depth + 1), or
    /// `None` if no node has a free slot.
    pub fn shallowest_free_slot_depth(&self) -> Option<u32> {
        let s = self.top.slot;
        s.is_some().then(|| s.depth + 1)
    }

    /// Places a new peer by rules 3 and 4. `capacity` is the peer's `k`,
    /// already capped by the server's `k`. On `TreeFull` nothing changed.
    pub fn join(&mut self, peer: P, capacity: u32, relay: bool) -> Result<Joined, TreeError> {
        self.join_as(
            peer,
            Newcomer {
                capacity,
                relay,
                relayed: false,
            },
        )
    }

    /// [`Tree::join`] for a newcomer that may be relayed (rule 8). A relayed
    /// relay offers no slot, so it never takes a leaf's place: it joins as
    /// any leaf would. On `TreeFull` nothing changed.
    pub fn join_as(&mut self, peer: P, who: Newcomer) -> Result<Joined, TreeError> {
        let top = self.top;
        let leaf = top.leaf;
        // Rule 4: a leaf at depth < slot depth + 1, i.e. <= the slot holder's.
        let adopt = who.relay
            && !who.relayed
            && who.capacity >= 1
            && leaf.is_some()
            && (!top.slot.is_some() || leaf.depth <= top.slot.depth);
        if adopt {
            let l = leaf.index;
            let p = self.nodes[l as usize].parent;
            let pos = self.nodes[l as usize].pos;
            if p == NIL {
                // Unreachable: the root is never a rule-4 leaf.
                return Err(TreeError::TreeFull);
            }
            let r = self.alloc(peer, who)?;
            let (rid, lid) = (self.id(r), self.id(l));
            let leaf_agg = self.nodes[p as usize].kid_aggs[pos as usize];
            let rn = &mut self.nodes[r as usize];
            rn.parent = p;
            rn.pos = pos;
            rn.children.push(lid);
            rn.kid_aggs.push(leaf_agg);
            let ln = &mut self.nodes[l as usize];
            ln.parent = r;
            ln.pos = 0;
            let ragg = self.compute(r);
            let pn = &mut self.nodes[p as usize];
            pn.children[pos as usize] = rid;
            pn.kid_aggs[pos as usize] = ragg;
            self.propagate(p);
            return Ok(Joined {
                node: rid,
                parent: self.id(p),
                depth: leaf.depth,
                adopted: Some(lid),
            });
        }
        let slot = top.slot;
        if !slot.is_some() {
            return Err(TreeError::TreeFull);
        }
        let n = self.alloc(peer, who)?;
        self.attach(n, slot.index);
        Ok(Joined {
            node: self.id(n),
            parent: self.id(slot.index),
            depth: slot.depth + 1,
            adopted: None,
        })
    }

    /// Removes a node (it left or died) and re-places each of its children
    /// with its whole subtree by rule 3 (rule 5): subtrees with a free slot
    /// first, then relays, then earliest joined. A child that fits nowhere is
    /// evicted alone and its own children are re-placed the same way. Costs
    /// O(h * k) per re-placed child plus O(k) per evicted node.
    pub fn remove(&mut self, n: NodeId) -> Result<Removal<P>, TreeError> {
        let i = self.live(n).ok_or(TreeError::NoSuchNode)?;
        if i == self.root {
            return Err(TreeError::IsRoot);
        }
        if let Some((p, _)) = self.detach(i) {
            self.propagate(p);
        }
        let mut queue = VecDeque::new();
        self.release(i, &mut queue);
        Ok(self.replace_orphans(queue))
    }

    /// Rule 8: marks a node as reachable only through TURN, or reachable
    /// directly again. A node that becomes relayed keeps its place but loses
    /// its slots, and its children are re-placed exactly as if it had left
    /// (rule 5, same order, same evictions when the tree is full). Becoming
    /// reachable again gives its capacity back and moves nobody. The root
    /// cannot be relayed (`IsRoot`): everybody's media comes through it.
    /// Costs O(h * k) per re-placed child, like [`Tree::remove`].
    pub fn set_relayed(&mut self, n: NodeId, relayed: bool) -> Result<Removal<P>, TreeError> {
        let i = self.live(n).ok_or(TreeError::NoSuchNode)?;
        if relayed && i == self.root {
            return Err(TreeError::IsRoot);
        }
        let mut queue = VecDeque::new();
        if relayed {
            self.orphan_children(i, &mut queue);
        }
        self.nodes[i as usize].relayed = relayed;
        self.propagate(i);
        Ok(self.replace_orphans(queue))
    }

    /// Gives a node another parent by rule 3 (the peer asked `reconnect`),
    /// keeping its subtree. The new parent is neither the old one nor inside
    /// the node's own subtree. With no such slot: `TreeFull`, nothing changed.
    pub fn reconnect(&mut self, n: NodeId) -> Result<Moved, TreeError> {
        let i = self.live(n).ok_or(TreeError::NoSuchNode)?;
        if i == self.root {
            return Err(TreeError::IsRoot);
        }
        // Hide the old parent's slots (including the one `n` frees) while the
        // root's summary picks the new slot; n's subtree is detached, so it
        // drops out of the summary by itself.
        let (p, pos) = self.detach(i).ok_or(TreeError::NoSuchNode)?;
        self.nodes[p as usize].excluded = true;
        self.propagate(p);
        let slot = self.top.slot;
        self.nodes[p as usize].excluded = false;
        if !slot.is_some() {
            self.insert_child(p, pos, i);
            self.propagate(p);
            return Err(TreeError::TreeFull);
        }
        self.propagate(p);
        self.attach(i, slot.index);
        Ok(Moved {
            node: self.id(i),
            parent: self.id(slot.index),
            depth: slot.depth + 1,
        })
    }

    /// All live nodes, in arena order.
    pub fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.peer.is_some())
            .map(|(i, n)| NodeId {
                index: i as u32,
                generation: n.generation,
            })
    }

    /// Full O(n) consistency check of links, capacities, reachability and
    /// every stored summary. For tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let root = self
            .nodes
            .get(self.root as usize)
            .ok_or("root index out of the arena")?;
        if root.peer.is_none() || root.parent != NIL {
            return Err("root is dead or has a parent".into());
        }
        // Breadth-first from the root: reachability, no cycles (a node seen
        // twice), links in both directions, capacities.
        let mut seen = vec![false; self.nodes.len()];
        let mut order = vec![self.root];
        seen[self.root as usize] = true;
        let mut head = 0;
        while head < order.len() {
            let i = order[head];
            head += 1;
            let node = &self.nodes[i as usize];
            if node.excluded {
                return Err(format!("node {i} left excluded"));
            }
            if node.children.len() as u64 > u64::from(node.capacity) {
                return Err(format!("node {i} has more children than its capacity"));
            }
            if node.relayed && !node.children.is_empty() {
                return Err(format!("relayed node {i} has children"));
            }
            if node.relayed && i == self.root {
                return Err("the root is relayed".into());
            }
            if node.children.len() != node.kid_aggs.len() {
                return Err(format!("node {i}: children and summaries differ"));
            }
            for (pos, c) in node.children.iter().enumerate() {
                let ci = self
                    .live(*c)
                    .ok_or(format!("node {i} has a dead child {c:?}"))?;
                let child = &self.nodes[ci as usize];
                if child.parent != i || child.pos as usize != pos {
                    return Err(format!("child {ci} of {i} has a wrong parent link"));
                }
                if std::mem::replace(&mut seen[ci as usize], true) {
                    return Err(format!("node {ci} reached twice (cycle or shared)"));
                }
                order.push(ci);
            }
        }
        let live = self.nodes.iter().filter(|n| n.peer.is_some()).count();
        if live != order.len() || live != self.len {
            return Err(format!(
                "{live} live nodes, {} reachable, len {}",
                order.len(),
                self.len
            ));
        }
        for &f in &self.free {
            if self.nodes.get(f as usize).is_none_or(|n| n.peer.is_some()) {
                return Err(format!("free list holds live or unknown slot {f}"));
            }
        }
        // Summaries from scratch, children before parents (reverse BFS).
        let mut fresh: Vec<Option<Agg>> = vec![None; self.nodes.len()];
        for &i in order.iter().rev() {
            let node = &self.nodes[i as usize];
            let kids: Option<Vec<Agg>> = node
                .children
                .iter()
                .map(|c| fresh[c.index as usize])
                .collect();
            let kids = kids.ok_or("child summarised after its parent")?;
            if kids != node.kid_aggs {
                return Err(format!("stale child summaries at node {i}"));
            }
            fresh[i as usize] = Some(self.compute(i));
        }
        if fresh[self.root as usize] != Some(self.top) {
            return Err("stale root summary".into());
        }
        let mut seqs: Vec<u64> = order.iter().map(|&i| self.nodes[i as usize].seq).collect();
        if seqs.first() != Some(&0) {
            return Err("the root is not the earliest joined".into());
        }
        seqs.sort_unstable();
        if seqs.windows(2).any(|w| w[0] == w[1]) || seqs.last().is_some_and(|&s| s >= self.next_seq)
        {
            return Err("join sequence numbers not unique or from the future".into());
        }
        Ok(())
    }

    // ---- internals ----

    #[inline]
    fn id(&self, i: u32) -> NodeId {
        NodeId {
            index: i,
            generation: self.nodes[i as usize].generation,
        }
    }

    #[inline]
    fn live(&self, n: NodeId) -> Option<u32> {
        let node = self.nodes.get(n.index as usize)?;
        (node.generation == n.generation && node.peer.is_some()).then_some(n.index)
    }

    fn alloc(&mut self, peer: P, who: Newcomer) -> Result<u32, TreeError> {
        let Newcomer {
            capacity,
            relay,
            relayed,
        } = who;
        let seq = self.next_seq;
        let i = match self.free.pop() {
            Some(i) => {
                let node = &mut self.nodes[i as usize];
                node.parent = NIL;
                node.pos = 0;
                node.capacity = capacity;
                node.relay = relay;
                node.relayed = relayed;
                node.excluded = false;
                node.seq = seq;
                node.children.clear();
                node.kid_aggs.clear();
                node.peer = Some(peer);
                i
            }
            None => {
                // NIL is reserved, so the last usable index is NIL - 1.
                let i = u32::try_from(self.nodes.len())
                    .ok()
                    .filter(|&i| i != NIL)
                    .ok_or(TreeError::TreeFull)?;
                self.nodes.push(Node {
                    generation: 0,
                    parent: NIL,
                    pos: 0,
                    capacity,
                    relay,
                    relayed,
                    excluded: false,
                    seq,
                    children: Vec::new(),
                    kid_aggs: Vec::new(),
                    peer: Some(peer),
                });
                i
            }
        };
        self.next_seq += 1;
        self.len += 1;
        Ok(i)
    }

    /// Frees a detached node: its children are orphaned (see
    /// `orphan_children`). Returns the node's peer.
    fn release(&mut self, i: u32, queue: &mut VecDeque<u32>) -> Option<P> {
        self.orphan_children(i, queue);
        let node = &mut self.nodes[i as usize];
        node.parent = NIL;
        let peer = node.peer.take();
        // A slot whose generation is exhausted is retired rather than reused,
        // so an old id can never match a new node.
        if let Some(g) = node.generation.checked_add(1) {
            node.generation = g;
            self.free.push(i);
        }
        self.len -= 1;
        peer
    }

    /// Rule 5's placing loop: hangs each queued detached subtree on the best
    /// free slot, in queue order, evicting the ones that fit nowhere.
    fn replace_orphans(&mut self, mut queue: VecDeque<u32>) -> Removal<P> {
        let mut moved = Vec::new();
        let mut evicted = Vec::new();
        while let Some(c) = queue.pop_front() {
            let slot = self.top.slot;
            if slot.is_some() {
                self.attach(c, slot.index);
                moved.push(Moved {
                    node: self.id(c),
                    parent: self.id(slot.index),
                    depth: slot.depth + 1,
                });
            } else {
                // Placing a subtree never frees a slot, so from here on every
                // queued node ends up evicted; the queue just reports them.
                let id = self.id(c);
                if let Some(peer) = self.release(c, &mut queue) {
                    evicted.push((id, peer));
                }
            }
        }
        Removal { moved, evicted }
    }

    /// Makes each child of `i` a detached subtree, queued so that those
    /// bringing a free slot go first, then relays, then the earliest joined.
    /// The summaries above `i` are left for the caller to propagate.
    ///
    /// A subtree with a free slot, once placed, can host the siblings queued
    /// after it; placed last it could be evicted while a leaf took the only
    /// slot left, and every sibling after it would follow.
    fn orphan_children(&mut self, i: u32, queue: &mut VecDeque<u32>) {
        let mut kids = std::mem::take(&mut self.nodes[i as usize].children);
        let aggs = &self.nodes[i as usize].kid_aggs;
        kids.sort_unstable_by_key(|c| {
            let child = &self.nodes[c.index as usize];
            (!aggs[child.pos as usize].slot.is_some(), child.rank())
        });
        for c in &kids {
            let child = &mut self.nodes[c.index as usize];
            child.parent = NIL;
            child.pos = 0;
            queue.push_back(c.index);
        }
        kids.clear();
        let node = &mut self.nodes[i as usize];
        // Keep the allocations for whoever reuses the slot.
        node.children = kids;
        node.kid_aggs.clear();
    }

    /// Unhooks `i` (with its subtree) from its parent; returns the parent and
    /// the position `i` had. Summaries above are left for the caller to
    /// propagate.
    fn detach(&mut self, i: u32) -> Option<(u32, u32)> {
        let node = &self.nodes[i as usize];
        let (p, pos) = (node.parent, node.pos);
        let pn = self.nodes.get_mut(p as usize)?;
        if pn.children.get(pos as usize).map(|c| c.index) != Some(i) {
            return None;
        }
        pn.children.remove(pos as usize);
        pn.kid_aggs.remove(pos as usize);
        self.renumber(p, pos);
        let node = &mut self.nodes[i as usize];
        node.parent = NIL;
        node.pos = 0;
        Some((p, pos))
    }

    /// Puts the detached subtree `c` back at `pos` among `p`'s children.
    fn insert_child(&mut self, p: u32, pos: u32, c: u32) {
        let cid = self.id(c);
        let agg = self.compute(c);
        let node = &mut self.nodes[c as usize];
        node.parent = p;
        node.pos = pos;
        let pn = &mut self.nodes[p as usize];
        pn.children.insert(pos as usize, cid);
        pn.kid_aggs.insert(pos as usize, agg);
        self.renumber(p, pos + 1);
    }

    /// Rewrites the stored positions of `p`'s children from `from` on.
    fn renumber(&mut self, p: u32, from: u32) {
        let count = self.nodes[p as usize].children.len() as u32;
        for pos in from..count {
            let c = self.nodes[p as usize].children[pos as usize].index;
            self.nodes[c as usize].pos = pos;
        }
    }

    /// Hangs the detached subtree topped by `c` under `p` (which has a free
    /// slot), last among its children, and refreshes the summaries above.
    fn attach(&mut self, c: u32, p: u32) {
        let cid = self.id(c);
        let agg = self.compute(c);
        let pn = &mut self.nodes[p as usize];
        let pos = pn.children.len() as u32;
        pn.children.push(cid);
        pn.kid_aggs.push(agg);
        let node = &mut self.nodes[c as usize];
        node.parent = p;
        node.pos = pos;
        self.propagate(p);
    }

    /// Summary of node `i` from its own state and its children's summaries.
    #[inline]
    fn compute(&self, i: u32) -> Agg {
        let node = &self.nodes[i as usize];
        let own_slot = !node.excluded
            && !node.relayed
            && (node.children.len() as u64) < u64::from(node.capacity);
        let mut slot = if own_slot {
            Slot {
                depth: 0,
                index: i,
                rank: node.rank(),
            }
        } else {
            Slot::NONE
        };
        let mut leaf = if node.children.is_empty() && !node.relay && i != self.root {
            Leaf {
                depth: 0,
                index: i,
                seq: node.seq,
            }
        } else {
            Leaf::NONE
        };
        let mut height = 0u32;
        for a in &node.kid_aggs {
            // A free slot here at relative depth 0 beats anything below.
            if !own_slot {
                let s = a.slot.lifted();
                if s.better_than(slot) {
                    slot = s;
                }
            }
            let l = a.leaf.lifted();
            if l.better_than(leaf) {
                leaf = l;
            }
            height = height.max(a.height.saturating_add(1));
        }
        Agg { slot, leaf, height }
    }

    /// Recomputes summaries from `i` up to the root, stopping at the first
    /// node whose summary did not change (nothing above it can change then).
    fn propagate(&mut self, mut i: u32) {
        loop {
            let agg = self.compute(i);
            let node = &self.nodes[i as usize];
            let (p, pos) = (node.parent, node.pos as usize);
            let stored = if p == NIL {
                if i != self.root {
                    // A detached subtree: its summary is computed on attach.
                    return;
                }
                &mut self.top
            } else {
                match self.nodes[p as usize].kid_aggs.get_mut(pos) {
                    Some(s) => s,
                    None => return,
                }
            };
            if *stored == agg {
                return;
            }
            *stored = agg;
            if p == NIL {
                return;
            }
            i = p;
        }
    }
}
