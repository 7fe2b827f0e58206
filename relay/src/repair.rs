//! Which packets a hop forwards when repairs arrive: each sequence number
//! once, and a late one (a retransmission that filled a hole upstream) only
//! while a receiver can still use it.
//!
//! A repaired packet is forwarded at once, not held for order: holding
//! would delay every packet behind the hole for every child, while a
//! receiver's own jitter buffer (or the recorder's reorder buffer) puts it
//! in its place. Its sequence number is the one it would have had, so it
//! lands where the hole is. Duplicates are dropped here because a receiver's
//! SRTP would drop them anyway, and log each one as a replay.

/// Sequence numbers remembered: about 25 s of the sample, 136 ms at
/// 15,000 packets/s.
const WINDOW: u16 = 2048;

/// How far behind the newest packet (in RTP time) a late packet may be and
/// still go out: a browser's jitter buffer gives up on a frame well before
/// this, and a recorder waits at most a second (`record::REORDER_WAIT`).
pub const MAX_LATE_SECONDS: u32 = 1;

/// What to do with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than everything before: forward.
    Next,
    /// Older than the newest but never forwarded, and young enough: forward.
    Late,
    /// Forwarded before.
    Duplicate,
    /// Too old to be of use, or beyond what this window remembers.
    Stale,
}

/// The recent sequence numbers of one outgoing stream.
#[derive(Debug)]
pub struct Repairs {
    newest: Option<(u16, u32)>,
    seen: Vec<u64>,
}

impl Default for Repairs {
    fn default() -> Self {
        Repairs {
            newest: None,
            seen: vec![0; usize::from(WINDOW) / 64],
        }
    }
}

impl Repairs {
    fn bit(seq: u16) -> (usize, u64) {
        let i = usize::from(seq % WINDOW);
        (i / 64, 1u64 << (i % 64))
    }

    fn mark(&mut self, seq: u16) {
        let (w, b) = Self::bit(seq);
        self.seen[w] |= b;
    }

    fn clear(&mut self, seq: u16) {
        let (w, b) = Self::bit(seq);
        self.seen[w] &= !b;
    }

    fn marked(&self, seq: u16) -> bool {
        let (w, b) = Self::bit(seq);
        self.seen[w] & b != 0
    }

    /// Judges a packet by its sequence number and timestamp (`clock_rate`
    /// ticks per second), and remembers it if it goes out.
    pub fn admit(&mut self, seq: u16, timestamp: u32, clock_rate: u32) -> Verdict {
        let Some((newest, newest_ts)) = self.newest else {
            self.newest = Some((seq, timestamp));
            self.mark(seq);
            return Verdict::Next;
        };
        let ahead = seq.wrapping_sub(newest) as i16;
        if ahead > 0 {
            // Forget the slots the window now moves over.
            let steps = (ahead as u16).min(WINDOW);
            for i in 1..=steps {
                self.clear(newest.wrapping_add(i));
            }
            self.newest = Some((seq, timestamp));
            self.mark(seq);
            return Verdict::Next;
        }
        if ahead == 0 || self.marked(seq) && ahead.unsigned_abs() < WINDOW {
            return Verdict::Duplicate;
        }
        let behind = newest_ts.wrapping_sub(timestamp) as i32;
        let max_behind = i64::from(clock_rate) * i64::from(MAX_LATE_SECONDS);
        if ahead.unsigned_abs() >= WINDOW || i64::from(behind) > max_behind {
            return Verdict::Stale;
        }
        self.mark(seq);
        Verdict::Late
    }

    /// A new stream follows (a new upstream after a keyframe wait): forget.
    pub fn reset(&mut self) {
        *self = Repairs::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u32 = 90_000;

    #[test]
    fn a_repair_goes_out_once() {
        let mut r = Repairs::default();
        assert_eq!(r.admit(10, 0, HZ), Verdict::Next);
        assert_eq!(r.admit(12, 3000, HZ), Verdict::Next);
        assert_eq!(r.admit(11, 3000, HZ), Verdict::Late);
        assert_eq!(r.admit(11, 3000, HZ), Verdict::Duplicate);
        assert_eq!(r.admit(12, 3000, HZ), Verdict::Duplicate);
        assert_eq!(r.admit(10, 0, HZ), Verdict::Duplicate);
    }

    #[test]
    fn a_repair_older_than_a_second_is_stale() {
        let mut r = Repairs::default();
        r.admit(100, 0, HZ);
        r.admit(102, HZ + 1, HZ);
        assert_eq!(r.admit(101, 0, HZ), Verdict::Stale);
        assert_eq!(r.admit(101, 1, HZ), Verdict::Late);
    }

    #[test]
    fn the_window_moves_with_the_stream_and_wraps() {
        let mut r = Repairs::default();
        r.admit(65_530, 0, HZ);
        // A whole window later the old slot is free again: what fell out of
        // the window is stale, not a duplicate.
        assert_eq!(
            r.admit(65_530u16.wrapping_add(WINDOW), 10, HZ),
            Verdict::Next
        );
        assert_eq!(r.admit(65_530, 10, HZ), Verdict::Stale);
        // Across the 16-bit wrap.
        let mut r = Repairs::default();
        r.admit(65_535, 0, HZ);
        assert_eq!(r.admit(1, 0, HZ), Verdict::Next);
        assert_eq!(r.admit(0, 0, HZ), Verdict::Late);
        assert_eq!(r.admit(65_535, 0, HZ), Verdict::Duplicate);
    }
}
