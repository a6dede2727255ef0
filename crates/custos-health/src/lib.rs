//! Upstream health, circuit breaking, capacity limits and model-availability
//! incidents for Custos: the engine that the gateway and the admin listener
//! are wired onto.
//!
//! - [`HealthEngine`]: per-target rolling windows and circuit breakers fed
//!   by every upstream attempt, per-model request windows and per-minute
//!   aggregates fed by every finished request.
//! - [`CapacityLimiter`]: global, per-model and per-key concurrency limits
//!   with bounded, timed wait queues.
//! - [`IncidentEngine`]: opens, updates and resolves incidents from the
//!   health state; operator actions; storage through [`IncidentStore`].
//! - [`WebhookNotifier`]: generic and Slack webhooks with retries.
//! - [`spawn_probes`]: optional active probes.
//! - [`config`]: raw and validated settings for all of the above.
//!
//! # Wiring
//!
//! At startup: build a [`HealthEngine`] (its breaker listener a
//! [`BreakerFanout`] of the audit sink, [`IncidentEngine::breaker_listener`]
//! and, if wanted, the [`WebhookNotifier`]), call
//! [`HealthEngine::register_model`] for every route, build the
//! [`CapacityLimiter`] and the [`IncidentEngine`] (its listener an
//! [`IncidentFanout`] of the audit sink and the notifier), call
//! [`IncidentEngine::restore`], then start [`spawn_incident_loop`] and, when
//! enabled, [`spawn_probes`]. Per request:
//!
//! 1. **Before routing**, once the key is known:
//!    `let _slot = limiter.acquire(model, Some(key_id)).await?;` — keep the
//!    guard alive until the response or stream ends (put it in the stream
//!    state next to the request guard). [`CapacityError`] becomes 429
//!    (`is_caller_limit()`) or 503, with `Retry-After: retry_after()`.
//! 2. **Per attempt**, for each target of the plan:
//!    `match health.allow(&target, Instant::now())` — skip the target on
//!    `Err(Rejected)`; otherwise send, and when the attempt is decided,
//!    `permit.record(AttemptOutcome::from_attempt(status, error), elapsed,
//!    Instant::now())`. When every target was rejected, answer 503 with the
//!    smallest `retry_after`.
//! 3. **After completion** (an `OutcomeSink`):
//!    `health.record_request(&RequestSample { .. }, Instant::now())` with the
//!    request's [`RequestStatus`], latency, tokens and key ID.
//!
//! Periodically (every few seconds) persist
//! [`HealthEngine::drain_completed_minutes`]; export
//! [`HealthEngine::targets`] (breaker state gauge), [`CapacityLimiter::stats`]
//! and [`WebhookNotifier::stats`] as metrics.
//!
//! Time comes in as arguments (`tokio::time::Instant` for windows, breakers
//! and queues) or through an injected [`custos_types::Clock`] (wall-clock
//! stamps of events and incidents), so tests are deterministic. This crate
//! reads no environment and no files.
//!
//! **Architecture invariants:** nothing here knows HTTP status codes or the
//! OpenAI error shape (errors say which limit and when to retry; the gateway
//! maps them); nothing on the request path awaits, blocks on IO or takes
//! more than one lock at a time; every incident and breaker event reaches
//! the listeners, so the wiring can write it to the audit ledger.

pub mod aggregate;
pub mod breaker;
pub mod capacity;
pub mod config;
mod health;
pub mod histogram;
pub mod incident;
pub mod probe;
pub mod target;
pub mod time;
pub mod webhook;
pub mod window;

pub use aggregate::{MinuteAggregate, MinuteAggregator};
pub use breaker::{BreakerEvent, BreakerFigures, BreakerSettings, BreakerState, TransitionReason};
pub use capacity::{
    CapacityError, CapacityGuard, CapacityLimiter, CapacitySettings, LimitKind, LimitSpec,
};
pub use health::{
    BreakerFanout, BreakerListener, HealthEngine, HealthSettings, ModelHealth, NoBreakerListener,
    Permit, Rejected, RequestSample, TargetHealth, TargetStatus,
};
pub use incident::detect::Thresholds;
pub use incident::model::{
    ActionItem, ActionStatus, Incident, IncidentNotice, IncidentStatus, IncidentSummary,
    NoticeKind, Postmortem, Resolution, Severity, Symptom, SymptomKind, TimelineEvent,
    TimelineKind,
};
pub use incident::stats::{DurationStats, IncidentStats};
pub use incident::store::{IncidentQuery, IncidentStore, MemoryIncidentStore, StoreError};
pub use incident::{
    BreakerInbox, IncidentEngine, IncidentError, IncidentFanout, IncidentListener, IncidentLoop,
    IncidentSettings, NoIncidentListener, OperatorAction, spawn_incident_loop,
};
pub use probe::{BoxFuture, ProbeSettings, ProbeTask, Prober, spawn_probes};
pub use target::{AttemptOutcome, FailureCounts, FailureKind, RequestStatus, TargetId};
pub use webhook::{
    ValueSource, WebhookError, WebhookEvent, WebhookFormat, WebhookNotifier, WebhookSettings,
    WebhookStats, WebhookTarget,
};
pub use window::{ModelStats, TargetStats, WindowSpec};
