//! The gateway against real mock upstreams on 127.0.0.1: passthrough,
//! streaming, usage, fallback, disconnects and every error status.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use common::{TestGateway, chat, config_for, error_of};
use custos_testkit::{MockUpstream, Reply, StreamEnd, closed_port, resetting_server};
use custos_types::UsageSource;
use futures_util::StreamExt;

const FAST: &str = r#"connect = "1s", first_byte = "2s", idle = "2s", total = "5s""#;

async fn one(reply: Reply) -> (MockUpstream, TestGateway) {
    let up = MockUpstream::start(reply).await;
    let gw = TestGateway::start(&config_for(&[up.base_url()], FAST)).await;
    (up, gw)
}

#[tokio::test]
async fn non_streaming_chat_passes_through_with_model_rewritten() {
    let (up, gw) = one(Reply::chat("hi there")).await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"Hello world"}],"tools":[{"type":"function","function":{"name":"f"}}],"seed":7,"response_format":{"type":"json_object"},"logprobs":true}"#;
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", "client-req-42")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-req-42");
    assert_eq!(resp.headers()["x-custos-model-served"], "up0");
    assert_eq!(resp.headers()["x-custos-provider"], "p0");
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["choices"][0]["message"]["content"], "hi there");

    let received = up.received();
    assert_eq!(received.len(), 1);
    // Byte for byte the client's body, but for the model name.
    assert_eq!(
        std::str::from_utf8(&received[0].body).unwrap(),
        body.replace(r#""model":"m""#, r#""model":"up0""#)
    );
    assert_eq!(received[0].path, "/v1/chat/completions");
    assert_eq!(received[0].header("x-request-id"), Some("client-req-42"));

    let o = &gw.outcomes.wait(1).await[0];
    assert_eq!(o.status, 200);
    assert_eq!(o.request_id.as_str(), "client-req-42");
    assert_eq!(o.model_requested.as_deref(), Some("m"));
    assert_eq!(o.model_served.as_deref(), Some("up0"));
    assert_eq!(o.provider.as_deref(), Some("p0"));
    assert_eq!(o.attempts.len(), 1);
    assert_eq!(o.upstream_request_id.as_deref(), Some("upstream-req-1"));
    let usage = o.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 7));
    assert_eq!(usage.source, UsageSource::Upstream);
}

#[tokio::test]
async fn bad_request_ids_are_replaced_with_uuid_v7() {
    let (_up, gw) = one(Reply::chat("x")).await;
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", "has spaces; and=stuff")
        .body(chat(false).to_string())
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "has spaces; and=stuff");
    assert_eq!(uuid_version(&id), 7, "{id}");
}

fn uuid_version(id: &str) -> u32 {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    assert_eq!(hex.len(), 32, "{id}");
    hex[12..13].parse().unwrap()
}

#[tokio::test]
async fn usage_is_estimated_when_upstream_reports_none() {
    let (_up, gw) = one(Reply::chat_without_usage("Hello world")).await;
    assert_eq!(
        gw.post("/v1/chat/completions", &chat(false)).await.status(),
        200
    );
    let usage = gw.outcomes.wait(1).await[0].usage.unwrap();
    assert_eq!(usage.source, UsageSource::Estimated);
    // "Hello world" is 2 tokens; the prompt is 3 + 3 + 1 + 2.
    assert_eq!(usage.completion_tokens, 2);
    assert_eq!(usage.prompt_tokens, 9);
}

