//! Model-availability incidents: detection from the health state, the
//! incident lifecycle, operator actions, storage and response figures.
//!
//! The [`IncidentEngine`] is fed two ways:
//! - [`IncidentEngine::evaluate`] with every model's [`ModelHealth`], every
//!   `evaluation_interval` ([`spawn_incident_loop`] does this). It opens an
//!   incident when a model breaches a threshold ([`detect()`]), updates it
//!   while it lasts (new symptoms, escalations, affected keys), and resolves
//!   it once no symptom has been seen for `recovery_period`;
//! - breaker state changes, through [`IncidentEngine::breaker_listener`]: a
//!   non-blocking inbox drained at the next evaluation, which adds them to
//!   the timeline of the affected model's incident.
//!
//! Operators may also [`IncidentEngine::declare`] an incident Custos cannot
//! see; such an incident is resolved only by hand.
//!
//! At most one incident per model is active. Every change is saved to the
//! [`IncidentStore`] and every timeline event is emitted as an
//! [`IncidentNotice`] to the [`IncidentListener`] (the audit ledger and the
//! webhook notifier). Automatic changes only ever raise the severity; an
//! operator may set it either way.

pub mod detect;
pub mod model;
pub mod stats;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use custos_types::Clock;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::breaker::BreakerEvent;
use crate::health::{BreakerListener, HealthEngine, ModelHealth};
use crate::webhook::WebhookSettings;

use detect::{Thresholds, detect, worst};
use model::{
    Incident, IncidentNotice, IncidentStatus, NoticeKind, Postmortem, Resolution, Severity,
    Symptom, SymptomKind, TimelineEvent, TimelineKind,
};
use stats::IncidentStats;
use store::{IncidentQuery, IncidentStore, StoreError};

/// Validated `[incidents]` settings; see [`crate::config::RawIncidents`].
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentSettings {
    /// Whether incidents are detected (default true).
    pub enabled: bool,
    /// Time between evaluations (default 10 s).
    pub evaluation_interval: Duration,
    /// Thresholds of every model without its own entry.
    pub thresholds: Thresholds,
    /// Thresholds of named models.
    pub models: BTreeMap<String, Thresholds>,
    /// How long without any symptom before an incident resolves itself
    /// (default 5 min).
    pub recovery_period: Duration,
    /// Most distinct affected keys counted per incident (default 10 000).
    pub max_affected_keys: usize,
    /// Most timeline events kept per incident (default 500; the opening
    /// event and the newest ones are kept).
    pub max_timeline_events: usize,
    /// Webhooks to notify.
    pub webhooks: Vec<WebhookSettings>,
}

impl Default for IncidentSettings {
    fn default() -> Self {
        IncidentSettings {
            enabled: true,
            evaluation_interval: Duration::from_secs(10),
            thresholds: Thresholds::default(),
            models: BTreeMap::new(),
            recovery_period: Duration::from_secs(300),
            max_affected_keys: 10_000,
            max_timeline_events: 500,
            webhooks: Vec::new(),
        }
    }
}

impl IncidentSettings {
    /// The thresholds that apply to `model`.
    pub fn thresholds_for(&self, model: &str) -> &Thresholds {
        self.models.get(model).unwrap_or(&self.thresholds)
    }
}

/// Why an incident operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IncidentError {
    /// No incident has this ID.
    #[error("no incident `{0}`")]
    NotFound(String),
    /// The operation needs an active incident and this one is resolved.
    #[error("incident `{0}` is already resolved")]
    Resolved(String),
    /// The model already has an active incident.
    #[error("model `{model}` already has the active incident `{id}`")]
    AlreadyActive {
        /// The model.
        model: String,
        /// Its active incident.
        id: String,
    },
    /// The incident was acknowledged before.
    #[error("incident `{id}` was already acknowledged by `{by}`")]
    AlreadyAcknowledged {
        /// The incident.
        id: String,
        /// Who acknowledged it.
        by: String,
    },
    /// An operator-supplied field is unacceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, such as `note` or `postmortem.root_cause`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Receives every incident event. Called after the change is saved (or
/// its save has failed and will be retried); must not block.
pub trait IncidentListener: Send + Sync + 'static {
    /// One event.
    fn incident_event(&self, notice: &IncidentNotice);
}

/// A listener that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoIncidentListener;

impl IncidentListener for NoIncidentListener {
    fn incident_event(&self, _notice: &IncidentNotice) {}
}

