//! IVF reading. rtc has an `IVFReader`, but it reads frame by frame from a stream and
//! reports a bad frame as a bare I/O error; we validate the whole file at start-up
//! and need the frame index and byte offset in the message, so the (simple) format
//! is parsed here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::error::printable;
use super::{read_bounded, ticks_to_duration, Frame, SourceError};
use crate::media::Codec;

const HEADER_LEN: usize = 32;
const FRAME_HEADER_LEN: usize = 12;
const MAGIC: &[u8; 4] = b"DKIF";
const SUPPORTED: &str = "VP80 (VP8), VP90 (VP9), AV01 (AV1)";

/// A whole IVF file, validated and split into frames.
#[derive(Clone, Debug)]
pub struct VideoFile {
    path: PathBuf,
    codec: Codec,
    width: u16,
    height: u16,
    timebase: (u32, u32),
    frames: Vec<Frame>,
    frame_interval: Duration,
    loop_period: Duration,
}

impl VideoFile {
    /// Reads and validates an IVF file completely.
    pub fn open(path: impl AsRef<Path>) -> Result<VideoFile, SourceError> {
        let path = path.as_ref();
        Self::from_bytes(path, read_bounded(path)?)
    }

    /// Parses IVF data already in memory; `path` only names it in errors.
    pub fn from_bytes(path: impl AsRef<Path>, data: Bytes) -> Result<VideoFile, SourceError> {
        let path = path.as_ref().to_path_buf();
        let len = data.len();
        let prefix = &data[..len.min(MAGIC.len())];
        if prefix != &MAGIC[..prefix.len()] {
            return Err(SourceError::BadMagic {
                path,
                expected: "an IVF",
                magic: "DKIF",
                found: printable(prefix),
            });
        }
        if len < HEADER_LEN {
            return Err(SourceError::HeaderTooShort {
                path,
                what: "IVF",
                len: len as u64,
                needed: HEADER_LEN as u64,
            });
        }
        let u16_at = |at: usize| u16::from_le_bytes([data[at], data[at + 1]]);
        let u32_at =
            |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);

        let version = u16_at(4);
        if version != 0 {
            tracing::warn!(path = %path.display(), version, "IVF version is not 0; reading it anyway");
        }
        let header_len = usize::from(u16_at(6));
        if header_len < HEADER_LEN || header_len > len {
            return Err(SourceError::BadHeaderLength {
                path,
                declared: header_len as u64,
                file_len: len as u64,
            });
        }
        let fourcc = [data[8], data[9], data[10], data[11]];
        let codec = Codec::from_fourcc(&fourcc).ok_or_else(|| SourceError::UnsupportedCodec {
            path: path.clone(),
            found: format!("\"{}\"", printable(&fourcc)),
            supported: SUPPORTED,
        })?;
        let mut width = u16_at(12);
        let mut height = u16_at(14);
        // libvpx and ffmpeg write the rate (denominator) first, then the scale.
        let denominator = u32_at(16);
        let numerator = u32_at(20);
        if numerator == 0 || denominator == 0 {
            return Err(SourceError::ZeroTimebase {
                path,
                numerator,
                denominator,
            });
        }
        let declared_frames = u32_at(24);

        let mut raw: Vec<RawFrame> = Vec::new();
        let mut offset = header_len;
        while offset < len {
            let frame = raw.len();
            let remaining = len - offset;
            if remaining < FRAME_HEADER_LEN {
                return Err(SourceError::TruncatedFrameHeader {
                    path,
                    frame,
                    offset: offset as u64,
                    remaining: remaining as u64,
                });
            }
            let size = u32_at(offset) as usize;
            let timestamp = u64_at(offset + 4);
            let body = offset + FRAME_HEADER_LEN;
            if size > len - body {
                return Err(SourceError::FrameOverrun {
                    path,
                    frame,
                    offset: offset as u64,
                    size: size as u64,
                    remaining: (len - body) as u64,
                });
            }
            if let Some(previous) = raw.last().map(|f| f.timestamp) {
                if timestamp < previous {
                    return Err(SourceError::TimestampBackwards {
                        path,
                        frame,
                        offset: offset as u64,
                        timestamp,
                        previous,
                    });
                }
            }
            let bytes = data.slice(body..body + size);
            if let Err(reason) = codec.check_frame(&bytes) {
                return Err(SourceError::BadFrame {
                    path,
                    frame,
                    offset: offset as u64,
                    reason,
                });
            }
            let keyframe = codec.is_keyframe(&bytes);
            raw.push(RawFrame {
                data: bytes,
                timestamp,
                keyframe,
                offset: offset as u64,
            });
            offset = body + size;
        }

