//! The circuit breaker of one target, as a pure state machine: no locks, no
//! clock, no IO. [`crate::HealthEngine`] owns one per target behind the
//! target's mutex and turns its transitions into [`BreakerEvent`]s.
//!
//! ```text
//!            error rate ≥ threshold (with ≥ min_requests)
//!            or N consecutive failures
//!   Closed ────────────────────────────────────────────► Open
//!     ▲                                                 │  ▲
//!     │ trial successes ≥ half_open_successes           │  │ a trial failed:
//!     │                                                 │  │ open again, cool-down
//!     │                 cool-down elapsed, next allow() │  │ × backoff_multiplier
//!   HalfOpen ◄──────────────────────────────────────────┘  │ (capped at max_cool_down)
//!     └────────────────────────────────────────────────────┘
//! ```
//!
//! Counting restarts from zero whenever the breaker closes, so failures from
//! before an outage cannot re-open it straight after recovery. Results of
//! attempts that started in an older state (a request admitted while closed
//! that fails after the breaker opened) do not move the breaker: each
//! permit carries the generation it was issued in.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::target::{AttemptOutcome, FailureKind, TargetId};
use crate::window::{Ring, WindowSpec, ratio};

/// Breaker settings; see [`crate::config::RawBreaker`] for the file form and
/// defaults. The error rate is computed over the target window of
/// [`crate::HealthSettings`].
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// When false, every target is always allowed (figures are still kept).
    pub enabled: bool,
    /// Error rate over the window at or above which the breaker opens.
    pub failure_rate: f64,
    /// Attempts needed in the window before the error rate is trusted.
    pub min_requests: u64,
    /// Consecutive failures that open the breaker regardless of the rate;
    /// 0 disables this rule.
    pub consecutive_failures: u32,
    /// How long the breaker stays open the first time.
    pub cool_down: Duration,
    /// Upper bound of the cool-down after repeated failed trials.
    pub max_cool_down: Duration,
    /// Factor applied to the cool-down after each failed trial.
    pub backoff_multiplier: f64,
    /// Trial requests admitted at once while half-open.
    pub half_open_trials: u32,
    /// Successful trials needed to close.
    pub half_open_successes: u32,
    /// Whether a 429 counts as a failure. On by default: an upstream that
    /// refuses traffic should be routed around.
    pub rate_limited_is_failure: bool,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            enabled: true,
            failure_rate: 0.5,
            min_requests: 20,
            consecutive_failures: 5,
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(300),
            backoff_multiplier: 2.0,
            half_open_trials: 1,
            half_open_successes: 1,
            rate_limited_is_failure: true,
        }
    }
}

/// The state of a breaker, as reported in metrics and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// Traffic is refused until the cool-down ends.
    Open,
    /// A bounded number of trial requests may go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of a state gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a breaker changed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum TransitionReason {
    /// The error rate over the window reached the threshold.
    ErrorRate {
        /// The rate observed.
        error_rate: f64,
        /// The configured threshold.
        threshold: f64,
    },
    /// Too many failures in a row.
    ConsecutiveFailures {
        /// The configured threshold.
        threshold: u32,
        /// The kind of the last failure.
        last: FailureKind,
    },
    /// The open period ended and a request asked for the target.
    CoolDownElapsed,
    /// Enough trial requests succeeded.
    TrialSucceeded,
    /// A trial request failed.
    TrialFailed {
        /// How it failed.
        kind: FailureKind,
    },
}

impl TransitionReason {
    /// A short snake_case label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TransitionReason::ErrorRate { .. } => "error_rate",
            TransitionReason::ConsecutiveFailures { .. } => "consecutive_failures",
            TransitionReason::CoolDownElapsed => "cool_down_elapsed",
            TransitionReason::TrialSucceeded => "trial_succeeded",
            TransitionReason::TrialFailed { .. } => "trial_failed",
        }
    }
}

/// The breaker's own counts at the moment of a transition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BreakerFigures {
    /// Attempts counted since the breaker last closed, within the window.
    pub requests: u64,
    /// Failures among them.
    pub failures: u64,
    /// `failures / requests`.
    pub error_rate: f64,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

/// A state change of one target's breaker. Logged by the engine and passed
/// to the [`crate::BreakerListener`], which writes it to the audit ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerEvent {
    /// The target.
    pub target: TargetId,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// Why, with the figures that decided it.
    #[serde(flatten)]
    pub reason: TransitionReason,
    /// Counts at the moment of the change.
    pub figures: BreakerFigures,
    /// How long the breaker stays open, when it opened.
    #[serde(with = "crate::time::duration_ms_opt")]
    pub cool_down: Option<Duration>,
    /// How many times it has opened without closing in between (1 on the
    /// first opening; drives the backoff).
    pub opens: u32,
    /// When it happened (wall clock).
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
}

