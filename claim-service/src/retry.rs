//! How long to wait before trying etcd again after failures in a row: one
//! schedule for the claim rules (a claim etcd could not take), the
//! session's work and the view's watch.

use std::time::Duration;

/// Retry backoff after `failures` consecutive failures: 200 ms doubling to 5 s.
pub fn backoff(failures: u32) -> Duration {
    let ms = 200u64.saturating_mul(1u64 << failures.saturating_sub(1).min(5));
    Duration::from_millis(ms.min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert!(backoff(5) > backoff(4));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
