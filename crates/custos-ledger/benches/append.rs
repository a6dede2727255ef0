//! Criterion benchmark of the append path: many concurrent callers
//! appending inference records, in batched and in sync durability, through
//! the real writer thread into a real segment file. The target is at least
//! 200k appends per second in batched mode.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]
#![allow(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use custos_ledger::{Durability, Ledger, LedgerOptions};
use custos_record::{Inference, KeyActor, RecordBody, Usage, UsageSource};

const PER_ITER: u64 = 20_000;
const CALLERS: u64 = 1000;

fn body(i: u64) -> RecordBody {
    RecordBody::Inference(Inference {
        event: "request".into(),
        request_id: format!("01JGZ8X3R{i:016}"),
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
    })
}

fn bench_mode(c: &mut Criterion, name: &str, durability: Durability) {
    let dir = std::env::temp_dir().join(format!("custos-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = LedgerOptions::new("custos.bench/ledger");
    options.durability = durability;
    let (ledger, _) = Ledger::open(&dir, options, Arc::new(custos_types::SystemClock)).unwrap();
    let ledger = Arc::new(ledger);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(PER_ITER));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let ledger = ledger.clone();
                let started = Instant::now();
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for t in 0..CALLERS {
                        let ledger = ledger.clone();
                        tasks.push(tokio::spawn(async move {
                            for i in 0..PER_ITER / CALLERS {
                                ledger
                                    .append(body(t * PER_ITER + i))
                                    .unwrap()
                                    .await
                                    .unwrap();
                            }
                        }));
                    }
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
    rt.block_on(ledger.shutdown()).unwrap();
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench_append(c: &mut Criterion) {
    bench_mode(
        c,
        "batched_1000_callers",
        Durability::Batched {
            max_delay: Duration::from_millis(10),
        },
    );
    bench_mode(c, "sync_1000_callers", Durability::Sync);
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
