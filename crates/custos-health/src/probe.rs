//! Active probes: a background task that periodically sends one cheap
//! request to each configured target through a caller-supplied [`Prober`]
//! and feeds the result into the same health state as real traffic.
//!
//! Probes go through [`HealthEngine::allow`] like any request: a target
//! whose breaker is open is left alone until its cool-down ends, and then
//! the probe takes the half-open trial, so a recovered upstream is closed
//! again by a probe rather than by a customer's request. Probes are off by
//! default; an idle model needs them to notice an outage before its first
//! customer does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::health::HealthEngine;
use crate::target::{AttemptOutcome, FailureKind, TargetId};

/// A boxed, sendable future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Validated `[health.probes]` settings; see [`crate::config::RawProbes`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSettings {
    /// Whether the probe task runs (default false).
    pub enabled: bool,
    /// Time between two rounds (default 30 s).
    pub interval: Duration,
    /// Longest a probe may take before it counts as a timeout (default 10 s).
    pub timeout: Duration,
    /// Targets to probe; empty means every registered target.
    pub targets: Vec<TargetId>,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            enabled: false,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            targets: Vec::new(),
        }
    }
}

/// Sends one cheap request to a target (for example a one-token chat
/// completion or `GET /models`) and says how it went. Implemented by the
/// wiring on top of the provider adapters.
pub trait Prober: Send + Sync + 'static {
    /// Probes `target`. The task applies its own timeout around this call.
    fn probe<'a>(&'a self, target: &'a TargetId) -> BoxFuture<'a, AttemptOutcome>;
}

/// The running probe task. Dropping it stops the task.
#[derive(Debug)]
pub struct ProbeTask {
    stop: watch::Sender<bool>,
    handle: Option<JoinHandle<()>>,
}

impl ProbeTask {
    /// Stops the task and waits for the round in progress to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for ProbeTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Starts the probe task when `settings.enabled`; `None` otherwise. Must be
/// called inside a tokio runtime. The first round runs one interval after
/// the start.
pub fn spawn_probes(
    engine: HealthEngine,
    prober: Arc<dyn Prober>,
    settings: &ProbeSettings,
) -> Option<ProbeTask> {
    if !settings.enabled {
        return None;
    }
    let (stop, mut stopped) = watch::channel(false);
    let settings = settings.clone();
    let handle = tokio::spawn(async move {
        let interval = settings.interval.max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped.changed() => return,
            }
            let targets = if settings.targets.is_empty() {
                engine.registered_targets()
            } else {
                settings.targets.clone()
            };
            for target in targets {
                probe_one(&engine, prober.as_ref(), &target, settings.timeout).await;
                if *stopped.borrow() {
                    return;
                }
            }
        }
    });
    Some(ProbeTask {
        stop,
        handle: Some(handle),
    })
}

async fn probe_one(
    engine: &HealthEngine,
    prober: &dyn Prober,
    target: &TargetId,
    timeout: Duration,
) {
    let Ok(permit) = engine.allow(target, Instant::now()) else {
        return;
    };
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, prober.probe(target))
        .await
        .unwrap_or(AttemptOutcome::Failure {
            kind: FailureKind::Timeout,
        });
    tracing::debug!(
        target: "custos::health",
        provider = %target.provider,
        model = %target.model,
        ?outcome,
        "probe"
    );
    let now = Instant::now();
    permit.record(outcome, now - started, now);
}
