//! Capacity controls: a global limit on concurrent requests, plus per-model
//! and per-key limits, each with a bounded FIFO wait queue.
//!
//! [`CapacityLimiter::acquire`] takes the key's slot first, then the
//! model's, then the global one, so a caller that floods its own key waits
//! on its own limit without holding a global slot that others need. One
//! deadline (`queue_timeout`) bounds the whole wait, across all three
//! limits: no request waits longer, and a full queue refuses at once. The
//! returned [`CapacityGuard`] releases every slot when it is dropped, which
//! covers finished requests and client disconnects alike (the guard lives
//! in the request's future or stream body). A waiter that is dropped leaves
//! its queue.
//!
//! Per-key state exists only while the key has a request waiting or in
//! flight: the last guard of a key removes its entry, so memory follows
//! concurrency, not the number of keys ever seen, and is further capped by
//! `max_tracked_keys`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// One limit: how many at once, and how many may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    /// Requests in flight at once.
    pub max_concurrent: u32,
    /// Requests that may wait for a slot; more are refused at once.
    pub queue_size: u32,
}

/// Validated `[limits]` settings; see [`crate::config::RawLimits`] for the
/// file form and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacitySettings {
    /// The whole gateway (default 1024 in flight, 512 waiting).
    pub global: LimitSpec,
    /// Every model without its own entry in `models` (default none: only
    /// the global limit applies).
    pub per_model: Option<LimitSpec>,
    /// Limits of named public models.
    pub models: BTreeMap<String, LimitSpec>,
    /// Every key without its own entry in `keys` (default 64 in flight, 16
    /// waiting).
    pub per_key: Option<LimitSpec>,
    /// Limits of named key IDs.
    pub keys: BTreeMap<String, LimitSpec>,
    /// Longest total wait for slots (default 5 s).
    pub queue_timeout: Duration,
    /// Base of the `Retry-After` suggestion (default 1 s).
    pub retry_after: Duration,
    /// Most keys with requests waiting or in flight at once (default 65 536).
    pub max_tracked_keys: usize,
    /// Most models with their own limit state (default 1024).
    pub max_tracked_models: usize,
}

impl Default for CapacitySettings {
    fn default() -> Self {
        CapacitySettings {
            global: LimitSpec {
                max_concurrent: 1024,
                queue_size: 512,
            },
            per_model: None,
            models: BTreeMap::new(),
            per_key: Some(LimitSpec {
                max_concurrent: 64,
                queue_size: 16,
            }),
            keys: BTreeMap::new(),
            queue_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            max_tracked_keys: 65_536,
            max_tracked_models: 1024,
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// The gateway-wide limit: answer 503.
    Global,
    /// The model's limit: answer 503.
    Model,
    /// The caller's key limit: answer 429, it is the caller's own load.
    Key,
    /// Too many distinct keys in flight to track another: answer 503.
    TrackedKeys,
}

impl LimitKind {
    /// `global`, `model`, `key` or `tracked_keys`; also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Global => "global",
            LimitKind::Model => "model",
            LimitKind::Key => "key",
            LimitKind::TrackedKeys => "tracked_keys",
        }
    }
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request got no slot. Each variant carries a `Retry-After`
/// suggestion; the gateway answers 429 for [`LimitKind::Key`] and 503
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapacityError {
    /// The limit is reached and its wait queue is full.
    #[error("the {limit} concurrency limit of {max} is reached and its queue of {queue} is full")]
    QueueFull {
        /// Which limit.
        limit: LimitKind,
        /// Its concurrency.
        max: u32,
        /// Its queue size.
        queue: u32,
        /// When to try again.
        retry_after: Duration,
    },
    /// No slot freed up within the queue timeout.
    #[error("no slot of the {limit} concurrency limit of {max} freed up within {}", humantime::format_duration(*.waited))]
    Timeout {
        /// Which limit.
        limit: LimitKind,
        /// Its concurrency.
        max: u32,
        /// How long the request waited in total.
        waited: Duration,
        /// When to try again.
        retry_after: Duration,
    },
    /// Too many distinct keys are waiting or in flight.
    #[error("{max} keys already have requests in flight")]
    TooManyKeys {
        /// The configured maximum.
        max: usize,
        /// When to try again.
        retry_after: Duration,
    },
}

impl CapacityError {
    /// The limit that refused.
    pub fn limit(&self) -> LimitKind {
        match self {
            CapacityError::QueueFull { limit, .. } | CapacityError::Timeout { limit, .. } => *limit,
            CapacityError::TooManyKeys { .. } => LimitKind::TrackedKeys,
        }
    }

