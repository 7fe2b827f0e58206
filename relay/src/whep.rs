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
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::info;
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::downstream::Downstream;
use crate::forward::Hub;
use crate::media::Codec;
use crate::offer_sessions::{send_patch, OfferSessions, Patch, SessionError};
use crate::peer::{Link, LinkConfig, LinkEvent};
use crate::RelayError;

/// How long ending a session may take before its task is cut off.
const END_WAIT: Duration = Duration::from_secs(2);

/// The WHEP egress of one node.
pub struct WhepEgress {
    cfg: LinkConfig,
    hub: Arc<Hub>,
    max: usize,
    viewers: tokio::sync::Mutex<Vec<Viewer>>,
    opened: AtomicU64,
}

struct Viewer {
    id: String,
    /// PATCHes, for the session's task to apply.
    patches: mpsc::UnboundedSender<Patch>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
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
        viewers.retain(|v| !v.task.is_finished());
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
    async fn open(&self, offer: &str) -> Result<(String, String), SessionError> {
        let mut viewers = self.viewers.lock().await;
        viewers.retain(|v| !v.task.is_finished());
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
                return Err(match e {
                    RelayError::Webrtc(e) => SessionError::Unusable(format!("the offer: {e}")),
                    e => SessionError::Failed(e),
                });
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
        let id = format!("{:032x}", rand::random::<u128>());
        let (stop_tx, stop) = oneshot::channel();
        let (cand_tx, cands) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_player(down, events, stop, cands));
        info!("WHEP: {remote} (session {id})");
        viewers.push(Viewer {
            id: id.clone(),
            patches: cand_tx,
            stop: Some(stop_tx),
            task,
        });
        Ok((id, answer))
    }

    async fn patch(&self, id: &str, fragment: &str) -> Result<Option<String>, SessionError> {
        let to = {
            let viewers = self.viewers.lock().await;
            viewers
                .iter()
                .find(|v| v.id == id && !v.task.is_finished())
                .ok_or(SessionError::NoSession)?
                .patches
                .clone()
        };
        send_patch(&to, fragment).await
    }

    async fn end(&self, id: &str) -> Result<(), SessionError> {
        let mut viewers = self.viewers.lock().await;
        let i = viewers
            .iter()
            .position(|v| v.id == id && !v.task.is_finished())
            .ok_or(SessionError::NoSession)?;
        let mut v = viewers.swap_remove(i);
        drop(viewers);
        if let Some(stop) = v.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(END_WAIT, &mut v.task).await.is_err() {
            v.task.abort();
        }
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
