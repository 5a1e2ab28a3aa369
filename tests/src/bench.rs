//! What benchmarks report: quantiles and durations in milliseconds.

use std::time::Duration;

/// The `p` quantile (0..=1) of `samples`, sorted in place.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[(((samples.len() - 1) as f64) * p).round() as usize]
}

/// A duration in milliseconds, for reports.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
