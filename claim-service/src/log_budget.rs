//! A budget for log lines that input can cause (refusals, rejected
//! sessions): a few a second are written, the rest are counted and the
//! count is said on the next line written, so a flood of bad messages
//! cannot fill a disk or bury the lines that matter.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_counted_not_written() {
        let budget = LogBudget::default();
        let written = (0..10_000).filter(|_| budget.admit().is_some()).count();
        assert!((20..=25).contains(&written), "{written} lines written");
        assert!(budget.unlogged.load(Ordering::Relaxed) >= 9_975);
    }
}
