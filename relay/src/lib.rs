//! The media engine of peer-tree-relay: a tree member that takes RTP tracks
//! and data channels from one parent (or a file) and forwards them unchanged
//! to up to k children.
//!
//! Data flows one way: `source` (file -> packetizer) or `upstream` (the
//! parent's connection) -> `forward` (the hub's fan-out) -> `downstream`
//! (one connection per child). `feedback` carries keyframe requests the other
//! way; `node` follows the signalling server's tree events; `record` writes
//! what arrives to a file.

pub mod downstream;
pub mod feedback;
pub mod forward;
pub mod gate;
pub mod gop;
pub mod ingest;
pub mod media;
pub mod nack;
pub mod node;
pub mod offer_sessions;
pub mod pace;
pub mod parent_watch;
pub mod peer;
pub mod publish;
pub mod record;
pub mod relayed_checks;
pub mod reorder;
pub mod repair;
pub mod resend;
pub mod rtp_sdp;
pub mod rtx;
pub mod runtime;
pub mod source;
pub mod splice;
pub mod tap;
pub mod upstream;
pub mod whep;
pub mod whip;

/// Errors of the media engine.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("webrtc: {0}")]
    Webrtc(#[from] webrtc::error::Error),
    #[error(transparent)]
    Signalling(#[from] signalling::client::ClientError),
    #[error("malformed signal: {0}")]
    BadSignal(String),
    #[error("unsupported codec {0}; supported: VP8, VP9, AV1, H.264, Opus")]
    UnsupportedCodec(String),
    #[error("lost the connection to the signalling server")]
    SignallingLost,
    #[error("could not get back into the tree: {0}")]
    Rejoin(String),
    #[error(transparent)]
    Source(#[from] source::SourceError),
}
