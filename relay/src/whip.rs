//! WHIP in (RFC 9725): a publisher (OBS, GStreamer, a browser) sends its
//! tracks and data channels to the source over one WebRTC session set up by
//! HTTP. They feed the tree's hub exactly as a parent's feed a relay's
//! (upstream.rs): packets byte for byte, a child's keyframe request passed
//! on to the publisher.
//!
//! One publisher at a time. When its session ends (DELETE, or its connection
//! fails) the tree stays: its tracks wait unfed, sending padding from half
//! a second without media on, which keeps members from taking the silence
//! for a dead parent, so members keep their connections; and the next
//! publisher's tracks are spliced on (the hub reuses an unfed track of the
//! same codec), so a publisher that reconnects resumes the same tree. For that the tree keeps the codec of each kind it
//! started with: later publishers are answered in that codec only.
//!
//! HTTP itself (methods, status codes, tokens) is the binary's; this module
//! takes offers and candidate fragments and gives answers and errors
//! (offer_sessions.rs).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::forward::Hub;
use crate::media::Codec;
use crate::offer_sessions::{LiveSession, OfferSessions, Opened, Patch, Restarted, SessionError};
use crate::peer::{Link, LinkConfig, LinkEvent};
use crate::rtp_sdp;
use crate::upstream::Upstream;

/// The WHIP ingest of one source.
pub struct WhipIngest {
    cfg: LinkConfig,
    hub: Arc<Hub>,
    state: tokio::sync::Mutex<State>,
    first: Mutex<Option<oneshot::Sender<()>>>,
}

#[derive(Default)]
struct State {
    session: Option<LiveSession>,
    /// The codec of each kind, fixed by the first publisher.
    codecs: Vec<Codec>,
    sessions_started: u64,
}

/// How often, and after how long without media, the tracks say they are
/// alive while no publisher feeds them (none, or one whose connection died
/// and is not noticed yet): well inside a member's 1.5 s of silence before
/// it leaves its parent.
const KEEP_ALIVE: Duration = Duration::from_millis(500);

impl WhipIngest {
    /// An ingest feeding `hub`, and what resolves when the first publisher's
    /// session is set up. Between publishers its tracks keep their members
    /// (`TrackHub::keep_alive`), for as long as the hub lives.
    pub fn new(cfg: LinkConfig, hub: Arc<Hub>) -> (Arc<WhipIngest>, oneshot::Receiver<()>) {
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEP_ALIVE);
            loop {
                tick.tick().await;
                let Some(hub) = weak.upgrade() else {
                    return;
                };
                for t in hub.tracks() {
                    t.keep_alive(KEEP_ALIVE);
                }
            }
        });
        let (tx, rx) = oneshot::channel();
        let ingest = WhipIngest {
            cfg,
            hub,
            state: tokio::sync::Mutex::default(),
            first: Mutex::new(Some(tx)),
        };
        (Arc::new(ingest), rx)
    }
}

#[async_trait::async_trait]
impl OfferSessions for WhipIngest {
    /// Answers a publisher's offer with a new session, whose answer holds
    /// every candidate of this end.
    async fn open(&self, offer: &str) -> Result<Opened, SessionError> {
        let mut state = self.state.lock().await;
        if state.session.as_ref().is_some_and(LiveSession::is_live) {
            return Err(SessionError::Busy(
                "a publisher is already sending to this tree; it must end its session (DELETE) \
                 first"
                    .into(),
            ));
        }
        let codecs = choose_codecs(offer, &state.codecs)?;
        state.sessions_started += 1;
        let remote = format!("publisher-{}", state.sessions_started);
        let (events_tx, events) = mpsc::unbounded_channel();
        let link = Link::for_http(&self.cfg, &codecs, &remote, events_tx).await?;
        let answered = match link.take_offer(offer).await {
            Ok(()) => link.answer_whole().await,
            Err(e) => Err(e),
        };
        let answer = match answered {
            Ok(a) => a,
            Err(e) => {
                link.close().await;
                return Err(SessionError::from_offer(e));
            }
        };
        let hub = self.hub.clone();
        let session =
            LiveSession::spawn(|stop, patches| run_session(link, hub, events, stop, patches));
        let opened = session.opened(answer);
        info!(
            "WHIP: a publisher offered {}; session {}",
            codecs
                .iter()
                .map(|c| c.mime())
                .collect::<Vec<_>>()
                .join(" and "),
            opened.id
        );
        state.codecs = codecs;
        state.session = Some(session);
        if let Some(first) = self
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = first.send(());
        }
        Ok(opened)
    }

    async fn patch(
        &self,
        id: &str,
        fragment: &str,
        if_match: Option<&str>,
    ) -> Result<Option<Restarted>, SessionError> {
        let patcher = live(&*self.state.lock().await, id)?.patcher();
        patcher.send(fragment, if_match).await
    }

    /// Ends session `id`: the tree stays, waiting for the next publisher.
    async fn end(&self, id: &str) -> Result<(), SessionError> {
        let mut state = self.state.lock().await;
        live(&state, id)?;
        let Some(session) = state.session.take() else {
            return Err(SessionError::NoSession);
        };
        drop(state);
        session.end().await;
        Ok(())
    }
}

