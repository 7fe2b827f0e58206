//! Property tests of the placement model (`signalling::tree`) against a
//! brute-force reference that rescans every node for every decision, plus
//! small hand-made scenarios.

use std::collections::{HashMap, HashSet, VecDeque};

use proptest::prelude::*;
use signalling::tree::{Joined, Moved, Newcomer, NodeId, Removal, Tree, TreeError};

// ---------------------------------------------------------------------------
// The reference: the same rules, decided by scanning all nodes.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct MNode {
    parent: Option<NodeId>,
    children: Vec<NodeId>,
    cap: u32,
    relay: bool,
    relayed: bool,
    seq: u64,
    peer: u32,
}

#[derive(Clone, Debug)]
struct Model {
    root: NodeId,
    nodes: HashMap<NodeId, MNode>,
    next_seq: u64,
}

impl MNode {
    /// Rule 3 may place a newcomer here (rule 8: never under a relayed node).
    fn has_own_slot(&self) -> bool {
        !self.relayed && (self.children.len() as u32) < self.cap
    }
}

/// Rule 3's order: least depth, then relays, then earliest joined.
fn slot_key(depth: u32, n: &MNode) -> (u32, bool, u64) {
    (depth, !n.relay, n.seq)
}

impl Model {
    fn new(root: NodeId, cap: u32, peer: u32) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            root,
            MNode {
                parent: None,
                children: vec![],
                cap,
                relay: false,
                relayed: false,
                seq: 0,
                peer,
            },
        );
        Model {
            root,
            nodes,
            next_seq: 1,
        }
    }

    /// Depths of every node reachable from the root.
    fn depths(&self) -> HashMap<NodeId, u32> {
        let mut out = HashMap::new();
        let mut q = VecDeque::from([(self.root, 0u32)]);
        while let Some((n, d)) = q.pop_front() {
            out.insert(n, d);
            for c in &self.nodes[&n].children {
                q.push_back((*c, d + 1));
            }
        }
        out
    }

    /// The rule-3 winner among reachable nodes other than `exclude`:
    /// (parent, parent depth).
    fn best_slot(&self, exclude: Option<NodeId>) -> Option<(NodeId, u32)> {
        self.depths()
            .into_iter()
            .filter(|(n, _)| Some(*n) != exclude)
            .filter(|(n, _)| self.nodes[n].has_own_slot())
            .min_by_key(|(n, d)| slot_key(*d, &self.nodes[n]))
    }

    /// The rule-4 candidate: shallowest non-relay non-root leaf, earliest first.
    fn best_leaf(&self) -> Option<(NodeId, u32)> {
        self.depths()
            .into_iter()
            .filter(|(n, _)| {
                let m = &self.nodes[n];
                *n != self.root && !m.relay && m.children.is_empty()
            })
            .min_by_key(|(n, d)| (*d, self.nodes[n].seq))
    }

    fn detach(&mut self, n: NodeId) -> Option<(NodeId, usize)> {
        let p = self.nodes[&n].parent?;
        let kids = &mut self.nodes.get_mut(&p)?.children;
        let pos = kids.iter().position(|c| *c == n)?;
        kids.remove(pos);
        self.nodes.get_mut(&n)?.parent = None;
        Some((p, pos))
    }

    fn attach(&mut self, n: NodeId, p: NodeId) {
        self.nodes.get_mut(&p).unwrap().children.push(n);
        self.nodes.get_mut(&n).unwrap().parent = Some(p);
    }

    /// What `join` must answer; `node` is filled in by the caller.
    fn expect_join(&self, who: Newcomer) -> Result<Joined, TreeError> {
        let slot = self.best_slot(None);
        // Rule 8: a relayed relay has no slot to offer the leaf.
        if who.relay && !who.relayed && who.capacity >= 1 {
            if let Some((leaf, ld)) = self.best_leaf() {
                if slot.is_none_or(|(_, sd)| ld < sd + 1) {
                    return Ok(Joined {
                        node: leaf, // placeholder
                        parent: self.nodes[&leaf].parent.unwrap(),
                        depth: ld,
                        adopted: Some(leaf),
                    });
                }
            }
        }
        let (p, d) = slot.ok_or(TreeError::TreeFull)?;
        Ok(Joined {
            node: p, // placeholder
            parent: p,
            depth: d + 1,
            adopted: None,
        })
    }

    fn apply_join(&mut self, j: &Joined, who: Newcomer, peer: u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.nodes.insert(
            j.node,
            MNode {
                parent: None,
                children: vec![],
                cap: who.capacity,
                relay: who.relay,
                relayed: who.relayed,
                seq,
                peer,
            },
        );
        match j.adopted {
            Some(leaf) => {
                let p = self.nodes[&leaf].parent.unwrap();
                let kids = &mut self.nodes.get_mut(&p).unwrap().children;
                let pos = kids.iter().position(|c| *c == leaf).unwrap();
                kids[pos] = j.node;
                self.nodes.get_mut(&j.node).unwrap().parent = Some(p);
                self.attach(leaf, j.node);
            }
            None => self.attach(j.node, j.parent),
        }
    }

    /// Rule 5, by brute force: returns (moved, evicted ids) in order.
    fn remove(&mut self, n: NodeId) -> (Vec<Moved>, Vec<NodeId>) {
        self.detach(n);
        let mut queue = VecDeque::new();
        self.release(n, &mut queue);
        self.place(queue)
    }

    /// Rule 8, by brute force: a node that becomes relayed stays, and its
    /// children go exactly as rule 5 sends a dead node's.
    fn set_relayed(&mut self, n: NodeId, on: bool) -> (Vec<Moved>, Vec<NodeId>) {
        let node = self.nodes.get_mut(&n).unwrap();
        node.relayed = on;
        if !on {
            return (vec![], vec![]);
        }
        let kids = std::mem::take(&mut node.children);
        let mut queue = VecDeque::new();
        self.orphan(kids, &mut queue);
        self.place(queue)
    }

    /// Rule 5's loop: each queued subtree to the best slot, or evicted.
    fn place(&mut self, mut queue: VecDeque<NodeId>) -> (Vec<Moved>, Vec<NodeId>) {
        let (mut moved, mut evicted) = (vec![], vec![]);
        while let Some(c) = queue.pop_front() {
            match self.best_slot(None) {
                Some((p, d)) => {
                    self.attach(c, p);
                    moved.push(Moved {
                        node: c,
                        parent: p,
                        depth: d + 1,
                    });
                }
                None => {
                    self.release(c, &mut queue);
                    evicted.push(c);
                }
            }
        }
        (moved, evicted)
    }

    /// Some node in `n`'s subtree (itself included) accepts another child.
    fn has_free_slot(&self, n: NodeId) -> bool {
        let m = &self.nodes[&n];
        m.has_own_slot() || m.children.iter().any(|c| self.has_free_slot(*c))
    }

    fn release(&mut self, n: NodeId, queue: &mut VecDeque<NodeId>) {
        let gone = self.nodes.remove(&n).unwrap();
        self.orphan(gone.children, queue);
    }

    /// Queues a node's former children in rule 5's order.
    fn orphan(&mut self, mut kids: Vec<NodeId>, queue: &mut VecDeque<NodeId>) {
        kids.sort_by_key(|c| {
            (
                !self.has_free_slot(*c),
                !self.nodes[c].relay,
                self.nodes[c].seq,
            )
        });
        for c in kids {
            self.nodes.get_mut(&c).unwrap().parent = None;
            queue.push_back(c);
        }
    }

    /// `reconnect` by brute force; on `TreeFull` the model is unchanged.
    fn reconnect(&mut self, n: NodeId) -> Result<Moved, TreeError> {
        let (old, pos) = self.detach(n).unwrap();
        match self.best_slot(Some(old)) {
            Some((p, d)) => {
                self.attach(n, p);
                Ok(Moved {
                    node: n,
                    parent: p,
                    depth: d + 1,
                })
            }
            None => {
                self.nodes.get_mut(&old).unwrap().children.insert(pos, n);
                self.nodes.get_mut(&n).unwrap().parent = Some(old);
                Err(TreeError::TreeFull)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Structural checks through the public API only.
// ---------------------------------------------------------------------------

/// Capacity, reachability, no cycles, two-way links, aggregates; returns the
/// depth of every node (computed by a walk from the root).
fn check_structure(t: &Tree<u32>) -> Result<HashMap<NodeId, u32>, TestCaseError> {
    if let Err(e) = t.check_invariants() {
        return Err(TestCaseError::fail(format!("check_invariants: {e}")));
    }
    let root = t.root();
    prop_assert_eq!(t.parent(root), None);
    let mut depth = HashMap::new();
    let mut q = VecDeque::from([(root, 0u32)]);
    while let Some((n, d)) = q.pop_front() {
        prop_assert!(depth.insert(n, d).is_none(), "{:?} reached twice", n);
        prop_assert!(t.children(n).len() as u32 <= t.capacity(n).unwrap());
        // Rule 8: a relayed node never has children.
        prop_assert!(
            !t.is_relayed(n) || t.children(n).is_empty(),
            "relayed {:?} has children",
            n
        );
        prop_assert_eq!(t.depth(n), Some(d));
        for &c in t.children(n) {
            prop_assert_eq!(t.parent(c), Some(n));
            q.push_back((c, d + 1));
        }
    }
    let live: HashSet<NodeId> = t.iter().collect();
    prop_assert_eq!(live.len(), t.len());
    prop_assert_eq!(&live, &depth.keys().copied().collect::<HashSet<_>>());
    prop_assert_eq!(t.max_depth(), depth.values().copied().max().unwrap_or(0));
    // The shallowest free slot, by scanning.
    let free = depth
        .iter()
        .filter(|(n, _)| {
            !t.is_relayed(**n) && (t.children(**n).len() as u32) < t.capacity(**n).unwrap()
        })
        .map(|(_, d)| d + 1)
        .min();
    prop_assert_eq!(t.shallowest_free_slot_depth(), free);
    Ok(depth)
}

/// The tree equals the model: same nodes, links, child order, attributes.
fn check_same(t: &Tree<u32>, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(t.root(), m.root);
    prop_assert_eq!(t.len(), m.nodes.len());
    for (id, mn) in &m.nodes {
        prop_assert!(t.contains(*id));
        prop_assert_eq!(t.parent(*id), mn.parent, "parent of {:?}", id);
        prop_assert_eq!(t.children(*id), &mn.children[..], "children of {:?}", id);
        prop_assert_eq!(t.capacity(*id), Some(mn.cap));
        prop_assert_eq!(t.is_relay(*id), mn.relay);
        prop_assert_eq!(t.is_relayed(*id), mn.relayed);
        prop_assert_eq!(t.peer(*id), Some(&mn.peer));
    }
    Ok(())
}

fn descendants(t: &Tree<u32>, n: NodeId) -> Vec<NodeId> {
    let mut out = vec![n];
    let mut i = 0;
    while i < out.len() {
        out.extend_from_slice(t.children(out[i]));
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// Random operation sequences.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Join(Newcomer),
    Remove(usize),
    Reconnect(usize),
    /// Rule 8 on some live node (the root included).
    SetRelayed(usize, bool),
    /// An operation on an id that is no longer in the tree.
    Stale(usize),
}

/// A join; `relayed` newcomers with probability `relayed`.
fn join_op(
    caps: impl Strategy<Value = u32>,
    relay: f64,
    relayed: f64,
) -> impl Strategy<Value = Op> {
    (
        caps,
        prop::bool::weighted(relay),
        prop::bool::weighted(relayed),
    )
        .prop_map(|(capacity, relay, relayed)| {
            Op::Join(Newcomer {
                capacity,
                relay,
                relayed,
            })
        })
}

fn set_relayed_op() -> impl Strategy<Value = Op> {
    (any::<usize>(), prop::bool::weighted(0.6)).prop_map(|(n, on)| Op::SetRelayed(n, on))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => join_op(0u32..=5, 0.2, 0.15),
        2 => any::<usize>().prop_map(Op::Remove),
        2 => any::<usize>().prop_map(Op::Reconnect),
        2 => set_relayed_op(),
        1 => any::<usize>().prop_map(Op::Stale),
    ]
}

/// A node's children as they were before it left or became relayed.
struct Kids {
    ids: Vec<NodeId>,
    brings_slot: HashMap<NodeId, bool>,
    seq: HashMap<NodeId, u64>,
}

impl Kids {
    fn of(m: &Model, n: NodeId) -> Kids {
        let ids = m.nodes[&n].children.clone();
        Kids {
            brings_slot: ids.iter().map(|c| (*c, m.has_free_slot(*c))).collect(),
            seq: ids.iter().map(|c| (*c, m.nodes[c].seq)).collect(),
            ids,
        }
    }
}

/// Rule 5's outcome for the former children of a node that left or became
/// relayed: the order they went in, whole subtrees, never under themselves,
/// never under a relayed node, evictions only when full.
fn check_rule5(
    before: &Tree<u32>,
    before_depth: &HashMap<NodeId, u32>,
    t: &Tree<u32>,
    kids: &Kids,
    r: &Removal<u32>,
) -> Result<(), TestCaseError> {
    let (brings_slot, seq_of) = (&kids.brings_slot, &kids.seq);
    let kids = &kids.ids;
    for (id, peer) in &r.evicted {
        prop_assert_eq!(before.peer(*id), Some(peer));
        prop_assert!(!t.contains(*id));
    }
    // Subtrees with a free slot first, then relays, then earliest.
    let mut order = kids.clone();
    order.sort_by_key(|c| (!brings_slot[c], !before.is_relay(*c), seq_of[c]));
    let moved_kids: Vec<NodeId> = r
        .moved
        .iter()
        .map(|mv| mv.node)
        .filter(|x| kids.contains(x))
        .collect();
    prop_assert_eq!(&moved_kids[..], &order[..moved_kids.len()]);
    // Every former child went somewhere or out.
    for c in kids {
        prop_assert!(
            moved_kids.contains(c) || r.evicted.iter().any(|(e, _)| e == c),
            "child {:?} neither moved nor evicted",
            c
        );
    }
    // Every moved subtree came whole: nodes below its top kept their
    // parent, and depths shifted uniformly.
    for mv in &r.moved {
        prop_assert_eq!(t.parent(mv.node), Some(mv.parent));
        prop_assert_eq!(t.depth(mv.node), Some(mv.depth));
        // Placement never chooses a relayed node.
        prop_assert!(
            !t.is_relayed(mv.parent),
            "moved under relayed {:?}",
            mv.parent
        );
        let shift = i64::from(mv.depth) - i64::from(before_depth[&mv.node]);
        for d in descendants(before, mv.node) {
            if d != mv.node {
                prop_assert_eq!(t.parent(d), before.parent(d));
            }
            prop_assert_eq!(
                i64::from(t.depth(d).unwrap()),
                i64::from(before_depth[&d]) + shift
            );
        }
        // Never under its own subtree.
        prop_assert!(!descendants(before, mv.node).contains(&mv.parent));
    }
    // Evicted only when the tree had no slot left.
    if !r.evicted.is_empty() {
        prop_assert_eq!(t.shallowest_free_slot_depth(), None);
    }
    Ok(())
}

/// Applies `ops` to a tree and to the reference, checking every step;
/// returns the tree they built.
fn run_ops(root_cap: u32, ops: &[Op]) -> Result<Tree<u32>, TestCaseError> {
    let mut t = Tree::new(0u32, root_cap);
    let mut m = Model::new(t.root(), root_cap, 0);
    let mut next_peer = 1u32;
    let mut stale: Vec<NodeId> = vec![];
    let mut before_depth = check_structure(&t)?;
    for op in ops {
        let before = t.clone();
        let mut live: Vec<NodeId> = t.iter().collect();
        live.sort();
        match *op {
            Op::Join(who) => {
                let peer = next_peer;
                next_peer += 1;
                let want = m.expect_join(who);
                let got = t.join_as(peer, who);
                match (want, got) {
                    (Err(w), Err(g)) => {
                        prop_assert_eq!(w, g);
                        check_same(&t, &m)?;
                    }
                    (Ok(w), Ok(g)) => {
                        prop_assert!(!before.contains(g.node));
                        // Placement never chooses a relayed node.
                        prop_assert!(!before.is_relayed(g.parent));
                        prop_assert_eq!(g.parent, w.parent);
                        prop_assert_eq!(g.depth, w.depth);
                        prop_assert_eq!(g.adopted, w.adopted);
                        prop_assert_eq!(t.depth(g.node), Some(g.depth));
                        if let Some(leaf) = g.adopted {
                            // The relay took the leaf's place, same position.
                            let p = before.parent(leaf).unwrap();
                            let pos = before.children(p).iter().position(|c| *c == leaf);
                            prop_assert_eq!(t.children(p).iter().position(|c| *c == g.node), pos);
                            prop_assert_eq!(t.children(g.node), &[leaf][..]);
                            prop_assert_eq!(t.depth(leaf), Some(before_depth[&leaf] + 1));
                        } else {
                            prop_assert_eq!(Some(g.depth), before.shallowest_free_slot_depth());
                        }
                        m.apply_join(&g, who, peer);
                    }
                    (w, g) => prop_assert!(false, "join: want {:?}, got {:?}", w, g),
                }
            }
            Op::Remove(sel) => {
                let non_root: Vec<NodeId> =
                    live.iter().copied().filter(|n| *n != t.root()).collect();
                if non_root.is_empty() {
                    prop_assert_eq!(t.remove(t.root()).err(), Some(TreeError::IsRoot));
                    continue;
                }
                let n = non_root[sel % non_root.len()];
                let kids = Kids::of(&m, n);
                let (want_moved, want_evicted) = m.remove(n);
                let r = t
                    .remove(n)
                    .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                prop_assert!(!t.contains(n));
                prop_assert_eq!(&r.moved, &want_moved);
                let ev: Vec<NodeId> = r.evicted.iter().map(|(id, _)| *id).collect();
                prop_assert_eq!(&ev, &want_evicted);
                check_rule5(&before, &before_depth, &t, &kids, &r)?;
                // Every peer but the removed and the evicted ones stays.
                prop_assert_eq!(t.len() + 1 + r.evicted.len(), before.len());
            }
            Op::Reconnect(sel) => {
                let n = live[sel % live.len()];
                if n == t.root() {
                    prop_assert_eq!(t.reconnect(n).err(), Some(TreeError::IsRoot));
                    check_same(&t, &m)?;
                    continue;
                }
                let old = before.parent(n).unwrap();
                let want = m.reconnect(n);
                let got = t.reconnect(n);
                prop_assert_eq!(got, want);
                match got {
                    Ok(mv) => {
                        prop_assert_ne!(mv.parent, old);
                        prop_assert!(!t.is_relayed(mv.parent));
                        prop_assert!(!descendants(&before, n).contains(&mv.parent));
                        prop_assert_eq!(t.depth(n), Some(mv.depth));
                        let shift = i64::from(mv.depth) - i64::from(before_depth[&n]);
                        for d in descendants(&before, n) {
                            prop_assert_eq!(
                                i64::from(t.depth(d).unwrap()),
                                i64::from(before_depth[&d]) + shift
                            );
                        }
                    }
                    Err(_) => {
                        // Nothing changed at all.
                        prop_assert_eq!(t.parent(n), Some(old));
                        for x in before.iter() {
                            prop_assert_eq!(t.children(x), before.children(x));
                        }
                    }
                }
            }
            Op::SetRelayed(sel, on) => {
                let n = live[sel % live.len()];
                if n == t.root() {
                    // The source must be directly reachable.
                    if on {
                        prop_assert_eq!(t.set_relayed(n, on).err(), Some(TreeError::IsRoot));
                    } else {
                        let r = t
                            .set_relayed(n, on)
                            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                        prop_assert!(r.moved.is_empty() && r.evicted.is_empty());
                    }
                    prop_assert!(!t.is_relayed(n));
                    check_same(&t, &m)?;
                    continue;
                }
                let kids = Kids::of(&m, n);
                let (want_moved, want_evicted) = m.set_relayed(n, on);
                let r = t
                    .set_relayed(n, on)
                    .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                prop_assert_eq!(&r.moved, &want_moved);
                let ev: Vec<NodeId> = r.evicted.iter().map(|(id, _)| *id).collect();
                prop_assert_eq!(&ev, &want_evicted);
                // The member itself stays where it was, with its own k.
                prop_assert_eq!(t.is_relayed(n), on);
                prop_assert_eq!(t.parent(n), before.parent(n));
                prop_assert_eq!(t.depth(n), Some(before_depth[&n]));
                prop_assert_eq!(t.capacity(n), before.capacity(n));
                if on {
                    prop_assert!(t.children(n).is_empty());
                    check_rule5(&before, &before_depth, &t, &kids, &r)?;
                } else {
                    // Becoming reachable moves nobody.
                    prop_assert!(r.moved.is_empty() && r.evicted.is_empty());
                    prop_assert_eq!(t.children(n), &kids.ids[..]);
                }
                prop_assert_eq!(t.len() + r.evicted.len(), before.len());
            }
            Op::Stale(sel) => {
                if stale.is_empty() {
                    continue;
                }
                let s = stale[sel % stale.len()];
                prop_assert!(!t.contains(s));
                prop_assert_eq!(t.remove(s).err(), Some(TreeError::NoSuchNode));
                prop_assert_eq!(t.reconnect(s).err(), Some(TreeError::NoSuchNode));
                prop_assert_eq!(t.set_relayed(s, true).err(), Some(TreeError::NoSuchNode));
                prop_assert!(!t.is_relayed(s));
                prop_assert_eq!(t.set_peer(s, 7).err(), Some(TreeError::NoSuchNode));
                prop_assert_eq!(t.peer(s), None);
                prop_assert_eq!(t.parent(s), None);
                prop_assert_eq!(t.depth(s), None);
                prop_assert!(t.children(s).is_empty());
            }
        }
        for x in before.iter() {
            if !t.contains(x) {
                stale.push(x);
            }
        }
        before_depth = check_structure(&t)?;
        check_same(&t, &m)?;
    }
    Ok(t)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_follow_the_rules(
        root_cap in 0u32..=6,
        ops in prop::collection::vec(op(), 1..400),
    ) {
        run_ops(root_cap, &ops)?;
    }

}

proptest! {
    // Fewer cases: each runs hundreds of steps with O(n) reference checks.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Mostly joins, so the trees reach a few hundred nodes.
    #[test]
    fn large_trees_follow_the_rules(
        root_cap in 1u32..=6,
        ops in prop::collection::vec(
            prop_oneof![
                12 => join_op(1u32..=5, 0.1, 0.05),
                1 => any::<usize>().prop_map(Op::Remove),
                1 => any::<usize>().prop_map(Op::Reconnect),
                1 => set_relayed_op(),
            ],
            300..500,
        ),
    ) {
        run_ops(root_cap, &ops)?;
    }

    /// Mostly leaf-only peers and small roots: the tree is often full, so
    /// removals have to evict.
    #[test]
    fn full_trees_evict_only_what_does_not_fit(
        root_cap in 1u32..=3,
        ops in prop::collection::vec(
            prop_oneof![
                6 => join_op(prop::sample::select(vec![0u32, 0, 0, 1, 4]), 0.2, 0.1),
                3 => any::<usize>().prop_map(Op::Remove),
                1 => any::<usize>().prop_map(Op::Reconnect),
                2 => set_relayed_op(),
            ],
            1..200,
        ),
    ) {
        run_ops(root_cap, &ops)?;
    }

    /// Joins alone with uniform k >= 2 keep depth within 1 + ceil(log_k n).
    #[test]
    fn joins_keep_depth_logarithmic(
        k in 2u32..=5,
        extra in 0u32..=4,
        relays in prop::collection::vec(prop::bool::weighted(0.15), 1..600),
    ) {
        let mut t = Tree::new(0u32, k + extra);
        for (i, relay) in relays.iter().enumerate() {
            t.join(i as u32 + 1, k, *relay).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let n = (t.len() - 1) as u64;
            let mut log = 0u32;
            while u64::from(k).pow(log) < n {
                log += 1;
            }
            prop_assert!(t.max_depth() <= 1 + log, "n={} k={} depth={}", n, k, t.max_depth());
        }
        prop_assert!(t.check_invariants().is_ok());
    }

    /// Rule 8 undone: a member that was relayed and is reachable again
    /// takes children up to its own k. Leaf-only joiners fill the tree
    /// until it is full; then every node that is not relayed holds exactly
    /// its k children, the member included, and relayed nodes hold none.
    #[test]
    fn reachable_again_restores_capacity(
        root_cap in 1u32..=4,
        ops in prop::collection::vec(
            prop_oneof![
                6 => join_op(0u32..=4, 0.2, 0.2),
                1 => any::<usize>().prop_map(Op::Remove),
                1 => set_relayed_op(),
            ],
            1..80,
        ),
        sel in any::<usize>(),
    ) {
        let mut t = run_ops(root_cap, &ops)?;
        let mut live: Vec<NodeId> = t.iter().collect();
        live.sort();
        let n = live[sel % live.len()];
        let k = t.capacity(n).unwrap();
        if n != t.root() {
            t.set_relayed(n, true).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert!(t.children(n).is_empty());
        }
        let back = t.set_relayed(n, false).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(back.moved.is_empty() && back.evicted.is_empty());
        prop_assert_eq!(t.capacity(n), Some(k));
        let mut peer = 1_000_000u32;
        while t.join(peer, 0, false).is_ok() {
            peer += 1;
        }
        prop_assert!(t.check_invariants().is_ok());
        prop_assert_eq!(t.children(n).len() as u32, k);
        for x in t.iter() {
            let want = if t.is_relayed(x) { 0 } else { t.capacity(x).unwrap() };
            prop_assert_eq!(t.children(x).len() as u32, want, "node {:?}", x);
        }
    }
}

// ---------------------------------------------------------------------------
// Hand-made scenarios.
// ---------------------------------------------------------------------------

fn join(t: &mut Tree<u32>, peer: u32, cap: u32, relay: bool) -> Joined {
    let j = t.join(peer, cap, relay).expect("join");
    t.check_invariants().expect("invariants");
    j
}

#[test]
fn seed_scenario_is_breadth_first() {
    // Root k1 = 4, 30 peers with k = 2: parents in exact BFS order.
    let mut t = Tree::new(0u32, 4);
    let mut ids = vec![t.root()];
    for i in 1..=30u32 {
        let j = join(&mut t, i, 2, false);
        let want_parent = if i <= 4 { 0 } else { (i - 5) / 2 + 1 };
        assert_eq!(j.parent, ids[want_parent as usize], "peer {i}");
        assert_eq!(j.depth, t.depth(ids[want_parent as usize]).unwrap() + 1);
        assert_eq!(j.adopted, None);
        ids.push(j.node);
    }
    // 4 + 8 + 16 = 28 fill depths 1..=3; peers 29 and 30 open depth 4.
    assert_eq!(t.max_depth(), 4);
    assert_eq!(t.depth(ids[28]), Some(3));
    assert_eq!(t.depth(ids[29]), Some(4));
    assert_eq!(t.len(), 31);
}

#[test]
fn relays_win_ties_then_earliest() {
    let mut t = Tree::new(0u32, 3);
    let a = join(&mut t, 1, 1, false).node;
    let b = join(&mut t, 2, 1, true).node; // relay, capacity 1, at depth 1
    let c = join(&mut t, 3, 1, false).node;
    // depth-1 slots: a, b (relay), c. The relay is preferred.
    assert_eq!(join(&mut t, 4, 0, false).parent, b);
    assert_eq!(join(&mut t, 5, 0, false).parent, a);
    assert_eq!(join(&mut t, 6, 0, false).parent, c);
    assert_eq!(t.join(7, 0, false), Err(TreeError::TreeFull));
}

#[test]
fn rule4_relay_takes_a_shallow_leafs_place() {
    let mut t = Tree::new(0u32, 3);
    let a = join(&mut t, 1, 2, false).node;
    let b = join(&mut t, 2, 2, false).node;
    let c = join(&mut t, 3, 2, false).node;
    let x = join(&mut t, 4, 0, false).node; // under a
    assert_eq!(t.parent(x), Some(a));
    // Shallowest free slot: a (depth 1, newcomer depth 2). Leaves b and c at
    // depth 1 < 2, so a relay takes b's place (earliest leaf).
    let r = join(&mut t, 5, 3, true);
    assert_eq!(r.adopted, Some(b));
    assert_eq!(r.parent, t.root());
    assert_eq!(r.depth, 1);
    assert_eq!(t.children(t.root()), &[a, r.node, c]);
    assert_eq!(t.children(r.node), &[b]);
    assert_eq!(t.depth(b), Some(2));
    // The relay's free slots at depth 1 now win ties over a's.
    assert_eq!(join(&mut t, 6, 0, false).parent, r.node);
    // A relay with capacity 0 never adopts.
    let z = join(&mut t, 7, 0, true);
    assert_eq!(z.adopted, None);
}

#[test]
fn rule4_applies_even_when_the_tree_is_full() {
    let mut t = Tree::new(0u32, 1);
    let a = join(&mut t, 1, 0, false).node;
    assert_eq!(t.join(2, 4, false), Err(TreeError::TreeFull));
    let r = join(&mut t, 3, 4, true);
    assert_eq!(r.adopted, Some(a));
    assert_eq!(t.children(t.root()), &[r.node]);
    assert_eq!(t.children(r.node), &[a]);
}

#[test]
fn remove_mid_node_replaces_children_with_their_subtrees() {
    // root(2) -> [a(2) -> [c(1) -> e(0), d(1) -> f(0)], b(1) -> g(1)]
    let mut t = Tree::new(0u32, 2);
    let a = join(&mut t, 1, 2, false).node;
    let b = join(&mut t, 2, 1, false).node;
    let c = join(&mut t, 3, 1, false).node;
    let d = join(&mut t, 4, 1, false).node;
    let g = join(&mut t, 5, 1, false).node;
    let e = join(&mut t, 6, 0, false).node;
    let f = join(&mut t, 7, 0, false).node;
    assert_eq!(t.children(a), &[c, d]);
    assert_eq!(t.children(b), &[g]);
    assert_eq!(t.children(c), &[e]);
    assert_eq!(t.children(d), &[f]);
    let r = t.remove(a).unwrap();
    t.check_invariants().unwrap();
    // c (earliest) takes the slot a freed at the root; the only slot left
    // for d is under g, at depth 2, and f comes along.
    assert_eq!(
        r.moved,
        vec![
            Moved {
                node: c,
                parent: t.root(),
                depth: 1
            },
            Moved {
                node: d,
                parent: g,
                depth: 3
            },
        ]
    );
    assert!(r.evicted.is_empty());
    assert_eq!(t.children(t.root()), &[b, c]);
    assert_eq!(t.children(c), &[e]);
    assert_eq!(t.children(d), &[f]);
    assert_eq!(t.depth(f), Some(4));
    assert_eq!(t.max_depth(), 4);
    assert!(!t.contains(a));
    assert_eq!(t.remove(a).err(), Some(TreeError::NoSuchNode));
}

#[test]
fn remove_moves_relay_children_first_and_evicts_when_full() {
    // root(1) -> a(3) -> [x(0), y(0), r(0, relay)]: removing a frees one slot.
    let mut t = Tree::new(0u32, 1);
    let a = join(&mut t, 1, 3, false).node;
    let x = join(&mut t, 2, 0, false).node;
    let y = join(&mut t, 3, 0, false).node;
    let r = join(&mut t, 4, 0, true).node;
    let rm = t.remove(a).unwrap();
    t.check_invariants().unwrap();
    assert_eq!(
        rm.moved,
        vec![Moved {
            node: r,
            parent: t.root(),
            depth: 1
        }]
    );
    assert_eq!(rm.evicted, vec![(x, 2), (y, 3)]);
    assert_eq!(t.len(), 2);
}

#[test]
fn remove_places_children_that_bring_slots_first() {
    // root(1) -> a(3) -> [x(0, relay), y(0), r(2, relay)]: removing a frees
    // one slot. r is the latest, but only r can host its siblings, so it goes
    // first and nobody is evicted (relays-then-earliest would evict r and y).
    let mut t = Tree::new(0u32, 1);
    let a = join(&mut t, 1, 3, false).node;
    let x = join(&mut t, 2, 0, true).node;
    let y = join(&mut t, 3, 0, false).node;
    let r = join(&mut t, 4, 2, true).node;
    assert_eq!(t.parent(r), Some(a));
    let rm = t.remove(a).unwrap();
    t.check_invariants().unwrap();
    assert_eq!(
        rm.moved,
        vec![
            Moved {
                node: r,
                parent: t.root(),
                depth: 1
            },
            Moved {
                node: x,
                parent: r,
                depth: 2
            },
            Moved {
                node: y,
                parent: r,
                depth: 2
            },
        ]
    );
    assert!(rm.evicted.is_empty());
    assert_eq!(t.len(), 4);
}

#[test]
fn eviction_cascades_only_while_the_tree_is_full() {
    // root(1) -> a(2) -> [b(0), c(1) -> d(1) -> e(0)]. Removing a: b takes the
    // root's slot (earliest); c fits nowhere and is evicted alone, then its
    // child d is tried, and so on: nothing frees a slot, so all three go.
    let mut t = Tree::new(0u32, 1);
    let a = join(&mut t, 1, 2, false).node;
    let b = join(&mut t, 2, 0, false).node;
    let c = join(&mut t, 3, 1, false).node;
    let d = join(&mut t, 4, 1, false).node;
    let e = join(&mut t, 5, 0, false).node;
    assert_eq!(t.parent(e), Some(d));
    let rm = t.remove(a).unwrap();
    t.check_invariants().unwrap();
    assert_eq!(
        rm.moved,
        vec![Moved {
            node: b,
            parent: t.root(),
            depth: 1
        }]
    );
    assert_eq!(rm.evicted, vec![(c, 3), (d, 4), (e, 5)]);
}

#[test]
fn tree_full_changes_nothing() {
    let mut t = Tree::new(0u32, 2);
    let a = join(&mut t, 1, 0, false).node;
    let b = join(&mut t, 2, 0, true).node;
    let before: Vec<_> = t.children(t.root()).to_vec();
    assert_eq!(t.join(3, 5, false), Err(TreeError::TreeFull));
    assert_eq!(t.join(4, 0, true), Err(TreeError::TreeFull));
    assert_eq!(t.children(t.root()), &before[..]);
    assert_eq!(t.len(), 3);
    assert_eq!(t.shallowest_free_slot_depth(), None);
    // No other parent for a: reconnect fails and a stays put.
    assert_eq!(t.reconnect(a), Err(TreeError::TreeFull));
    assert_eq!(t.children(t.root()), &[a, b]);
    t.check_invariants().unwrap();
    let mut empty = Tree::new(0u32, 0);
    assert_eq!(empty.join(1, 3, false), Err(TreeError::TreeFull));
    assert_eq!(empty.join(1, 3, true), Err(TreeError::TreeFull));
}

#[test]
fn reconnect_picks_another_parent_and_keeps_the_subtree() {
    let mut t = Tree::new(0u32, 2);
    let a = join(&mut t, 1, 2, false).node;
    let b = join(&mut t, 2, 2, false).node;
    let c = join(&mut t, 3, 1, false).node; // under a
    let d = join(&mut t, 4, 0, false).node; // under c? no: b has slots at depth 1
    assert_eq!(t.parent(c), Some(a));
    assert_eq!(t.parent(d), Some(a));
    let e = join(&mut t, 5, 0, false).node;
    assert_eq!(t.parent(e), Some(b));
    // c's best other slot: b (depth 1), not a, not inside c's subtree.
    let mv = t.reconnect(c).unwrap();
    assert_eq!(
        mv,
        Moved {
            node: c,
            parent: b,
            depth: 2
        }
    );
    t.check_invariants().unwrap();
    assert_eq!(t.reconnect(t.root()), Err(TreeError::IsRoot));
    assert_eq!(t.remove(t.root()).err(), Some(TreeError::IsRoot));
}

#[test]
fn stale_ids_are_rejected_after_slot_reuse() {
    let mut t = Tree::new("root", 2);
    let a = t.join("a", 1, false).unwrap().node;
    t.remove(a).unwrap();
    let b = t.join("b", 1, false).unwrap().node;
    assert_ne!(a, b);
    assert!(!t.contains(a));
    assert_eq!(t.peer(a), None);
    assert_eq!(t.peer(b), Some(&"b"));
    assert_eq!(t.set_peer(a, "x"), Err(TreeError::NoSuchNode));
    t.set_peer(t.root(), "reclaimed").unwrap();
    assert_eq!(t.peer(t.root()), Some(&"reclaimed"));
    assert!(!t.is_empty());
}

#[test]
fn relayed_member_hands_its_children_on_and_stays() {
    // root(2) -> [a(2) -> [c(1), d(0)], b(2)]
    let mut t = Tree::new(0u32, 2);
    let a = join(&mut t, 1, 2, false).node;
    let b = join(&mut t, 2, 2, false).node;
    let c = join(&mut t, 3, 1, false).node;
    let d = join(&mut t, 4, 0, false).node;
    assert_eq!(t.children(a), &[c, d]);
    let r = t.set_relayed(a, true).unwrap();
    t.check_invariants().unwrap();
    // As if a had died: c brings a free slot, so it goes first; both land
    // under b, the only node with free slots at depth 1.
    assert_eq!(
        r.moved,
        vec![
            Moved {
                node: c,
                parent: b,
                depth: 2
            },
            Moved {
                node: d,
                parent: b,
                depth: 2
            },
        ]
    );
    assert!(r.evicted.is_empty());
    // a stays where it was, keeps its k, and has no children.
    assert_eq!(t.parent(a), Some(t.root()));
    assert_eq!(t.depth(a), Some(1));
    assert!(t.is_relayed(a));
    assert!(t.children(a).is_empty());
    assert_eq!(t.capacity(a), Some(2));
    // A newcomer goes under c at depth 3 rather than under a at depth 2.
    let e = join(&mut t, 5, 0, false);
    assert_eq!((e.parent, e.depth), (c, 3));
    // Reachable again: a's own slots at depth 1 win, and nobody moved.
    let back = t.set_relayed(a, false).unwrap();
    assert!(back.moved.is_empty() && back.evicted.is_empty());
    assert!(!t.is_relayed(a));
    assert_eq!(join(&mut t, 6, 0, false).parent, a);
    assert_eq!(join(&mut t, 7, 0, false).parent, a);
    assert_eq!(t.set_relayed(t.root(), true), Err(TreeError::IsRoot));
    assert!(
        t.set_relayed(t.root(), false).is_ok(),
        "a no-op for the root"
    );
}

#[test]
fn relayed_relay_joins_as_a_leaf() {
    // The rule-4 setting: root(3) -> [a(2) -> x, b(2), c(2)]; a plain relay
    // would take b's place.
    let mut t = Tree::new(0u32, 3);
    let a = join(&mut t, 1, 2, false).node;
    let _b = join(&mut t, 2, 2, false).node;
    let _c = join(&mut t, 3, 2, false).node;
    let x = join(&mut t, 4, 0, false).node;
    assert_eq!(t.parent(x), Some(a));
    let r = t
        .join_as(
            5,
            Newcomer {
                capacity: 3,
                relay: true,
                relayed: true,
            },
        )
        .unwrap();
    t.check_invariants().unwrap();
    assert_eq!((r.parent, r.depth, r.adopted), (a, 2, None));
    assert!(t.is_relayed(r.node));
    // Four more slots (b's and c's); none of them is the relayed relay's.
    for p in 6..=9 {
        assert_ne!(join(&mut t, p, 0, false).parent, r.node);
    }
    assert_eq!(t.join(10, 0, false), Err(TreeError::TreeFull));
    assert!(t.children(r.node).is_empty());
}

#[test]
fn relayed_member_in_a_full_tree_evicts_what_fits_nowhere() {
    // root(2) -> [a(2) -> [b(0), c(1) -> d(0)], e(1)]; f under e leaves, so
    // e's one slot is the only free slot in the tree.
    let mut t = Tree::new(0u32, 2);
    let a = join(&mut t, 1, 2, false).node;
    let e = join(&mut t, 2, 1, false).node;
    let b = join(&mut t, 3, 0, false).node;
    let c = join(&mut t, 4, 1, false).node;
    let f = join(&mut t, 5, 0, false).node;
    let d = join(&mut t, 6, 0, false).node;
    assert_eq!(t.parent(f), Some(e));
    assert_eq!(t.parent(d), Some(c));
    t.remove(f).unwrap();
    let r = t.set_relayed(a, true).unwrap();
    t.check_invariants().unwrap();
    // b (earliest) takes e's slot; c and then its child d fit nowhere.
    assert_eq!(
        r.moved,
        vec![Moved {
            node: b,
            parent: e,
            depth: 2
        }]
    );
    assert_eq!(r.evicted, vec![(c, 4), (d, 6)]);
    assert!(t.contains(a) && t.is_relayed(a));
    assert_eq!(t.len(), 4);
}
