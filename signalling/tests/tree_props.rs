//! Property tests of the placement model (`signalling::tree`) against a
//! brute-force reference that rescans every node for every decision, plus
//! small hand-made scenarios.

use std::collections::{HashMap, HashSet, VecDeque};

use proptest::prelude::*;
use signalling::tree::{Joined, Moved, NodeId, Tree, TreeError};

// ---------------------------------------------------------------------------
// The reference: the same rules, decided by scanning all nodes.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct MNode {
    parent: Option<NodeId>,
    children: Vec<NodeId>,
    cap: u32,
    relay: bool,
    seq: u64,
    peer: u32,
}

#[derive(Clone, Debug)]
struct Model {
    root: NodeId,
    nodes: HashMap<NodeId, MNode>,
    next_seq: u64,
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
            .filter(|(n, _)| {
                let m = &self.nodes[n];
                (m.children.len() as u32) < m.cap
            })
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
    fn expect_join(&self, cap: u32, relay: bool) -> Result<Joined, TreeError> {
        let slot = self.best_slot(None);
        if relay && cap >= 1 {
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

    fn apply_join(&mut self, j: &Joined, cap: u32, relay: bool, peer: u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.nodes.insert(
            j.node,
            MNode {
                parent: None,
                children: vec![],
                cap,
                relay,
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
        (m.children.len() as u32) < m.cap || m.children.iter().any(|c| self.has_free_slot(*c))
    }

    fn release(&mut self, n: NodeId, queue: &mut VecDeque<NodeId>) {
        let gone = self.nodes.remove(&n).unwrap();
        let mut kids = gone.children;
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
        .filter(|(n, _)| (t.children(**n).len() as u32) < t.capacity(**n).unwrap())
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
    Join {
        cap: u32,
        relay: bool,
    },
    Remove(usize),
    Reconnect(usize),
    /// An operation on an id that is no longer in the tree.
    Stale(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u32..=5, prop::bool::weighted(0.2)).prop_map(|(cap, relay)| Op::Join { cap, relay }),
        2 => any::<usize>().prop_map(Op::Remove),
        2 => any::<usize>().prop_map(Op::Reconnect),
        1 => any::<usize>().prop_map(Op::Stale),
    ]
}

fn run_ops(root_cap: u32, ops: &[Op]) -> Result<(), TestCaseError> {
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
            Op::Join { cap, relay } => {
                let peer = next_peer;
                next_peer += 1;
                let want = m.expect_join(cap, relay);
                let got = t.join(peer, cap, relay);
                match (want, got) {
                    (Err(w), Err(g)) => {
                        prop_assert_eq!(w, g);
                        check_same(&t, &m)?;
                    }
                    (Ok(w), Ok(g)) => {
                        prop_assert!(!before.contains(g.node));
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
                        m.apply_join(&g, cap, relay, peer);
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
                let kids: Vec<NodeId> = before.children(n).to_vec();
                let seq_of: HashMap<NodeId, u64> =
                    kids.iter().map(|c| (*c, m.nodes[c].seq)).collect();
                let brings_slot: HashMap<NodeId, bool> =
                    kids.iter().map(|c| (*c, m.has_free_slot(*c))).collect();
                let (want_moved, want_evicted) = m.remove(n);
                let r = t
                    .remove(n)
                    .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                prop_assert!(!t.contains(n));
                prop_assert_eq!(&r.moved, &want_moved);
                let ev: Vec<NodeId> = r.evicted.iter().map(|(id, _)| *id).collect();
                prop_assert_eq!(&ev, &want_evicted);
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
                // Every moved subtree came whole: nodes below its top kept
                // their parent, and depths shifted uniformly.
                for mv in &r.moved {
                    prop_assert_eq!(t.parent(mv.node), Some(mv.parent));
                    prop_assert_eq!(t.depth(mv.node), Some(mv.depth));
                    let shift = i64::from(mv.depth) - i64::from(before_depth[&mv.node]);
                    for d in descendants(&before, mv.node) {
                        if d != mv.node {
                            prop_assert_eq!(t.parent(d), before.parent(d));
                        }
                        prop_assert_eq!(
                            i64::from(t.depth(d).unwrap()),
                            i64::from(before_depth[&d]) + shift
                        );
                    }
                    // Never under its own subtree.
                    prop_assert!(!descendants(&before, mv.node).contains(&mv.parent));
                }
                // Evicted only when the tree had no slot left.
                if !r.evicted.is_empty() {
                    prop_assert_eq!(t.shallowest_free_slot_depth(), None);
                }
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
            Op::Stale(sel) => {
                if stale.is_empty() {
                    continue;
                }
                let s = stale[sel % stale.len()];
                prop_assert!(!t.contains(s));
                prop_assert_eq!(t.remove(s).err(), Some(TreeError::NoSuchNode));
                prop_assert_eq!(t.reconnect(s).err(), Some(TreeError::NoSuchNode));
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
    Ok(())
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
                12 => (1u32..=5, prop::bool::weighted(0.1))
                    .prop_map(|(cap, relay)| Op::Join { cap, relay }),
                1 => any::<usize>().prop_map(Op::Remove),
                1 => any::<usize>().prop_map(Op::Reconnect),
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
                6 => (prop::sample::select(vec![0u32, 0, 0, 1, 4]), prop::bool::weighted(0.2))
                    .prop_map(|(cap, relay)| Op::Join { cap, relay }),
                3 => any::<usize>().prop_map(Op::Remove),
                1 => any::<usize>().prop_map(Op::Reconnect),
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