/// A transition before it is stamped with its target and time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transition {
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
    pub(crate) reason: TransitionReason,
    pub(crate) figures: BreakerFigures,
    pub(crate) cool_down: Option<Duration>,
    pub(crate) opens: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    total: u64,
    failures: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// What a caller was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// A normal attempt.
    Normal,
    /// A half-open trial issued in this generation.
    Trial(u64),
}

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) state: BreakerState,
    pub(crate) retry_after: Duration,
}

/// One target's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: State,
    generation: u64,
    consecutive: u32,
    opens: u32,
    counts: Ring<Counts>,
}

impl Breaker {
    pub(crate) fn new(window: WindowSpec, origin: Instant) -> Self {
        Breaker {
            state: State::Closed,
            generation: 0,
            consecutive: 0,
            opens: 0,
            counts: Ring::new(window, origin),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How long until an open breaker turns half-open.
    pub(crate) fn open_for(&self, now: Instant) -> Option<Duration> {
        match self.state {
            State::Open { until } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    fn figures(&self, now: Instant) -> BreakerFigures {
        let (requests, failures) = self
            .counts
            .live(now)
            .fold((0, 0), |(t, f), c| (t + c.total, f + c.failures));
        BreakerFigures {
            requests,
            failures,
            error_rate: ratio(failures, requests),
            consecutive_failures: self.consecutive,
        }
    }

    /// Asks to send one attempt.
    pub(crate) fn acquire(
        &mut self,
        s: &BreakerSettings,
        now: Instant,
    ) -> (Result<Grant, Refusal>, Option<Transition>) {
        if !s.enabled {
            return (Ok(Grant::Normal), None);
        }
        let mut transition = None;
        if let State::Open { until } = self.state {
            if now < until {
                let refusal = Refusal {
                    state: BreakerState::Open,
                    retry_after: until - now,
                };
                return (Err(refusal), None);
            }
            let figures = self.figures(now);
            self.generation += 1;
            self.state = State::HalfOpen {
                in_flight: 0,
                successes: 0,
            };
            transition = Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
                reason: TransitionReason::CoolDownElapsed,
                figures,
                cool_down: None,
                opens: self.opens,
            });
        }
        let result = match &mut self.state {
            State::Closed => Ok(Grant::Normal),
            State::HalfOpen { in_flight, .. } if *in_flight < s.half_open_trials.max(1) => {
                *in_flight += 1;
                Ok(Grant::Trial(self.generation))
            }
            // Trials are in flight; their answers decide soon.
            State::HalfOpen { .. } => Err(Refusal {
                state: BreakerState::HalfOpen,
                retry_after: Duration::from_secs(1),
            }),
            State::Open { until } => Err(Refusal {
                state: BreakerState::Open,
                retry_after: until.saturating_duration_since(now),
            }),
        };
        (result, transition)
    }

    /// A trial permit ended without a result (the request was dropped).
    pub(crate) fn release(&mut self, grant: Grant) {
        if let (Grant::Trial(generation), State::HalfOpen { in_flight, .. }) =
            (grant, &mut self.state)
            && generation == self.generation
        {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    /// Feeds one result. `grant` is the permit it was sent under, or `None`
    /// for a passive observation (a probe or a caller without a permit).
    pub(crate) fn record(
        &mut self,
        s: &BreakerSettings,
        now: Instant,
        outcome: AttemptOutcome,
        grant: Option<Grant>,
    ) -> Option<Transition> {
        let failure = outcome
            .failure()
            .filter(|k| s.rate_limited_is_failure || *k != FailureKind::RateLimited);
        match self.state {
            State::Closed => {
                if let Some(c) = self.counts.slot(now) {
                    c.total += 1;
                    c.failures += u64::from(failure.is_some());
                }
                let Some(kind) = failure else {
                    self.consecutive = 0;
                    return None;
                };
                self.consecutive = self.consecutive.saturating_add(1);
                if !s.enabled {
                    return None;
                }
                let figures = self.figures(now);
                let reason =
                    if s.consecutive_failures > 0 && self.consecutive >= s.consecutive_failures {
                        TransitionReason::ConsecutiveFailures {
                            threshold: s.consecutive_failures,
                            last: kind,
                        }
                    } else if figures.requests >= s.min_requests.max(1)
                        && figures.error_rate >= s.failure_rate
                    {
                        TransitionReason::ErrorRate {
                            error_rate: figures.error_rate,
                            threshold: s.failure_rate,
                        }
                    } else {
                        return None;
                    };
                self.opens = 1;
                Some(self.open(s, now, BreakerState::Closed, reason, figures))
            }
            State::Open { .. } => None,
            State::HalfOpen {
                ref mut in_flight,
                ref mut successes,
            } => {
                let Some(Grant::Trial(generation)) = grant else {
                    return None;
                };
                if generation != self.generation {
                    return None;
                }
                *in_flight = in_flight.saturating_sub(1);
                match failure {
                    None => {
                        *successes += 1;
                        if *successes < s.half_open_successes.max(1) {
                            return None;
                        }
                        let figures = self.figures(now);
                        self.generation += 1;
                        self.state = State::Closed;
                        self.consecutive = 0;
                        self.opens = 0;
                        self.counts.clear();
                        Some(Transition {
                            from: BreakerState::HalfOpen,
                            to: BreakerState::Closed,
                            reason: TransitionReason::TrialSucceeded,
                            figures,
                            cool_down: None,
                            opens: 0,
                        })
                    }
                    Some(kind) => {
                        self.consecutive = self.consecutive.saturating_add(1);
                        self.opens = self.opens.saturating_add(1);
                        let figures = self.figures(now);
                        Some(self.open(
                            s,
                            now,
                            BreakerState::HalfOpen,
                            TransitionReason::TrialFailed { kind },
                            figures,
                        ))
                    }
                }
            }
        }
    }

    fn open(
        &mut self,
        s: &BreakerSettings,
        now: Instant,
        from: BreakerState,
        reason: TransitionReason,
        figures: BreakerFigures,
    ) -> Transition {
        let cool_down = backoff(s, self.opens);
        self.generation += 1;
        self.state = State::Open {
            until: now + cool_down,
        };
        Transition {
            from,
            to: BreakerState::Open,
            reason,
            figures,
            cool_down: Some(cool_down),
            opens: self.opens,
        }
    }
}

/// The cool-down of the `opens`-th opening in a row.
fn backoff(s: &BreakerSettings, opens: u32) -> Duration {
    let exponent = i32::try_from(opens.saturating_sub(1).min(64)).unwrap_or(64);
    let factor = s.backoff_multiplier.max(1.0).powi(exponent);
    let secs = s.cool_down.as_secs_f64() * factor;
    let max = s.max_cool_down.max(s.cool_down);
    if secs.is_finite() && secs < max.as_secs_f64() {
        Duration::from_secs_f64(secs)
    } else {
        max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: WindowSpec = WindowSpec {
        bucket: Duration::from_secs(6),
        buckets: 10,
    };

    fn settings() -> BreakerSettings {
        BreakerSettings {
            min_requests: 4,
            consecutive_failures: 3,
            cool_down: Duration::from_secs(10),
            max_cool_down: Duration::from_secs(25),
            ..BreakerSettings::default()
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let s = settings();
        assert_eq!(backoff(&s, 1), Duration::from_secs(10));
        assert_eq!(backoff(&s, 2), Duration::from_secs(20));
        assert_eq!(backoff(&s, 3), Duration::from_secs(25));
        assert_eq!(backoff(&s, 200), Duration::from_secs(25));
    }

    #[test]
    fn rate_limits_can_be_ignored() {
        let s = BreakerSettings {
            rate_limited_is_failure: false,
            ..settings()
        };
        let t0 = Instant::now();
        let mut b = Breaker::new(WINDOW, t0);
        let r429 = AttemptOutcome::Failure {
            kind: FailureKind::RateLimited,
        };
        for _ in 0..10 {
            assert_eq!(b.record(&s, t0, r429, None), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn disabled_breaker_always_grants() {
        let s = BreakerSettings {
            enabled: false,
            ..settings()
        };
        let t0 = Instant::now();
        let mut b = Breaker::new(WINDOW, t0);
        let fail = AttemptOutcome::Failure {
            kind: FailureKind::Connect,
        };
        for _ in 0..10 {
            assert_eq!(b.record(&s, t0, fail, None), None);
        }
        assert_eq!(b.acquire(&s, t0).0, Ok(Grant::Normal));
        assert_eq!(b.consecutive_failures(), 10);
    }

    #[test]
    fn stale_permits_do_not_move_the_breaker() {
        let s = settings();
        let t0 = Instant::now();
        let mut b = Breaker::new(WINDOW, t0);
        let fail = AttemptOutcome::Failure {
            kind: FailureKind::Timeout,
        };
        for _ in 0..3 {
            b.record(&s, t0, fail, Some(Grant::Normal));
        }
        assert_eq!(b.state(), BreakerState::Open);
        let t1 = t0 + Duration::from_secs(10);
        let (grant, t) = b.acquire(&s, t1);
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        let Ok(Grant::Trial(generation)) = grant else {
            panic!("{grant:?}")
        };
        // A trial from an older generation, or a plain permit, is ignored.
        assert_eq!(
            b.record(
                &s,
                t1,
                AttemptOutcome::Success,
                Some(Grant::Trial(generation - 1))
            ),
            None
        );
        assert_eq!(
            b.record(&s, t1, AttemptOutcome::Success, Some(Grant::Normal)),
            None
        );
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Releasing the real trial frees its slot.
        b.release(Grant::Trial(generation));
        assert!(matches!(b.acquire(&s, t1).0, Ok(Grant::Trial(_))));
    }
}
