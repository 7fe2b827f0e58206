//! RTP in: a live sender (ffmpeg, GStreamer) feeds one of the tree's
//! tracks with plain RTP over UDP.
//!
//! The packets become the track's packets as they came: payload, sequence
//! numbers and timestamps kept, so what the sender packetized is what every
//! member gets, byte for byte. Packets out of order or twice are the hub's
//! business, as for any upstream (repair.rs); a packet the network lost
//! stays lost, since plain RTP here has no way to ask for it again, and
//! members wait for the sender's next keyframe. For the same reason a
//! child's keyframe request reaches nobody: newcomers start from the group
//! of pictures the source keeps (gop.rs).
//!
//! One sender per socket: packets of another SSRC are ignored while the
//! first one is heard from. A sender silent for [`SENDER_GONE`] may be
//! replaced (ffmpeg restarted, with a new SSRC and numbering): the track is
//! spliced onto the new one as onto a new parent (splice.rs), so members
//! keep their connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::rtp::packet::Packet;
use rtc::shared::marshal::Unmarshal;
use tokio::net::UdpSocket;
use tracing::{info, warn};

use crate::forward::TrackHub;

/// After this long without a packet, another SSRC may take over.
pub const SENDER_GONE: Duration = Duration::from_secs(1);

/// Largest datagram taken: anything bigger is not RTP for a WebRTC track.
const MAX_DATAGRAM: usize = 2048;

/// What one input has received, for the progress line.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Datagrams that were not RTP (or RTCP, which is ignored).
    pub malformed: AtomicU64,
    /// RTP of a second sender while the first was still sending.
    pub foreign: AtomicU64,
}

/// The sender heard now.
struct Sender {
    ssrc: u32,
    from: SocketAddr,
    heard: Instant,
}

/// What a datagram is.
#[derive(Debug)]
enum Datagram {
    Rtp(Packet),
    /// RTCP sent to the RTP port (rtcp-mux): nothing to forward.
    Rtcp,
    Malformed(String),
}

fn classify(buf: &[u8]) -> Datagram {
    if buf.len() < 12 || buf[0] >> 6 != 2 {
        return Datagram::Malformed(format!("{} bytes, not RTP version 2", buf.len()));
    }
    // RFC 5761: RTCP packet types 192-223 sit where RTP's marker bit and
    // payload type are.
    if (192..=223).contains(&buf[1]) {
        return Datagram::Rtcp;
    }
    let mut b = buf;
    match Packet::unmarshal(&mut b) {
        Ok(p) => Datagram::Rtp(p),
        Err(e) => Datagram::Malformed(e.to_string()),
    }
}

/// Feeds `track` with what arrives on `socket`, until the socket fails.
pub async fn receive(
    socket: UdpSocket,
    track: Arc<TrackHub>,
    stats: Arc<IngestStats>,
) -> std::io::Result<()> {
    let local = socket.local_addr()?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sender: Option<Sender> = None;
    let mut said_malformed = false;
    let mut said_foreign = false;
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let pkt = match classify(&buf[..n]) {
            Datagram::Rtp(p) => p,
            Datagram::Rtcp => continue,
            Datagram::Malformed(why) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                if !said_malformed {
                    said_malformed = true;
                    warn!("RTP in on {local}: a datagram from {from} is not RTP ({why}); such datagrams are dropped (counted, not logged again)");
                }
                continue;
            }
        };
        let now = Instant::now();
        let ssrc = pkt.header.ssrc;
        match &mut sender {
            Some(s) if s.ssrc == ssrc => s.heard = now,
            Some(s) if now.duration_since(s.heard) < SENDER_GONE => {
                stats.foreign.fetch_add(1, Ordering::Relaxed);
                if !said_foreign {
                    said_foreign = true;
                    warn!(
                        "RTP in on {local}: a second sender ({from}, SSRC {ssrc:#010x}) while {} \
                         (SSRC {:#010x}) is sending; its packets are dropped",
                        s.from, s.ssrc
                    );
                }
                continue;
            }
            _ => {
                let again = sender.is_some();
                info!(
                    "RTP in on {local}: {} from {from}, SSRC {ssrc:#010x}, payload type {}",
                    if again { "a new sender" } else { "receiving" },
                    pkt.header.payload_type
                );
                if again {
                    track.new_stream();
                }
                sender = Some(Sender {
                    ssrc,
                    from,
                    heard: now,
                });
            }
        }
        stats.packets.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
        track.forward(&pkt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_told_apart() {
        // V=2, PT 96, seq 1, ts 2, SSRC 3, one byte of payload.
        let rtp = [0x80, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xab];
        match classify(&rtp) {
            Datagram::Rtp(p) => {
                assert_eq!(p.header.sequence_number, 1);
                assert_eq!(p.header.timestamp, 2);
                assert_eq!(p.header.ssrc, 3);
                assert_eq!(&p.payload[..], &[0xab]);
            }
            other => panic!("{other:?}"),
        }
        // A sender report (PT 200).
        let sr = [0x80, 200, 0, 6, 0, 0, 0, 3, 0, 0, 0, 0];
        assert!(matches!(classify(&sr), Datagram::Rtcp));
        assert!(matches!(classify(b"hello"), Datagram::Malformed(_)));
        assert!(matches!(classify(&[0u8; 40]), Datagram::Malformed(_)));
        // Claims 16 CSRCs it does not carry.
        let short = [0x8f, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0];
        assert!(matches!(classify(&short), Datagram::Malformed(_)));
    }
}
