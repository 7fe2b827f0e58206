//! Whether a peer still answers: the regular pings, and the quick check
//! asked for when a child says its parent went silent.
//!
//! The connection task sends the pings and reads the pongs; this decides,
//! from the times it is given, when a peer counts as dead, so the rule can
//! be tested without a socket or a sleep.

use std::time::Duration;

use tokio::time::Instant;

/// A peer checked because a child said it went silent (a `reconnect`) must
/// answer a WebSocket ping within this, or it is removed (protocol rule 5).
/// The regular pings take up to two intervals (10 s by default) to find a
/// frozen peer, and a child with nowhere else to go waited that long; a
/// live peer answers in a round trip.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Liveness {
    interval: Duration,
    last_pong: Instant,
    /// A check in progress: its ping went out then, and must be answered
    /// by [`PROBE_DEADLINE`] after.
    checking: Option<Instant>,
}

/// Why a peer counts as gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dead {
    /// No pong within two ping intervals.
    Silent,
    /// No pong to the check's ping within [`PROBE_DEADLINE`].
    FailedCheck,
}

impl Liveness {
    pub(super) fn new(now: Instant, interval: Duration) -> Self {
        Liveness {
            interval,
            last_pong: now,
            checking: None,
        }
    }

    pub(super) fn pong(&mut self, now: Instant) {
        self.last_pong = now;
    }

    /// A check starts with a ping sent now; false (send nothing) while one
    /// is already running, whose deadline stands.
    pub(super) fn start_check(&mut self, now: Instant) -> bool {
        if self.checking.is_some() {
            return false;
        }
        self.checking = Some(now);
        true
    }

    pub(super) fn is_checking(&self) -> bool {
        self.checking.is_some()
    }

    /// When the running check must have been answered.
    pub(super) fn check_deadline(&self) -> Option<Instant> {
        self.checking.map(|t| t + PROBE_DEADLINE)
    }

    /// At the check's deadline: dead unless a pong came after its ping.
    pub(super) fn check_expired(&mut self) -> Result<(), Dead> {
        match self.checking.take() {
            Some(sent) if self.last_pong < sent => Err(Dead::FailedCheck),
            _ => Ok(()),
        }
    }

    /// At each regular ping, before sending it.
    pub(super) fn tick(&self, now: Instant) -> Result<(), Dead> {
        if now.saturating_duration_since(self.last_pong) > 2 * self.interval {
            return Err(Dead::Silent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(5);

    #[test]
    fn a_check_unanswered_by_its_deadline_is_a_death() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, INTERVAL);
        let sent = t0 + Duration::from_secs(3);
        assert!(l.start_check(sent));
        assert_eq!(l.check_deadline(), Some(sent + PROBE_DEADLINE));
        assert_eq!(l.check_expired(), Err(Dead::FailedCheck));
    }

    #[test]
    fn a_check_answered_in_time_keeps_the_peer() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, INTERVAL);
        assert!(l.start_check(t0));
        l.pong(t0 + Duration::from_millis(30));
        assert_eq!(l.check_expired(), Ok(()));
        assert!(!l.is_checking(), "the check is over either way");
    }

    #[test]
    fn a_pong_from_before_the_check_does_not_answer_it() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, INTERVAL);
        l.pong(t0 + Duration::from_secs(1));
        assert!(l.start_check(t0 + Duration::from_secs(2)));
        assert_eq!(l.check_expired(), Err(Dead::FailedCheck));
    }

    #[test]
    fn a_second_check_request_keeps_the_first_deadline() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, INTERVAL);
        assert!(l.start_check(t0));
        assert!(!l.start_check(t0 + Duration::from_millis(900)));
        assert_eq!(l.check_deadline(), Some(t0 + PROBE_DEADLINE));
    }

    #[test]
    fn silence_longer_than_two_intervals_is_a_death() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, INTERVAL);
        assert_eq!(l.tick(t0 + 2 * INTERVAL), Ok(()));
        assert_eq!(
            l.tick(t0 + 2 * INTERVAL + Duration::from_millis(1)),
            Err(Dead::Silent)
        );
        l.pong(t0 + 2 * INTERVAL);
        assert_eq!(l.tick(t0 + 3 * INTERVAL), Ok(()));
    }
}
