//! The mock audit behind `custos audit readiness`: SOC 2 control checks over
//! Custos's live configuration and data, each naming the Trust Services
//! Criteria it supports, what it found (down to the keys, users and files
//! involved) and the exact change that fixes it.
//!
//! The binary gathers the facts ([`Facts`]: configuration, keys, users,
//! incidents, what the ledger verifier and the revocation probe found) and
//! [`evaluate`] turns them into [`Check`]s with no IO of its own, so every
//! rule is tested on hand-made facts. Rendering: [`render_table`], JSON
//! (the [`Check`]s serialised), and [`ocsf`] (OCSF Compliance Finding,
//! class 2003).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use custos_health::Incident;
use custos_store::keys::KeyRecord;
use custos_store::users::{UserRecord, UserState};
use serde::Serialize;

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// The control is in place.
    Pass,
    /// The control is missing or broken: an auditor would note an exception.
    Fail,
    /// Not broken, but likely to be questioned, or about to break.
    Warn,
    /// Custos cannot see it; a person must collect the evidence.
    Manual,
    /// Does not apply to this installation.
    NotApplicable,
}

impl Status {
    /// `PASS`, `FAIL`, `WARN`, `MANUAL` or `NOT_APPLICABLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Warn => "WARN",
            Status::Manual => "MANUAL",
            Status::NotApplicable => "NOT_APPLICABLE",
        }
    }
}

/// One control check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable ID, such as `CUS-KEY-01`.
    pub id: &'static str,
    /// What is checked, in one line.
    pub title: &'static str,
    /// The Trust Services Criteria it supports.
    pub criteria: &'static [&'static str],
    /// The outcome.
    pub status: Status,
    /// What was found, precisely.
    pub finding: String,
    /// The keys, users, incidents or files involved.
    pub subjects: Vec<String>,
    /// The exact command or setting that fixes it; empty on PASS.
    pub remediation: String,
}

/// What the ledger verifier and the checkpoint files showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerFacts {
    /// `None` when the log verified; else the verifier's problem.
    pub problem: Option<String>,
    /// Records in the log.
    pub tree_size: u64,
    /// The first stored sequence number (above 0 after a retention purge).
    pub first_seq: u64,
    /// When the oldest stored record was written.
    pub oldest_record_at: Option<SystemTime>,
    /// Size and signing time of the newest checkpoint.
    pub newest_checkpoint: Option<(u64, SystemTime)>,
    /// External sinks, each with whether it holds the newest checkpoint
    /// (`None`: cannot be checked from here, such as an HTTP sink).
    pub sinks: Vec<(String, Option<bool>)>,
}

/// What the revocation probe saw when a freshly revoked canary key was
/// presented to the enforcement path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationProbe {
    /// Where it was presented: `gateway at http://…` or `in-process`.
    pub path: String,
    /// The refusal code received (`revoked_api_key` is the right one), or
    /// `accepted` when it was let through.
    pub outcome: String,
    /// Revoked keys still present in the authentication snapshot.
    pub revoked_still_authenticating: Vec<String>,
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct Facts {
    /// When the checks run.
    pub now: SystemTime,
    /// The period whose incidents are reviewed, `[from, to)`.
    pub period: (SystemTime, SystemTime),
    /// The running configuration.
    pub config: custos_config::Config,
    /// Every key.
    pub keys: Vec<KeyRecord>,
    /// Every console user.
    pub users: Vec<UserRecord>,
    /// Incidents detected in the period.
    pub incidents: Vec<Incident>,
    /// The ledger.
    pub ledger: LedgerFacts,
    /// The revocation probe, or why it could not run.
    pub revocation: Result<RevocationProbe, String>,
    /// The incident runbook file and whether it exists and is not empty.
    pub runbook: (String, bool),
    /// Provider credential files readable by group or others.
    pub loose_credential_files: Vec<String>,
}

