//! The authentication stage: who is calling, and is that key still good.
//!
//! Keys are verified against an in-memory snapshot of the key store, so a
//! check costs a parse, one HMAC and a hash-map lookup. The snapshot is
//! reloaded whenever the [`KeySource`] reports a change — a revocation made
//! by another process is seen on the very next request, with no TTL.
//!
//! [`Auth`] is also an [`OutcomeSink`]: once a request is over it debits the
//! tokens used from the key's rate limit and notes when the key was last
//! used, flushed to the store in batches rather than one write per request.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use custos_auth::limit::RateDecision;
use custos_auth::scope::BudgetPeriod;
use custos_auth::{KeyFormatError, KeyHash, KeyHasher, KeyId, Limits, RateLimiter, Scope, key};
use custos_types::Clock;
use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::outcome::{OutcomeSink, RequestOutcome};

/// A boxed future, for the object-safe [`KeySource`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the gateway knows about one key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The public, stable ID.
    pub id: KeyId,
    /// Its name.
    pub name: String,
    /// The service or person that owns it.
    pub owner: Option<String>,
    /// The owning team.
    pub team: Option<String>,
    /// What it may do.
    pub scope: Scope,
    /// When it stops working.
    pub expires_at: Option<SystemTime>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// One secret of a key: the current one, or an old one during its grace.
#[derive(Debug, Clone)]
pub struct SecretEntry {
    /// The key it belongs to.
    pub key: Arc<KeyEntry>,
    /// When this secret was issued (for the rotation policy).
    pub issued_at: SystemTime,
    /// After this instant the secret answers `key_rotated`; `None` for the
    /// current secret.
    pub not_after: Option<SystemTime>,
}

/// Every secret the gateway accepts or recognises, by peppered hash.
#[derive(Debug, Clone, Default)]
pub struct KeySnapshot {
    /// Secrets by hash.
    pub secrets: HashMap<KeyHash, SecretEntry>,
}

/// Where keys come from: the state store, in production.
pub trait KeySource: Send + Sync + 'static {
    /// Whether keys may have changed since the last `load`. Called on every
    /// request, so it must cost about a `stat()`.
    fn changed(&self) -> bool;
    /// Loads every key and secret.
    fn load(&self) -> BoxFuture<'_, Result<KeySnapshot, String>>;
    /// Stores last-used times, one batch at a time.
    fn record_last_used(
        &self,
        batch: Vec<(KeyId, SystemTime)>,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// Tokens a key has used in the budget period containing now.
    fn usage_in_period(
        &self,
        key: KeyId,
        period: BudgetPeriod,
    ) -> BoxFuture<'_, Result<u64, String>>;
    /// Adds token usage: (key, when, tokens), one batch at a time.
    fn add_usage(&self, batch: Vec<(KeyId, SystemTime, u64)>) -> BoxFuture<'_, Result<(), String>>;
}

/// A key's token use in its current budget period.
#[derive(Debug, Clone, Copy)]
struct BudgetState {
    start: SystemTime,
    end: SystemTime,
    used: u64,
}

/// Why a caller was not authenticated (401), or could not be checked (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` or `x-api-key` header.
    #[error("no API key provided; send it as `Authorization: Bearer <key>`")]
    Missing,
    /// Not a Custos key, or mistyped or truncated (checksum).
    #[error("the API key is malformed ({0})")]
    Malformed(KeyFormatError),
    /// Well-formed but unknown.
    #[error("the API key is not valid")]
    Unknown,
    /// Revoked.
    #[error("the API key has been revoked")]
    Revoked,
    /// Past its expiry.
    #[error("the API key has expired")]
    Expired,
    /// An old secret whose rotation grace period is over.
    #[error("this secret was rotated and its grace period is over; use the new secret")]
    RotatedOut,
    /// The key's token budget for the period is spent.
    #[error("the token budget of this key is spent until {}", humantime::format_rfc3339_seconds(*.resets_at))]
    BudgetExceeded {
        /// When the next period starts.
        resets_at: SystemTime,
        /// Seconds until then, for `Retry-After`.
        retry_after_secs: u64,
    },
    /// The key store could not be read, so the key cannot be checked.
    #[error("keys cannot be checked right now; retry shortly")]
    Unavailable,
}

