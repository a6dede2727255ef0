//! Hot-path costs of custos-auth: authenticating a key among 10k stored
//! hashes, checking a glob scope, and a rate-limiter decision.
#![expect(clippy::unwrap_used, reason = "benchmark setup fails loudly")]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{Criterion, criterion_main};
use custos_auth::key::{self, KeyHash, KeyHasher, KeyId};
use custos_auth::limit::{Limits, RateLimiter};
use custos_auth::scope::{AccessRequest, CidrScope, ModelScope, Scope};
use custos_types::{Capability, CapabilitySet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use secrecy::{ExposeSecret, SecretSlice};

fn authenticate(c: &mut Criterion) {
    let hasher = KeyHasher::new(&SecretSlice::from(vec![7u8; 32])).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let mut table: HashMap<KeyHash, KeyId> = HashMap::new();
    let mut last = None;
    for _ in 0..10_000 {
        let issued = hasher.issue(&mut rng);
        table.insert(issued.hash, issued.id);
        last = Some(issued.secret);
    }
    let secret = last.unwrap();
    let presented = secret.expose_secret();

    c.bench_function("key/parse", |b| {
        b.iter(|| key::parse(black_box(presented)).is_ok())
    });
    let parsed = key::parse(presented).unwrap();
    c.bench_function("key/hash", |b| b.iter(|| hasher.hash(black_box(&parsed))));
    c.bench_function("key/parse_hash_lookup_10k", |b| {
        b.iter(|| {
            let parsed = key::parse(black_box(presented)).unwrap();
            let hash = hasher.hash(&parsed);
            table
                .get_key_value(&hash)
                .filter(|(stored, _)| stored.ct_eq(&hash))
                .map(|(_, id)| *id)
        })
    });
}

fn scope(c: &mut Criterion) {
    let scope = Scope {
        models: ModelScope::parse_list(
            "gpt-4o, gpt-4o-mini, o?-mini, text-embedding-3-*, claude-*-sonnet-*",
        )
        .unwrap(),
        capabilities: CapabilitySet::parse_list("chat,stream").unwrap(),
        cidrs: CidrScope::new([
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]),
        ..Scope::default()
    };
    let req = AccessRequest {
        model: Some("claude-3-5-sonnet-20241022"),
        capability: Capability::Chat,
        stream: true,
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
    };
    assert!(scope.check(&req).is_ok());
    c.bench_function("scope/check_glob_last_of_5", |b| {
        b.iter(|| scope.check(black_box(&req)).is_ok())
    });
    let text = "a".repeat(256);
    let pathological = ModelScope::parse_list("a*a*a*a*a*a*a*a*b").unwrap();
    c.bench_function("scope/pathological_glob_256", |b| {
        b.iter(|| pathological.allows(black_box(&text)))
    });
}

fn limiter(c: &mut Criterion) {
    let limiter = RateLimiter::new();
    let mut rng = StdRng::seed_from_u64(2);
    let keys: Vec<KeyId> = (0..10_000).map(|_| KeyId::generate(&mut rng)).collect();
    let limits = Limits {
        rpm: Some(u32::MAX),
        tpm: Some(u32::MAX),
    };
    let t0 = Instant::now();
    for k in &keys {
        let _ = limiter.check_request(k, limits, t0);
    }
    let mut i = 0;
    c.bench_function("limit/check_request_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            limiter
                .check_request(black_box(&keys[i]), limits, Instant::now())
                .is_allowed()
        })
    });
    c.bench_function("limit/record_tokens", |b| {
        b.iter(|| limiter.record_tokens(black_box(&keys[0]), 100, Instant::now()))
    });
}

// A private module, so the undocumented `pub fn` that `criterion_group!`
// generates is not reachable and needs no doc.
mod group {
    use criterion::criterion_group;
    criterion_group!(benches, super::authenticate, super::scope, super::limiter);
}
criterion_main!(group::benches);
