//! Circuit breaking and capacity limits in the real router, against real
//! failing upstreams.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestGateway, chat, config_for, error_of};
use custos_gateway::Hooks;
use custos_health::{
    CapacityLimiter, CapacitySettings, HealthEngine, HealthSettings, LimitSpec, NoBreakerListener,
};
use custos_testkit::{MockUpstream, Reply};
use custos_types::SystemClock;

const FAST: &str = r#"connect = "1s", first_byte = "2s", idle = "2s", total = "5s""#;
/// Timeouts that let a deliberately slow upstream answer.
const SLOW_OK: &str = r#"connect = "1s", first_byte = "10s", idle = "10s", total = "20s""#;

fn health() -> HealthEngine {
    HealthEngine::new(
        HealthSettings::default(),
        Arc::new(SystemClock),
        Arc::new(NoBreakerListener),
    )
}

/// A health engine whose breakers open after 3 failures in a row and try
/// again after 300 ms.
fn quick_breakers() -> HealthEngine {
    let mut settings = HealthSettings::default();
    settings.breaker.consecutive_failures = 3;
    settings.breaker.cool_down = Duration::from_millis(300);
    settings.breaker.max_cool_down = Duration::from_millis(300);
    HealthEngine::new(settings, Arc::new(SystemClock), Arc::new(NoBreakerListener))
}

/// Timeouts short enough that a hanging or slow upstream fails quickly.
const TIGHT: &str = r#"connect = "500ms", first_byte = "300ms", idle = "300ms", total = "2s""#;

/// One way an upstream can fail.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Status500,
    HangPastTimeouts,
    SlowPastTimeouts,
    ResetConnections,
}