impl AuthError {
    /// The `error.code` returned to the client and recorded.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_api_key",
            AuthError::Malformed(_) => "malformed_api_key",
            AuthError::Unknown => "invalid_api_key",
            AuthError::Revoked => "revoked_api_key",
            AuthError::Expired => "expired_api_key",
            AuthError::RotatedOut => "key_rotated",
            AuthError::BudgetExceeded { .. } => "budget_exceeded",
            AuthError::Unavailable => "key_store_unavailable",
        }
    }
}

/// The rotation policy: keys older than `max_age` are due.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// Largest age of a key's current secret.
    pub max_age: Duration,
    /// How long before `max_age` callers are warned.
    pub warn_before: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            max_age: Duration::from_secs(90 * 24 * 3600),
            warn_before: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key.
    pub key: Arc<KeyEntry>,
    /// When the secret in use is (or was) due for rotation, if that is
    /// within the warning window.
    pub rotation_due: Option<SystemTime>,
}

/// The authentication stage and its state.
pub struct Auth {
    hasher: KeyHasher,
    source: Arc<dyn KeySource>,
    snapshot: RwLock<Arc<KeySnapshot>>,
    reload: tokio::sync::Mutex<()>,
    /// Held while asking the source and recording what it said; see
    /// [`Auth::current`].
    check: Mutex<()>,
    wanted: AtomicU64,
    loaded: AtomicU64,
    limiter: RateLimiter,
    last_used: Mutex<HashMap<KeyId, SystemTime>>,
    budgets: Mutex<HashMap<KeyId, BudgetState>>,
    /// Usage not yet written to the store, by key and UTC day.
    pending_usage: Mutex<HashMap<(KeyId, SystemTime), u64>>,
    clock: Arc<dyn Clock>,
    policy: RotationPolicy,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Loads the first snapshot from `source`.
    pub async fn new(
        hasher: KeyHasher,
        source: Arc<dyn KeySource>,
        clock: Arc<dyn Clock>,
        policy: RotationPolicy,
    ) -> Result<Arc<Self>, String> {
        let first = source.load().await?;
        Ok(Arc::new(Auth {
            hasher,
            source,
            snapshot: RwLock::new(Arc::new(first)),
            reload: tokio::sync::Mutex::new(()),
            check: Mutex::new(()),
            wanted: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            limiter: RateLimiter::new(),
            last_used: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            pending_usage: Mutex::new(HashMap::new()),
            clock,
            policy,
        }))
    }

