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
use custos_record::sample::inference as body;

const PER_ITER: u64 = 20_000;
const CALLERS: u64 = 1000;

fn bench_mode(c: &mut Criterion, name: &str, durability: Durability, threads: usize) {
    let dir = std::env::temp_dir().join(format!("custos-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = LedgerOptions::new("custos.bench/ledger");
    options.durability = durability;
    let (ledger, _) = Ledger::open(&dir, options, Arc::new(custos_types::SystemClock)).unwrap();
    let ledger = Arc::new(ledger);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();

    let run = |ledger: Arc<Ledger>| {
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
    };

    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(PER_ITER));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                run(ledger.clone());
                total += started.elapsed();
            }
            total
        });
    });
    // The same work timed by the CPU time of all the process's threads
    // (callers, writer, checkpointer) rather than the wall clock: what one
    // core-second buys when nothing else competes for the cores (a shared
    // 2-core machine distorts the wall clock).
    group.bench_function(format!("{name}_process_cpu_time"), |b| {
        b.iter_custom(|iters| {
            let start = process_cpu_time();
            for _ in 0..iters {
                run(ledger.clone());
            }
            process_cpu_time().saturating_sub(start)
        });
    });
    group.finish();
    rt.block_on(ledger.shutdown()).unwrap();
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU time consumed so far by the threads of this process that are alive
/// (Linux schedstat; the bench's threads live for the whole bench).
fn process_cpu_time() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

fn bench_append(c: &mut Criterion) {
    bench_mode(
        c,
        "batched_1000_callers",
        Durability::Batched {
            max_delay: Duration::from_millis(10),
        },
        2,
    );
    // One runtime thread: what a single core appends when no other thread
    // contends for the writer's lock (the per-core figure of the target).
    bench_mode(
        c,
        "batched_1000_callers_one_thread",
        Durability::Batched {
            max_delay: Duration::from_millis(10),
        },
        1,
    );
    bench_mode(c, "sync_1000_callers", Durability::Sync, 2);
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
