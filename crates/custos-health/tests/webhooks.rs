//! The webhook notifier against a real axum receiver on 127.0.0.1:0:
//! generic and Slack payloads, the HMAC signature, retries after a 500,
//! final refusals, timeouts, event filters and the bounded queue.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail loudly when the receiver misbehaves"
)]

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use common::{clock, ms, secs, start};
use custos_health::webhook::signature;
use custos_health::{
    BreakerEvent, BreakerFigures, BreakerListener, BreakerSettings, BreakerState, HealthEngine,
    HealthSettings, IncidentEngine, IncidentListener, IncidentNotice, IncidentSettings,
    IncidentStatus, IncidentSummary, MemoryIncidentStore, NoticeKind, RequestSample, RequestStatus,
    Severity, TargetId, TimelineEvent, TimelineKind, TransitionReason, ValueSource, WebhookEvent,
    WebhookFormat, WebhookNotifier, WebhookSettings, WebhookTarget,
};
use custos_types::SecretString;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One request as the receiver saw it.
#[derive(Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

#[derive(Clone)]
struct Receiver {
    /// Statuses to answer, in order; 200 once empty; 0 means never answer.
    script: Arc<Mutex<VecDeque<u16>>>,
    seen: mpsc::UnboundedSender<Received>,
}

async fn hook(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = r.script.lock().unwrap().pop_front().unwrap_or(200);
    let _ = r.seen.send(Received {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    if status == 0 {
        std::future::pending::<()>().await;
    }
    StatusCode::from_u16(status).unwrap()
}

/// Starts a receiver answering `script`; returns its base URL and what it
/// receives.
async fn receiver(script: &[u16]) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Receiver {
        script: Arc::new(Mutex::new(script.iter().copied().collect())),
        seen: tx,
    };
    let app = Router::new()
        .route("/{*path}", post(hook))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rx)
}

/// The next request, failing the test after 10 s instead of hanging.
async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(secs(10), rx.recv())
        .await
        .expect("the receiver got nothing within 10 s")
        .unwrap()
}

fn settings(name: &str, format: WebhookFormat) -> WebhookSettings {
    WebhookSettings {
        initial_backoff: ms(10),
        max_backoff: ms(40),
        timeout: secs(2),
        max_attempts: 3,
        ..WebhookSettings::new(name, format, ValueSource::Env("UNUSED".into()))
    }
}

fn target(s: WebhookSettings, url: &str, secret: Option<&str>) -> WebhookTarget {
    WebhookTarget::new(s, &SecretString::from(url), secret.map(SecretString::from)).unwrap()
}

fn notifier(targets: Vec<WebhookTarget>) -> Arc<WebhookNotifier> {
    Arc::new(WebhookNotifier::start(
        targets,
        reqwest::Client::new(),
        clock(),
        7,
    ))
}

/// Opens a real sev1 incident with the notifier as the incident listener.
async fn open_incident(notifier: Arc<WebhookNotifier>) {
    let incidents = IncidentEngine::new(
        IncidentSettings::default(),
        Arc::new(MemoryIncidentStore::new()),
        clock(),
        notifier,
    );
    let health = HealthEngine::new(
        HealthSettings {
            breaker: BreakerSettings::default(),
            ..HealthSettings::default()
        },
        clock(),
        incidents.breaker_listener(),
    );
    health.register_model("gpt-4o", &[]);
    let now = Instant::now();
    for i in 0..50 {
        let key = format!("k{}", i % 5);
        health.record_request(
            &RequestSample {
                model: "gpt-4o",
                status: RequestStatus::Failure,
                latency: ms(5),
                prompt_tokens: 0,
                completion_tokens: 0,
                key_id: Some(&key),
            },
            now,
        );
    }
    incidents.evaluate(&health.model_health(now)).await.unwrap();
}

