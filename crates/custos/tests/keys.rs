//! `custos keys …` against a running `custos serve` on the same data
//! directory: real SQLite, real processes, changes seen on the next request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::process::Command;

use custos_testkit::{CustosProcess, temp_dir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_custos");

/// Runs `custos keys ARGS --data-dir DIR`, expecting success, and parses
/// its JSON output.
fn keys(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("keys")
        .args(args)
        .args(["--data-dir", dir.to_str().unwrap(), "--json"])
        .env("USER", "ops-alice")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "custos keys {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `custos keys ARGS`, expecting failure; returns stderr.
fn keys_fail(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("keys")
        .args(args)
        .args(["--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one-line error expected: {stderr}"
    );
    stderr
}

async fn chat(p: &CustosProcess, secret: &str, model: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions", p.base_url()))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
        ))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn secret_of(v: &Value) -> String {
    v["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_created_by_the_cli_works_and_its_revocation_applies_at_once() {
    let dir = temp_dir("keys-revoke");
    let p = CustosProcess::serve(BIN, &["--data-dir", dir.path().to_str().unwrap()], &[]);
    let created = keys(
        dir.path(),
        &[
            "create",
            "--name",
            "billing",
            "--owner",
            "billing-svc",
            "--team",
            "payments",
            "--models",
            "mock-*",
            "--expires-in",
            "90d",
        ],
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("key_"), "{created}");
    let secret = secret_of(&created);
    assert!(secret.starts_with("cst_live_"));
    assert_eq!(created["models"], serde_json::json!(["mock-*"]));
    assert_eq!(
        created["capabilities"],
        serde_json::json!(["chat", "completions", "embeddings", "models", "stream"])
    );

    assert_eq!(chat(&p, &secret, "mock-chat").await.0, 200);

    // Another key hammers the same node while the revocation lands.
    let other = secret_of(&keys(
        dir.path(),
        &["create", "--name", "busy", "--models", "mock-chat"],
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p = std::sync::Arc::new(p);
    let mut hammers = Vec::new();
    for _ in 0..4 {
        let (p, other, stop) = (p.clone(), other.clone(), stop.clone());
        hammers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                assert_eq!(chat(&p, &other, "mock-chat").await.0, 200);
                n += 1;
            }
            n
        }));
    }
    keys(
        dir.path(),
        &["revoke", &id, "--reason", "leaked in a ticket"],
    );
    let (status, body) = chat(&p, &secret, "mock-chat").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "revoked_api_key");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for h in hammers {
        assert!(h.await.unwrap() > 0);
    }

    // The secret is stored only as a hash.
    let db = std::fs::read(dir.path().join("custos.db")).unwrap();
    let needle = secret.as_bytes();
    assert!(
        !db.windows(needle.len()).any(|w| w == needle),
        "secret found in the database"
    );
    let shown = keys(dir.path(), &["show", &id]);
    assert_eq!(shown["state"], "revoked");
    assert_eq!(shown["revoke_reason"], "leaked in a ticket");
    assert!(shown.get("secret").is_none());
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_its_grace_period_only() {
    let dir = temp_dir("keys-rotate");
    let p = CustosProcess::serve(BIN, &["--data-dir", dir.path().to_str().unwrap()], &[]);
    let created = keys(
        dir.path(),
        &["create", "--name", "svc", "--models", "mock-chat"],
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let first = secret_of(&created);

    // Grace: the old secret keeps working.
    let rotated = keys(dir.path(), &["rotate", &id, "--grace", "1h"]);
    let second = secret_of(&rotated);
    assert_ne!(first, second);
    assert_eq!(rotated["id"], id.as_str(), "the key ID survives rotation");
    assert_eq!(chat(&p, &first, "mock-chat").await.0, 200);
    assert_eq!(chat(&p, &second, "mock-chat").await.0, 200);

    // Grace 0: the previous secret stops at once.
    let third = secret_of(&keys(dir.path(), &["rotate", &id, "--grace", "0s"]));
    let (status, body) = chat(&p, &second, "mock-chat").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("key_rotated"))
    );
    assert_eq!(chat(&p, &third, "mock-chat").await.0, 200);

    // Idempotent: a retried rotation with the same ID returns the same
    // secret and leaves one live new secret.
    let rid = "deploy-2026-11-28-0001";
    let a = secret_of(&keys(dir.path(), &["rotate", &id, "--rotation-id", rid]));
    let b = secret_of(&keys(dir.path(), &["rotate", &id, "--rotation-id", rid]));
    assert_eq!(a, b);
    assert_eq!(chat(&p, &a, "mock-chat").await.0, 200);
    let (status, _) = chat(&p, &third, "mock-chat").await;
    assert_eq!(
        status, 401,
        "the secret before the retried rotation is rotated out"
    );
}

