//! The incident engine fed by a real health engine: opening on an error
//! rate and on all targets open, escalation, the timeline, recovery and
//! automatic resolution, operator actions, TTA/TTR figures, storage and
//! emitted events.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

mod common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use common::{Notices, clock, fail, ms, secs, start};
use custos_health::{
    ActionItem, ActionStatus, BreakerFanout, BreakerSettings, FailureKind, HealthEngine,
    HealthSettings, Incident, IncidentEngine, IncidentError, IncidentQuery, IncidentSettings,
    IncidentStats, IncidentStatus, IncidentStore, MemoryIncidentStore, Postmortem, RequestSample,
    RequestStatus, Resolution, Severity, Symptom, SymptomKind, TargetId, TimelineKind,
};
use custos_types::ManualClock;
use tokio::time::Instant;

struct World {
    clock: Arc<ManualClock>,
    health: HealthEngine,
    incidents: IncidentEngine,
    store: Arc<MemoryIncidentStore>,
    notices: Arc<Notices>,
    t0: Instant,
    targets: Vec<TargetId>,
}

impl World {
    fn new() -> Self {
        Self::with_store(Arc::new(MemoryIncidentStore::new()))
    }

    fn with_store(store: Arc<MemoryIncidentStore>) -> Self {
        let clock = clock();
        let notices = Arc::new(Notices::default());
        let incidents = IncidentEngine::new(
            IncidentSettings {
                recovery_period: Duration::from_secs(300),
                ..IncidentSettings::default()
            },
            store.clone(),
            clock.clone(),
            notices.clone(),
        );
        let health = HealthEngine::new(
            HealthSettings {
                breaker: BreakerSettings {
                    consecutive_failures: 2,
                    cool_down: secs(30),
                    ..BreakerSettings::default()
                },
                ..HealthSettings::default()
            },
            clock.clone(),
            Arc::new(BreakerFanout(vec![incidents.breaker_listener()])),
        );
        let targets = vec![
            TargetId::new("openai", "gpt-4o"),
            TargetId::new("azure", "gpt-4o"),
        ];
        health.register_model("gpt-4o", &targets);
        World {
            clock,
            health,
            incidents,
            store,
            notices,
            t0: Instant::now(),
            targets,
        }
    }

    /// Moves both clocks to `at` after the start.
    fn at(&self, at: Duration) -> Instant {
        self.clock.set(start() + at);
        self.t0 + at
    }

    fn requests(&self, at: Duration, ok: u64, failed: u64, keys: &[&str]) {
        let now = self.at(at);
        for i in 0..ok + failed {
            let status = if i < failed {
                RequestStatus::Failure
            } else {
                RequestStatus::Success
            };
            let key = keys
                .get(usize::try_from(i).unwrap() % keys.len().max(1))
                .copied();
            self.health.record_request(
                &RequestSample {
                    model: "gpt-4o",
                    status,
                    latency: ms(800),
                    prompt_tokens: 100,
                    completion_tokens: 20,
                    key_id: key,
                },
                now,
            );
        }
    }

    async fn evaluate(&self, at: Duration) {
        let now = self.at(at);
        self.incidents
            .evaluate(&self.health.model_health(now))
            .await
            .unwrap();
    }

    async fn only(&self) -> Incident {
        let active = self.incidents.active().await;
        assert_eq!(active.len(), 1, "{active:?}");
        active.into_iter().next().unwrap()
    }

    fn open_target(&self, target: &TargetId, at: Duration) {
        let now = self.at(at);
        for _ in 0..2 {
            self.health
                .allow(target, now)
                .unwrap()
                .record(fail(FailureKind::Connect), ms(5), now);
        }
    }
}

fn labels(incident: &Incident) -> Vec<&'static str> {
    incident.timeline.iter().map(|e| e.kind.label()).collect()
}

