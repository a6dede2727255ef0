//! The evidence pack end to end against a real ledger and a real SQLite
//! store: exactly the period's records, and tampering detected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_evidence::{
    LedgerLink, Period, Request, Sources, find_in_ledger, gather, load_signer, read_dir,
    verify_pack, write_pack,
};
use custos_health::{
    Incident, IncidentStatus, Postmortem, Resolution, Severity, TimelineEvent, TimelineKind,
};
use custos_ledger::{Ledger, LedgerOptions, LedgerReader};
use custos_record::{
    Admin, AdminActor, Change, Inference, RecordBody, Scalar, System, Target, Via,
};
use custos_store::users::{NewInvite, Role};
use custos_store::{Store, StoreOptions};
use custos_types::ManualClock;
use serde_json::Value;

const DAY: u64 = 86_400;

/// One way of tampering with a pack's files.
type Tamper = Box<dyn Fn(&mut custos_evidence::PackFiles)>;
/// 2026-01-01T00:00:00Z.
const JAN1: u64 = 1_767_225_600;

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("custos-evidence-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn at(secs: u64, micros: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
}

fn inference(i: u64, model: &str, status: u16) -> RecordBody {
    RecordBody::Inference(Inference {
        event: "request".into(),
        request_id: format!("req-{i}"),
        actor: None,
        client: None,
        endpoint: "chat.completions".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model_requested: Some(model.into()),
        model_served: Some(model.into()),
        provider: Some("mock".into()),
        attempts: Vec::new(),
        upstream_request_id: None,
        status,
        error_code: None,
        usage: None,
        stream: false,
        latency_us: 10_000 * (i + 1),
        ttfb_us: None,
    })
}

fn admin(event: &str, target_kind: &str, target: &str) -> RecordBody {
    let mut changes = BTreeMap::new();
    changes.insert(
        "name".to_owned(),
        Change {
            before: None,
            after: Some(Scalar::Str("ci".into())),
        },
    );
    RecordBody::Admin(Admin {
        event: event.into(),
        actor: AdminActor {
            ip: None,
            mfa: true,
            role: "admin".into(),
            user: "alice".into(),
            via: Via::Console,
        },
        action: event.rsplit('.').next().unwrap().into(),
        target: Some(Target {
            id: target.into(),
            kind: target_kind.into(),
        }),
        changes,
        reason: None,
    })
}

fn config_loaded(sha: &str) -> RecordBody {
    RecordBody::System(
        System::new("config.loaded")
            .with("sha256", sha)
            .with("source", "custos.toml"),
    )
}

fn options() -> LedgerOptions {
    let mut o = LedgerOptions::new("custos.test/evidence");
    o.checkpoint_every = Duration::from_secs(365 * DAY);
    o
}

/// Writes the ledger; returns the seqs that fall in [Jan 2, Jan 4).
async fn build_ledger(ledger_dir: &Path) -> Vec<u64> {
    let clock = Arc::new(ManualClock::new(at(JAN1, 0)));
    let mut in_period = Vec::new();
    let mut seq = 0u64;
    let plan: Vec<Vec<(SystemTime, RecordBody, bool)>> = vec![
        // Before the period; the ledger is closed after it (a checkpoint).
        vec![
            (at(JAN1 + 10 * 3600, 0), config_loaded("aaa"), false),
            (
                at(JAN1 + DAY - 1, 999_999),
                inference(0, "gpt-a", 200),
                false,
            ),
        ],
        vec![
            // Exactly at --from: included.
            (
                at(JAN1 + DAY, 0),
                admin("key.created", "key", "key_1"),
                true,
            ),
            (
                at(JAN1 + DAY + 12 * 3600, 0),
                inference(1, "gpt-a", 200),
                true,
            ),
            (
                at(JAN1 + DAY + 12 * 3600, 5),
                inference(2, "gpt-a", 200),
                true,
            ),
            (
                at(JAN1 + DAY + 12 * 3600, 9),
                inference(3, "gpt-a", 503),
                true,
            ),
            (
                at(JAN1 + DAY + 13 * 3600, 0),
                admin("login.failed", "user", "usr_1"),
                true,
            ),
            (at(JAN1 + 2 * DAY + 8 * 3600, 0), config_loaded("bbb"), true),
            (
                at(JAN1 + 2 * DAY + 9 * 3600, 0),
                inference(4, "gpt-b", 200),
                true,
            ),
            (
                at(JAN1 + 2 * DAY + 9 * 3600, 1),
                inference(5, "gpt-b", 200),
                true,
            ),
            (
                at(JAN1 + 3 * DAY - 1, 999_999),
                admin("key.revoked", "key", "key_1"),
                true,
            ),
            // Exactly at --to: excluded.
            (
                at(JAN1 + 3 * DAY, 0),
                admin("key.rotated", "key", "key_2"),
                false,
            ),
            (
                at(JAN1 + 3 * DAY + 3600, 0),
                inference(6, "gpt-a", 200),
                false,
            ),
        ],
    ];
    for batch in plan {
        let (ledger, _) = Ledger::open(ledger_dir, options(), clock.clone()).unwrap();
        for (t, body, inside) in batch {
            clock.set(t);
            let done = ledger.append(body).unwrap().await.unwrap();
            assert_eq!(done.seq, seq);
            if inside {
                in_period.push(seq);
            }
            seq += 1;
        }
        ledger.shutdown().await.unwrap();
    }
    in_period
}

