//! Active probes and the periodic loops under tokio's paused clock, and the
//! per-minute aggregates fed through the health engine.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use common::{Breakers, clock, fail, ms, secs, start};
use custos_health::{
    AttemptOutcome, BoxFuture, BreakerSettings, FailureKind, HealthEngine, HealthSettings,
    IncidentEngine, IncidentSettings, MemoryIncidentStore, NoIncidentListener, ProbeSettings,
    Prober, RequestSample, RequestStatus, TargetId, spawn_incident_loop, spawn_probes,
};
use tokio::time::Instant;

/// Answers probes from a script and remembers when it was called.
struct Scripted {
    script: Mutex<VecDeque<AttemptOutcome>>,
    calls: Mutex<Vec<(TargetId, Instant)>>,
}

impl Prober for Scripted {
    fn probe<'a>(&'a self, target: &'a TargetId) -> BoxFuture<'a, AttemptOutcome> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push((target.clone(), Instant::now()));
            let next = self.script.lock().unwrap().pop_front();
            match next {
                Some(outcome) => outcome,
                // Past the script the upstream hangs: the probe timeout applies.
                None => std::future::pending().await,
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn probes_open_a_breaker_and_close_it_through_the_half_open_trial() {
    let events = Arc::new(Breakers::default());
    let health = HealthEngine::new(
        HealthSettings {
            breaker: BreakerSettings {
                consecutive_failures: 2,
                cool_down: secs(60),
                ..BreakerSettings::default()
            },
            ..HealthSettings::default()
        },
        clock(),
        events.clone(),
    );
    let target = TargetId::new("openai", "gpt-4o-mini");
    health.register_model("gpt-4o-mini", std::slice::from_ref(&target));
    let prober = Arc::new(Scripted {
        script: Mutex::new(
            [
                fail(FailureKind::Status5xx),
                fail(FailureKind::Connect),
                AttemptOutcome::Success,
            ]
            .into(),
        ),
        calls: Mutex::new(Vec::new()),
    });
    let settings = ProbeSettings {
        enabled: true,
        interval: secs(10),
        timeout: secs(2),
        targets: Vec::new(),
    };
    let t0 = Instant::now();
    let task = spawn_probes(health.clone(), prober.clone(), &settings).unwrap();

    // Rounds at 10 s and 20 s fail: open. Rounds at 30 … 70 s are skipped
    // (open); the round at 80 s takes the half-open trial and succeeds.
    tokio::time::sleep(secs(85)).await;
    let calls: Vec<u64> = prober
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, at)| (*at - t0).as_secs())
        .collect();
    assert_eq!(calls, [10, 20, 80]);
    assert_eq!(
        events.transitions(),
        [
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "closed")
        ]
    );
    // The round at 90 s hangs past the script and times out after 2 s.
    tokio::time::sleep(secs(10)).await;
    let h = health.target_health(&target, Instant::now()).unwrap();
    assert_eq!(h.stats.failures.timeout, 1);
    task.shutdown().await;

    assert!(spawn_probes(health, prober, &ProbeSettings::default()).is_none());
}

#[tokio::test(start_paused = true)]
async fn the_incident_loop_evaluates_periodically() {
    let clock = clock();
    let incidents = Arc::new(IncidentEngine::new(
        IncidentSettings {
            evaluation_interval: secs(10),
            ..IncidentSettings::default()
        },
        Arc::new(MemoryIncidentStore::new()),
        clock.clone(),
        Arc::new(NoIncidentListener),
    ));
    let health = HealthEngine::new(
        HealthSettings::default(),
        clock,
        incidents.breaker_listener(),
    );
    health.register_model("m", &[]);
    for _ in 0..30 {
        health.record_request(
            &RequestSample {
                model: "m",
                status: RequestStatus::Failure,
                latency: ms(1),
                prompt_tokens: 0,
                completion_tokens: 0,
                key_id: None,
            },
            Instant::now(),
        );
    }
    let task = spawn_incident_loop(incidents.clone(), health);
    tokio::time::sleep(secs(9)).await;
    assert!(incidents.active().await.is_empty());
    tokio::time::sleep(secs(2)).await;
    assert_eq!(incidents.active().await.len(), 1);
    task.shutdown().await;
}

#[test]
fn minute_aggregates_through_the_engine() {
    let clock = clock();
    let health = HealthEngine::new(
        HealthSettings::default(),
        clock.clone(),
        Arc::new(Breakers::default()),
    );
    let now = Instant::now();
    let sample = |status, latency_ms, prompt, completion| RequestSample {
        model: "gpt-4o",
        status,
        latency: ms(latency_ms),
        prompt_tokens: prompt,
        completion_tokens: completion,
        key_id: Some("k1"),
    };
    // 12:00: three served (100, 200, 300 ms), one failed, one client error.
    clock.set(start() + secs(5));
    for (latency, prompt, completion) in [(100, 10, 1), (200, 20, 2), (300, 30, 3)] {
        health.record_request(
            &sample(RequestStatus::Success, latency, prompt, completion),
            now,
        );
    }
    health.record_request(&sample(RequestStatus::Failure, 0, 7, 0), now);
    health.record_request(&sample(RequestStatus::ClientError, 0, 0, 0), now);
    // 12:01: one shed request.
    clock.set(start() + secs(61));
    health.record_request(&sample(RequestStatus::Shed, 0, 0, 0), now);

    let rows = health.drain_completed_minutes(start() + secs(60));
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.minute, start());
    assert_eq!(
        (r.requests, r.successes, r.errors, r.client_errors, r.shed),
        (5, 3, 1, 1, 0)
    );
    assert_eq!((r.prompt_tokens, r.completion_tokens), (67, 6));
    assert_eq!(r.latency_max_ms, Some(300.0));
    // p50 of {100, 200, 300} is 200 within the histogram's √2 resolution.
    let p50 = r.latency_p50_ms.unwrap();
    assert!((181.0..=256.0).contains(&p50), "{p50}");
    assert_eq!(r.latency_p99_ms, Some(300.0));
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["minute"], "2025-03-01T12:00:00.000Z");
    assert_eq!(json["model"], "gpt-4o");

    let rows = health.drain_completed_minutes(start() + secs(120));
    assert_eq!((rows.len(), rows[0].shed, rows[0].requests), (1, 1, 1));
    // The failure also fed the model window that incidents evaluate.
    let m = &health.model_health(now)[0];
    assert_eq!(
        (m.stats.requests, m.stats.failures, m.stats.shed),
        (4, 1, 1)
    );
    assert_eq!(m.failing_keys, ["k1"]);
}
