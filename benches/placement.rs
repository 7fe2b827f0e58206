//! Placement cost of the tree model (`signalling::tree`) against the seed's
//! placement (a breadth-first walk from the root on every join).
//!
//! `cargo bench --bench placement` prints a table (medians of repeated timed
//! batches) for n = 1e4, 1e5 and 1e6 peers with k1 = 10, k = 4 and 1% relays:
//!
//! - build:  n joins into an empty tree, ns per join;
//! - join:   further joins into a tree of n peers (undone untimed between
//!   batches, so the size stays n);
//! - churn:  a random non-root peer leaves (mostly leaves, as in reality) and
//!   a newcomer joins, ns per leave+join pair;
//! - churn-d1: a depth-1 peer leaves (its subtree holds ~n/10 peers, re-placed
//!   whole) and a newcomer joins, ns per pair.
//!
//! The seed's walk is O(n) per join, so at 1e5 and 1e6 only a bounded number
//! of its joins are timed, on a tree built directly in breadth-first order
//! (the shape its walk produces). After the table, criterion measures the
//! 1e4 and 1e5 cases again with its own statistics.
//!
//! Without `--bench` (e.g. `cargo test --benches`) everything runs once at
//! small sizes as a smoke test.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use signalling::tree::{NodeId, Tree};

const K1: u32 = 10;
const K: u32 = 4;
/// One peer in this many is a relay.
const RELAY_EVERY: u64 = 100;

/// SplitMix64: a few lines instead of a dev-dependency on `rand` for the root
/// package; the benchmark only needs cheap reproducible indices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    fn relay(&mut self) -> bool {
        self.below(RELAY_EVERY as usize) == 0
    }
}

// ---------------------------------------------------------------------------
// The model under test, with the bookkeeping a server would have.
// ---------------------------------------------------------------------------

struct Bench {
    tree: Tree<u32>,
    /// Live non-root nodes, for picking a random one; ids of nodes that were
    /// evicted are dropped lazily when picked.
    live: Vec<NodeId>,
    rng: Rng,
    next_peer: u32,
}

impl Bench {
    fn new(seed: u64) -> Self {
        Bench {
            tree: Tree::new(0, K1),
            live: Vec::new(),
            rng: Rng(seed),
            next_peer: 1,
        }
    }

    #[inline]
    fn join(&mut self) -> NodeId {
        let relay = self.rng.relay();
        self.next_peer = self.next_peer.wrapping_add(1);
        match self.tree.join(self.next_peer, K, relay) {
            Ok(j) => {
                self.live.push(j.node);
                j.node
            }
            Err(e) => panic!("join failed with free capacity: {e}"),
        }
    }

    fn build(n: usize, seed: u64) -> Self {
        let mut b = Bench::new(seed);
        b.live.reserve(n);
        for _ in 0..n {
            b.join();
        }
        b
    }

    /// Removes the node at `live[i]`; returns false for an id gone stale.
    #[inline]
    fn remove_at(&mut self, i: usize) -> bool {
        let id = self.live.swap_remove(i);
        match self.tree.remove(id) {
            Ok(r) => {
                black_box(&r);
                true
            }
            Err(_) => false,
        }
    }

    #[inline]
    fn remove_random(&mut self) {
        loop {
            let i = self.rng.below(self.live.len());
            if self.remove_at(i) {
                return;
            }
        }
    }

    /// Undo `count` joins (the newest ids), untimed.
    fn undo(&mut self, count: usize) {
        for _ in 0..count {
            let i = self.live.len() - 1;
            self.remove_at(i);
        }
    }

    fn remove_depth1(&mut self) {
        let kids = self.tree.children(self.tree.root());
        let id = kids[self.rng.below(kids.len())];
        let r = self.tree.remove(id).expect("depth-1 node is live");
        black_box(&r);
    }
}

// ---------------------------------------------------------------------------
// The seed's placement: breadth-first walk from the root on every join.
// ---------------------------------------------------------------------------

struct Seed {
    parent: Vec<u32>,
    children: Vec<Vec<u32>>,
    cap: Vec<u32>,
    alive: Vec<bool>,
    free: Vec<u32>,
    queue: VecDeque<u32>,
    live: Vec<u32>,
}

impl Seed {
    /// A tree of `n` peers in the shape the seed's walk produces, built
    /// directly (walking for each of them would take O(n^2)).
    fn build_direct(n: usize) -> Self {
        let mut s = Seed {
            parent: vec![u32::MAX],
            children: vec![Vec::new()],
            cap: vec![K1],
            alive: vec![true],
            free: Vec::new(),
            queue: VecDeque::new(),
            live: Vec::new(),
        };
        let mut cursor = 0usize;
        for _ in 0..n {
            while s.children[cursor].len() as u32 >= s.cap[cursor] {
                cursor += 1;
            }
            let i = s.alloc(K);
            s.attach(i, cursor as u32);
        }
        s
    }

