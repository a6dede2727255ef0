//! Response figures over a period: how many incidents, and how fast they
//! were acknowledged (TTA) and resolved (TTR). The caller picks the period
//! by listing incidents from the store with an [`crate::IncidentQuery`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::incident::model::{Incident, Resolution, Severity};

/// Count, mean, median and maximum of a set of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationStats {
    /// How many durations.
    pub count: u64,
    /// Arithmetic mean.
    #[serde(rename = "mean_ms", with = "crate::time::duration_ms")]
    pub mean: Duration,
    /// Median (the lower one for an even count).
    #[serde(rename = "p50_ms", with = "crate::time::duration_ms")]
    pub p50: Duration,
    /// Largest.
    #[serde(rename = "max_ms", with = "crate::time::duration_ms")]
    pub max: Duration,
}

impl DurationStats {
    /// The figures of `values`, or `None` when empty.
    pub fn of(mut values: Vec<Duration>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort();
        let count = values.len();
        let total: Duration = values.iter().sum();
        let mean = total / u32::try_from(count).unwrap_or(u32::MAX);
        let p50 = values[(count - 1) / 2];
        let max = values[count - 1];
        Some(DurationStats {
            count: count as u64,
            mean,
            p50,
            max,
        })
    }
}

/// Figures over a list of incidents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentStats {
    /// Incidents in the list.
    pub count: u64,
    /// Of which still open or acknowledged.
    pub active: u64,
    /// Of which resolved automatically.
    pub resolved_auto: u64,
    /// Of which resolved by an operator.
    pub resolved_manual: u64,
    /// Of which never acknowledged.
    pub unacknowledged: u64,
    /// Of which have a postmortem.
    pub with_postmortem: u64,
    /// Count per severity (every severity present, zero included).
    pub by_severity: BTreeMap<Severity, u64>,
    /// Time to acknowledge, over acknowledged incidents.
    pub time_to_acknowledge: Option<DurationStats>,
    /// Time to resolve, over resolved incidents.
    pub time_to_resolve: Option<DurationStats>,
}

impl IncidentStats {
    /// Computes the figures of `incidents`.
    pub fn compute(incidents: &[Incident]) -> Self {
        let mut by_severity: BTreeMap<Severity, u64> =
            Severity::ALL.into_iter().map(|s| (s, 0)).collect();
        for i in incidents {
            *by_severity.entry(i.severity).or_default() += 1;
        }
        let count_where =
            |f: &dyn Fn(&Incident) -> bool| incidents.iter().filter(|i| f(i)).count() as u64;
        IncidentStats {
            count: incidents.len() as u64,
            active: count_where(&|i| i.is_active()),
            resolved_auto: count_where(&|i| i.resolution == Some(Resolution::Auto)),
            resolved_manual: count_where(&|i| i.resolution == Some(Resolution::Manual)),
            unacknowledged: count_where(&|i| i.acknowledged_at.is_none()),
            with_postmortem: count_where(&|i| i.postmortem.is_some()),
            by_severity,
            time_to_acknowledge: DurationStats::of(
                incidents
                    .iter()
                    .filter_map(Incident::time_to_acknowledge)
                    .collect(),
            ),
            time_to_resolve: DurationStats::of(
                incidents
                    .iter()
                    .filter_map(Incident::time_to_resolve)
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_stats() {
        let s = |v: &[u64]| DurationStats::of(v.iter().map(|&x| Duration::from_secs(x)).collect());
        assert_eq!(s(&[]), None);
        let d = s(&[60, 10, 30, 20]).unwrap();
        assert_eq!(d.count, 4);
        assert_eq!(d.mean, Duration::from_secs(30));
        assert_eq!(d.p50, Duration::from_secs(20));
        assert_eq!(d.max, Duration::from_secs(60));
        let d = s(&[5]).unwrap();
        assert_eq!(
            (d.mean, d.p50, d.max),
            (
                Duration::from_secs(5),
                Duration::from_secs(5),
                Duration::from_secs(5)
            )
        );
    }
}
