//! The circuit breaker through the health engine: opening rules, cool-down,
//! bounded half-open trials, closing, re-opening with backoff, and the
//! state-change events.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

mod common;

use std::sync::Arc;

use common::{Breakers, OK, clock, fail, ms, secs, start};
use custos_health::{
    AttemptOutcome, BreakerSettings, BreakerState, FailureKind, HealthEngine, HealthSettings,
    TargetId, TransitionReason,
};
use tokio::time::Instant;

fn engine(breaker: BreakerSettings) -> (HealthEngine, Arc<Breakers>, TargetId) {
    let events = Arc::new(Breakers::default());
    let settings = HealthSettings {
        breaker,
        ..HealthSettings::default()
    };
    let engine = HealthEngine::new(settings, clock(), events.clone());
    let target = TargetId::new("openai", "gpt-4o");
    engine.register_model("gpt-4o", std::slice::from_ref(&target));
    (engine, events, target)
}

/// Sends one attempt through a permit.
fn attempt(engine: &HealthEngine, target: &TargetId, outcome: AttemptOutcome, now: Instant) {
    let permit = engine.allow(target, now).unwrap();
    permit.record(outcome, ms(200), now);
}

#[test]
fn opens_on_error_rate_with_a_minimum_of_requests() {
    let (engine, events, target) = engine(BreakerSettings {
        min_requests: 10,
        failure_rate: 0.5,
        consecutive_failures: 0,
        ..BreakerSettings::default()
    });
    let t0 = Instant::now();
    // Nine attempts, alternating, starting with a success: 4 of 9 failed.
    for i in 0..9 {
        let outcome = if i % 2 == 1 {
            fail(FailureKind::Status5xx)
        } else {
            OK
        };
        attempt(&engine, &target, outcome, t0 + secs(i));
    }
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Closed));
    assert!(events.transitions().is_empty());
    // The tenth fails: 5 of 10 is exactly the 0.5 threshold, with the
    // minimum of 10 attempts reached.
    attempt(&engine, &target, fail(FailureKind::Status5xx), t0 + secs(9));
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Open));
    let ev = events.last();
    assert_eq!((ev.from, ev.to), (BreakerState::Closed, BreakerState::Open));
    assert_eq!(ev.target, target);
    assert_eq!(
        ev.reason,
        TransitionReason::ErrorRate {
            error_rate: 0.5,
            threshold: 0.5
        }
    );
    assert_eq!((ev.figures.requests, ev.figures.failures), (10, 5));
    assert_eq!(ev.cool_down, Some(secs(30)));
    assert_eq!(ev.opens, 1);
    assert_eq!(ev.at, start());
}

#[test]
fn opens_on_consecutive_failures() {
    let (engine, events, target) = engine(BreakerSettings {
        min_requests: 1000,
        consecutive_failures: 3,
        ..BreakerSettings::default()
    });
    let t0 = Instant::now();
    attempt(&engine, &target, fail(FailureKind::Connect), t0);
    attempt(&engine, &target, fail(FailureKind::Connect), t0);
    // A success in between restarts the count.
    attempt(&engine, &target, OK, t0);
    attempt(&engine, &target, fail(FailureKind::Timeout), t0);
    attempt(&engine, &target, fail(FailureKind::Timeout), t0);
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Closed));
    attempt(&engine, &target, fail(FailureKind::Timeout), t0);
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Open));
    let ev = events.last();
    assert_eq!(
        ev.reason,
        TransitionReason::ConsecutiveFailures {
            threshold: 3,
            last: FailureKind::Timeout
        }
    );
    assert_eq!(ev.figures.consecutive_failures, 3);
}

#[test]
fn a_success_does_not_count_client_errors_as_failures() {
    let (engine, _, target) = engine(BreakerSettings {
        consecutive_failures: 2,
        ..BreakerSettings::default()
    });
    let t0 = Instant::now();
    for _ in 0..10 {
        attempt(
            &engine,
            &target,
            AttemptOutcome::ClientError { status: 400 },
            t0,
        );
    }
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Closed));
    let h = engine.target_health(&target, t0).unwrap();
    assert_eq!((h.stats.attempts, h.stats.client_errors), (10, 10));
    assert_eq!(h.stats.error_rate, 0.0);
}

fn open_now(engine: &HealthEngine, target: &TargetId, now: Instant) {
    for _ in 0..3 {
        attempt(engine, target, fail(FailureKind::Status5xx), now);
    }
    assert_eq!(engine.breaker_state(target), Some(BreakerState::Open));
}

fn quick() -> BreakerSettings {
    BreakerSettings {
        consecutive_failures: 3,
        cool_down: secs(10),
        max_cool_down: secs(25),
        backoff_multiplier: 2.0,
        ..BreakerSettings::default()
    }
}

#[test]
fn stays_open_for_the_cool_down() {
    let (engine, events, target) = engine(quick());
    let t0 = Instant::now();
    open_now(&engine, &target, t0);
    for at in [ms(0), secs(5), ms(9_999)] {
        let rejected = engine.allow(&target, t0 + at).unwrap_err();
        assert_eq!(rejected.state, BreakerState::Open);
        assert_eq!(rejected.retry_after, secs(10) - at);
        assert_eq!(rejected.target, target);
    }
    let health = engine.target_health(&target, t0 + secs(4)).unwrap();
    assert_eq!(health.open_for, Some(secs(6)));
    // A passive observation while open counts in the figures only.
    engine.record(&target, OK, ms(5), t0 + secs(5));
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Open));
    assert_eq!(
        engine
            .target_health(&target, t0 + secs(5))
            .unwrap()
            .stats
            .successes,
        1
    );
    assert_eq!(events.transitions(), [("closed", "open")]);
}

