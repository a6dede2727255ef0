//! The incident data model: what is stored, sent to webhooks and written to
//! the audit ledger. Everything here is plain serde data.
//!
//! JSON conventions: timestamps are RFC 3339 UTC strings with milliseconds,
//! durations are integer milliseconds (fields ending in `_ms`), enums are
//! snake_case strings, and tagged unions carry their tag in a named field
//! (`kind` for symptoms, `event` for timeline events). A SQL store may keep
//! the whole [`Incident`] as one JSON document plus indexed columns for
//! `id`, `model`, `severity`, `status`, `started_at` and `resolved_at`.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerState;

/// How bad an incident is. `Sev1` is the worst. The ordering of the enum
/// follows the names (`Sev1 < Sev4`), so the *most* severe of several is
/// their minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The model is down for everyone: all of its targets are open, or
    /// nearly every request fails.
    Sev1,
    /// A large share of requests fail.
    Sev2,
    /// A noticeable share of requests fail, the model runs on too few
    /// targets, or latency is far beyond its objective.
    Sev3,
    /// Latency is beyond its objective; requests still succeed.
    Sev4,
}

impl Severity {
    /// Every severity, worst first.
    pub const ALL: [Severity; 4] = [
        Severity::Sev1,
        Severity::Sev2,
        Severity::Sev3,
        Severity::Sev4,
    ];

    /// `sev1` … `sev4`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Sev1 => "sev1",
            Severity::Sev2 => "sev2",
            Severity::Sev3 => "sev3",
            Severity::Sev4 => "sev4",
        }
    }

    /// Whether `self` is worse than `other`.
    pub fn is_worse_than(self, other: Severity) -> bool {
        self < other
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A severity name that is not `sev1` … `sev4`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity `{0}`, expected sev1, sev2, sev3 or sev4")]
pub struct ParseSeverityError(pub String);

impl FromStr for Severity {
    type Err = ParseSeverityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseSeverityError(s.chars().take(32).collect()))
    }
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// Detected, nobody has acknowledged it yet.
    Open,
    /// An operator has acknowledged it.
    Acknowledged,
    /// Over, automatically or by an operator.
    Resolved,
}

impl IncidentStatus {
    /// `open`, `acknowledged` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Resolved => "resolved",
        }
    }
}

/// The kind of a [`Symptom`], without its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymptomKind {
    /// Too many requests fail.
    ErrorRate,
    /// p95 latency above the objective.
    Latency,
    /// Too few targets available.
    Availability,
    /// No target available at all.
    AllTargetsOpen,
}

/// One breached threshold, with the figures that breached it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Symptom {
    /// The request error rate over the model window reached the threshold.
    ErrorRate {
        /// Failed share of requests.
        error_rate: f64,
        /// The threshold that opened the incident.
        threshold: f64,
        /// Failed requests.
        failures: u64,
        /// Requests (successes plus failures).
        requests: u64,
        /// The window the figures cover, in milliseconds.
        window_ms: u64,
    },
    /// p95 latency of served requests exceeded the objective.
    Latency {
        /// Observed p95, in milliseconds.
        p95_ms: f64,
        /// The objective, in milliseconds.
        slo_ms: u64,
        /// Requests measured.
        samples: u64,
        /// The window the figures cover, in milliseconds.
        window_ms: u64,
    },
    /// Fewer targets than required are available (breaker closed).
    Availability {
        /// Targets with a closed breaker.
        available: u32,
        /// All targets of the model.
        total: u32,
        /// The required share.
        threshold: f64,
        /// The targets that are not available (`provider/model`).
        down: Vec<String>,
    },
    /// Every target of the model is open or half-open.
    AllTargetsOpen {
        /// All targets of the model.
        total: u32,
        /// Their names (`provider/model`).
        targets: Vec<String>,
    },
}

impl Symptom {
    /// The kind.
    pub fn kind(&self) -> SymptomKind {
        match self {
            Symptom::ErrorRate { .. } => SymptomKind::ErrorRate,
            Symptom::Latency { .. } => SymptomKind::Latency,
            Symptom::Availability { .. } => SymptomKind::Availability,
            Symptom::AllTargetsOpen { .. } => SymptomKind::AllTargetsOpen,
        }
    }

