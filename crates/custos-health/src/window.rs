//! Rolling windows: a ring of fixed-width time buckets, indexed by the
//! number of bucket widths elapsed since an origin instant.
//!
//! A bucket is reused when its slot comes round again, so a window costs the
//! same memory forever and recording never allocates. Samples stamped older
//! than the window (a thread that read the clock just before a bucket
//! rolled over and recorded just after) are dropped rather than miscounted.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::histogram::{LatencyHistogram, LatencySummary};
use crate::target::{AttemptOutcome, FailureCounts, FailureKind, RequestStatus};

/// The shape of a rolling window: `buckets` buckets of `bucket` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// Width of one bucket.
    #[serde(with = "crate::time::duration_ms")]
    pub bucket: Duration,
    /// Number of buckets.
    pub buckets: usize,
}

impl WindowSpec {
    /// The span the window covers.
    pub fn span(&self) -> Duration {
        self.bucket
            .saturating_mul(u32::try_from(self.buckets).unwrap_or(u32::MAX))
    }
}

/// A ring of `T` buckets.
#[derive(Debug, Clone)]
pub(crate) struct Ring<T> {
    slots: Vec<(Option<u64>, T)>,
    width_nanos: u128,
    origin: Instant,
}

impl<T: Default> Ring<T> {
    pub(crate) fn new(spec: WindowSpec, origin: Instant) -> Self {
        let n = spec.buckets.max(1);
        Ring {
            slots: (0..n).map(|_| (None, T::default())).collect(),
            width_nanos: spec.bucket.as_nanos().max(1),
            origin,
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.width_nanos).unwrap_or(u64::MAX)
    }

    fn index(&self, epoch: u64) -> usize {
        // The modulus is the slot count, so the result fits in usize.
        usize::try_from(epoch % self.slots.len() as u64).unwrap_or(0)
    }

    /// The bucket that `now` falls in, or `None` when a newer bucket already
    /// occupies its slot (the sample is older than the window).
    pub(crate) fn slot(&mut self, now: Instant) -> Option<&mut T> {
        let epoch = self.epoch(now);
        let i = self.index(epoch);
        let slot = &mut self.slots[i];
        match slot.0 {
            Some(e) if e == epoch => {}
            Some(e) if e > epoch => return None,
            _ => {
                *slot = (Some(epoch), T::default());
            }
        }
        Some(&mut slot.1)
    }

    /// The buckets inside the window ending at `now`.
    pub(crate) fn live(&self, now: Instant) -> impl Iterator<Item = &T> {
        let current = self.epoch(now);
        let n = self.slots.len() as u64;
        self.slots.iter().filter_map(move |(epoch, t)| match epoch {
            Some(e) if *e <= current && current - *e < n => Some(t),
            _ => None,
        })
    }

    /// Forgets every bucket.
    pub(crate) fn clear(&mut self) {
        for slot in &mut self.slots {
            *slot = (None, T::default());
        }
    }
}

/// One bucket of a target's window.
#[derive(Debug, Clone, Default)]
pub(crate) struct TargetBucket {
    successes: u64,
    client_errors: u64,
    failures: [u64; 5],
    latency: LatencyHistogram,
}

impl TargetBucket {
    pub(crate) fn record(&mut self, outcome: AttemptOutcome, latency: Duration) {
        match outcome {
            AttemptOutcome::Success => {
                self.successes += 1;
                self.latency.record(latency);
            }
            AttemptOutcome::ClientError { .. } => {
                self.client_errors += 1;
                self.latency.record(latency);
            }
            AttemptOutcome::Failure { kind } => self.failures[kind.index()] += 1,
        }
    }
}

/// Figures of a target over its window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStats {
    /// The span the figures cover.
    #[serde(with = "crate::time::duration_ms")]
    pub window: Duration,
    /// Attempts recorded.
    pub attempts: u64,
    /// Successful attempts.
    pub successes: u64,
    /// Attempts answered with a 4xx other than 429 (the upstream is up).
    pub client_errors: u64,
    /// Failed attempts by kind.
    pub failures: FailureCounts,
    /// `failures / attempts`, 0 without attempts.
    pub error_rate: f64,
    /// Latency of attempts that got an answer (successes and client errors).
    pub latency: LatencySummary,
}

pub(crate) fn target_stats(
    ring: &Ring<TargetBucket>,
    spec: WindowSpec,
    now: Instant,
) -> TargetStats {
    let mut successes = 0;
    let mut client_errors = 0;
    let mut failures = [0u64; 5];
    let mut latency = LatencyHistogram::default();
    for b in ring.live(now) {
        successes += b.successes;
        client_errors += b.client_errors;
        for k in FailureKind::ALL {
            failures[k.index()] += b.failures[k.index()];
        }
        latency.merge(&b.latency);
    }
    let failures = FailureCounts::from_array(failures);
    let attempts = successes + client_errors + failures.total();
    TargetStats {
        window: spec.span(),
        attempts,
        successes,
        client_errors,
        error_rate: ratio(failures.total(), attempts),
        failures,
        latency: latency.summary(),
    }
}

/// One bucket of a public model's window.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelBucket {
    successes: u64,
    failures: u64,
    client_errors: u64,
    shed: u64,
    latency: LatencyHistogram,
}