    /// The suggested `Retry-After`, in whole seconds of at least one.
    pub fn retry_after(&self) -> Duration {
        match self {
            CapacityError::QueueFull { retry_after, .. }
            | CapacityError::Timeout { retry_after, .. }
            | CapacityError::TooManyKeys { retry_after, .. } => *retry_after,
        }
    }

    /// Whether the caller's own load caused it (429 rather than 503).
    pub fn is_caller_limit(&self) -> bool {
        self.limit() == LimitKind::Key
    }

    /// `queue_full`, `timeout` or `too_many_keys`; also the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            CapacityError::QueueFull { .. } => "queue_full",
            CapacityError::Timeout { .. } => "timeout",
            CapacityError::TooManyKeys { .. } => "too_many_keys",
        }
    }
}

#[derive(Debug)]
struct Limit {
    sem: Arc<Semaphore>,
    spec: LimitSpec,
    waiting: AtomicU32,
}

impl Limit {
    fn new(spec: LimitSpec) -> Self {
        Limit {
            sem: Arc::new(Semaphore::new(spec.max_concurrent as usize)),
            spec,
            waiting: AtomicU32::new(0),
        }
    }

    fn in_flight(&self) -> u32 {
        let free = u32::try_from(self.sem.available_permits()).unwrap_or(u32::MAX);
        self.spec.max_concurrent.saturating_sub(free)
    }
}

/// Decrements a waiting count when the wait ends, however it ends.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type KeyMap = Mutex<HashMap<String, Arc<Limit>>>;

/// A key's entry, held while one of its requests waits or runs. Dropping the
/// last one removes the entry.
struct KeyRef {
    inner: Arc<Shared>,
    key: String,
    limit: Option<Arc<Limit>>,
}

impl Drop for KeyRef {
    fn drop(&mut self) {
        let mut map = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Every clone of a key's Arc is made and dropped under this lock, so
        // the count read here is exact: 1 means only the map holds it.
        drop(self.limit.take());
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

struct Shared {
    settings: CapacitySettings,
    global: Limit,
    models: RwLock<HashMap<String, Arc<Limit>>>,
    keys: KeyMap,
    rejected: [AtomicU64; 4],
    timeouts: AtomicU64,
}

/// Slots held by one request. Dropping it releases them all.
#[must_use = "the slots are released when the guard is dropped"]
pub struct CapacityGuard {
    // Field order is drop order: permits go back before the key entry is
    // checked for removal.
    _global: OwnedSemaphorePermit,
    _model: Option<OwnedSemaphorePermit>,
    _key_permit: Option<OwnedSemaphorePermit>,
    _key: Option<KeyRef>,
}

impl std::fmt::Debug for CapacityGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapacityGuard").finish_non_exhaustive()
    }
}

/// In-flight and waiting counts of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitUsage {
    /// Requests holding a slot.
    pub in_flight: u32,
    /// Requests waiting for one.
    pub waiting: u32,
    /// The concurrency limit.
    pub max_concurrent: u32,
}