    fn alloc(&mut self, cap: u32) -> u32 {
        let i = match self.free.pop() {
            Some(i) => {
                self.cap[i as usize] = cap;
                self.alive[i as usize] = true;
                i
            }
            None => {
                self.parent.push(u32::MAX);
                self.children.push(Vec::new());
                self.cap.push(cap);
                self.alive.push(true);
                (self.parent.len() - 1) as u32
            }
        };
        self.live.push(i);
        i
    }

    fn attach(&mut self, c: u32, p: u32) {
        self.parent[c as usize] = p;
        self.children[p as usize].push(c);
    }

    /// The seed's placement: the first node in breadth-first order with a
    /// free slot.
    fn place(&mut self) -> Option<u32> {
        self.queue.clear();
        self.queue.push_back(0);
        while let Some(i) = self.queue.pop_front() {
            let kids = &self.children[i as usize];
            if (kids.len() as u32) < self.cap[i as usize] {
                return Some(i);
            }
            self.queue.extend(kids.iter().copied());
        }
        None
    }

    fn join(&mut self) -> u32 {
        let p = self.place().expect("free slot");
        let i = self.alloc(K);
        self.attach(i, p);
        i
    }

    /// The seed's leave: each orphan is placed again by the walk (its own
    /// subtree is detached, hence never visited).
    fn remove(&mut self, x: u32) {
        let p = self.parent[x as usize];
        self.children[p as usize].retain(|&c| c != x);
        let kids = std::mem::take(&mut self.children[x as usize]);
        self.alive[x as usize] = false;
        self.free.push(x);
        for c in kids {
            if let Some(np) = self.place() {
                self.attach(c, np);
            }
        }
    }

    fn remove_random(&mut self, rng: &mut Rng) {
        loop {
            let i = rng.below(self.live.len());
            let x = self.live.swap_remove(i);
            if self.alive[x as usize] {
                self.remove(x);
                return;
            }
        }
    }

