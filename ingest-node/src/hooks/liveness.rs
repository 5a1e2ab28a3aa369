//! Whether the media server is still there, as its API answers (pure: time
//! is passed in). A server whose API has not answered for `gone_after` is
//! gone: what it published went with it (a killed server sends no end
//! hooks, a MediaMTX stopped by SIGTERM neither), so its claims are
//! released instead of being held for as long as it stays dead. One failed
//! read is not enough: reads are retried every [`Liveness::RETRY`] until
//! the bound.

use std::time::{Duration, Instant};

/// What a read of the API means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered, or has not been silent for long enough.
    There,
    /// Silent for the bound just now: release what it published.
    Gone,
    /// Still gone (already released).
    StillGone,
    /// It answered again after it was gone.
    Back,
}

#[derive(Debug, Clone)]
pub struct Liveness {
    last_ok: Instant,
    failing: bool,
    gone: bool,
    gone_after: Duration,
}

impl Liveness {
    /// How soon a failed read is tried again.
    pub const RETRY: Duration = Duration::from_secs(1);

    /// A server that answered at `now`.
    pub fn new(now: Instant, gone_after: Duration) -> Self {
        Self {
            last_ok: now,
            failing: false,
            gone: false,
            gone_after,
        }
    }

    /// The API answered at `now`.
    pub fn answered(&mut self, now: Instant) -> Verdict {
        self.last_ok = now;
        self.failing = false;
        if std::mem::take(&mut self.gone) {
            Verdict::Back
        } else {
            Verdict::There
        }
    }

    /// A read at `now` failed.
    pub fn failed(&mut self, now: Instant) -> Verdict {
        self.failing = true;
        if self.gone {
            return Verdict::StillGone;
        }
        if now.saturating_duration_since(self.last_ok) >= self.gone_after {
            self.gone = true;
            return Verdict::Gone;
        }
        Verdict::There
    }

    /// Whether the server is taken as gone.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// How long until the next read: `interval` while it answers, sooner
    /// while it does not.
    pub fn next_read(&self, interval: Duration) -> Duration {
        if self.failing {
            interval.min(Self::RETRY)
        } else {
            interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(12);

    #[test]
    fn gone_once_silent_for_the_bound_and_back_when_it_answers() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, BOUND);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.answered(at(5)), Verdict::There);
        assert_eq!(l.next_read(Duration::from_secs(5)), Duration::from_secs(5));
        // It died after the read at 5 s: failures from 10 s on.
        assert_eq!(l.failed(at(10)), Verdict::There);
        assert_eq!(l.next_read(Duration::from_secs(5)), Liveness::RETRY);
        assert_eq!(l.failed(at(16)), Verdict::There);
        assert_eq!(l.failed(at(17)), Verdict::Gone);
        assert!(l.is_gone());
        assert_eq!(l.failed(at(18)), Verdict::StillGone);
        assert_eq!(l.answered(at(40)), Verdict::Back);
        assert!(!l.is_gone());
        assert_eq!(l.answered(at(45)), Verdict::There);
    }

    #[test]
    fn a_failure_now_and_then_is_not_death() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, BOUND);
        for s in (5..120).step_by(5) {
            let t = t0 + Duration::from_secs(s);
            let v = if s % 10 == 0 {
                l.failed(t)
            } else {
                l.answered(t)
            };
            assert_eq!(v, Verdict::There, "at {s} s");
        }
    }
}
