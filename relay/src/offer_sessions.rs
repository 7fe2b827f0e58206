//! What WHIP (RFC 9725) and WHEP have in common, without their HTTP: a
//! remote sends one offer and gets an answer that holds every candidate of
//! this end, trickles its own candidates afterwards in SDP fragments (RFC
//! 8840), and ends the session by its id. whip.rs takes a publisher's
//! tracks in, whep.rs gives a player the node's tracks; the binary serves
//! both over HTTP through this trait.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::peer::Link;
use crate::RelayError;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Another session holds what this one wants (WHIP: the one publisher
    /// slot; WHEP: there is nothing to play yet).
    #[error("{0}")]
    Busy(String),
    /// Every slot is taken.
    #[error("{0}")]
    Full(String),
    /// The offer or fragment is SDP, but not one this node can take.
    #[error("{0}")]
    Unusable(String),
    #[error("no such session: it ended, or never existed")]
    NoSession,
    /// A PATCH's `If-Match` names another entity tag than the session's
    /// current one (RFC 9725 §4.3.1): it was written for an ICE session
    /// that a restart has replaced.
    #[error(
        "If-Match {given} is not this session's entity tag {current}: an ICE restart \
         replaced the session it was meant for"
    )]
    TagMismatch { given: String, current: String },
    #[error("could not set up the session: {0}")]
    Failed(#[from] RelayError),
}

impl SessionError {
    /// What setting up a session from an offer failed with: the stack's
    /// refusal of the offer is the offer's fault (422), anything else ours.
    pub fn from_offer(e: RelayError) -> SessionError {
        match e {
            RelayError::Webrtc(e) => SessionError::Unusable(format!("the offer: {e}")),
            e => SessionError::Failed(e),
        }
    }
}

/// A session just set up.
pub struct Opened {
    pub id: String,
    /// Every candidate of this end is in it.
    pub answer: String,
    /// The entity tag of its ICE session (an HTTP ETag, quoted).
    pub tag: String,
}

/// An ICE restart done: this end's new fragment and the new entity tag.
pub struct Restarted {
    pub fragment: String,
    pub tag: String,
}

/// Sessions set up by one offer each.
#[async_trait::async_trait]
pub trait OfferSessions: Send + Sync {
    /// Answers `offer` with a new session.
    async fn open(&self, offer: &str) -> Result<Opened, SessionError>;
    /// Applies a fragment (RFC 8840) to session `id`: trickled candidates
    /// (None), or an ICE restart. `if_match` is the request's `If-Match`,
    /// checked first against the session's entity tag.
    async fn patch(
        &self,
        id: &str,
        fragment: &str,
        if_match: Option<&str>,
    ) -> Result<Option<Restarted>, SessionError>;
    /// Ends session `id`.
    async fn end(&self, id: &str) -> Result<(), SessionError>;
}

/// A PATCH for a session's task to apply to its link.
pub enum Patch {
    /// Trickled candidates, as `signal` payloads.
    Candidates(Vec<String>),
    /// An ICE restart: the remote's new credentials and candidates; the
    /// reply is this end's new fragment.
    Restart {
        ufrag: String,
        pwd: String,
        candidates: Vec<String>,
        reply: oneshot::Sender<Result<String, RelayError>>,
    },
}

impl Patch {
    /// The patch a fragment asks for (`reply` is the restart's answer
    /// channel, kept unused for candidates).
    pub fn parse(
        fragment: &str,
        reply: oneshot::Sender<Result<String, RelayError>>,
    ) -> Result<Patch, SessionError> {
        let mut mid = "0";
        let mut ufrag = None;
        let mut pwd = None;
        let mut candidates = Vec::new();
        for line in fragment.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(m) = line.strip_prefix("a=mid:") {
                mid = m.trim();
            } else if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
                ufrag = Some(u.trim().to_owned());
            } else if let Some(p) = line.strip_prefix("a=ice-pwd:") {
                pwd = Some(p.trim().to_owned());
            } else if let Some(c) = line.strip_prefix("a=") {
                if c.starts_with("candidate:") {
                    candidates.push(c);
                }
            }
        }
        let candidates = candidates
            .into_iter()
            .map(|c| {
                serde_json::json!({
                    "candidate": { "candidate": c, "sdpMid": mid, "sdpMLineIndex": 0 }
                })
                .to_string()
            })
            .collect();
        match (ufrag, pwd) {
            (None, None) => Ok(Patch::Candidates(candidates)),
            (Some(ufrag), Some(pwd)) => Ok(Patch::Restart {
                ufrag,
                pwd,
                candidates,
                reply,
            }),
            _ => Err(SessionError::Unusable(
                "an ICE restart needs both a=ice-ufrag and a=ice-pwd".into(),
            )),
        }
    }

    /// Applies the patch to `link` (`who` names it in the log).
    pub async fn apply(self, link: &Link, who: &str) {
        let candidates = match self {
            Patch::Candidates(c) => c,
            Patch::Restart {
                ufrag,
                pwd,
                candidates,
                reply,
            } => {
                let restarted = link.restart_ice(&ufrag, &pwd).await;
                let ok = restarted.is_ok();
                let _ = reply.send(restarted);
                if !ok {
                    return;
                }
                candidates
            }
        };
        for signal in candidates {
            if let Err(e) = link.on_signal(&signal).await {
                warn!("{who}: a trickled candidate: {e}");
            }
        }
    }
}