#[tokio::test]
async fn an_error_rate_breach_opens_escalates_and_resolves_after_a_sustained_recovery() {
    let w = World::new();
    // 70 served, 30 failed over 10 keys: 30% is sev2 (≥ 25%, < 90%).
    w.requests(
        secs(0),
        70,
        30,
        &["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"],
    );
    w.evaluate(secs(10)).await;
    let inc = w.only().await;
    assert_eq!(inc.id, "INC-20250301-0001");
    assert_eq!(inc.model, "gpt-4o");
    assert_eq!(inc.severity, Severity::Sev2);
    assert_eq!(inc.status, IncidentStatus::Open);
    assert_eq!(inc.started_at, start() + secs(10));
    assert_eq!(inc.affected_keys, 10);
    assert_eq!(
        inc.symptoms,
        [Symptom::ErrorRate {
            error_rate: 0.3,
            threshold: 0.05,
            failures: 30,
            requests: 100,
            window_ms: 300_000
        }]
    );
    assert_eq!(
        inc.title,
        "gpt-4o: error rate 30.0% (30 of 100 requests failed over 5m; threshold 5.0%)"
    );
    assert_eq!(labels(&inc), ["opened"]);
    assert_eq!(w.store.get(&inc.id).await.unwrap().unwrap(), inc);

    // It gets worse: 930 of 1000 fail, from more keys. Sev1.
    w.requests(secs(20), 0, 900, &["k10", "k11"]);
    w.evaluate(secs(30)).await;
    let inc = w.only().await;
    assert_eq!(inc.severity, Severity::Sev1);
    assert_eq!(inc.affected_keys, 12);
    assert_eq!(labels(&inc), ["opened", "severity_changed"]);
    let TimelineKind::SeverityChanged { from, to, reason } = &inc.timeline[1].kind else {
        panic!("{:?}", inc.timeline[1]);
    };
    assert_eq!((*from, *to), (Severity::Sev2, Severity::Sev1));
    assert!(
        reason.starts_with("raised automatically: error rate 93.0%"),
        "{reason}"
    );
    assert!((inc.peak_error_rate - 0.93).abs() < 1e-9);

    // Nothing new: no new timeline events.
    w.evaluate(secs(40)).await;
    assert_eq!(labels(&w.only().await).len(), 2);

    // The failures leave the 5-minute window: recovery starts.
    w.evaluate(secs(330)).await;
    let inc = w.only().await;
    assert_eq!(inc.recovering_since, Some(start() + secs(330)));
    assert!(inc.symptoms.is_empty());
    // A relapse interrupts it.
    w.requests(secs(400), 50, 50, &["k1"]);
    w.evaluate(secs(410)).await;
    let inc = w.only().await;
    assert_eq!(inc.recovering_since, None);
    // Severity stays at its peak.
    assert_eq!(inc.severity, Severity::Sev1);
    w.evaluate(secs(720)).await;
    // Not long enough yet: 4m59s of recovery.
    w.evaluate(secs(1019)).await;
    assert_eq!(w.incidents.active().await.len(), 1);
    w.evaluate(secs(1020)).await;
    assert!(w.incidents.active().await.is_empty());

    let inc = w.store.get("INC-20250301-0001").await.unwrap().unwrap();
    assert_eq!(inc.status, IncidentStatus::Resolved);
    assert_eq!(inc.resolution, Some(Resolution::Auto));
    assert_eq!(inc.resolved_at, Some(start() + secs(1020)));
    assert_eq!(inc.time_to_resolve(), Some(secs(1010)));
    assert_eq!(inc.time_to_acknowledge(), None);
    assert_eq!(
        labels(&inc),
        [
            "opened",
            "severity_changed",
            "recovery_started",
            "recovery_interrupted",
            "recovery_started",
            "resolved"
        ]
    );
    let seqs: Vec<u32> = inc.timeline.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    // Every timeline event was also emitted, in order.
    assert_eq!(
        w.notices.labels(),
        [
            "incident.opened/opened",
            "incident.updated/severity_changed",
            "incident.updated/recovery_started",
            "incident.updated/recovery_interrupted",
            "incident.updated/recovery_started",
            "incident.resolved/resolved"
        ]
    );

    // A new breach after resolution is a new incident.
    w.requests(secs(1100), 10, 90, &["k1"]);
    w.evaluate(secs(1110)).await;
    assert_eq!(w.only().await.id, "INC-20250301-0002");
}

