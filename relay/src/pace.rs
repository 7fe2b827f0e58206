//! One child's video, at the speed its link carries: paced, and cut at
//! group-of-pictures boundaries when the link is slower than the stream.
//!
//! Forwarded at the source's pace, a stream faster than a child's link loses
//! packets in that link's queue, a keyframe (a burst of dozens of packets)
//! most of all, so a slow child never decodes anything. Sans-I/O: the leg's
//! writer passes in packets, receiver reports and the time, and asks when
//! each packet may go.
//!
//! - The rate is learned from the child's receiver reports (loss-based, as
//!   in GCC's loss controller): over 10% lost means the link is full, the
//!   link carries what got through, and the rate drops a little below
//!   that; the reports of the next moments, which still tell of the old
//!   rate, are not acted on. Under 2% lets a rate that held packets back
//!   grow again: fast up to what the link carried, slowly beyond; between
//!   the two the rate holds. Until the link shows itself full nothing is
//!   paced.
//! - "Over 10%" is judged over the last seconds' packets, and only when it
//!   is sure: a report covers a few dozen packets, and a link that drops 5%
//!   at random shows 12% in one report of twenty. Cut on that, the rate
//!   would sit below the stream's and skip groups for good, since under
//!   steady random loss no report comes clear enough to grow it back.
//! - Packets wait in the leg's queue while the pacer holds them, so the
//!   child falls behind. A group starts only while the child is less than
//!   [`MAX_BEHIND`] behind; otherwise the whole group is skipped and the
//!   child catches up. A group that started goes out whole, unless the
//!   child falls [`MAX_BEHIND_IN_GROUP`] behind, when the rest of it is cut
//!   at a frame boundary.
//! - Skipped packets are taken out of the child's numbering, so it sees a
//!   jump in time, never a hole to NACK: every frame it gets is whole.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A group starts only if its first packet waited less than this.
pub const MAX_BEHIND: Duration = Duration::from_millis(500);
/// Past this, the rest of a group is cut (from the next frame on).
pub const MAX_BEHIND_IN_GROUP: Duration = Duration::from_secs(2);
/// Loss above which the link counts as full.
const LOSS_FULL: f64 = 0.10;
/// Loss below which a rate that held packets back may grow.
const LOSS_CLEAR: f64 = 0.02;
/// Loss is judged over the reports of this long...
const WINDOW: Duration = Duration::from_secs(5);
/// ...and the link is full when its loss exceeds [`LOSS_FULL`] by this many
/// standard deviations of a binomial count at that rate: random loss of 5%
/// reaches that in one report of 40 packets once in 20,000, a link carrying
/// 80% of the stream within three seconds.
const SURE: f64 = 3.0;
/// After a full link, the rate is this share of what got through, so the
/// link's queue drains.
const HEADROOM: f64 = 0.9;
/// Reports this long after a decrease still tell of the rate before it (a
/// report covers about a second, and the link's queue drains after).
const HOLD: Duration = Duration::from_millis(1500);
/// Growth per clear report (reports come about every second): quick while
/// below what the link carried when it was last full, slow beyond.
const PROBE_FAST: f64 = 1.25;
const PROBE_SLOW: f64 = 1.03;
/// Bytes a packet costs on the wire beyond its payload: IPv4, UDP, RTP and
/// the SRTP tag. A rate limit counts them too.
pub const PACKET_OVERHEAD: usize = 20 + 8 + 12 + 10;
/// Never below this (bytes/s): 32 kbit/s still carries keyframes, slowly.
const MIN_RATE: f64 = 4_000.0;
/// Burst the pacer allows, in seconds at its rate.
const BURST_SECONDS: f64 = 0.05;
/// Reports closer together than this say too little to act on.
const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(200);

/// What to do with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Send it, not before this instant.
    SendAt(Instant),
    /// Drop it: its group is skipped.
    Skip,
}

/// The pacing state of one child's video.
#[derive(Debug)]
pub struct Pacer {
    /// Bytes per second; None while no report has shown a full link.
    rate: Option<f64>,
    tokens: f64,
    refilled: Instant,
    /// Media bytes and packets sent since the last report, and when that
    /// was.
    sent: u64,
    packets: u32,
    reported: Instant,
    /// The reports of the last [`WINDOW`] that were acted on.
    window: VecDeque<Report>,
    /// A packet was held back since the last report.
    limited: bool,
    /// What the link carried (bytes/s) when it was last full.
    carried: Option<f64>,
    /// Reports before this are not acted on (see [`HOLD`]).
    hold_until: Option<Instant>,
    skipping: bool,
    /// Packets taken out of the child's numbering so far.
    skipped: u16,
    pub groups_sent: u64,
    pub groups_skipped: u64,
}