/// Sends PATCHes to a session's task.
pub struct Patcher {
    patches: mpsc::UnboundedSender<Patch>,
    tag: Arc<Mutex<String>>,
}

impl Patcher {
    /// Sends `fragment` if `if_match` allows, and waits for the answer if
    /// it is a restart.
    pub async fn send(
        &self,
        fragment: &str,
        if_match: Option<&str>,
    ) -> Result<Option<Restarted>, SessionError> {
        let current = self
            .tag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(given) = if_match.filter(|g| !tag_matches(g, &current)) {
            return Err(SessionError::TagMismatch {
                given: given.to_owned(),
                current,
            });
        }
        let (reply, answer) = oneshot::channel();
        let patch = Patch::parse(fragment, reply)?;
        let restart = matches!(patch, Patch::Restart { .. });
        self.patches
            .send(patch)
            .map_err(|_| SessionError::NoSession)?;
        if !restart {
            return Ok(None);
        }
        match answer.await {
            Ok(Ok(fragment)) => {
                let tag = new_tag();
                *self.tag.lock().unwrap_or_else(PoisonError::into_inner) = tag.clone();
                Ok(Some(Restarted { fragment, tag }))
            }
            Ok(Err(e)) => Err(SessionError::Unusable(format!(
                "the ICE restart failed: {e}"
            ))),
            Err(_) => Err(SessionError::NoSession),
        }
    }
}

/// A new entity tag: it only has to differ from the session's earlier ones.
fn new_tag() -> String {
    format!("\"{:016x}\"", rand::random::<u64>())
}

/// RFC 9110 §13.1.1: `*`, or a list of entity tags one of which is the
/// current one by strong comparison (a weak tag never matches).
fn tag_matches(if_match: &str, current: &str) -> bool {
    let given = if_match.trim();
    given == "*" || given.split(',').any(|t| t.trim() == current)
}

/// How long ending a session may take before its task is cut off.
const END_WAIT: Duration = Duration::from_secs(2);

/// A live session: its id, and the task that runs it, reached by PATCHes
/// and told to stop by DELETE.
pub struct LiveSession {
    pub id: String,
    patches: mpsc::UnboundedSender<Patch>,
    /// Its entity tag, new after each ICE restart.
    tag: Arc<Mutex<String>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl LiveSession {
    /// Runs `session` (given the stop signal and the PATCHes) under a new id.
    pub fn spawn<F, Fut>(session: F) -> LiveSession
    where
        F: FnOnce(oneshot::Receiver<()>, mpsc::UnboundedReceiver<Patch>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop_tx, stop) = oneshot::channel();
        let (patches, patches_rx) = mpsc::unbounded_channel();
        LiveSession {
            id: format!("{:032x}", rand::random::<u128>()),
            patches,
            tag: Arc::new(Mutex::new(new_tag())),
            stop: Some(stop_tx),
            task: tokio::spawn(session(stop, patches_rx)),
        }
    }

    /// Whether its task still runs (a failed connection ends it).
    pub fn is_live(&self) -> bool {
        !self.task.is_finished()
    }

    /// Whether this is session `id`, still live.
    pub fn is(&self, id: &str) -> bool {
        self.id == id && self.is_live()
    }

    /// The way to PATCH it, to use without holding what holds the session
    /// (a restart takes up to the gathering wait).
    pub fn patcher(&self) -> Patcher {
        Patcher {
            patches: self.patches.clone(),
            tag: self.tag.clone(),
        }
    }

    /// What a new session's answer goes out with.
    pub fn opened(&self, answer: String) -> Opened {
        Opened {
            id: self.id.clone(),
            answer,
            tag: self
                .tag
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Stops the task and waits for it to close its connection.
    pub async fn end(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(END_WAIT, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_is_candidates_or_a_restart() {
        let (tx, _) = oneshot::channel();
        let frag = "a=ice-options:trickle\r\na=group:BUNDLE 0\r\nm=audio 9 RTP/AVP 0\r\n\
            a=mid:0\r\na=candidate:1 1 UDP 2130706431 127.0.0.1 5000 typ host\r\n\
            a=end-of-candidates\r\n";
        let Ok(Patch::Candidates(signals)) = Patch::parse(frag, tx) else {
            panic!("candidates");
        };
        assert_eq!(signals.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&signals[0]).unwrap();
        assert_eq!(
            v["candidate"]["candidate"],
            "candidate:1 1 UDP 2130706431 127.0.0.1 5000 typ host"
        );
        assert_eq!(v["candidate"]["sdpMid"], "0");
        let (tx, _) = oneshot::channel();
        let restart = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n";
        let Ok(Patch::Restart { ufrag, pwd, .. }) = Patch::parse(restart, tx) else {
            panic!("a restart");
        };
        assert_eq!(
            (ufrag.as_str(), pwd.as_str()),
            ("abcd", "0123456789012345678901")
        );
        let (tx, _) = oneshot::channel();
        assert!(Patch::parse("a=ice-ufrag:abcd\r\n", tx).is_err());
    }

    #[test]
    fn if_match_compares_entity_tags_strongly() {
        let current = "\"00aa\"";
        assert!(tag_matches("*", current));
        assert!(tag_matches(" \"00aa\" ", current));
        assert!(tag_matches("\"0bb\", \"00aa\"", current));
        assert!(!tag_matches("\"0bb\"", current));
        assert!(!tag_matches("W/\"00aa\"", current));
        assert!(!tag_matches("00aa", current));
    }
}
