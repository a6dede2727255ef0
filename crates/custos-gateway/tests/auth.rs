//! The authentication and authorization stage of the real router, with keys
//! issued by `custos-auth` and served from an in-memory key source. (The
//! same behaviour against the SQLite store and the CLI is tested end to end
//! on the binary.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{TestGateway, chat, error_of};
use custos_auth::scope::{BudgetPeriod, CidrScope, ModelScope, TokenBudget};
use custos_auth::{KeyHasher, KeyId, Scope};
use custos_gateway::auth::BoxFuture;
use custos_gateway::{Auth, KeyEntry, KeySnapshot, KeySource, RotationPolicy, SecretEntry};
use custos_testkit::{MockUpstream, Reply};
use custos_types::{Capability, CapabilitySet, Clock, ExposeSecret, ManualClock};
use rand::SeedableRng;
use rand::rngs::StdRng;
use secrecy::SecretSlice;

struct MemorySource {
    snapshot: Mutex<KeySnapshot>,
    changed: AtomicBool,
    /// Holds the caller that consumes a change for 100 ms, as a watcher
    /// that does more work after reading the change would (see
    /// `a_request_racing_the_one_that_consumed_the_change_still_sees_it`).
    slow_change: AtomicBool,
    /// Signalled when a change is consumed while `slow_change` is set.
    entered: tokio::sync::Notify,
    loads: AtomicUsize,
    stored_usage: Mutex<u64>,
    added: Mutex<Vec<(KeyId, SystemTime, u64)>>,
}

impl KeySource for MemorySource {
    /// Like the store's marker watcher, reports each change once.
    fn changed(&self) -> bool {
        let changed = self.changed.swap(false, Ordering::SeqCst);
        if changed && self.slow_change.load(Ordering::SeqCst) {
            self.entered.notify_one();
            // The worker's other tasks move on to another thread meanwhile.
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(100)));
        }
        changed
    }
    fn load(&self) -> BoxFuture<'_, Result<KeySnapshot, String>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let snap = self.snapshot.lock().unwrap().clone();
        Box::pin(async move { Ok(snap) })
    }
    fn usage_in_period(
        &self,
        _key: KeyId,
        _period: BudgetPeriod,
    ) -> BoxFuture<'_, Result<u64, String>> {
        let n = *self.stored_usage.lock().unwrap();
        Box::pin(async move { Ok(n) })
    }
    fn add_usage(&self, batch: Vec<(KeyId, SystemTime, u64)>) -> BoxFuture<'_, Result<(), String>> {
        self.added.lock().unwrap().extend(batch);
        Box::pin(async { Ok(()) })
    }
    fn record_last_used(
        &self,
        _batch: Vec<(KeyId, SystemTime)>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

impl MemorySource {
    fn edit(&self, f: impl FnOnce(&mut KeySnapshot)) {
        f(&mut self.snapshot.lock().unwrap());
        self.changed.store(true, Ordering::SeqCst);
    }
}

struct Fixture {
    gw: TestGateway,
    auth: Arc<Auth>,
    source: Arc<MemorySource>,
    hasher: KeyHasher,
    clock: Arc<ManualClock>,
    rng: StdRng,
    _up: MockUpstream,
}

const T0: u64 = 1_800_000_000;

fn config(url: &str) -> String {
    format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{url}\"\n\
         [[models]]\nname = \"gpt-4o\"\ntargets = [{{ provider = \"up\" }}]\n\
         [[models]]\nname = \"gpt-4o-mini\"\ntargets = [{{ provider = \"up\" }}]\n\
         [[models]]\nname = \"llama\"\ntargets = [{{ provider = \"up\" }}]\n"
    )
}