fn column(t: &Value, name: &str) -> Vec<Value> {
    t.as_array()
        .unwrap()
        .iter()
        .map(|r| r[name].clone())
        .collect()
}

fn read_json(dir: &Path, rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(rel)).unwrap()).unwrap()
}

fn incident(
    id: &str,
    started: SystemTime,
    acked: Option<SystemTime>,
    resolved: Option<SystemTime>,
) -> Incident {
    Incident {
        id: id.into(),
        model: "gpt-a".into(),
        title: format!("{id} errors"),
        severity: Severity::Sev2,
        severity_pinned: false,
        status: if resolved.is_some() {
            IncidentStatus::Resolved
        } else {
            IncidentStatus::Open
        },
        declared_by: None,
        started_at: started,
        updated_at: started,
        acknowledged_at: acked,
        acknowledged_by: acked.map(|_| "bob".into()),
        assignee: None,
        resolved_at: resolved,
        resolved_by: resolved.map(|_| "bob".into()),
        resolution: resolved.map(|_| Resolution::Manual),
        recovering_since: None,
        symptoms: Vec::new(),
        peak_error_rate: 0.5,
        peak_p95_ms: None,
        affected_keys: 1,
        affected_keys_capped: false,
        timeline: acked
            .map(|at| TimelineEvent {
                seq: 1,
                at,
                actor: Some("bob".into()),
                kind: TimelineKind::Acknowledged,
            })
            .into_iter()
            .collect(),
        timeline_dropped: 0,
        postmortem: None,
    }
}

/// Incidents around the period, a console user; returns the password hash.
async fn fill_store(store: &Store) -> &'static str {
    let h = |d: u64, hours: u64| at(JAN1 + d * DAY + hours * 3600, 0);
    let mut before = incident("INC-A", h(0, 20), Some(h(0, 21)), Some(h(1, 2)));
    before.postmortem = Some(Postmortem {
        summary: "Upstream outage of gpt-a".into(),
        impact: "1 key".into(),
        root_cause: "provider".into(),
        trigger: "deploy".into(),
        detection: "error rate".into(),
        resolution: "fallback".into(),
        lessons: "add a target".into(),
        action_items: Vec::new(),
        author: "bob".into(),
        written_at: h(2, 0),
    });
    for i in [
        before,                                          // resolved in the period: in
        incident("INC-B", h(2, 1), None, None),          // opened in the period, open: in
        incident("INC-C", h(0, 1), None, Some(h(0, 2))), // over before: out
        incident("INC-D", h(3, 0), None, None),          // starts at --to: out
    ] {
        store.save_incident(&i).await.unwrap();
    }
    let actor = custos_store::Actor::new(custos_store::ActorKind::Cli, "root");
    let users = store.users();
    users
        .create_invite(
            &NewInvite {
                id: "inv_1".into(),
                token_hash: "00".repeat(32),
                username: Some("bob".into()),
                role: Role::Admin,
                reset: false,
                expires_at: SystemTime::now() + Duration::from_secs(3600),
            },
            &actor,
        )
        .await
        .unwrap();
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$SECRETHASHVALUE";
    users
        .redeem_invite(&"00".repeat(32), "usr_1", "bob", hash, None)
        .await
        .unwrap();
    hash
}