/// A snapshot for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityStats {
    /// The global limit.
    pub global: LimitUsage,
    /// Each model with limit state, sorted by name.
    pub models: Vec<(String, LimitUsage)>,
    /// Keys with requests waiting or in flight.
    pub tracked_keys: usize,
    /// Requests holding a key slot, over all keys.
    pub key_in_flight: u64,
    /// Requests waiting for a key slot, over all keys.
    pub key_waiting: u64,
    /// Refusals since start, by [`LimitKind`] (global, model, key,
    /// tracked_keys).
    pub rejected: [u64; 4],
    /// Refusals that were queue timeouts.
    pub timeouts: u64,
}

/// The limiter. Cheap to clone.
#[derive(Clone)]
pub struct CapacityLimiter {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for CapacityLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapacityLimiter")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn kind_index(kind: LimitKind) -> usize {
    match kind {
        LimitKind::Global => 0,
        LimitKind::Model => 1,
        LimitKind::Key => 2,
        LimitKind::TrackedKeys => 3,
    }
}

impl CapacityLimiter {
    /// A limiter with these settings.
    pub fn new(settings: CapacitySettings) -> Self {
        let models = settings
            .models
            .iter()
            .map(|(name, spec)| (name.clone(), Arc::new(Limit::new(*spec))))
            .collect();
        CapacityLimiter {
            inner: Arc::new(Shared {
                global: Limit::new(settings.global),
                models: RwLock::new(models),
                keys: Mutex::new(HashMap::new()),
                settings,
                rejected: Default::default(),
                timeouts: AtomicU64::new(0),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &CapacitySettings {
        &self.inner.settings
    }

    /// Waits for a slot of `key`'s limit, `model`'s and the global one, in
    /// that order, for at most `queue_timeout` in total. Call it before
    /// routing, once authentication has named the key; keep the guard until
    /// the response (or the stream) ends.
    pub async fn acquire(
        &self,
        model: &str,
        key: Option<&str>,
    ) -> Result<CapacityGuard, CapacityError> {
        let started = Instant::now();
        let deadline = started + self.inner.settings.queue_timeout;
        let result = self.acquire_inner(model, key, started, deadline).await;
        if let Err(e) = &result {
            self.inner.rejected[kind_index(e.limit())].fetch_add(1, Ordering::Relaxed);
            if matches!(e, CapacityError::Timeout { .. }) {
                self.inner.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn acquire_inner(
        &self,
        model: &str,
        key: Option<&str>,
        started: Instant,
        deadline: Instant,
    ) -> Result<CapacityGuard, CapacityError> {
        let (key_ref, key_permit) = match key.and_then(|k| self.key_spec(k).map(|s| (k, s))) {
            Some((key, spec)) => {
                let key_ref = self.key_ref(key, spec)?;
                // Borrowed, not cloned: every clone of a key's Arc lives in a
                // KeyRef, which is what makes its removal exact.
                let permit = match key_ref.limit.as_deref() {
                    Some(limit) => Some(self.wait(limit, LimitKind::Key, started, deadline).await?),
                    None => None,
                };
                (Some(key_ref), permit)
            }
            None => (None, None),
        };
        let model_permit = match self.model_limit(model) {
            Some(limit) => Some(
                self.wait(&limit, LimitKind::Model, started, deadline)
                    .await?,
            ),
            None => None,
        };
        let global = self
            .wait(&self.inner.global, LimitKind::Global, started, deadline)
            .await?;
        Ok(CapacityGuard {
            _global: global,
            _model: model_permit,
            _key_permit: key_permit,
            _key: key_ref,
        })
    }

    fn key_spec(&self, key: &str) -> Option<LimitSpec> {
        let s = &self.inner.settings;
        s.keys.get(key).copied().or(s.per_key)
    }

    fn key_ref(&self, key: &str, spec: LimitSpec) -> Result<KeyRef, CapacityError> {
        let mut map = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let limit = match map.get(key) {
            Some(limit) => limit.clone(),
            None => {
                let max = self.inner.settings.max_tracked_keys;
                if map.len() >= max {
                    return Err(CapacityError::TooManyKeys {
                        max,
                        retry_after: self.suggest(
                            &self.inner.global,
                            self.inner.global.waiting.load(Ordering::Relaxed),
                        ),
                    });
                }
                let limit = Arc::new(Limit::new(spec));
                map.insert(key.to_owned(), limit.clone());
                limit
            }
        };
        Ok(KeyRef {
            inner: self.inner.clone(),
            key: key.to_owned(),
            limit: Some(limit),
        })
    }

    fn model_limit(&self, model: &str) -> Option<Arc<Limit>> {
        if let Some(limit) = self
            .inner
            .models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return Some(limit.clone());
        }
        let spec = self.inner.settings.per_model?;
        let mut map = self
            .inner
            .models
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(limit) = map.get(model) {
            return Some(limit.clone());
        }
        // Models come from configuration, so this bound is never reached in
        // practice; past it a model gets only the global limit.
        if map.len() >= self.inner.settings.max_tracked_models {
            return None;
        }
        let limit = Arc::new(Limit::new(spec));
        map.insert(model.to_owned(), limit.clone());
        Some(limit)
    }

    async fn wait(
        &self,
        limit: &Limit,
        kind: LimitKind,
        started: Instant,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, CapacityError> {
        // No one is queued when a permit is free: tokio hands released
        // permits to waiters first, so this cannot jump the queue.
        if let Ok(permit) = limit.sem.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = limit.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&limit.waiting);
        if queued >= limit.spec.queue_size {
            return Err(CapacityError::QueueFull {
                limit: kind,
                max: limit.spec.max_concurrent,
                queue: limit.spec.queue_size,
                retry_after: self.suggest(limit, queued),
            });
        }
        match tokio::time::timeout_at(deadline, limit.sem.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one refuses like a
            // timeout rather than letting the request through.
            Ok(Err(_)) | Err(_) => Err(CapacityError::Timeout {
                limit: kind,
                max: limit.spec.max_concurrent,
                waited: Instant::now().saturating_duration_since(started),
                // Others still waiting, this request excluded.
                retry_after: self.suggest(
                    limit,
                    limit.waiting.load(Ordering::Relaxed).saturating_sub(1),
                ),
            }),
        }
    }

    /// `retry_after × (1 + waiting / max_concurrent)`, rounded up to whole
    /// seconds, between 1 s and 60 s: the longer the queue relative to the
    /// limit, the later to come back.
    fn suggest(&self, limit: &Limit, waiting: u32) -> Duration {
        let base = self.inner.settings.retry_after.as_secs_f64();
        let load = f64::from(waiting) / f64::from(limit.spec.max_concurrent.max(1));
        let secs = (base * (1.0 + load)).ceil().clamp(1.0, 60.0);
        Duration::from_secs_f64(secs)
    }

    /// In-flight and waiting counts, for metrics.
    pub fn stats(&self) -> CapacityStats {
        let usage = |l: &Limit| LimitUsage {
            in_flight: l.in_flight(),
            waiting: l.waiting.load(Ordering::Relaxed),
            max_concurrent: l.spec.max_concurrent,
        };
        let mut models: Vec<(String, LimitUsage)> = self
            .inner
            .models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, l)| (k.clone(), usage(l)))
            .collect();
        models.sort_by(|a, b| a.0.cmp(&b.0));
        let (tracked_keys, key_in_flight, key_waiting) = {
            let keys = self
                .inner
                .keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            keys.values()
                .fold((keys.len(), 0u64, 0u64), |(n, f, w), l| {
                    let u = usage(l);
                    (n, f + u64::from(u.in_flight), w + u64::from(u.waiting))
                })
        };
        CapacityStats {
            global: usage(&self.inner.global),
            models,
            tracked_keys,
            key_in_flight,
            key_waiting,
            rejected: std::array::from_fn(|i| self.inner.rejected[i].load(Ordering::Relaxed)),
            timeouts: self.inner.timeouts.load(Ordering::Relaxed),
        }
    }
}
