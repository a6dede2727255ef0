//! The evidence pack's HTML report in headless chromium: it renders and
//! prints without console errors, shows its charts and tables, and a
//! screenshot is kept for a look at the layout.
//!
//! Needs `chromium` (Debian package). Without it the test skips loudly,
//! unless `CUSTOS_REQUIRE_CHROMIUM` is set (as `scripts/test` does), in
//! which case it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{BIN, cli, post_chat, serve};
use custos_testkit::{create_key, temp_dir};

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn headless(chromium: &Path, profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .unwrap()
}

/// Console errors and uncaught exceptions in chromium's log.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Refused to"))
        .collect()
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[tokio::test]
async fn evidence_report_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CUSTOS_REQUIRE_CHROMIUM").is_none(),
            "CUSTOS_REQUIRE_CHROMIUM is set but chromium is not installed"
        );
        eprintln!(
            "\n\n*** SKIPPED evidence_report_renders_in_headless_chromium: chromium not installed (apt-get install chromium) ***\n\n"
        );
        return;
    };
    let dir = temp_dir("evidence-browser");
    let data = dir.path();
    let secret = create_key(BIN, data, "mock-chat");
    let mut p = serve(data, &[], &[]);
    for _ in 0..3 {
        let body = r#"{"model":"mock-chat","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(post_chat(&p, &secret, body).await.status(), 200);
    }
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(20)).success());
    let now = SystemTime::now();
    let day = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned();
    let from = day(now - Duration::from_secs(6 * 86_400));
    let to = day(now + Duration::from_secs(86_400));
    let out = data.join("pack");
    let o = cli(
        data,
        &[
            "evidence",
            "--from",
            &from,
            "--to",
            &to,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let url = format!("file://{}", out.join("report.html").display());
    let profile = data.join("chromium-profile");

    // The DOM as rendered: title, every section, three charts.
    let o = headless(&chromium, &profile, &["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {log}");
    assert!(
        dom.contains("Custos SOC 2 evidence pack"),
        "no title in: {dom:.500}"
    );
    for id in [
        "control-matrix",
        "integrity",
        "key-inventory",
        "key-lifecycle",
        "console-users",
        "access-review",
        "retention",
        "incidents",
        "capacity",
        "config-changes",
        "policies",
        "events",
    ] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "section {id} missing"
        );
    }
    assert_eq!(dom.matches("<svg").count(), 3, "three charts expected");
    assert!(dom.contains("INTACT"));
    assert!(
        console_errors(&log).is_empty(),
        "console errors: {:?}",
        console_errors(&log)
    );

    // A screenshot, kept for a human look at the layout.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("evidence-report.png");
    let _ = std::fs::remove_file(&shot);
    let o = headless(
        &chromium,
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
            &url,
        ],
    );
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {log}");
    assert!(
        console_errors(&log).is_empty(),
        "console errors: {:?}",
        console_errors(&log)
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(png_size(&png), (1280, 2000));
    assert!(
        png.len() > 20_000,
        "screenshot suspiciously small ({} bytes)",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());

    // It prints: a multi-page PDF.
    let pdf = data.join("report.pdf");
    let o = headless(
        &chromium,
        &profile,
        &[
            &format!("--print-to-pdf={}", pdf.display()),
            "--no-pdf-header-footer",
            &url,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&pdf).unwrap();
    assert!(bytes.starts_with(b"%PDF"));
    let pages = String::from_utf8_lossy(&bytes)
        .matches("/Type /Page\n")
        .count()
        + String::from_utf8_lossy(&bytes)
            .matches("/Type /Page>>")
            .count()
        + String::from_utf8_lossy(&bytes)
            .matches("/Type /Page ")
            .count();
    eprintln!("pdf: {} bytes, ~{pages} page objects", bytes.len());
    let pdf_keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("evidence-report.pdf");
    let _ = std::fs::copy(&pdf, pdf_keep);
    let html_keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("evidence-report.html");
    let _ = std::fs::copy(out.join("report.html"), html_keep);
}
