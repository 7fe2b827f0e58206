//! The relay wait, applied to connectivity checks that webrtc-rs cannot tell
//! came through a TURN server.
//!
//! A member's check sent from its TURN relay candidate reaches the other end
//! from the TURN server's address, usually before that candidate has come
//! through the signalling server (UDP outruns the WebSocket hop). webrtc-rs
//! 0.21 then learns the address as a peer-reflexive candidate, with the
//! check's PRIORITY (peer-reflexive type preference, above server-reflexive),
//! and our `ICE_PRFLX_WAIT` of zero lets it be nominated at once. The relay
//! candidate signalled later does not change that: rtc-ice 0.21.1 adds it as a
//! second remote candidate beside the peer-reflexive one (agent/mod.rs,
//! `trigger_request_connectivity_check`, which compares candidate types too)
//! where libwebrtc updates the peer-reflexive candidate to the signalled type.
//! So `ICE_RELAY_WAIT` never applies to that path. Measured in the NAT lab (a
//! relay behind a port-preserving NAT below a public source, both with TURN):
//! the direct pair succeeded first, 3 ms after the agents started, the relayed
//! one 3 ms later outranked it and was nominated at the next tick. In 4 of 15
//! joins the link ran through TURN; the member then told the server only TURN
//! reached it, got no children, and the leaf that should have joined below it
//! was refused (tree full). With the gate: 0 of 15.
//!
//! The gate drops STUN Binding requests that arrive straight from a TURN
//! server's address until the relay wait has passed since the first check
//! this link received (about when both agents started). The sender repeats
//! its checks every 50 ms, so a path that needs TURN still connects once the
//! wait is over, as it would have through the relay candidate. Everything
//! else passes untouched: responses, our own allocation's traffic (it comes
//! from the server's listening port as ChannelData or Data indications, never
//! as a bare Binding request), and every packet after the wait. A peer that
//! runs on the TURN server's own host gets its direct pair half a second
//! later; nothing fails.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tracing::debug;
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Transmit};

/// One link's gate, shared by its sockets.
#[derive(Debug)]
pub struct RelayedCheckGate {
    wait: Duration,
    /// The first Binding request this link received: the other agent has
    /// started, and ours starts at about the same time.
    first_check: OnceLock<Instant>,
    /// Addresses TURN servers relay from: literal addresses of `turn:` URLs
    /// and those of our own relay candidates (the same servers give the
    /// other end its relay candidates).
    relays: Mutex<Vec<IpAddr>>,
}

impl RelayedCheckGate {
    pub fn new(wait: Duration) -> RelayedCheckGate {
        RelayedCheckGate {
            wait,
            first_check: OnceLock::new(),
            relays: Mutex::default(),
        }
    }

    /// Checks from `ip` count as relayed from now on.
    pub fn add_relay(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        if !relays.contains(&ip) {
            relays.push(ip);
        }
    }

    /// The address a `turn:` URL names, when it names one literally
    /// (`turn:203.0.113.3:3478?transport=udp`, `turn:[2001:db8::1]`). Host
    /// names are left to our own relay candidates, which carry the address.
    pub fn add_turn_url(&self, url: &str) {
        if let Some(ip) = turn_url_ip(url) {
            self.add_relay(ip);
        }
    }

    /// Whether a datagram from `from` goes on to webrtc-rs now.
    pub fn admits(&self, from: SocketAddr, datagram: &[u8]) -> bool {
        self.admits_at(from, datagram, Instant::now())
    }

    fn admits_at(&self, from: SocketAddr, datagram: &[u8], now: Instant) -> bool {
        if !is_binding_request(datagram) {
            return true;
        }
        let first = *self.first_check.get_or_init(|| now);
        if now.saturating_duration_since(first) >= self.wait {
            return true;
        }
        let ip = from.ip().to_canonical();
        let relayed = self
            .relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&ip);
        if relayed {
            debug!(%from, "relayed connectivity check held back until the relay wait is over");
        }
        !relayed
    }
}

