//! `custos audit readiness` on a seeded installation: users (one without
//! MFA), keys (old, near rotation, unused, wildcard, revoked), real traffic
//! in the ledger, incidents with and without a postmortem. The mock audit
//! must report exactly the expected FAILs and WARNs, and after remediation
//! nothing but PASS (plus what cannot apply or needs a person).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{BIN, cli, post_chat, serve, write_config};
use custos_store::users::{NewInvite, Role};
use custos_store::{Actor, ActorKind, KeyMinter, NewKey, Store, StoreOptions};
use custos_testkit::{create_key, temp_dir};
use custos_types::ManualClock;
use serde_json::Value;

const DAY: Duration = Duration::from_secs(86_400);

fn run(dir: &Path, config: &str, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--config", config]);
    cli(dir, &all)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The (check ID, status) pairs whose status is FAIL or WARN.
fn problems(report: &Value) -> BTreeMap<String, String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "FAIL" || c["status"] == "WARN")
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn subjects(report: &Value, id: &str) -> String {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .map(|c| c["subjects"].to_string())
        .unwrap()
}

fn minter(dir: &Path) -> KeyMinter {
    let hex = std::fs::read_to_string(dir.join("pepper.key")).unwrap();
    let hex = hex.trim();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    KeyMinter::new(&secrecy::SecretSlice::from(bytes)).unwrap()
}

fn new_key(name: &str, models: &str, expires_at: Option<SystemTime>) -> NewKey {
    NewKey {
        name: name.into(),
        owner: "team-a".into(),
        team: Some("a".into()),
        description: String::new(),
        labels: BTreeMap::new(),
        scope: custos_auth::Scope {
            models: custos_auth::scope::ModelScope::parse_list(models).unwrap(),
            capabilities: custos_types::CapabilitySet::parse_list("chat").unwrap(),
            cidrs: custos_auth::scope::CidrScope::new(Vec::new()),
            rpm: None,
            tpm: None,
            budget: None,
        },
        expires_at,
    }
}

async fn add_user(store: &Store, id: &str, name: &str, role: Role, mfa: bool) {
    let admin = Actor::new(ActorKind::Cli, "root");
    let users = store.users();
    let token = format!("invite-{id}");
    users
        .create_invite(
            &NewInvite {
                id: format!("inv-{id}"),
                token_hash: token.clone(),
                username: Some(name.into()),
                role,
                reset: false,
                expires_at: SystemTime::now() + DAY,
            },
            &admin,
        )
        .await
        .unwrap();
    users
        .redeem_invite(&token, id, name, "$argon2id$fake-hash-for-tests", None)
        .await
        .unwrap();
    if mfa {
        enrol(store, id).await;
    }
}