async fn fixture() -> Fixture {
    let up = MockUpstream::start(Reply::chat("ok")).await;
    let pepper: SecretSlice<u8> = vec![7u8; 32].into();
    let hasher = KeyHasher::new(&pepper).unwrap();
    let source = Arc::new(MemorySource {
        snapshot: Mutex::new(KeySnapshot::default()),
        changed: AtomicBool::new(false),
        slow_change: AtomicBool::new(false),
        entered: tokio::sync::Notify::new(),
        loads: AtomicUsize::new(0),
        stored_usage: Mutex::new(0),
        added: Mutex::new(Vec::new()),
    });
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
    ));
    let auth = Auth::new(
        KeyHasher::new(&pepper).unwrap(),
        source.clone(),
        clock.clone(),
        RotationPolicy::default(),
    )
    .await
    .unwrap();
    let gw = TestGateway::start_with_auth(&config(&up.base_url()), Some(auth.clone())).await;
    Fixture {
        gw,
        auth,
        source,
        hasher,
        clock,
        rng: StdRng::seed_from_u64(1),
        _up: up,
    }
}

impl Fixture {
    /// Issues a key with this scope and returns (id, secret).
    fn key(&mut self, scope: Scope) -> (KeyId, String) {
        let issued = self.hasher.issue(&mut self.rng);
        let entry = Arc::new(KeyEntry {
            id: issued.id,
            name: "svc".into(),
            owner: Some("billing".into()),
            team: Some("payments".into()),
            scope,
            expires_at: None,
            revoked: false,
        });
        let now = self.clock.now();
        self.source.edit(|s| {
            s.secrets.insert(
                issued.hash,
                SecretEntry {
                    key: entry,
                    issued_at: now,
                    not_after: None,
                },
            );
        });
        (issued.id, issued.secret.expose_secret().to_owned())
    }

    fn edit_key(&self, id: KeyId, f: impl Fn(&mut KeyEntry)) {
        self.source.edit(|s| {
            for secret in s.secrets.values_mut() {
                if secret.key.id == id {
                    let mut k = (*secret.key).clone();
                    f(&mut k);
                    secret.key = Arc::new(k);
                }
            }
        });
    }

    async fn call(&self, secret: &str, body: &serde_json::Value) -> reqwest::Response {
        self.gw
            .client
            .post(self.gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .bearer_auth(secret)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }
}

fn scope(models: &str) -> Scope {
    Scope {
        models: ModelScope::parse_list(models).unwrap(),
        ..Scope::default()
    }
}

/// A chat request for `gpt-4o` with `secret`, on a gateway shared with
/// other tasks.
async fn post_gpt4o(gw: Arc<TestGateway>, secret: String) -> reqwest::Response {
    gw.client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .bearer_auth(secret)
        .body(gpt4o(false).to_string())
        .send()
        .await
        .unwrap()
}

fn gpt4o(stream: bool) -> serde_json::Value {
    let mut body = chat(stream);
    body["model"] = "gpt-4o".into();
    body
}

#[tokio::test]
async fn valid_key_is_served_and_recorded_as_the_actor() {
    let mut f = fixture().await;
    let (id, secret) = f.key(scope("gpt-4o"));
    let resp = f.call(&secret, &gpt4o(false)).await;
    assert_eq!(resp.status(), 200);
    let o = &f.gw.outcomes.wait(1).await[0];
    let actor = o.actor.as_ref().unwrap();
    assert_eq!(actor.key_id, id);
    assert_eq!(actor.owner.as_deref(), Some("billing"));
    assert_eq!(actor.team.as_deref(), Some("payments"));
}

#[tokio::test]
async fn each_401_case_has_its_own_code() {
    let mut f = fixture().await;
    let (_, good) = f.key(scope("*"));
    let (revoked_id, revoked) = f.key(scope("*"));
    f.edit_key(revoked_id, |k| k.revoked = true);
    let (expired_id, expired) = f.key(scope("*"));
    f.edit_key(expired_id, |k| {
        k.expires_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(T0 - 1))
    });

