//! The readiness rules on hand-made facts: boundaries of each threshold.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_readiness::{Facts, LedgerFacts, RevocationProbe, Status, evaluate};

const NOW_S: u64 = 1_800_000_000;
const HOUR: u64 = 3600;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_S)
}

fn config(extra: &str) -> custos_config::Config {
    let text = format!(
        "[providers.mock]\nkind = \"mock\"\n[[models]]\nname = \"m\"\ntargets = [{{ provider = \"mock\" }}]\n{extra}"
    );
    custos_config::load("t.toml", &text, &|_| None).unwrap()
}

fn facts(extra_config: &str) -> Facts {
    Facts {
        now: now(),
        period: (now() - Duration::from_secs(90 * 24 * HOUR), now()),
        config: config(extra_config),
        keys: vec![],
        users: vec![],
        incidents: vec![],
        ledger: LedgerFacts {
            problem: None,
            tree_size: 10,
            first_seq: 0,
            oldest_record_at: Some(now() - Duration::from_secs(30 * 24 * HOUR)),
            newest_checkpoint: Some((10, now() - Duration::from_secs(60))),
            sinks: vec![("directory /w".into(), Some(true))],
        },
        revocation: Ok(RevocationProbe {
            path: "test".into(),
            outcome: "revoked_api_key".into(),
            revoked_still_authenticating: vec![],
        }),
        runbook: ("rb.md".into(), true),
        loose_credential_files: vec![],
    }
}

fn status(f: &Facts, id: &str) -> Status {
    evaluate(f).into_iter().find(|c| c.id == id).unwrap().status
}

/// An incident of `severity` opened `started_ago` before now, acknowledged
/// `ack_after` after opening (or never), resolved or not.
fn incident(
    severity: &str,
    ack_after: Option<u64>,
    resolved: bool,
    postmortem: bool,
) -> custos_health::Incident {
    let at =
        |s: u64| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(s)).to_string();
    let start = NOW_S - 10 * HOUR;
    let pm = serde_json::json!({
        "summary": "s", "impact": "i", "root_cause": "r", "trigger": "t",
        "detection": "d", "resolution": "r", "author": "a", "written_at": at(NOW_S),
    });
    serde_json::from_value(serde_json::json!({
        "id": "INC-20270115-0001", "model": "m", "title": "m: x",
        "severity": severity, "severity_pinned": false,
        "status": if resolved { "resolved" } else if ack_after.is_some() { "acknowledged" } else { "open" },
        "declared_by": null, "started_at": at(start), "updated_at": at(start),
        "acknowledged_at": ack_after.map(|a| at(start + a)), "acknowledged_by": ack_after.map(|_| "alice"),
        "assignee": null,
        "resolved_at": if resolved { Some(at(start + 2 * HOUR)) } else { None },
        "resolved_by": null, "resolution": if resolved { Some("auto") } else { None },
        "recovering_since": null, "symptoms": [], "peak_error_rate": 0.5, "peak_p95_ms": null,
        "affected_keys": 1, "affected_keys_capped": false, "timeline": [], "timeline_dropped": 0,
        "postmortem": if postmortem { pm } else { serde_json::Value::Null },
    }))
    .unwrap()
}

#[test]
fn a_clean_installation_passes() {
    let f = facts("");
    for c in evaluate(&f) {
        assert!(
            matches!(
                c.status,
                Status::Pass | Status::Manual | Status::NotApplicable
            ),
            "{c:?}"
        );
        if c.status == Status::Pass {
            assert!(c.remediation.is_empty(), "{c:?}");
        }
    }
}

#[test]
fn acknowledgement_targets_by_severity() {
    let mut f = facts("");
    f.incidents = vec![incident("sev2", Some(14 * 60), true, true)];
    assert_eq!(status(&f, "CUS-INC-03"), Status::Pass);
    f.incidents = vec![incident("sev2", Some(16 * 60), true, true)];
    assert_eq!(status(&f, "CUS-INC-03"), Status::Fail);
    f.incidents = vec![incident("sev3", Some(50 * 60), true, true)];
    assert_eq!(status(&f, "CUS-INC-03"), Status::Pass);
    // Still open and never acknowledged, ten hours on.
    f.incidents = vec![incident("sev4", None, false, false)];
    assert_eq!(status(&f, "CUS-INC-03"), Status::Pass);
    f.incidents = vec![incident("sev1", None, false, false)];
    assert_eq!(status(&f, "CUS-INC-03"), Status::Fail);
    // Postmortems are required of resolved incidents only.
    assert_eq!(status(&f, "CUS-INC-02"), Status::NotApplicable);
    f.incidents = vec![incident("sev3", Some(60), true, false)];
    assert_eq!(status(&f, "CUS-INC-02"), Status::Fail);
}