async fn enrol(store: &Store, id: &str) {
    let users = store.users();
    users.set_pending_totp(id, "sealed-seed").await.unwrap();
    users
        .confirm_totp(id, 1, &[], &Actor::new(ActorKind::User, id))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_mock_audit_finds_exactly_the_seeded_gaps_and_passes_after_remediation() {
    let dir = temp_dir("readiness");
    let witness = dir.path().join("witness");
    std::fs::create_dir_all(&witness).unwrap();
    let runbook = dir.path().join("incident-response.md");
    std::fs::write(&runbook, "# Incident response\n").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[providers.mock]
kind = "mock"

[[models]]
name = "m"
targets = [{{ provider = "mock" }}]

[keys]
max_age = "365d"
rotation_warning = "30d"

[[ledger.sinks]]
kind = "directory"
path = "{}"
"#,
            witness.display()
        ),
    );

    // Real traffic first, so the ledger holds requests and signed
    // checkpoints that reached the sink.
    let traffic = create_key(BIN, dir.path(), "m");
    let p = serve(dir.path(), &["--config", &config], &[]);
    for _ in 0..3 {
        let resp = post_chat(&p, &traffic, r#"{"model":"m","messages":[]}"#).await;
        assert_eq!(resp.status(), 200);
    }
    drop(p);

    // Backdated keys and console users, written through the store with a
    // clock set in the past.
    let now = SystemTime::now();
    let clock = Arc::new(ManualClock::new(now - 400 * DAY));
    let store = Store::open(
        dir.path(),
        StoreOptions {
            clock: clock.clone(),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let minter = minter(dir.path());
    let cli_actor = Actor::new(ActorKind::Cli, "seed");
    let mut rng = rand::rngs::OsRng;
    let keys = store.keys();
    let (old, _) = keys
        .create(&minter, new_key("old", "m", None), &cli_actor, &mut rng)
        .await
        .unwrap();
    clock.set(now - 350 * DAY);
    let (near, _) = keys
        .create(
            &minter,
            new_key("near", "m", Some(now + 365 * DAY)),
            &cli_actor,
            &mut rng,
        )
        .await
        .unwrap();
    // `near` is in daily use; its owner just has to rotate it.
    keys.touch_last_used(&[(near.id, now - DAY)]).await.unwrap();
    clock.set(now - 120 * DAY);
    let (unused, _) = keys
        .create(
            &minter,
            new_key("unused", "m", Some(now + 365 * DAY)),
            &cli_actor,
            &mut rng,
        )
        .await
        .unwrap();
    clock.set(now - 5 * DAY);
    let (wildcard, _) = keys
        .create(
            &minter,
            new_key("wildcard", "*", Some(now + 365 * DAY)),
            &cli_actor,
            &mut rng,
        )
        .await
        .unwrap();
    let (revoked, _) = keys
        .create(
            &minter,
            new_key("revoked", "m", Some(now + 365 * DAY)),
            &cli_actor,
            &mut rng,
        )
        .await
        .unwrap();
    keys.revoke(&revoked.id, &cli_actor, "left the company")
        .await
        .unwrap();
    clock.set(now);
    add_user(&store, "u-alice", "alice", Role::Admin, true).await;
    add_user(&store, "u-bob", "bob", Role::KeyManager, false).await;
    store.close().await;

    // Two incidents, declared (and so acknowledged) and resolved by hand;
    // only the first gets a postmortem.
    let mut ids = Vec::new();
    for title in ["wrong answers", "slow answers"] {
        let out = ok(&run(
            dir.path(),
            &config,
            &[
                "incidents",
                "declare",
                "--model",
                "m",
                "--severity",
                "sev3",
                "--title",
                title,
            ],
        ));
        let id = out.split(':').next().unwrap().to_owned();
        ok(&run(
            dir.path(),
            &config,
            &["incidents", "resolve", &id, "--note", "fixed"],
        ));
        ids.push(id);
    }
    let pm = dir.path().join("pm.json");
    std::fs::write(
        &pm,
        ok(&run(
            dir.path(),
            &config,
            &["incidents", "postmortem", "--template"],
        )),
    )
    .unwrap();
    ok(&run(
        dir.path(),
        &config,
        &[
            "incidents",
            "postmortem",
            &ids[0],
            "--file",
            pm.to_str().unwrap(),
        ],
    ));

    let readiness = |dir: &Path| {
        run(
            dir,
            &config,
            &[
                "audit",
                "readiness",
                "--json",
                "--runbook",
                runbook.to_str().unwrap(),
            ],
        )
    };
    let out = readiness(dir.path());
    assert!(!out.status.success(), "a FAIL must fail the command");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: BTreeMap<String, String> = [
        ("CUS-IAM-01", "FAIL"),
        ("CUS-KEY-01", "FAIL"),
        ("CUS-KEY-02", "WARN"),
        ("CUS-KEY-03", "WARN"),
        ("CUS-KEY-04", "WARN"),
        ("CUS-KEY-05", "WARN"),
        ("CUS-INC-02", "FAIL"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert_eq!(problems(&report), expected, "{report:#}");
    // Findings name exactly what is wrong.
    assert!(subjects(&report, "CUS-IAM-01").contains("bob"));
    assert!(!subjects(&report, "CUS-IAM-01").contains("alice"));
    let rotation = subjects(&report, "CUS-KEY-01");
    assert!(rotation.contains(&old.id.to_string()) && !rotation.contains(&near.id.to_string()));
    assert!(subjects(&report, "CUS-KEY-02").contains(&near.id.to_string()));
    assert!(subjects(&report, "CUS-KEY-04").contains(&wildcard.id.to_string()));
    let idle = subjects(&report, "CUS-KEY-05");
    assert!(idle.contains(&unused.id.to_string()) && idle.contains(&old.id.to_string()));
    assert!(!idle.contains(&near.id.to_string()));
    assert!(!idle.contains(&revoked.id.to_string()));
    assert!(subjects(&report, "CUS-INC-02").contains(&ids[1]));
    assert!(!subjects(&report, "CUS-INC-02").contains(&ids[0]));
    let revocation = &report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "CUS-KEY-06")
        .unwrap();
    assert_eq!(revocation["status"], "PASS", "{revocation}");
    // The OCSF form carries the same verdicts.
    let out = run(
        dir.path(),
        &config,
        &[
            "audit",
            "readiness",
            "--ocsf",
            "--runbook",
            runbook.to_str().unwrap(),
        ],
    );
    let ocsf: Value = serde_json::from_slice(&out.stdout).unwrap();
    let iam = ocsf
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["finding_info"]["uid"] == "CUS-IAM-01")
        .unwrap();
    assert_eq!(iam["class_uid"], 2003);
    assert_eq!(iam["compliance"]["status"], "Fail");
    assert_eq!(iam["compliance"]["requirements"][0], "CC6.1");

    // Remediation, each with the command the finding proposed.
    ok(&run(
        dir.path(),
        &config,
        &[
            "keys",
            "revoke",
            &old.id.to_string(),
            "--reason",
            "rotation overdue",
        ],
    ));
    ok(&run(
        dir.path(),
        &config,
        &[
            "keys",
            "revoke",
            &unused.id.to_string(),
            "--reason",
            "access review",
        ],
    ));
    ok(&run(
        dir.path(),
        &config,
        &["keys", "rotate", &near.id.to_string()],
    ));
    ok(&run(
        dir.path(),
        &config,
        &["keys", "update", &wildcard.id.to_string(), "--models", "m"],
    ));
    let traffic_id =
        serde_json::from_str::<Value>(&ok(&run(dir.path(), &config, &["keys", "list", "--json"])))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "test")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
    ok(&run(
        dir.path(),
        &config,
        &[
            "keys",
            "update",
            &traffic_id,
            "--expires-in",
            "365d",
            "--capabilities",
            "chat",
        ],
    ));
    let store = Store::open(dir.path(), StoreOptions::default())
        .await
        .unwrap();
    enrol(&store, "u-bob").await;
    store.close().await;
    ok(&run(
        dir.path(),
        &config,
        &[
            "incidents",
            "postmortem",
            &ids[1],
            "--file",
            pm.to_str().unwrap(),
        ],
    ));

    let out = readiness(dir.path());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(problems(&report), BTreeMap::new(), "{report:#}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses
            .iter()
            .all(|s| ["PASS", "MANUAL", "NOT_APPLICABLE"].contains(s)),
        "{statuses:?}"
    );
    // The readable table says the same.
    let table = ok(&run(
        dir.path(),
        &config,
        &["audit", "readiness", "--runbook", runbook.to_str().unwrap()],
    ));
    assert!(table.contains("0 FAIL, 0 WARN"), "{table}");
}