fn live<'a>(state: &'a State, id: &str) -> Result<&'a LiveSession, SessionError> {
    state
        .session
        .as_ref()
        .filter(|s| s.is(id))
        .ok_or(SessionError::NoSession)
}

/// One codec per kind the offer sends: the tree's, once it has one, or the
/// publisher's first choice the tree can carry.
fn choose_codecs(offer: &str, tree: &[Codec]) -> Result<Vec<Codec>, SessionError> {
    let sections = rtp_sdp::sections(offer)
        .map_err(|e| SessionError::Unusable(format!("the offer is not valid SDP: {e}")))?;
    let mut chosen: Vec<Codec> = Vec::new();
    for s in sections.iter().filter(|s| s.port != 0 && s.sends) {
        let video = s.media == "video";
        if chosen.iter().any(|c| c.is_video() == video) {
            return Err(SessionError::Unusable(format!(
                "more than one {} section: a tree carries one video and one audio track",
                s.media
            )));
        }
        let offered: Vec<Codec> = s.formats.iter().map(|(c, _)| *c).collect();
        let codec = match tree.iter().find(|c| c.is_video() == video) {
            Some(&c) if offered.contains(&c) => c,
            Some(&c) => {
                return Err(SessionError::Unusable(format!(
                    "this tree carries {} {}; the offer's {} section does not have it",
                    s.media,
                    c.mime(),
                    s.media
                )))
            }
            None => *offered.first().ok_or_else(|| {
                SessionError::Unusable(format!(
                    "the offer's {} section has no codec the tree carries \
                     (VP8, VP9, AV1, H.264 in packetization mode 1, Opus)",
                    s.media
                ))
            })?,
        };
        chosen.push(codec);
    }
    if chosen.is_empty() {
        return Err(SessionError::Unusable(
            "the offer sends no audio or video".into(),
        ));
    }
    Ok(chosen)
}

/// The publisher's tracks and channels into the hub, until the session ends.
async fn run_session(
    link: Arc<Link>,
    hub: Arc<Hub>,
    mut events: mpsc::UnboundedReceiver<(String, LinkEvent)>,
    mut stop: oneshot::Receiver<()>,
    mut patches: mpsc::UnboundedReceiver<Patch>,
) {
    let remote = link.remote.clone();
    let mut upstream = Upstream::new(link.clone());
    loop {
        tokio::select! {
            _ = &mut stop => {
                info!("WHIP: {remote} ended its session; the tree waits for a publisher");
                break;
            }
            Some(patch) = patches.recv() => patch.apply(&link, &format!("WHIP: {remote}")).await,
            ev = events.recv() => {
                let Some((_, ev)) = ev else { break };
                match ev {
                    LinkEvent::Track(track, packets) => match upstream.attach(&hub, track).await {
                        Ok(t) => upstream.start(t, packets),
                        Err(e) => warn!("WHIP: {remote}: a track not taken: {e}"),
                    },
                    LinkEvent::DataChannel(dc) => {
                        if let Err(e) = upstream.on_data_channel(&hub, dc, None).await {
                            warn!("WHIP: {remote}: a data channel not taken: {e}");
                        }
                    }
                    LinkEvent::State(RTCPeerConnectionState::Connected) => {
                        info!("WHIP: {remote} connected");
                    }
                    LinkEvent::State(
                        s @ (RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed),
                    ) => {
                        info!("WHIP: {remote}'s connection {s}; the tree waits for a publisher");
                        break;
                    }
                    LinkEvent::State(_) => {}
                }
            }
        }
    }
    upstream.close(&hub).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 98\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n\
        a=rtpmap:96 H265/90000\r\na=rtpmap:97 H264/90000\r\n\
        a=fmtp:97 packetization-mode=1;profile-level-id=42e01f\r\na=rtpmap:98 VP8/90000\r\n";

    #[test]
    fn the_publishers_first_carried_codec_then_the_trees() {
        assert_eq!(
            choose_codecs(OFFER, &[]).unwrap(),
            vec![Codec::Opus, Codec::H264]
        );
        // A tree that started with VP8 keeps it.
        assert_eq!(
            choose_codecs(OFFER, &[Codec::Vp8, Codec::Opus]).unwrap(),
            vec![Codec::Opus, Codec::Vp8]
        );
        let e = choose_codecs(OFFER, &[Codec::Av1]).unwrap_err().to_string();
        assert!(e.contains("video/AV1"), "{e}");
    }

    #[test]
    fn offers_the_tree_cannot_take_say_why() {
        let h265 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H265/90000\r\n";
        let e = choose_codecs(h265, &[]).unwrap_err().to_string();
        assert!(e.contains("no codec the tree carries"), "{e}");
        // H.264 in packetization mode 0 only.
        let mode0 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n\
            a=fmtp:96 profile-level-id=42e01f\r\n";
        assert!(choose_codecs(mode0, &[]).is_err());
        let recvonly =
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n";
        let e = choose_codecs(recvonly, &[]).unwrap_err().to_string();
        assert!(e.contains("sends no audio or video"), "{e}");
        let two = "v=0\r\nm=video 9 X 96\r\na=rtpmap:96 VP8/90000\r\nm=video 9 X 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert!(choose_codecs(two, &[]).is_err());
        assert!(choose_codecs("m=video x\r\n", &[]).is_err());
    }
}