/// A STUN Binding request (RFC 5389: type 0x0001, then the magic cookie).
fn is_binding_request(d: &[u8]) -> bool {
    d.len() >= 20 && d[..2] == [0x00, 0x01] && d[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

fn turn_url_ip(url: &str) -> Option<IpAddr> {
    let rest = url.strip_prefix("turn:")?;
    let hostport = rest.split('?').next()?;
    if let Ok(sa) = hostport.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let bare = |h: &str| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
    };
    // An address alone, or (a host name) followed by a port.
    bare(hostport).or_else(|| hostport.rsplit_once(':').and_then(|(h, _)| bare(h)))
}

/// A socket that passes what it receives through the link's gate.
pub struct GatedUdpSocket {
    pub inner: Arc<dyn AsyncUdpSocket>,
    pub gate: Arc<RelayedCheckGate>,
}

impl fmt::Debug for GatedUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatedUdpSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncUdpSocket for GatedUdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let n = n.min(bufs.len()).min(meta.len());
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                let len = m.len.min(bufs[i].len());
                // A GRO message holds datagrams of one flow; its first one
                // speaks for the rest (within the wait, a relayed address
                // sends nothing but checks).
                if !self.gate.admits(m.addr, &bufs[i][..len]) {
                    continue;
                }
                if kept != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    let len = len.min(head[kept].len());
                    head[kept][..len].copy_from_slice(&tail[0][..len]);
                    meta[kept] = m;
                    meta[kept].len = len;
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything read was held back: read on (the inner socket
            // registers the waker once it is empty).
        }
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request() -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&[7; 12]);
        m
    }

    #[test]
    fn holds_relayed_checks_for_the_wait_only() {
        let gate = RelayedCheckGate::new(Duration::from_millis(500));
        gate.add_turn_url("turn:203.0.113.3:3478?transport=udp");
        let relayed: SocketAddr = "203.0.113.3:49714".parse().unwrap();
        let direct: SocketAddr = "203.0.113.101:33700".parse().unwrap();
        let t0 = Instant::now();
        let check = binding_request();
        assert!(gate.admits_at(direct, &check, t0));
        assert!(!gate.admits_at(relayed, &check, t0 + Duration::from_millis(3)));
        // Not a Binding request: a response, RTP, ChannelData.
        let mut response = check.clone();
        response[0] = 0x01;
        assert!(gate.admits_at(relayed, &response, t0));
        assert!(gate.admits_at(relayed, &[0x80; 40], t0));
        assert!(gate.admits_at(relayed, &check, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn learns_relays_from_candidates_and_urls() {
        let gate = RelayedCheckGate::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let check = binding_request();
        let from: SocketAddr = "198.51.100.7:50000".parse().unwrap();
        assert!(gate.admits_at(from, &check, t0));
        gate.add_relay("198.51.100.7".parse().unwrap());
        assert!(!gate.admits_at(from, &check, t0));
        let v6: SocketAddr = "[::ffff:198.51.100.7]:50000".parse().unwrap();
        assert!(!gate.admits_at(v6, &check, t0));
    }

    #[test]
    fn reads_literal_addresses_of_turn_urls() {
        for (url, ip) in [
            ("turn:203.0.113.3:3478?transport=udp", Some("203.0.113.3")),
            ("turn:203.0.113.3", Some("203.0.113.3")),
            ("turn:[2001:db8::1]:3478", Some("2001:db8::1")),
            ("turn:2001:db8::1", Some("2001:db8::1")),
            ("turn:turn.example.org:3478", None),
            ("stun:203.0.113.3:3478", None),
            ("turn:", None),
        ] {
            assert_eq!(turn_url_ip(url), ip.map(|i| i.parse().unwrap()), "{url}");
        }
    }

    #[test]
    fn short_and_foreign_datagrams_are_not_checks() {
        assert!(!is_binding_request(&[]));
        assert!(!is_binding_request(&[0x00, 0x01, 0x00]));
        let mut no_cookie = binding_request();
        no_cookie[4] = 0;
        assert!(!is_binding_request(&no_cookie));
        assert!(is_binding_request(&binding_request()));
    }
}