#[tokio::test]
async fn all_targets_open_is_sev1_and_breaker_changes_join_the_timeline() {
    let w = World::new();
    w.open_target(&w.targets[0], secs(1));
    // One of two targets open is not a breach (availability 50%).
    w.evaluate(secs(2)).await;
    assert!(w.incidents.active().await.is_empty());

    w.open_target(&w.targets[1], secs(3));
    w.evaluate(secs(4)).await;
    let inc = w.only().await;
    assert_eq!(inc.severity, Severity::Sev1);
    assert_eq!(inc.symptoms.len(), 1);
    assert_eq!(inc.symptoms[0].kind(), SymptomKind::AllTargetsOpen);
    assert_eq!(
        inc.title,
        "gpt-4o: all 2 targets unavailable (circuit open): openai/gpt-4o, azure/gpt-4o"
    );
    // The second opening was queued by the breaker listener and lands in
    // the timeline after the opening event. The first opening happened
    // before any incident, so it is not in a timeline (it is in the audit
    // log through the breaker listener).
    assert_eq!(labels(&inc), ["opened", "breaker_changed"]);
    let TimelineKind::BreakerChanged {
        target,
        from,
        to,
        reason,
    } = &inc.timeline[1].kind
    else {
        panic!()
    };
    assert_eq!(target, "azure/gpt-4o");
    assert_eq!(
        (from.as_str(), to.as_str(), reason.as_str()),
        ("closed", "open", "consecutive_failures")
    );
    assert_eq!(inc.timeline[1].at, start() + secs(3));

    // After the cool-down one target takes a trial and recovers.
    let now = w.at(secs(40));
    w.health
        .allow(&w.targets[0], now)
        .unwrap()
        .record(common::OK, ms(5), now);
    w.evaluate(secs(41)).await;
    let inc = w.only().await;
    assert_eq!(inc.recovering_since, Some(start() + secs(41)));
    assert_eq!(
        labels(&inc),
        [
            "opened",
            "breaker_changed",
            "breaker_changed",
            "breaker_changed",
            "recovery_started"
        ]
    );
    w.evaluate(secs(341)).await;
    assert!(w.incidents.active().await.is_empty());
}

#[tokio::test]
async fn operators_acknowledge_assign_annotate_and_resolve() {
    let w = World::new();
    w.requests(secs(0), 90, 10, &["k1"]);
    w.evaluate(secs(0)).await;
    let id = w.only().await.id;
    assert_eq!(w.only().await.severity, Severity::Sev3);

    let inc = w.incidents.acknowledge(&id, "alice").await.unwrap();
    assert_eq!(inc.status, IncidentStatus::Acknowledged);
    assert_eq!(inc.acknowledged_by.as_deref(), Some("alice"));
    assert_eq!(inc.acknowledged_at, Some(start()));
    w.at(secs(120));
    assert_eq!(
        w.incidents.acknowledge(&id, "bob").await.unwrap_err(),
        IncidentError::AlreadyAcknowledged {
            id: id.clone(),
            by: "alice".into()
        }
    );
    w.incidents.assign(&id, "alice", "bob").await.unwrap();
    w.incidents
        .annotate(&id, "bob", "azure quota exhausted; raised a support case")
        .await
        .unwrap();
    let inc = w
        .incidents
        .set_severity(
            &id,
            "bob",
            Severity::Sev2,
            "the largest customer is affected",
        )
        .await
        .unwrap();
    assert!(inc.severity_pinned);
    // The symptoms (sev3) do not lower an operator's severity.
    w.evaluate(secs(130)).await;
    assert_eq!(w.only().await.severity, Severity::Sev2);

    // Bad operator input is refused, naming the field.
    let err = w.incidents.annotate(&id, "bob", "  ").await.unwrap_err();
    assert_eq!(err.to_string(), "note: must not be empty");
    let err = w
        .incidents
        .annotate(&id, "bob\u{1b}[31m", "x")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "actor: must not contain control characters"
    );
    assert!(matches!(
        w.incidents
            .acknowledge("INC-20990101-0001", "bob")
            .await
            .unwrap_err(),
        IncidentError::NotFound(_)
    ));

    w.at(secs(600));
    let inc = w
        .incidents
        .resolve(&id, "bob", Some("traffic moved to openai"))
        .await
        .unwrap();
    assert_eq!(inc.resolution, Some(Resolution::Manual));
    assert_eq!(inc.resolved_by.as_deref(), Some("bob"));
    assert_eq!(inc.time_to_acknowledge(), Some(secs(0)));
    assert_eq!(inc.time_to_resolve(), Some(secs(600)));
    assert!(w.incidents.active().await.is_empty());
    assert_eq!(
        w.incidents.resolve(&id, "bob", None).await.unwrap_err(),
        IncidentError::Resolved(id.clone())
    );
    assert_eq!(
        labels(&inc),
        [
            "opened",
            "acknowledged",
            "assigned",
            "note",
            "severity_changed",
            "resolved"
        ]
    );
    let actors: Vec<Option<&str>> = inc.timeline.iter().map(|e| e.actor.as_deref()).collect();
    assert_eq!(
        actors,
        [
            None,
            Some("alice"),
            Some("alice"),
            Some("bob"),
            Some("bob"),
            Some("bob")
        ]
    );
    let last = w.notices.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.kind.as_str(), "incident.resolved");
    assert_eq!(last.incident.time_to_resolve, Some(secs(600)));
}