#[tokio::test]
async fn pack_holds_exactly_the_periods_records_and_detects_tampering() {
    let tmp = TempDir::new("period");
    let data = tmp.0.join("data");
    let ledger_dir = data.join("ledger");
    let in_period = build_ledger(&ledger_dir).await;
    let store = Store::open(&data, StoreOptions::default()).await.unwrap();
    let password_hash = fill_store(&store).await;
    let config = custos_config::load_default(&|_| None).unwrap();
    let sources = Sources {
        config: &config,
        config_sha256: Some("bbb"),
        ledger_dir: &ledger_dir,
        store: &store,
    };
    let period = Period::parse("2026-01-02", "2026-01-04").unwrap();
    let mut phases = Vec::new();
    let ev = gather(
        &sources,
        Request {
            period,
            generated_at: at(JAN1 + 10 * DAY, 0),
            generated_by: "cli:test".into(),
        },
        &mut |phase: &str, _, _| phases.push(phase.to_owned()),
    )
    .await
    .unwrap();
    assert!(phases.iter().any(|p| p == "reading ledger"));
    assert!(ev.integrity.intact, "{:?}", ev.integrity.problem);
    assert_eq!(ev.integrity.period_first_seq, 2);
    assert_eq!(ev.integrity.period_end_seq, 11);
    assert_eq!(ev.integrity.start_checkpoint.as_ref().map(|c| c.0), Some(2));
    assert_eq!(ev.integrity.end_checkpoint.as_ref().map(|c| c.0), Some(13));

    let out = tmp.0.join("pack");
    let signer = load_signer(&ledger_dir).unwrap();
    let written = write_pack(&ev, &out, &signer).unwrap();

    // Exactly the period's records: every admin and system record, and the
    // inference records counted per day.
    let reader = LedgerReader::open(&ledger_dir);
    let records: Vec<_> = reader.records().unwrap().map(Result::unwrap).collect();
    let want_events: Vec<Value> = in_period
        .iter()
        .filter(|s| !matches!(records[**s as usize].record.body, RecordBody::Inference(_)))
        .map(|s| Value::from(*s))
        .collect();
    let events = read_json(&out, "tables/events.json");
    assert_eq!(column(&events, "seq"), want_events);
    let per_day = read_json(&out, "tables/records-per-day.json");
    assert_eq!(column(&per_day, "day"), ["2026-01-02", "2026-01-03"]);
    assert_eq!(column(&per_day, "inference"), [3, 2]);
    assert_eq!(column(&per_day, "admin"), [2, 1]);
    assert_eq!(column(&per_day, "system"), [0, 1]);
    let total: u64 = column(&per_day, "total")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, in_period.len() as u64);
    let keys = read_json(&out, "tables/key-lifecycle.json");
    assert_eq!(column(&keys, "event"), ["key.created", "key.revoked"]);
    assert_eq!(column(&keys, "mfa"), [true, true]);
    let cfg = read_json(&out, "tables/config-changes.json");
    assert_eq!(column(&cfg, "sha256"), ["bbb"]);
    assert_eq!(column(&cfg, "changed"), [true]);
    let cap = read_json(&out, "tables/capacity.json");
    assert_eq!(column(&cap, "model"), ["gpt-a", "gpt-b"]);
    assert_eq!(column(&cap, "requests"), [3, 2]);
    assert_eq!(column(&cap, "server_errors"), [1, 0]);
    assert_eq!(column(&cap, "p50_ms"), [30.0, 50.0]);
    assert_eq!(column(&cap, "p99_ms"), [40.0, 60.0]);
    // Incidents open at any time in the period, with their response times.
    let inc = read_json(&out, "tables/incidents.json");
    assert_eq!(column(&inc, "id"), ["INC-A", "INC-B"]);
    assert_eq!(
        column(&inc, "time_to_acknowledge_s"),
        [Value::from(3600), Value::Null]
    );
    assert_eq!(
        column(&inc, "time_to_resolve_s"),
        [Value::from(6 * 3600), Value::Null]
    );
    assert_eq!(column(&inc, "postmortem"), [true, false]);
    let detail = read_json(&out, "incidents/incidents.json");
    assert_eq!(
        detail[0]["postmortem"]["summary"],
        "Upstream outage of gpt-a"
    );
    // The console user, with the period's sign-in failures from the ledger.
    let users = read_json(&out, "tables/console-users.json");
    assert_eq!(column(&users, "username"), ["bob"]);
    assert_eq!(column(&users, "mfa_enrolled"), [false]);
    assert_eq!(column(&users, "login_failures_in_period"), [1]);
    let review = read_json(&out, "tables/access-review.json");
    assert!(
        review[0]["findings"]
            .as_str()
            .unwrap()
            .contains("MFA not enrolled"),
        "{review}"
    );
    // No secret anywhere.
    for (path, bytes) in read_dir(&out).unwrap() {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("SECRETHASHVALUE") && !text.contains(password_hash),
            "{path}"
        );
        assert!(!text.contains("PRIVATE+KEY"), "{path}");
    }
    let csv = std::fs::read_to_string(out.join("tables/events.csv")).unwrap();
    assert_eq!(csv.lines().count(), want_events.len() + 1);
    assert!(
        std::fs::read_to_string(out.join("integrity/checkpoint-start.note"))
            .unwrap()
            .starts_with("custos.test/evidence\n2\n")
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("INTACT"));
    assert!(!html.contains("<script"));

    // The intact pack verifies with the ledger's key.
    let trusted: Vec<_> = reader
        .verifier_history()
        .unwrap()
        .into_iter()
        .map(|k| k.verifier)
        .collect();
    let report = verify_pack(&read_dir(&out).unwrap(), &trusted);
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(
        report.manifest_sha256.as_deref(),
        Some(written.manifest_sha256.as_str())
    );
    assert_eq!(report.files_ok, written.files);
    assert_eq!(
        find_in_ledger(&ledger_dir, &written.manifest_sha256),
        LedgerLink::NotFound
    );

    // The zipped pack holds the same files and verifies the same way.
    let zipped = tmp.0.join("pack.zip");
    custos_evidence::zip_pack(&out, &zipped).unwrap();
    assert_eq!(
        custos_evidence::read_zip(&zipped).unwrap(),
        read_dir(&out).unwrap()
    );
    assert!(verify_pack(&custos_evidence::read_zip(&zipped).unwrap(), &trusted).is_intact());
    assert!(
        custos_evidence::zip_pack(&out, &zipped).is_err(),
        "an existing zip must not be overwritten"
    );

    // Any other key: the signature fails.
    let other =
        custos_note::Signer::generate("custos.test/evidence", &mut rand::rngs::OsRng).unwrap();
    let r = verify_pack(&read_dir(&out).unwrap(), &[other.verifier()]);
    assert!(
        r.problems.iter().any(|p| p.contains("signature")),
        "{:?}",
        r.problems
    );

    // Each kind of tampering fails, one at a time.
    let tampered: Vec<(&str, Tamper)> = vec![
        (
            "edited csv",
            Box::new(|f| {
                f.get_mut("tables/key-lifecycle.csv").unwrap().push(b'x');
            }),
        ),
        (
            "flipped bit in html",
            Box::new(|f| {
                f.get_mut("report.html").unwrap()[10] ^= 1;
            }),
        ),
        (
            "deleted file",
            Box::new(|f| {
                f.remove("tables/events.json");
            }),
        ),
        (
            "added file",
            Box::new(|f| {
                f.insert("tables/extra.csv".into(), b"a\r\n".to_vec());
            }),
        ),
        (
            "edited manifest",
            Box::new(|f| {
                let m = String::from_utf8(f["manifest.json"].clone()).unwrap();
                f.insert(
                    "manifest.json".into(),
                    m.replacen("2026-01-02", "2026-01-01", 1).into_bytes(),
                );
            }),
        ),
        (
            "removed signature",
            Box::new(|f| {
                f.remove("manifest.sig");
            }),
        ),
    ];
    for (what, tamper) in tampered {
        let mut files = read_dir(&out).unwrap();
        tamper(&mut files);
        let r = verify_pack(&files, &trusted);
        assert!(!r.is_intact(), "{what} went unnoticed");
    }
    // And on disk, through read_dir.
    std::fs::write(out.join("tables/key-inventory.csv"), b"id\r\n").unwrap();
    let r = verify_pack(&read_dir(&out).unwrap(), &trusted);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].starts_with("tables/key-inventory.csv: SHA-256"));

    // A second pack into the same, now non-empty, directory is refused.
    let err = write_pack(&ev, &out, &signer).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
}