#[tokio::test]
async fn generic_payloads_are_signed_and_retried_after_a_500() {
    let (base, mut rx) = receiver(&[500]).await;
    let s = WebhookSettings {
        link_base: Some("https://custos.example/admin/incidents/".into()),
        ..settings("audit-sink", WebhookFormat::Generic)
    };
    let n = notifier(vec![target(s, &format!("{base}/generic"), Some("s3cret"))]);
    open_incident(n.clone()).await;

    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    n.shutdown(secs(10)).await;

    // The retry is the same delivery, byte for byte.
    assert_eq!(first.body, second.body);
    assert_eq!(
        first.header("x-custos-delivery"),
        Some("INC-20250301-0001.1")
    );
    assert_eq!(
        second.header("x-custos-delivery"),
        Some("INC-20250301-0001.1")
    );
    assert_eq!(second.path, "/generic");
    assert_eq!(second.header("x-custos-event"), Some("incident.opened"));
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert!(second.header("user-agent").unwrap().starts_with("custos/"));
    let sig = second.header("x-custos-signature-256").unwrap();
    assert_eq!(sig, signature(&SecretString::from("s3cret"), &second.body));
    assert_ne!(sig, signature(&SecretString::from("other"), &second.body));

    let v = second.json();
    assert_eq!(v["version"], 1);
    assert_eq!(v["source"], "custos");
    assert_eq!(v["type"], "incident.opened");
    assert_eq!(v["delivery_id"], "INC-20250301-0001.1");
    assert_eq!(v["sent_at"], "2025-03-01T12:00:00.000Z");
    assert_eq!(
        v["link"],
        "https://custos.example/admin/incidents/INC-20250301-0001"
    );
    let inc = &v["incident"];
    assert_eq!(inc["id"], "INC-20250301-0001");
    assert_eq!(inc["model"], "gpt-4o");
    assert_eq!(inc["severity"], "sev1");
    assert_eq!(inc["status"], "open");
    assert_eq!(inc["affected_keys"], 5);
    assert_eq!(inc["started_at"], "2025-03-01T12:00:00.000Z");
    assert_eq!(inc["symptoms"][0]["kind"], "error_rate");
    assert_eq!(inc["symptoms"][0]["failures"], 50);
    assert!(inc["time_to_acknowledge_ms"].is_null());
    assert_eq!(v["event"]["event"], "opened");
    assert_eq!(v["event"]["seq"], 1);
    assert!(v["event"]["actor"].is_null());

    let stats = n.stats();
    assert_eq!(stats[0].name, "audit-sink");
    assert_eq!(
        (stats[0].attempts, stats[0].delivered, stats[0].failed),
        (2, 1, 0)
    );
}

#[tokio::test]
async fn slack_payloads_have_text_and_blocks() {
    let (base, mut rx) = receiver(&[]).await;
    let n = notifier(vec![target(
        settings("ops-slack", WebhookFormat::Slack),
        &format!("{base}/services/T0/B0/token"),
        None,
    )]);
    open_incident(n.clone()).await;
    let got = next(&mut rx).await;
    n.shutdown(secs(10)).await;
    assert!(got.header("x-custos-signature-256").is_none());
    let v = got.json();
    let text = v["text"].as_str().unwrap();
    assert!(text.starts_with(":rotating_light: [SEV1] INC-20250301-0001 opened: gpt-4o — opened as sev1: error rate 100.0%"), "{text}");
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert_eq!(
        blocks[0]["text"]["text"],
        "SEV1 · INC-20250301-0001 opened · gpt-4o"
    );
    let fields: Vec<&str> = blocks[2]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(fields[0], "*Model*\ngpt-4o");
    assert_eq!(fields[1], "*Severity*\nsev1");
    assert_eq!(fields[4], "*Affected keys*\n5");
    assert_eq!(blocks.last().unwrap()["type"], "context");
    assert_eq!(n.stats()[0].delivered, 1);
}

#[tokio::test]
async fn a_client_error_is_final_and_a_hung_receiver_times_out() {
    let (base, mut rx) = receiver(&[400, 0, 0]).await;
    let refused = target(
        settings("refused", WebhookFormat::Generic),
        &format!("{base}/a"),
        None,
    );
    let hung = WebhookSettings {
        timeout: ms(100),
        max_attempts: 2,
        ..settings("hung", WebhookFormat::Generic)
    };
    let hung = target(hung, &format!("{base}/b"), None);
    // One webhook at a time so the script's order is the receiver's.
    let n = notifier(vec![refused]);
    open_incident(n.clone()).await;
    assert_eq!(next(&mut rx).await.path, "/a");
    n.shutdown(secs(10)).await;
    let s = &n.stats()[0];
    assert_eq!((s.attempts, s.delivered, s.failed), (1, 0, 1));

    let n = notifier(vec![hung]);
    open_incident(n.clone()).await;
    assert_eq!(next(&mut rx).await.path, "/b");
    assert_eq!(next(&mut rx).await.path, "/b");
    n.shutdown(secs(10)).await;
    let s = &n.stats()[0];
    assert_eq!((s.attempts, s.delivered, s.failed), (2, 0, 1));
}

