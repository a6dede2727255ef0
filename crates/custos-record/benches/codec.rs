//! Criterion benchmarks of the per-record hot paths: canonical encoding
//! (the writer does it for every append) and strict decoding (the
//! verifier does it for every stored record, in place with `decode_view`).
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]
#![allow(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use custos_record::sample::inference_record;
use custos_record::{decode, decode_view, encode_into};

fn bench_codec(c: &mut Criterion) {
    let record = inference_record(0, 123_456);
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
    group.bench_function("decode_view_inference", |b| {
        b.iter(|| decode_view(black_box(&bytes)).unwrap().seq());
    });
    group.bench_function("validate_inference", |b| {
        b.iter(|| black_box(&record.body).validate().unwrap());
    });
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