    /// One line for people: logs, Slack and the console.
    pub fn describe(&self) -> String {
        let window = |ms: &u64| humantime::format_duration(Duration::from_secs(ms / 1000));
        match self {
            Symptom::ErrorRate {
                error_rate,
                threshold,
                failures,
                requests,
                window_ms,
            } => format!(
                "error rate {:.1}% ({failures} of {requests} requests failed over {}; threshold {:.1}%)",
                error_rate * 100.0,
                window(window_ms),
                threshold * 100.0
            ),
            Symptom::Latency {
                p95_ms,
                slo_ms,
                samples,
                window_ms,
            } => format!(
                "p95 latency {:.0} ms over the {slo_ms} ms objective ({samples} requests over {})",
                p95_ms,
                window(window_ms)
            ),
            Symptom::Availability {
                available,
                total,
                down,
                ..
            } => format!(
                "{available} of {total} targets available; down: {}",
                down.join(", ")
            ),
            Symptom::AllTargetsOpen { total, targets } => format!(
                "all {total} targets unavailable (circuit open): {}",
                targets.join(", ")
            ),
        }
    }
}

/// How an incident was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Custos saw no symptom for the whole recovery period.
    Auto,
    /// An operator resolved it.
    Manual,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Position in the incident's timeline, from 1. Unique per incident;
    /// `incident_id` + `seq` identifies an event.
    pub seq: u32,
    /// When it happened.
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
    /// The operator who did it; `None` for Custos itself.
    pub actor: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: TimelineKind,
}

/// What happened in a [`TimelineEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TimelineKind {
    /// The incident was detected.
    Opened {
        /// Its severity.
        severity: Severity,
        /// What was detected.
        symptoms: Vec<Symptom>,
    },
    /// A further kind of symptom appeared while the incident was open.
    SymptomDetected {
        /// The symptom.
        symptom: Symptom,
    },
    /// The severity changed.
    SeverityChanged {
        /// Before.
        from: Severity,
        /// After.
        to: Severity,
        /// Why.
        reason: String,
    },
    /// A breaker of one of the model's targets changed state.
    BreakerChanged {
        /// `provider/model`.
        target: String,
        /// Before.
        from: BreakerState,
        /// After.
        to: BreakerState,
        /// The breaker's reason label (`error_rate`, `trial_failed` …).
        reason: String,
    },
    /// Every symptom cleared; the recovery period started.
    RecoveryStarted,
    /// A symptom came back during the recovery period.
    RecoveryInterrupted {
        /// The symptoms seen.
        symptoms: Vec<Symptom>,
    },
    /// An operator acknowledged the incident.
    Acknowledged,
    /// The incident was assigned.
    Assigned {
        /// The new assignee.
        assignee: String,
    },
    /// A free-text note.
    Note {
        /// The note.
        text: String,
    },
    /// The incident ended.
    Resolved {
        /// Automatically or by hand.
        resolution: Resolution,
        /// The operator's closing note.
        note: Option<String>,
    },
    /// A postmortem was attached or replaced.
    PostmortemAttached,
}

impl TimelineKind {
    /// The snake_case tag, as in the JSON `event` field.
    pub fn label(&self) -> &'static str {
        match self {
            TimelineKind::Opened { .. } => "opened",
            TimelineKind::SymptomDetected { .. } => "symptom_detected",
            TimelineKind::SeverityChanged { .. } => "severity_changed",
            TimelineKind::BreakerChanged { .. } => "breaker_changed",
            TimelineKind::RecoveryStarted => "recovery_started",
            TimelineKind::RecoveryInterrupted { .. } => "recovery_interrupted",
            TimelineKind::Acknowledged => "acknowledged",
            TimelineKind::Assigned { .. } => "assigned",
            TimelineKind::Note { .. } => "note",
            TimelineKind::Resolved { .. } => "resolved",
            TimelineKind::PostmortemAttached => "postmortem_attached",
        }
    }
}

/// The state of a postmortem action item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Not started.
    Open,
    /// Being worked on.
    InProgress,
    /// Done.
    Done,
    /// Deliberately not done; the postmortem says why.
    WontFix,
}

/// One follow-up of a postmortem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionItem {
    /// What will be done.
    pub description: String,
    /// Who owns it (a person, not a team).
    pub owner: String,
    /// Where it stands.
    pub status: ActionStatus,
    /// Due date, `YYYY-MM-DD`.
    #[serde(default)]
    pub due: Option<String>,
    /// Ticket reference.
    #[serde(default)]
    pub ticket: Option<String>,
}

