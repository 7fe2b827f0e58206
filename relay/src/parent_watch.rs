//! A member's view of its parent, decided without I/O: which parent the
//! server named and since when, whether the connection to it came up, and
//! when to ask the server for another one. The node (node.rs) feeds it what
//! happens and carries out what it answers.
//!
//! A parent can fail without its connection or its WebSocket closing
//! (frozen, or its network gone): the server would notice only after its
//! heartbeat timeout. Children notice first, from the media: a parent that
//! sent media and then nothing for `silence`, or whose connection is not up
//! `connect_timeout` after it was named (the seed's `timeout`), is replaced.
//! Asks are spaced by [`RECONNECT_RETRY`]: the answer, a `parent` event or a
//! refusal, takes a round trip, and a refused ask (no free slot) is tried
//! again later.
//!
//! [`Backoff`] spaces the attempts to get back to the signalling server.

use std::time::{Duration, Instant};

/// How long a refused or unanswered `reconnect` waits before another try.
pub const RECONNECT_RETRY: Duration = Duration::from_secs(5);

/// First and longest wait between reconnection attempts to the server.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(4);

/// The member's parent and how it is doing.
#[derive(Debug)]
pub struct ParentWatch {
    silence: Duration,
    connect_timeout: Duration,
    parent: Option<String>,
    since: Instant,
    connected: bool,
    /// A `reconnect` is out; no other before this instant.
    next_ask: Option<Instant>,
}

