//! Criterion benchmark of offline verification throughput: a ledger of
//! 20 000 inference records written by custos-ledger, verified end to end
//! (decode, canonical check, leaf hash, tree, signatures). The target is
//! 300k records per second on one core.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]
#![allow(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use custos_ledger::{Durability, Ledger, LedgerOptions, LedgerReader};
use custos_record::sample::inference as body;
use custos_verify::verify_dir;

const RECORDS: u64 = 20_000;

fn bench_verify(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("custos-verify-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = LedgerOptions::new("custos.bench/verify");
    options.durability = Durability::Batched {
        max_delay: Duration::from_millis(10),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (ledger, _) = Ledger::open(&dir, options, Arc::new(custos_types::SystemClock)).unwrap();
        let tickets: Vec<_> = (0..RECORDS)
            .map(|i| ledger.append(body(i)).unwrap())
            .collect();
        for t in tickets {
            t.await.unwrap();
        }
        ledger.shutdown().await.unwrap();
    });
    let key = LedgerReader::open(&dir).verifier_history().unwrap()[0]
        .verifier
        .clone();

    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(10);
    group.bench_function("verify_dir_20k", |b| {
        b.iter(|| {
            let report = verify_dir(&dir, std::slice::from_ref(&key), None, &mut |_, _| {});
            assert!(report.is_intact(), "{report:?}");
        });
    });
    // The same work timed by this thread's CPU time rather than the wall
    // clock, so that other processes competing for the cores (a shared
    // 2-core machine) do not distort the per-core figure.
    group.bench_function("verify_dir_20k_thread_cpu_time", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                let report = verify_dir(&dir, std::slice::from_ref(&key), None, &mut |_, _| {});
                assert!(report.is_intact(), "{report:?}");
            }
            thread_cpu_time().saturating_sub(start)
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU time consumed by the calling thread so far (Linux schedstat).
fn thread_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
