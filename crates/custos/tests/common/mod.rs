//! Helpers shared by the binary's end-to-end tests.

#![allow(
    clippy::unwrap_used,
    dead_code,
    reason = "test helpers; not every test file uses every helper"
)]

use custos_testkit::CustosProcess;

pub const BIN: &str = env!("CARGO_BIN_EXE_custos");

pub fn serve(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> CustosProcess {
    let dir = dir.to_str().unwrap();
    let mut args = vec!["--data-dir", dir];
    args.extend_from_slice(extra);
    CustosProcess::serve(BIN, &args, env)
}

/// POSTs a chat body to the gateway with `key`.
pub async fn post_chat(p: &CustosProcess, key: &str, body: impl Into<String>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", p.base_url()))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.into())
        .send()
        .await
        .unwrap()
}

pub fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("custos.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs `custos ARGS --data-dir DIR` and returns its output.
pub fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
