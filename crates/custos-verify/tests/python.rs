//! Cross-checks with the independent Python verifier in
//! `tools/verify_ledger.py`: it must accept what custos-ledger writes and
//! the golden ledger, and reject tampered copies. Skipped, with a message,
//! when `python3` with the `cryptography` package is not installed (CI
//! installs it).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "tests fail loudly and say why they skip"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/verify_ledger.py")
}

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!(
            "SKIPPED: python3 with the `cryptography` package is not available; pip install cryptography"
        );
    }
    ok
}

fn run(dir: &Path, key: Option<&str>, trusted: Option<&Path>) -> (i32, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(script()).arg(dir);
    if let Some(key) = key {
        cmd.args(["--key", key]);
    }
    if let Some(t) = trusted {
        cmd.arg("--trusted-checkpoint").arg(t);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn python_verifier_accepts_real_ledgers_and_rejects_tampering() {
    if !python_ready() {
        return;
    }
    let tmp = TempDir::new("python");
    let dir = tmp.0.join("ledger");
    let key = build(&dir, 60).to_vkey();
    let (code, out) = run(&dir, Some(&key), None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: ledger intact"), "{out}");

    let kept = tmp.0.join("kept.note");
    let (size, note) = custos_ledger::LedgerReader::open(&dir)
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    std::fs::write(&kept, &note).unwrap();
    assert_eq!(run(&dir, Some(&key), Some(&kept)).0, 0);

    type Tamper = fn(&Path);
    let cases: [(&str, Tamper, &str); 5] = [
        (
            "modified",
            |d| {
                let seg = &segments(d)[0];
                let text = std::fs::read_to_string(seg).unwrap();
                std::fs::write(
                    seg,
                    text.replace("\"latency_us\":1003", "\"latency_us\":1004"),
                )
                .unwrap();
            },
            "root does not match",
        ),
        (
            "deleted",
            |d| {
                let seg = &segments(d)[0];
                let mut l = lines(seg);
                l.remove(2);
                write_lines(seg, &l);
            },
            "record has seq 3",
        ),
        (
            "segment",
            |d| std::fs::remove_file(&segments(d)[1]).unwrap(),
            "segment starts at",
        ),
        (
            "signature",
            |d| {
                let (size, note) = custos_ledger::LedgerReader::open(d)
                    .latest_checkpoint()
                    .unwrap()
                    .unwrap();
                let forged = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
                std::fs::write(d.join(format!("checkpoints/{size:020}.note")), forged).unwrap();
            },
            "signature does not verify",
        ),
        (
            "truncated",
            |d| {
                let seg = segments(d).pop().unwrap();
                let mut l = lines(&seg);
                l.pop();
                write_lines(&seg, &l);
            },
            "truncated",
        ),
    ];
    for (name, tamper, want) in cases {
        let copy = tmp.0.join(name);
        copy_dir(&dir, &copy);
        tamper(&copy);
        let (code, out) = run(&copy, Some(&key), None);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains(want), "{name}: {out}");
        // The Rust verifier agrees.
        assert!(
            !verify(
                &copy,
                &[custos_note::Verifier::from_vkey(&key).unwrap()],
                None
            )
            .is_intact()
        );
    }

    // Rolled back together with its checkpoints: only the kept checkpoint tells.
    let old = tmp.0.join("old");
    copy_dir(&dir, &old);
    let last = segments(&old).pop().unwrap();
    let cut: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    std::fs::remove_file(&last).unwrap();
    for s in custos_ledger::LedgerReader::open(&old)
        .checkpoint_sizes()
        .unwrap()
    {
        if s > cut {
            for ext in ["note", "frontier"] {
                let _ = std::fs::remove_file(old.join(format!("checkpoints/{s:020}.{ext}")));
            }
        }
    }
    assert_eq!(run(&old, Some(&key), None).0, 0);
    let (code, out) = run(&old, Some(&key), Some(&kept));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("covers {size} records")), "{out}");
}

#[test]
fn python_verifier_accepts_the_golden_ledger_with_either_key() {
    if !python_ready() {
        return;
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/golden-ledger");
    let history = std::fs::read_to_string(golden.join("keys/verifiers.txt")).unwrap();
    for line in history.lines() {
        let key = line.split_once(' ').unwrap().1;
        let (code, out) = run(&golden, Some(key), None);
        assert_eq!(code, 0, "{key}: {out}");
    }
}

#[test]
fn python_verifier_accepts_a_thinned_ledger() {
    if !python_ready() {
        return;
    }
    let tmp = TempDir::new("python-thinned");
    let dir = tmp.0.join("ledger");
    let key = build(&dir, 60).to_vkey();
    assert!(age_and_thin(&dir) > 0);
    let (code, out) = run(&dir, Some(&key), None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: ledger intact"), "{out}");
}
