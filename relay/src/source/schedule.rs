//! When each frame is due: one timeline for a video file and an optional audio file.

use std::time::Duration;

use super::{duration_from_nanos, loop_time_nanos, AudioFile, VideoFile};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Video,
    Audio,
}

/// One frame to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// Since stream start, absolute: sleeping until `start + due` never drifts.
    pub due: Duration,
    pub track: TrackKind,
    /// Index into [`VideoFile::frames`] or [`AudioFile::packets`].
    pub index: usize,
    /// Which pass over the files (0 for the first).
    pub loop_index: u64,
}

/// Merges the files' frames in time order (video first on ties). With `looping`,
/// pass N starts at N × [`period`](Schedule::period), where the period is the
/// longer of the two files' lengths: the shorter track simply pauses until the next
/// pass. Frames due at or after the period (in practice only the trailing,
/// end-trimmed packet of an Opus file) are skipped when looping, as they would land
/// on the next pass's first frames.
///
/// Owns copies of the frame times only, so it can move into a task while the files
/// are shared elsewhere.
#[derive(Clone, Debug)]
pub struct Schedule {
    video: Vec<Duration>,
    audio: Vec<Duration>,
    period: Duration,
    looping: bool,
    loop_index: u64,
    next_video: usize,
    next_audio: usize,
    done: bool,
}

impl Schedule {
    pub fn new(video: &VideoFile, audio: Option<&AudioFile>, looping: bool) -> Schedule {
        let period = audio.map_or(video.loop_period(), |a| {
            video.loop_period().max(a.loop_period())
        });
        // Times never decrease within a file, so what is dropped is a suffix and
        // the remaining indices still match the files' own.
        let keep = |pts: &Duration| !looping || *pts < period;
        Schedule {
            video: video
                .frames()
                .iter()
                .map(|f| f.pts)
                .take_while(keep)
                .collect(),
            audio: audio
                .map(|a| a.packets().iter().map(|f| f.pts).take_while(keep).collect())
                .unwrap_or_default(),
            period,
            looping,
            loop_index: 0,
            next_video: 0,
            next_audio: 0,
            done: false,
        }
    }

    /// The length of one pass; what [`TrackPacketizer::packetize`](super::TrackPacketizer::packetize)
    /// takes as `loop_period`.
    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn is_looping(&self) -> bool {
        self.looping
    }

    fn due(&self, pts: Duration) -> Option<Duration> {
        duration_from_nanos(loop_time_nanos(self.loop_index, self.period, pts))
    }
}

impl Iterator for Schedule {
    type Item = Scheduled;

    fn next(&mut self) -> Option<Scheduled> {
        loop {
            if self.done {
                return None;
            }
            let video = self.video.get(self.next_video).copied();
            let audio = self.audio.get(self.next_audio).copied();
            let (track, pts) = match (video, audio) {
                (Some(v), Some(a)) if a < v => (TrackKind::Audio, a),
                (Some(v), _) => (TrackKind::Video, v),
                (None, Some(a)) => (TrackKind::Audio, a),
                (None, None) => {
                    if !self.looping || (self.video.is_empty() && self.audio.is_empty()) {
                        self.done = true;
                        return None;
                    }
                    self.loop_index += 1;
                    self.next_video = 0;
                    self.next_audio = 0;
                    continue;
                }
            };
            let Some(due) = self.due(pts) else {
                // Past Duration's range, some 584 billion years on.
                self.done = true;
                return None;
            };
            let index = match track {
                TrackKind::Video => {
                    self.next_video += 1;
                    self.next_video - 1
                }
                TrackKind::Audio => {
                    self.next_audio += 1;
                    self.next_audio - 1
                }
            };
            return Some(Scheduled {
                due,
                track,
                index,
                loop_index: self.loop_index,
            });
        }
    }
}