    let resp = f.gw.post("/v1/chat/completions", &gpt4o(false)).await;
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"custos\""
    );
    assert_eq!(error_of(resp, 401).await["code"], "missing_api_key");

    // Mistyped: one character changed breaks the checksum.
    let mut typo = good.clone().into_bytes();
    typo[12] = if typo[12] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let cases = [
        ("sk-not-a-custos-key", "malformed_api_key"),
        (&good[..good.len() - 1], "malformed_api_key"),
        (typo.as_str(), "malformed_api_key"),
        (revoked.as_str(), "revoked_api_key"),
        (expired.as_str(), "expired_api_key"),
    ];
    for (secret, code) in cases {
        let err = error_of(f.call(secret, &gpt4o(false)).await, 401).await;
        assert_eq!(err["code"], code, "{secret}");
        assert_eq!(err["type"], "authentication_error");
        assert!(
            !err["message"].as_str().unwrap().contains(secret),
            "secret echoed"
        );
    }
    // A well-formed key nobody issued.
    let stranger = f.hasher.issue(&mut StdRng::seed_from_u64(99));
    let err = error_of(
        f.call(stranger.secret.expose_secret(), &gpt4o(false)).await,
        401,
    )
    .await;
    assert_eq!(err["code"], "invalid_api_key");
    // And the good key still works.
    assert_eq!(f.call(&good, &gpt4o(false)).await.status(), 200);
}

