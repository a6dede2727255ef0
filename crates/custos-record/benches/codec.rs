//! Criterion benchmarks of the per-record hot paths: canonical encoding
//! (the writer does it for every append) and strict decoding (the
//! verifier does it for every stored record).
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]
#![allow(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use custos_record::{
    Inference, KeyActor, Record, RecordBody, Timestamp, Usage, UsageSource, decode, encode_into,
};

fn record() -> Record {
    Record {
        seq: 123_456,
        ts: Timestamp::from_unix_micros(1_735_689_600_000_042).unwrap(),
        body: RecordBody::Inference(Inference {
            event: "request".into(),
            request_id: "01JGZ8X3R00000000000000000".into(),
            actor: Some(KeyActor {
                key_id: Some("ck_7Q2x".into()),
                key_name: Some("ci-runner".into()),
                owner: Some("alice@example.com".into()),
                team: Some("platform".into()),
            }),
            client: None,
            endpoint: "chat.completions".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            model_requested: Some("gpt-4o".into()),
            model_served: Some("gpt-4o-2024-08-06".into()),
            provider: Some("openai".into()),
            attempts: Vec::new(),
            upstream_request_id: Some("req_abc123".into()),
            status: 200,
            error_code: None,
            usage: Some(Usage {
                completion_tokens: 20,
                prompt_tokens: 100,
                source: UsageSource::Upstream,
                total_tokens: 120,
            }),
            stream: false,
            latency_us: 2_051_000,
            ttfb_us: Some(1_400_000),
        }),
    }
}

fn bench_codec(c: &mut Criterion) {
    let record = record();
    let mut bytes = Vec::new();
    encode_into(&record, &mut bytes);
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_inference", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            encode_into(black_box(&record), &mut buf);
            buf.len()
        });
    });
    group.bench_function("decode_inference", |b| {
        b.iter(|| decode(black_box(&bytes)).unwrap());
    });
    group.bench_function("validate_inference", |b| {
        b.iter(|| black_box(&record.body).validate().unwrap());
    });
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
