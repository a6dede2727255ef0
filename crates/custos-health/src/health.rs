//! The health engine: passive health and a circuit breaker per target,
//! request-level windows per public model, and the per-minute aggregates.
//!
//! Locking: the target and model tables sit behind read-mostly `RwLock`s
//! (written only when a target or model is first seen); each target and each
//! model has its own mutex, held for a few increments and never while
//! another lock is taken, so requests to different targets do not contend
//! and no lock order exists to get wrong. Listener callbacks run after the
//! locks are released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use custos_types::Clock;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::aggregate::{AggregateSample, MinuteAggregate, MinuteAggregator};
use crate::breaker::{Breaker, BreakerEvent, BreakerSettings, BreakerState, Grant, Transition};
use crate::probe::ProbeSettings;
use crate::target::{AttemptOutcome, RequestStatus, TargetId};
use crate::window::{
    ModelBucket, ModelStats, Ring, TargetBucket, TargetStats, WindowSpec, model_stats, target_stats,
};

/// Validated `[health]` settings. The defaults are those documented on
/// [`crate::config::RawHealth`].
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// Window of per-target figures and of the breaker's error rate
    /// (default 10 × 6 s).
    pub target_window: WindowSpec,
    /// Window of per-model request figures, which incidents evaluate
    /// (default 10 × 30 s).
    pub model_window: WindowSpec,
    /// Most targets tracked; beyond it, unknown targets are always allowed
    /// and not tracked (default 1024).
    pub max_targets: usize,
    /// Most models tracked (default 1024).
    pub max_models: usize,
    /// Most distinct failing key IDs remembered per model (default 1000).
    pub max_failing_keys: usize,
    /// Undrained minutes kept by the aggregator (default 60).
    pub max_aggregate_minutes: usize,
    /// The breaker.
    pub breaker: BreakerSettings,
    /// Active probes.
    pub probes: ProbeSettings,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            target_window: WindowSpec {
                bucket: Duration::from_secs(6),
                buckets: 10,
            },
            model_window: WindowSpec {
                bucket: Duration::from_secs(30),
                buckets: 10,
            },
            max_targets: 1024,
            max_models: 1024,
            max_failing_keys: 1000,
            max_aggregate_minutes: 60,
            breaker: BreakerSettings::default(),
            probes: ProbeSettings::default(),
        }
    }
}

/// Receives every breaker state change. Called synchronously on the request
/// path, after the engine's locks are released: implementations must not
/// block (enqueue and return).
pub trait BreakerListener: Send + Sync + 'static {
    /// One state change.
    fn breaker_changed(&self, event: &BreakerEvent);
}

/// A listener that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBreakerListener;

impl BreakerListener for NoBreakerListener {
    fn breaker_changed(&self, _event: &BreakerEvent) {}
}

/// Sends each breaker event to several listeners in order.
pub struct BreakerFanout(pub Vec<Arc<dyn BreakerListener>>);

impl BreakerListener for BreakerFanout {
    fn breaker_changed(&self, event: &BreakerEvent) {
        for l in &self.0 {
            l.breaker_changed(event);
        }
    }
}

/// Why a target may not be tried now. Routing skips it and moves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The target.
    pub target: TargetId,
    /// `Open`, or `HalfOpen` when its trial slots are taken.
    pub state: BreakerState,
    /// When it is worth asking again.
    pub retry_after: Duration,
}

/// Leave to send one attempt to a target. Report its result with
/// [`Permit::record`]; a half-open trial permit that is dropped unreported
/// (the client went away) gives its trial slot back.
#[must_use = "report the attempt's result with Permit::record"]
pub struct Permit {
    engine: Arc<Inner>,
    cell: Option<Arc<TargetCell>>,
    target: TargetId,
    grant: Grant,
    done: bool,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("target", &self.target)
            .field("trial", &self.is_trial())
            .finish()
    }
}

impl Permit {
    /// Whether this is a half-open trial (its result decides the breaker).
    pub fn is_trial(&self) -> bool {
        matches!(self.grant, Grant::Trial(_))
    }

    /// The target.
    pub fn target(&self) -> &TargetId {
        &self.target
    }