fn postmortem() -> Postmortem {
    Postmortem {
        summary: "gpt-4o failed for 10% of requests for 10 minutes".into(),
        impact: "1 key, 412 failed requests".into(),
        root_cause: "the azure deployment hit its token quota".into(),
        trigger: "a batch job started at 12:00".into(),
        detection: "custos error-rate incident after 10 s".into(),
        resolution: "raised the quota; moved the batch key to a lower priority".into(),
        lessons: String::new(),
        action_items: vec![ActionItem {
            description: "alert on quota use at 80%".into(),
            owner: "bob".into(),
            status: ActionStatus::Open,
            due: Some("2025-03-15".into()),
            ticket: Some("OPS-123".into()),
        }],
        author: "ignored".into(),
        written_at: UNIX_EPOCH,
    }
}

#[tokio::test]
async fn postmortems_are_validated_and_attached_to_resolved_incidents() {
    let w = World::new();
    w.requests(secs(0), 90, 10, &["k1"]);
    w.evaluate(secs(0)).await;
    let id = w.only().await.id;
    w.incidents.resolve(&id, "alice", None).await.unwrap();

    let mut bad = postmortem();
    bad.root_cause = String::new();
    bad.action_items[0].due = Some("next week".into());
    let err = w
        .incidents
        .attach_postmortem(&id, "alice", bad)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "postmortem.root_cause: must not be empty");
    let mut bad = postmortem();
    bad.action_items[0].due = Some("next week".into());
    let err = w
        .incidents
        .attach_postmortem(&id, "alice", bad)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "postmortem.action_items[0].due: must be a date like 2025-03-31"
    );

    w.at(secs(3600));
    let inc = w
        .incidents
        .attach_postmortem(&id, "alice", postmortem())
        .await
        .unwrap();
    let pm = inc.postmortem.as_ref().unwrap();
    assert_eq!(pm.author, "alice");
    assert_eq!(pm.written_at, start() + secs(3600));
    assert_eq!(labels(&inc).last(), Some(&"postmortem_attached"));
    // Stored, and round-trips through JSON as a SQL store would keep it.
    let stored = w.store.get(&id).await.unwrap().unwrap();
    let json = serde_json::to_string(&stored).unwrap();
    let back: Incident = serde_json::from_str(&json).unwrap();
    assert_eq!(back, stored);
    // Unknown postmortem fields are refused when parsing operator input.
    let mut input = serde_json::to_value(postmortem()).unwrap();
    assert!(serde_json::from_value::<Postmortem>(input.clone()).is_ok());
    input["oops"] = serde_json::json!(1);
    let err = serde_json::from_value::<Postmortem>(input).unwrap_err();
    assert!(err.to_string().contains("unknown field `oops`"), "{err}");
}

#[tokio::test]
async fn time_to_acknowledge_and_resolve_over_a_period() {
    let w = World::new();
    // Incident 1: acknowledged after 2 min, resolved after 10 min.
    w.requests(secs(0), 90, 10, &["k1"]);
    w.evaluate(secs(0)).await;
    let first = w.only().await.id;
    w.at(secs(120));
    w.incidents.acknowledge(&first, "alice").await.unwrap();
    w.at(secs(600));
    w.incidents.resolve(&first, "alice", None).await.unwrap();
    // Incident 2: acknowledged after 6 min, resolved after 30 min.
    w.requests(secs(1000), 0, 100, &["k2"]);
    w.evaluate(secs(1000)).await;
    let second = w.only().await.id;
    assert_eq!(second, "INC-20250301-0002");
    w.at(secs(1360));
    w.incidents.acknowledge(&second, "bob").await.unwrap();
    w.at(secs(2800));
    w.incidents.resolve(&second, "bob", None).await.unwrap();
    // Incident 3: still open, never acknowledged.
    w.requests(secs(3000), 0, 100, &["k2"]);
    w.evaluate(secs(3000)).await;

    let stats = w.incidents.stats(&IncidentQuery::default()).await.unwrap();
    assert_eq!(stats.count, 3);
    assert_eq!(stats.active, 1);
    assert_eq!(stats.resolved_manual, 2);
    assert_eq!(stats.unacknowledged, 1);
    assert_eq!(stats.by_severity[&Severity::Sev1], 2);
    assert_eq!(stats.by_severity[&Severity::Sev3], 1);
    let tta = stats.time_to_acknowledge.unwrap();
    assert_eq!(
        (tta.count, tta.mean, tta.p50, tta.max),
        (2, secs(240), secs(120), secs(360))
    );
    let ttr = stats.time_to_resolve.unwrap();
    assert_eq!(
        (ttr.count, ttr.mean, ttr.p50, ttr.max),
        (2, secs(1200), secs(600), secs(1800))
    );
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["time_to_resolve"]["max_ms"], 1_800_000);
    assert_eq!(json["by_severity"]["sev1"], 2);

    // A period filter: only the second day-hour.
    let later = IncidentQuery {
        since: Some(start() + secs(900)),
        ..IncidentQuery::default()
    };
    assert_eq!(
        IncidentStats::compute(&w.incidents.list(&later).await.unwrap()).count,
        2
    );
}

