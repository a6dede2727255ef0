//! Model-availability incidents end to end against the built binary: a
//! failing upstream opens an incident, a webhook receiver on 127.0.0.1 gets
//! it, an operator acknowledges it from the CLI while the server runs, the
//! upstream recovers and the incident resolves itself; the timeline, the
//! ledger records and the per-minute aggregates all say so.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::{Duration, SystemTime};

use common::{cli, eventually, post_chat, serve, write_config};
use custos_record::RecordBody;
use custos_testkit::{MockUpstream, Reply, create_key, temp_dir};
use serde_json::Value;

fn webhook_events(hook: &MockUpstream) -> Vec<Value> {
    hook.received().iter().map(|r| r.json()).collect()
}

fn has_event(hook: &MockUpstream, event: &str) -> Option<Value> {
    webhook_events(hook)
        .into_iter()
        .find(|v| v["type"] == event)
}

#[tokio::test]
async fn an_incident_opens_notifies_is_acknowledged_and_resolves_itself() {
    let upstream = MockUpstream::start(Reply::error(500, "upstream on fire")).await;
    let hook = MockUpstream::start(Reply::json(200, "{}")).await;
    let dir = temp_dir("incident-e2e");
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[providers.up]
kind = "openai"
base_url = "{up}"

[[models]]
name = "m"
targets = [{{ provider = "up" }}]

[health]
model_window = "10s"
buckets = 5

[health.breaker]
consecutive_failures = 1000
min_requests = 1000

[incidents]
evaluation_interval = "1s"
min_requests = 5
recovery_period = "2s"

[[incidents.webhooks]]
name = "ops"
url = "{hook}/hook"
initial_backoff = "100ms"

[timeseries]
flush_interval = "1s"
"#,
            up = upstream.base_url(),
            hook = hook.base_url(),
        ),
    );
    let key = create_key(common::BIN, dir.path(), "m");
    let mut p = serve(dir.path(), &["--config", &config], &[]);

    for _ in 0..10 {
        let resp = post_chat(&p, &key, r#"{"model":"m","messages":[]}"#).await;
        // The only target's 500 is passed through.
        assert_eq!(resp.status(), 500);
    }
    let opened = eventually(Duration::from_secs(15), || async {
        has_event(&hook, "incident.opened")
    })
    .await
    .unwrap_or_else(|| panic!("no incident.opened webhook; stderr:\n{}", p.stderr()));
    let id = opened["incident"]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("INC-"), "{opened}");
    assert_eq!(opened["incident"]["model"], "m");
    assert_eq!(opened["incident"]["status"], "open");
    assert_eq!(opened["incident"]["affected_keys"], 1, "{opened}");

    // The CLI reads the store directly, and acts through the running server.
    let out = cli(
        dir.path(),
        &[
            "incidents",
            "list",
            "--active",
            "--json",
            "--config",
            &config,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    let out = cli(dir.path(), &["incidents", "ack", &id, "--config", &config]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("acknowledged"));
    // A second acknowledgement is refused with the reason.
    let out = cli(dir.path(), &["incidents", "ack", &id, "--config", &config]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already acknowledged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        dir.path(),
        &[
            "incidents",
            "note",
            &id,
            "failing over to nothing",
            "--config",
            &config,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Recovery: successes until the window forgets the failures, then the
    // recovery period, then the incident resolves itself.
    upstream.set_default(Reply::chat("fine"));
    let resolved = eventually(Duration::from_secs(30), || async {
        let resp = post_chat(&p, &key, r#"{"model":"m","messages":[]}"#).await;
        assert_eq!(resp.status(), 200);
        has_event(&hook, "incident.resolved")
    })
    .await
    .unwrap_or_else(|| panic!("no incident.resolved webhook; stderr:\n{}", p.stderr()));
    assert_eq!(resolved["incident"]["id"], id.as_str());
    assert_eq!(resolved["incident"]["status"], "resolved");
    assert!(resolved["incident"]["time_to_resolve_ms"].as_u64().unwrap() > 0);

    let out = cli(
        dir.path(),
        &["incidents", "show", &id, "--json", "--config", &config],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let incident: Value = serde_json::from_slice(&out.stdout).unwrap();
    let events: Vec<&str> = incident["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"opened"), "{events:?}");
    assert_eq!(events.last(), Some(&"resolved"), "{events:?}");
    let pos = |e: &str| {
        events
            .iter()
            .position(|x| *x == e)
            .unwrap_or_else(|| panic!("{e} missing: {events:?}"))
    };
    assert!(pos("acknowledged") < pos("note"));
    assert!(pos("note") < pos("recovery_started"));
    assert!(pos("recovery_started") < pos("resolved"));
    let ack = &incident["timeline"][pos("acknowledged")];
    assert!(ack["actor"].as_str().unwrap().starts_with("cli:"), "{ack}");
    assert_eq!(incident["resolution"], "auto");
    assert!(incident["acknowledged_at"].is_string());

    // Every incident event reached the ledger; the operator's as an admin
    // record attributed to the CLI.
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(20)).success());
    let reader = custos_ledger::LedgerReader::open(&dir.path().join("ledger"));
    let mut seen = Vec::new();
    for stored in reader.records().unwrap() {
        let record = stored.unwrap().record;
        match &record.body {
            RecordBody::System(s) if s.event.starts_with("incident.") => {
                seen.push(s.event.clone());
            }
            RecordBody::Admin(a) if a.event.starts_with("incident.") => {
                assert_eq!(a.actor.via, custos_record::Via::Cli);
                assert_eq!(a.target.as_ref().unwrap().id, id);
                seen.push(format!("{} (admin)", a.event));
            }
            _ => {}
        }
    }
    for want in [
        "incident.opened",
        "incident.acknowledged (admin)",
        "incident.note (admin)",
        "incident.recovery_started",
        "incident.resolved",
    ] {
        assert!(seen.iter().any(|s| s == want), "{want} not in {seen:?}");
    }

    // Per-minute aggregates were written to the store.
    let out = cli(
        dir.path(),
        &["incidents", "stats", "--json", "--config", &config],
    );
    assert!(out.status.success());
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["count"], 1);
    assert_eq!(stats["time_to_acknowledge"]["count"], 1);
    let store = custos_store::Store::open(dir.path(), custos_store::StoreOptions::default())
        .await
        .unwrap();
    let minutes = store
        .minutes(
            Some("m"),
            SystemTime::now() - Duration::from_secs(600),
            SystemTime::now() + Duration::from_secs(120),
        )
        .await
        .unwrap();
    let errors: u64 = minutes.iter().map(|m| m.errors).sum();
    let total: u64 = minutes.iter().map(|m| m.requests).sum();
    assert_eq!(errors, 10, "{minutes:?}");
    assert!(total > 10, "{minutes:?}");
}

#[tokio::test]
async fn incident_commands_work_without_a_server_and_refuse_bad_input() {
    let dir = temp_dir("incident-offline");
    let config = write_config(
        dir.path(),
        "[providers.mock]\nkind = \"mock\"\n[[models]]\nname = \"m\"\ntargets = [{ provider = \"mock\" }]\n",
    );
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", &config]);
        cli(dir.path(), &all)
    };
    let out = run(&[
        "incidents",
        "declare",
        "--model",
        "m",
        "--severity",
        "sev2",
        "--title",
        "answers are wrong",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id = text.split(':').next().unwrap().trim().to_owned();
    assert!(id.starts_with("INC-"), "{text}");
    // Unknown model, bad severity, unknown incident, malformed postmortem.
    let out = run(&[
        "incidents",
        "declare",
        "--model",
        "nope",
        "--severity",
        "sev2",
        "--title",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a configured model"));
    let out = run(&["incidents", "severity", &id, "sev9", "--reason", "x"]);
    assert!(!out.status.success());
    let out = run(&["incidents", "ack", "INC-20000101-0001"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no incident"));
    let pm = dir.path().join("pm.json");
    std::fs::write(&pm, r#"{"summary": "x", "unknown_field": 1}"#).unwrap();
    let out = run(&[
        "incidents",
        "postmortem",
        &id,
        "--file",
        pm.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a postmortem document"));
    // The template is a valid document once filled in.
    let out = run(&["incidents", "postmortem", "--template"]);
    assert!(out.status.success());
    std::fs::write(&pm, &out.stdout).unwrap();
    let out = run(&[
        "incidents",
        "postmortem",
        &id,
        "--file",
        pm.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "incidents",
        "resolve",
        &id,
        "--note",
        "fixed the prompt template",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["incidents", "show", &id]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("resolved") && shown.contains("postmortem:     by"),
        "{shown}"
    );
    // The actions were recorded in the ledger by the CLI itself.
    let reader = custos_ledger::LedgerReader::open(&dir.path().join("ledger"));
    let events: Vec<String> = reader
        .records()
        .unwrap()
        .filter_map(|r| match r.unwrap().record.body {
            RecordBody::Admin(a) => Some(a.event),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [
            "incident.opened",
            "incident.postmortem_attached",
            "incident.resolved"
        ],
    );
    // The ledger still verifies after the CLI wrote to it.
    let out = cli(dir.path(), &["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn active_probes_open_a_dead_targets_circuit_without_traffic() {
    let dead = custos_testkit::closed_port().await;
    let dir = temp_dir("probes");
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[providers.up]
kind = "openai"
base_url = "http://{dead}/v1"

[[models]]
name = "m"
targets = [{{ provider = "up" }}]

[health.breaker]
consecutive_failures = 3

[health.probes]
enabled = true
interval = "1s"
"#
        ),
    );
    let p = serve(dir.path(), &["--config", &config], &[]);
    let client = reqwest::Client::new();
    let not_ready = eventually(Duration::from_secs(10), || async {
        let resp = client
            .get(format!("{}/readyz", p.admin_url()))
            .send()
            .await
            .unwrap();
        (resp.status() == 503).then_some(resp.json::<Value>().await.unwrap())
    })
    .await
    .unwrap_or_else(|| panic!("probes never opened the circuit; stderr:\n{}", p.stderr()));
    assert_eq!(
        not_ready["checks"]["models_available"]["ok"], false,
        "{not_ready}"
    );
}
