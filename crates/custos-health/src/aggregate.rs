//! Per-model, per-minute request aggregates: the time series the store
//! keeps for capacity reports, SLO evidence and the console charts.
//!
//! Requests are counted in the UTC minute in which they finished. The wiring
//! calls [`MinuteAggregator::drain_completed_minutes`] periodically (every
//! few seconds is plenty) and persists what it returns; every
//! `(minute, model)` row is returned exactly once. A request that finishes
//! in a minute that was already drained (a thread that read the clock just
//! before the drain) is counted in the next open minute and in
//! [`MinuteAggregator::late_samples`], so rows never need merging.
//! Memory is bounded: at most `max_minutes` undrained minutes are kept (the
//! oldest is dropped and counted when the wiring stops draining) and at
//! most `max_models` models per minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::histogram::LatencyHistogram;
use crate::target::RequestStatus;

/// One model's figures for one UTC minute.
///
/// Serialised (JSON) as:
/// `{"minute":"2025-03-01T12:00:00.000Z","model":"gpt-4o","requests":120,
/// "successes":110,"errors":6,"client_errors":3,"shed":1,
/// "latency_p50_ms":812.4,"latency_p95_ms":2301.0,"latency_p99_ms":4100.2,
/// "latency_max_ms":5230.0,"prompt_tokens":51234,"completion_tokens":20480}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteAggregate {
    /// Start of the minute (UTC, whole minute).
    #[serde(with = "crate::time::rfc3339")]
    pub minute: SystemTime,
    /// The public model name.
    pub model: String,
    /// Every request recorded for the model: successes, errors, client
    /// errors and shed requests.
    pub requests: u64,
    /// Served requests.
    pub successes: u64,
    /// Requests the model could not serve ([`RequestStatus::Failure`]).
    pub errors: u64,
    /// Caller mistakes.
    pub client_errors: u64,
    /// Refused by Custos's own limits.
    pub shed: u64,
    /// Median latency of served requests, in milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile latency of served requests, in milliseconds.
    pub latency_p95_ms: Option<f64>,
    /// 99th percentile latency of served requests, in milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// Slowest served request, in milliseconds.
    pub latency_max_ms: Option<f64>,
    /// Prompt tokens of every request in the minute.
    pub prompt_tokens: u64,
    /// Completion tokens of every request in the minute.
    pub completion_tokens: u64,
}

#[derive(Debug, Default)]
struct Acc {
    successes: u64,
    errors: u64,
    client_errors: u64,
    shed: u64,
    latency: LatencyHistogram,
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Debug, Default)]
struct State {
    minutes: BTreeMap<u64, HashMap<String, Acc>>,
    drained_through: Option<u64>,
    late: u64,
    dropped: u64,
}

/// The in-memory accumulator.
#[derive(Debug)]
pub struct MinuteAggregator {
    state: Mutex<State>,
    max_minutes: usize,
    max_models: usize,
}

/// One finished request as the aggregator sees it.
#[derive(Debug, Clone, Copy)]
pub struct AggregateSample<'a> {
    /// The public model.
    pub model: &'a str,
    /// How it ended.
    pub status: RequestStatus,
    /// Whole-request latency.
    pub latency: Duration,
    /// Prompt tokens (0 when unknown).
    pub prompt_tokens: u64,
    /// Completion tokens (0 when unknown).
    pub completion_tokens: u64,
}

fn minute_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60)
}

impl MinuteAggregator {
    /// An empty accumulator keeping at most `max_minutes` undrained minutes
    /// of at most `max_models` models each.
    pub fn new(max_minutes: usize, max_models: usize) -> Self {
        MinuteAggregator {
            state: Mutex::new(State::default()),
            max_minutes: max_minutes.max(2),
            max_models: max_models.max(1),
        }
    }

    /// Counts one request that finished at `at`.
    pub fn record(&self, sample: &AggregateSample<'_>, at: SystemTime) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut minute = minute_of(at);
        if let Some(done) = st.drained_through
            && minute <= done
        {
            minute = done + 1;
            st.late += 1;
        }
        if !st.minutes.contains_key(&minute)
            && st.minutes.len() >= self.max_minutes
            && let Some((_, rows)) = st.minutes.pop_first()
        {
            st.dropped += rows.len() as u64;
        }
        let max_models = self.max_models;
        let State {
            minutes, dropped, ..
        } = &mut *st;
        let rows = minutes.entry(minute).or_default();
        if !rows.contains_key(sample.model) {
            if rows.len() >= max_models {
                *dropped += 1;
                return;
            }
            rows.insert(sample.model.to_owned(), Acc::default());
        }
        let Some(acc) = rows.get_mut(sample.model) else {
            return;
        };
        match sample.status {
            RequestStatus::Success => {
                acc.successes += 1;
                acc.latency.record(sample.latency);
            }
            RequestStatus::Failure => acc.errors += 1,
            RequestStatus::ClientError => acc.client_errors += 1,
            RequestStatus::Shed => acc.shed += 1,
        }
        acc.prompt_tokens += sample.prompt_tokens;
        acc.completion_tokens += sample.completion_tokens;
    }