impl ModelBucket {
    pub(crate) fn record(&mut self, status: RequestStatus, latency: Duration) {
        match status {
            RequestStatus::Success => {
                self.successes += 1;
                self.latency.record(latency);
            }
            RequestStatus::Failure => self.failures += 1,
            RequestStatus::ClientError => self.client_errors += 1,
            RequestStatus::Shed => self.shed += 1,
        }
    }
}

/// Request-level figures of a public model over its window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    /// The span the figures cover.
    #[serde(with = "crate::time::duration_ms")]
    pub window: Duration,
    /// Requests that reached an upstream decision: successes plus failures.
    pub requests: u64,
    /// Served requests.
    pub successes: u64,
    /// Requests the model could not serve.
    pub failures: u64,
    /// Caller mistakes, not counted in `requests`.
    pub client_errors: u64,
    /// Requests refused by Custos's own limits, not counted in `requests`.
    pub shed: u64,
    /// `failures / requests`, 0 without requests.
    pub error_rate: f64,
    /// Latency of served requests.
    pub latency: LatencySummary,
}

pub(crate) fn model_stats(ring: &Ring<ModelBucket>, spec: WindowSpec, now: Instant) -> ModelStats {
    let mut s = ModelStats {
        window: spec.span(),
        ..ModelStats::default()
    };
    let mut latency = LatencyHistogram::default();
    for b in ring.live(now) {
        s.successes += b.successes;
        s.failures += b.failures;
        s.client_errors += b.client_errors;
        s.shed += b.shed;
        latency.merge(&b.latency);
    }
    s.requests = s.successes + s.failures;
    s.error_rate = ratio(s.failures, s.requests);
    s.latency = latency.summary();
    s
}

pub(crate) fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: WindowSpec = WindowSpec {
        bucket: Duration::from_secs(6),
        buckets: 10,
    };

    fn fail(kind: FailureKind) -> AttemptOutcome {
        AttemptOutcome::Failure { kind }
    }

    #[test]
    fn counts_by_kind_within_the_window() {
        let t0 = Instant::now();
        let mut ring: Ring<TargetBucket> = Ring::new(SPEC, t0);
        let ms = Duration::from_millis(100);
        ring.slot(t0).unwrap().record(AttemptOutcome::Success, ms);
        ring.slot(t0)
            .unwrap()
            .record(fail(FailureKind::Connect), ms);
        let t1 = t0 + Duration::from_secs(30);
        ring.slot(t1)
            .unwrap()
            .record(fail(FailureKind::Timeout), ms);
        ring.slot(t1)
            .unwrap()
            .record(AttemptOutcome::ClientError { status: 400 }, ms);
        let s = target_stats(&ring, SPEC, t1);
        assert_eq!(s.attempts, 4);
        assert_eq!(s.successes, 1);
        assert_eq!(s.client_errors, 1);
        assert_eq!(s.failures.connect, 1);
        assert_eq!(s.failures.timeout, 1);
        assert_eq!(s.error_rate, 0.5);
        assert_eq!(s.latency.samples, 2);
        assert_eq!(s.window, Duration::from_secs(60));

        // 60 s after t0 its bucket has left the window; t1's has not.
        let s = target_stats(&ring, SPEC, t0 + Duration::from_secs(60));
        assert_eq!(s.attempts, 2);
        // 60 s after t1 everything is gone.
        let s = target_stats(&ring, SPEC, t1 + Duration::from_secs(60));
        assert_eq!(s.attempts, 0);
        assert_eq!(s.error_rate, 0.0);
    }

    #[test]
    fn slots_are_reused_and_stale_samples_dropped() {
        let t0 = Instant::now();
        let mut ring: Ring<ModelBucket> = Ring::new(SPEC, t0);
        ring.slot(t0)
            .unwrap()
            .record(RequestStatus::Failure, Duration::ZERO);
        // Same slot, one lap later: the old bucket is replaced.
        let lap = t0 + Duration::from_secs(60);
        ring.slot(lap)
            .unwrap()
            .record(RequestStatus::Success, Duration::ZERO);
        assert_eq!(model_stats(&ring, SPEC, lap).failures, 0);
        assert_eq!(model_stats(&ring, SPEC, lap).successes, 1);
        // A sample stamped t0 now maps onto the newer bucket: dropped.
        assert!(ring.slot(t0).is_none());
        ring.clear();
        assert_eq!(model_stats(&ring, SPEC, lap).successes, 0);
    }

    #[test]
    fn model_error_rate_ignores_client_errors_and_shedding() {
        let t0 = Instant::now();
        let mut ring: Ring<ModelBucket> = Ring::new(SPEC, t0);
        let b = ring.slot(t0).unwrap();
        b.record(RequestStatus::Success, Duration::from_millis(5));
        b.record(RequestStatus::Failure, Duration::ZERO);
        b.record(RequestStatus::ClientError, Duration::ZERO);
        b.record(RequestStatus::Shed, Duration::ZERO);
        let s = model_stats(&ring, SPEC, t0);
        assert_eq!((s.requests, s.client_errors, s.shed), (2, 1, 1));
        assert_eq!(s.error_rate, 0.5);
    }
}