    /// Reports how the attempt ended and how long it took.
    pub fn record(mut self, outcome: AttemptOutcome, latency: Duration, now: Instant) {
        self.done = true;
        if let Some(cell) = &self.cell {
            self.engine
                .record_cell(&self.target, cell, outcome, latency, now, Some(self.grant));
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done
            && let Some(cell) = &self.cell
        {
            lock(&cell.state).breaker.release(self.grant);
        }
    }
}

/// A target's health, for metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetHealth {
    /// The target.
    pub target: TargetId,
    /// The breaker state.
    pub state: BreakerState,
    /// Time left in the open state.
    #[serde(with = "crate::time::duration_ms_opt")]
    pub open_for: Option<Duration>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Figures over the target window.
    pub stats: TargetStats,
}

/// A target and its breaker state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// The target.
    pub target: TargetId,
    /// Its breaker state.
    pub state: BreakerState,
}

/// A public model's health: what the incident engine evaluates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHealth {
    /// The public model name.
    pub model: String,
    /// Request-level figures over the model window.
    pub stats: ModelStats,
    /// Its targets and their breaker states.
    pub targets: Vec<TargetStatus>,
    /// Distinct key IDs whose requests failed within the model window.
    pub failing_keys: Vec<String>,
    /// Whether more keys failed than could be remembered.
    pub failing_keys_capped: bool,
}

/// One finished client request, as the gateway reports it after completion.
#[derive(Debug, Clone, Copy)]
pub struct RequestSample<'a> {
    /// The public model asked for (a configured one).
    pub model: &'a str,
    /// How it ended.
    pub status: RequestStatus,
    /// Whole-request latency.
    pub latency: Duration,
    /// Prompt tokens (0 when unknown).
    pub prompt_tokens: u64,
    /// Completion tokens (0 when unknown).
    pub completion_tokens: u64,
    /// The caller's key ID, when authenticated.
    pub key_id: Option<&'a str>,
}

#[derive(Debug)]
struct TargetCell {
    state: Mutex<TargetState>,
}

#[derive(Debug)]
struct TargetState {
    window: Ring<TargetBucket>,
    breaker: Breaker,
}

#[derive(Debug)]
struct ModelCell {
    state: Mutex<ModelState>,
}

#[derive(Debug)]
struct ModelState {
    window: Ring<ModelBucket>,
    targets: Vec<TargetId>,
    failing_keys: HashMap<Box<str>, Instant>,
    keys_capped_at: Option<Instant>,
}