#[tokio::test]
async fn scopes_from_the_cli_are_enforced() {
    let dir = temp_dir("keys-scope");
    let p = CustosProcess::serve(BIN, &["--data-dir", dir.path().to_str().unwrap()], &[]);
    // No --models: no models at all.
    let nothing = secret_of(&keys(dir.path(), &["create", "--name", "empty"]));
    let (status, body) = chat(&p, &nothing, "mock-chat").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );

    let embed_only = secret_of(&keys(
        dir.path(),
        &[
            "create",
            "--name",
            "embedder",
            "--models",
            "mock-embed",
            "--capabilities",
            "embeddings,models",
        ],
    ));
    let (status, body) = chat(&p, &embed_only, "mock-embed").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("capability_not_allowed"))
    );
    let models: Value = reqwest::Client::new()
        .get(format!("{}/models", p.base_url()))
        .bearer_auth(&embed_only)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], "mock-embed");

    let elsewhere = secret_of(&keys(
        dir.path(),
        &[
            "create",
            "--name",
            "office",
            "--models",
            "*",
            "--cidr",
            "10.0.0.0/8",
        ],
    ));
    let (status, body) = chat(&p, &elsewhere, "mock-chat").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("cidr_not_allowed"))
    );

    // A daily token budget: each mock answer uses about 20 tokens.
    let budgeted = secret_of(&keys(
        dir.path(),
        &[
            "create", "--name", "budget", "--models", "*", "--budget", "30/day",
        ],
    ));
    assert_eq!(chat(&p, &budgeted, "mock-chat").await.0, 200);
    assert_eq!(chat(&p, &budgeted, "mock-chat").await.0, 200);
    let (status, body) = chat(&p, &budgeted, "mock-chat").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("budget_exceeded"))
    );

    let limited = secret_of(&keys(
        dir.path(),
        &["create", "--name", "slow", "--models", "*", "--rpm", "1"],
    ));
    assert_eq!(chat(&p, &limited, "mock-chat").await.0, 200);
    let (status, body) = chat(&p, &limited, "mock-chat").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded"))
    );
}

#[tokio::test]
async fn list_show_update_and_errors() {
    let dir = temp_dir("keys-list");
    let a = keys(
        dir.path(),
        &[
            "create",
            "--name",
            "a",
            "--team",
            "red",
            "--models",
            "mock-chat",
        ],
    );
    keys(
        dir.path(),
        &[
            "create",
            "--name",
            "b",
            "--team",
            "blue",
            "--models",
            "mock-chat",
        ],
    );
    let all = keys(dir.path(), &["list"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("secret").is_none())
    );
    let red = keys(dir.path(), &["list", "--team", "red"]);
    assert_eq!(red.as_array().unwrap().len(), 1);
    assert_eq!(red[0]["created_by"], "ops-alice");

    let id = a["id"].as_str().unwrap();
    let updated = keys(
        dir.path(),
        &["update", id, "--models", "mock-*", "--rpm", "100"],
    );
    assert_eq!(updated["key"]["models"], serde_json::json!(["mock-*"]));
    assert_eq!(updated["key"]["rpm"], 100);
    assert_eq!(
        updated["changed"],
        serde_json::json!(["scope"]),
        "{updated}"
    );

    // A fresh key is not due under the default 90-day policy.
    assert_eq!(
        keys(dir.path(), &["list", "--due"])
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let err = keys_fail(dir.path(), &["show", "key_0000000000000000"]);
    assert!(err.contains("no key key_0000000000000000"), "{err}");
    let err = keys_fail(dir.path(), &["show", "not-a-key-id"]);
    assert!(err.contains("is not a key ID"), "{err}");
    let err = keys_fail(
        dir.path(),
        &["create", "--name", "x", "--capabilities", "chat,root"],
    );
    assert!(err.contains("unknown capability `root`"), "{err}");
    // Revocation is final: a revoked key cannot be changed or rotated.
    keys(dir.path(), &["revoke", id, "--reason", "done"]);
    let err = keys_fail(dir.path(), &["update", id, "--rpm", "5"]);
    assert!(err.contains("revoked"), "{err}");
    let err = keys_fail(dir.path(), &["rotate", id]);
    assert!(err.contains("revoked"), "{err}");
}

#[test]
fn a_corrupt_database_is_a_clear_error_not_a_panic() {
    let dir = temp_dir("keys-corrupt");
    std::fs::write(
        dir.path().join("custos.db"),
        b"this is not a database, just text\n",
    )
    .unwrap();
    let err = keys_fail(dir.path(), &["list"]);
    assert!(err.contains("is not a database"), "{err}");
    let out = Command::new(BIN)
        .args(["serve", "--data-dir", dir.path().to_str().unwrap()])
        .env("CUSTOS_LISTEN", "127.0.0.1:0")
        .env("CUSTOS_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a database"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
