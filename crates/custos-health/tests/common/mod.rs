//! Shared helpers of the integration tests: collecting listeners, a fixed
//! start time and small builders.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on poisoned locks"
)]
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_health::{
    AttemptOutcome, BreakerEvent, BreakerListener, FailureKind, IncidentListener, IncidentNotice,
};
use custos_types::ManualClock;

/// 2025-03-01T12:00:00Z.
pub fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_740_830_400)
}

/// A manual clock stopped at [`start`].
pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(start()))
}

/// Collects breaker events.
#[derive(Default)]
pub struct Breakers(pub Mutex<Vec<BreakerEvent>>);

impl BreakerListener for Breakers {
    fn breaker_changed(&self, event: &BreakerEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Breakers {
    /// The `(from, to)` labels of every event so far.
    pub fn transitions(&self) -> Vec<(&'static str, &'static str)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str()))
            .collect()
    }

    /// The last event.
    pub fn last(&self) -> BreakerEvent {
        self.0.lock().unwrap().last().cloned().unwrap()
    }
}

/// Collects incident notices.
#[derive(Default)]
pub struct Notices(pub Mutex<Vec<IncidentNotice>>);

impl IncidentListener for Notices {
    fn incident_event(&self, notice: &IncidentNotice) {
        self.0.lock().unwrap().push(notice.clone());
    }
}

impl Notices {
    /// `type/event` labels of every notice so far, such as
    /// `incident.opened/opened`.
    pub fn labels(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|n| format!("{}/{}", n.kind.as_str(), n.event.kind.label()))
            .collect()
    }

    /// Forgets what was collected.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// A failed attempt.
pub fn fail(kind: FailureKind) -> AttemptOutcome {
    AttemptOutcome::Failure { kind }
}

/// A successful attempt.
pub const OK: AttemptOutcome = AttemptOutcome::Success;

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