struct Inner {
    settings: HealthSettings,
    clock: Arc<dyn Clock>,
    listener: Arc<dyn BreakerListener>,
    origin: Instant,
    targets: RwLock<HashMap<TargetId, Arc<TargetCell>>>,
    models: RwLock<HashMap<String, Arc<ModelCell>>>,
    aggregates: MinuteAggregator,
    untracked: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The engine. Cheap to clone; every clone shares the same state.
#[derive(Clone)]
pub struct HealthEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HealthEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthEngine")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl HealthEngine {
    /// A new engine. `clock` stamps events with wall time; `listener`
    /// receives every breaker state change.
    pub fn new(
        settings: HealthSettings,
        clock: Arc<dyn Clock>,
        listener: Arc<dyn BreakerListener>,
    ) -> Self {
        let aggregates = MinuteAggregator::new(settings.max_aggregate_minutes, settings.max_models);
        HealthEngine {
            inner: Arc::new(Inner {
                settings,
                clock,
                listener,
                origin: Instant::now(),
                targets: RwLock::new(HashMap::new()),
                models: RwLock::new(HashMap::new()),
                aggregates,
                untracked: AtomicU64::new(0),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &HealthSettings {
        &self.inner.settings
    }

    /// Declares a public model and its targets (call once per model at
    /// startup and on reload, from the route table). Incidents need it to
    /// know when all of a model's targets are open.
    pub fn register_model(&self, model: &str, targets: &[TargetId]) {
        for t in targets {
            self.inner.target_cell(t);
        }
        if let Some(cell) = self.inner.model_cell(model) {
            lock(&cell.state).targets = targets.to_vec();
        }
    }

    /// Every registered target, sorted.
    pub fn registered_targets(&self) -> Vec<TargetId> {
        let map = self
            .inner
            .targets
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<TargetId> = map.keys().cloned().collect();
        out.sort();
        out
    }

    /// Asks whether an attempt may go to `target` now. Routing calls it for
    /// each target of the plan and skips the rejected ones.
    pub fn allow(&self, target: &TargetId, now: Instant) -> Result<Permit, Rejected> {
        let Some(cell) = self.inner.target_cell(target) else {
            return Ok(Permit {
                engine: self.inner.clone(),
                cell: None,
                target: target.clone(),
                grant: Grant::Normal,
                done: false,
            });
        };
        let (result, transition) = lock(&cell.state)
            .breaker
            .acquire(&self.inner.settings.breaker, now);
        if let Some(t) = transition {
            self.inner.emit(target, t);
        }
        match result {
            Ok(grant) => Ok(Permit {
                engine: self.inner.clone(),
                cell: Some(cell),
                target: target.clone(),
                grant,
                done: false,
            }),
            Err(refusal) => Err(Rejected {
                target: target.clone(),
                state: refusal.state,
                retry_after: refusal.retry_after,
            }),
        }
    }

    /// Records an attempt made without a permit (a probe, or a caller that
    /// does not route through [`HealthEngine::allow`]). It always counts in
    /// the target's figures; it moves the breaker only while it is closed.
    pub fn record(
        &self,
        target: &TargetId,
        outcome: AttemptOutcome,
        latency: Duration,
        now: Instant,
    ) {
        if let Some(cell) = self.inner.target_cell(target) {
            self.inner
                .record_cell(target, &cell, outcome, latency, now, None);
        }
    }

    /// Records one finished client request: the model window, the failing
    /// keys and the per-minute aggregates.
    pub fn record_request(&self, sample: &RequestSample<'_>, now: Instant) {
        let wall = self.inner.clock.now();
        if let Some(cell) = self.inner.model_cell(sample.model) {
            let mut st = lock(&cell.state);
            if let Some(bucket) = st.window.slot(now) {
                bucket.record(sample.status, sample.latency);
            }
            if sample.status == RequestStatus::Failure
                && let Some(key) = sample.key_id
            {
                self.inner.note_failing_key(&mut st, key, now);
            }
        }
        self.inner.aggregates.record(
            &AggregateSample {
                model: sample.model,
                status: sample.status,
                latency: sample.latency,
                prompt_tokens: sample.prompt_tokens,
                completion_tokens: sample.completion_tokens,
            },
            wall,
        );
    }

    /// The breaker state of a target, if it is tracked.
    pub fn breaker_state(&self, target: &TargetId) -> Option<BreakerState> {
        let cell = self.inner.existing_target(target)?;
        let state = lock(&cell.state).breaker.state();
        Some(state)
    }

    /// One target's health.
    pub fn target_health(&self, target: &TargetId, now: Instant) -> Option<TargetHealth> {
        let cell = self.inner.existing_target(target)?;
        Some(self.inner.health_of(target, &cell, now))
    }

    /// Every tracked target's health, sorted by target (for the breaker
    /// state gauge and the admin API).
    pub fn targets(&self, now: Instant) -> Vec<TargetHealth> {
        let cells: Vec<(TargetId, Arc<TargetCell>)> = {
            let map = self
                .inner
                .targets
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut out: Vec<TargetHealth> = cells
            .iter()
            .map(|(t, c)| self.inner.health_of(t, c, now))
            .collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }

    /// Every tracked model's health, sorted by model: the incident engine's
    /// input.
    pub fn model_health(&self, now: Instant) -> Vec<ModelHealth> {
        let cells: Vec<(String, Arc<ModelCell>)> = {
            let map = self
                .inner
                .models
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let span = self.inner.settings.model_window.span();
        let mut out: Vec<ModelHealth> = cells
            .into_iter()
            .map(|(model, cell)| {
                let (stats, target_ids, failing_keys, capped) = {
                    let st = lock(&cell.state);
                    let stats = model_stats(&st.window, self.inner.settings.model_window, now);
                    let mut keys: Vec<String> = st
                        .failing_keys
                        .iter()
                        .filter(|(_, seen)| now.saturating_duration_since(**seen) < span)
                        .map(|(k, _)| k.to_string())
                        .collect();
                    keys.sort();
                    let capped = st
                        .keys_capped_at
                        .is_some_and(|at| now.saturating_duration_since(at) < span);
                    (stats, st.targets.clone(), keys, capped)
                };
                let targets = target_ids
                    .into_iter()
                    .map(|t| {
                        let state = self.breaker_state(&t).unwrap_or(BreakerState::Closed);
                        TargetStatus { target: t, state }
                    })
                    .collect();
                ModelHealth {
                    model,
                    stats,
                    targets,
                    failing_keys,
                    failing_keys_capped: capped,
                }
            })
            .collect();
        out.sort_by(|a, b| a.model.cmp(&b.model));
        out
    }

    /// Removes and returns every per-minute aggregate whose minute ended at
    /// or before `now` (wall clock); see [`MinuteAggregator`].
    pub fn drain_completed_minutes(&self, now: SystemTime) -> Vec<MinuteAggregate> {
        self.inner.aggregates.drain_completed_minutes(now)
    }

    /// The aggregator, for its counters.
    pub fn aggregates(&self) -> &MinuteAggregator {
        &self.inner.aggregates
    }

    /// Targets or models seen beyond the configured maximums (not tracked).
    pub fn untracked(&self) -> u64 {
        self.inner.untracked.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn existing_target(&self, target: &TargetId) -> Option<Arc<TargetCell>> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target)
            .cloned()
    }

    fn target_cell(&self, target: &TargetId) -> Option<Arc<TargetCell>> {
        if let Some(cell) = self.existing_target(target) {
            return Some(cell);
        }
        let mut map = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = map.get(target) {
            return Some(cell.clone());
        }
        if map.len() >= self.settings.max_targets {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let cell = Arc::new(TargetCell {
            state: Mutex::new(TargetState {
                window: Ring::new(self.settings.target_window, self.origin),
                breaker: Breaker::new(self.settings.target_window, self.origin),
            }),
        });
        map.insert(target.clone(), cell.clone());
        Some(cell)
    }

    fn model_cell(&self, model: &str) -> Option<Arc<ModelCell>> {
        if let Some(cell) = self
            .models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return Some(cell.clone());
        }
        let mut map = self.models.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = map.get(model) {
            return Some(cell.clone());
        }
        if map.len() >= self.settings.max_models {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let cell = Arc::new(ModelCell {
            state: Mutex::new(ModelState {
                window: Ring::new(self.settings.model_window, self.origin),
                targets: Vec::new(),
                failing_keys: HashMap::new(),
                keys_capped_at: None,
            }),
        });
        map.insert(model.to_owned(), cell.clone());
        Some(cell)
    }

    fn note_failing_key(&self, st: &mut ModelState, key: &str, now: Instant) {
        if let Some(seen) = st.failing_keys.get_mut(key) {
            *seen = now;
            return;
        }
        let max = self.settings.max_failing_keys;
        if st.failing_keys.len() >= max {
            let span = self.settings.model_window.span();
            st.failing_keys
                .retain(|_, seen| now.saturating_duration_since(*seen) < span);
        }
        if st.failing_keys.len() >= max {
            st.keys_capped_at = Some(now);
            return;
        }
        st.failing_keys.insert(Box::from(key), now);
    }

    fn record_cell(
        &self,
        target: &TargetId,
        cell: &TargetCell,
        outcome: AttemptOutcome,
        latency: Duration,
        now: Instant,
        grant: Option<Grant>,
    ) {
        let transition = {
            let mut st = lock(&cell.state);
            if let Some(bucket) = st.window.slot(now) {
                bucket.record(outcome, latency);
            }
            st.breaker
                .record(&self.settings.breaker, now, outcome, grant)
        };
        if let Some(t) = transition {
            self.emit(target, t);
        }
    }

    fn health_of(&self, target: &TargetId, cell: &TargetCell, now: Instant) -> TargetHealth {
        let st = lock(&cell.state);
        TargetHealth {
            target: target.clone(),
            state: st.breaker.state(),
            open_for: st.breaker.open_for(now),
            consecutive_failures: st.breaker.consecutive_failures(),
            stats: target_stats(&st.window, self.settings.target_window, now),
        }
    }

    fn emit(&self, target: &TargetId, t: Transition) {
        let event = BreakerEvent {
            target: target.clone(),
            from: t.from,
            to: t.to,
            reason: t.reason,
            figures: t.figures,
            cool_down: t.cool_down,
            opens: t.opens,
            at: self.clock.now(),
        };
        let reason = event.reason.label();
        let cool_down_ms = event.cool_down.map(crate::time::millis);
        match event.to {
            BreakerState::Open => tracing::warn!(
                target: "custos::health",
                provider = %target.provider,
                model = %target.model,
                from = event.from.as_str(),
                to = event.to.as_str(),
                reason,
                requests = event.figures.requests,
                failures = event.figures.failures,
                error_rate = event.figures.error_rate,
                consecutive_failures = event.figures.consecutive_failures,
                cool_down_ms,
                opens = event.opens,
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                target: "custos::health",
                provider = %target.provider,
                model = %target.model,
                from = event.from.as_str(),
                to = event.to.as_str(),
                reason,
                "circuit breaker changed state"
            ),
        }
        self.listener.breaker_changed(&event);
    }
}
