//! `custos audit …` against a real ledger: records written with
//! `custos_ledger::Ledger` into `<tmp>/ledger` (three days of requests,
//! admin and system records, many checkpoints and segments, a key
//! rotation), then the built binary run on it, intact and tampered.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, UNIX_EPOCH};

use custos_ledger::{Ledger, LedgerOptions};
use custos_record::{
    Admin, AdminActor, Client, Inference, KeyActor, RecordBody, System, Target, Usage, UsageSource,
    Via,
};
use custos_testkit::temp_dir;
use custos_types::ManualClock;
use rand::SeedableRng;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_custos");
const ORIGIN: &str = "custos.test/audit-cli";
/// 2025-01-01T00:00:00Z.
const DAY0: u64 = 1_735_689_600;
const DAY: u64 = 86_400;

// ------------------------------------------------------------ fixture

/// A `custos_testkit::temp_dir`, removed when dropped.
struct Dir {
    _guard: Box<dyn std::any::Any>,
    path: PathBuf,
}

impl Dir {
    fn new(label: &str) -> Self {
        let dir = temp_dir(label);
        let path = dir.path().to_path_buf();
        Dir {
            _guard: Box::new(dir),
            path,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// What the fixture wrote, to compute expected answers from.
#[derive(Debug, Clone)]
struct Written {
    seq: u64,
    day: u64,
    kind: &'static str,
    request_id: Option<String>,
    key: Option<String>,
    model: Option<String>,
    status: Option<u16>,
}

struct Fixture {
    _tmp: Dir,
    data: PathBuf,
    written: Vec<Written>,
}

impl Fixture {
    fn ledger(&self) -> PathBuf {
        self.data.join("ledger")
    }

    fn size(&self) -> u64 {
        self.written.len() as u64
    }

    fn seq_of(&self, request_id: &str) -> u64 {
        self.written
            .iter()
            .find(|w| w.request_id.as_deref() == Some(request_id))
            .unwrap()
            .seq
    }
}

fn request(i: u64, request_id: &str, key: &str, model: &str, status: u16) -> RecordBody {
    RecordBody::Inference(Inference {
        event: "request".into(),
        request_id: request_id.into(),
        actor: Some(KeyActor {
            key_id: Some(key.into()),
            key_name: Some(format!("{key}-name")),
            owner: Some("alice".into()),
            team: Some("platform".into()),
        }),
        client: Some(Client {
            ip: Some("192.0.2.7".parse().unwrap()),
            // Client-controlled text that a spreadsheet would evaluate.
            user_agent: Some(if i == 3 {
                "=HYPERLINK(\"x\")".into()
            } else {
                "curl/8.5.0, like \"x\"".into()
            }),
        }),
        endpoint: "chat.completions".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model_requested: Some(model.into()),
        model_served: Some(format!("{model}-2024")),
        provider: Some("openai".into()),
        attempts: Vec::new(),
        upstream_request_id: Some(format!("up-{i}")),
        status,
        error_code: (status >= 400).then(|| "rate_limited".into()),
        usage: (status < 400).then_some(Usage {
            completion_tokens: 10 + i,
            prompt_tokens: 100,
            source: UsageSource::Upstream,
            total_tokens: 110 + i,
        }),
        stream: i.is_multiple_of(2),
        latency_us: 1_000 + i,
        ttfb_us: Some(500 + i),
    })
}

fn admin(action: &str, event: &str, key: &str) -> RecordBody {
    RecordBody::Admin(Admin {
        event: event.into(),
        actor: AdminActor {
            ip: Some("198.51.100.4".parse().unwrap()),
            mfa: true,
            role: "admin".into(),
            user: "bob".into(),
            via: Via::Cli,
        },
        action: action.into(),
        target: Some(Target {
            id: key.into(),
            kind: "key".into(),
        }),
        changes: BTreeMap::new(),
        reason: Some("routine".into()),
    })
}

fn options() -> LedgerOptions {
    let mut o = LedgerOptions::new(ORIGIN);
    o.rng = Box::new(rand::rngs::StdRng::seed_from_u64(11));
    o.checkpoint_every_records = 1_000_000;
    o.checkpoint_every = Duration::from_secs(86_400);
    o.segment_max_bytes = 4096;
    o
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Three days of records, a checkpoint every 5 records, small segments,
/// and a key rotation on day 3.
fn fixture() -> Fixture {
    let tmp = Dir::new("audit-cli");
    let data = tmp.path().to_path_buf();
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(DAY0)));
    let mut written = Vec::new();
    rt().block_on(async {
        let (ledger, _) = Ledger::open(&data.join("ledger"), options(), clock.clone()).unwrap();
        let mut n = 0u64;
        for day in 0..3u64 {
            clock.set(UNIX_EPOCH + Duration::from_secs(DAY0 + day * DAY + 3600));
            let mut bodies: Vec<(RecordBody, Written)> = Vec::new();
            let sys = Written {
                seq: 0,
                day,
                kind: "system",
                request_id: None,
                key: None,
                model: None,
                status: None,
            };
            bodies.push((
                RecordBody::System(System::new("server.started").with("version", "0.1.0")),
                sys.clone(),
            ));
            for i in 0..12u64 {
                let k = day * 100 + i;
                let key = if i % 3 == 0 { "key_b" } else { "key_a" };
                let model = if i % 2 == 0 { "gpt-4o" } else { "llama-3" };
                let status = match i % 4 {
                    3 => 429,
                    _ if i == 10 => 502,
                    _ => 200,
                };
                // A client reuses one request ID on day 2.
                let rid = if day == 1 && (i == 4 || i == 8) {
                    "dup-id".to_owned()
                } else {
                    format!("req-{k:04}")
                };
                bodies.push((
                    request(k, &rid, key, model, status),
                    Written {
                        seq: 0,
                        day,
                        kind: "inference",
                        request_id: Some(rid),
                        key: Some(key.into()),
                        model: Some(model.into()),
                        status: Some(status),
                    },
                ));
                if i == 6 {
                    bodies.push((
                        admin("update", "key.updated", "key_a"),
                        Written {
                            kind: "admin",
                            key: Some("key_a".into()),
                            ..sys.clone()
                        },
                    ));
                }
            }
            for (body, mut w) in bodies {
                let done = ledger.append(body).unwrap().await.unwrap();
                assert_eq!(done.seq, n);
                w.seq = n;
                written.push(w);
                n += 1;
                clock.advance(Duration::from_secs(600));
                if n.is_multiple_of(5) {
                    ledger.checkpoint().await.unwrap();
                }
            }
            if day == 2 {
                let rot = ledger.rotate_signing_key().await.unwrap();
                assert_eq!(rot.record_seq, n);
                written.push(Written {
                    seq: n,
                    day,
                    kind: "system",
                    request_id: None,
                    key: None,
                    model: None,
                    status: None,
                });
                n += 1;
                for i in 0..3u64 {
                    let rid = format!("late-{i}");
                    ledger
                        .append(request(900 + i, &rid, "key_a", "gpt-4o", 200))
                        .unwrap()
                        .await
                        .unwrap();
                    written.push(Written {
                        seq: n,
                        day,
                        kind: "inference",
                        request_id: Some(rid),
                        key: Some("key_a".into()),
                        model: Some("gpt-4o".into()),
                        status: Some(200),
                    });
                    n += 1;
                    clock.advance(Duration::from_secs(600));
                }
            }
        }
        ledger.shutdown().await.unwrap();
    });
    // The reader never needs the lock file or the private key.
    let _ = fs::remove_file(data.join("ledger/LOCK"));
    Fixture {
        _tmp: tmp,
        data,
        written,
    }
}

// ------------------------------------------------------------ running

fn audit(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("CUSTOS_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects exit 0; returns stdout.
fn ok(data: &Path, args: &[&str]) -> String {
    let o = audit(data, args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "custos audit {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs and expects `code` with exactly one line on stderr; returns the
/// output.
fn fails(data: &Path, args: &[&str], code: i32) -> Output {
    let o = audit(data, args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "custos audit {args:?}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(
        stderr(&o).trim().lines().count(),
        1,
        "one error line expected: {}",
        stderr(&o)
    );
    o
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify_json(data: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["verify", "--json"];
    args.extend_from_slice(extra);
    let o = audit(data, &args);
    (o.status.code(), serde_json::from_slice(&o.stdout).unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of the fixture's data directory to tamper with.
fn tampered_copy(f: &Fixture, label: &str) -> Dir {
    let tmp = Dir::new(label);
    copy_dir(&f.data, tmp.path());
    tmp
}

/// The segment holding `seq`, and its lines.
fn segment_of(ledger: &Path, seq: u64) -> (PathBuf, String, Vec<String>) {
    let mut segs: Vec<PathBuf> = fs::read_dir(ledger.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let path = segs
        .iter()
        .rev()
        .find(|p| {
            let first: u64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            first <= seq
        })
        .unwrap()
        .clone();
    let name = format!("segments/{}", path.file_name().unwrap().to_str().unwrap());
    let lines = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (path, name, lines)
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

fn first_vkey_file(f: &Fixture, dir: &Path) -> PathBuf {
    let all = ok(&f.data, &["pubkey", "--all"]);
    let first = all.lines().next().unwrap().split_once(' ').unwrap().1;
    let path = dir.join("first.vkey");
    fs::write(&path, format!("{first}\n")).unwrap();
    path
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    out
}

// -------------------------------------------------------------- verify

#[test]
fn verify_an_intact_ledger_with_and_without_the_key() {
    let f = fixture();
    let human = ok(&f.data, &["verify"]);
    assert!(human.contains("INTACT"), "{human}");
    assert!(
        human.contains(&format!("tree size     {}", f.size())),
        "{human}"
    );
    assert!(human.contains("root"), "{human}");

    let (code, report) = verify_json(&f.data, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(report["intact"], true);
    assert_eq!(report["tree_size"], f.size());
    assert_eq!(report["records_checked"], f.size());
    assert_eq!(report["key_source"], "ledger_directory");
    assert_eq!(report["keys"].as_array().unwrap().len(), 2, "one rotation");
    assert!(report["segments"].as_u64().unwrap() > 3, "{report}");
    assert!(report["checkpoints_checked"].as_u64().unwrap() > 5);
    assert!(report["problem"].is_null());
    assert_eq!(report["root_size"], f.size());

    // Either key is enough: the rotation record links them.
    let keys = Dir::new("audit-keys");
    let first = first_vkey_file(&f, keys.path());
    let current = keys.path().join("current.vkey");
    fs::write(&current, ok(&f.data, &["pubkey"])).unwrap();
    for key in [&first, &current] {
        let (code, report) = verify_json(&f.data, &["--pubkey", key.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{report}");
        assert_eq!(report["key_source"], "given");
    }
    assert_eq!(ok(&f.data, &["pubkey", "--all"]).lines().count(), 2);
}

#[test]
fn verify_names_the_segment_and_seq_of_a_modified_byte() {
    let f = fixture();
    let copy = tampered_copy(&f, "audit-byte");
    let ledger = copy.path().join("ledger");
    let seq = f.seq_of("req-0105");
    let (path, name, mut lines) = segment_of(&ledger, seq);
    let idx = lines
        .iter()
        .position(|l| l.contains("\"req-0105\""))
        .unwrap();
    // One byte: `"v":1` becomes `"v":2`, which no longer decodes.
    lines[idx] = lines[idx].replace("\"v\":1", "\"v\":2");
    write_lines(&path, &lines);

    let (code, report) = verify_json(copy.path(), &[]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["intact"], false);
    assert_eq!(report["problem"]["file"], name);
    assert_eq!(report["problem"]["seq"], seq);
    assert_eq!(report["problem"]["kind"], "bad_record");

    let o = fails(copy.path(), &["verify"], 1);
    let out = stdout(&o);
    assert!(out.contains("TAMPERED"), "{out}");
    assert!(
        out.contains(&name) && out.contains(&format!("at seq      {seq}")),
        "{out}"
    );
    assert!(stderr(&o).contains(&format!("seq {seq}")), "{}", stderr(&o));
}

#[test]
fn verify_catches_a_canonical_edit_at_the_covering_checkpoint() {
    let f = fixture();
    let copy = tampered_copy(&f, "audit-edit");
    let ledger = copy.path().join("ledger");
    let seq = f.seq_of("req-0002");
    let (path, _, mut lines) = segment_of(&ledger, seq);
    let idx = lines
        .iter()
        .position(|l| l.contains("\"req-0002\""))
        .unwrap();
    // Still a canonical record, so only the signed root can tell.
    assert!(lines[idx].contains("\"status\":200"));
    lines[idx] = lines[idx].replace("\"status\":200", "\"status\":201");
    write_lines(&path, &lines);
    let (code, report) = verify_json(copy.path(), &[]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["problem"]["kind"], "root_mismatch");
    let file = report["problem"]["file"].as_str().unwrap();
    assert!(file.starts_with("checkpoints/"), "{file}");
    // The first checkpoint covering seq 2 is at size 5.
    assert_eq!(file, format!("checkpoints/{:020}.note", 5));
}

#[test]
fn verify_catches_a_deleted_line() {
    let f = fixture();
    let copy = tampered_copy(&f, "audit-delete");
    let ledger = copy.path().join("ledger");
    let seq = f.seq_of("req-0107");
    let (path, name, mut lines) = segment_of(&ledger, seq);
    let idx = lines
        .iter()
        .position(|l| l.contains("\"req-0107\""))
        .unwrap();
    lines.remove(idx);
    write_lines(&path, &lines);
    let (code, report) = verify_json(copy.path(), &[]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["problem"]["kind"], "seq_mismatch");
    assert_eq!(report["problem"]["file"], name);
    assert_eq!(report["problem"]["seq"], seq);
}

#[test]
fn verify_catches_a_truncated_tail_alone_and_with_its_checkpoints_only_with_a_kept_checkpoint() {
    let f = fixture();
    let kept_dir = Dir::new("audit-kept");
    let kept = kept_dir.path().join("kept.note");
    fs::write(&kept, ok(&f.data, &["checkpoint"])).unwrap();
    // The kept checkpoint is signed by the current key (after the
    // rotation): the auditor holds every key the log used.
    let keys = Dir::new("audit-keys");
    let key = keys.path().join("all.vkey");
    fs::write(&key, ok(&f.data, &["pubkey", "--all"])).unwrap();

    let copy = tampered_copy(&f, "audit-trunc");
    let ledger = copy.path().join("ledger");
    let (path, _, mut lines) = segment_of(&ledger, f.size() - 1);
    lines.pop();
    write_lines(&path, &lines);
    let new_size = f.size() - 1;

    // Checkpoints still cover the cut records: caught from the files alone.
    let (code, report) = verify_json(copy.path(), &[]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["problem"]["kind"], "truncated_tail");

    // Remove the checkpoints (and snapshots) beyond the cut: the directory
    // alone now looks intact...
    for entry in fs::read_dir(ledger.join("checkpoints")).unwrap() {
        let p = entry.unwrap().path();
        let size: u64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        if size > new_size {
            fs::remove_file(p).unwrap();
        }
    }
    let (code, report) = verify_json(copy.path(), &["--pubkey", key.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{report}");
    // ...but not against the checkpoint the auditor kept.
    let (code, report) = verify_json(
        copy.path(),
        &[
            "--pubkey",
            key.to_str().unwrap(),
            "--trusted-checkpoint",
            kept.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["problem"]["kind"], "rolled_back");
    fails(
        copy.path(),
        &["verify", "--trusted-checkpoint", kept.to_str().unwrap()],
        1,
    );

    // The intact ledger contains the kept checkpoint.
    let (code, _) = verify_json(&f.data, &["--trusted-checkpoint", kept.to_str().unwrap()]);
    assert_eq!(code, Some(0));
}

#[test]
fn verify_with_another_key_fails_and_bad_inputs_exit_2() {
    let f = fixture();
    let dir = Dir::new("audit-other");
    let stranger = custos_note::Signer::generate(ORIGIN, &mut rand::rngs::OsRng)
        .unwrap()
        .verifier();
    let other = dir.path().join("other.vkey");
    fs::write(&other, format!("{stranger}\n")).unwrap();
    let (code, report) = verify_json(&f.data, &["--pubkey", other.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["problem"]["kind"], "untrusted_key");
    fails(&f.data, &["verify", "--pubkey", other.to_str().unwrap()], 1);

    // Could not check: a malformed key file, a missing file, no ledger.
    let garbage = dir.path().join("garbage.vkey");
    fs::write(&garbage, "not a key\n").unwrap();
    fails(
        &f.data,
        &["verify", "--pubkey", garbage.to_str().unwrap()],
        2,
    );
    fails(&f.data, &["verify", "--pubkey", "/nonexistent/key"], 2);
    fails(dir.path(), &["verify"], 2);
}

// -------------------------------------------------------------- receipts

#[test]
fn prove_and_verify_receipt_round_trip_and_any_flipped_bit_fails() {
    let f = fixture();
    let dir = Dir::new("audit-receipt");
    let key = dir.path().join("all.vkey");
    fs::write(&key, ok(&f.data, &["pubkey", "--all"])).unwrap();

    let receipt = ok(&f.data, &["prove", "req-0105"]);
    let parsed: Value = serde_json::from_str(&receipt).unwrap();
    assert_eq!(parsed["seq"], f.seq_of("req-0105"));
    assert_eq!(parsed["v"], 1);
    let path = dir.path().join("receipt.json");
    fs::write(&path, &receipt).unwrap();
    let out = ok(
        &f.data,
        &[
            "verify-receipt",
            path.to_str().unwrap(),
            "--pubkey",
            key.to_str().unwrap(),
        ],
    );
    assert!(out.contains("valid") && out.contains("req-0105"), "{out}");

    // Against an older checkpoint (signed by the first key only).
    let old = ok(&f.data, &["prove", "req-0105", "--checkpoint-size", "25"]);
    assert!(old.contains("\\n25\\n"), "{old}");
    fs::write(&path, &old).unwrap();
    let first = first_vkey_file(&f, dir.path());
    ok(
        &f.data,
        &[
            "verify-receipt",
            path.to_str().unwrap(),
            "--pubkey",
            first.to_str().unwrap(),
        ],
    );

    // Flip one bit at many positions: never valid, never "could not check".
    let bytes = receipt.trim_end().as_bytes().to_vec();
    for at in (0..bytes.len()).step_by(23) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        let o = audit(
            &f.data,
            &[
                "verify-receipt",
                path.to_str().unwrap(),
                "--pubkey",
                key.to_str().unwrap(),
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "bit flip at byte {at} ({:?}): {}",
            bytes[at] as char,
            stderr(&o)
        );
    }

    // A key that never signed this log.
    fs::write(&path, &receipt).unwrap();
    let stranger = custos_note::Signer::generate(ORIGIN, &mut rand::rngs::OsRng)
        .unwrap()
        .verifier();
    let other = dir.path().join("other.vkey");
    fs::write(&other, format!("{stranger}\n")).unwrap();
    fails(
        &f.data,
        &[
            "verify-receipt",
            path.to_str().unwrap(),
            "--pubkey",
            other.to_str().unwrap(),
        ],
        1,
    );
    fails(
        &f.data,
        &[
            "verify-receipt",
            "/nonexistent.json",
            "--pubkey",
            key.to_str().unwrap(),
        ],
        2,
    );
}

#[test]
fn prove_handles_unknown_and_reused_request_ids() {
    let f = fixture();
    let o = fails(&f.data, &["prove", "no-such-request"], 1);
    assert!(stderr(&o).contains("no-such-request"));

    let dups: Vec<u64> = f
        .written
        .iter()
        .filter(|w| w.request_id.as_deref() == Some("dup-id"))
        .map(|w| w.seq)
        .collect();
    assert_eq!(dups.len(), 2);
    let all: Value = serde_json::from_str(&ok(&f.data, &["prove", "dup-id"])).unwrap();
    let seqs: Vec<u64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, dups);

    let dir = Dir::new("audit-dups");
    let key = dir.path().join("all.vkey");
    fs::write(&key, ok(&f.data, &["pubkey", "--all"])).unwrap();
    let path = dir.path().join("receipts.json");
    fs::write(&path, all.to_string()).unwrap();
    let out = ok(
        &f.data,
        &[
            "verify-receipt",
            path.to_str().unwrap(),
            "--pubkey",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(out.lines().count(), 2, "{out}");

    let one: Value = serde_json::from_str(&ok(
        &f.data,
        &["prove", "dup-id", "--seq", &dups[1].to_string()],
    ))
    .unwrap();
    assert_eq!(one["seq"], dups[1]);
    fails(&f.data, &["prove", "dup-id", "--seq", "0"], 1);
}

// ----------------------------------------------------------- consistency

#[test]
fn consistency_proof_round_trip() {
    let f = fixture();
    let dir = Dir::new("audit-consistency");
    let key = dir.path().join("all.vkey");
    fs::write(&key, ok(&f.data, &["pubkey", "--all"])).unwrap();
    let old = dir.path().join("old.note");
    fs::write(&old, ok(&f.data, &["checkpoint", "--size", "15"])).unwrap();

    let proof = ok(&f.data, &["consistency", old.to_str().unwrap()]);
    let parsed: Value = serde_json::from_str(&proof).unwrap();
    assert!(!parsed["proof"].as_array().unwrap().is_empty());
    assert_eq!(
        parsed["new_checkpoint"].as_str().unwrap(),
        ok(&f.data, &["checkpoint"])
    );
    let path = dir.path().join("proof.json");
    fs::write(&path, &proof).unwrap();
    let out = ok(
        &f.data,
        &[
            "verify-consistency",
            path.to_str().unwrap(),
            "--pubkey",
            key.to_str().unwrap(),
        ],
    );
    assert!(out.contains("size 15"), "{out}");

    // To an intermediate size.
    let mid = ok(
        &f.data,
        &["consistency", old.to_str().unwrap(), "--to-size", "30"],
    );
    fs::write(&path, &mid).unwrap();
    ok(
        &f.data,
        &[
            "verify-consistency",
            path.to_str().unwrap(),
            "--pubkey",
            key.to_str().unwrap(),
        ],
    );

    // A changed proof hash or a swapped note fails.
    let mut bad = parsed.clone();
    let first = bad["proof"][0].as_str().unwrap().to_owned();
    let flipped = if first.starts_with('A') {
        first.replacen('A', "B", 1)
    } else {
        format!("A{}", &first[1..])
    };
    bad["proof"][0] = Value::String(flipped);
    fs::write(&path, bad.to_string()).unwrap();
    fails(
        &f.data,
        &[
            "verify-consistency",
            path.to_str().unwrap(),
            "--pubkey",
            key.to_str().unwrap(),
        ],
        1,
    );
    let mut swapped = parsed.clone();
    swapped["old_checkpoint"] = parsed["new_checkpoint"].clone();
    swapped["new_checkpoint"] = parsed["old_checkpoint"].clone();
    fs::write(&path, swapped.to_string()).unwrap();
    fails(
        &f.data,
        &[
            "verify-consistency",
            path.to_str().unwrap(),
            "--pubkey",
            key.to_str().unwrap(),
        ],
        1,
    );
    fs::write(&path, "{not json").unwrap();
    fails(
        &f.data,
        &[
            "verify-consistency",
            path.to_str().unwrap(),
            "--pubkey",
            key.to_str().unwrap(),
        ],
        1,
    );

    // A rewritten log cannot prove consistency with the kept checkpoint.
    let copy = tampered_copy(&f, "audit-fork");
    let ledger = copy.path().join("ledger");
    let (seg, _, mut lines) = segment_of(&ledger, 3);
    let idx = lines
        .iter()
        .position(|l| l.contains("\"req-0002\""))
        .unwrap();
    lines[idx] = lines[idx].replace("\"status\":200", "\"status\":201");
    write_lines(&seg, &lines);
    fails(copy.path(), &["consistency", old.to_str().unwrap()], 1);
}

// ---------------------------------------------------------------- export

#[test]
fn export_gives_exactly_the_period_in_every_format() {
    let f = fixture();
    let day1: Vec<&Written> = f.written.iter().filter(|w| w.day == 1).collect();
    let range = ["--from", "2025-01-02", "--to", "2025-01-03"];

    let jsonl = ok(
        &f.data,
        &[&["export", "--format", "jsonl"][..], &range].concat(),
    );
    let lines: Vec<&str> = jsonl.lines().collect();
    assert_eq!(lines.len(), day1.len());
    // Verbatim: exactly the stored canonical lines.
    let (_, _, seg_lines) = segment_of(&f.ledger(), day1[0].seq);
    let stored = seg_lines
        .iter()
        .find(|l| l.contains(&format!("\"seq\":{},", day1[0].seq)))
        .unwrap();
    assert_eq!(lines[0], stored);
    let seqs: Vec<u64> = json_lines(&jsonl)
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, day1.iter().map(|w| w.seq).collect::<Vec<_>>());

    let csv = ok(
        &f.data,
        &[&["export", "--format", "csv"][..], &range].concat(),
    );
    let rows: Vec<&str> = csv.split("\r\n").filter(|r| !r.is_empty()).collect();
    assert_eq!(rows.len(), day1.len() + 1, "header + one row per record");
    assert!(rows[0].starts_with("seq,ts,type,event,request_id,key_id"));
    assert!(
        rows.iter()
            .any(|r| r.contains("\"curl/8.5.0, like \"\"x\"\"\"")),
        "{csv}"
    );

    let ocsf = ok(
        &f.data,
        &[&["export", "--format", "ocsf"][..], &range].concat(),
    );
    let events = json_lines(&ocsf);
    assert_eq!(events.len(), day1.len());
    for e in &events {
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(e["category_uid"], 6);
        assert_eq!(e["metadata"]["product"]["name"], "Custos");
        assert_eq!(e["metadata"]["product"]["vendor_name"], "Custos");
        assert_eq!(e["metadata"]["version"], "1.1.0");
        let t = e["time"].as_u64().unwrap();
        assert!(((DAY0 + DAY) * 1000..(DAY0 + 2 * DAY) * 1000).contains(&t));
        assert_eq!(
            e["type_uid"].as_u64().unwrap(),
            600_300 + e["activity_id"].as_u64().unwrap()
        );
    }
    let inference = events
        .iter()
        .find(|e| e["metadata"]["correlation_uid"] == "req-0100")
        .unwrap();
    assert_eq!(inference["activity_id"], 1);
    assert_eq!(inference["api"]["operation"], "chat.completions");
    assert_eq!(inference["actor"]["user"]["uid"], "key_b");
    assert_eq!(inference["src_endpoint"]["ip"], "192.0.2.7");
    assert_eq!(inference["http_request"]["http_method"], "POST");
    assert_eq!(inference["http_response"]["code"], 200);
    assert_eq!(inference["ai_model"]["name"], "gpt-4o-2024");
    assert_eq!(inference["ai_model"]["ai_provider"], "openai");
    assert_eq!(inference["message_context"]["total_tokens"], 210);
    assert_eq!(inference["unmapped"]["model_requested"], "gpt-4o");
    let admin = events
        .iter()
        .find(|e| e["api"]["operation"] == "key.updated")
        .unwrap();
    assert_eq!(admin["activity_id"], 3);
    assert_eq!(admin["resources"][0]["uid"], "key_a");
    assert_eq!(admin["actor"]["user"]["name"], "bob");

    // RFC 3339 bounds with an offset, and --out (never inside the ledger).
    let dir = Dir::new("audit-export");
    let out = dir.path().join("day2.jsonl");
    ok(
        &f.data,
        &[
            "export",
            "--format",
            "jsonl",
            "--from",
            "2025-01-02T01:00:00+01:00",
            "--to",
            "2025-01-03T00:00:00Z",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), jsonl);
    let inside = f.ledger().join("export.jsonl");
    fails(
        &f.data,
        &[
            "export",
            "--format",
            "jsonl",
            "--out",
            inside.to_str().unwrap(),
        ],
        1,
    );
    assert!(!inside.exists());

    // The whole log, and the CSV's formula guard.
    let everything = ok(&f.data, &["export", "--format", "csv"]);
    assert_eq!(
        everything.split("\r\n").filter(|r| !r.is_empty()).count() as u64,
        f.size() + 1
    );
    assert!(
        everything.contains("\"'=HYPERLINK(\"\"x\"\")\""),
        "{everything}"
    );
    fails(
        &f.data,
        &[
            "export",
            "--format",
            "jsonl",
            "--from",
            "2025-01-03",
            "--to",
            "2025-01-02",
        ],
        1,
    );
    // A usage error (clap's own message) exits 2.
    let o = audit(
        &f.data,
        &["export", "--format", "jsonl", "--from", "yesterday"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

// ------------------------------------------------------------ tail, search

#[test]
fn tail_and_search_filters() {
    let f = fixture();
    let before = snapshot(&f.ledger());

    let tail = ok(&f.data, &["tail", "-n", "3"]);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 3, "{tail}");
    assert!(
        lines[2]
            .trim_start()
            .starts_with(&(f.size() - 1).to_string()),
        "{tail}"
    );
    assert!(
        lines[2].contains("late-2") && lines[2].contains("key_a"),
        "{tail}"
    );
    let tail_json = json_lines(&ok(&f.data, &["tail", "-n", "25", "--json"]));
    let seqs: Vec<u64> = tail_json
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, ((f.size() - 25)..f.size()).collect::<Vec<_>>());
    assert_eq!(
        json_lines(&ok(&f.data, &["tail", "-n", "10000", "--json"])).len() as u64,
        f.size()
    );

    let search = |args: &[&str]| -> Vec<u64> {
        let mut full = vec!["search", "--json"];
        full.extend_from_slice(args);
        json_lines(&ok(&f.data, &full))
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect()
    };
    let expect = |pred: &dyn Fn(&Written) -> bool| -> Vec<u64> {
        f.written
            .iter()
            .filter(|w| pred(w))
            .map(|w| w.seq)
            .collect()
    };

    assert_eq!(
        search(&["--key", "key_b"]),
        expect(&|w| w.key.as_deref() == Some("key_b"))
    );
    // Requests with key_a, and the admin actions on it.
    let key_a = search(&["--key", "key_a"]);
    assert_eq!(key_a, expect(&|w| w.key.as_deref() == Some("key_a")));
    assert!(key_a.iter().any(|&s| f.written[s as usize].kind == "admin"));
    assert_eq!(
        search(&["--model", "llama-3"]),
        expect(&|w| w.model.as_deref() == Some("llama-3"))
    );
    assert_eq!(
        search(&["--model", "llama-3-2024"]),
        expect(&|w| w.model.as_deref() == Some("llama-3"))
    );
    assert_eq!(
        search(&["--status", "4xx"]),
        expect(&|w| w.status.is_some_and(|s| (400..500).contains(&s)))
    );
    assert_eq!(
        search(&["--status", "502"]),
        expect(&|w| w.status == Some(502))
    );
    assert_eq!(
        search(&["--status", "5xx"]),
        expect(&|w| w.status == Some(502))
    );
    assert_eq!(search(&["--request-id", "dup-id"]).len(), 2);
    assert_eq!(search(&["--type", "admin"]), expect(&|w| w.kind == "admin"));
    assert_eq!(
        search(&["--type", "system"]),
        expect(&|w| w.kind == "system")
    );
    assert_eq!(
        search(&[
            "--from",
            "2025-01-03",
            "--type",
            "inference",
            "--key",
            "key_a"
        ]),
        expect(&|w| w.day == 2 && w.kind == "inference" && w.key.as_deref() == Some("key_a"))
    );
    assert_eq!(
        search(&["--from", "2025-01-02", "--to", "2025-01-03"]),
        expect(&|w| w.day == 1)
    );
    assert_eq!(search(&["--type", "inference", "--limit", "4"]).len(), 4);
    assert!(search(&["--request-id", "nothing-like-it"]).is_empty());

    let human = ok(&f.data, &["search", "--status", "429", "--limit", "2"]);
    assert_eq!(human.lines().count(), 2);
    assert!(human.lines().all(|l| l.contains(" 429 ")), "{human}");
    assert_eq!(
        audit(&f.data, &["search", "--status", "6xx"]).status.code(),
        Some(2)
    );

    // Every command above only read.
    assert_eq!(
        snapshot(&f.ledger()),
        before,
        "the audit commands wrote into the ledger"
    );
}

#[test]
fn tail_follow_prints_new_records_across_segments_and_stops_on_sigterm() {
    let tmp = Dir::new("audit-follow");
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(DAY0)));
    let runtime = rt();
    let (ledger, _) = Ledger::open(&tmp.path().join("ledger"), options(), clock.clone()).unwrap();
    let append = |i: u64| {
        runtime
            .block_on(
                ledger
                    .append(request(i, &format!("follow-{i}"), "key_a", "gpt-4o", 200))
                    .unwrap(),
            )
            .unwrap()
    };
    for i in 0..3 {
        append(i);
    }

    let mut child = Command::new(BIN)
        .args([
            "audit",
            "tail",
            "-n",
            "1",
            "--follow",
            "--json",
            "--interval",
            "100ms",
        ])
        .arg("--data-dir")
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let pump = std::thread::spawn(move || {
        for line in reader.lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("tail --follow printed nothing");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next()["request_id"], "follow-2");

    // Enough records to seal several 4 KiB segments while it follows.
    for i in 3..40 {
        append(i);
    }
    for i in 3..40 {
        let v = next();
        assert_eq!(v["request_id"], format!("follow-{i}"));
        assert_eq!(v["seq"], i);
    }
    let segments = fs::read_dir(tmp.path().join("ledger/segments"))
        .unwrap()
        .count();
    assert!(segments > 2, "the test should cross segment boundaries");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM should end --follow cleanly");
    pump.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.is_empty(), "{err}");
    runtime.block_on(ledger.shutdown()).unwrap();
}