impl ParentWatch {
    pub fn new(
        parent: Option<String>,
        now: Instant,
        silence: Duration,
        connect_timeout: Duration,
    ) -> ParentWatch {
        ParentWatch {
            silence,
            connect_timeout,
            parent,
            since: now,
            connected: false,
            next_ask: None,
        }
    }

    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    /// When the server named the current parent.
    pub fn since(&self) -> Instant {
        self.since
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The server named a parent (even the same one again: a fresh
    /// connection from it follows).
    pub fn named(&mut self, parent: String, now: Instant) {
        self.parent = Some(parent);
        self.since = now;
        self.connected = false;
        self.next_ask = None;
    }

    /// The signalling server is gone, and the parent with it.
    pub fn lost(&mut self) {
        self.parent = None;
        self.connected = false;
        self.next_ask = None;
    }

    /// The connection to the parent came up.
    pub fn connected(&mut self) {
        self.connected = true;
    }

    /// The connection to the parent failed: the reason to ask for another,
    /// if an ask is due.
    pub fn failed(&mut self, now: Instant) -> Option<String> {
        self.ask(now, "the connection to the parent failed".into())
    }

    /// The periodic look at the parent's health, given when its media last
    /// came (None: none yet). Some(reason) when another parent should be
    /// asked for now.
    pub fn poll(&mut self, now: Instant, last_media: Option<Instant>) -> Option<String> {
        self.parent.as_ref()?;
        let why = match last_media {
            Some(last) if now.saturating_duration_since(last) >= self.silence => format!(
                "no media from the parent for {} ms",
                now.saturating_duration_since(last).as_millis()
            ),
            None if !self.connected
                && now.saturating_duration_since(self.since) >= self.connect_timeout =>
            {
                format!(
                    "the parent did not connect within {} s",
                    self.connect_timeout.as_secs()
                )
            }
            _ => return None,
        };
        self.ask(now, why)
    }

    fn ask(&mut self, now: Instant, why: String) -> Option<String> {
        if self.next_ask.is_some_and(|t| now < t) {
            return None;
        }
        self.next_ask = Some(now + RECONNECT_RETRY);
        Some(why)
    }
}

/// Doubling waits between attempts, from [`BACKOFF_FIRST`] to
/// [`BACKOFF_MAX`], each with up to half again of jitter so that a whole
/// tree does not reconnect in lockstep, until `give_up_after`.
#[derive(Debug)]
pub struct Backoff {
    delay: Duration,
    started: Instant,
    give_up_after: Duration,
}

impl Backoff {
    pub fn new(now: Instant, give_up_after: Duration) -> Backoff {
        Backoff {
            delay: BACKOFF_FIRST,
            started: now,
            give_up_after,
        }
    }

    /// The wait before the next attempt; `entropy` is any number (the
    /// clock's nanoseconds will do) that picks the jitter.
    pub fn wait(&self, entropy: u64) -> Duration {
        let half = self.delay.as_nanos() as u64 / 2;
        self.delay + Duration::from_nanos(entropy % (half + 1))
    }

    /// An attempt failed: Err(seconds tried) when it is time to give up,
    /// else the backoff grows.
    pub fn failed(&mut self, now: Instant) -> Result<(), u64> {
        let tried = now.saturating_duration_since(self.started);
        if tried >= self.give_up_after {
            return Err(tried.as_secs());
        }
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        Ok(())
    }

    /// The wait without jitter, as the log says it.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SILENCE: Duration = Duration::from_millis(1500);
    const TIMEOUT: Duration = Duration::from_secs(10);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_silent_parent_is_reported_once_per_retry_interval() {
        let t0 = Instant::now();
        let mut w = ParentWatch::new(Some("p".into()), t0, SILENCE, TIMEOUT);
        w.connected();
        let media = Some(ms(t0, 100));
        assert_eq!(w.poll(ms(t0, 1500), media), None, "1.4 s of silence");
        let why = w.poll(ms(t0, 1600), media).expect("1.5 s of silence");
        assert_eq!(why, "no media from the parent for 1500 ms");
        assert_eq!(w.poll(ms(t0, 3000), media), None, "an ask is out");
        assert!(
            w.poll(ms(t0, 6600), media).is_some(),
            "asked again after 5 s"
        );
    }

    #[test]
    fn a_parent_that_never_connects_is_replaced_after_the_timeout() {
        let t0 = Instant::now();
        let mut w = ParentWatch::new(Some("p".into()), t0, SILENCE, TIMEOUT);
        assert_eq!(w.poll(ms(t0, 9_999), None), None);
        let why = w.poll(ms(t0, 10_000), None).expect("timed out");
        assert_eq!(why, "the parent did not connect within 10 s");
        // Connected but no media yet: waiting for it is not a failure.
        let mut w = ParentWatch::new(Some("p".into()), t0, SILENCE, TIMEOUT);
        w.connected();
        assert_eq!(w.poll(ms(t0, 60_000), None), None);
    }

    #[test]
    fn a_new_parent_starts_afresh() {
        let t0 = Instant::now();
        let mut w = ParentWatch::new(Some("p".into()), t0, SILENCE, TIMEOUT);
        w.connected();
        assert!(w.failed(ms(t0, 100)).is_some());
        assert!(w.failed(ms(t0, 200)).is_none(), "an ask is out");
        w.named("q".into(), ms(t0, 300));
        assert_eq!(w.parent(), Some("q"));
        assert!(!w.is_connected());
        assert_eq!(w.since(), ms(t0, 300));
        assert!(
            w.failed(ms(t0, 400)).is_some(),
            "the new parent's failure is asked at once"
        );
    }

    #[test]
    fn without_a_parent_nothing_is_asked() {
        let t0 = Instant::now();
        let mut w = ParentWatch::new(None, t0, SILENCE, TIMEOUT);
        assert_eq!(w.poll(ms(t0, 60_000), None), None);
        let mut w = ParentWatch::new(Some("p".into()), t0, SILENCE, TIMEOUT);
        w.lost();
        assert_eq!(w.poll(ms(t0, 60_000), Some(t0)), None);
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_with_bounded_jitter_and_gives_up() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0, Duration::from_secs(30));
        let mut delays = vec![b.delay()];
        for i in 1..7 {
            b.failed(ms(t0, i * 1000)).expect("within 30 s");
            delays.push(b.delay());
        }
        let secs: Vec<f64> = delays.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]);
        assert_eq!(b.wait(0), Duration::from_secs(4));
        assert_eq!(b.wait(2_000_000_000), Duration::from_secs(6));
        assert!(b.wait(u64::MAX) <= Duration::from_secs(6));
        assert_eq!(b.failed(ms(t0, 31_000)), Err(31));
    }
}