/// The postmortem of an incident; `docs/incident-response.md` has the
/// template these fields follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postmortem {
    /// Two or three sentences: what happened, to whom, for how long.
    pub summary: String,
    /// Customer impact: affected keys and teams, failed requests, duration,
    /// SLO budget used.
    pub impact: String,
    /// The underlying cause, past the trigger (five whys).
    pub root_cause: String,
    /// What set it off (a deploy, a provider outage, a quota, a traffic
    /// spike).
    pub trigger: String,
    /// How it was detected, and how long detection took; what would have
    /// caught it sooner.
    pub detection: String,
    /// What stopped the impact and what fixed the cause.
    pub resolution: String,
    /// What went well, what went badly, where we were lucky.
    #[serde(default)]
    pub lessons: String,
    /// Follow-ups.
    #[serde(default)]
    pub action_items: Vec<ActionItem>,
    /// Who wrote it; set by the engine to the operator who attached it.
    #[serde(default)]
    pub author: String,
    /// When it was attached; set by the engine.
    #[serde(default = "epoch", with = "crate::time::rfc3339")]
    pub written_at: SystemTime,
}

fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH
}

/// One model-availability incident.
///
/// Example (abridged):
/// ```json
/// {"id":"INC-20250301-0001","model":"gpt-4o","title":"gpt-4o: error rate 62.0% …",
///  "severity":"sev2","severity_pinned":false,"status":"acknowledged","declared_by":null,
///  "started_at":"2025-03-01T12:00:00.000Z","updated_at":"2025-03-01T12:03:00.000Z",
///  "acknowledged_at":"2025-03-01T12:03:00.000Z","acknowledged_by":"alice",
///  "assignee":"alice","resolved_at":null,"resolved_by":null,"resolution":null,
///  "recovering_since":null,
///  "symptoms":[{"kind":"error_rate","error_rate":0.62,"threshold":0.05,
///               "failures":124,"requests":200,"window_ms":300000}],
///  "peak_error_rate":0.62,"peak_p95_ms":null,"affected_keys":17,
///  "affected_keys_capped":false,
///  "timeline":[{"seq":1,"at":"2025-03-01T12:00:00.000Z","actor":null,
///               "event":"opened","severity":"sev2","symptoms":[…]}, …],
///  "timeline_dropped":0,"postmortem":null}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `INC-YYYYMMDD-NNNN`: UTC day of detection and a per-day sequence
    /// from 0001. Sorts by time within a day and across days.
    pub id: String,
    /// The public model.
    pub model: String,
    /// One line: the model and the symptom that opened it.
    pub title: String,
    /// Current severity.
    pub severity: Severity,
    /// Whether an operator set the severity (Custos then only raises it).
    pub severity_pinned: bool,
    /// Where it stands.
    pub status: IncidentStatus,
    /// The operator who declared it by hand, for an outage Custos cannot
    /// see (wrong answers, a client-side problem); `None` when Custos
    /// detected it. Declared incidents are never resolved automatically.
    #[serde(default)]
    pub declared_by: Option<String>,
    /// When it was detected.
    #[serde(with = "crate::time::rfc3339")]
    pub started_at: SystemTime,
    /// When it last changed.
    #[serde(with = "crate::time::rfc3339")]
    pub updated_at: SystemTime,
    /// When it was first acknowledged.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub acknowledged_at: Option<SystemTime>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Who works on it.
    pub assignee: Option<String>,
    /// When it was resolved.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub resolved_at: Option<SystemTime>,
    /// Who resolved it; `None` when resolved automatically.
    pub resolved_by: Option<String>,
    /// How it was resolved.
    pub resolution: Option<Resolution>,
    /// Since when no symptom has been seen, while recovering.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub recovering_since: Option<SystemTime>,
    /// The symptoms of the latest evaluation (empty while recovering).
    pub symptoms: Vec<Symptom>,
    /// Highest error rate seen.
    pub peak_error_rate: f64,
    /// Highest p95 latency seen, when a latency objective applies.
    pub peak_p95_ms: Option<f64>,
    /// Distinct keys whose requests failed while it lasted (and in the
    /// window before detection).
    pub affected_keys: u64,
    /// Whether more keys were affected than could be counted.
    pub affected_keys_capped: bool,
    /// What happened, in order.
    pub timeline: Vec<TimelineEvent>,
    /// Timeline events not kept because the timeline reached its bound
    /// (they were still emitted to listeners and the audit ledger).
    pub timeline_dropped: u64,
    /// The postmortem, once written.
    pub postmortem: Option<Postmortem>,
}

impl Incident {
    /// Whether it is still open or acknowledged.
    pub fn is_active(&self) -> bool {
        self.status != IncidentStatus::Resolved
    }

    /// Time from detection to the first acknowledgement.
    pub fn time_to_acknowledge(&self) -> Option<Duration> {
        self.acknowledged_at
            .map(|at| at.duration_since(self.started_at).unwrap_or_default())
    }