#[tokio::test]
async fn a_failing_store_changes_nothing_and_opening_is_retried() {
    let store = Arc::new(MemoryIncidentStore::new());
    let w = World::with_store(store.clone());
    store.set_failing(true);
    w.requests(secs(0), 0, 100, &["k1"]);
    let err = w
        .incidents
        .evaluate(&w.health.model_health(w.at(secs(1))))
        .await
        .unwrap_err();
    assert!(matches!(err, IncidentError::Store(_)), "{err}");
    assert!(w.incidents.active().await.is_empty());
    assert!(w.notices.labels().is_empty());

    store.set_failing(false);
    w.evaluate(secs(2)).await;
    let id = w.only().await.id;
    store.set_failing(true);
    let err = w.incidents.acknowledge(&id, "alice").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "incident store unavailable: the store is failing on purpose"
    );
    assert_eq!(w.only().await.status, IncidentStatus::Open);

    // Changes made by evaluation while the store is down are kept in memory
    // and saved once it is back.
    w.requests(secs(3), 0, 1000, &["k2"]);
    assert!(
        w.incidents
            .evaluate(&w.health.model_health(w.at(secs(4))))
            .await
            .is_err()
    );
    assert_eq!(w.only().await.affected_keys, 2);
    store.set_failing(false);
    w.evaluate(secs(5)).await;
    assert_eq!(store.get(&id).await.unwrap().unwrap().affected_keys, 2);
}

#[tokio::test]
async fn ids_continue_after_a_restart_and_active_incidents_are_restored() {
    let store = Arc::new(MemoryIncidentStore::new());
    {
        let w = World::with_store(store.clone());
        w.requests(secs(0), 0, 100, &["k1"]);
        w.evaluate(secs(0)).await;
        let id = w.only().await.id;
        w.incidents.resolve(&id, "alice", None).await.unwrap();
        w.requests(secs(10), 0, 100, &["k1"]);
        w.evaluate(secs(10)).await;
        assert_eq!(w.only().await.id, "INC-20250301-0002");
    }
    let w = World::with_store(store.clone());
    assert_eq!(w.incidents.restore().await.unwrap(), 1);
    let restored = w.only().await;
    assert_eq!(restored.id, "INC-20250301-0002");
    // The restored incident goes on: the breach persists (new process, new
    // figures), so it is updated, not duplicated.
    w.requests(secs(20), 0, 100, &["k9"]);
    w.evaluate(secs(20)).await;
    assert_eq!(w.only().await.id, "INC-20250301-0002");
    // A different model's incident takes the next number of the day.
    w.health.register_model("other", &[]);
    let now = w.at(secs(30));
    for _ in 0..100 {
        w.health.record_request(
            &RequestSample {
                model: "other",
                status: RequestStatus::Failure,
                latency: ms(1),
                prompt_tokens: 0,
                completion_tokens: 0,
                key_id: None,
            },
            now,
        );
    }
    w.evaluate(secs(30)).await;
    let ids: Vec<String> = w
        .incidents
        .active()
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["INC-20250301-0002", "INC-20250301-0003"]);
}