async fn read_stream(resp: reqwest::Response) -> String {
    String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn stream_injects_usage_upstream_and_strips_it_for_the_client() {
    let (up, gw) = one(Reply::stream(&["Hel", "lo"])).await;
    let resp = gw.post("/v1/chat/completions", &chat(true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = read_stream(resp).await;
    assert!(text.contains("\"content\":\"Hel\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("usage"),
        "client did not ask for usage:\n{text}"
    );
    // Upstream was asked for usage on the client's behalf.
    assert_eq!(
        up.received()[0].json()["stream_options"]["include_usage"],
        true
    );
    let o = &gw.outcomes.wait(1).await[0];
    assert!(o.stream);
    assert_eq!(o.status, 200);
    assert_eq!(o.error_code, None);
    let usage = o.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.total_tokens), (11, 18));
    assert_eq!(usage.source, UsageSource::Upstream);
}

#[tokio::test]
async fn stream_keeps_usage_when_the_client_asked() {
    let (_up, gw) = one(Reply::stream(&["a", "b"])).await;
    let mut body = chat(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let text = read_stream(gw.post("/v1/chat/completions", &body).await).await;
    assert!(text.contains("\"choices\":[],"), "{text}");
    assert!(text.contains("\"total_tokens\":18"), "{text}");
    assert!(text.contains("\"usage\":null"), "{text}");
}

#[tokio::test]
async fn stream_is_relayed_chunk_by_chunk() {
    // The upstream sends its pieces and then stalls without ending. The
    // client must still receive every piece: nothing is buffered.
    let (up, gw) = one(Reply::ChatStream {
        pieces: vec!["one".into(), "two".into(), "three".into()],
        delay: Duration::from_millis(1),
        usage: true,
        end: StreamEnd::Hang,
    })
    .await;
    let resp = gw.post("/v1/chat/completions", &chat(true)).await;
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"finish_reason\":\"stop\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a chunk was held back")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.contains("three"));
    // Hanging up cancels the upstream request and records a disconnect.
    drop(stream);
    up.wait_disconnects(1).await;
    let o = &gw.outcomes.wait(1).await[0];
    assert_eq!(o.status, 499);
    assert_eq!(o.error_code.as_deref(), Some("client_disconnected"));
}

#[tokio::test]
async fn client_disconnect_cancels_a_non_streaming_upstream_request() {
    let (up, gw) = one(Reply::Hang).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat(false).to_string())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    up.wait_disconnects(1).await;
    let o = &gw.outcomes.wait(1).await[0];
    assert_eq!(o.status, 499);
}