fn breaker_event() -> BreakerEvent {
    BreakerEvent {
        target: TargetId::new("openai", "gpt-4o"),
        from: BreakerState::Closed,
        to: BreakerState::Open,
        reason: TransitionReason::ErrorRate {
            error_rate: 0.6,
            threshold: 0.5,
        },
        figures: BreakerFigures {
            requests: 40,
            failures: 24,
            error_rate: 0.6,
            consecutive_failures: 3,
        },
        cool_down: Some(secs(30)),
        opens: 1,
        at: start(),
    }
}

#[tokio::test]
async fn breaker_changes_go_only_to_webhooks_that_ask_for_them() {
    let (base, mut rx) = receiver(&[]).await;
    let quiet = target(
        settings("quiet", WebhookFormat::Generic),
        &format!("{base}/quiet"),
        None,
    );
    let mut loud = settings("loud", WebhookFormat::Generic);
    loud.events = WebhookEvent::ALL.into_iter().collect();
    let loud = target(loud, &format!("{base}/loud"), None);
    let mut slack = settings("slack", WebhookFormat::Slack);
    slack.events = BTreeSet::from([WebhookEvent::BreakerChanged]);
    let slack = target(slack, &format!("{base}/slack"), None);
    let n = notifier(vec![quiet, loud, slack]);
    n.breaker_changed(&breaker_event());
    let mut got = [next(&mut rx).await, next(&mut rx).await];
    n.shutdown(secs(10)).await;
    got.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(got[0].path, "/loud");
    let v = got[0].json();
    assert_eq!(v["type"], "breaker.changed");
    assert_eq!(v["breaker"]["target"]["provider"], "openai");
    assert_eq!(v["breaker"]["reason"], "error_rate");
    assert_eq!(v["breaker"]["cool_down"], 30_000);
    assert_eq!(
        got[0].header("x-custos-delivery"),
        Some("breaker.1740830400000.1")
    );
    assert_eq!(got[1].path, "/slack");
    assert_eq!(
        got[1].json()["text"],
        ":red_circle: Circuit breaker openai/gpt-4o: closed → open (error_rate; 24 failures of 40 attempts, 3 in a row)"
    );
    assert_eq!(n.stats()[0].attempts, 0);
}

fn notice(seq: u32, severity: Severity) -> IncidentNotice {
    IncidentNotice {
        kind: NoticeKind::Updated,
        incident: IncidentSummary {
            id: "INC-20250301-0007".into(),
            model: "m".into(),
            title: "m: <b>bold</b> & co".into(),
            severity,
            status: IncidentStatus::Open,
            started_at: start(),
            acknowledged_at: None,
            acknowledged_by: None,
            assignee: None,
            resolved_at: None,
            resolution: None,
            symptoms: vec![],
            affected_keys: 0,
            time_to_acknowledge: None,
            time_to_resolve: None,
        },
        event: TimelineEvent {
            seq,
            at: start(),
            actor: Some("alice".into()),
            kind: TimelineKind::Note {
                text: format!("note {seq}"),
            },
        },
    }
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_filters_apply() {
    let (base, mut rx) = receiver(&[]).await;
    let mut s = settings("small", WebhookFormat::Slack);
    s.queue_size = 2;
    s.min_severity = Severity::Sev3;
    let n = notifier(vec![target(s, &format!("{base}/x"), None)]);
    // Enqueued back to back: the delivery task cannot run in between on
    // this single-threaded runtime.
    for seq in 1..=5 {
        n.incident_event(&notice(seq, Severity::Sev2));
    }
    n.incident_event(&notice(6, Severity::Sev4));
    let s = &n.stats()[0];
    assert_eq!((s.queued, s.dropped), (2, 3));
    let a = next(&mut rx).await;
    let b = next(&mut rx).await;
    n.shutdown(secs(10)).await;
    assert_eq!(a.header("x-custos-delivery"), Some("INC-20250301-0007.4"));
    assert_eq!(b.header("x-custos-delivery"), Some("INC-20250301-0007.5"));
    // Operator text is escaped for Slack.
    let text = a.json()["blocks"][1]["text"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.contains("m: &lt;b&gt;bold&lt;/b&gt; &amp; co"),
        "{text}"
    );
    assert!(
        a.json()["text"]
            .as_str()
            .unwrap()
            .contains("note by alice: note 4")
    );
    assert_eq!(n.stats()[0].delivered, 2);
    assert!(rx.try_recv().is_err());
}