#[test]
fn half_open_admits_a_bounded_number_of_trials_then_closes() {
    let (engine, events, target) = engine(BreakerSettings {
        half_open_trials: 2,
        half_open_successes: 2,
        ..quick()
    });
    let t0 = Instant::now();
    open_now(&engine, &target, t0);
    let t1 = t0 + secs(10);
    let first = engine.allow(&target, t1).unwrap();
    let second = engine.allow(&target, t1).unwrap();
    assert!(first.is_trial() && second.is_trial());
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::HalfOpen));
    let third = engine.allow(&target, t1).unwrap_err();
    assert_eq!(third.state, BreakerState::HalfOpen);

    first.record(OK, ms(100), t1);
    // One success of two: still half-open, and a trial slot is free again.
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::HalfOpen));
    let again = engine.allow(&target, t1).unwrap();
    assert!(again.is_trial());
    assert!(engine.allow(&target, t1).is_err());
    second.record(OK, ms(100), t1);
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Closed));
    assert_eq!(
        events.transitions(),
        [
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "closed")
        ]
    );
    assert_eq!(events.last().reason, TransitionReason::TrialSucceeded);
    // The trial still in flight from the half-open period has no effect on
    // the closed breaker beyond being counted.
    again.record(fail(FailureKind::Timeout), ms(100), t1);
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Closed));
    // Closed permits are not trials.
    assert!(!engine.allow(&target, t1).unwrap().is_trial());
}

#[test]
fn a_failed_trial_reopens_with_backoff_and_closing_resets_it() {
    let (engine, events, target) = engine(quick());
    let t0 = Instant::now();
    open_now(&engine, &target, t0);

    let t1 = t0 + secs(10);
    engine
        .allow(&target, t1)
        .unwrap()
        .record(fail(FailureKind::Connect), ms(1), t1);
    let ev = events.last();
    assert_eq!(
        (ev.from, ev.to),
        (BreakerState::HalfOpen, BreakerState::Open)
    );
    assert_eq!(
        ev.reason,
        TransitionReason::TrialFailed {
            kind: FailureKind::Connect
        }
    );
    assert_eq!((ev.cool_down, ev.opens), (Some(secs(20)), 2));
    assert!(engine.allow(&target, t1 + ms(19_999)).is_err());

    let t2 = t1 + secs(20);
    engine
        .allow(&target, t2)
        .unwrap()
        .record(fail(FailureKind::Connect), ms(1), t2);
    // 40 s would exceed the 25 s cap.
    assert_eq!(
        (events.last().cool_down, events.last().opens),
        (Some(secs(25)), 3)
    );

    let t3 = t2 + secs(25);
    engine.allow(&target, t3).unwrap().record(OK, ms(1), t3);
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Closed));

    // Failures from before the outage no longer count: a single failure
    // after closing does not re-open, and the next opening starts again
    // from the base cool-down.
    attempt(&engine, &target, fail(FailureKind::Status5xx), t3);
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Closed));
    attempt(&engine, &target, fail(FailureKind::Status5xx), t3);
    attempt(&engine, &target, fail(FailureKind::Status5xx), t3);
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Open));
    assert_eq!(
        (events.last().cool_down, events.last().opens),
        (Some(secs(10)), 1)
    );
    assert_eq!(
        events.transitions(),
        [
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "open"),
            ("open", "half_open"),
            ("half_open", "open"),
            ("open", "half_open"),
            ("half_open", "closed"),
            ("closed", "open"),
        ]
    );
}

#[test]
fn a_dropped_trial_gives_its_slot_back() {
    let (engine, _, target) = engine(quick());
    let t0 = Instant::now();
    open_now(&engine, &target, t0);
    let t1 = t0 + secs(10);
    let trial = engine.allow(&target, t1).unwrap();
    assert!(engine.allow(&target, t1).is_err());
    // The client went away mid-attempt.
    drop(trial);
    let trial = engine.allow(&target, t1).unwrap();
    assert!(trial.is_trial());
    trial.record(OK, ms(1), t1);
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Closed));
}

#[test]
fn state_and_figures_for_metrics() {
    let (engine, _, target) = engine(quick());
    let other = TargetId::new("azure", "gpt-4o");
    engine.register_model("gpt-4o", &[target.clone(), other.clone()]);
    let t0 = Instant::now();
    open_now(&engine, &target, t0);
    attempt(&engine, &other, OK, t0);
    attempt(&engine, &other, fail(FailureKind::RateLimited), t0);
    let all = engine.targets(t0);
    let states: Vec<(String, i64)> = all
        .iter()
        .map(|h| (h.target.to_string(), h.state.gauge()))
        .collect();
    assert_eq!(
        states,
        [
            ("azure/gpt-4o".to_owned(), 0),
            ("openai/gpt-4o".to_owned(), 2)
        ]
    );
    assert_eq!(all[0].stats.failures.rate_limited, 1);
    assert_eq!(all[1].stats.failures.status_5xx, 3);
    // Figures leave the 60 s window.
    assert_eq!(engine.targets(t0 + secs(61))[1].stats.attempts, 0);
    let json = serde_json::to_value(&all[1]).unwrap();
    assert_eq!(json["state"], "open");
    assert_eq!(json["target"]["provider"], "openai");
}

#[test]
fn a_disabled_breaker_never_refuses() {
    let (engine, events, target) = engine(BreakerSettings {
        enabled: false,
        ..quick()
    });
    let t0 = Instant::now();
    for _ in 0..20 {
        attempt(&engine, &target, fail(FailureKind::Connect), t0);
    }
    assert_eq!(engine.breaker_state(&target), Some(BreakerState::Closed));
    assert!(events.transitions().is_empty());
    assert_eq!(
        engine
            .target_health(&target, t0)
            .unwrap()
            .stats
            .failures
            .connect,
        20
    );
}
