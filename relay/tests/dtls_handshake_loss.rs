//! One lost handshake datagram must cost a retransmission, never the handshake.
//!
//! rtc-dtls 0.21.1 stopped its retransmit timer whenever handshake packets arrived, even when they
//! did not complete the peer's flight (typically the peer repeating its last flight because ours
//! was lost); that side then never sent again and the handshake hung (vendor/README.md). Two
//! sans-I/O endpoints are driven here over an in-memory link on a simulated clock, losing the first
//! datagram of flight 4 or flight 5, so the test runs in milliseconds and fails without the fix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc::dtls::crypto::Certificate;
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::shared::TransportProtocol;

/// Nonzero so the two sides' retransmit timers never coincide: which of them fires first decides
/// whether a lost flight exercises the bug, and that must not rest on an arbitrary tie-break.
const LATENCY: Duration = Duration::from_millis(20);
/// The budget the relay gives a DTLS handshake before it asks for another parent.
const LIMIT: Duration = Duration::from_secs(10);

const CLIENT: usize = 0;
const SERVER: usize = 1;
const ADDRS: [SocketAddr; 2] = [
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000),
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5001),
];
const NAMES: [&str; 2] = ["client", "server"];
const PAYLOADS: [&[u8]; 2] = [b"from the client", b"from the server"];

const HANDSHAKE: u8 = 22;
const SERVER_HELLO: u8 = 2;
const CERTIFICATE: u8 = 11;
const CLIENT_KEY_EXCHANGE: u8 = 16;

/// The handshake message types of the plaintext (epoch 0) handshake records in a datagram. Later
/// epochs are encrypted, and flights 4 and 5 both begin in epoch 0, so nothing is missed.
fn handshake_types(datagram: &[u8]) -> Vec<u8> {
    let mut types = vec![];
    let mut rest = datagram;
    while rest.len() >= 13 {
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        let length = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let body = &rest[13..(13 + length).min(rest.len())];
        if rest[0] == HANDSHAKE && epoch == 0 && !body.is_empty() {
            types.push(body[0]);
        }
        rest = &rest[(13 + length).min(rest.len())..];
    }
    types
}

/// Which datagram, if any, the link loses (only its first match: retransmissions get through).
type Loss = fn(from: usize, datagram: &[u8]) -> bool;

/// The first datagram of the client's flight 5. Certificate and ClientKeyExchange are sent by a
/// client in flight 5 only, and it opens with one of them whether or not the client has a
/// certificate and however the flight is split into datagrams, so this needs no knowledge of
/// flight boundaries or packing.
fn flight_5_opening(from: usize, datagram: &[u8]) -> bool {
    from == CLIENT
        && handshake_types(datagram)
            .iter()
            .any(|t| [CERTIFICATE, CLIENT_KEY_EXCHANGE].contains(t))
}

/// The first datagram of the server's flight 4: ServerHello opens it and appears nowhere else.
fn flight_4_opening(from: usize, datagram: &[u8]) -> bool {
    from == SERVER && handshake_types(datagram).contains(&SERVER_HELLO)
}

/// Configured as rtc's peer connection configures DTLS: both sides hold a self-signed certificate
/// and the server requires the client's, so the flights are as large as the relay's.
fn config(is_client: bool) -> Arc<rtc::dtls::config::HandshakeConfig> {
    let provider = rtc::crypto::default_provider().expect("a built-in crypto provider");
    let certificate =
        Certificate::generate_self_signed(vec!["peer-tree".into()], provider.crypto())
            .expect("a self-signed certificate");
    let config = ConfigBuilder::default()
        .with_crypto_provider(provider)
        .with_certificates(vec![certificate])
        .with_client_auth(ClientAuthType::RequireAnyClientCert)
        .with_insecure_skip_verify(true)
        .with_extended_master_secret(ExtendedMasterSecretType::Require)
        .build(is_client, None)
        .expect("a DTLS config");
    Arc::new(config)
}

struct Outcome {
    completed: [Option<Duration>; 2],
    received: [Vec<u8>; 2],
    lost: usize,
    failure: Option<String>,
}

