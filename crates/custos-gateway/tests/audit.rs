//! The audit hook: fail closed before serving, and no response before its
//! record is durable.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestGateway, chat, config_for, error_of};
use custos_gateway::auth::BoxFuture;
use custos_gateway::{AuditSink, AuditUnavailable, RequestOutcome};
use custos_testkit::{MockUpstream, Reply};
use tokio::sync::watch;

/// A sink whose durability the test controls.
struct GatedSink {
    ready: AtomicBool,
    fail_writes: AtomicBool,
    records: Mutex<Vec<custos_record::Inference>>,
    release: watch::Sender<bool>,
}

impl GatedSink {
    fn new(open: bool) -> Arc<Self> {
        Arc::new(GatedSink {
            ready: AtomicBool::new(true),
            fail_writes: AtomicBool::new(false),
            records: Mutex::new(Vec::new()),
            release: watch::channel(open).0,
        })
    }
}

impl AuditSink for GatedSink {
    fn ready(&self) -> Result<(), AuditUnavailable> {
        if self.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(AuditUnavailable("disk full".into()))
        }
    }

    fn submit(&self, outcome: &RequestOutcome) -> BoxFuture<'static, Result<(), AuditUnavailable>> {
        let record = custos_gateway::audit::to_record(outcome);
        self.records.lock().unwrap().push(record);
        let fail = self.fail_writes.load(Ordering::SeqCst);
        let mut rx = self.release.subscribe();
        Box::pin(async move {
            if fail {
                return Err(AuditUnavailable("fsync failed".into()));
            }
            rx.wait_for(|open| *open)
                .await
                .map_err(|_| AuditUnavailable("gone".into()))?;
            Ok(())
        })
    }
}

async fn setup(sink: Arc<GatedSink>, reply: Reply) -> (MockUpstream, TestGateway) {
    let up = MockUpstream::start(reply).await;
    let gw = TestGateway::start_with(
        &config_for(
            &[up.base_url()],
            r#"connect = "1s", first_byte = "2s", idle = "2s", total = "5s""#,
        ),
        None,
        Some(sink),
    )
    .await;
    (up, gw)
}

#[tokio::test]
async fn nothing_is_served_while_the_ledger_cannot_record() {
    let sink = GatedSink::new(true);
    sink.ready.store(false, Ordering::SeqCst);
    let (up, gw) = setup(sink.clone(), Reply::chat("x")).await;
    let resp = gw.post("/v1/chat/completions", &chat(false)).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    let err = error_of(resp, 503).await;
    assert_eq!(err["code"], "audit_unavailable");
    assert!(
        up.received().is_empty(),
        "no upstream call for an unrecordable request"
    );
    // Recovery: the next request is served.
    sink.ready.store(true, Ordering::SeqCst);
    assert_eq!(
        gw.post("/v1/chat/completions", &chat(false)).await.status(),
        200
    );
}

#[tokio::test]
async fn the_response_waits_until_its_record_is_durable() {
    let sink = GatedSink::new(false);
    let (_up, gw) = setup(sink.clone(), Reply::chat("x")).await;
    let gw = Arc::new(gw);
    let pending = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.post("/v1/chat/completions", &chat(false)).await.status() })
    };
    // The record is submitted, but the response must not complete yet.
    gw.outcomes.wait(1).await;
    assert_eq!(sink.records.lock().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !pending.is_finished(),
        "response completed before its record was durable"
    );
    sink.release.send(true).unwrap();
    assert_eq!(pending.await.unwrap(), 200);
}

#[tokio::test]
async fn a_lost_record_turns_the_response_into_503() {
    let sink = GatedSink::new(true);
    sink.fail_writes.store(true, Ordering::SeqCst);
    let (_up, gw) = setup(sink.clone(), Reply::chat("x")).await;
    let err = error_of(gw.post("/v1/chat/completions", &chat(false)).await, 503).await;
    assert_eq!(err["code"], "audit_unavailable");
}

#[tokio::test]
async fn a_stream_whose_record_is_lost_ends_with_an_error_event_not_done() {
    let sink = GatedSink::new(true);
    sink.fail_writes.store(true, Ordering::SeqCst);
    let (_up, gw) = setup(sink.clone(), Reply::stream(&["a", "b"])).await;
    let text = gw
        .post("/v1/chat/completions", &chat(true))
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(text.trim_end().ends_with(r#""code":"audit_unavailable","message":"the audit ledger could not record this request","param":null,"type":"upstream_error"}}"#), "{text}");
}

#[tokio::test]
async fn every_request_is_recorded_once_with_its_details() {
    let sink = GatedSink::new(true);
    let (_up, gw) = setup(sink.clone(), Reply::chat("x")).await;
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", "audit-me-1")
        .header("user-agent", "billing-svc/1.2")
        .body(chat(false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    gw.post(
        "/v1/chat/completions",
        &serde_json::json!({"model": "nope", "messages": []}),
    )
    .await;
    gw.client.get(gw.url("/v1/unknown")).send().await.unwrap();
    gw.outcomes.wait(3).await;
    let records = sink.records.lock().unwrap().clone();
    assert_eq!(records.len(), 3);
    let r = &records[0];
    assert_eq!(r.request_id, "audit-me-1");
    assert_eq!(r.status, 200);
    assert_eq!(r.model_requested.as_deref(), Some("m"));
    assert_eq!(r.model_served.as_deref(), Some("up0"));
    assert_eq!(r.provider.as_deref(), Some("p0"));
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.usage.unwrap().total_tokens, 18);
    let client = r.client.as_ref().unwrap();
    assert_eq!(client.user_agent.as_deref(), Some("billing-svc/1.2"));
    assert_eq!(client.ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(records[1].status, 404);
    assert_eq!(records[1].error_code.as_deref(), Some("model_not_found"));
    assert_eq!(records[2].error_code.as_deref(), Some("unknown_url"));
    // Each converts to a valid canonical record.
    for (seq, body) in records.into_iter().enumerate() {
        let record = custos_record::Record {
            seq: seq as u64,
            ts: custos_record::Timestamp::from_unix_micros(1_800_000_000_000_000).unwrap(),
            body: custos_record::RecordBody::Inference(body),
        };
        let bytes = custos_record::encode(&record);
        assert_eq!(custos_record::decode(&bytes).unwrap(), record);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("Hello world"),
            "prompt content leaked: {text}"
        );
    }
}

/// An upstream that sends a whole stream in one write: the events before
/// `[DONE]` must reach the client at once; only `[DONE]` waits for the
/// record.
#[tokio::test]
async fn a_stream_sent_in_one_piece_is_forwarded_before_its_record_is_durable() {
    let sink = GatedSink::new(false);
    let sse = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"first\"}}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
        "data: [DONE]\n\n",
    );
    let reply = Reply::Json {
        status: 200,
        body: sse.to_owned(),
        headers: Vec::new(),
    };
    let (_up, gw) = setup(sink.clone(), reply).await;
    let mut resp = gw.post("/v1/chat/completions", &chat(true)).await;
    assert_eq!(resp.status(), 200);
    // The record cannot become durable yet, and the first token is here.
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("the first event was held back until the record was durable")
        .unwrap()
        .unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.contains("\"content\":\"first\""), "{first}");
    assert!(!first.contains("[DONE]"), "{first}");
    gw.outcomes.wait(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    sink.release.send(true).unwrap();
    let mut rest = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(rest, "data: [DONE]\n\n");
}
