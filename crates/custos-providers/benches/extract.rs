//! Hot-path costs: request field extraction, body rewrite, usage extraction
//! from a response and from a stream.

#![expect(
    clippy::unwrap_used,
    reason = "benchmarks run on fixed inputs that are known to be valid"
)]
#![allow(missing_docs, reason = "criterion macros generate undocumented items")]

use criterion::{Criterion, criterion_group, criterion_main};
use custos_providers::{Endpoint, body, sse::SseRelay, usage};
use std::hint::black_box;

const REQUEST: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about audit logs and Merkle trees, please."}],"temperature":0.7,"stream":true,"tools":[{"type":"function","function":{"name":"lookup","parameters":{"type":"object","properties":{"q":{"type":"string"}}}}}]}"#;

const RESPONSE: &str = r#"{"id":"chatcmpl-abc","object":"chat.completion","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Leaves hash into roots,\nsigned checkpoints keep the past,\nno row rewrites time.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":38,"completion_tokens":21,"total_tokens":59},"system_fingerprint":"fp_1"}"#;

fn stream_body() -> String {
    let mut s = String::new();
    for i in 0..20 {
        s.push_str(&format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}],\"usage\":null}}\n\n"));
    }
    s.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":38,\"completion_tokens\":20,\"total_tokens\":58}}\n\ndata: [DONE]\n\n");
    s
}

fn benches(c: &mut Criterion) {
    c.bench_function("extract_request_fields", |b| {
        b.iter(|| body::extract(Endpoint::ChatCompletions, black_box(REQUEST.as_bytes())))
    });
    let fields = body::extract(Endpoint::ChatCompletions, REQUEST.as_bytes()).unwrap();
    c.bench_function("rewrite_body", |b| {
        b.iter(|| {
            body::rewrite(
                black_box(REQUEST.as_bytes()),
                &fields,
                "gpt-4o-2024-08-06",
                true,
            )
        })
    });
    c.bench_function("usage_from_response", |b| {
        b.iter(|| usage::from_response(black_box(RESPONSE.as_bytes())))
    });
    let stream = stream_body();
    c.bench_function("sse_relay_22_events", |b| {
        b.iter(|| {
            let mut relay = SseRelay::new(true);
            let out = relay.push(black_box(stream.as_bytes())).unwrap();
            (out.len(), relay.usage())
        })
    });
}

criterion_group!(extract, benches);
criterion_main!(extract);