impl Pacer {
    pub fn new(now: Instant) -> Pacer {
        Pacer {
            rate: None,
            tokens: 0.0,
            refilled: now,
            sent: 0,
            packets: 0,
            reported: now,
            window: VecDeque::new(),
            limited: false,
            carried: None,
            hold_until: None,
            skipping: false,
            skipped: 0,
            groups_sent: 0,
            groups_skipped: 0,
        }
    }

    /// The link's rate as learned, in bits per second (None: unlimited).
    pub fn rate_bps(&self) -> Option<f64> {
        self.rate.map(|r| r * 8.0)
    }

    /// Subtract from every sequence number sent: the packets skipped.
    pub fn seq_offset(&self) -> u16 {
        self.skipped
    }

    /// Decides for one packet that was queued at `queued_at`.
    /// `group_start`: it begins a keyframe; `frame_start`: the one before it
    /// ended a frame.
    pub fn on_packet(
        &mut self,
        queued_at: Instant,
        bytes: usize,
        group_start: bool,
        frame_start: bool,
        now: Instant,
    ) -> Pace {
        let behind = now.saturating_duration_since(queued_at);
        if group_start {
            self.skipping = behind >= MAX_BEHIND;
            if self.skipping {
                self.groups_skipped += 1;
            } else {
                self.groups_sent += 1;
            }
        } else if !self.skipping && frame_start && behind >= MAX_BEHIND_IN_GROUP {
            self.skipping = true;
        }
        if self.skipping {
            self.skipped = self.skipped.wrapping_add(1);
            return Pace::Skip;
        }
        let bytes = bytes + PACKET_OVERHEAD;
        self.sent += bytes as u64;
        self.packets += 1;
        Pace::SendAt(self.reserve(bytes, now))
    }

    fn reserve(&mut self, bytes: usize, now: Instant) -> Instant {
        let Some(rate) = self.rate else {
            return now;
        };
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + rate * elapsed).min(rate * BURST_SECONDS);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            return now;
        }
        self.limited = true;
        now + Duration::from_secs_f64(-self.tokens / rate)
    }

    /// A receiver report from the child: the fraction of packets lost
    /// since its previous one (0.0 to 1.0).
    pub fn on_report(&mut self, fraction_lost: f64, now: Instant) {
        let interval = now.saturating_duration_since(self.reported);
        if interval < MIN_REPORT_INTERVAL {
            return;
        }
        let sent_rate = self.sent as f64 / interval.as_secs_f64();
        // Reports during the hold tell of the rate before the decrease.
        if self.hold_until.is_none_or(|t| now >= t) {
            self.judge(fraction_lost, interval, now);
        }
        // A rate far above what the stream needs limits nothing.
        if self
            .rate
            .is_some_and(|r| !self.limited && sent_rate > 0.0 && r > 4.0 * sent_rate)
        {
            self.rate = None;
        }
        self.sent = 0;
        self.packets = 0;
        self.limited = false;
        self.reported = now;
    }

    fn judge(&mut self, fraction_lost: f64, interval: Duration, now: Instant) {
        self.window.push_back(Report {
            at: now,
            interval,
            bytes: self.sent,
            packets: f64::from(self.packets),
            lost: f64::from(self.packets) * fraction_lost,
        });
        while self.window.front().is_some_and(|r| now - r.at > WINDOW) {
            self.window.pop_front();
        }
        if let Some(carried) = self.full() {
            let target = carried * HEADROOM;
            self.rate = Some(self.rate.map_or(target, |r| r.min(target)));
            self.carried = Some(carried);
            self.hold_until = Some(now + HOLD);
            self.window.clear();
            self.tokens = 0.0;
            self.refilled = now;
        } else if fraction_lost < LOSS_CLEAR && self.limited {
            if let Some(r) = self.rate {
                let below = self.carried.is_some_and(|c| r < c * HEADROOM);
                let grown = r * if below { PROBE_FAST } else { PROBE_SLOW };
                // Fast growth stops at the headroom mark.
                let cap = self.carried.map(|c| c * HEADROOM).filter(|_| below);
                self.rate = Some(cap.map_or(grown, |c| grown.min(c)));
            }
        }
    }

    /// What the link carries (bytes/s), if the window's loss shows it full.
    fn full(&self) -> Option<f64> {
        let (mut packets, mut lost, mut bytes, mut secs) = (0.0, 0.0, 0u64, 0.0);
        for r in &self.window {
            packets += r.packets;
            lost += r.lost;
            bytes += r.bytes;
            secs += r.interval.as_secs_f64();
        }
        let spread = (packets * LOSS_FULL * (1.0 - LOSS_FULL)).sqrt();
        if packets == 0.0 || lost <= LOSS_FULL * packets + SURE * spread {
            return None;
        }
        let through = 1.0 - lost / packets;
        Some((bytes as f64 / secs * through).max(MIN_RATE))
    }
}