/// Sends each incident event to several listeners in order.
pub struct IncidentFanout(pub Vec<Arc<dyn IncidentListener>>);

impl IncidentListener for IncidentFanout {
    fn incident_event(&self, notice: &IncidentNotice) {
        for l in &self.0 {
            l.incident_event(notice);
        }
    }
}

/// Breaker events waiting for the next evaluation. Bounded: past
/// [`BreakerInbox::CAPACITY`] the oldest are dropped and counted (they are
/// in the audit ledger regardless, through the health engine's listener).
#[derive(Debug, Default)]
pub struct BreakerInbox {
    queue: Mutex<VecDeque<BreakerEvent>>,
    dropped: AtomicU64,
}

impl BreakerInbox {
    /// Most events held.
    pub const CAPACITY: usize = 1024;

    fn drain(&self) -> Vec<BreakerEvent> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect()
    }

    /// Events dropped because the inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl BreakerListener for BreakerInbox {
    fn breaker_changed(&self, event: &BreakerEvent) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() >= Self::CAPACITY {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(event.clone());
    }
}

#[derive(Debug)]
struct Active {
    incident: Incident,
    keys: HashSet<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Active incidents by model.
    active: BTreeMap<String, Active>,
    /// The day and the last sequence number used on it.
    seq: Option<(String, u32)>,
    /// Models whose active incident changed but could not be saved.
    dirty: BTreeSet<String>,
    /// Resolved incidents whose final save failed, by ID.
    unsaved: BTreeMap<String, Incident>,
}