#[tokio::test]
async fn mid_stream_failure_ends_with_an_error_event() {
    let (_up, gw) = one(Reply::ChatStream {
        pieces: vec!["partial".into()],
        delay: Duration::from_millis(1),
        usage: false,
        end: StreamEnd::Abort,
    })
    .await;
    let text = read_stream(gw.post("/v1/chat/completions", &chat(true)).await).await;
    assert!(text.contains("partial"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        json["error"]["code"], "upstream_stream_interrupted",
        "{text}"
    );
    let o = &gw.outcomes.wait(1).await[0];
    assert_eq!(o.error_code.as_deref(), Some("upstream_stream_interrupted"));
    // Usage is estimated from what was generated.
    assert_eq!(o.usage.unwrap().source, UsageSource::Estimated);
}

#[tokio::test]
async fn stream_ending_without_done_is_not_a_silent_truncation() {
    let (_up, gw) = one(Reply::ChatStream {
        pieces: vec!["a".into()],
        delay: Duration::from_millis(1),
        usage: false,
        end: StreamEnd::Close,
    })
    .await;
    let text = read_stream(gw.post("/v1/chat/completions", &chat(true)).await).await;
    assert!(text.contains("upstream_stream_truncated"), "{text}");
}

#[tokio::test]
async fn stream_idle_timeout_ends_with_an_error_event() {
    let up = MockUpstream::start(Reply::ChatStream {
        pieces: vec!["a".into()],
        delay: Duration::from_millis(1),
        usage: false,
        end: StreamEnd::Hang,
    })
    .await;
    let timeouts = r#"connect = "1s", first_byte = "2s", idle = "200ms", total = "5s""#;
    let gw = TestGateway::start(&config_for(&[up.base_url()], timeouts)).await;
    let text = read_stream(gw.post("/v1/chat/completions", &chat(true)).await).await;
    assert!(text.contains("upstream_stream_timeout"), "{text}");
}

async fn fallback_case(first: MockUpstream) {
    let second = MockUpstream::start(Reply::chat("from second")).await;
    let gw = TestGateway::start(&config_for(
        &[first.base_url(), second.base_url()],
        r#"connect = "500ms", first_byte = "300ms", idle = "2s", total = "5s""#,
    ))
    .await;
    let resp = gw.post("/v1/chat/completions", &chat(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-custos-model-served"], "up1");
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["choices"][0]["message"]["content"], "from second");
    let o = &gw.outcomes.wait(1).await[0];
    assert_eq!(o.attempts.len(), 2);
    assert!(o.attempts[0].error.is_some());
    assert_eq!(o.attempts[1].error, None);
    assert_eq!(o.provider.as_deref(), Some("p1"));
    assert_eq!(o.model_served.as_deref(), Some("up1"));
}

#[tokio::test]
async fn falls_back_on_5xx() {
    fallback_case(MockUpstream::start(Reply::error(503, "overloaded")).await).await;
}

#[tokio::test]
async fn falls_back_on_429() {
    fallback_case(MockUpstream::start(Reply::error(429, "slow down")).await).await;
}

#[tokio::test]
async fn falls_back_on_timeout() {
    fallback_case(MockUpstream::start(Reply::Hang).await).await;
}

#[tokio::test]
async fn falls_back_on_connect_failure() {
    let dead = closed_port().await;
    let second = MockUpstream::start(Reply::chat("from second")).await;
    let gw = TestGateway::start(&config_for(
        &[format!("http://{dead}/v1"), second.base_url()],
        FAST,
    ))
    .await;
    let resp = gw.post("/v1/chat/completions", &chat(false)).await;
    assert_eq!(resp.status(), 200);
    let o = &gw.outcomes.wait(1).await[0];
    assert_eq!(o.attempts[0].error, Some("connect"));
}

#[tokio::test]
async fn falls_back_on_a_connection_closed_without_answer() {
    let (addr, _task) = resetting_server().await;
    let second = MockUpstream::start(Reply::chat("from second")).await;
    let gw = TestGateway::start(&config_for(
        &[format!("http://{addr}/v1"), second.base_url()],
        FAST,
    ))
    .await;
    assert_eq!(
        gw.post("/v1/chat/completions", &chat(false)).await.status(),
        200
    );
    assert_eq!(gw.outcomes.wait(1).await[0].attempts.len(), 2);
}

#[tokio::test]
async fn stream_falls_back_when_first_target_dies_before_its_first_byte() {
    let first = MockUpstream::start(Reply::ChatStream {
        pieces: vec![],
        delay: Duration::from_secs(10),
        usage: false,
        end: StreamEnd::Done,
    })
    .await;
    let second = MockUpstream::start(Reply::stream(&["ok"])).await;
    let gw = TestGateway::start(&config_for(
        &[first.base_url(), second.base_url()],
        r#"connect = "1s", first_byte = "300ms", idle = "2s", total = "5s""#,
    ))
    .await;
    let text = read_stream(gw.post("/v1/chat/completions", &chat(true)).await).await;
    assert!(text.contains("\"content\":\"ok\""), "{text}");
    assert_eq!(gw.outcomes.wait(1).await[0].attempts.len(), 2);
}

#[tokio::test]
async fn no_fallback_once_bytes_were_sent() {
    let first = MockUpstream::start(Reply::ChatStream {
        pieces: vec!["started".into()],
        delay: Duration::from_millis(1),
        usage: false,
        end: StreamEnd::Abort,
    })
    .await;
    let second = MockUpstream::start(Reply::stream(&["second"])).await;
    let gw = TestGateway::start(&config_for(&[first.base_url(), second.base_url()], FAST)).await;
    let text = read_stream(gw.post("/v1/chat/completions", &chat(true)).await).await;
    assert!(text.contains("started"));
    assert!(!text.contains("second"));
    assert!(text.contains("upstream_stream_interrupted"));
    assert!(
        second.received().is_empty(),
        "second target must not be tried"
    );
    assert_eq!(gw.outcomes.wait(1).await[0].attempts.len(), 1);
}

#[tokio::test]
async fn last_upstream_error_passes_through_when_all_fail() {
    let first = MockUpstream::start(Reply::error(500, "first broke")).await;
    let second = MockUpstream::start(Reply::Json {
        status: 429,
        body: r#"{"error":{"message":"quota","type":"rate_limit","param":null,"code":"rate_limited"}}"#.into(),
        headers: vec![("retry-after".into(), "7".into())],
    })
    .await;
    let gw = TestGateway::start(&config_for(&[first.base_url(), second.base_url()], FAST)).await;
    let resp = gw.post("/v1/chat/completions", &chat(false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert!(resp.headers().contains_key("x-request-id"));
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["error"]["message"], "quota");
    let o = &gw.outcomes.wait(1).await[0];
    assert_eq!(o.status, 429);
    assert_eq!(o.attempts.len(), 2);
}

#[tokio::test]
async fn client_errors_from_upstream_pass_through_without_fallback() {
    let first = MockUpstream::start(Reply::error(400, "bad tool schema")).await;
    let second = MockUpstream::start(Reply::chat("never")).await;
    let gw = TestGateway::start(&config_for(&[first.base_url(), second.base_url()], FAST)).await;
    let resp = gw.post("/v1/chat/completions", &chat(false)).await;
    assert_eq!(resp.status(), 400);
    assert!(second.received().is_empty());
}

#[tokio::test]
async fn all_targets_timing_out_is_504() {
    let up = MockUpstream::start(Reply::Hang).await;
    let gw = TestGateway::start(&config_for(
        &[up.base_url()],
        r#"connect = "1s", first_byte = "200ms", idle = "2s", total = "5s""#,
    ))
    .await;
    let err = error_of(gw.post("/v1/chat/completions", &chat(false)).await, 504).await;
    assert_eq!(err["code"], "upstream_timeout");
    assert_eq!(err["type"], "upstream_error");
}

#[tokio::test]
async fn all_targets_unreachable_is_502() {
    let dead = closed_port().await;
    let gw = TestGateway::start(&config_for(&[format!("http://{dead}/v1")], FAST)).await;
    let err = error_of(gw.post("/v1/chat/completions", &chat(false)).await, 502).await;
    assert_eq!(err["code"], "upstream_error");
    let o = &gw.outcomes.wait(1).await[0];
    assert_eq!(o.status, 502);
    assert_eq!(o.error_code.as_deref(), Some("upstream_error"));
}

#[tokio::test]
async fn embeddings_and_completions_are_proxied() {
    let (up, gw) = one(Reply::json(
        200,
        r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],"model":"up0","usage":{"prompt_tokens":3,"total_tokens":3}}"#,
    ))
    .await;
    let resp = gw
        .post(
            "/v1/embeddings",
            &serde_json::json!({"model": "m", "input": "abc"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.received()[0].path, "/v1/embeddings");
    let resp = gw
        .post(
            "/v1/completions",
            &serde_json::json!({"model": "m", "prompt": "abc"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.received()[1].path, "/v1/completions");
    let outcomes = gw.outcomes.wait(2).await;
    assert_eq!(outcomes[0].endpoint, "embeddings");
    assert_eq!(outcomes[0].usage.unwrap().prompt_tokens, 3);
    assert_eq!(outcomes[1].endpoint, "completions");
}

#[tokio::test]
async fn models_are_listed_and_looked_up() {
    let (_up, gw) = one(Reply::chat("x")).await;
    let resp = gw.client.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["object"], "list");
    assert_eq!(json["data"][0]["id"], "m");
    let resp = gw.client.get(gw.url("/v1/models/m")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let err = error_of(
        gw.client
            .get(gw.url("/v1/models/nope"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(err["code"], "model_not_found");
}

#[tokio::test]
async fn every_error_status_uses_the_openai_shape() {
    let (up, gw) = one(Reply::chat("x")).await;
    let path = "/v1/chat/completions";

    let err = error_of(
        gw.post_raw(path, "application/json", b"{\"model\":".to_vec())
            .await,
        400,
    )
    .await;
    assert_eq!(err["code"], "invalid_json");

    let err = error_of(
        gw.post_raw(path, "application/json", b"[1,2]".to_vec())
            .await,
        400,
    )
    .await;
    assert_eq!(err["code"], "invalid_json");

    let err = error_of(
        gw.post(path, &serde_json::json!({"messages": []})).await,
        400,
    )
    .await;
    assert_eq!(err["code"], "missing_required_parameter");
    assert_eq!(err["param"], "model");

    let err = error_of(
        gw.post(path, &serde_json::json!({"model": 3, "messages": []}))
            .await,
        400,
    )
    .await;
    assert_eq!(err["code"], "invalid_type");

    let err = error_of(
        gw.post(
            path,
            &serde_json::json!({"model": "m", "messages": [], "stream": "yes"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(err["param"], "stream");

    let err = error_of(
        gw.post_raw(
            path,
            "application/json",
            b"{\"model\":\"\xff\",\"messages\":[]}".to_vec(),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(err["code"], "invalid_json");

    let err = error_of(
        gw.post(path, &serde_json::json!({"model": "gpt-9", "messages": []}))
            .await,
        404,
    )
    .await;
    assert_eq!(err["code"], "model_not_found");

    let err = error_of(gw.post_raw(path, "text/plain", b"{}".to_vec()).await, 415).await;
    assert_eq!(err["code"], "unsupported_media_type");

    let resp = gw.client.get(gw.url(path)).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    let err = error_of(resp, 405).await;
    assert_eq!(err["code"], "method_not_allowed");

    let err = error_of(
        gw.client.get(gw.url("/v1/nothing")).send().await.unwrap(),
        404,
    )
    .await;
    assert_eq!(err["code"], "unknown_url");

    // None of these reached the upstream, and each was recorded once.
    assert!(up.received().is_empty());
    assert_eq!(gw.outcomes.wait(10).await.len(), 10);
}

#[tokio::test]
async fn oversized_bodies_are_413_with_and_without_content_length() {
    let up = MockUpstream::start(Reply::chat("x")).await;
    let mut toml = config_for(&[up.base_url()], FAST);
    toml.insert_str(0, "[server]\nmax_body_size = \"64KiB\"\n\n");
    let gw = TestGateway::start(&toml).await;
    let big = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let err = error_of(gw.post("/v1/chat/completions", &big).await, 413).await;
    assert_eq!(err["code"], "request_too_large");

    // Chunked, so the limit is found while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![b' '; 1024])).collect();
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    error_of(resp, 413).await;
    assert!(up.received().is_empty());
}

#[tokio::test]
async fn metrics_count_requests_by_model_and_status() {
    let (_up, gw) = one(Reply::chat("x")).await;
    gw.post("/v1/chat/completions", &chat(false)).await;
    gw.post(
        "/v1/chat/completions",
        &serde_json::json!({"model": "secret-model-name", "messages": []}),
    )
    .await;
    gw.outcomes.wait(2).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &gw.registry).unwrap();
    assert!(text.contains(r#"custos_requests_total{endpoint="chat.completions",model_requested="m",model_served="up0",provider="p0",status_class="2xx"} 1"#), "{text}");
    // Unconfigured model names never become label values.
    assert!(!text.contains("secret-model-name"));
    assert!(text.contains(r#"model_requested="unknown""#));
    assert!(text.contains("custos_in_flight_requests 0"), "{text}");
}