    /// Removes and returns every minute that ended at or before `now`,
    /// ordered by minute, then model.
    pub fn drain_completed_minutes(&self, now: SystemTime) -> Vec<MinuteAggregate> {
        let current = minute_of(now);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let open = st.minutes.split_off(&current);
        let done = std::mem::replace(&mut st.minutes, open);
        if let Some(last) = current.checked_sub(1) {
            st.drained_through = Some(st.drained_through.map_or(last, |d| d.max(last)));
        }
        drop(st);
        let mut out = Vec::new();
        for (minute, rows) in done {
            let start = UNIX_EPOCH + Duration::from_secs(minute.saturating_mul(60));
            let mut rows: Vec<(String, Acc)> = rows.into_iter().collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            for (model, acc) in rows {
                let latency = acc.latency.summary();
                out.push(MinuteAggregate {
                    minute: start,
                    model,
                    requests: acc.successes + acc.errors + acc.client_errors + acc.shed,
                    successes: acc.successes,
                    errors: acc.errors,
                    client_errors: acc.client_errors,
                    shed: acc.shed,
                    latency_p50_ms: latency.p50_ms,
                    latency_p95_ms: latency.p95_ms,
                    latency_p99_ms: latency.p99_ms,
                    latency_max_ms: latency.max_ms,
                    prompt_tokens: acc.prompt_tokens,
                    completion_tokens: acc.completion_tokens,
                });
            }
        }
        out
    }

    /// Requests counted in a later minute than the one they finished in,
    /// because their minute had already been drained.
    pub fn late_samples(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .late
    }

    /// Rows dropped because the memory bounds were reached.
    pub fn dropped_rows(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_740_830_400 + secs)
    }

    fn sample(model: &str, status: RequestStatus, ms: u64) -> AggregateSample<'_> {
        AggregateSample {
            model,
            status,
            latency: Duration::from_millis(ms),
            prompt_tokens: 10,
            completion_tokens: 5,
        }
    }

    #[test]
    fn known_sequence_per_minute() {
        let agg = MinuteAggregator::new(60, 16);
        // Minute 0: model a gets 20 successes at 100 ms and 2 errors; model b
        // one client error.
        for i in 0..20 {
            agg.record(&sample("a", RequestStatus::Success, 100), at(i));
        }
        agg.record(&sample("a", RequestStatus::Failure, 0), at(30));
        agg.record(&sample("a", RequestStatus::Failure, 0), at(59));
        agg.record(&sample("b", RequestStatus::ClientError, 0), at(10));
        // Minute 1: model a, 99 requests at 10 ms and one at 1000 ms, plus one
        // shed request.
        for _ in 0..99 {
            agg.record(&sample("a", RequestStatus::Success, 10), at(60));
        }
        agg.record(&sample("a", RequestStatus::Success, 1000), at(119));
        agg.record(&sample("a", RequestStatus::Shed, 0), at(100));

        // Nothing is complete until the minute has ended.
        assert!(agg.drain_completed_minutes(at(59)).is_empty());
        let rows = agg.drain_completed_minutes(at(60));
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!(a.minute, at(0));
        assert_eq!(
            (a.model.as_str(), a.requests, a.successes, a.errors),
            ("a", 22, 20, 2)
        );
        assert_eq!((a.prompt_tokens, a.completion_tokens), (220, 110));
        assert_eq!(a.latency_p50_ms, Some(100.0));
        assert_eq!(a.latency_p99_ms, Some(100.0));
        let b = &rows[1];
        assert_eq!((b.model.as_str(), b.requests, b.client_errors), ("b", 1, 1));
        assert_eq!(b.latency_p50_ms, None);

        let rows = agg.drain_completed_minutes(at(125));
        assert_eq!(rows.len(), 1);
        let a = &rows[0];
        assert_eq!(a.minute, at(60));
        assert_eq!((a.requests, a.successes, a.shed), (101, 100, 1));
        assert_eq!(a.latency_p50_ms, Some(10.0));
        assert_eq!(a.latency_max_ms, Some(1000.0));
        // The 95th and 99th of 100 values are 10 ms ones; the estimate is
        // within the histogram's √2 bucket (10 ms lies in (8, 11.31]).
        for p in [a.latency_p95_ms, a.latency_p99_ms] {
            let p = p.unwrap();
            assert!((10.0..=11.32).contains(&p), "{p}");
        }
        // Each row comes out once.
        assert!(agg.drain_completed_minutes(at(125)).is_empty());
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["minute"], "2025-03-01T12:01:00.000Z");
    }

    #[test]
    fn late_samples_go_to_the_next_open_minute() {
        let agg = MinuteAggregator::new(60, 16);
        agg.record(&sample("a", RequestStatus::Success, 5), at(10));
        assert_eq!(agg.drain_completed_minutes(at(61)).len(), 1);
        agg.record(&sample("a", RequestStatus::Success, 5), at(59));
        assert_eq!(agg.late_samples(), 1);
        let rows = agg.drain_completed_minutes(at(121));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].minute, at(60));
    }

    #[test]
    fn memory_is_bounded() {
        let agg = MinuteAggregator::new(3, 2);
        for m in 0..5 {
            agg.record(&sample("a", RequestStatus::Success, 5), at(m * 60));
        }
        agg.record(&sample("b", RequestStatus::Success, 5), at(4 * 60));
        agg.record(&sample("c", RequestStatus::Success, 5), at(4 * 60));
        assert_eq!(agg.dropped_rows(), 3);
        let rows = agg.drain_completed_minutes(at(10 * 60));
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].minute, at(120));
    }
}
