//! A budget for log lines that input can cause (refusals, rejected
//! sessions): a few a second are written, the rest are counted and the
//! count is said on the next line written, so a flood of bad messages
//! cannot fill a disk or bury the lines that matter. And [`Trouble`]: one
//! failure that repeats (etcd away: every retry fails the same way) is said
//! once, then summed up now and then, then its end is said.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Limiter = governor::DefaultDirectRateLimiter;

pub struct LogBudget {
    limiter: Limiter,
    unlogged: AtomicU64,
}

impl LogBudget {
    /// `per_second` lines, in bursts of up to `burst`.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(per_second).allow_burst(burst),
            ),
            unlogged: AtomicU64::new(0),
        }
    }

    /// `Some(lines not written since the last one)` when this line may be
    /// written; `None` (and counted) when over the budget.
    pub fn admit(&self) -> Option<u64> {
        if self.limiter.check().is_ok() {
            Some(self.unlogged.swap(0, Ordering::Relaxed))
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LogBudget {
    /// Ten lines a second, in bursts of twenty.
    fn default() -> Self {
        Self::new(
            NonZeroU32::new(10).expect("10 is not zero"),
            NonZeroU32::new(20).expect("20 is not zero"),
        )
    }
}

/// What to log of a failure that may be a repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Say {
    /// A new trouble (or a different error): log it whole.
    New,
    /// The same trouble goes on: log how long and how often, briefly.
    Still { since: Duration, times: u64 },
    /// Already said: nothing.
    Quiet,
}

/// One kind of failure that repeats while a dependency is away.
#[derive(Debug)]
pub struct Trouble {
    every: Duration,
    /// Since when it fails, when it was last said, how often, and how.
    going: Option<(Instant, Instant, u64, String)>,
}

impl Trouble {
    /// Repeats are summed up at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, going: None }
    }

    /// Another failure with `error`, at `now`.
    pub fn failed(&mut self, error: &str, now: Instant) -> Say {
        match &mut self.going {
            Some((since, said, times, last)) if last == error => {
                *times += 1;
                if now.duration_since(*said) >= self.every {
                    *said = now;
                    Say::Still {
                        since: now.duration_since(*since),
                        times: *times,
                    }
                } else {
                    Say::Quiet
                }
            }
            _ => {
                self.going = Some((now, now, 1, error.to_string()));
                Say::New
            }
        }
    }

    /// It works again: how long it failed and how often, if it did.
    pub fn recovered(&mut self, now: Instant) -> Option<(Duration, u64)> {
        self.going
            .take()
            .map(|(since, _, times, _)| (now.duration_since(since), times))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_failure_is_said_once_summed_up_then_its_end_said() {
        let t0 = Instant::now();
        let mut t = Trouble::new(Duration::from_secs(10));
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(t.failed("dns error", at(0)), Say::New);
        assert_eq!(t.failed("dns error", at(2)), Say::Quiet);
        assert_eq!(t.failed("dns error", at(9)), Say::Quiet);
        assert_eq!(
            t.failed("dns error", at(11)),
            Say::Still {
                since: Duration::from_secs(11),
                times: 4
            }
        );
        assert_eq!(t.failed("dns error", at(12)), Say::Quiet);
        // Another error is news.
        assert_eq!(t.failed("connection refused", at(13)), Say::New);
        assert_eq!(t.recovered(at(20)), Some((Duration::from_secs(7), 1)));
        assert_eq!(t.recovered(at(21)), None);
    }

    #[test]
    fn a_flood_is_counted_not_written() {
        let budget = LogBudget::default();
        let written = (0..10_000).filter(|_| budget.admit().is_some()).count();
        assert!((20..=25).contains(&written), "{written} lines written");
        assert!(budget.unlogged.load(Ordering::Relaxed) >= 9_975);
    }
}