/// One receiver report, with what was sent in the time it covers.
#[derive(Debug)]
struct Report {
    at: Instant,
    interval: Duration,
    bytes: u64,
    packets: f64,
    lost: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` packets of `bytes`, each a whole frame, queued and sent at `t`.
    fn whole_frames(p: &mut Pacer, n: usize, bytes: usize, t: Instant) {
        for _ in 0..n {
            p.on_packet(t, bytes, false, true, t);
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_is_paced_until_a_report_shows_loss() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        for i in 0..100 {
            assert_eq!(p.on_packet(t0, 1200, i == 0, true, t0), Pace::SendAt(t0));
        }
        p.on_report(0.0, t0 + ms(1000));
        assert_eq!(p.rate_bps(), None);
    }

    #[test]
    fn a_full_link_sets_the_rate_to_what_got_through_and_paces() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        // 1 Mbit/s for a second, a quarter of it lost.
        for i in 0..100 {
            p.on_packet(t0, 1200, i == 0, true, t0);
        }
        let t1 = t0 + ms(1000);
        p.on_report(0.25, t1);
        let rate = p.rate_bps().expect("paced now");
        let wire = (1200 + PACKET_OVERHEAD) as f64;
        let carried = 100.0 * wire * 8.0 * 0.75;
        assert!((rate - carried * HEADROOM).abs() < 1.0, "{rate}");
        // 1200-byte packets now go out a packet's wire size / rate apart.
        let gap = Duration::from_secs_f64(wire / (rate / 8.0));
        let near = |pace: Pace, want: Instant| match pace {
            Pace::SendAt(at) => {
                let off = at.max(want) - at.min(want);
                assert!(off < Duration::from_micros(1), "{at:?} is not {want:?}");
            }
            Pace::Skip => panic!("skipped"),
        };
        near(p.on_packet(t1, 1200, false, true, t1), t1 + gap);
        near(p.on_packet(t1, 1200, false, true, t1), t1 + gap * 2);
    }

    /// A stream of 40 packets a second (about the sample's) over a link
    /// that drops `loss` of them at random, reported once a second as RTCP
    /// does (in 256ths) for `secs`. Returns the reports after which it was
    /// paced.
    fn random_loss(loss: f64, secs: u32, seed: u64) -> Vec<u32> {
        // xorshift64: the same draws on every run.
        let mut state = seed;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        let mut paced = Vec::new();
        for s in 0..secs {
            let t = t0 + ms(u64::from(s) * 1000);
            let mut lost = 0;
            for i in 0..40 {
                p.on_packet(t, 800, i == 0 && s % 2 == 0, true, t);
                lost += u32::from(uniform() < loss);
            }
            let fraction = f64::from(lost * 256 / 40) / 256.0;
            p.on_report(fraction, t + ms(1000));
            if p.rate_bps().is_some() {
                paced.push(s);
            }
        }
        paced
    }

    #[test]
    fn random_loss_is_not_a_full_link() {
        // An hour at 5% and at 8%, in several draws: one report in twenty
        // shows over 10% lost, yet nothing is ever paced.
        for seed in 1..=4u64 {
            for loss in [0.05, 0.08] {
                let paced = random_loss(loss, 3600, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                assert!(
                    paced.is_empty(),
                    "{loss}: paced after {} reports, the first after report {:?}",
                    paced.len(),
                    paced.first()
                );
            }
        }
    }

    #[test]
    fn a_link_carrying_most_of_the_stream_is_found_within_seconds() {
        // 25% and 20% of the stream lost at every report: a link carrying
        // 75% or 80% of it.
        for (loss, within) in [(0.25, 1), (0.20, 3)] {
            let t0 = Instant::now();
            let mut p = Pacer::new(t0);
            let found = (0..10).find(|&s| {
                let t = t0 + ms(s * 1000);
                whole_frames(&mut p, 40, 800, t);
                p.on_report(loss, t + ms(1000));
                p.rate_bps().is_some()
            });
            assert!(
                found.is_some_and(|s| s < within),
                "{loss}: paced after report {found:?}"
            );
        }
    }

    #[test]
    fn a_group_starts_only_if_the_child_is_not_too_far_behind() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        // Queued 600 ms ago: the whole group is skipped, and taken out of
        // the numbering.
        let late = t0 + ms(600);
        assert_eq!(p.on_packet(t0, 1000, true, true, late), Pace::Skip);
        assert_eq!(p.on_packet(t0, 1000, false, false, late), Pace::Skip);
        assert_eq!(p.on_packet(t0, 1000, false, true, late), Pace::Skip);
        assert_eq!(p.seq_offset(), 3);
        // The next group, on time, goes out; and once started it goes on
        // even when it falls behind, up to the in-group limit.
        let t1 = t0 + ms(1000);
        assert_eq!(p.on_packet(t1, 1000, true, true, t1), Pace::SendAt(t1));
        let t2 = t1 + ms(1500);
        assert_eq!(p.on_packet(t1, 1000, false, true, t2), Pace::SendAt(t2));
        // Mid-frame, even past the limit, the frame is finished...
        let t3 = t1 + ms(2500);
        assert_eq!(p.on_packet(t1, 1000, false, false, t3), Pace::SendAt(t3));
        // ...and cut at the next frame.
        assert_eq!(p.on_packet(t1, 1000, false, true, t3), Pace::Skip);
        assert_eq!((p.groups_sent, p.groups_skipped), (1, 1));
        assert_eq!(p.seq_offset(), 4);
    }

    #[test]
    fn a_clear_link_lets_a_limiting_rate_grow_and_finally_go() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        whole_frames(&mut p, 20, 1000, t0);
        p.on_report(0.5, t0 + ms(1000));
        let r0 = p.rate_bps().expect("paced");
        // The report right after still tells of the old rate: no change.
        let mut t = t0 + ms(1000);
        whole_frames(&mut p, 20, 1000, t);
        t += ms(1000);
        p.on_report(0.6, t);
        assert_eq!(p.rate_bps(), Some(r0));
        // Held back, no loss: grows, slowly since the rate is at the
        // headroom mark of what the link carried.
        whole_frames(&mut p, 20, 1000, t);
        t += ms(1000);
        p.on_report(0.0, t);
        let r1 = p.rate_bps().expect("still paced");
        assert!((r1 / r0 - PROBE_SLOW).abs() < 1e-9, "{r0} -> {r1}");
        // Far above what the stream sends and limiting nothing (once the
        // backlog above has drained): unpaced.
        t += ms(5000);
        p.on_packet(t, 100, false, true, t);
        t += ms(1000);
        p.on_report(0.0, t);
        assert_eq!(p.rate_bps(), None);
    }

    #[test]
    fn below_what_the_link_carried_the_rate_grows_fast() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        whole_frames(&mut p, 20, 1000, t0);
        p.on_report(0.5, t0 + ms(1000));
        let low = p.rate_bps().expect("paced");
        // After the hold the link shows itself full again, but carrying
        // more than before: the rate stays, below the new mark...
        let mut t = t0 + ms(2600);
        whole_frames(&mut p, 60, 1000, t);
        p.on_report(0.5, t);
        assert_eq!(p.rate_bps(), Some(low));
        let mark = p.carried.expect("carried") * HEADROOM * 8.0;
        assert!(mark > low * PROBE_FAST, "{mark} {low}");
        // ...and, once the hold is over, climbs quickly up to the mark,
        // then slowly.
        let mut rates = Vec::new();
        for _ in 0..5 {
            whole_frames(&mut p, 60, 1000, t);
            t += ms(1000);
            p.on_report(0.0, t);
            rates.push(p.rate_bps().expect("paced"));
        }
        assert_eq!(rates[0], low, "held: {rates:?}");
        assert!((rates[1] / low - PROBE_FAST).abs() < 1e-9, "{rates:?}");
        assert_eq!(rates[3], mark, "{rates:?}");
        assert!((rates[4] / mark - PROBE_SLOW).abs() < 1e-9, "{rates:?}");
    }

    #[test]
    fn moderate_loss_changes_nothing() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        whole_frames(&mut p, 30, 1200, t0);
        p.on_report(0.05, t0 + ms(1000));
        assert_eq!(p.rate_bps(), None, "5% random loss is not a full link");
    }
}