/// The gateway's error code for a revoked key.
pub const REVOKED_CODE: &str = "revoked_api_key";

/// Keys unused this long are flagged for access review.
pub const UNUSED_AFTER: Duration = Duration::from_secs(90 * 86_400);
/// The shortest retention an audit period allows.
pub const MIN_RETENTION: Duration = Duration::from_secs(365 * 86_400);
/// The newest checkpoint must be younger than this.
pub const CHECKPOINT_FRESH: Duration = Duration::from_secs(24 * 3600);

/// The acknowledgement deadline of a severity (docs/incident-response.md,
/// response targets; business hours are taken as wall-clock time).
pub fn ack_sla(severity: custos_health::Severity) -> Duration {
    use custos_health::Severity::*;
    match severity {
        Sev1 => Duration::from_secs(5 * 60),
        Sev2 => Duration::from_secs(15 * 60),
        Sev3 => Duration::from_secs(3600),
        Sev4 => Duration::from_secs(86_400),
    }
}

fn days(d: Duration) -> u64 {
    d.as_secs() / 86_400
}

fn age(now: SystemTime, t: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or_default()
}

fn date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .take(10)
        .collect()
}

fn check(
    id: &'static str,
    title: &'static str,
    criteria: &'static [&'static str],
) -> impl FnOnce(Status, String, Vec<String>, &str) -> Check {
    move |status, finding, subjects, remediation| Check {
        id,
        title,
        criteria,
        status,
        finding,
        subjects,
        remediation: if status == Status::Pass {
            String::new()
        } else {
            remediation.to_owned()
        },
    }
}

fn active_keys(f: &Facts) -> Vec<&KeyRecord> {
    f.keys
        .iter()
        .filter(|k| k.revoked.is_none() && k.expires_at.is_none_or(|e| e > f.now))
        .collect()
}

fn key_label(k: &KeyRecord) -> String {
    format!("{} ({})", k.id, k.name)
}

