//! A small fixed-bucket latency histogram good enough for p50/p95/p99.
//!
//! Bucket `i` holds latencies in `(2^((i-1)/2), 2^(i/2)]` milliseconds, so
//! neighbouring bounds differ by a factor of √2 (about 41%). Bucket 0 holds
//! everything up to 1 ms and the last bucket everything above ~741 s. A
//! quantile is interpolated linearly inside its bucket and clamped to the
//! observed minimum and maximum, so a histogram of identical values reports
//! that value exactly and the error of any estimate is below one bucket
//! width. The histogram is a plain array: recording is a `log2` and an
//! increment, merging is element-wise addition.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Number of buckets, including the overflow bucket.
pub const BUCKETS: usize = 40;

/// Upper bound of bucket `i` in milliseconds.
fn upper_ms(i: usize) -> f64 {
    // `i` is below 40, so the conversion is exact.
    let exp = i as f64 / 2.0;
    exp.exp2()
}

fn bucket_of(ms: f64) -> usize {
    if ms <= 1.0 || ms.is_nan() {
        return 0;
    }
    let i = (2.0 * ms.log2()).ceil();
    if i >= (BUCKETS - 1) as f64 {
        BUCKETS - 1
    } else {
        // `i` is in 1..BUCKETS-1 here.
        i as usize
    }
}

/// Latency counts in fixed √2-spaced buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    counts: [u64; BUCKETS],
    count: u64,
    sum_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: [0; BUCKETS],
            count: 0,
            sum_ms: 0.0,
            min_ms: f64::INFINITY,
            max_ms: 0.0,
        }
    }
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        self.counts[bucket_of(ms)] += 1;
        self.count += 1;
        self.sum_ms += ms;
        self.min_ms = self.min_ms.min(ms);
        self.max_ms = self.max_ms.max(ms);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ms += other.sum_ms;
        self.min_ms = self.min_ms.min(other.min_ms);
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    /// Number of latencies counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0.0 to 1.0) in milliseconds, or `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        // Nearest rank: the smallest value with at least q·n values at or
        // below it.
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if seen + c >= rank {
                let lower = if i == 0 { 0.0 } else { upper_ms(i - 1) };
                let upper = if i == BUCKETS - 1 {
                    self.max_ms
                } else {
                    upper_ms(i)
                };
                let within = (rank - seen) as f64 / c as f64;
                let estimate = lower + (upper - lower) * within;
                return Some(estimate.clamp(self.min_ms, self.max_ms));
            }
            seen += c;
        }
        Some(self.max_ms)
    }

    /// p50, p95, p99, mean and max.
    pub fn summary(&self) -> LatencySummary {
        let mean = (self.count > 0).then(|| self.sum_ms / self.count as f64);
        LatencySummary {
            samples: self.count,
            p50_ms: self.quantile_ms(0.50),
            p95_ms: self.quantile_ms(0.95),
            p99_ms: self.quantile_ms(0.99),
            mean_ms: mean,
            max_ms: (self.count > 0).then_some(self.max_ms),
        }
    }
}

/// Latency figures of a histogram; every figure is `None` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of latencies the figures are computed from.
    pub samples: u64,
    /// Median, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 95th percentile, in milliseconds.
    pub p95_ms: Option<f64>,
    /// 99th percentile, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Arithmetic mean, in milliseconds.
    pub mean_ms: Option<f64>,
    /// Largest value, in milliseconds.
    pub max_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn identical_values_are_exact() {
        let mut h = LatencyHistogram::default();
        for _ in 0..10 {
            h.record(ms(120));
        }
        let s = h.summary();
        assert_eq!(s.p50_ms, Some(120.0));
        assert_eq!(s.p99_ms, Some(120.0));
        assert_eq!(s.max_ms, Some(120.0));
        assert_eq!(s.mean_ms, Some(120.0));
    }

    #[test]
    fn quantiles_are_within_one_bucket() {
        let mut h = LatencyHistogram::default();
        for i in 1..=1000 {
            h.record(ms(i));
        }
        for (q, exact) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile_ms(q).unwrap();
            assert!(got / exact < 1.42 && exact / got < 1.42, "q{q}: {got}");
        }
        assert_eq!(h.quantile_ms(1.0), Some(1000.0));
    }

    #[test]
    fn empty_has_no_figures() {
        let s = LatencyHistogram::default().summary();
        assert_eq!(s, LatencySummary::default());
    }

    #[test]
    fn buckets_cover_the_range() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(1.0), 0);
        assert_eq!(bucket_of(1.2), 1);
        assert_eq!(bucket_of(2.0), 2);
        assert_eq!(bucket_of(1e9), BUCKETS - 1);
        let mut h = LatencyHistogram::default();
        h.record(Duration::from_secs(3600));
        assert_eq!(h.quantile_ms(0.5), Some(3_600_000.0));
    }

    #[test]
    fn merge_adds() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        a.record(ms(10));
        b.record(ms(1000));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.summary().max_ms, Some(1000.0));
        let low = a.quantile_ms(0.0).unwrap();
        assert!((10.0..11.32).contains(&low), "{low}");
    }
}
