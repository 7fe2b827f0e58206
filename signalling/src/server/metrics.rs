//! `/metrics` in the Prometheus text format.
//!
//! Counters are updated as events happen; the gauges (peers, trees, depth,
//! connections, memory) are read from the registry at scrape time, so nothing
//! on the request path has to keep them in step.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::registry::Gauges;
use crate::protocol::ErrorCode;

pub(crate) use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type CodeLabel = Vec<(&'static str, &'static str)>;

/// Why a WebSocket upgrade was turned away before it became a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client's address already had `max_conns_per_ip` open (HTTP 429).
    PerIpLimit,
    /// A browser page from an origin not on `allowed_origins` (HTTP 403).
    Origin,
}

impl Refusal {
    const ALL: [Refusal; 2] = [Refusal::PerIpLimit, Refusal::Origin];

    fn label(self) -> CodeLabel {
        let reason = match self {
            Refusal::PerIpLimit => "per-ip-limit",
            Refusal::Origin => "origin",
        };
        vec![("reason", reason)]
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    pub joins: Counter,
    errors: Family<CodeLabel, Counter>,
    refused: Family<CodeLabel, Counter>,
    peers: Gauge,
    trees: Gauge,
    max_depth: Gauge,
    connections: Gauge,
    rss: Gauge,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::default();
        let m = Parts {
            joins: Counter::default(),
            errors: Family::default(),
            refused: Family::default(),
            peers: Gauge::default(),
            trees: Gauge::default(),
            max_depth: Gauge::default(),
            connections: Gauge::default(),
            rss: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "peer_tree_peers",
            "Peers in trees, sources included",
            m.peers.clone(),
        );
        r.register("peer_tree_trees", "Open trees", m.trees.clone());
        r.register("peer_tree_joins", "Successful joins", m.joins.clone());
        r.register(
            "peer_tree_errors",
            "Error replies sent, by protocol error code",
            m.errors.clone(),
        );
        r.register(
            "peer_tree_refused",
            "WebSocket upgrades refused before the connection became a peer, by reason",
            m.refused.clone(),
        );
        r.register(
            "peer_tree_max_depth",
            "Deepest peer over all trees",
            m.max_depth.clone(),
        );
        r.register(
            "peer_tree_connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            m.rss.clone(),
        );
        // Show every code from the start, so a dashboard sees 0 rather than nothing.
        for code in ErrorCode::ALL {
            let _ = m.errors.get_or_create(&vec![("code", code.as_str())]);
        }
        for reason in Refusal::ALL {
            let _ = m.refused.get_or_create(&reason.label());
        }
        Metrics {
            registry,
            joins: m.joins,
            errors: m.errors,
            refused: m.refused,
            peers: m.peers,
            trees: m.trees,
            max_depth: m.max_depth,
            connections: m.connections,
            rss: m.rss,
        }
    }

    pub(super) fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&vec![("code", code.as_str())])
            .inc();
    }

    pub(super) fn refused(&self, reason: Refusal) {
        self.refused.get_or_create(&reason.label()).inc();
    }

    pub(super) fn render(&self, g: &Gauges) -> String {
        self.peers.set(g.peers_in_trees as i64);
        self.trees.set(g.trees as i64);
        self.max_depth.set(i64::from(g.max_depth));
        self.connections.set(g.connections as i64);
        self.rss.set(resident_bytes().unwrap_or(0) as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The metric handles before they are registered (they are cheap `Arc` clones).
struct Parts {
    joins: Counter,
    errors: Family<CodeLabel, Counter>,
    refused: Family<CodeLabel, Counter>,
    peers: Gauge,
    trees: Gauge,
    max_depth: Gauge,
    connections: Gauge,
    rss: Gauge,
}

/// Resident set size from /proc (Linux); `None` elsewhere.
pub(super) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
