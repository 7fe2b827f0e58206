//! What WHIP (RFC 9725) and WHEP have in common, without their HTTP: a
//! remote sends one offer and gets an answer that holds every candidate of
//! this end, trickles its own candidates afterwards in SDP fragments (RFC
//! 8840), and ends the session by its id. whip.rs takes a publisher's
//! tracks in, whep.rs gives a player the node's tracks; the binary serves
//! both over HTTP through this trait.

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
    #[error("could not set up the session: {0}")]
    Failed(#[from] RelayError),
}

/// Sessions set up by one offer each.
#[async_trait::async_trait]
pub trait OfferSessions: Send + Sync {
    /// Answers `offer`; returns the new session's id and the answer.
    async fn open(&self, offer: &str) -> Result<(String, String), SessionError>;
    /// Applies a fragment of trickled candidates to session `id`.
    async fn trickle(&self, id: &str, fragment: &str) -> Result<(), SessionError>;
    /// Ends session `id`.
    async fn end(&self, id: &str) -> Result<(), SessionError>;
}

/// The candidates of a trickled fragment, with the media id they are for
/// (the first bundled section's; "0" when the fragment names none), as
/// `signal` payloads a link applies. An ICE restart (new credentials in
/// the fragment) is refused: this end does not restart ICE.
pub fn fragment_candidates(fragment: &str) -> Result<Vec<String>, SessionError> {
    let mut mid = "0";
    let mut candidates = Vec::new();
    for line in fragment.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = m.trim();
        } else if let Some(c) = line.strip_prefix("a=") {
            if c.starts_with("candidate:") {
                candidates.push(c);
            } else if c.starts_with("ice-ufrag:") || c.starts_with("ice-pwd:") {
                return Err(SessionError::Unusable(
                    "ICE restarts are not supported: start a new session (DELETE, then POST)"
                        .into(),
                ));
            }
        }
    }
    Ok(candidates
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "candidate": { "candidate": c, "sdpMid": mid, "sdpMLineIndex": 0 }
            })
            .to_string()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragments_candidates_become_signals_and_a_restart_is_refused() {
        let frag = "a=ice-options:trickle\r\na=group:BUNDLE 0\r\nm=audio 9 RTP/AVP 0\r\n\
            a=mid:0\r\na=candidate:1 1 UDP 2130706431 127.0.0.1 5000 typ host\r\n\
            a=end-of-candidates\r\n";
        let signals = fragment_candidates(frag).unwrap();
        assert_eq!(signals.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&signals[0]).unwrap();
        assert_eq!(
            v["candidate"]["candidate"],
            "candidate:1 1 UDP 2130706431 127.0.0.1 5000 typ host"
        );
        assert_eq!(v["candidate"]["sdpMid"], "0");
        let restart = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n";
        assert!(matches!(
            fragment_candidates(restart),
            Err(SessionError::Unusable(_))
        ));
    }
}