#[tokio::test]
async fn every_fault_opens_the_circuit_falls_back_and_recovers_through_half_open() {
    for fault in [
        Fault::Status500,
        Fault::HangPastTimeouts,
        Fault::SlowPastTimeouts,
        Fault::ResetConnections,
    ] {
        let first = MockUpstream::start(Reply::chat("from first")).await;
        let good = MockUpstream::start(Reply::chat("from fallback")).await;
        // The faulty first target: the mock misbehaving, or a server that
        // resets every connection, later replaced by the healthy mock.
        let (reset_addr, reset_task) = custos_testkit::resetting_server().await;
        let first_url = match fault {
            Fault::Status500 => {
                first.set_default(Reply::error(500, "down"));
                first.base_url()
            }
            Fault::HangPastTimeouts => {
                first.set_default(Reply::Hang);
                first.base_url()
            }
            Fault::SlowPastTimeouts => {
                first.set_default(Reply::Delay(
                    Duration::from_millis(800),
                    Box::new(Reply::chat("too late")),
                ));
                first.base_url()
            }
            Fault::ResetConnections => format!("http://{reset_addr}/v1"),
        };
        let health = quick_breakers();
        let gw = TestGateway::start_full(
            &config_for(&[first_url, good.base_url()], TIGHT),
            Hooks {
                health: Some(health.clone()),
                ..Default::default()
            },
        )
        .await;
        let served_by = |body: serde_json::Value| {
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        // Every request is served, by the fallback, while the first target
        // fails; after 3 failures its circuit opens and it is skipped.
        for _ in 0..5 {
            let resp = gw.post("/v1/chat/completions", &chat(false)).await;
            assert_eq!(resp.status(), 200, "{fault:?}");
            assert_eq!(
                served_by(resp.json().await.unwrap()),
                "from fallback",
                "{fault:?}"
            );
        }
        let outcomes = gw.outcomes.wait(5).await;
        assert_eq!(
            outcomes[4].attempts[0].error,
            Some("circuit_open"),
            "{fault:?}: {:?}",
            outcomes[4].attempts
        );
        let state = |h: &HealthEngine| {
            h.targets(tokio::time::Instant::now())
                .into_iter()
                .find(|t| &*t.target.provider == "p0")
                .unwrap()
                .state
        };
        assert_eq!(
            state(&health),
            custos_health::BreakerState::Open,
            "{fault:?}"
        );

        // The upstream recovers; after the cool-down one trial request goes
        // to it (half-open), succeeds, and the circuit closes.
        reset_task.abort();
        let recovered = match fault {
            Fault::ResetConnections => None,
            _ => {
                first.set_default(Reply::chat("from first"));
                Some(&first)
            }
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        let resp = gw.post("/v1/chat/completions", &chat(false)).await;
        assert_eq!(resp.status(), 200);
        let body = served_by(resp.json().await.unwrap());
        match recovered {
            Some(_) => {
                assert_eq!(
                    body, "from first",
                    "{fault:?}: the half-open trial goes to the first target"
                );
                assert_eq!(
                    state(&health),
                    custos_health::BreakerState::Closed,
                    "{fault:?}"
                );
                let resp = gw.post("/v1/chat/completions", &chat(false)).await;
                assert_eq!(served_by(resp.json().await.unwrap()), "from first");
            }
            None => {
                // A target that still fails its trial re-opens at once, and
                // the request is still served by the fallback.
                assert_eq!(body, "from fallback", "{fault:?}");
                assert_eq!(
                    state(&health),
                    custos_health::BreakerState::Open,
                    "{fault:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_open_circuit_is_skipped_and_traffic_falls_back() {
    let broken = MockUpstream::start(Reply::error(500, "down")).await;
    let good = MockUpstream::start(Reply::chat("ok")).await;
    let gw = TestGateway::start_full(
        &config_for(&[broken.base_url(), good.base_url()], FAST),
        Hooks {
            health: Some(health()),
            ..Default::default()
        },
    )
    .await;
    // Consecutive failures open the first target's breaker (5 by default).
    for _ in 0..5 {
        assert_eq!(
            gw.post("/v1/chat/completions", &chat(false)).await.status(),
            200
        );
    }
    assert_eq!(broken.received().len(), 5);
    // Now routing skips it without sending anything.
    assert_eq!(
        gw.post("/v1/chat/completions", &chat(false)).await.status(),
        200
    );
    assert_eq!(
        broken.received().len(),
        5,
        "an open target must not be tried"
    );
    let outcomes = gw.outcomes.wait(6).await;
    let last = outcomes.last().unwrap();
    assert_eq!(last.attempts[0].error, Some("circuit_open"));
    assert_eq!(last.provider.as_deref(), Some("p1"));
}

#[tokio::test]
async fn every_circuit_open_is_503_with_retry_after() {
    let broken = MockUpstream::start(Reply::error(502, "down")).await;
    let gw = TestGateway::start_full(
        &config_for(&[broken.base_url()], FAST),
        Hooks {
            health: Some(health()),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            gw.post("/v1/chat/completions", &chat(false)).await.status(),
            502
        );
    }
    let resp = gw.post("/v1/chat/completions", &chat(false)).await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let err = error_of(resp, 503).await;
    assert_eq!(err["code"], "no_healthy_target");
}

#[tokio::test]
async fn excess_concurrency_is_refused_promptly_and_nothing_hangs() {
    // Slow enough that all six requests arrive while the first two are in
    // flight, even on a loaded machine.
    let slow = MockUpstream::start(Reply::Delay(
        Duration::from_secs(2),
        Box::new(Reply::chat("ok")),
    ))
    .await;
    let limiter = CapacityLimiter::new(CapacitySettings {
        global: LimitSpec {
            max_concurrent: 2,
            queue_size: 1,
        },
        per_key: None,
        queue_timeout: Duration::from_millis(100),
        ..CapacitySettings::default()
    });
    let gw = Arc::new(
        TestGateway::start_full(
            &config_for(&[slow.base_url()], SLOW_OK),
            Hooks {
                capacity: Some(Arc::new(limiter)),
                ..Default::default()
            },
        )
        .await,
    );
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let resp = gw.post("/v1/chat/completions", &chat(false)).await;
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, retry)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, retry) = tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("a request hung")
            .unwrap();
        match status {
            200 => ok += 1,
            503 => {
                refused += 1;
                assert!(retry.is_some(), "503 without Retry-After");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 2, "two slots");
    assert_eq!(refused, 4);
}