/// The incident engine.
pub struct IncidentEngine {
    settings: IncidentSettings,
    store: Arc<dyn IncidentStore>,
    clock: Arc<dyn Clock>,
    listener: Arc<dyn IncidentListener>,
    inbox: Arc<BreakerInbox>,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for IncidentEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncidentEngine")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const MAX_NAME: usize = 128;
const MAX_NOTE: usize = 4096;
const MAX_TEXT: usize = 16 * 1024;
const MAX_ACTION_ITEMS: usize = 100;

/// Checks an operator-supplied text: trimmed, non-empty, bounded, and free
/// of control characters (newlines and tabs allowed when `multiline`).
fn checked(field: &str, value: &str, max: usize, multiline: bool) -> Result<String, IncidentError> {
    let invalid = |message: String| IncidentError::Invalid {
        field: field.to_owned(),
        message,
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if v.chars().count() > max {
        return Err(invalid(format!("must be at most {max} characters")));
    }
    if v.chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t')))
    {
        return Err(invalid("must not contain control characters".into()));
    }
    Ok(v.to_owned())
}

fn checked_postmortem(mut pm: Postmortem) -> Result<Postmortem, IncidentError> {
    let field = |name: &str| format!("postmortem.{name}");
    pm.summary = checked(&field("summary"), &pm.summary, MAX_TEXT, true)?;
    pm.impact = checked(&field("impact"), &pm.impact, MAX_TEXT, true)?;
    pm.root_cause = checked(&field("root_cause"), &pm.root_cause, MAX_TEXT, true)?;
    pm.trigger = checked(&field("trigger"), &pm.trigger, MAX_TEXT, true)?;
    pm.detection = checked(&field("detection"), &pm.detection, MAX_TEXT, true)?;
    pm.resolution = checked(&field("resolution"), &pm.resolution, MAX_TEXT, true)?;
    if !pm.lessons.trim().is_empty() {
        pm.lessons = checked(&field("lessons"), &pm.lessons, MAX_TEXT, true)?;
    }
    if pm.action_items.len() > MAX_ACTION_ITEMS {
        return Err(IncidentError::Invalid {
            field: field("action_items"),
            message: format!("at most {MAX_ACTION_ITEMS} items"),
        });
    }
    for (i, item) in pm.action_items.iter_mut().enumerate() {
        let f = |name: &str| format!("postmortem.action_items[{i}].{name}");
        item.description = checked(&f("description"), &item.description, MAX_NOTE, true)?;
        item.owner = checked(&f("owner"), &item.owner, MAX_NAME, false)?;
        if let Some(due) = &item.due {
            let ok = due.len() == 10
                && due.char_indices().all(|(i, c)| {
                    if i == 4 || i == 7 {
                        c == '-'
                    } else {
                        c.is_ascii_digit()
                    }
                });
            if !ok {
                return Err(IncidentError::Invalid {
                    field: f("due"),
                    message: "must be a date like 2025-03-31".into(),
                });
            }
        }
        if let Some(ticket) = &item.ticket {
            item.ticket = Some(checked(&f("ticket"), ticket, 256, false)?);
        }
    }
    Ok(pm)
}

impl IncidentEngine {
    /// A new engine with no active incident; call
    /// [`IncidentEngine::restore`] at startup to pick up the ones the store
    /// still has open.
    pub fn new(
        settings: IncidentSettings,
        store: Arc<dyn IncidentStore>,
        clock: Arc<dyn Clock>,
        listener: Arc<dyn IncidentListener>,
    ) -> Self {
        IncidentEngine {
            settings,
            store,
            clock,
            listener,
            inbox: Arc::new(BreakerInbox::default()),
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &IncidentSettings {
        &self.settings
    }

    /// The breaker listener to give the [`HealthEngine`] (directly or in a
    /// [`crate::BreakerFanout`]). It only enqueues.
    pub fn breaker_listener(&self) -> Arc<BreakerInbox> {
        self.inbox.clone()
    }

    /// Loads the store's active incidents into the engine. Returns how many.
    pub async fn restore(&self) -> Result<usize, IncidentError> {
        let query = IncidentQuery {
            active_only: true,
            ..IncidentQuery::default()
        };
        let found = self.store.list(&query).await?;
        let mut st = self.state.lock().await;
        let mut n = 0;
        for incident in found {
            if st.active.contains_key(&incident.model) {
                // Two active incidents of one model can only come from a
                // store edited by hand; the newest (listed first) wins.
                continue;
            }
            st.active.insert(
                incident.model.clone(),
                Active {
                    incident,
                    keys: HashSet::new(),
                },
            );
            n += 1;
        }
        Ok(n)
    }

    /// Evaluates every model once: opens, updates and resolves incidents,
    /// adds queued breaker events to timelines, saves what changed and
    /// emits the events. Saving failures are retried at the next
    /// evaluation; the first is returned after everything else is done.
    pub async fn evaluate(&self, models: &[ModelHealth]) -> Result<(), IncidentError> {
        let now = self.clock.now();
        let breaker_events = self.inbox.drain();
        let mut notices = Vec::new();
        let mut first_error: Option<IncidentError> = None;
        let mut st = self.state.lock().await;
        let mut changed: BTreeSet<String> = std::mem::take(&mut st.dirty);

        // Breaker changes first, so the timeline stays in the order things
        // happened: they precede this evaluation. Those for models without
        // an incident wait until the models are evaluated, in case this
        // evaluation opens one.
        let mut pending = Vec::new();
        for ev in &breaker_events {
            let affected = models
                .iter()
                .filter(|m| m.targets.iter().any(|t| t.target == ev.target));
            for mh in affected {
                match st.active.get_mut(&mh.model) {
                    Some(active) => {
                        let event = self.push(&mut active.incident, ev.at, None, breaker_kind(ev));
                        notices.push(notice(&active.incident, event));
                        changed.insert(mh.model.clone());
                    }
                    None => pending.push((mh.model.clone(), ev)),
                }
            }
        }

        let mut opened = BTreeSet::new();
        if self.settings.enabled {
            for mh in models {
                let th = self.settings.thresholds_for(&mh.model);
                let symptoms = detect(mh, th);
                if let Some(active) = st.active.get_mut(&mh.model) {
                    if self.update(active, mh, symptoms, th, now, &mut notices) {
                        changed.insert(mh.model.clone());
                    }
                } else if !symptoms.is_empty() {
                    let State { seq, .. } = &mut *st;
                    match self.next_id(seq, now).await {
                        Ok(id) => {
                            let active = self.open(id, mh, symptoms, th, now, &mut notices);
                            st.active.insert(mh.model.clone(), active);
                            changed.insert(mh.model.clone());
                            opened.insert(mh.model.clone());
                        }
                        Err(e) => {
                            tracing::error!(
                                target: "custos::incidents",
                                model = %mh.model,
                                error = %e,
                                "cannot open an incident: no ID could be allocated; retrying at the next evaluation"
                            );
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
        }
        for (model, ev) in pending {
            if !opened.contains(&model) {
                continue;
            }
            if let Some(active) = st.active.get_mut(&model) {
                let event = self.push(&mut active.incident, ev.at, None, breaker_kind(ev));
                notices.push(notice(&active.incident, event));
            }
        }

        for model in changed {
            let Some(active) = st.active.get(&model) else {
                continue;
            };
            let incident = active.incident.clone();
            if let Err(e) = self.store.save(&incident).await {
                tracing::error!(
                    target: "custos::incidents",
                    id = %incident.id,
                    error = %e,
                    "cannot save an incident; retrying at the next evaluation"
                );
                first_error.get_or_insert(e.into());
                if incident.is_active() {
                    st.dirty.insert(model.clone());
                } else {
                    st.unsaved.insert(incident.id.clone(), incident);
                }
            }
            if st
                .active
                .get(&model)
                .is_some_and(|a| !a.incident.is_active())
            {
                st.active.remove(&model);
            }
        }
        let unsaved: Vec<Incident> = st.unsaved.values().cloned().collect();
        for incident in unsaved {
            if self.store.save(&incident).await.is_ok() {
                st.unsaved.remove(&incident.id);
            }
        }
        drop(st);
        for n in &notices {
            self.listener.incident_event(n);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn next_id(
        &self,
        seq: &mut Option<(String, u32)>,
        now: SystemTime,
    ) -> Result<String, IncidentError> {
        let day = crate::time::day_stamp(now);
        let last = match seq {
            Some((d, n)) if *d == day => *n,
            _ => self.store.max_sequence(&day).await?,
        };
        let next = last.saturating_add(1);
        *seq = Some((day.clone(), next));
        Ok(format!("INC-{day}-{next:04}"))
    }

    fn open(
        &self,
        id: String,
        mh: &ModelHealth,
        symptoms: Vec<Symptom>,
        th: &Thresholds,
        now: SystemTime,
        notices: &mut Vec<IncidentNotice>,
    ) -> Active {
        let severity = worst(&symptoms, th).unwrap_or(Severity::Sev4);
        let headline = symptoms
            .iter()
            .min_by_key(|s| detect::severity_of(s, th))
            .map(Symptom::describe)
            .unwrap_or_default();
        let max = self.settings.max_affected_keys;
        let keys: HashSet<String> = mh.failing_keys.iter().take(max).cloned().collect();
        let mut incident = Incident {
            id,
            model: mh.model.clone(),
            title: format!("{}: {headline}", mh.model),
            severity,
            severity_pinned: false,
            status: IncidentStatus::Open,
            declared_by: None,
            started_at: now,
            updated_at: now,
            acknowledged_at: None,
            acknowledged_by: None,
            assignee: None,
            resolved_at: None,
            resolved_by: None,
            resolution: None,
            recovering_since: None,
            symptoms: Vec::new(),
            peak_error_rate: 0.0,
            peak_p95_ms: None,
            affected_keys: keys.len() as u64,
            affected_keys_capped: mh.failing_keys_capped || mh.failing_keys.len() > max,
            timeline: Vec::new(),
            timeline_dropped: 0,
            postmortem: None,
        };
        note_peaks(&mut incident, &symptoms);
        incident.symptoms.clone_from(&symptoms);
        tracing::warn!(
            target: "custos::incidents",
            id = %incident.id,
            model = %incident.model,
            severity = severity.as_str(),
            title = %incident.title,
            "incident opened"
        );
        let event = self.push(
            &mut incident,
            now,
            None,
            TimelineKind::Opened { severity, symptoms },
        );
        notices.push(notice(&incident, event));
        Active { incident, keys }
    }

    /// Applies one evaluation to an active incident; true when it changed.
    fn update(
        &self,
        active: &mut Active,
        mh: &ModelHealth,
        symptoms: Vec<Symptom>,
        th: &Thresholds,
        now: SystemTime,
        notices: &mut Vec<IncidentNotice>,
    ) -> bool {
        let mut changed = false;
        let events_before =
            active.incident.timeline.len() as u64 + active.incident.timeline_dropped;
        let max = self.settings.max_affected_keys;
        let mut capped = mh.failing_keys_capped;
        for key in &mh.failing_keys {
            if active.keys.len() < max {
                active.keys.insert(key.clone());
            } else if !active.keys.contains(key) {
                capped = true;
            }
        }
        let inc = &mut active.incident;
        let count = active.keys.len() as u64;
        if count > inc.affected_keys || (capped && !inc.affected_keys_capped) {
            inc.affected_keys = inc.affected_keys.max(count);
            inc.affected_keys_capped |= capped;
            changed = true;
        }

        if symptoms.is_empty() {
            if !inc.symptoms.is_empty() {
                inc.symptoms.clear();
                changed = true;
            }
            if inc.declared_by.is_some() {
                // Custos cannot see what an operator declared, so it cannot
                // see it end either.
                return changed;
            }
            match inc.recovering_since {
                None => {
                    inc.recovering_since = Some(now);
                    let event = self.push(inc, now, None, TimelineKind::RecoveryStarted);
                    notices.push(notice(inc, event));
                    changed = true;
                }
                Some(since)
                    if now.duration_since(since).unwrap_or_default()
                        >= self.settings.recovery_period =>
                {
                    inc.status = IncidentStatus::Resolved;
                    inc.resolved_at = Some(now);
                    inc.resolution = Some(Resolution::Auto);
                    inc.recovering_since = None;
                    tracing::info!(
                        target: "custos::incidents",
                        id = %inc.id,
                        model = %inc.model,
                        "incident resolved after a sustained recovery"
                    );
                    let kind = TimelineKind::Resolved {
                        resolution: Resolution::Auto,
                        note: None,
                    };
                    let event = self.push(inc, now, None, kind);
                    notices.push(notice(inc, event));
                    changed = true;
                }
                Some(_) => {}
            }
            return changed;
        }

        let interrupted = inc.recovering_since.take().is_some();
        if interrupted {
            let kind = TimelineKind::RecoveryInterrupted {
                symptoms: symptoms.clone(),
            };
            let event = self.push(inc, now, None, kind);
            notices.push(notice(inc, event));
        } else {
            let before: BTreeSet<SymptomKind> = inc.symptoms.iter().map(Symptom::kind).collect();
            for s in symptoms.iter().filter(|s| !before.contains(&s.kind())) {
                let kind = TimelineKind::SymptomDetected { symptom: s.clone() };
                let event = self.push(inc, now, None, kind);
                notices.push(notice(inc, event));
            }
        }
        if let Some(derived) = worst(&symptoms, th)
            && derived.is_worse_than(inc.severity)
        {
            let cause = symptoms
                .iter()
                .find(|s| detect::severity_of(s, th) == derived)
                .map(Symptom::describe)
                .unwrap_or_default();
            let kind = TimelineKind::SeverityChanged {
                from: inc.severity,
                to: derived,
                reason: format!("raised automatically: {cause}"),
            };
            tracing::warn!(
                target: "custos::incidents",
                id = %inc.id,
                model = %inc.model,
                from = inc.severity.as_str(),
                to = derived.as_str(),
                "incident severity raised"
            );
            inc.severity = derived;
            inc.severity_pinned = false;
            let event = self.push(inc, now, None, kind);
            notices.push(notice(inc, event));
        }
        note_peaks(inc, &symptoms);
        if inc.symptoms != symptoms {
            inc.symptoms = symptoms;
            changed = true;
        }
        changed || inc.timeline.len() as u64 + inc.timeline_dropped != events_before
    }

    /// Appends an event to a timeline, keeping it bounded: past the bound
    /// the oldest event after the opening one is dropped and counted.
    fn push(
        &self,
        incident: &mut Incident,
        at: SystemTime,
        actor: Option<String>,
        kind: TimelineKind,
    ) -> TimelineEvent {
        let total = incident.timeline.len() as u64 + incident.timeline_dropped;
        let event = TimelineEvent {
            seq: u32::try_from(total + 1).unwrap_or(u32::MAX),
            at,
            actor,
            kind,
        };
        if incident.timeline.len() >= self.settings.max_timeline_events.max(2) {
            incident.timeline.remove(1);
            incident.timeline_dropped += 1;
        }
        incident.timeline.push(event.clone());
        incident.updated_at = incident.updated_at.max(at);
        event
    }

    /// The active incidents, by model.
    pub async fn active(&self) -> Vec<Incident> {
        let st = self.state.lock().await;
        st.active.values().map(|a| a.incident.clone()).collect()
    }

    /// One incident: the engine's copy when active, else the store's.
    pub async fn get(&self, id: &str) -> Result<Option<Incident>, IncidentError> {
        {
            let st = self.state.lock().await;
            if let Some(a) = st.active.values().find(|a| a.incident.id == id) {
                return Ok(Some(a.incident.clone()));
            }
            if let Some(i) = st.unsaved.get(id) {
                return Ok(Some(i.clone()));
            }
        }
        Ok(self.store.get(id).await?)
    }

    /// Incidents from the store.
    pub async fn list(&self, query: &IncidentQuery) -> Result<Vec<Incident>, IncidentError> {
        Ok(self.store.list(query).await?)
    }

    /// Response figures over the incidents matching `query`.
    pub async fn stats(&self, query: &IncidentQuery) -> Result<IncidentStats, IncidentError> {
        Ok(IncidentStats::compute(&self.store.list(query).await?))
    }

    /// Declares an incident by hand for an outage Custos does not detect
    /// (wrong answers, a problem only customers see). The declaring
    /// operator counts as having acknowledged it. It is resolved only by
    /// hand; detected symptoms still join its timeline and raise its
    /// severity.
    pub async fn declare(
        &self,
        model: &str,
        by: &str,
        severity: Severity,
        title: &str,
    ) -> Result<Incident, IncidentError> {
        let by = checked("actor", by, MAX_NAME, false)?;
        let model = checked("model", model, 256, false)?;
        let title = checked("title", title, 256, false)?;
        let now = self.clock.now();
        let mut st = self.state.lock().await;
        if let Some(a) = st.active.get(&model) {
            return Err(IncidentError::AlreadyActive {
                model,
                id: a.incident.id.clone(),
            });
        }
        let State { seq, .. } = &mut *st;
        let id = self.next_id(seq, now).await?;
        let mut incident = Incident {
            id,
            model: model.clone(),
            title: format!("{model}: {title}"),
            severity,
            severity_pinned: true,
            status: IncidentStatus::Acknowledged,
            declared_by: Some(by.clone()),
            started_at: now,
            updated_at: now,
            acknowledged_at: Some(now),
            acknowledged_by: Some(by.clone()),
            assignee: None,
            resolved_at: None,
            resolved_by: None,
            resolution: None,
            recovering_since: None,
            symptoms: Vec::new(),
            peak_error_rate: 0.0,
            peak_p95_ms: None,
            affected_keys: 0,
            affected_keys_capped: false,
            timeline: Vec::new(),
            timeline_dropped: 0,
            postmortem: None,
        };
        let kind = TimelineKind::Opened {
            severity,
            symptoms: Vec::new(),
        };
        let event = self.push(&mut incident, now, Some(by.clone()), kind);
        self.store.save(&incident).await?;
        tracing::warn!(
            target: "custos::incidents",
            id = %incident.id,
            model = %incident.model,
            severity = severity.as_str(),
            actor = %by,
            "incident declared by an operator"
        );
        st.active.insert(
            model,
            Active {
                incident: incident.clone(),
                keys: HashSet::new(),
            },
        );
        drop(st);
        self.listener.incident_event(&notice(&incident, event));
        Ok(incident)
    }

    /// Acknowledges an active incident: its time to acknowledge stops.
    pub async fn acknowledge(&self, id: &str, by: &str) -> Result<Incident, IncidentError> {
        self.act(id, by, |inc, now, by| {
            if !inc.is_active() {
                return Err(IncidentError::Resolved(inc.id.clone()));
            }
            if let Some(prev) = &inc.acknowledged_by {
                return Err(IncidentError::AlreadyAcknowledged {
                    id: inc.id.clone(),
                    by: prev.clone(),
                });
            }
            inc.status = IncidentStatus::Acknowledged;
            inc.acknowledged_at = Some(now);
            inc.acknowledged_by = Some(by.to_owned());
            Ok(TimelineKind::Acknowledged)
        })
        .await
    }

    /// Assigns an incident (active or resolved, for the postmortem).
    pub async fn assign(
        &self,
        id: &str,
        by: &str,
        assignee: &str,
    ) -> Result<Incident, IncidentError> {
        let assignee = checked("assignee", assignee, MAX_NAME, false)?;
        self.act(id, by, move |inc, _, _| {
            inc.assignee = Some(assignee.clone());
            Ok(TimelineKind::Assigned { assignee })
        })
        .await
    }

    /// Adds a note to the timeline.
    pub async fn annotate(
        &self,
        id: &str,
        by: &str,
        note: &str,
    ) -> Result<Incident, IncidentError> {
        let text = checked("note", note, MAX_NOTE, true)?;
        self.act(id, by, move |_, _, _| Ok(TimelineKind::Note { text }))
            .await
    }

    /// Sets the severity by hand. Custos keeps it unless the symptoms get
    /// worse than it.
    pub async fn set_severity(
        &self,
        id: &str,
        by: &str,
        severity: Severity,
        reason: &str,
    ) -> Result<Incident, IncidentError> {
        let reason = checked("reason", reason, MAX_NOTE, true)?;
        self.act(id, by, move |inc, _, _| {
            if inc.severity == severity {
                return Err(IncidentError::Invalid {
                    field: "severity".into(),
                    message: format!("the incident is already {severity}"),
                });
            }
            let from = inc.severity;
            inc.severity = severity;
            inc.severity_pinned = true;
            Ok(TimelineKind::SeverityChanged {
                from,
                to: severity,
                reason,
            })
        })
        .await
    }

    /// Resolves an active incident by hand. If its symptoms persist, the
    /// next evaluation opens a new incident.
    pub async fn resolve(
        &self,
        id: &str,
        by: &str,
        note: Option<&str>,
    ) -> Result<Incident, IncidentError> {
        let note = note
            .filter(|n| !n.trim().is_empty())
            .map(|n| checked("note", n, MAX_NOTE, true))
            .transpose()?;
        self.act(id, by, move |inc, now, by| {
            if !inc.is_active() {
                return Err(IncidentError::Resolved(inc.id.clone()));
            }
            inc.status = IncidentStatus::Resolved;
            inc.resolved_at = Some(now);
            inc.resolved_by = Some(by.to_owned());
            inc.resolution = Some(Resolution::Manual);
            inc.recovering_since = None;
            Ok(TimelineKind::Resolved {
                resolution: Resolution::Manual,
                note,
            })
        })
        .await
    }

    /// Attaches (or replaces) the postmortem. `author` and `written_at` are
    /// set here.
    pub async fn attach_postmortem(
        &self,
        id: &str,
        by: &str,
        postmortem: Postmortem,
    ) -> Result<Incident, IncidentError> {
        let pm = checked_postmortem(postmortem)?;
        self.act(id, by, move |inc, now, by| {
            let mut pm = pm;
            pm.author = by.to_owned();
            pm.written_at = now;
            inc.postmortem = Some(pm);
            Ok(TimelineKind::PostmortemAttached)
        })
        .await
    }

    /// Runs one operator action: applies `f` to a copy, saves the copy, and
    /// only then makes it the engine's state and emits the event, so a
    /// failed save changes nothing.
    async fn act(
        &self,
        id: &str,
        actor: &str,
        f: impl FnOnce(&mut Incident, SystemTime, &str) -> Result<TimelineKind, IncidentError>,
    ) -> Result<Incident, IncidentError> {
        let actor = checked("actor", actor, MAX_NAME, false)?;
        let now = self.clock.now();
        let mut st = self.state.lock().await;
        let model = st
            .active
            .iter()
            .find(|(_, a)| a.incident.id == id)
            .map(|(m, _)| m.clone());
        let mut incident = match &model {
            Some(m) => st.active.get(m).map(|a| a.incident.clone()),
            None => match st.unsaved.get(id) {
                Some(i) => Some(i.clone()),
                None => self.store.get(id).await?,
            },
        }
        .ok_or_else(|| IncidentError::NotFound(id.chars().take(64).collect()))?;
        let kind = f(&mut incident, now, &actor)?;
        tracing::info!(
            target: "custos::incidents",
            id = %incident.id,
            actor = %actor,
            action = kind.label(),
            "incident updated by an operator"
        );
        let event = self.push(&mut incident, now, Some(actor), kind);
        self.store.save(&incident).await?;
        match model {
            Some(m) if incident.is_active() => {
                if let Some(a) = st.active.get_mut(&m) {
                    a.incident = incident.clone();
                }
                st.dirty.remove(&m);
            }
            Some(m) => {
                st.active.remove(&m);
                st.dirty.remove(&m);
            }
            None => {
                st.unsaved.remove(id);
            }
        }
        drop(st);
        self.listener.incident_event(&notice(&incident, event));
        Ok(incident)
    }
}

/// One operator action on an incident, in the shape the CLI, the console
/// and the admin API submit it (`{"action": "acknowledge"}`,
/// `{"action": "note", "text": "…"}`, …).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum OperatorAction {
    /// Acknowledge: the time to acknowledge stops.
    Acknowledge,
    /// Assign to someone.
    Assign {
        /// The assignee.
        assignee: String,
    },
    /// Add a note to the timeline.
    Note {
        /// The note.
        text: String,
    },
    /// Set the severity by hand.
    Severity {
        /// The new severity.
        severity: Severity,
        /// Why.
        reason: String,
    },
    /// Resolve by hand.
    Resolve {
        /// Closing note.
        #[serde(default)]
        note: Option<String>,
    },
    /// Attach or replace the postmortem.
    Postmortem {
        /// The document.
        postmortem: Postmortem,
    },
    /// Declare an incident Custos cannot see (the incident ID is ignored).
    Declare {
        /// The public model.
        model: String,
        /// Its severity.
        severity: Severity,
        /// One line.
        title: String,
    },
}

impl OperatorAction {
    /// The action's name, such as `acknowledge`.
    pub fn name(&self) -> &'static str {
        match self {
            OperatorAction::Acknowledge => "acknowledge",
            OperatorAction::Assign { .. } => "assign",
            OperatorAction::Note { .. } => "note",
            OperatorAction::Severity { .. } => "severity",
            OperatorAction::Resolve { .. } => "resolve",
            OperatorAction::Postmortem { .. } => "postmortem",
            OperatorAction::Declare { .. } => "declare",
        }
    }

    /// Applies the action to incident `id` as operator `by`.
    pub async fn apply(
        self,
        engine: &IncidentEngine,
        id: &str,
        by: &str,
    ) -> Result<Incident, IncidentError> {
        match self {
            OperatorAction::Acknowledge => engine.acknowledge(id, by).await,
            OperatorAction::Assign { assignee } => engine.assign(id, by, &assignee).await,
            OperatorAction::Note { text } => engine.annotate(id, by, &text).await,
            OperatorAction::Severity { severity, reason } => {
                engine.set_severity(id, by, severity, &reason).await
            }
            OperatorAction::Resolve { note } => engine.resolve(id, by, note.as_deref()).await,
            OperatorAction::Postmortem { postmortem } => {
                engine.attach_postmortem(id, by, postmortem).await
            }
            OperatorAction::Declare {
                model,
                severity,
                title,
            } => engine.declare(&model, by, severity, &title).await,
        }
    }
}

fn note_peaks(incident: &mut Incident, symptoms: &[Symptom]) {
    for s in symptoms {
        match s {
            Symptom::ErrorRate { error_rate, .. } => {
                incident.peak_error_rate = incident.peak_error_rate.max(*error_rate);
            }
            Symptom::Latency { p95_ms, .. } => {
                incident.peak_p95_ms =
                    Some(incident.peak_p95_ms.map_or(*p95_ms, |p| p.max(*p95_ms)));
            }
            Symptom::Availability { .. } | Symptom::AllTargetsOpen { .. } => {}
        }
    }
}

fn breaker_kind(ev: &BreakerEvent) -> TimelineKind {
    TimelineKind::BreakerChanged {
        target: ev.target.to_string(),
        from: ev.from,
        to: ev.to,
        reason: ev.reason.label().to_owned(),
    }
}

fn notice(incident: &Incident, event: TimelineEvent) -> IncidentNotice {
    IncidentNotice {
        kind: NoticeKind::of(&event.kind),
        incident: incident.summary(),
        event,
    }
}

/// The running evaluation task. Dropping it stops the task.
#[derive(Debug)]
pub struct IncidentLoop {
    stop: watch::Sender<bool>,
    handle: Option<JoinHandle<()>>,
}

impl IncidentLoop {
    /// Stops the task after the evaluation in progress.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for IncidentLoop {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Evaluates `health`'s models every `evaluation_interval` (the first time
/// one interval after the start). Must be called inside a tokio runtime.
pub fn spawn_incident_loop(engine: Arc<IncidentEngine>, health: HealthEngine) -> IncidentLoop {
    let (stop, mut stopped) = watch::channel(false);
    let interval = engine
        .settings
        .evaluation_interval
        .max(Duration::from_millis(1));
    let handle = tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped.changed() => return,
            }
            let models = health.model_health(Instant::now());
            if let Err(e) = engine.evaluate(&models).await {
                tracing::error!(target: "custos::incidents", error = %e, "incident evaluation incomplete");
            }
        }
    });
    IncidentLoop {
        stop,
        handle: Some(handle),
    }
}
