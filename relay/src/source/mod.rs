//! The file source, minus the network: IVF and Ogg Opus readers, the per-track RTP
//! packetizer and the schedule that says when each frame is due.
//!
//! Data flows file -> [`VideoFile`]/[`AudioFile`] -> [`Schedule`] (when) ->
//! [`TrackPacketizer`] (what) -> the source's tracks. Files are read and validated
//! completely up front, so a corrupt file fails at start-up with a message naming
//! the frame and byte offset, never halfway through a broadcast.

mod error;
mod ivf;
mod ogg;
mod packetize;
mod schedule;

pub use error::SourceError;
pub use ivf::VideoFile;
pub use ogg::AudioFile;
pub use packetize::TrackPacketizer;
pub use schedule::{Schedule, Scheduled, TrackKind};

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

/// Files larger than this are refused: they are held in memory whole.
pub const MAX_FILE_SIZE: u64 = 1 << 30;

/// One encoded video frame or Opus packet, with its presentation time counted from
/// the file's first frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub data: Bytes,
    pub pts: Duration,
    /// Whether a decoder can start here (always true for Opus).
    pub keyframe: bool,
}

impl std::fmt::Debug for Frame {
    // The payload is summarised: printing kilobytes of escaped bytes helps nobody.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("len", &self.data.len())
            .field("pts", &self.pts)
            .field("keyframe", &self.keyframe)
            .finish()
    }
}

/// Reads a whole file, refusing more than [`MAX_FILE_SIZE`] bytes. The limit is
/// enforced on the read itself, not on metadata, so FIFOs and devices are bounded
/// too.
pub(crate) fn read_bounded(path: &Path) -> Result<Bytes, SourceError> {
    let io = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let too_large = || SourceError::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_FILE_SIZE,
    };
    // Regular files announce their size; refuse big ones before reading anything.
    if file.metadata().is_ok_and(|m| m.len() > MAX_FILE_SIZE) {
        return Err(too_large());
    }
    let mut data = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(io)?;
    if data.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large());
    }
    Ok(Bytes::from(data))
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// `ticks × num / den` seconds as a Duration, rounded to the nearest nanosecond;
/// `None` if it does not fit. Integer arithmetic throughout so that loop N of a
/// file lands exactly on N × period.
pub(crate) fn ticks_to_duration(ticks: u64, num: u32, den: u32) -> Option<Duration> {
    if den == 0 {
        return None;
    }
    let den = u128::from(den);
    let nanos = (u128::from(ticks) * u128::from(num) * NANOS_PER_SEC + den / 2) / den;
    duration_from_nanos(nanos)
}

pub(crate) fn duration_from_nanos(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    // The remainder is below 1e9, so it fits.
    Some(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// `loop_index × period + pts` in nanoseconds, without overflow.
pub(crate) fn loop_time_nanos(loop_index: u64, period: Duration, pts: Duration) -> u128 {
    u128::from(loop_index) * period.as_nanos() + pts.as_nanos()
}