        let (first_ts, last) = match (raw.first(), raw.last()) {
            (Some(first), Some(last)) => (first.timestamp, (last.timestamp, last.offset)),
            _ => {
                return Err(SourceError::NoFrames {
                    path,
                    what: "frames",
                })
            }
        };
        let (last_ts, last_offset) = last;
        if declared_frames as usize != raw.len() {
            // Recorders that were killed leave 0 here; readers go by the data.
            tracing::debug!(path = %path.display(), declared_frames, actual = raw.len(), "IVF frame count differs from header");
        }

        let interval_ticks = frame_interval_ticks(raw.iter().map(|f| f.timestamp));
        let too_long = |frame: usize, offset: u64| SourceError::BadFrame {
            path: path.clone(),
            frame,
            offset,
            reason: "timestamp is too large to represent".into(),
        };
        let mut frames = Vec::with_capacity(raw.len());
        for (i, f) in raw.into_iter().enumerate() {
            let pts = ticks_to_duration(f.timestamp - first_ts, numerator, denominator)
                .ok_or_else(|| too_long(i, f.offset))?;
            frames.push(Frame {
                data: f.data,
                pts,
                keyframe: f.keyframe,
            });
        }
        let last_index = frames.len() - 1;
        let period = (last_ts - first_ts)
            .checked_add(interval_ticks)
            .and_then(|t| ticks_to_duration(t, numerator, denominator));
        let interval = ticks_to_duration(interval_ticks, numerator, denominator);
        let (Some(loop_period), Some(frame_interval)) = (period, interval) else {
            return Err(too_long(last_index, last_offset));
        };
        if loop_period.is_zero() {
            return Err(SourceError::BadFrame {
                path,
                frame: 0,
                offset: header_len as u64,
                reason: format!("timebase {numerator}/{denominator} is too fine: a frame lasts less than a nanosecond"),
            });
        }

        if !frames.first().is_some_and(|f| f.keyframe) {
            tracing::warn!(path = %path.display(), "first frame is not a keyframe; viewers see nothing until the first keyframe");
        }
        if !frames.iter().any(|f| f.keyframe) {
            tracing::warn!(path = %path.display(), "no keyframe found; viewers may never get a picture");
        }
        if width == 0 || height == 0 {
            if let Some((w, h)) = frames.iter().find_map(|f| codec.keyframe_size(&f.data)) {
                width = w;
                height = h;
            }
        }

        Ok(VideoFile {
            path,
            codec,
            width,
            height,
            timebase: (numerator, denominator),
            frames,
            frame_interval,
            loop_period,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// From the IVF header (or the first keyframe if the header says 0).
    pub fn width(&self) -> u16 {
        self.width
    }

    pub fn height(&self) -> u16 {
        self.height
    }

    /// The IVF timebase as (numerator, denominator): one timestamp tick is
    /// numerator/denominator seconds.
    pub fn timebase(&self) -> (u32, u32) {
        self.timebase
    }

    /// Never empty.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// The typical time between frames: the median timestamp step (one timebase tick
    /// for a single-frame file). The last frame is shown for this long.
    pub fn frame_interval(&self) -> Duration {
        self.frame_interval
    }

    /// Length of one pass: last pts + one frame interval; never zero.
    pub fn loop_period(&self) -> Duration {
        self.loop_period
    }

    pub fn keyframe_count(&self) -> usize {
        self.frames.iter().filter(|f| f.keyframe).count()
    }

    /// The longest a viewer who joins at an unlucky moment waits for a keyframe while
    /// the file plays in a loop: the largest gap between consecutive keyframes,
    /// counting the gap from the last keyframe round to the first of the next pass.
    /// `None` if the file has no keyframe at all.
    pub fn keyframe_interval(&self) -> Option<Duration> {
        let mut keys = self.frames.iter().filter(|f| f.keyframe).map(|f| f.pts);
        let first = keys.next()?;
        let mut max = Duration::ZERO;
        let mut previous = first;
        for pts in keys {
            max = max.max(pts - previous);
            previous = pts;
        }
        let wrap = self.loop_period.saturating_sub(previous) + first;
        Some(max.max(wrap))
    }
}

struct RawFrame {
    data: Bytes,
    timestamp: u64,
    keyframe: bool,
    offset: u64,
}

/// The median step between consecutive timestamps, ignoring zero steps unless all
/// are zero; at least one tick, so a loop always moves time forward.
fn frame_interval_ticks(timestamps: impl Iterator<Item = u64>) -> u64 {
    let ts: Vec<u64> = timestamps.collect();
    let mut steps: Vec<u64> = ts
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 0)
        .collect();
    steps.sort_unstable();
    steps.get(steps.len() / 2).copied().unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_median_step() {
        assert_eq!(frame_interval_ticks([0, 1, 2, 3, 10].into_iter()), 1);
        assert_eq!(
            frame_interval_ticks([0, 3000, 6000, 9100].into_iter()),
            3000
        );
        assert_eq!(frame_interval_ticks([5].into_iter()), 1);
        assert_eq!(frame_interval_ticks([5, 5, 5].into_iter()), 1);
    }
}