#[tokio::test]
async fn latency_objectives_open_sev4_and_sev3() {
    let store = Arc::new(MemoryIncidentStore::new());
    let clock = clock();
    let notices = Arc::new(Notices::default());
    let incidents = IncidentEngine::new(
        IncidentSettings {
            thresholds: custos_health::Thresholds {
                latency_p95: Some(secs(10)),
                ..custos_health::Thresholds::default()
            },
            ..IncidentSettings::default()
        },
        store,
        clock.clone(),
        notices,
    );
    let health = HealthEngine::new(
        HealthSettings::default(),
        clock.clone(),
        incidents.breaker_listener(),
    );
    health.register_model("slow", &[]);
    let t0 = Instant::now();
    let record = |latency: Duration, n: usize| {
        for _ in 0..n {
            health.record_request(
                &RequestSample {
                    model: "slow",
                    status: RequestStatus::Success,
                    latency,
                    prompt_tokens: 1,
                    completion_tokens: 1,
                    key_id: None,
                },
                t0,
            );
        }
    };
    record(secs(15), 100);
    incidents.evaluate(&health.model_health(t0)).await.unwrap();
    let inc = incidents.active().await.remove(0);
    assert_eq!(inc.severity, Severity::Sev4);
    assert_eq!(inc.symptoms[0].kind(), SymptomKind::Latency);
    record(secs(60), 1000);
    incidents.evaluate(&health.model_health(t0)).await.unwrap();
    let inc = incidents.active().await.remove(0);
    assert_eq!(inc.severity, Severity::Sev3);
    assert!(inc.peak_p95_ms.unwrap() >= 40_000.0);
}

#[tokio::test]
async fn declared_incidents_are_resolved_only_by_hand() {
    let w = World::new();
    w.at(secs(0));
    let inc = w
        .incidents
        .declare(
            "gpt-4o",
            "alice",
            Severity::Sev3,
            "answers truncated after 512 tokens",
        )
        .await
        .unwrap();
    assert_eq!(inc.id, "INC-20250301-0001");
    assert_eq!(inc.title, "gpt-4o: answers truncated after 512 tokens");
    assert_eq!(inc.declared_by.as_deref(), Some("alice"));
    assert_eq!(inc.time_to_acknowledge(), Some(secs(0)));
    assert_eq!(inc.timeline[0].actor.as_deref(), Some("alice"));
    let err = w
        .incidents
        .declare("gpt-4o", "bob", Severity::Sev2, "again")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "model `gpt-4o` already has the active incident `INC-20250301-0001`"
    );

    // Custos sees nothing wrong for a long time: the incident stays.
    w.evaluate(secs(10)).await;
    w.evaluate(secs(900)).await;
    let inc = w.only().await;
    assert_eq!(labels(&inc), ["opened"]);
    // A detected breach still joins it and raises its severity.
    w.requests(secs(910), 0, 100, &["k1"]);
    w.evaluate(secs(920)).await;
    let inc = w.only().await;
    assert_eq!(inc.severity, Severity::Sev1);
    assert_eq!(
        labels(&inc),
        ["opened", "symptom_detected", "severity_changed"]
    );
    w.incidents.resolve(&inc.id, "alice", None).await.unwrap();
    assert!(w.incidents.active().await.is_empty());
}

/// The runbook's postmortem template is what the postmortem action accepts,
/// and its field table names exactly the fields of [`Postmortem`].
#[tokio::test]
async fn the_runbook_postmortem_template_is_accepted() {
    let doc = include_str!("../../../docs/incident-response.md");
    let section = &doc[doc.find("## 8. Postmortem").unwrap()..];
    let json_start = section.find("```json\n").unwrap() + "```json\n".len();
    let json_len = section[json_start..].find("```").unwrap();
    let template: Postmortem =
        serde_json::from_str(&section[json_start..json_start + json_len]).unwrap();

    let documented: std::collections::BTreeSet<&str> = section
        .lines()
        .take_while(|l| !l.starts_with("Template:"))
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    let value = serde_json::to_value(&template).unwrap();
    let fields: std::collections::BTreeSet<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| !["author", "written_at"].contains(k))
        .collect();
    assert_eq!(documented, fields);

    let w = World::new();
    w.requests(secs(0), 0, 100, &["k1"]);
    w.evaluate(secs(0)).await;
    let id = w.only().await.id;
    w.incidents.resolve(&id, "alice", None).await.unwrap();
    let inc = w
        .incidents
        .attach_postmortem(&id, "alice", template)
        .await
        .unwrap();
    assert_eq!(inc.postmortem.unwrap().action_items.len(), 2);
}
