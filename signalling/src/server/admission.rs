//! Who may open a WebSocket: the per-address limit, the Origin allow-list,
//! the first-request deadline (`guard`), and the answers given to those
//! turned away.

pub(crate) mod guard;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::debug;

use super::metrics::{Metrics, Refusal};
use super::ServerConfig;

/// Origin first, then the per-address count: a request refused for its
/// origin must not take one of its address's slots. `Ok` holds the
/// connection's slot (none when there is no limit); a refusal is counted
/// and logged here, and answered with [`refusal_response`].
pub(crate) fn admit(
    cfg: &ServerConfig,
    ip_counts: &IpCounts,
    metrics: &Metrics,
    from: SocketAddr,
    headers: &HeaderMap,
) -> Result<Option<IpSlot>, Refusal> {
    if !origin_allowed(&cfg.allowed_origins, headers) {
        metrics.refused(Refusal::Origin);
        debug!(%from, origin = ?headers.get(header::ORIGIN), "WebSocket refused: origin not allowed");
        return Err(Refusal::Origin);
    }
    if cfg.max_conns_per_ip == 0 {
        return Ok(None);
    }
    match ip_counts.acquire(from.ip(), cfg.max_conns_per_ip) {
        Some(slot) => Ok(Some(slot)),
        None => {
            metrics.refused(Refusal::PerIpLimit);
            debug!(%from, "WebSocket refused: per-address connection limit reached");
            Err(Refusal::PerIpLimit)
        }
    }
}

/// What a refused upgrade is told.
pub(crate) fn refusal_response(why: Refusal, cfg: &ServerConfig) -> Response {
    match why {
        Refusal::Origin => refusal(
            StatusCode::FORBIDDEN,
            "WebSocket refused: this page's origin is not allowed to use this signalling server\n"
                .to_owned(),
        ),
        Refusal::PerIpLimit => refusal(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "WebSocket refused: {} connections from your address are already open, \
                 the most this server allows; close one and try again\n",
                cfg.max_conns_per_ip
            ),
        ),
    }
}

/// WebSockets count towards `max_conns_per_ip`, plain HTTP does not (raw
/// TCP connections have a looser cap of their own, see `Incoming`): a
/// WebSocket is what holds the server's resources for minutes or hours (a
/// peer entry, a tree slot, its outgoing queue, a ping timer), and the
/// refusal can be a clear HTTP 429 on the upgrade request. An HTTP request
/// is answered from memory and over; counting those connections too would
/// charge a browser's parallel page and script fetches against the same
/// budget as its one WebSocket, yet give no clear place to say no (a
/// connection is counted before any request on it can be answered).
#[derive(Clone, Default)]
pub(crate) struct IpCounts(Arc<Mutex<HashMap<IpAddr, u32>>>);

impl IpCounts {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        // The map holds plain counts, consistent after any single update.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more connection from `ip`, or `None` when `ip` already
    /// has `limit` open.
    pub(crate) fn acquire(&self, ip: IpAddr, limit: u32) -> Option<IpSlot> {
        let key = client_key(ip);
        let mut open = self.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            counts: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        self.lock().get(&client_key(ip)).copied().unwrap_or(0)
    }
}

/// One open WebSocket's share of its address's count, given back on drop:
/// whether the connection closes, fails, is killed as too slow, the upgrade
/// never completes or its task panics, the count goes down exactly once.
pub(crate) struct IpSlot {
    counts: IpCounts,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.counts.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // Forget idle addresses, or the map would grow with every
                // address ever seen.
                open.remove(&self.key);
            }
        }
    }
}

/// The unit one limit applies to. An IPv4 client that reaches a dual-stack
/// socket as `::ffff:a.b.c.d` is the same client as `a.b.c.d`. An IPv6 host
/// usually has a whole /64 to itself and can pick any address in it, so
/// per-address counting would not limit it at all: count the /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Browsers always send `Origin` on a WebSocket handshake and pages cannot
/// forge it, so the list keeps other sites' pages from using this server.
/// Native clients send none and cannot be told apart by it anyway: Origin
/// is not authentication, so their requests pass.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    // Browsers serialise scheme and host in lower case; the list may not be.
    allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

fn refusal(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            // The refusal ends the exchange; keeping the connection would
            // only hold a socket for a client that was just told no.
            (header::CONNECTION, "close"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn slots_are_given_back_on_drop_and_idle_addresses_forgotten() {
        let counts = IpCounts::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let s1 = counts.acquire(ip, 2).expect("first");
        let s2 = counts.acquire(ip, 2).expect("second");
        assert!(counts.acquire(ip, 2).is_none(), "third is over the limit");
        assert!(
            counts.acquire("192.0.2.2".parse().unwrap(), 2).is_some(),
            "another address has its own count"
        );
        drop(s1);
        assert_eq!(counts.open(ip), 1);
        let s3 = counts.acquire(ip, 2).expect("a freed slot is reusable");
        drop((s2, s3));
        assert!(counts.lock().is_empty(), "no entry left for idle addresses");
    }

    #[test]
    fn origin_list() {
        let mut h = HeaderMap::new();
        let list = vec!["https://Example.org/".to_owned()];
        assert!(origin_allowed(&[], &h), "no list: everyone");
        assert!(origin_allowed(&list, &h), "no Origin: a native client");
        h.insert(header::ORIGIN, "https://example.org".parse().unwrap());
        assert!(origin_allowed(&list, &h));
        h.insert(
            header::ORIGIN,
            "https://example.org.evil.test".parse().unwrap(),
        );
        assert!(!origin_allowed(&list, &h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!origin_allowed(&list, &h));
    }
}
