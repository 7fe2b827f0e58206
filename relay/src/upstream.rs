//! The one connection to the parent: its tracks and channels flow into the
//! hub, from which the children are fed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::TrackRemote;

use crate::forward::{ChannelSpec, DataMsg, Forwarded, Hub, TrackHub, TrackSpec};
use crate::media::Codec;
use crate::peer::{Link, TrackPackets};
use crate::RelayError;

pub struct Upstream {
    pub link: Arc<Link>,
    readers: Vec<JoinHandle<()>>,
    pub activity: Arc<Activity>,
}

/// When media last came from the parent: the node's watch for a parent that
/// went silent (frozen, or cut off) without its connection closing.
pub struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` of the latest packet, plus one; 0: none yet.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Called per packet; cheap. True for the first packet.
    fn touch(&self) -> bool {
        let ms = self.opened.elapsed().as_millis() as u64 + 1;
        self.last.swap(ms, Ordering::Relaxed) == 0
    }

    /// When the latest packet came, if any did.
    pub fn last_media(&self) -> Option<Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.opened + Duration::from_millis(ms - 1)),
        }
    }
}

impl Upstream {
    pub fn new(link: Arc<Link>) -> Upstream {
        Upstream {
            link,
            readers: Vec::new(),
            activity: Arc::new(Activity::new()),
        }
    }

    /// A track from the parent (its first packet just arrived): the hub's
    /// track of the same id, which it will feed once [`Upstream::start`]ed.
    /// Legs added in between (the recorder) miss nothing.
    pub async fn attach(
        &mut self,
        hub: &Hub,
        track: Arc<dyn TrackRemote>,
    ) -> Result<Arc<TrackHub>, RelayError> {
        let ssrc = track
            .ssrcs()
            .await
            .first()
            .copied()
            .ok_or_else(|| RelayError::BadSignal("track without an SSRC".into()))?;
        let codec_info = track
            .codec(ssrc)
            .await
            .ok_or_else(|| RelayError::BadSignal("track without a codec".into()))?;
        let codec = Codec::from_mime(&codec_info.mime_type)
            .ok_or_else(|| RelayError::UnsupportedCodec(codec_info.mime_type.clone()))?;
        let kind = track.kind().await;
        if (kind == RtpCodecKind::Video) != codec.is_video() {
            return Err(RelayError::BadSignal(format!(
                "{} track carries {}",
                kind, codec_info.mime_type
            )));
        }
        // A sender that announced no msid (werift as a WHIP publisher) still
        // gets named tracks: browsers below need a stream to put them in.
        // (rtc names such a track `<kind>-<mid>` when it declared its SSRC,
        // vendor/README.md; one that did not arrives with no id at all.)
        let named = |id: String, default: &str| {
            if id.is_empty() {
                default.to_owned()
            } else {
                id
            }
        };
        let spec = TrackSpec {
            codec,
            fmtp: codec_info.sdp_fmtp_line.clone(),
            stream_id: named(track.stream_id().await, "peer-tree"),
            track_id: named(
                track.track_id().await,
                if codec.is_video() { "video" } else { "audio" },
            ),
        };
        info!(
            "upstream track {} ({}, stream {})",
            spec.track_id,
            codec.describe(&spec.fmtp),
            spec.stream_id
        );
        let hub_track = hub.track(spec);
        hub_track.set_upstream(Some((track, ssrc)));
        Ok(hub_track)
    }

    /// Feeds `hub_track` with the packets its parent's track delivers.
    pub fn start(&mut self, hub_track: Arc<TrackHub>, mut packets: TrackPackets) {
        let activity = self.activity.clone();
        let parent = self.link.remote.clone();
        self.readers.push(tokio::spawn(async move {
            while let Some(p) = packets.recv().await {
                if activity.touch() {
                    info!(
                        parent = %parent,
                        "media from the parent {} ms after its offer",
                        activity.opened.elapsed().as_millis()
                    );
                }
                // Padding (a parent's primer, downstream.rs) carries no
                // picture to ask a keyframe for.
                let waiting = hub_track.forward(&p) == Forwarded::AwaitingKeyframe;
                if waiting && !p.payload.is_empty() {
                    hub_track.request_keyframe().await;
                }
            }
        }));
    }

    /// A data channel the parent opened: its messages go to the hub's channel
    /// of the same label (and to `tap`, for `--data-out`).
    pub async fn on_data_channel(
        &mut self,
        hub: &Hub,
        dc: Arc<dyn DataChannel>,
        tap: Option<mpsc::UnboundedSender<DataMsg>>,
    ) -> Result<(), RelayError> {
        let spec = ChannelSpec {
            label: dc.label().await?,
            protocol: dc.protocol().await?,
            ordered: dc.ordered().await?,
            // webrtc-rs 0.21 does not report the remote's partial-reliability
            // parameters for in-band channels (they come back as None), so a
            // relay can only forward the reliable kind faithfully.
            max_retransmits: dc.max_retransmits().await?,
            max_packet_life_time: dc.max_packet_life_time().await?,
        };
        info!("upstream data channel {:?}", spec.label);
        let ch = hub.channel(spec);
        self.readers.push(tokio::spawn(async move {
            while let Some(ev) = dc.poll().await {
                if let DataChannelEvent::OnMessage(m) = ev {
                    let msg = DataMsg {
                        text: m.is_string,
                        data: m.data.freeze(),
                    };
                    ch.publish(&msg);
                    if let Some(tap) = &tap {
                        let _ = tap.send(msg);
                    }
                }
            }
        }));
        Ok(())
    }

    pub async fn close(self, hub: &Hub) {
        for t in hub.tracks() {
            t.set_upstream(None);
        }
        self.link.close().await;
        info!(parent = %self.link.remote, "upstream connection closed");
        for r in self.readers {
            // The readers end by themselves once the connection is closed;
            // a reader stuck in a callback must not outlive its link.
            if !r.is_finished() {
                r.abort();
            }
        }
    }
}
