//! The file source's side of the hub: file -> packetizer -> the source's
//! tracks, paced by the file's own timestamps.
//!
//! Each frame is sent at `start + due`, where `due` is computed from the
//! file's timestamps and the loop count alone, never by adding up sleeps, so
//! the stream cannot drift from wall time however long it loops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::forward::TrackHub;
use crate::source::{AudioFile, Schedule, TrackKind, TrackPacketizer, VideoFile};

/// Largest RTP packet the packetizers make: well under every path MTU.
pub const MTU: usize = 1200;

/// What the player has done so far, for the progress line.
#[derive(Default)]
pub struct Progress {
    bytes: AtomicU64,
    position_ns: AtomicU64,
    loops: AtomicU64,
}

impl Progress {
    /// RTP payload bytes sent since the start.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Position within the current pass over the file.
    pub fn position(&self) -> Duration {
        Duration::from_nanos(self.position_ns.load(Ordering::Relaxed))
    }

    /// Completed passes (with `--loop`).
    pub fn loops(&self) -> u64 {
        self.loops.load(Ordering::Relaxed)
    }
}

/// Plays the files into their tracks until the end (or forever, looping).
pub async fn play(
    video: VideoFile,
    audio: Option<AudioFile>,
    looping: bool,
    video_track: Arc<TrackHub>,
    audio_track: Option<Arc<TrackHub>>,
    progress: Arc<Progress>,
) -> Result<(), crate::RelayError> {
    let schedule = Schedule::new(&video, audio.as_ref(), looping);
    let period = schedule.period();
    let packetizer = |codec: crate::media::Codec| {
        TrackPacketizer::new(codec, rand::random(), codec.default_payload_type(), MTU)
    };
    let mut video_packetizer = packetizer(video.codec());
    let mut audio_packetizer = audio.as_ref().map(|a| packetizer(a.codec()));
    let start = tokio::time::Instant::now();
    for s in schedule {
        tokio::time::sleep_until(start + s.due).await;
        let (frame, packetizer, track) = match s.track {
            TrackKind::Video => (
                video.frames().get(s.index),
                &mut video_packetizer,
                &video_track,
            ),
            TrackKind::Audio => match (&audio, audio_packetizer.as_mut(), &audio_track) {
                (Some(a), Some(p), Some(t)) => (a.packets().get(s.index), p, t),
                _ => continue,
            },
        };
        let Some(frame) = frame else { continue };
        let mut bytes = 0;
        for p in packetizer.packetize(frame, s.loop_index, period) {
            bytes += p.payload.len() as u64;
            track.forward(&p);
        }
        progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        let pass_start = period.saturating_mul(u32::try_from(s.loop_index).unwrap_or(u32::MAX));
        progress.position_ns.store(
            s.due.saturating_sub(pass_start).as_nanos() as u64,
            Ordering::Relaxed,
        );
        progress.loops.store(s.loop_index, Ordering::Relaxed);
    }
    Ok(())
}
