//! `custos evidence` end to end: the real binary, a real SQLite store and
//! ledger written by a real server, then the pack checked, tampered with
//! and tied to the ledger.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{BIN, cli, post_chat, serve};
use custos_testkit::{create_key, temp_dir};
use serde_json::Value;

fn day(offset_days: i64) -> String {
    let now = SystemTime::now();
    let d = Duration::from_secs(offset_days.unsigned_abs() * 86_400);
    let t = if offset_days < 0 { now - d } else { now + d };
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

fn all_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(all_bytes(&entry.path()));
        } else {
            out.push((
                entry.path().display().to_string(),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    out
}

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs a server on `dir` for `requests` chat requests with `secret`, then stops it.
async fn run_traffic(dir: &Path, secret: &str, requests: usize) {
    let mut p = serve(dir, &[], &[]);
    for _ in 0..requests {
        let resp = post_chat(
            &p,
            secret,
            r#"{"model":"mock-chat","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    p.signal("TERM");
    assert!(
        p.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        p.stderr()
    );
}

#[tokio::test]
async fn evidence_pack_end_to_end() {
    let dir = temp_dir("evidence-e2e");
    let data = dir.path();
    let secret = create_key(BIN, data, "mock-chat");
    run_traffic(data, &secret, 4).await;

    let out = data.join("pack");
    let out_s = out.to_str().unwrap();
    let (from, to) = (day(-1), day(2));
    let o = cli(
        data,
        &[
            "evidence", "--from", &from, "--to", &to, "--out", out_s, "--zip",
        ],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("verification: intact"), "{stdout}");
    let zip = data.join("pack.zip");
    assert!(
        stdout.contains(&format!("wrote {}", zip.display())),
        "{stdout}"
    );

    // The pack holds what happened, and never a secret.
    let inv: Value =
        serde_json::from_slice(&std::fs::read(out.join("tables/key-inventory.json")).unwrap())
            .unwrap();
    assert_eq!(inv.as_array().unwrap().len(), 1);
    let lifecycle: Value =
        serde_json::from_slice(&std::fs::read(out.join("tables/key-lifecycle.json")).unwrap())
            .unwrap();
    assert_eq!(lifecycle[0]["event"], "key.created");
    assert_eq!(lifecycle[0]["via"], "cli");
    let cap: Value =
        serde_json::from_slice(&std::fs::read(out.join("tables/capacity.json")).unwrap()).unwrap();
    let requests: u64 = cap
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 4);
    let secret_tail = &secret[secret.len() - 16..];
    for (path, bytes) in all_bytes(&out) {
        let s = String::from_utf8_lossy(&bytes);
        assert!(!s.contains(secret_tail), "{path} contains the key secret");
        assert!(
            !s.contains("PRIVATE+KEY"),
            "{path} contains the signing key"
        );
    }

    // Intact, signed, not yet in the ledger (the outbox drains at the next start).
    let o = cli(data, &["evidence", "verify", out_s]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("pack: intact") && stdout.contains("signature: ok"),
        "{stdout}"
    );
    assert!(stdout.contains("NOT found"), "{stdout}");
    run_traffic(data, &secret, 0).await;
    let o = cli(data, &["evidence", "verify", out_s]);
    let (stdout, _) = text(&o);
    assert!(
        o.status.success() && stdout.contains("manifest hash recorded at seq"),
        "{stdout}"
    );

    // The zip verifies too.
    let o = cli(data, &["evidence", "verify", zip.to_str().unwrap()]);
    assert!(
        o.status.success() && text(&o).0.contains("pack: intact"),
        "{:?}",
        text(&o)
    );

    // With the public key given explicitly.
    let vkeys = data.join("vkeys.txt");
    std::fs::copy(data.join("ledger/keys/verifiers.txt"), &vkeys).unwrap();
    let o = cli(
        data,
        &[
            "evidence",
            "verify",
            out_s,
            "--pubkey",
            vkeys.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));

    // Tampering with one file fails verification and names the file.
    let csv = out.join("tables/capacity.csv");
    let mut bytes = std::fs::read(&csv).unwrap();
    bytes.extend_from_slice(b"2099-01-01,mock-chat,1000000,0,0,0,1,1,0\r\n");
    std::fs::write(&csv, bytes).unwrap();
    let o = cli(data, &["evidence", "verify", out_s]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("problem: tables/capacity.csv: SHA-256"),
        "{stdout}"
    );
    assert!(stderr.contains("FAILED verification"), "{stderr}");
}

#[test]
fn evidence_rejects_bad_input_clearly() {
    let dir = temp_dir("evidence-bad");
    let data = dir.path();
    let _ = create_key(BIN, data, "mock-chat");
    let nonempty = data.join("nonempty");
    std::fs::create_dir_all(&nonempty).unwrap();
    std::fs::write(nonempty.join("x"), b"x").unwrap();
    let fresh = data.join("fresh");
    let fresh = fresh.to_str().unwrap();
    for (args, want) in [
        (
            vec!["--from", "2026-01-02", "--to", "2026-01-01", "--out", fresh],
            "must be after --from",
        ),
        (
            vec!["--from", "2026-01-01", "--to", "2026-01-01", "--out", fresh],
            "must be after --from",
        ),
        (
            vec!["--from", "2026-02-30", "--to", "2026-03-01", "--out", fresh],
            "--from \"2026-02-30\"",
        ),
        (
            vec!["--from", "last week", "--to", "2026-03-01", "--out", fresh],
            "want YYYY-MM-DD",
        ),
        (
            vec![
                "--from",
                "2026-01-01",
                "--to",
                "2026-03-01",
                "--out",
                nonempty.to_str().unwrap(),
            ],
            "exists and is not empty",
        ),
        (vec!["--from", "2026-01-01", "--to", "2026-03-01"], "--out"),
    ] {
        let mut full = vec!["evidence"];
        full.extend(args.iter().copied());
        let o = cli(data, &full);
        let (_, stderr) = text(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    assert!(
        !Path::new(fresh).exists(),
        "a failed run left a pack behind"
    );
    // A wrong data dir is not silently an empty store.
    let o = cli(
        &data.join("nowhere"),
        &[
            "evidence",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
            "--out",
            fresh,
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).1.contains("no audit ledger"), "{:?}", text(&o));
}
