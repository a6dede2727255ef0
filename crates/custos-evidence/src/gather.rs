//! Gathering a period's evidence from the three sources of truth: the
//! audit ledger (events, counts, integrity), the state store (keys, users,
//! incidents as they stand) and the running configuration (policies).
//!
//! Everything that happened is taken from the ledger, not the store, so
//! that the pack shows what the tamper-evident log says; the store only
//! supplies the current state (inventory, users, incident write-ups).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime};

use custos_health::{Incident, IncidentQuery};
use custos_ledger::{KeyEntry, LedgerReader};
use custos_record::{Admin, RecordBody, Scalar, Timestamp};
use custos_store::{ListFilter, Store};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::controls::control_matrix;
use crate::error::EvidenceError;
use crate::period::{Period, day_of, days, format_time};
use crate::policy::{Policy, policies};
use crate::table::Table;

/// Keys or users idle for longer than this are flagged in the access review.
pub const INACTIVITY_FLAG: Duration = Duration::from_secs(90 * 86_400);

/// Where the evidence comes from.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// The configuration in force (policies are generated from it).
    pub config: &'a custos_config::Config,
    /// SHA-256 of the configuration file's bytes, if known.
    pub config_sha256: Option<&'a str>,
    /// `<data_dir>/ledger`.
    pub ledger_dir: &'a Path,
    /// The state store.
    pub store: &'a Store,
}

/// Who asked for the pack, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The period covered.
    pub period: Period,
    /// When the pack is generated (also the "as of" time of inventories).
    pub generated_at: SystemTime,
    /// Who generated it, such as `cli:alice`.
    pub generated_by: String,
}

/// Progress of a long gather: called with a phase name, work done and
/// total work (bytes of ledger read).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// The result of verifying the ledger, for the integrity report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integrity {
    /// Whether `custos-verify` found the log intact.
    pub intact: bool,
    /// The first problem, if any.
    pub problem: Option<String>,
    /// Verifier warnings (an unsigned tail, a purge).
    pub warnings: Vec<String>,
    /// Records in the log.
    pub tree_size: u64,
    /// Records read and checked.
    pub records_checked: u64,
    /// Checkpoint notes checked.
    pub checkpoints_checked: u64,
    /// The first seq whose time is at or after the period start.
    pub period_first_seq: u64,
    /// One past the last seq in the period.
    pub period_end_seq: u64,
    /// The newest signed checkpoint at or before the period's first
    /// record: `(size, note)`.
    pub start_checkpoint: Option<(u64, String)>,
    /// The oldest signed checkpoint covering every record of the period.
    pub end_checkpoint: Option<(u64, String)>,
    /// Every key the ledger has signed with.
    pub keys: Vec<KeyEntry>,
}

/// Everything a pack holds, before it is written.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// Who, when, which period.
    pub request: Request,
    /// The log's origin (checkpoint key name), if it has a key yet.
    pub origin: Option<String>,
    /// SHA-256 of the configuration in force, if known.
    pub config_sha256: Option<String>,
    /// The tables, in report order.
    pub tables: Vec<Table>,
    /// The incidents touching the period, with timelines and postmortems.
    pub incidents: Vec<Incident>,
    /// The ledger verification.
    pub integrity: Integrity,
    /// Policy documents generated from the configuration.
    pub policies: Vec<Policy>,
}

impl Evidence {
    /// The table named `name`.
    #[must_use]
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

fn ts(t: SystemTime) -> Value {
    json!(format_time(t))
}

fn opt_ts(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, ts)
}

fn scalar(s: &Scalar) -> Value {
    match s {
        Scalar::Bool(b) => json!(b),
        Scalar::Int(i) => json!(i),
        Scalar::Str(s) => json!(s),
    }
}

fn via(a: &Admin) -> Value {
    serde_json::to_value(a.actor.via).unwrap_or(Value::Null)
}

