//! Criterion benchmarks for the ledger's hot paths: appending to the
//! frontier (the ledger targets at least 200k appends per second), batch
//! roots, and proof generation and verification.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use custos_merkle::{
    Frontier, Hash, consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency,
    verify_inclusion,
};

const APPENDS: usize = 100_000;
const PROOF_TREE: usize = 100_000;

fn leaves(n: usize) -> Vec<Hash> {
    (0..n as u64).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

fn bench_append(c: &mut Criterion) {
    let input = leaves(APPENDS);
    let mut group = c.benchmark_group("frontier");
    group.throughput(Throughput::Elements(APPENDS as u64));
    group.bench_function("append_100k", |b| {
        b.iter_batched(
            Frontier::new,
            |mut tree| {
                for leaf in &input {
                    // Cannot fail: the tree is far from u64::MAX leaves.
                    let _ = tree.append(*leaf);
                }
                black_box(tree.root())
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();

    let mut group = c.benchmark_group("leaf_hash");
    group.throughput(Throughput::Elements(1));
    let record = [0x5au8; 512];
    group.bench_function("512_bytes", |b| b.iter(|| leaf_hash(black_box(&record))));
    group.finish();
}

fn bench_root(c: &mut Criterion) {
    let input = leaves(APPENDS);
    let mut group = c.benchmark_group("root");
    group.throughput(Throughput::Elements(APPENDS as u64));
    group.bench_function("batch_100k", |b| b.iter(|| root(black_box(&input))));
    group.finish();
}

fn bench_proofs(c: &mut Criterion) {
    let tree = leaves(PROOF_TREE);
    let size = PROOF_TREE as u64;
    let r = root(&tree);
    let index = size / 3;
    let old_size = size / 2 + 17;
    let old_root = root(&tree[..old_size as usize]);
    let Ok(incl) = inclusion_proof(&tree, index) else {
        return;
    };
    let Ok(cons) = consistency_proof(&tree, old_size) else {
        return;
    };

    let mut group = c.benchmark_group("proof");
    group.bench_function("inclusion_generate_100k", |b| {
        b.iter(|| inclusion_proof(black_box(&tree), black_box(index)));
    });
    group.bench_function("consistency_generate_100k", |b| {
        b.iter(|| consistency_proof(black_box(&tree), black_box(old_size)));
    });
    group.bench_function("inclusion_verify_100k", |b| {
        b.iter(|| {
            verify_inclusion(
                black_box(&tree[index as usize]),
                index,
                size,
                black_box(&incl),
                &r,
            )
        });
    });
    group.bench_function("consistency_verify_100k", |b| {
        b.iter(|| verify_consistency(old_size, size, &old_root, &r, black_box(&cons)));
    });
    group.finish();
}

criterion_group!(benches, bench_append, bench_root, bench_proofs);
criterion_main!(benches);