#[tokio::test]
async fn rotated_secret_works_during_grace_then_answers_key_rotated() {
    let mut f = fixture().await;
    let (id, old) = f.key(scope("gpt-4o"));
    // Rotation: a new secret for the same key, the old one valid 1 h more.
    let new = f.hasher.issue(&mut f.rng);
    let now = f.clock.now();
    f.source.edit(|s| {
        let key = s
            .secrets
            .values()
            .find(|e| e.key.id == id)
            .unwrap()
            .key
            .clone();
        for e in s.secrets.values_mut() {
            if e.key.id == id {
                e.not_after = Some(now + Duration::from_secs(3600));
            }
        }
        s.secrets.insert(
            new.hash,
            SecretEntry {
                key,
                issued_at: now,
                not_after: None,
            },
        );
    });
    assert_eq!(f.call(&old, &gpt4o(false)).await.status(), 200);
    assert_eq!(
        f.call(new.secret.expose_secret(), &gpt4o(false))
            .await
            .status(),
        200
    );
    f.clock.advance(Duration::from_secs(3600));
    let err = error_of(f.call(&old, &gpt4o(false)).await, 401).await;
    assert_eq!(err["code"], "key_rotated");
    assert_eq!(
        f.call(new.secret.expose_secret(), &gpt4o(false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn scopes_give_403_with_the_reason() {
    let mut f = fixture().await;
    let (_, narrow) = f.key(scope("gpt-4o-*"));
    let err = error_of(f.call(&narrow, &gpt4o(false)).await, 403).await;
    assert_eq!(err["code"], "model_not_allowed");
    assert_eq!(err["param"], "model");
    let mut body = gpt4o(false);
    body["model"] = "gpt-4o-mini".into();
    assert_eq!(f.call(&narrow, &body).await.status(), 200, "glob matches");

    let (_, no_stream) = f.key(Scope {
        capabilities: CapabilitySet::parse_list("chat").unwrap(),
        ..scope("gpt-4o")
    });
    assert_eq!(f.call(&no_stream, &gpt4o(false)).await.status(), 200);
    let err = error_of(f.call(&no_stream, &gpt4o(true)).await, 403).await;
    assert_eq!(err["code"], "capability_not_allowed");

    let (_, no_chat) = f.key(Scope {
        capabilities: [Capability::Embeddings].into_iter().collect(),
        ..scope("*")
    });
    let err = error_of(f.call(&no_chat, &gpt4o(false)).await, 403).await;
    assert_eq!(err["code"], "capability_not_allowed");

    let (_, elsewhere) = f.key(Scope {
        cidrs: CidrScope::new(["10.0.0.0/8".parse().unwrap()]),
        ..scope("*")
    });
    let err = error_of(f.call(&elsewhere, &gpt4o(false)).await, 403).await;
    assert_eq!(err["code"], "cidr_not_allowed");
    let (_, here) = f.key(Scope {
        cidrs: CidrScope::new(["127.0.0.0/8".parse().unwrap()]),
        ..scope("*")
    });
    assert_eq!(f.call(&here, &gpt4o(false)).await.status(), 200);

    // No models means nothing, not everything.
    let (_, nothing) = f.key(Scope::default());
    let err = error_of(f.call(&nothing, &gpt4o(false)).await, 403).await;
    assert_eq!(err["code"], "model_not_allowed");
}

#[tokio::test]
async fn models_list_shows_only_what_the_key_may_use() {
    let mut f = fixture().await;
    let (_, secret) = f.key(scope("gpt-4o*"));
    let resp =
        f.gw.client
            .get(f.gw.url("/v1/models"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
    let json: serde_json::Value = resp.json().await.unwrap();
    let ids: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o", "gpt-4o-mini"]);
    let resp =
        f.gw.client
            .get(f.gw.url("/v1/models/llama"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
    assert_eq!(error_of(resp, 403).await["code"], "model_not_allowed");
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers() {
    let mut f = fixture().await;
    let (_, secret) = f.key(Scope {
        rpm: Some(2),
        tpm: Some(1000),
        ..scope("gpt-4o")
    });
    let first = f.call(&secret, &gpt4o(false)).await;
    assert_eq!(first.status(), 200);
    let h = first.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "2");
    assert_eq!(h["x-ratelimit-remaining-requests"], "1");
    assert!(h.contains_key("x-ratelimit-reset-requests"));
    assert_eq!(h["x-ratelimit-limit-tokens"], "1000");
    assert!(h.contains_key("x-ratelimit-remaining-tokens"));
    assert_eq!(f.call(&secret, &gpt4o(false)).await.status(), 200);
    let third = f.call(&secret, &gpt4o(false)).await;
    let retry: u64 = third.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(third.headers()["x-ratelimit-remaining-requests"], "0");
    let err = error_of(third, 429).await;
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert_eq!(err["type"], "rate_limit_error");
}

#[tokio::test]
async fn tokens_used_are_debited_from_the_token_limit() {
    let mut f = fixture().await;
    // The upstream reports 18 tokens per answer.
    let (_, secret) = f.key(Scope {
        tpm: Some(20),
        ..scope("gpt-4o")
    });
    assert_eq!(f.call(&secret, &gpt4o(false)).await.status(), 200);
    f.gw.outcomes.wait(1).await;
    assert_eq!(f.call(&secret, &gpt4o(false)).await.status(), 200);
    f.gw.outcomes.wait(2).await;
    let err = error_of(f.call(&secret, &gpt4o(false)).await, 429).await;
    assert!(err["message"].as_str().unwrap().contains("tokens"), "{err}");
}

#[tokio::test]
async fn revocation_applies_to_the_very_next_request_under_load() {
    let mut f = fixture().await;
    let (victim_id, victim) = f.key(scope("gpt-4o"));
    let (_, other) = f.key(scope("gpt-4o"));
    let gw = Arc::new(f.gw);
    let stop = Arc::new(AtomicBool::new(false));
    let mut hammers = Vec::new();
    for _ in 0..4 {
        let gw = gw.clone();
        let other = other.clone();
        let stop = stop.clone();
        hammers.push(tokio::spawn(async move {
            let mut ok = 0;
            while !stop.load(Ordering::SeqCst) {
                let resp = post_gpt4o(gw.clone(), other.clone()).await;
                assert_eq!(resp.status(), 200);
                ok += 1;
            }
            ok
        }));
    }
    assert_eq!(post_gpt4o(gw.clone(), victim.clone()).await.status(), 200);
    f.source.edit(|s| {
        for e in s.secrets.values_mut() {
            if e.key.id == victim_id {
                let mut k = (*e.key).clone();
                k.revoked = true;
                e.key = Arc::new(k);
            }
        }
    });
    let resp = post_gpt4o(gw.clone(), victim).await;
    assert_eq!(error_of(resp, 401).await["code"], "revoked_api_key");
    stop.store(true, Ordering::SeqCst);
    for h in hammers {
        assert!(h.await.unwrap() > 0);
    }
    // One reload, however many requests raced it.
    assert!(f.source.loads.load(Ordering::SeqCst) >= 2);
}

/// One request consumes the change signal and is still busy inside the
/// check when the next one asks: the second must not be told "no change"
/// and served from the old snapshot. (Found by the CLI revocation test
/// once the store's watcher did a little more work after reading the
/// change.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_racing_the_one_that_consumed_the_change_still_sees_it() {
    let mut f = fixture().await;
    let (victim_id, victim) = f.key(scope("gpt-4o"));
    let (_, other) = f.key(scope("gpt-4o"));
    assert_eq!(f.call(&victim, &gpt4o(false)).await.status(), 200);
    f.source.slow_change.store(true, Ordering::SeqCst);
    f.edit_key(victim_id, |k| k.revoked = true);
    let gw = Arc::new(f.gw);
    let first = tokio::spawn(post_gpt4o(gw.clone(), other));
    // The first request has consumed the change and is held inside the check.
    f.source.entered.notified().await;
    let resp = post_gpt4o(gw.clone(), victim).await;
    assert_eq!(error_of(resp, 401).await["code"], "revoked_api_key");
    assert_eq!(first.await.unwrap().status(), 200);
}

#[tokio::test]
async fn random_strings_never_authenticate() {
    let mut f = fixture().await;
    let _ = f.key(scope("*"));
    let mut rng = StdRng::seed_from_u64(5);
    for i in 0..200 {
        let len = rand::Rng::gen_range(&mut rng, 0..80);
        let s: String = (0..len)
            .map(|_| rand::Rng::gen_range(&mut rng, 0x21u8..0x7f) as char)
            .collect();
        let s = if i % 2 == 0 {
            format!("cst_live_{s}")
        } else {
            s
        };
        let resp = f.call(&s, &gpt4o(false)).await;
        assert_eq!(resp.status(), 401, "{s}");
    }
}

#[tokio::test]
async fn token_budgets_refuse_once_spent_and_count_stored_usage() {
    let mut f = fixture().await;
    let budget = Some(TokenBudget {
        tokens: 30,
        period: BudgetPeriod::Day,
    });
    let (id, secret) = f.key(Scope {
        budget,
        ..scope("gpt-4o")
    });
    // 18 tokens per answer: the first two fit, the third finds 36 >= 30.
    assert_eq!(f.call(&secret, &gpt4o(false)).await.status(), 200);
    f.gw.outcomes.wait(1).await;
    assert_eq!(f.call(&secret, &gpt4o(false)).await.status(), 200);
    f.gw.outcomes.wait(2).await;
    let resp = f.call(&secret, &gpt4o(false)).await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 86_400, "{retry}");
    let err = error_of(resp, 429).await;
    assert_eq!(err["code"], "budget_exceeded");
    // Usage is written in batches, per key and day.
    f.auth.flush().await.unwrap();
    let added = f.source.added.lock().unwrap().clone();
    assert_eq!(
        added
            .iter()
            .filter(|(k, _, _)| *k == id)
            .map(|(_, _, n)| n)
            .sum::<u64>(),
        36
    );
    // The next day the budget starts over.
    f.clock.advance(Duration::from_secs(86_400));
    assert_eq!(f.call(&secret, &gpt4o(false)).await.status(), 200);
}

#[tokio::test]
async fn usage_already_stored_counts_against_the_budget() {
    let mut f = fixture().await;
    *f.source.stored_usage.lock().unwrap() = 40;
    let budget = Some(TokenBudget {
        tokens: 30,
        period: BudgetPeriod::Month,
    });
    let (_, secret) = f.key(Scope {
        budget,
        ..scope("gpt-4o")
    });
    let err = error_of(f.call(&secret, &gpt4o(false)).await, 429).await;
    assert_eq!(err["code"], "budget_exceeded");
}
