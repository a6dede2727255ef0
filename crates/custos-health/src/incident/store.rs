//! Where incidents are kept: an object-safe async trait, implemented on the
//! SQL store by `custos-store`, and an in-memory implementation for tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crate::incident::model::{Incident, Severity};
use crate::probe::BoxFuture;

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be reached or refused the operation.
    #[error("incident store unavailable: {0}")]
    Unavailable(String),
    /// A stored incident could not be decoded.
    #[error("stored incident `{id}` is unreadable: {message}")]
    Corrupt {
        /// The incident ID.
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// Which incidents to list. Every filter is optional; they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentQuery {
    /// Detected at or after.
    pub since: Option<SystemTime>,
    /// Detected before.
    pub until: Option<SystemTime>,
    /// Of this public model.
    pub model: Option<String>,
    /// Only open and acknowledged ones.
    pub active_only: bool,
    /// Only this severity.
    pub severity: Option<Severity>,
    /// At most this many (newest first); `None` for all.
    pub limit: Option<usize>,
}

impl IncidentQuery {
    /// Whether `incident` passes every filter except `limit`.
    pub fn matches(&self, incident: &Incident) -> bool {
        self.since.is_none_or(|t| incident.started_at >= t)
            && self.until.is_none_or(|t| incident.started_at < t)
            && self.model.as_deref().is_none_or(|m| incident.model == m)
            && (!self.active_only || incident.is_active())
            && self.severity.is_none_or(|s| incident.severity == s)
    }
}

/// Persistent incidents. Every method returns a boxed future so the trait
/// is object-safe (`Arc<dyn IncidentStore>`).
///
/// Contract for implementations:
/// - `save` inserts or replaces the incident with the same `id`, atomically.
///   The engine saves after every change, so an incident's stored form is
///   always its latest state.
/// - `list` orders by `started_at`, newest first, then applies `limit`.
/// - `max_sequence(day)` returns the highest `NNNN` among IDs
///   `INC-{day}-NNNN` (0 when there is none), so IDs stay unique across
///   restarts; `day` is `YYYYMMDD`.
pub trait IncidentStore: Send + Sync + 'static {
    /// Inserts or replaces one incident.
    fn save<'a>(&'a self, incident: &'a Incident) -> BoxFuture<'a, Result<(), StoreError>>;

    /// One incident by ID.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Incident>, StoreError>>;

    /// Incidents matching `query`, newest first.
    fn list<'a>(
        &'a self,
        query: &'a IncidentQuery,
    ) -> BoxFuture<'a, Result<Vec<Incident>, StoreError>>;

    /// The highest sequence number used on `day` (`YYYYMMDD`), 0 if none.
    fn max_sequence<'a>(&'a self, day: &'a str) -> BoxFuture<'a, Result<u32, StoreError>>;
}

/// Incidents in memory, for tests and for running without a database.
#[derive(Debug, Default)]
pub struct MemoryIncidentStore {
    incidents: Mutex<BTreeMap<String, Incident>>,
    failing: AtomicBool,
}

impl MemoryIncidentStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later call fail with [`StoreError::Unavailable`] until
    /// called again with `false` (to test outages).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable(
                "the store is failing on purpose".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Incident>> {
        self.incidents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl IncidentStore for MemoryIncidentStore {
    fn save<'a>(&'a self, incident: &'a Incident) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.map().insert(incident.id.clone(), incident.clone());
            Ok(())
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Incident>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            Ok(self.map().get(id).cloned())
        })
    }

    fn list<'a>(
        &'a self,
        query: &'a IncidentQuery,
    ) -> BoxFuture<'a, Result<Vec<Incident>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let mut out: Vec<Incident> = self
                .map()
                .values()
                .filter(|i| query.matches(i))
                .cloned()
                .collect();
            out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
            if let Some(limit) = query.limit {
                out.truncate(limit);
            }
            Ok(out)
        })
    }

    fn max_sequence<'a>(&'a self, day: &'a str) -> BoxFuture<'a, Result<u32, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let prefix = format!("INC-{day}-");
            Ok(self
                .map()
                .keys()
                .filter_map(|id| id.strip_prefix(&prefix)?.parse::<u32>().ok())
                .max()
                .unwrap_or(0))
        })
    }
}