/// Compact JSON of an admin record's changes: `{"field": after}` or
/// `{"field": {"before":…, "after":…}}` when both are present.
fn changes_text(a: &Admin) -> String {
    let map: serde_json::Map<String, Value> = a
        .changes
        .iter()
        .filter(|(k, _)| k.as_str() != "outbox_id" && k.as_str() != "at_ms")
        .map(|(k, c)| {
            let v = match (&c.before, &c.after) {
                (None, Some(after)) => scalar(after),
                (b, a) => {
                    json!({"before": b.as_ref().map(scalar), "after": a.as_ref().map(scalar)})
                }
            };
            (k.clone(), v)
        })
        .collect();
    if map.is_empty() {
        String::new()
    } else {
        Value::Object(map).to_string()
    }
}

/// Per-day, per-model latency and error sample.
#[derive(Default)]
struct ModelDay {
    requests: u64,
    server_errors: u64,
    client_errors: u64,
    tokens: u64,
    latencies_us: Vec<u64>,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

/// What one pass over the ledger collects.
struct Scan {
    per_day: BTreeMap<String, [u64; 3]>,
    events: Table,
    key_log: Table,
    config_changes: Table,
    capacity: BTreeMap<(String, String), ModelDay>,
    /// user id -> (logins, failures, lockouts) in the period.
    logins: HashMap<String, [u64; 3]>,
    oldest: Option<(u64, Timestamp)>,
    first_seq: Option<u64>,
    end_seq: Option<u64>,
    last_seq: Option<u64>,
    last_config_before: Option<String>,
    purges: Vec<(Timestamp, String)>,
}

fn scan_ledger(
    reader: &LedgerReader,
    ledger_dir: &Path,
    period: &Period,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Scan, EvidenceError> {
    let total: u64 = reader
        .segments()?
        .iter()
        .filter_map(|s| {
            std::fs::metadata(ledger_dir.join("segments").join(format!("{s:020}.jsonl"))).ok()
        })
        .map(|m| m.len())
        .sum();
    let mut scan = Scan {
        per_day: days(period).into_iter().map(|d| (d, [0; 3])).collect(),
        events: Table::new(
            "events",
            "Audit events in the period",
            "Every admin and system record of the ledger whose time lies in the period, \
             by sequence number. Inference records are counted per day instead.",
            &[
                "seq", "time", "type", "event", "actor", "role", "via", "mfa", "target", "details",
                "reason",
            ],
        ),
        key_log: Table::new(
            "key-lifecycle",
            "Key lifecycle log",
            "Every API key create, update, rotate and revoke in the period, from the ledger.",
            &[
                "seq", "time", "event", "key_id", "actor", "role", "via", "mfa", "changes",
                "reason",
            ],
        ),
        config_changes: Table::new(
            "config-changes",
            "Configuration change history",
            "Each time the gateway started and loaded its configuration in the period, with \
             the configuration's SHA-256; `changed` is true when it differs from the previous load.",
            &["seq", "time", "event", "source", "sha256", "changed"],
        ),
        capacity: BTreeMap::new(),
        logins: HashMap::new(),
        oldest: None,
        first_seq: None,
        end_seq: None,
        last_seq: None,
        last_config_before: None,
        purges: Vec::new(),
    };
    let tolerance = Duration::from_micros(custos_verify::TIMESTAMP_TOLERANCE);
    let mut done = 0u64;
    let mut prev_config = None::<String>;
    for item in reader.records()? {
        let stored = item?;
        done += stored.bytes.len() as u64 + 1;
        if done % (1 << 20) < stored.bytes.len() as u64 + 1 {
            progress("reading ledger", done, total);
        }
        let rec = &stored.record;
        let t = rec.ts.to_system_time();
        scan.oldest.get_or_insert((rec.seq, rec.ts));
        scan.last_seq = Some(rec.seq);
        if t < period.from() {
            if let RecordBody::System(s) = &rec.body
                && s.event == "config.loaded"
            {
                scan.last_config_before = s
                    .details
                    .get("sha256")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                prev_config.clone_from(&scan.last_config_before);
            }
            continue;
        }
        if t >= period.to() {
            scan.end_seq.get_or_insert(rec.seq);
            // Time never goes back by more than the tolerance, so nothing
            // later can fall in the period.
            if t >= period.to() + tolerance {
                break;
            }
            continue;
        }
        scan.first_seq.get_or_insert(rec.seq);
        let day = day_of(t);
        let counts = scan.per_day.entry(day.clone()).or_default();
        let time = json!(rec.ts.to_string());
        match &rec.body {
            RecordBody::Inference(inf) => {
                counts[0] += 1;
                let model = inf
                    .model_served
                    .clone()
                    .or_else(|| inf.model_requested.clone())
                    .unwrap_or_else(|| "(none)".to_owned());
                let md = scan.capacity.entry((day, model)).or_default();
                md.requests += 1;
                if inf.status >= 500 {
                    md.server_errors += 1;
                } else if inf.status >= 400 {
                    md.client_errors += 1;
                }
                md.tokens += inf.usage.as_ref().map_or(0, |u| u.total_tokens);
                md.latencies_us.push(inf.latency_us);
            }
            RecordBody::Admin(a) => {
                counts[1] += 1;
                let target = a.target.as_ref().map(|t| format!("{}:{}", t.kind, t.id));
                scan.events.push(vec![
                    json!(rec.seq),
                    time.clone(),
                    json!("admin"),
                    json!(a.event),
                    json!(a.actor.user),
                    json!(a.actor.role),
                    via(a),
                    json!(a.actor.mfa),
                    json!(target),
                    json!(changes_text(a)),
                    json!(a.reason),
                ]);
                if a.event.starts_with("key.") {
                    scan.key_log.push(vec![
                        json!(rec.seq),
                        time,
                        json!(a.event),
                        json!(a.target.as_ref().map(|t| t.id.clone())),
                        json!(a.actor.user),
                        json!(a.actor.role),
                        via(a),
                        json!(a.actor.mfa),
                        json!(changes_text(a)),
                        json!(a.reason),
                    ]);
                }
                let slot = match a.event.as_str() {
                    "login.succeeded" => Some(0),
                    "login.failed" => Some(1),
                    "user.locked" => Some(2),
                    _ => None,
                };
                if let (Some(i), Some(target)) = (slot, &a.target) {
                    scan.logins.entry(target.id.clone()).or_default()[i] += 1;
                }
            }
            RecordBody::System(s) => {
                counts[2] += 1;
                let details: serde_json::Map<String, Value> = s
                    .details
                    .iter()
                    .map(|(k, v)| (k.clone(), scalar(v)))
                    .collect();
                scan.events.push(vec![
                    json!(rec.seq),
                    time.clone(),
                    json!("system"),
                    json!(s.event),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    json!(if details.is_empty() {
                        String::new()
                    } else {
                        Value::Object(details).to_string()
                    }),
                    Value::Null,
                ]);
                let detail = |k: &str| s.details.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                match s.event.as_str() {
                    "config.loaded" => {
                        let sha = detail("sha256");
                        let changed = prev_config.is_none() || prev_config != sha;
                        scan.config_changes.push(vec![
                            json!(rec.seq),
                            time,
                            json!(s.event),
                            json!(detail("source")),
                            json!(sha),
                            json!(changed),
                        ]);
                        prev_config = sha;
                    }
                    "retention.purged" => {
                        scan.purges
                            .push((rec.ts, detail("cutoff").unwrap_or_default()));
                    }
                    _ => {}
                }
            }
        }
    }
    progress("reading ledger", total, total);
    Ok(scan)
}

fn integrity(
    reader: &LedgerReader,
    ledger_dir: &Path,
    scan: &Scan,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Integrity, EvidenceError> {
    let report = custos_verify::verify_dir(ledger_dir, &[], None, &mut |done, total| {
        progress("verifying ledger", done, total);
    });
    let stored_end = scan.last_seq.map_or(report.tree_size, |s| s + 1);
    let period_first_seq = scan.first_seq.or(scan.end_seq).unwrap_or(stored_end);
    let period_end_seq = scan.end_seq.unwrap_or(stored_end);
    let sizes = reader.checkpoint_sizes()?;
    let start = sizes
        .iter()
        .rev()
        .find(|&&s| s <= period_first_seq)
        .copied();
    let end = sizes.iter().find(|&&s| s >= period_end_seq).copied();
    let note = |size: Option<u64>| -> Result<Option<(u64, String)>, EvidenceError> {
        Ok(match size {
            Some(s) => reader.checkpoint(s)?.map(|n| (s, n)),
            None => None,
        })
    };
    Ok(Integrity {
        intact: report.is_intact(),
        problem: report.problem.as_ref().map(ToString::to_string),
        warnings: report.warnings.clone(),
        tree_size: report.tree_size,
        records_checked: report.records_checked,
        checkpoints_checked: report.checkpoints_checked,
        period_first_seq,
        period_end_seq,
        start_checkpoint: note(start)?,
        end_checkpoint: note(end)?,
        keys: reader.verifier_history().unwrap_or_default(),
    })
}

/// The SHA-256 fingerprint of a verifier's raw Ed25519 public key, hex.
#[must_use]
pub fn fingerprint(entry: &KeyEntry) -> String {
    hex(&Sha256::digest(entry.verifier.verifying_key().as_bytes()))
}

/// Lowercase hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn days_between(later: SystemTime, earlier: SystemTime) -> u64 {
    later
        .duration_since(earlier)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// Gathers the evidence for `request.period`.
///
/// # Errors
///
/// When the ledger or the store cannot be read. A ledger that fails
/// verification is not an error: the integrity report says so.
pub async fn gather(
    sources: &Sources<'_>,
    request: Request,
    progress: Progress<'_>,
) -> Result<Evidence, EvidenceError> {
    let period = request.period;
    let now = request.generated_at;
    let config = sources.config;
    let reader = LedgerReader::open(sources.ledger_dir);
    let mut scan = scan_ledger(&reader, sources.ledger_dir, &period, progress)?;
    let integrity = integrity(&reader, sources.ledger_dir, &scan, progress)?;
    progress("reading store", 0, 1);

    // Key inventory and access review, as of generation time.
    let keys = sources.store.keys().list(&ListFilter::default()).await?;
    let mut inventory = Table::new(
        "key-inventory",
        "Key inventory",
        format!(
            "Every API key in the store as of {}, revoked ones included. No secret or hash is included.",
            format_time(now)
        ),
        &[
            "id",
            "name",
            "owner",
            "team",
            "scopes",
            "state",
            "created_at",
            "created_by",
            "last_rotated",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "revoked_by",
            "revoke_reason",
        ],
    );
    let mut review = Table::new(
        "access-review",
        "Access review report",
        format!(
            "Every credential that grants access (API keys, console users) with its findings as of {}: \
             rotation past the {}-day policy, no expiry, unused or inactive for {} days or more, \
             console users without MFA. `action_required` rows need a reviewer's decision.",
            format_time(now),
            config.keys.max_age.as_secs() / 86_400,
            INACTIVITY_FLAG.as_secs() / 86_400
        ),
        &[
            "subject_kind",
            "subject",
            "owner",
            "access",
            "last_activity",
            "findings",
            "action_required",
        ],
    );
    for k in &keys {
        let state = k.state(now);
        let scope = serde_json::to_string(&k.scope).unwrap_or_default();
        inventory.push(vec![
            json!(k.id.to_string()),
            json!(k.name),
            json!(k.owner),
            json!(k.team),
            json!(scope),
            serde_json::to_value(state).unwrap_or(Value::Null),
            ts(k.created_at),
            json!(k.created_by.to_string()),
            ts(k.secret_created_at),
            opt_ts(k.expires_at),
            opt_ts(k.last_used_at),
            opt_ts(k.revoked.as_ref().map(|r| r.at)),
            json!(k.revoked.as_ref().map(|r| r.by.to_string())),
            json!(k.revoked.as_ref().map(|r| r.reason.clone())),
        ]);
        let mut findings = Vec::new();
        let mut action = false;
        match state {
            custos_store::KeyState::Revoked => findings.push("revoked".to_owned()),
            custos_store::KeyState::Expired => findings.push("expired".to_owned()),
            custos_store::KeyState::Active => {
                let age = days_between(now, k.secret_created_at);
                let max = config.keys.max_age.as_secs() / 86_400;
                if now.duration_since(k.secret_created_at).unwrap_or_default() > config.keys.max_age
                {
                    findings.push(format!(
                        "rotation overdue: secret is {age} days old, policy {max} days"
                    ));
                    action = true;
                } else if now + config.keys.rotation_warning
                    > k.secret_created_at + config.keys.max_age
                {
                    findings.push(format!("rotation due soon: secret is {age} days old"));
                }
                if k.expires_at.is_none() {
                    findings.push("no expiry date".to_owned());
                }
                match k.last_used_at {
                    None if now.duration_since(k.created_at).unwrap_or_default()
                        > INACTIVITY_FLAG =>
                    {
                        findings.push("never used".to_owned());
                        action = true;
                    }
                    None => findings.push("not used yet".to_owned()),
                    Some(t) if now.duration_since(t).unwrap_or_default() > INACTIVITY_FLAG => {
                        findings.push(format!("unused for {} days", days_between(now, t)));
                        action = true;
                    }
                    Some(_) => {}
                }
            }
        }
        review.push(vec![
            json!("api_key"),
            json!(format!("{} ({})", k.id, k.name)),
            json!(k.owner),
            json!(scope),
            opt_ts(k.last_used_at),
            json!(findings.join("; ")),
            json!(action),
        ]);
    }

    // Console users.
    let users = sources.store.users().list().await?;
    let mut user_table = Table::new(
        "console-users",
        "Console users",
        format!(
            "Admin console users as of {}, with MFA status, last sign-in, current failure count and lock, \
             and the sign-ins, failures and lockouts the ledger recorded in the period. No password hash \
             or TOTP seed is included.",
            format_time(now)
        ),
        &[
            "username",
            "role",
            "state",
            "mfa_enrolled",
            "mfa_enrolled_at",
            "last_login_at",
            "failed_attempts",
            "locked",
            "locked_until",
            "created_at",
            "created_by",
            "password_changed_at",
            "logins_in_period",
            "login_failures_in_period",
            "lockouts_in_period",
        ],
    );
    for u in &users {
        let counts = scan.logins.get(&u.id).copied().unwrap_or_default();
        user_table.push(vec![
            json!(u.username),
            json!(u.role.as_str()),
            json!(u.state.as_str()),
            json!(u.mfa_enrolled_at.is_some()),
            opt_ts(u.mfa_enrolled_at),
            opt_ts(u.last_login_at),
            json!(u.failed_attempts),
            json!(u.is_locked(now)),
            opt_ts(u.locked_until),
            ts(u.created_at),
            json!(u.created_by),
            ts(u.password_changed_at),
            json!(counts[0]),
            json!(counts[1]),
            json!(counts[2]),
        ]);
        let mut findings = Vec::new();
        let mut action = false;
        let active = u.state.as_str() == "active";
        if !active {
            findings.push("disabled".to_owned());
        }
        if active && u.mfa_enrolled_at.is_none() {
            findings.push("MFA not enrolled".to_owned());
            action = true;
        }
        if u.is_locked(now) {
            findings.push("locked".to_owned());
        }
        let last = u.last_login_at.unwrap_or(u.created_at);
        if active && now.duration_since(last).unwrap_or_default() > INACTIVITY_FLAG {
            findings.push(format!("no sign-in for {} days", days_between(now, last)));
            action = true;
        }
        if counts[2] > 0 {
            findings.push(format!("{} lockout(s) in period", counts[2]));
        }
        review.push(vec![
            json!("console_user"),
            json!(u.username),
            json!(u.created_by),
            json!(format!("role {}", u.role.as_str())),
            opt_ts(u.last_login_at),
            json!(findings.join("; ")),
            json!(action),
        ]);
    }

    // Incidents that were open at any time in the period.
    let all = sources
        .store
        .incidents(&IncidentQuery {
            until: Some(period.to()),
            ..IncidentQuery::default()
        })
        .await?;
    let mut incidents: Vec<Incident> = all
        .into_iter()
        .filter(|i| i.resolved_at.is_none_or(|r| r >= period.from()))
        .collect();
    incidents.sort_by(|a, b| {
        a.started_at
            .cmp(&b.started_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut inc_table = Table::new(
        "incidents",
        "Incidents",
        "Model-availability incidents open at any time in the period, with time to acknowledge \
         and time to resolve in seconds.",
        &[
            "id",
            "model",
            "title",
            "severity",
            "status",
            "started_at",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "resolved_by",
            "time_to_acknowledge_s",
            "time_to_resolve_s",
            "postmortem",
        ],
    );
    let mut timeline = Table::new(
        "incident-timeline",
        "Incident timelines",
        "Every timeline entry of those incidents.",
        &["incident_id", "seq", "time", "actor", "event", "detail"],
    );
    for i in &incidents {
        inc_table.push(vec![
            json!(i.id),
            json!(i.model),
            json!(i.title),
            json!(i.severity.as_str()),
            json!(i.status.as_str()),
            ts(i.started_at),
            opt_ts(i.acknowledged_at),
            json!(i.acknowledged_by),
            opt_ts(i.resolved_at),
            json!(i.resolved_by),
            json!(i.time_to_acknowledge().map(|d| d.as_secs())),
            json!(i.time_to_resolve().map(|d| d.as_secs())),
            json!(i.postmortem.is_some()),
        ]);
        for e in &i.timeline {
            let mut detail = serde_json::to_value(&e.kind).unwrap_or(Value::Null);
            if let Some(obj) = detail.as_object_mut() {
                obj.remove("event");
            }
            let detail = match &detail {
                Value::Object(o) if o.is_empty() => String::new(),
                other => other.to_string(),
            };
            timeline.push(vec![
                json!(i.id),
                json!(e.seq),
                ts(e.at),
                json!(e.actor),
                json!(e.kind.label()),
                json!(detail),
            ]);
        }
    }

    // Records per day, capacity.
    let mut per_day = Table::new(
        "records-per-day",
        "Ledger records per day",
        "Records the ledger holds for each UTC day of the period, by type.",
        &["day", "inference", "admin", "system", "total"],
    );
    for (day, c) in &scan.per_day {
        per_day.push(vec![
            json!(day),
            json!(c[0]),
            json!(c[1]),
            json!(c[2]),
            json!(c[0] + c[1] + c[2]),
        ]);
    }
    let mut capacity = Table::new(
        "capacity",
        "Capacity and performance",
        "Per UTC day and served model, from the ledger's inference records: requests, server errors \
         (status 5xx), client errors (4xx), error rate (server errors / requests), latency p50 and p99 \
         (nearest rank, arrival to end of response) and total tokens.",
        &[
            "day",
            "model",
            "requests",
            "server_errors",
            "client_errors",
            "error_rate",
            "p50_ms",
            "p99_ms",
            "tokens",
        ],
    );
    for ((day, model), md) in &mut scan.capacity {
        md.latencies_us.sort_unstable();
        let ms = |us: Option<u64>| us.map(|u| round(u as f64 / 1000.0, 1));
        capacity.push(vec![
            json!(day),
            json!(model),
            json!(md.requests),
            json!(md.server_errors),
            json!(md.client_errors),
            json!(round(
                md.server_errors as f64 / md.requests.max(1) as f64,
                4
            )),
            json!(ms(percentile(&md.latencies_us, 0.50))),
            json!(ms(percentile(&md.latencies_us, 0.99))),
            json!(md.tokens),
        ]);
    }

    // Integrity and retention as key/value tables.
    let mut integ = Table::new(
        "integrity",
        "Audit-log integrity",
        "The offline verification of the whole ledger (custos-verify, trusting the ledger's own key \
         history), where the period sits in the log and which signed checkpoints bracket it.",
        &["item", "value"],
    );
    let cp = |c: &Option<(u64, String)>| c.as_ref().map(|(s, _)| json!(s)).unwrap_or(Value::Null);
    for (k, v) in [
        (
            "verify_result",
            json!(if integrity.intact { "intact" } else { "FAILED" }),
        ),
        ("verify_problem", json!(integrity.problem)),
        ("verify_warnings", json!(integrity.warnings.join("; "))),
        ("tree_size", json!(integrity.tree_size)),
        ("records_checked", json!(integrity.records_checked)),
        ("checkpoints_checked", json!(integrity.checkpoints_checked)),
        ("period_first_seq", json!(integrity.period_first_seq)),
        ("period_end_seq", json!(integrity.period_end_seq)),
        (
            "period_records",
            json!(
                integrity.period_end_seq - integrity.period_first_seq.min(integrity.period_end_seq)
            ),
        ),
        ("start_checkpoint_size", cp(&integrity.start_checkpoint)),
        ("end_checkpoint_size", cp(&integrity.end_checkpoint)),
    ] {
        integ.push(vec![json!(k), v]);
    }
    for e in &integrity.keys {
        integ.push(vec![
            json!(format!("public_key_from_size_{}", e.first_size)),
            json!(e.verifier.to_vkey()),
        ]);
        integ.push(vec![
            json!(format!("public_key_sha256_from_size_{}", e.first_size)),
            json!(fingerprint(e)),
        ]);
    }
    let mut retention = Table::new(
        "retention",
        "Retention configuration",
        "The retention settings in force and the oldest record the ledger still holds.",
        &["item", "value"],
    );
    for (k, v) in [
        (
            "ledger_retention_days",
            json!(config.ledger.retention.as_secs() / 86_400),
        ),
        (
            "timeseries_retention_days",
            json!(config.timeseries.retention.as_secs() / 86_400),
        ),
        ("oldest_record_seq", json!(scan.oldest.map(|o| o.0))),
        (
            "oldest_record_time",
            json!(scan.oldest.map(|o| o.1.to_string())),
        ),
        ("purges_in_period", json!(scan.purges.len())),
        (
            "last_purge_cutoff",
            json!(scan.purges.last().map(|p| p.1.clone())),
        ),
        (
            "external_checkpoint_sinks",
            json!(config.ledger.sinks.len()),
        ),
    ] {
        retention.push(vec![json!(k), v]);
    }

    let origin = integrity.keys.last().map(|k| k.verifier.name().to_owned());
    let mut tables = vec![
        control_matrix(),
        inventory,
        scan.key_log,
        user_table,
        review,
        integ,
        per_day,
        retention,
        inc_table,
        timeline,
        capacity,
        scan.config_changes,
        scan.events,
    ];
    tables.iter_mut().for_each(|t| t.rows.shrink_to_fit());
    progress("reading store", 1, 1);
    Ok(Evidence {
        policies: policies(config, now),
        request,
        origin,
        config_sha256: sources.config_sha256.map(str::to_owned),
        tables,
        incidents,
        integrity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
