//! WHEP out: a player (a WHEP client, a browser page, GStreamer) POSTs a
//! receive-only offer to a node and gets its tracks, and its data channels
//! when the offer has a data section. Each player is fed from the hub like
//! a child (downstream.rs): the same keyframe gating, pacing, repairs and
//! keyframe requests upstream, payloads byte for byte. Players use slots of
//! their own (`--whep-max`), apart from the tree's k children, and take no
//! seat in the tree.
//!
//! What the hub gains after a player's answer (a publisher's second track)
//! does not reach that player: WHEP has no offer from the server's side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::info;
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::downstream::Downstream;
use crate::forward::Hub;
use crate::media::Codec;
use crate::offer_sessions::{LiveSession, OfferSessions, Opened, Patch, Restarted, SessionError};
use crate::peer::{Link, LinkConfig, LinkEvent};
use crate::RelayError;

/// The WHEP egress of one node.
pub struct WhepEgress {
    cfg: LinkConfig,
    hub: Arc<Hub>,
    max: usize,
    viewers: tokio::sync::Mutex<Vec<LiveSession>>,
    opened: AtomicU64,
}

impl WhepEgress {
    /// An egress of `hub`'s tracks to at most `max` players at a time.
    pub fn new(cfg: LinkConfig, hub: Arc<Hub>, max: usize) -> Arc<WhepEgress> {
        Arc::new(WhepEgress {
            cfg,
            hub,
            max,
            viewers: tokio::sync::Mutex::default(),
            opened: AtomicU64::new(0),
        })
    }

    /// Slots free now.
    pub async fn free(&self) -> usize {
        let mut viewers = self.viewers.lock().await;
        viewers.retain(LiveSession::is_live);
        self.max.saturating_sub(viewers.len())
    }

    async fn answer(
        &self,
        link: &Arc<Link>,
        offer: &str,
    ) -> Result<(Downstream, String), RelayError> {
        link.take_offer(offer).await?;
        let down = Downstream::answering(link.clone(), &self.hub).await?;
        match link.answer_whole().await {
            Ok(answer) => Ok((down, answer)),
            Err(e) => {
                down.close().await;
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl OfferSessions for WhepEgress {
    async fn open(&self, offer: &str) -> Result<Opened, SessionError> {
        let mut viewers = self.viewers.lock().await;
        viewers.retain(LiveSession::is_live);
        if viewers.len() >= self.max {
            return Err(SessionError::Full(format!(
                "all {} WHEP slots of this node are taken; another node of the tree may have \
                 room (/api/trees/ID lists each node's WHEP URL)",
                self.max
            )));
        }
        let tracks = self.hub.tracks();
        if tracks.is_empty() {
            return Err(SessionError::Busy(
                "nothing to play yet: this node has no tracks (no publisher, or no parent)".into(),
            ));
        }
        let mut codecs: Vec<Codec> = tracks.iter().map(|t| t.spec.codec).collect();
        codecs.dedup();
        let n = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let remote = format!("whep-player-{n}");
        let (events_tx, events) = mpsc::unbounded_channel();
        let link = Link::for_http(&self.cfg, &codecs, &remote, events_tx).await?;
        let (down, answer) = match self.answer(&link, offer).await {
            Ok(a) => a,
            Err(e) => {
                link.close().await;
                return Err(SessionError::from_offer(e));
            }
        };
        // A section the offer had no codec of is answered with port 0.
        let playing = answer
            .lines()
            .filter(|l| l.starts_with("m=audio") || l.starts_with("m=video"))
            .any(|l| l.split_whitespace().nth(1).is_none_or(|p| p != "0"));
        if !playing {
            down.close().await;
            let have: Vec<&str> = codecs.iter().map(|c| c.mime()).collect();
            return Err(SessionError::Unusable(format!(
                "the offer receives none of this node's tracks ({})",
                have.join(", ")
            )));
        }
        let session = LiveSession::spawn(|stop, patches| run_player(down, events, stop, patches));
        let opened = session.opened(answer);
        info!("WHEP: {remote} (session {})", opened.id);
        viewers.push(session);
        Ok(opened)
    }

    async fn patch(
        &self,
        id: &str,
        fragment: &str,
        if_match: Option<&str>,
    ) -> Result<Option<Restarted>, SessionError> {
        let patcher = self
            .viewers
            .lock()
            .await
            .iter()
            .find(|v| v.is(id))
            .ok_or(SessionError::NoSession)?
            .patcher();
        patcher.send(fragment, if_match).await
    }

    async fn end(&self, id: &str) -> Result<(), SessionError> {
        let mut viewers = self.viewers.lock().await;
        let i = viewers
            .iter()
            .position(|v| v.is(id))
            .ok_or(SessionError::NoSession)?;
        let v = viewers.swap_remove(i);
        drop(viewers);
        v.end().await;
        Ok(())
    }
}

/// Feeds one player until its session ends.
async fn run_player(
    down: Downstream,
    mut events: mpsc::UnboundedReceiver<(String, LinkEvent)>,
    mut stop: oneshot::Receiver<()>,
    mut patches: mpsc::UnboundedReceiver<Patch>,
) {
    let link = down.link.clone();
    let remote = link.remote.clone();
    loop {
        tokio::select! {
            _ = &mut stop => {
                info!("WHEP: {remote} ended its session");
                break;
            }
            Some(patch) = patches.recv() => patch.apply(&link, &format!("WHEP: {remote}")).await,
            ev = events.recv() => {
                let Some((_, ev)) = ev else { break };
                match ev {
                    LinkEvent::State(RTCPeerConnectionState::Connected) => {
                        info!("WHEP: {remote} connected");
                        down.connected.store(true, Ordering::Release);
                    }
                    LinkEvent::State(
                        s @ (RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed),
                    ) => {
                        info!("WHEP: {remote}'s connection {s}; its session ends");
                        break;
                    }
                    // A player sends nothing to play.
                    _ => {}
                }
            }
        }
    }
    down.close().await;
}
