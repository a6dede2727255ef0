//! The audit ledger written by the real binary: every request recorded,
//! nothing acknowledged lost after `kill -9`, and the result verifies.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use custos_record::RecordBody;
use custos_testkit::{CustosProcess, create_key, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_custos");

fn serve(dir: &Path) -> CustosProcess {
    CustosProcess::serve(BIN, &["--data-dir", dir.to_str().unwrap()], &[])
}

/// Every inference record's request ID, and the record count.
fn recorded(dir: &Path) -> (HashSet<String>, Vec<RecordBody>) {
    let reader = custos_ledger::LedgerReader::open(&dir.join("ledger"));
    let mut ids = HashSet::new();
    let mut bodies = Vec::new();
    for r in reader.records().unwrap() {
        let r = r.unwrap();
        if let RecordBody::Inference(i) = &r.record.body {
            ids.insert(i.request_id.clone());
        }
        bodies.push(r.record.body);
    }
    (ids, bodies)
}

fn verifies(dir: &Path) {
    let report = custos_verify::verify_dir(&dir.join("ledger"), &[], None, &mut |_, _| {});
    assert!(
        report.problem.is_none(),
        "ledger does not verify: {:?}",
        report.problem
    );
    assert!(report.records_checked > 0);
}

async fn chat(client: &reqwest::Client, p: &CustosProcess, key: &str, id: &str) -> Option<u16> {
    client
        .post(format!("{}/chat/completions", p.base_url()))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(r#"{"model":"mock-chat","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn every_request_and_key_event_is_recorded_and_verifies() {
    let dir = temp_dir("ledger-basic");
    let mut p = serve(dir.path());
    let key = create_key(BIN, dir.path(), "mock-*");
    let client = reqwest::Client::new();
    assert_eq!(chat(&client, &p, &key, "ok-1").await, Some(200));
    assert_eq!(chat(&client, &p, "cst_live_bad", "bad-1").await, Some(401));
    let resp = client
        .get(format!("http://{}/v1/nope", p.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).success());

    let (ids, bodies) = recorded(dir.path());
    assert!(ids.contains("ok-1") && ids.contains("bad-1"), "{ids:?}");
    let events: Vec<&str> = bodies.iter().map(RecordBody::event).collect();
    assert_eq!(events.first(), Some(&"server.started"));
    assert_eq!(events.last(), Some(&"server.stopped"));
    assert!(events.contains(&"key.created"), "{events:?}");
    verifies(dir.path());
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_after_kill_9() {
    let dir = temp_dir("ledger-kill");
    let p = Arc::new(serve(dir.path()));
    let key = create_key(BIN, dir.path(), "mock-*");
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (p, key, client, stop) = (p.clone(), key.clone(), client.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            for i in 0..10_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("w{w}-{i}");
                match chat(&client, &p, &key, &id).await {
                    Some(200) => ok.push(id),
                    Some(_) => {}
                    None => break, // the server is gone
                }
            }
            ok
        }));
    }
    // Kill the server under load, once a good number of requests landed.
    let mut waited = 0;
    while recorded(dir.path()).0.len() < 100 && waited < 200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    p.signal("KILL");
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for w in workers {
        acknowledged.extend(w.await.unwrap());
    }
    // Wait until the killed process is really gone (it holds the lock).
    let mut p = Arc::try_unwrap(p).ok().expect("workers hold no handle");
    assert!(!p.wait_exit(Duration::from_secs(10)).success());
    assert!(
        acknowledged.len() >= 50,
        "only {} requests succeeded",
        acknowledged.len()
    );

    // Restart: the ledger recovers by itself and records that it did.
    let mut again = serve(dir.path());
    again.signal("TERM");
    assert!(again.wait_exit(Duration::from_secs(10)).success());
    let (ids, bodies) = recorded(dir.path());
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !ids.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged requests lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert!(
        bodies.iter().any(|b| b.event() == "ledger.recovered"),
        "no ledger.recovered record after kill -9"
    );
    verifies(dir.path());
}

#[tokio::test]
async fn the_signing_key_rotates_with_the_server_stopped_and_both_keys_verify() {
    let dir = temp_dir("ledger-rotate");
    let data = dir.path().to_str().unwrap();
    let mut p = serve(dir.path());
    let key = create_key(BIN, dir.path(), "mock-*");
    let client = reqwest::Client::new();
    assert_eq!(chat(&client, &p, &key, "before-rotation").await, Some(200));
    // Refused while the server holds the ledger.
    let busy = std::process::Command::new(BIN)
        .args(["ledger", "rotate-key", "--data-dir", data])
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("stop it first"));
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).success());

    let out = std::process::Command::new(BIN)
        .args(["ledger", "rotate-key", "--json", "--data-dir", data])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotation: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_vkey = rotation["vkey"].as_str().unwrap().to_owned();

    let mut p = serve(dir.path());
    assert_eq!(chat(&client, &p, &key, "after-rotation").await, Some(200));
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).success());

    let (_, bodies) = recorded(dir.path());
    assert!(bodies.iter().any(|b| b.event() == "ledger.key_rotated"));
    verifies(dir.path());
    let reader = custos_ledger::LedgerReader::open(&dir.path().join("ledger"));
    let history = reader.verifier_history().unwrap();
    assert_eq!(
        history.len(),
        2,
        "the old key stays listed for older checkpoints"
    );
    assert_eq!(history[1].verifier.to_string(), new_vkey);
}