fn list(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// Runs every check on `f`, in ID order.
pub fn evaluate(f: &Facts) -> Vec<Check> {
    vec![
        mfa(f),
        rotation(f),
        rotation_soon(f),
        expiry(f),
        least_privilege(f),
        unused(f),
        revocation(f),
        ledger_integrity(f),
        checkpoint_published(f),
        retention(f),
        fail_closed(f),
        runbook(f),
        postmortems(f),
        acknowledgement(f),
        listeners(f),
        credentials(f),
        content(f),
        capacity(f),
        backups(),
    ]
}

fn mfa(f: &Facts) -> Check {
    let c = check(
        "CUS-IAM-01",
        "Every console user has MFA enrolled",
        &["CC6.1", "CC6.2"],
    );
    let active: Vec<&UserRecord> = f
        .users
        .iter()
        .filter(|u| u.state == UserState::Active)
        .collect();
    if active.is_empty() {
        return c(
            Status::NotApplicable,
            "no active console user".into(),
            vec![],
            "",
        );
    }
    let missing: Vec<String> = active
        .iter()
        .filter(|u| u.mfa_enrolled_at.is_none())
        .map(|u| format!("{} ({})", u.username, u.role.as_str()))
        .collect();
    if missing.is_empty() {
        c(
            Status::Pass,
            format!(
                "all {} active console users have TOTP enrolled",
                active.len()
            ),
            vec![],
            "",
        )
    } else {
        c(
            Status::Fail,
            format!(
                "{} of {} active console users have no MFA enrolled: {}",
                missing.len(),
                active.len(),
                list(&missing)
            ),
            missing,
            "have each user sign in to the console and enrol TOTP (it is required at first sign-in), or disable the account: `custos users disable USERNAME`",
        )
    }
}

fn rotation(f: &Facts) -> Check {
    let c = check(
        "CUS-KEY-01",
        "No API key is older than the rotation policy",
        &["CC6.1", "CC6.2"],
    );
    let max = f.config.keys.max_age;
    let overdue: Vec<String> = active_keys(f)
        .into_iter()
        .filter(|k| age(f.now, k.secret_created_at) > max)
        .map(|k| {
            format!(
                "{} rotated {} ({} days ago)",
                key_label(k),
                date(k.secret_created_at),
                days(age(f.now, k.secret_created_at))
            )
        })
        .collect();
    if overdue.is_empty() {
        c(
            Status::Pass,
            format!(
                "every active key was rotated within keys.max_age ({} days)",
                days(max)
            ),
            vec![],
            "",
        )
    } else {
        c(
            Status::Fail,
            format!(
                "{} active key(s) past keys.max_age ({} days): {}",
                overdue.len(),
                days(max),
                list(&overdue)
            ),
            overdue,
            "rotate each key with `custos keys rotate KEY_ID --grace 24h` (or revoke it), and hand the new secret to its owner",
        )
    }
}

fn rotation_soon(f: &Facts) -> Check {
    let c = check(
        "CUS-KEY-02",
        "Keys near the rotation deadline are flagged ahead of time",
        &["CC6.1", "CC6.2"],
    );
    let (max, warn) = (f.config.keys.max_age, f.config.keys.rotation_warning);
    let soon: Vec<String> = active_keys(f)
        .into_iter()
        .filter(|k| {
            let a = age(f.now, k.secret_created_at);
            a <= max && a + warn > max
        })
        .map(|k| format!("{} due {}", key_label(k), date(k.secret_created_at + max)))
        .collect();
    if soon.is_empty() {
        c(
            Status::Pass,
            format!(
                "no active key is due within keys.rotation_warning ({} days); due keys are listed by `custos keys list --due` and callers get X-Custos-Key-Rotation-Due",
                days(warn)
            ),
            vec![],
            "",
        )
    } else {
        c(
            Status::Warn,
            format!(
                "{} key(s) due for rotation within {} days (their callers receive X-Custos-Key-Rotation-Due): {}",
                soon.len(),
                days(warn),
                list(&soon)
            ),
            soon,
            "schedule the rotations: `custos keys rotate KEY_ID --grace 24h` before the due date",
        )
    }
}

fn expiry(f: &Facts) -> Check {
    let c = check("CUS-KEY-03", "API keys have an expiry", &["CC6.2", "CC6.3"]);
    let none: Vec<String> = active_keys(f)
        .into_iter()
        .filter(|k| k.expires_at.is_none())
        .map(key_label)
        .collect();
    if none.is_empty() {
        c(
            Status::Pass,
            "every active key has an expiry".into(),
            vec![],
            "",
        )
    } else {
        c(
            Status::Warn,
            format!("{} active key(s) never expire: {}", none.len(), list(&none)),
            none,
            "set an expiry: `custos keys update KEY_ID --expires-in 365d`",
        )
    }
}

fn least_privilege(f: &Facts) -> Check {
    let c = check(
        "CUS-KEY-04",
        "API keys are scoped to the models and capabilities they need",
        &["CC6.3"],
    );
    let all_caps = custos_types::CapabilitySet::all();
    let broad: Vec<String> = active_keys(f)
        .into_iter()
        .filter_map(|k| {
            let mut why = Vec::new();
            if k.scope.models.is_wildcard() {
                let patterns: Vec<String> = k
                    .scope
                    .models
                    .patterns()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                why.push(format!("models {}", patterns.join(",")));
            }
            if k.scope.capabilities == all_caps {
                why.push("all capabilities".to_owned());
            }
            (!why.is_empty()).then(|| format!("{}: {}", key_label(k), why.join(" and ")))
        })
        .collect();
    if broad.is_empty() {
        c(
            Status::Pass,
            "no active key has a wildcard model scope or every capability".into(),
            vec![],
            "",
        )
    } else {
        c(
            Status::Warn,
            format!(
                "{} active key(s) are broader than least privilege: {}",
                broad.len(),
                list(&broad)
            ),
            broad,
            "narrow each key: `custos keys update KEY_ID --models MODEL[,MODEL] --capabilities chat`",
        )
    }
}

fn unused(f: &Facts) -> Check {
    let c = check(
        "CUS-KEY-05",
        "Keys unused for 90 days are reviewed",
        &["CC6.2", "CC6.3"],
    );
    let idle: Vec<String> = active_keys(f)
        .into_iter()
        .filter(|k| age(f.now, k.last_used_at.unwrap_or(k.created_at)) > UNUSED_AFTER)
        .map(|k| match k.last_used_at {
            Some(t) => format!("{} last used {}", key_label(k), date(t)),
            None => format!("{} never used since {}", key_label(k), date(k.created_at)),
        })
        .collect();
    if idle.is_empty() {
        c(
            Status::Pass,
            "every active key was used in the last 90 days".into(),
            vec![],
            "",
        )
    } else {
        c(
            Status::Warn,
            format!(
                "{} active key(s) unused for more than 90 days: {}",
                idle.len(),
                list(&idle)
            ),
            idle,
            "confirm with each owner, then revoke what is not needed: `custos keys revoke KEY_ID --reason \"access review\"`",
        )
    }
}

fn revocation(f: &Facts) -> Check {
    let c = check(
        "CUS-KEY-06",
        "A revoked key is refused by the enforcement path",
        &["CC6.2", "CC6.3"],
    );
    match &f.revocation {
        Err(e) => c(
            Status::Fail,
            format!("the revocation probe could not run: {e}"),
            vec![],
            "make the state store and the gateway reachable, then rerun `custos audit readiness`",
        ),
        Ok(p) if p.outcome == REVOKED_CODE && p.revoked_still_authenticating.is_empty() => c(
            Status::Pass,
            format!(
                "a canary key revoked just before was refused with {REVOKED_CODE} by the {}; every revoked key is marked revoked in the authentication snapshot",
                p.path
            ),
            vec![],
            "",
        ),
        Ok(p) => {
            let mut subjects = p.revoked_still_authenticating.clone();
            subjects.push(format!("canary via {}", p.path));
            c(
                Status::Fail,
                format!(
                    "a freshly revoked canary key got `{}` from the {}; revoked keys still authenticating: {}",
                    p.outcome,
                    p.path,
                    if p.revoked_still_authenticating.is_empty() {
                        "none".to_owned()
                    } else {
                        list(&p.revoked_still_authenticating)
                    }
                ),
                subjects,
                "stop using this build and report it: revocation must take effect on the next request; check the server logs for key-snapshot reload errors",
            )
        }
    }
}

fn ledger_integrity(f: &Facts) -> Check {
    let c = check(
        "CUS-LOG-01",
        "The audit ledger verifies and its newest checkpoint is fresh",
        &["CC7.2", "CC7.3"],
    );
    let l = &f.ledger;
    if let Some(p) = &l.problem {
        return c(
            Status::Fail,
            format!("the ledger does not verify: {p}"),
            vec!["ledger".into()],
            "preserve the data directory as evidence, follow the tamper procedure in docs/audit-log-format.md, and verify with the published public key: `custos audit verify --pubkey ledger.pub`",
        );
    }
    match l.newest_checkpoint {
        None => c(
            Status::Fail,
            format!(
                "{} records verified, but no checkpoint is signed",
                l.tree_size
            ),
            vec!["ledger/checkpoints".into()],
            "start the server (`custos serve`): it signs a checkpoint every ledger.checkpoint_interval",
        ),
        Some((size, at)) if age(f.now, at) > CHECKPOINT_FRESH => c(
            Status::Fail,
            format!(
                "{} records verified; the newest checkpoint (size {size}) was signed {} ({} hours ago)",
                l.tree_size,
                humantime::format_rfc3339_seconds(at),
                age(f.now, at).as_secs() / 3600
            ),
            vec![format!("ledger/checkpoints/{size:020}.note")],
            "check that the server is running and its ledger is healthy (`/readyz`, ledger_writable)",
        ),
        Some((size, at)) => c(
            Status::Pass,
            format!(
                "{} records verified (from seq {}); the newest checkpoint (size {size}) was signed {}",
                l.tree_size,
                l.first_seq,
                humantime::format_rfc3339_seconds(at)
            ),
            vec![],
            "",
        ),
    }
}

fn checkpoint_published(f: &Facts) -> Check {
    let c = check(
        "CUS-LOG-02",
        "Checkpoints are published outside the host",
        &["CC7.2", "CC7.3"],
    );
    let l = &f.ledger;
    if l.sinks.is_empty() {
        return c(
            Status::Fail,
            "no [[ledger.sinks]] is configured: the only copies of the signed checkpoints live on this host, where an administrator could roll the log back with them".into(),
            vec!["ledger.sinks".into()],
            "add a sink beyond the operator's reach: [[ledger.sinks]] kind = \"directory\" path = \"/mnt/audit-worm/custos\" (or kind = \"http\")",
        );
    }
    let missing: Vec<String> = l
        .sinks
        .iter()
        .filter(|(_, has)| *has == Some(false))
        .map(|(name, _)| name.clone())
        .collect();
    let unknown: Vec<String> = l
        .sinks
        .iter()
        .filter(|(_, has)| has.is_none())
        .map(|(name, _)| name.clone())
        .collect();
    if !missing.is_empty() {
        c(
            Status::Fail,
            format!(
                "the newest checkpoint is missing from sink(s): {}",
                list(&missing)
            ),
            missing,
            "check the sink's path and permissions, and the server log for `checkpoint sink` errors",
        )
    } else if !unknown.is_empty() {
        c(
            Status::Warn,
            format!(
                "the newest checkpoint reached every directory sink; HTTP sink(s) {} cannot be checked from here",
                list(&unknown)
            ),
            unknown,
            "confirm with the witness that it holds the newest checkpoint (`custos audit checkpoint` prints it)",
        )
    } else {
        c(
            Status::Pass,
            format!("the newest checkpoint is in every sink ({})", l.sinks.len()),
            vec![],
            "",
        )
    }
}

fn retention(f: &Facts) -> Check {
    let c = check(
        "CUS-LOG-03",
        "Audit records are kept for the audit period",
        &["CC7.2", "C1.2", "P4.2"],
    );
    let r = f.config.ledger.retention;
    if r < MIN_RETENTION {
        return c(
            Status::Fail,
            format!("ledger.retention is {} days, below 365", days(r)),
            vec!["ledger.retention".into()],
            "set ledger.retention = \"365d\" (or longer) and remove ledger.allow_short_retention",
        );
    }
    let l = &f.ledger;
    match (l.first_seq, l.oldest_record_at) {
        (0, Some(oldest)) => c(
            Status::Pass,
            format!(
                "ledger.retention is {} days; nothing has been purged: the oldest record is the first one, written {}",
                days(r),
                date(oldest)
            ),
            vec![],
            "",
        ),
        (first, Some(oldest)) => {
            // A purge removes whole sealed segments past retention, so the
            // oldest record left is at most a segment's age younger.
            let slack = f.config.ledger.segment_max_age + Duration::from_secs(86_400);
            if age(f.now, oldest) + slack < r {
                c(
                    Status::Fail,
                    format!(
                        "records before seq {first} are gone, but the oldest record left is only {} days old while ledger.retention is {} days",
                        days(age(f.now, oldest)),
                        days(r)
                    ),
                    vec!["ledger/segments".into()],
                    "find out what removed the segments (the ledger records every purge as ledger.purged), and restore them from backup",
                )
            } else {
                c(
                    Status::Pass,
                    format!(
                        "ledger.retention is {} days; records before seq {first} were purged, the oldest kept is from {}",
                        days(r),
                        date(oldest)
                    ),
                    vec![],
                    "",
                )
            }
        }
        (_, None) => c(
            Status::Pass,
            format!("ledger.retention is {} days; the ledger is empty", days(r)),
            vec![],
            "",
        ),
    }
}

fn fail_closed(f: &Facts) -> Check {
    let c = check(
        "CUS-LOG-04",
        "The ledger fails closed and records durably",
        &["CC7.2", "A1.2"],
    );
    let l = &f.config.ledger;
    if l.fail_open {
        return c(
            Status::Fail,
            "ledger.fail_open = true: requests are served even when they cannot be recorded".into(),
            vec!["ledger.fail_open".into()],
            "set ledger.fail_open = false",
        );
    }
    match l.durability {
        custos_config::Durability::Sync => c(
            Status::Pass,
            "fail-closed, and every response waits for its record's fsync (durability = \"sync\")"
                .into(),
            vec![],
            "",
        ),
        custos_config::Durability::Batched { window } => c(
            Status::Pass,
            format!(
                "fail-closed; durability = \"batched\" with a documented loss window of {} ms after a host crash (ledger.batch_window)",
                window.as_millis()
            ),
            vec![],
            "",
        ),
    }
}

fn runbook(f: &Facts) -> Check {
    let c = check(
        "CUS-INC-01",
        "A model-availability incident procedure exists",
        &["CC7.3", "CC7.4", "A1.1"],
    );
    let (path, ok) = &f.runbook;
    if *ok {
        c(
            Status::Pass,
            format!(
                "runbook {path} is present; incidents are detected automatically (incidents.enabled)"
            ),
            vec![],
            "",
        )
    } else {
        c(
            Status::Fail,
            format!("no incident runbook at {path}"),
            vec![path.clone()],
            "install docs/incident-response.md from the Custos release where operators can read it, and pass it with --runbook PATH (or CUSTOS_INCIDENT_RUNBOOK)",
        )
    }
}

fn postmortems(f: &Facts) -> Check {
    let c = check(
        "CUS-INC-02",
        "Every resolved incident in the period has a postmortem",
        &["CC7.4", "CC7.5"],
    );
    let resolved: Vec<&Incident> = f.incidents.iter().filter(|i| !i.is_active()).collect();
    if resolved.is_empty() {
        return c(
            Status::NotApplicable,
            "no incident was resolved in the period".into(),
            vec![],
            "",
        );
    }
    let missing: Vec<String> = resolved
        .iter()
        .filter(|i| i.postmortem.is_none())
        .map(|i| format!("{} ({}, {})", i.id, i.model, i.severity.as_str()))
        .collect();
    if missing.is_empty() {
        c(
            Status::Pass,
            format!(
                "all {} resolved incidents have a postmortem",
                resolved.len()
            ),
            vec![],
            "",
        )
    } else {
        c(
            Status::Fail,
            format!(
                "{} of {} resolved incidents have no postmortem: {}",
                missing.len(),
                resolved.len(),
                list(&missing)
            ),
            missing,
            "write each postmortem and attach it: `custos incidents postmortem INC_ID --file pm.json` (template: `--template`)",
        )
    }
}

fn acknowledgement(f: &Facts) -> Check {
    let c = check(
        "CUS-INC-03",
        "No incident went unacknowledged past its response target",
        &["CC7.4"],
    );
    if f.incidents.is_empty() {
        return c(
            Status::NotApplicable,
            "no incident in the period".into(),
            vec![],
            "",
        );
    }
    let late: Vec<String> = f
        .incidents
        .iter()
        .filter_map(|i| {
            let sla = ack_sla(i.severity);
            let waited = match i.acknowledged_at {
                Some(at) => age(at, i.started_at),
                None if i.is_active() => age(f.now, i.started_at),
                // Resolved by itself before anyone acknowledged it.
                None => age(i.resolved_at.unwrap_or(f.now), i.started_at),
            };
            (waited > sla).then(|| {
                format!(
                    "{} ({}) {} after {} min (target {} min)",
                    i.id,
                    i.severity.as_str(),
                    if i.acknowledged_at.is_some() {
                        "acknowledged"
                    } else {
                        "unacknowledged"
                    },
                    waited.as_secs() / 60,
                    sla.as_secs() / 60
                )
            })
        })
        .collect();
    if late.is_empty() {
        c(
            Status::Pass,
            format!(
                "all {} incidents in the period were acknowledged within their response target",
                f.incidents.len()
            ),
            vec![],
            "",
        )
    } else {
        c(
            Status::Fail,
            format!(
                "{} incident(s) missed the acknowledgement target: {}",
                late.len(),
                list(&late)
            ),
            late,
            "acknowledge open incidents now (`custos incidents ack INC_ID`), and review paging for the missed ones (docs/incident-response.md §1 and §6)",
        )
    }
}

fn loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn listeners(f: &Facts) -> Check {
    let c = check(
        "CUS-NET-01",
        "Listeners on non-loopback addresses use TLS; the admin listener is not public",
        &["CC6.6", "CC6.7"],
    );
    let s = &f.config.server;
    let mut bad = Vec::new();
    if !loopback(s.admin_listen) {
        bad.push(format!(
            "server.admin_listen = {} (console and admin API)",
            s.admin_listen
        ));
    }
    if !loopback(s.listen) {
        bad.push(format!("server.listen = {}", s.listen));
    }
    if bad.is_empty() {
        c(
            Status::Pass,
            format!(
                "both listeners are bound to loopback (gateway {}, admin {}); remote clients come through a TLS-terminating proxy",
                s.listen, s.admin_listen
            ),
            vec![],
            "",
        )
    } else {
        c(
            Status::Fail,
            format!(
                "Custos does not terminate TLS itself, and these listeners accept plain HTTP from the network: {}",
                bad.join("; ")
            ),
            bad,
            "bind to 127.0.0.1 (server.listen = \"127.0.0.1:8080\", server.admin_listen = \"127.0.0.1:8081\") and put a TLS-terminating reverse proxy in front",
        )
    }
}

fn credentials(f: &Facts) -> Check {
    let c = check(
        "CUS-SEC-01",
        "No provider credential is stored in plain text in the configuration",
        &["CC6.1", "CC6.7"],
    );
    if f.loose_credential_files.is_empty() {
        c(
            Status::Pass,
            "provider credentials are referenced by api_key_env or api_key_file only (the configuration refuses inline keys), and every credential file is private".into(),
            vec![],
            "",
        )
    } else {
        c(
            Status::Warn,
            format!(
                "credential file(s) readable by other users: {}",
                list(&f.loose_credential_files)
            ),
            f.loose_credential_files.clone(),
            "chmod 600 each file and make it owned by the service user",
        )
    }
}

fn content(_f: &Facts) -> Check {
    let c = check(
        "CUS-PRV-01",
        "Prompt and response content is not logged",
        &["C1.1", "C1.2", "P4.1"],
    );
    c(
        Status::Pass,
        "Custos never writes prompt or response content to logs or to the audit ledger (the record schema has no field for it), and there is no setting that enables it".into(),
        vec![],
        "",
    )
}

fn capacity(f: &Facts) -> Check {
    let c = check(
        "CUS-AVL-01",
        "Capacity is limited and monitored",
        &["A1.1", "A1.2"],
    );
    let l = &f.config.limits;
    c(
        Status::Pass,
        format!(
            "at most {} requests in flight with a queue of {}; per-model and per-key limits, circuit breakers and incident detection (incidents.enabled = {}) are on; /metrics and per-minute aggregates are kept {} days",
            l.global.max_concurrent,
            l.global.queue_size,
            f.config.incidents.enabled,
            days(f.config.timeseries.retention)
        ),
        vec![],
        "",
    )
}

fn backups() -> Check {
    let c = check(
        "CUS-AVL-02",
        "The data directory is backed up and restores are tested",
        &["A1.2", "A1.3"],
    );
    c(
        Status::Manual,
        "Custos cannot see backups: collect the backup schedule of the data directory (custos.db, ledger/, pepper.key) and the record of the last restore test".into(),
        vec![],
        "attach the backup policy and the last restore test to the evidence request",
    )
}

/// The checks as a terminal table, followed by the findings that are not
/// PASS with their remediations.
pub fn render_table(checks: &[Check]) -> String {
    let mut out = String::new();
    let w_title = checks.iter().map(|c| c.title.len()).max().unwrap_or(5);
    out.push_str(&format!(
        "{:<10}  {:<14}  {:<w_title$}  CRITERIA\n",
        "ID", "STATUS", "CHECK"
    ));
    for c in checks {
        out.push_str(&format!(
            "{:<10}  {:<14}  {:<w_title$}  {}\n",
            c.id,
            c.status.as_str(),
            c.title,
            c.criteria.join(",")
        ));
    }
    let counts = |s: Status| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "\n{} PASS, {} FAIL, {} WARN, {} MANUAL, {} NOT_APPLICABLE\n",
        counts(Status::Pass),
        counts(Status::Fail),
        counts(Status::Warn),
        counts(Status::Manual),
        counts(Status::NotApplicable)
    ));
    for c in checks {
        if matches!(c.status, Status::Pass | Status::NotApplicable) {
            continue;
        }
        out.push_str(&format!(
            "\n[{}] {} {}\n  finding: {}\n",
            c.status.as_str(),
            c.id,
            c.title,
            c.finding
        ));
        if !c.remediation.is_empty() {
            out.push_str(&format!("  fix:     {}\n", c.remediation));
        }
    }
    out
}