    /// Re-reads keys when the source says they changed.
    ///
    /// `changed()` reports each change once, so the change is first turned
    /// into a wanted generation. Every request that starts after the change
    /// sees `loaded < wanted` and waits for the reload in progress instead of
    /// using the old snapshot; a change that lands during a reload bumps
    /// `wanted` again and triggers another.
    ///
    /// The question and the bump happen under `check`: otherwise a request
    /// that asks just after another one consumed the change (and before
    /// that one bumped `wanted`) would be told "no change" and use the old
    /// snapshot, although it started after the change.
    async fn current(&self) -> Result<Arc<KeySnapshot>, AuthError> {
        {
            let _check = self.check.lock().unwrap_or_else(|e| e.into_inner());
            if self.source.changed() {
                self.wanted.fetch_add(1, Ordering::SeqCst);
            }
        }
        if self.loaded.load(Ordering::SeqCst) < self.wanted.load(Ordering::SeqCst) {
            let _guard = self.reload.lock().await;
            let target = self.wanted.load(Ordering::SeqCst);
            if self.loaded.load(Ordering::SeqCst) < target {
                match self.source.load().await {
                    Ok(fresh) => {
                        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
                        self.loaded.store(target, Ordering::SeqCst);
                    }
                    Err(e) => {
                        // Fail closed: without the store, a revocation
                        // could go unseen.
                        tracing::error!(error = %e, "cannot reload API keys");
                        return Err(AuthError::Unavailable);
                    }
                }
            }
        }
        Ok(self
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    /// Authenticates the caller from its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let presented = credential(headers).ok_or(AuthError::Missing)?;
        let parsed = key::parse(presented).map_err(AuthError::Malformed)?;
        let hash = self.hasher.hash(&parsed);
        let snapshot = self.current().await?;
        let entry = snapshot.secrets.get(&hash).ok_or(AuthError::Unknown)?;
        // The map lookup compared hashes with `==`; confirm in constant time.
        let (stored, _) = snapshot
            .secrets
            .get_key_value(&hash)
            .ok_or(AuthError::Unknown)?;
        if !stored.ct_eq(&hash) {
            return Err(AuthError::Unknown);
        }
        let now = self.clock.now();
        if entry.key.revoked {
            return Err(AuthError::Revoked);
        }
        if entry.key.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::Expired);
        }
        if entry.not_after.is_some_and(|t| t <= now) {
            return Err(AuthError::RotatedOut);
        }
        let due = entry.issued_at + self.policy.max_age;
        let rotation_due = (now + self.policy.warn_before >= due).then_some(due);
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.key.id, now);
        if let Some(budget) = entry.key.scope.budget {
            self.load_budget(entry.key.id, budget.period, now).await?;
        }
        Ok(Principal {
            key: entry.key.clone(),
            rotation_due,
        })
    }

    /// Makes sure the key's usage for the current period is known, reading
    /// it from the store at the first request of a period.
    async fn load_budget(
        &self,
        key: KeyId,
        period: BudgetPeriod,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let (start, end) = period.bounds(now);
        let known = self
            .budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|b| b.start == start);
        if known {
            return Ok(());
        }
        let stored = self
            .source
            .usage_in_period(key, period)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read token usage for a budgeted key");
                AuthError::Unavailable
            })?;
        // Usage recorded here but not yet flushed counts too.
        let pending: u64 = self
            .pending_usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((k, day), _)| *k == key && *day >= start)
            .map(|(_, n)| *n)
            .sum();
        self.budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key,
                BudgetState {
                    start,
                    end,
                    used: stored + pending,
                },
            );
        Ok(())
    }

    /// Refuses a key whose token budget for the period is spent.
    pub fn check_budget(&self, key: &KeyEntry) -> Result<(), AuthError> {
        let Some(budget) = key.scope.budget else {
            return Ok(());
        };
        let now = self.clock.now();
        let budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        match budgets.get(&key.id) {
            Some(state) if state.used >= budget.tokens && now < state.end => {
                let wait = state.end.duration_since(now).unwrap_or_default();
                Err(AuthError::BudgetExceeded {
                    resets_at: state.end,
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                })
            }
            _ => Ok(()),
        }
    }

    /// Takes one request from the key's per-minute budget.
    pub fn check_rate(&self, key: &KeyId, limits: Limits) -> RateDecision {
        self.limiter.check_request(key, limits, Instant::now())
    }

    /// Writes pending last-used times to the store and drops idle limiter
    /// state. Called periodically by the binary.
    pub async fn flush(&self) -> Result<usize, String> {
        let batch: Vec<(KeyId, SystemTime)> = {
            let mut map = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().collect()
        };
        self.limiter.sweep(Instant::now());
        let n = batch.len();
        if n > 0 {
            self.source.record_last_used(batch).await?;
        }
        let usage: Vec<(KeyId, SystemTime, u64)> = {
            let mut map = self.pending_usage.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|((k, day), n)| (k, day, n)).collect()
        };
        if !usage.is_empty()
            && let Err(e) = self.source.add_usage(usage.clone()).await
        {
            // Put it back: usage is kept until it is stored.
            let mut map = self.pending_usage.lock().unwrap_or_else(|e| e.into_inner());
            for (k, day, n) in usage {
                *map.entry((k, day)).or_default() += n;
            }
            return Err(e);
        }
        // Forget budget states of past periods.
        let now = self.clock.now();
        self.budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, b| b.end > now);
        Ok(n)
    }
}

impl OutcomeSink for Auth {
    fn record(&self, outcome: &RequestOutcome) {
        let (Some(actor), Some(usage)) = (&outcome.actor, outcome.usage) else {
            return;
        };
        let tokens = usage.total_tokens;
        self.limiter
            .record_tokens(&actor.key_id, tokens, Instant::now());
        if let Some(state) = self
            .budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&actor.key_id)
        {
            state.used = state.used.saturating_add(tokens);
        }
        let day = BudgetPeriod::Day.bounds(self.clock.now()).0;
        *self
            .pending_usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((actor.key_id, day))
            .or_default() += tokens;
    }
}

/// The presented key: `Authorization: Bearer KEY` (OpenAI SDKs) or
/// `x-api-key: KEY` (Anthropic SDKs).
fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let text = value.to_str().ok()?.trim();
        let (scheme, rest) = text.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.trim());
        }
        return None;
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credentials_are_read_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer  cst_live_x "),
        );
        assert_eq!(credential(&h), Some("cst_live_x"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(credential(&h), None);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("cst_live_y"));
        assert_eq!(credential(&h), Some("cst_live_y"));
    }
}