#[test]
fn ledger_freshness_publication_and_retention() {
    let mut f = facts("");
    f.ledger.newest_checkpoint = Some((10, now() - Duration::from_secs(25 * HOUR)));
    assert_eq!(status(&f, "CUS-LOG-01"), Status::Fail);
    f.ledger.newest_checkpoint = None;
    assert_eq!(status(&f, "CUS-LOG-01"), Status::Fail);
    let mut f = facts("");
    f.ledger.problem = Some("leaf 3 does not match".into());
    assert_eq!(status(&f, "CUS-LOG-01"), Status::Fail);

    let mut f = facts("");
    f.ledger.sinks = vec![];
    assert_eq!(status(&f, "CUS-LOG-02"), Status::Fail);
    f.ledger.sinks = vec![("http x".into(), None)];
    assert_eq!(status(&f, "CUS-LOG-02"), Status::Warn);
    f.ledger.sinks.push(("directory y".into(), Some(false)));
    assert_eq!(status(&f, "CUS-LOG-02"), Status::Fail);

    // Purged, and the oldest left is as old as retention: fine. Purged
    // with the oldest left far younger than retention: records are missing.
    let mut f = facts("");
    f.ledger.first_seq = 1000;
    f.ledger.oldest_record_at = Some(now() - Duration::from_secs(365 * 24 * HOUR));
    assert_eq!(status(&f, "CUS-LOG-03"), Status::Pass);
    f.ledger.oldest_record_at = Some(now() - Duration::from_secs(100 * 24 * HOUR));
    assert_eq!(status(&f, "CUS-LOG-03"), Status::Fail);
    let f = facts("[ledger]\nretention = \"90d\"\nallow_short_retention = true\n");
    assert_eq!(status(&f, "CUS-LOG-03"), Status::Fail);
}

#[test]
fn configuration_gaps() {
    assert_eq!(
        status(&facts("[ledger]\nfail_open = true\n"), "CUS-LOG-04"),
        Status::Fail
    );
    assert_eq!(
        status(
            &facts("[ledger]\ndurability = \"batched\"\nbatch_window = \"5ms\"\n"),
            "CUS-LOG-04"
        ),
        Status::Pass
    );
    assert_eq!(
        status(
            &facts("[server]\nadmin_listen = \"0.0.0.0:8081\"\n"),
            "CUS-NET-01"
        ),
        Status::Fail
    );
    assert_eq!(
        status(
            &facts("[server]\nlisten = \"10.0.0.5:8080\"\n"),
            "CUS-NET-01"
        ),
        Status::Fail
    );
    let mut f = facts("");
    f.runbook.1 = false;
    assert_eq!(status(&f, "CUS-INC-01"), Status::Fail);
    f.loose_credential_files = vec!["providers.x.api_key_file /k (mode 644)".into()];
    assert_eq!(status(&f, "CUS-SEC-01"), Status::Warn);
}

#[test]
fn revocation_must_be_refused_with_the_revoked_code() {
    let mut f = facts("");
    f.revocation = Ok(RevocationProbe {
        path: "gw".into(),
        outcome: "accepted".into(),
        revoked_still_authenticating: vec![],
    });
    assert_eq!(status(&f, "CUS-KEY-06"), Status::Fail);
    f.revocation = Ok(RevocationProbe {
        path: "gw".into(),
        outcome: "revoked_api_key".into(),
        revoked_still_authenticating: vec!["key_x".into()],
    });
    assert_eq!(status(&f, "CUS-KEY-06"), Status::Fail);
    f.revocation = Err("store unreachable".into());
    assert_eq!(status(&f, "CUS-KEY-06"), Status::Fail);
}

#[test]
fn ocsf_findings_have_the_compliance_shape() {
    let mut f = facts("");
    f.runbook.1 = false;
    let checks = evaluate(&f);
    let v = custos_readiness::ocsf(&checks, now(), "0.1.0");
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), checks.len());
    let inc = arr
        .iter()
        .find(|x| x["finding_info"]["uid"] == "CUS-INC-01")
        .unwrap();
    assert_eq!(inc["class_uid"], 2003);
    assert_eq!(inc["type_uid"], 200301);
    assert_eq!(inc["compliance"]["status"], "Fail");
    assert_eq!(inc["time"], NOW_S * 1000);
    assert!(
        inc["remediation"]["desc"]
            .as_str()
            .unwrap()
            .contains("--runbook")
    );
}