/// The checks as OCSF 1.1 Compliance Findings (class 2003), one per check.
pub fn ocsf(checks: &[Check], now: SystemTime, version: &str) -> serde_json::Value {
    let ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let findings: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            let (severity_id, severity) = match c.status {
                Status::Fail => (4, "High"),
                Status::Warn => (3, "Medium"),
                Status::Manual => (2, "Low"),
                Status::Pass | Status::NotApplicable => (1, "Informational"),
            };
            let (status_id, status) = match c.status {
                Status::Pass => (1, "Pass"),
                Status::Warn => (2, "Warning"),
                Status::Fail => (3, "Fail"),
                Status::Manual | Status::NotApplicable => (99, "Other"),
            };
            serde_json::json!({
                "class_uid": 2003,
                "class_name": "Compliance Finding",
                "category_uid": 2,
                "category_name": "Findings",
                "activity_id": 1,
                "activity_name": "Create",
                "type_uid": 200301,
                "type_name": "Compliance Finding: Create",
                "time": ms,
                "severity_id": severity_id,
                "severity": severity,
                "status_id": 1,
                "status": "New",
                "message": c.finding,
                "metadata": {
                    "version": "1.1.0",
                    "product": {"name": "Custos", "vendor_name": "Custos", "version": version},
                },
                "finding_info": {
                    "uid": c.id,
                    "title": c.title,
                    "desc": c.finding,
                    "created_time": ms,
                    "types": ["SOC 2 readiness"],
                },
                "compliance": {
                    "standards": ["AICPA SOC 2 Trust Services Criteria (2017, revised 2022)"],
                    "requirements": c.criteria,
                    "control": c.id,
                    "status_id": status_id,
                    "status": status,
                    "status_detail": c.status.as_str(),
                },
                "remediation": {"desc": c.remediation},
                "resources": c.subjects.iter().map(|s| serde_json::json!({"name": s})).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::Value::Array(findings)
}
