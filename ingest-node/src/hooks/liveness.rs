//! Whether the media server is still there, as its API answers (pure: time
//! is passed in). Reads are retried every [`Liveness::RETRY`] while they
//! fail. A server whose API failed [`Liveness::SUSPECT_AFTER`] reads in a
//! row is suspect: the sidecar detaches its node from the claim service
//! (its claims wait out the detach grace, a publisher failing over to
//! another server is held there, not pointed at this one, and a server
//! that answers again within the grace keeps everything). One silent for
//! `gone_after` is gone: what it published went with it (a killed server
//! sends no end hooks, a MediaMTX stopped by SIGTERM neither), so its
//! claims are released instead of being held for as long as it stays dead.

use std::time::{Duration, Instant};

/// What a read of the API means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered (and was not suspect), or one read failed.
    There,
    /// Failed reads in a row just now: detach.
    Suspect,
    /// Silent for the bound just now: release what it published.
    Gone,
    /// Still suspect or gone (already acted on).
    StillAway,
    /// It answered again after it was suspect or gone: attach again.
    Back,
}

#[derive(Debug, Clone)]
pub struct Liveness {
    last_ok: Instant,
    failures: u32,
    gone: bool,
    gone_after: Duration,
}

impl Liveness {
    /// How soon a failed read is tried again.
    pub const RETRY: Duration = Duration::from_secs(1);
    /// Failed reads in a row that make a server suspect.
    pub const SUSPECT_AFTER: u32 = 2;

    /// A server that answered at `now`.
    pub fn new(now: Instant, gone_after: Duration) -> Self {
        Self {
            last_ok: now,
            failures: 0,
            gone: false,
            gone_after,
        }
    }

    /// The API answered at `now`.
    pub fn answered(&mut self, now: Instant) -> Verdict {
        let away = self.is_away();
        self.last_ok = now;
        self.failures = 0;
        self.gone = false;
        if away {
            Verdict::Back
        } else {
            Verdict::There
        }
    }

    /// A read at `now` failed.
    pub fn failed(&mut self, now: Instant) -> Verdict {
        self.failures = self.failures.saturating_add(1);
        if self.gone {
            return Verdict::StillAway;
        }
        if now.saturating_duration_since(self.last_ok) >= self.gone_after {
            self.gone = true;
            return Verdict::Gone;
        }
        match self.failures.cmp(&Self::SUSPECT_AFTER) {
            std::cmp::Ordering::Less => Verdict::There,
            std::cmp::Ordering::Equal => Verdict::Suspect,
            std::cmp::Ordering::Greater => Verdict::StillAway,
        }
    }

    /// Whether the server is taken as gone.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Whether the server is suspect or gone (the node is detached).
    pub fn is_away(&self) -> bool {
        self.gone || self.failures >= Self::SUSPECT_AFTER
    }

    /// How long until the next read: `interval` while it answers, sooner
    /// while it does not.
    pub fn next_read(&self, interval: Duration) -> Duration {
        if self.failures > 0 {
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
    fn suspect_after_failed_reads_gone_once_silent_for_the_bound_back_when_it_answers() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, BOUND);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.answered(at(5)), Verdict::There);
        assert_eq!(l.next_read(Duration::from_secs(5)), Duration::from_secs(5));
        // It died after the read at 5 s: failures from 10 s on.
        assert_eq!(l.failed(at(10)), Verdict::There);
        assert_eq!(l.next_read(Duration::from_secs(5)), Liveness::RETRY);
        assert!(!l.is_away());
        assert_eq!(l.failed(at(11)), Verdict::Suspect);
        assert!(l.is_away());
        assert_eq!(l.failed(at(12)), Verdict::StillAway);
        assert_eq!(l.failed(at(16)), Verdict::StillAway);
        assert_eq!(l.failed(at(17)), Verdict::Gone);
        assert!(l.is_gone());
        assert_eq!(l.failed(at(18)), Verdict::StillAway);
        assert_eq!(l.answered(at(40)), Verdict::Back);
        assert!(!l.is_gone() && !l.is_away());
        assert_eq!(l.answered(at(45)), Verdict::There);
    }

    #[test]
    fn a_server_back_while_suspect_is_back_without_being_gone() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, BOUND);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.failed(at(5)), Verdict::There);
        assert_eq!(l.failed(at(6)), Verdict::Suspect);
        assert_eq!(l.answered(at(7)), Verdict::Back);
        assert!(!l.is_gone());
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