/// Runs one handshake, then one application write each way, until both writes have arrived, a
/// side gives up, nothing is left to happen, or `LIMIT` of simulated time has passed.
fn run(loss: Option<Loss>) -> Outcome {
    let start = Instant::now();
    let mut endpoints = [
        Endpoint::new(ADDRS[CLIENT], TransportProtocol::UDP, None),
        Endpoint::new(ADDRS[SERVER], TransportProtocol::UDP, Some(config(false))),
    ];
    let mut outcome = Outcome {
        completed: [None, None],
        received: [vec![], vec![]],
        lost: 0,
        failure: None,
    };
    // (arrival, recipient, datagram), in the order sent
    let mut link: Vec<(Instant, usize, BytesMut)> = vec![];
    let mut loss = loss;

    endpoints[CLIENT]
        .connect(start, ADDRS[SERVER], config(true), None)
        .expect("connect");
    loop {
        for from in [CLIENT, SERVER] {
            while let Some(transmit) = endpoints[from].poll_transmit() {
                if loss.is_some_and(|lose| lose(from, &transmit.message)) {
                    loss = None;
                    outcome.lost += 1;
                } else {
                    link.push((transmit.now + LATENCY, 1 - from, transmit.message));
                }
            }
        }
        if (0..2).all(|side| outcome.received[side] == PAYLOADS[1 - side]) {
            return outcome;
        }
        let next_arrival = link.iter().map(|(at, _, _)| *at).min();
        let next_timer = (0..2)
            .filter_map(|side| endpoints[side].poll_timeout(&ADDRS[1 - side]))
            .min();
        let Some(now) = next_arrival.into_iter().chain(next_timer).min() else {
            outcome.failure = Some("nothing left to send and no timer armed".into());
            return outcome;
        };
        if now - start > LIMIT {
            outcome.failure = Some(format!("still running after {LIMIT:?}"));
            return outcome;
        }
        // A datagram arriving at the instant a timer is due is read first. Replying here takes no
        // time, so the repeat one side's timer sends reaches the peer exactly when the peer's own
        // timer (armed as it sent the lost flight) is due; a real peer spent time on the flight
        // before replying, so the repeat gets there first. That is the order in which the loss
        // hung the handshake: firing the timer first would resend the flight and hide the bug.
        if next_arrival == Some(now) {
            let index = link.iter().position(|(at, _, _)| *at == now).unwrap();
            let (_, to, datagram) = link.remove(index);
            let events = match endpoints[to].read(now, ADDRS[1 - to], None, datagram) {
                Ok(events) => events,
                Err(error) => {
                    outcome.failure = Some(format!("the {} failed a read: {error}", NAMES[to]));
                    return outcome;
                }
            };
            for event in events {
                match event {
                    EndpointEvent::HandshakeComplete => {
                        outcome.completed[to] = Some(now - start);
                        endpoints[to]
                            .write(now, ADDRS[1 - to], PAYLOADS[to])
                            .expect("write after the handshake completed");
                    }
                    EndpointEvent::ApplicationData(data) => {
                        outcome.received[to].extend_from_slice(&data)
                    }
                    _ => {}
                }
            }
        } else {
            for side in [CLIENT, SERVER] {
                if let Err(error) = endpoints[side].handle_timeout(ADDRS[1 - side], now) {
                    outcome.failure = Some(format!(
                        "the {} gave up at {:?}: {error}",
                        NAMES[side],
                        now - start
                    ));
                    return outcome;
                }
            }
        }
    }
}

fn assert_completes(loss: Option<Loss>, expected_losses: usize) {
    let outcome = run(loss);
    let summary = format!(
        "completed (client, server): {:?}, failure: {:?}",
        outcome.completed, outcome.failure
    );
    assert_eq!(outcome.failure, None, "{summary}");
    assert_eq!(outcome.lost, expected_losses, "datagrams lost; {summary}");
    for side in [CLIENT, SERVER] {
        let completed = outcome.completed[side].unwrap_or(Duration::MAX);
        assert!(
            completed <= LIMIT,
            "the {} was too slow; {summary}",
            NAMES[side]
        );
        assert_eq!(
            outcome.received[side],
            PAYLOADS[1 - side],
            "data the {} received; {summary}",
            NAMES[side]
        );
    }
}

#[test]
fn completes_with_nothing_lost() {
    assert_completes(None, 0);
}

#[test]
fn completes_when_the_first_datagram_of_flight_5_is_lost() {
    assert_completes(Some(flight_5_opening), 1);
}

#[test]
fn completes_when_the_first_datagram_of_flight_4_is_lost() {
    assert_completes(Some(flight_4_opening), 1);
}