    /// Time from detection to resolution.
    pub fn time_to_resolve(&self) -> Option<Duration> {
        self.resolved_at
            .map(|at| at.duration_since(self.started_at).unwrap_or_default())
    }

    /// The incident without its timeline and postmortem.
    pub fn summary(&self) -> IncidentSummary {
        IncidentSummary {
            id: self.id.clone(),
            model: self.model.clone(),
            title: self.title.clone(),
            severity: self.severity,
            status: self.status,
            started_at: self.started_at,
            acknowledged_at: self.acknowledged_at,
            acknowledged_by: self.acknowledged_by.clone(),
            assignee: self.assignee.clone(),
            resolved_at: self.resolved_at,
            resolution: self.resolution,
            symptoms: self.symptoms.clone(),
            affected_keys: self.affected_keys,
            time_to_acknowledge: self.time_to_acknowledge(),
            time_to_resolve: self.time_to_resolve(),
        }
    }
}

/// An incident without its timeline: what notices and webhooks carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentSummary {
    /// The ID.
    pub id: String,
    /// The public model.
    pub model: String,
    /// One line.
    pub title: String,
    /// Current severity.
    pub severity: Severity,
    /// Where it stands.
    pub status: IncidentStatus,
    /// When it was detected.
    #[serde(with = "crate::time::rfc3339")]
    pub started_at: SystemTime,
    /// When it was acknowledged.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub acknowledged_at: Option<SystemTime>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Who works on it.
    pub assignee: Option<String>,
    /// When it was resolved.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub resolved_at: Option<SystemTime>,
    /// How it was resolved.
    pub resolution: Option<Resolution>,
    /// Latest symptoms.
    pub symptoms: Vec<Symptom>,
    /// Distinct affected keys.
    pub affected_keys: u64,
    /// Time to acknowledge, in milliseconds.
    #[serde(
        rename = "time_to_acknowledge_ms",
        with = "crate::time::duration_ms_opt"
    )]
    pub time_to_acknowledge: Option<Duration>,
    /// Time to resolve, in milliseconds.
    #[serde(rename = "time_to_resolve_ms", with = "crate::time::duration_ms_opt")]
    pub time_to_resolve: Option<Duration>,
}

/// What kind of notice an incident event is, for webhooks and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NoticeKind {
    /// `incident.opened`.
    #[serde(rename = "incident.opened")]
    Opened,
    /// `incident.updated`: any timeline event other than opening and
    /// resolution.
    #[serde(rename = "incident.updated")]
    Updated,
    /// `incident.resolved`.
    #[serde(rename = "incident.resolved")]
    Resolved,
}

impl NoticeKind {
    /// `incident.opened`, `incident.updated` or `incident.resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Opened => "incident.opened",
            NoticeKind::Updated => "incident.updated",
            NoticeKind::Resolved => "incident.resolved",
        }
    }

    /// The kind of notice a timeline event makes.
    pub fn of(kind: &TimelineKind) -> Self {
        match kind {
            TimelineKind::Opened { .. } => NoticeKind::Opened,
            TimelineKind::Resolved { .. } => NoticeKind::Resolved,
            _ => NoticeKind::Updated,
        }
    }
}

/// One incident event, as emitted to [`crate::IncidentListener`]s (the
/// audit ledger and the webhook notifier).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentNotice {
    /// Opened, updated or resolved.
    pub kind: NoticeKind,
    /// The incident after the event.
    pub incident: IncidentSummary,
    /// The event.
    pub event: TimelineEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_order_and_names() {
        assert!(Severity::Sev1.is_worse_than(Severity::Sev2));
        assert_eq!(Severity::Sev1.min(Severity::Sev3), Severity::Sev1);
        assert_eq!("SEV2".parse::<Severity>().unwrap(), Severity::Sev2);
        assert!("sev5".parse::<Severity>().is_err());
    }

    #[test]
    fn timeline_events_round_trip() {
        let ev = TimelineEvent {
            seq: 3,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_740_830_400),
            actor: Some("alice".into()),
            kind: TimelineKind::SeverityChanged {
                from: Severity::Sev3,
                to: Severity::Sev1,
                reason: "all targets down".into(),
            },
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["event"], "severity_changed");
        assert_eq!(json["to"], "sev1");
        assert_eq!(json["at"], "2025-03-01T12:00:00.000Z");
        let back: TimelineEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
        let unit = TimelineEvent {
            kind: TimelineKind::RecoveryStarted,
            actor: None,
            ..ev
        };
        let back: TimelineEvent =
            serde_json::from_str(&serde_json::to_string(&unit).unwrap()).unwrap();
        assert_eq!(back, unit);
    }
}