    fn undo(&mut self, count: usize) {
        for _ in 0..count {
            if let Some(x) = self.live.pop() {
                if self.alive[x as usize] {
                    self.remove(x);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Timing helpers.
// ---------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ns_per(d: Duration, ops: usize) -> f64 {
    d.as_nanos() as f64 / ops as f64
}

struct Row {
    case: &'static str,
    n: usize,
    ns: f64,
    base_ns: Option<f64>,
    note: String,
}

struct Plan {
    sizes: Vec<usize>,
    build_reps: fn(usize) -> usize,
    samples: usize,
    batch: fn(usize) -> usize,
    d1_ops: usize,
    seed_ops: fn(usize) -> usize,
    seed_build_max: usize,
}

fn measure(plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in &plan.sizes {
        // (a) build
        let mut samples = Vec::new();
        let mut built = None;
        for rep in 0..(plan.build_reps)(n) {
            let t = Instant::now();
            let b = Bench::build(n, 7 + rep as u64);
            samples.push(ns_per(t.elapsed(), n));
            built = Some(b);
        }
        let mut b = built.expect("at least one build");
        let base = (n <= plan.seed_build_max).then(|| {
            let t = Instant::now();
            let mut s = Seed::build_direct(0);
            for _ in 0..n {
                s.join();
            }
            black_box(&s.children);
            ns_per(t.elapsed(), n)
        });
        rows.push(Row {
            case: "build",
            n,
            ns: median(samples),
            base_ns: base,
            note: format!("height {}", b.tree.max_depth()),
        });

        // (b) further joins at size n
        let batch = (plan.batch)(n);
        let mut samples = Vec::new();
        for _ in 0..plan.samples {
            let t = Instant::now();
            for _ in 0..batch {
                b.join();
            }
            samples.push(ns_per(t.elapsed(), batch));
            b.undo(batch);
        }
        let mut seed = Seed::build_direct(n);
        let seed_ops = (plan.seed_ops)(n);
        let t = Instant::now();
        for _ in 0..seed_ops {
            seed.join();
        }
        let base = ns_per(t.elapsed(), seed_ops);
        seed.undo(seed_ops);
        rows.push(Row {
            case: "join",
            n,
            ns: median(samples),
            base_ns: Some(base),
            note: format!("batches of {batch}"),
        });

        // (c) churn: random leave + join
        let mut samples = Vec::new();
        for _ in 0..plan.samples {
            let t = Instant::now();
            for _ in 0..batch {
                b.remove_random();
                b.join();
            }
            samples.push(ns_per(t.elapsed(), batch));
        }
        let mut rng = Rng(99);
        let t = Instant::now();
        for _ in 0..seed_ops {
            seed.remove_random(&mut rng);
            seed.join();
        }
        let base = ns_per(t.elapsed(), seed_ops);
        rows.push(Row {
            case: "churn",
            n,
            ns: median(samples),
            base_ns: Some(base),
            note: format!("leave+join pairs, height now {}", b.tree.max_depth()),
        });

        // (c') a depth-1 peer leaves: its ~n/10-peer subtree is re-placed.
        let h0 = b.tree.max_depth();
        let mut samples = Vec::with_capacity(plan.d1_ops);
        for _ in 0..plan.d1_ops {
            let t = Instant::now();
            b.remove_depth1();
            b.join();
            samples.push(ns_per(t.elapsed(), 1));
        }
        let d1 = seed.children[0].clone();
        let ops = seed_ops.min(d1.len());
        let t = Instant::now();
        for &x in d1.iter().take(ops) {
            seed.remove(x);
            seed.join();
        }
        let base = ns_per(t.elapsed(), ops.max(1));
        rows.push(Row {
            case: "churn-d1",
            n,
            ns: median(samples),
            base_ns: Some(base),
            note: format!(
                "{} pairs, height {} -> {}",
                plan.d1_ops,
                h0,
                b.tree.max_depth()
            ),
        });
        if let Err(e) = b.tree.check_invariants() {
            panic!("tree inconsistent after the benchmark: {e}");
        }
    }
    rows
}

fn print_table(rows: &[Row]) {
    println!();
    println!("placement: k1 = {K1}, k = {K}, 1 in {RELAY_EVERY} peers a relay; medians");
    println!(
        "{:<9} {:>9} {:>10} {:>12} {:>13} {:>9}  note",
        "case", "n", "ns/op", "ops/s", "seed ns/op", "speedup"
    );
    for r in rows {
        let (base, ratio) = match r.base_ns {
            Some(b) => (format!("{b:.0}"), format!("{:.0}x", b / r.ns)),
            None => ("n/a".to_string(), "-".to_string()),
        };
        println!(
            "{:<9} {:>9} {:>10.1} {:>12.0} {:>13} {:>9}  {}",
            r.case,
            r.n,
            r.ns,
            1e9 / r.ns,
            base,
            ratio,
            r.note
        );
    }
    println!();
}

// ---------------------------------------------------------------------------
// Criterion: the 1e4 and 1e5 cases with criterion's own statistics.
// ---------------------------------------------------------------------------

/// Times `iters` joins in chunks of at most n/10, undoing each chunk
/// untimed, so the tree stays near size n however many iterations criterion
/// asks for.
fn joins_in_chunks<T, R>(
    state: &mut T,
    iters: u64,
    n: usize,
    join: impl Fn(&mut T) -> R,
    undo: impl Fn(&mut T, usize),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let chunk = left.min(n / 10).max(1);
        let t = Instant::now();
        for _ in 0..chunk {
            black_box(join(state));
        }
        total += t.elapsed();
        undo(state, chunk);
        left -= chunk;
    }
    total
}

fn criterion_benches(c: &mut Criterion, sizes: &[usize]) {
    let mut g = c.benchmark_group("placement");
    g.throughput(Throughput::Elements(1));
    for &n in sizes {
        let mut b = Bench::build(n, 11);
        g.bench_function(BenchmarkId::new("join", n), |bencher| {
            bencher.iter_custom(|iters| joins_in_chunks(&mut b, iters, n, Bench::join, Bench::undo))
        });
        g.bench_function(BenchmarkId::new("churn", n), |bencher| {
            bencher.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    b.remove_random();
                    b.join();
                }
                t.elapsed()
            })
        });
        let mut seed = Seed::build_direct(n);
        g.bench_function(BenchmarkId::new("seed-join", n), |bencher| {
            bencher
                .iter_custom(|iters| joins_in_chunks(&mut seed, iters, n, Seed::join, Seed::undo))
        });
    }
    g.finish();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench_mode = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let plan = if bench_mode {
        Plan {
            sizes: vec![10_000, 100_000, 1_000_000],
            build_reps: |n| if n >= 1_000_000 { 3 } else { 7 },
            samples: 21,
            batch: |n| (n / 10).min(20_000),
            d1_ops: 200,
            seed_ops: |n| (20_000_000 / n).clamp(20, 2_000),
            seed_build_max: 10_000,
        }
    } else {
        Plan {
            sizes: vec![1_000],
            build_reps: |_| 1,
            samples: 3,
            batch: |n| n / 10,
            d1_ops: 10,
            seed_ops: |_| 10,
            seed_build_max: 1_000,
        }
    };
    let t = Instant::now();
    let rows = measure(&plan);
    print_table(&rows);
    eprintln!("table measured in {:.1?}", t.elapsed());

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    let sizes: &[usize] = if bench_mode {
        &[10_000, 100_000]
    } else {
        &[1_000]
    };
    criterion_benches(&mut c, sizes);
    c.final_summary();
    // Repeat the table last so it is not buried under criterion's output.
    print_table(&rows);
}
