//! Detection: which thresholds a model's health breaches, and how severe
//! that is. Pure functions of a [`ModelHealth`] and [`Thresholds`].
//!
//! | symptom | condition | severity |
//! |---|---|---|
//! | all targets open | every target's breaker is open or half-open | sev1 |
//! | error rate | `error_rate ≥ sev1_error_rate` | sev1 |
//! | error rate | `error_rate ≥ sev2_error_rate` | sev2 |
//! | error rate | `error_rate ≥ error_rate` (with `min_requests`) | sev3 |
//! | availability | closed targets / targets `< min_target_availability` | sev3 |
//! | latency | p95 `≥ 2 × latency_p95` (with `min_requests` samples) | sev3 |
//! | latency | p95 `> latency_p95` | sev4 |
//!
//! An incident's severity is the worst of its symptoms'.

use std::time::Duration;

use crate::breaker::BreakerState;
use crate::health::ModelHealth;
use crate::incident::model::{Severity, Symptom};
use crate::time::millis;

/// Detection thresholds of one model; see [`crate::config::RawThresholds`]
/// for the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Requests needed in the model window before rates and latency count.
    pub min_requests: u64,
    /// Error rate that opens a sev3 incident.
    pub error_rate: f64,
    /// Error rate that makes it sev2.
    pub sev2_error_rate: f64,
    /// Error rate that makes it sev1.
    pub sev1_error_rate: f64,
    /// p95 latency objective of served requests; `None` disables the
    /// latency symptom.
    pub latency_p95: Option<Duration>,
    /// Share of targets that must have a closed breaker.
    pub min_target_availability: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_requests: 20,
            error_rate: 0.05,
            sev2_error_rate: 0.25,
            sev1_error_rate: 0.90,
            latency_p95: None,
            min_target_availability: 0.5,
        }
    }
}

/// Every threshold `health` breaches, in a stable order.
pub fn detect(health: &ModelHealth, th: &Thresholds) -> Vec<Symptom> {
    let mut out = Vec::new();
    let total = u32::try_from(health.targets.len()).unwrap_or(u32::MAX);
    let down: Vec<String> = health
        .targets
        .iter()
        .filter(|t| t.state != BreakerState::Closed)
        .map(|t| t.target.to_string())
        .collect();
    let available = total.saturating_sub(u32::try_from(down.len()).unwrap_or(u32::MAX));
    if total > 0 && available == 0 {
        out.push(Symptom::AllTargetsOpen {
            total,
            targets: down,
        });
    } else if total > 0 && f64::from(available) / f64::from(total) < th.min_target_availability {
        out.push(Symptom::Availability {
            available,
            total,
            threshold: th.min_target_availability,
            down,
        });
    }
    let s = &health.stats;
    let window_ms = millis(s.window);
    if s.requests >= th.min_requests.max(1) && s.error_rate >= th.error_rate {
        out.push(Symptom::ErrorRate {
            error_rate: s.error_rate,
            threshold: th.error_rate,
            failures: s.failures,
            requests: s.requests,
            window_ms,
        });
    }
    if let (Some(slo), Some(p95)) = (th.latency_p95, s.latency.p95_ms)
        && s.latency.samples >= th.min_requests.max(1)
        && p95 > slo.as_secs_f64() * 1000.0
    {
        out.push(Symptom::Latency {
            p95_ms: p95,
            slo_ms: millis(slo),
            samples: s.latency.samples,
            window_ms,
        });
    }
    out
}

/// The severity of one symptom.
pub fn severity_of(symptom: &Symptom, th: &Thresholds) -> Severity {
    match symptom {
        Symptom::AllTargetsOpen { .. } => Severity::Sev1,
        Symptom::ErrorRate { error_rate, .. } if *error_rate >= th.sev1_error_rate => {
            Severity::Sev1
        }
        Symptom::ErrorRate { error_rate, .. } if *error_rate >= th.sev2_error_rate => {
            Severity::Sev2
        }
        Symptom::ErrorRate { .. } | Symptom::Availability { .. } => Severity::Sev3,
        Symptom::Latency { p95_ms, slo_ms, .. } if *p95_ms >= 2.0 * (*slo_ms as f64) => {
            Severity::Sev3
        }
        Symptom::Latency { .. } => Severity::Sev4,
    }
}

/// The worst severity of `symptoms`, `None` when there are none.
pub fn worst(symptoms: &[Symptom], th: &Thresholds) -> Option<Severity> {
    symptoms.iter().map(|s| severity_of(s, th)).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::TargetStatus;
    use crate::histogram::LatencySummary;
    use crate::target::TargetId;
    use crate::window::ModelStats;

    fn health(
        requests: u64,
        failures: u64,
        states: &[BreakerState],
        p95: Option<f64>,
    ) -> ModelHealth {
        ModelHealth {
            model: "m".into(),
            stats: ModelStats {
                window: Duration::from_secs(300),
                requests,
                successes: requests - failures,
                failures,
                error_rate: if requests == 0 {
                    0.0
                } else {
                    failures as f64 / requests as f64
                },
                latency: LatencySummary {
                    samples: requests - failures,
                    p95_ms: p95,
                    ..LatencySummary::default()
                },
                ..ModelStats::default()
            },
            targets: states
                .iter()
                .enumerate()
                .map(|(i, s)| TargetStatus {
                    target: TargetId::new(format!("p{i}"), "up"),
                    state: *s,
                })
                .collect(),
            failing_keys: vec![],
            failing_keys_capped: false,
        }
    }

    #[test]
    fn severity_table() {
        use BreakerState::{Closed, HalfOpen, Open};
        let th = Thresholds {
            latency_p95: Some(Duration::from_secs(10)),
            ..Thresholds::default()
        };
        // (requests, failures, target states, p95 ms, expected severity)
        type Case = (
            u64,
            u64,
            &'static [BreakerState],
            Option<f64>,
            Option<Severity>,
        );
        let cases: &[Case] = &[
            (100, 0, &[Closed, Closed], Some(100.0), None),
            (100, 4, &[Closed], None, None),
            (100, 5, &[Closed], None, Some(Severity::Sev3)),
            (100, 30, &[Closed], None, Some(Severity::Sev2)),
            (100, 95, &[Closed], None, Some(Severity::Sev1)),
            // Too few requests to judge a rate.
            (19, 19, &[Closed], None, None),
            (0, 0, &[Open, HalfOpen], None, Some(Severity::Sev1)),
            (0, 0, &[Open, Closed, Open], None, Some(Severity::Sev3)),
            (0, 0, &[Open, Closed], None, None),
            (100, 0, &[Closed], Some(15_000.0), Some(Severity::Sev4)),
            (100, 0, &[Closed], Some(25_000.0), Some(Severity::Sev3)),
            (100, 30, &[Closed], Some(15_000.0), Some(Severity::Sev2)),
        ];
        for (requests, failures, states, p95, want) in cases {
            let h = health(*requests, *failures, states, *p95);
            let symptoms = detect(&h, &th);
            assert_eq!(
                worst(&symptoms, &th),
                *want,
                "{requests} {failures} {states:?} {p95:?}: {symptoms:?}"
            );
        }
    }
}
