//! The built `custos` binary end to end: startup on the embedded default,
//! the two listeners, graceful shutdown, configuration errors, logs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Command;
use std::time::Duration;

use custos_testkit::{MockUpstream, Reply, create_key, temp_dir};

mod common;

use common::{BIN, post_chat, serve, write_config};

#[tokio::test]
async fn starts_on_the_embedded_default_and_serves_the_mock() {
    let dir = temp_dir("default");
    let p = serve(dir.path(), &[], &[]);
    let key = create_key(BIN, dir.path(), "mock-*");
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/healthz", p.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = client
        .get(format!("{}/readyz", p.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["ledger_writable"]["ok"], true, "{ready}");
    assert_eq!(ready["checks"]["state_store"]["ok"], true, "{ready}");
    let resp = post_chat(
        &p,
        &key,
        r#"{"model":"mock-chat","messages":[{"role":"user","content":"ping"}]}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert!(
        json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("ping")
    );
    assert!(json["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // State lives in the data dir, private to the user.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "data dir mode {mode:o}");
}

#[tokio::test]
async fn admin_routes_are_absent_from_the_gateway_port_and_vice_versa() {
    let dir = temp_dir("boundary");
    let p = serve(dir.path(), &[], &[]);
    let client = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = client
            .get(format!("http://{}{path}", p.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path} on the gateway port");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_url");
    }
    let resp = client
        .get(format!("{}/v1/models", p.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let metrics = client
        .get(format!("{}/metrics", p.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("custos_requests"));
    assert!(text.contains("custos_ledger_healthy 1"), "{text}");
    assert!(text.contains("custos_ledger_fsync_seconds_count"), "{text}");
    for family in [
        "custos_ledger_checkpoints_thinned_total 0",
        "custos_ledger_thin_failures_total 0",
        "custos_ledger_sink_failures_total 0",
    ] {
        assert!(text.contains(family), "{family} missing: {text}");
    }
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_stream_finish_then_exits_zero() {
    let dir = temp_dir("drain");
    let config = write_config(
        dir.path(),
        r#"
[server]
shutdown_grace = "20s"
[providers.mock]
kind = "mock"
latency = "0ms"
chunk_delay = "150ms"
chunks = 6
[[models]]
name = "slow"
targets = [{ provider = "mock" }]
"#,
    );
    let mut p = serve(dir.path(), &["--config", &config], &[]);
    let key = create_key(BIN, dir.path(), "slow");
    let client = reqwest::Client::new();
    let resp = post_chat(
        &p,
        &key,
        r#"{"model":"slow","stream":true,"messages":[{"role":"user","content":"a b c d e f"}]}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    // The stream is in flight: its headers are here, its body is not.
    p.signal("TERM");
    let text = resp.text().await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream cut short:\n{text}"
    );
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", p.stderr());
    assert!(p.stderr().contains("SIGTERM received"));
    // Nothing listens any more.
    assert!(
        client
            .get(format!("{}/models", p.base_url()))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let dir = temp_dir("grace");
    let config = write_config(
        dir.path(),
        r#"
[server]
shutdown_grace = "300ms"
[providers.mock]
kind = "mock"
chunk_delay = "1s"
chunks = 30
[[models]]
name = "slow"
targets = [{ provider = "mock" }]
"#,
    );
    let mut p = serve(dir.path(), &["--config", &config], &[]);
    let key = create_key(BIN, dir.path(), "slow");
    let resp = post_chat(&p, &key, r#"{"model":"slow","stream":true,"messages":[]}"#).await;
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    p.signal("INT");
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    // 30 chunks a second apart would take 30 s; the grace period cut it.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        p.stderr().contains("grace period elapsed"),
        "{}",
        p.stderr()
    );
}

#[test]
fn config_check_accepts_the_example_and_rejects_bad_files() {
    let ok = Command::new(BIN)
        .args([
            "config",
            "check",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../docs/custos.example.toml"
            ),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(": ok ("));

    let dir = temp_dir("check");
    let bad = write_config(
        dir.path(),
        "[server]\nlisten = \"nowhere\"\n[[models]]\nname = \"m\"\ntargets = [{ provider = \"ghost\" }]\n",
    );
    let out = Command::new(BIN)
        .args(["config", "check", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.listen: `nowhere` is not an address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("models[0].targets[0].provider: unknown provider `ghost`"),
        "{stderr}"
    );

    let missing = Command::new(BIN)
        .args(["config", "check", "/nonexistent/custos.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config file"));

    let default = Command::new(BIN)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&default.stdout).contains("[providers.mock]"));
}

#[test]
fn serve_refuses_an_invalid_environment_override() {
    let dir = temp_dir("badenv");
    let out = Command::new(BIN)
        .args(["serve", "--data-dir", dir.path().to_str().unwrap()])
        .env("CUSTOS_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.listen (from CUSTOS_LISTEN)"),
        "{stderr}"
    );
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = temp_dir("busy");
    let out = Command::new(BIN)
        .args(["serve", "--data-dir", dir.path().to_str().unwrap()])
        .env("CUSTOS_LISTEN", &addr)
        .env("CUSTOS_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (server.listen)")),
        "{stderr}"
    );
}

#[tokio::test]
async fn provider_credentials_come_from_the_environment_and_never_reach_logs() {
    let up = MockUpstream::start(Reply::chat("ok")).await;
    let dir = temp_dir("secret");
    let config = write_config(
        dir.path(),
        &format!(
            "[log]\nformat = \"json\"\nlevel = \"debug\"\n[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\n[[models]]\nname = \"m\"\ntargets = [{{ provider = \"up\" }}]\n",
            up.base_url()
        ),
    );
    // Without the variable, startup fails naming it.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--config",
            &config,
        ])
        .env("CUSTOS_LISTEN", "127.0.0.1:0")
        .env("CUSTOS_ADMIN_LISTEN", "127.0.0.1:0")
        .env_remove("TEST_UPSTREAM_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TEST_UPSTREAM_KEY"));

    let secret = "sk-test-DO-NOT-LOG-4f9a";
    let p = serve(
        dir.path(),
        &["--config", &config],
        &[("TEST_UPSTREAM_KEY", secret)],
    );
    let key = create_key(BIN, dir.path(), "m");
    let resp = post_chat(&p, &key, r#"{"model":"m","messages":[]}"#).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.received()[0].header("authorization"),
        Some(format!("Bearer {secret}").as_str())
    );
    drop(p);
    // JSON logs: every line parses, and the key is nowhere.
    let dir2 = temp_dir("secret2");
    let p = serve(
        dir2.path(),
        &["--config", &config],
        &[("TEST_UPSTREAM_KEY", secret)],
    );
    let key = create_key(BIN, dir2.path(), "m");
    let _ = post_chat(&p, &key, r#"{"model":"m","messages":[]}"#).await;
    let stderr = p.stderr();
    assert!(!stderr.contains(secret));
    assert!(
        !stderr.contains(&key),
        "the client's API key reached the logs"
    );
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

#[tokio::test]
async fn readyz_reports_a_model_whose_targets_are_all_open() {
    let dead = custos_testkit::closed_port().await;
    let dir = temp_dir("readyz-open");
    let config = write_config(
        dir.path(),
        &format!(
            "[providers.up]\nkind = \"openai\"\nbase_url = \"http://{dead}/v1\"\n[[models]]\nname = \"m\"\ntargets = [{{ provider = \"up\" }}]\n"
        ),
    );
    let p = serve(dir.path(), &["--config", &config], &[]);
    let key = create_key(BIN, dir.path(), "m");
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", p.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // Five connect failures in a row open the only target's breaker.
    for _ in 0..5 {
        let resp = post_chat(&p, &key, r#"{"model":"m","messages":[]}"#).await;
        assert_eq!(resp.status(), 502);
    }
    let ready = client
        .get(format!("{}/readyz", p.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["models_available"]["ok"], false, "{body}");
    assert!(
        body["failed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "models_available")
    );
    // The gauge is refreshed every second; poll for it, bounded.
    let want = r#"custos_circuit_breaker_state{provider="up",model="m"} 2"#;
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = client
            .get(format!("{}/metrics", p.admin_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains(want), "{metrics}");
}

/// Whether this process runs as root, which ignores permission bits.
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test]
async fn readyz_flips_when_the_ledger_directory_becomes_unwritable() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir("readyz-ledger");
    // Root ignores permission bits, so as root the server runs as `nobody`
    // (through a wrapper script), on a data directory it owns.
    let bin = if running_as_root() {
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success());
        let wrapper = dir.path().join("custos-as-nobody");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {} \"$@\"\n",
                BIN
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        wrapper.to_str().unwrap().to_owned()
    } else {
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        BIN.to_owned()
    };
    let data = dir.path().join("data");
    let p =
        custos_testkit::CustosProcess::serve(&bin, &["--data-dir", data.to_str().unwrap()], &[]);
    let client = reqwest::Client::new();
    let readyz = || async {
        let resp = client
            .get(format!("{}/readyz", p.admin_url()))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().await.unwrap())
    };
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");

    let ledger = data.join("ledger");
    std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o500)).unwrap();
    let (status, body) = readyz().await;
    std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["ledger_writable"]["ok"], false, "{body}");
    assert!(
        body["checks"]["ledger_writable"]["error"]
            .as_str()
            .unwrap()
            .contains("not writable"),
        "{body}"
    );
    assert!(
        body["failed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "ledger_writable")
    );
    // Writable again: ready again.
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
}
