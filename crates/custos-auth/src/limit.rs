//! In-memory, per-key rate limiting of requests and tokens per minute.
//!
//! Each key has up to two token buckets: one for requests and one for LLM
//! tokens. A bucket holds up to `limit` units and refills continuously at
//! `limit` units per minute, so a key may burst its whole minute at once and
//! then proceeds at the steady rate. Bucket levels are kept as exact integers
//! in units of 1/60e9 of a token (a token-nanosecond per minute), so refill
//! never drifts and "N per minute" means exactly N.
//!
//! The caller passes the time in (`now: Instant`), which keeps tests
//! deterministic. State lives in 16 mutex-guarded shards chosen by a keyed
//! hash of the [`KeyId`], so concurrent requests for different keys rarely
//! contend. Full buckets carry no information, so [`RateLimiter::sweep`] drops
//! them and memory stays proportional to recently active keys.

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::key::KeyId;

/// The window over which limits are expressed.
const WINDOW: Duration = Duration::from_secs(60);
/// One token (or request), in bucket units: the window in nanoseconds.
const UNIT: i128 = 60_000_000_000;
/// Number of independently locked shards.
const SHARDS: usize = 16;

/// The per-minute limits of one key. `None` means unlimited. A limit of zero
/// refuses everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
}

impl Limits {
    /// No limit on either dimension.
    pub const UNLIMITED: Limits = Limits {
        rpm: None,
        tpm: None,
    };
}

/// One of the two limited quantities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl Dimension {
    /// The name used in headers (`x-ratelimit-*-requests`) and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
        }
    }
}

/// The state of one limited dimension after a decision, for the
/// `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and `x-ratelimit-reset-*`
/// headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DimensionStatus {
    /// The configured limit per minute.
    pub limit: u32,
    /// Whole units left now; zero when the bucket is empty or in debt.
    pub remaining: u32,
    /// Time until the bucket is full again. Format it with [`format_reset`].
    pub reset: Duration,
}

/// Why and for how long a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The exhausted dimension. When both are, the one with the longer wait.
    pub dimension: Dimension,
    /// How long until the same request would be allowed, if nothing else
    /// consumes the buckets meanwhile.
    pub retry_after: Duration,
}

impl Refusal {
    /// `retry_after` in whole seconds, rounded up, for the `Retry-After`
    /// header: a client that waits that long will not be refused again.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        if self.retry_after.subsec_nanos() > 0 {
            secs.saturating_add(1)
        } else {
            secs
        }
    }
}

/// The outcome of [`RateLimiter::check_request`].
#[must_use = "a refused request must not be served"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// The request bucket, or `None` when requests are unlimited.
    pub requests: Option<DimensionStatus>,
    /// The token bucket, or `None` when tokens are unlimited.
    pub tokens: Option<DimensionStatus>,
    /// `Some` when the request is refused.
    pub refusal: Option<Refusal>,
}

impl RateDecision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        self.refusal.is_none()
    }
}

/// One token bucket. `level` is in [`UNIT`]s per token and may go negative
/// when actual usage exceeds what was left.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    limit: u32,
    level: i128,
    updated: Instant,
}

impl Bucket {
    fn full(limit: u32, now: Instant) -> Self {
        Bucket {
            limit,
            level: capacity(limit),
            updated: now,
        }
    }

    /// Adds what has dripped in since the last update, capped at capacity.
    /// A `now` earlier than the last update (racing callers) adds nothing.
    fn refill(&mut self, now: Instant) {
        if now <= self.updated {
            return;
        }
        let elapsed =
            i128::try_from(now.duration_since(self.updated).as_nanos()).unwrap_or(i128::MAX);
        let added = elapsed.saturating_mul(i128::from(self.limit));
        self.level = self.level.saturating_add(added).min(capacity(self.limit));
        self.updated = now;
    }

    /// Refills at the old rate up to `now`, then switches to `limit`.
    fn sync(&mut self, limit: u32, now: Instant) {
        self.refill(now);
        if limit != self.limit {
            self.limit = limit;
            self.level = self.level.min(capacity(limit));
        }
    }

    fn has_one(&self) -> bool {
        self.level >= UNIT
    }

    fn is_full(&self) -> bool {
        self.level >= capacity(self.limit)
    }

    /// Time until the level reaches `target`.
    fn time_to(&self, target: i128) -> Duration {
        let missing = target.saturating_sub(self.level);
        if missing <= 0 {
            return Duration::ZERO;
        }
        if self.limit == 0 {
            // Nothing ever drips in; report one window rather than forever.
            return WINDOW;
        }
        let limit = i128::from(self.limit);
        // Round up, so that waiting this long is always enough.
        let nanos = missing.saturating_add(limit - 1) / limit;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn status(&self) -> DimensionStatus {
        let whole = (self.level / UNIT).clamp(0, i128::from(self.limit));
        DimensionStatus {
            limit: self.limit,
            remaining: u32::try_from(whole).unwrap_or(0),
            reset: self.time_to(capacity(self.limit)),
        }
    }
}

fn capacity(limit: u32) -> i128 {
    i128::from(limit) * UNIT
}

/// Brings `slot` in line with `limit`: creates a full bucket, updates an
/// existing one, or drops it when the dimension became unlimited.
fn sync_slot(slot: &mut Option<Bucket>, limit: Option<u32>, now: Instant) {
    match (slot.as_mut(), limit) {
        (_, None) => *slot = None,
        (Some(bucket), Some(limit)) => bucket.sync(limit, now),
        (None, Some(limit)) => *slot = Some(Bucket::full(limit, now)),
    }
}

#[derive(Debug, Default)]
struct Entry {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl Entry {
    fn is_idle(&mut self, now: Instant) -> bool {
        [&mut self.requests, &mut self.tokens]
            .into_iter()
            .flatten()
            .all(|b| {
                b.refill(now);
                b.is_full()
            })
    }
}

type Shard = Mutex<HashMap<KeyId, Entry>>;

/// A thread-safe rate limiter for requests and tokens per minute, keyed by
/// [`KeyId`]. Share it behind an `Arc`.
pub struct RateLimiter {
    shards: [Shard; SHARDS],
    hasher: RandomState,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The entries could number in the thousands; their count is enough.
        f.debug_struct("RateLimiter")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        RateLimiter {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &KeyId) -> MutexGuard<'_, HashMap<KeyId, Entry>> {
        // The modulo keeps the index below SHARDS.
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // The maps are updated in single steps that cannot panic half-way,
        // so a poisoned lock still guards consistent data.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides whether `key` may make one more request under `limits`, and
    /// if so consumes one request.
    ///
    /// A request is refused when the request bucket is empty or the token
    /// bucket holds less than one token (tokens are debited after the
    /// response, with [`RateLimiter::record_tokens`]). A refused request
    /// consumes nothing. `limits` may change from call to call; the buckets
    /// follow the latest values. When both limits are `None` no state is kept.
    pub fn check_request(&self, key: &KeyId, limits: Limits, now: Instant) -> RateDecision {
        if limits == Limits::UNLIMITED {
            return RateDecision {
                requests: None,
                tokens: None,
                refusal: None,
            };
        }
        let mut shard = self.shard(key);
        let entry = shard.entry(*key).or_default();
        sync_slot(&mut entry.requests, limits.rpm, now);
        sync_slot(&mut entry.tokens, limits.tpm, now);

        let refused = |b: &Option<Bucket>, dimension| {
            b.as_ref().filter(|b| !b.has_one()).map(|b| Refusal {
                dimension,
                retry_after: b.time_to(UNIT),
            })
        };
        let refusal = match (
            refused(&entry.requests, Dimension::Requests),
            refused(&entry.tokens, Dimension::Tokens),
        ) {
            (Some(r), Some(t)) => Some(if t.retry_after > r.retry_after { t } else { r }),
            (r, t) => r.or(t),
        };
        if refusal.is_none()
            && let Some(bucket) = entry.requests.as_mut()
        {
            bucket.level -= UNIT;
        }
        RateDecision {
            requests: entry.requests.as_ref().map(Bucket::status),
            tokens: entry.tokens.as_ref().map(Bucket::status),
            refusal,
        }
    }

    /// Debits `tokens` actually used by a response from `key`'s token bucket.
    ///
    /// The bucket may go into debt, in which case requests are refused until
    /// it refills to one token. Usage is dropped when the key has no token
    /// bucket: tokens are unlimited, or the key was never checked, or its
    /// entry was swept because both buckets had refilled completely (a
    /// response that took longer than a minute, with no other request from
    /// the key meanwhile).
    pub fn record_tokens(&self, key: &KeyId, tokens: u64, now: Instant) {
        let mut shard = self.shard(key);
        if let Some(bucket) = shard.get_mut(key).and_then(|e| e.tokens.as_mut()) {
            bucket.refill(now);
            bucket.level = bucket
                .level
                .saturating_sub(i128::from(tokens).saturating_mul(UNIT));
        }
    }

    /// Drops the state of every key whose buckets are full at `now`, which is
    /// indistinguishable from having no state. Call it periodically (every
    /// minute is plenty); memory is then bounded by the keys active during
    /// the last minute or so. Returns how many entries were removed.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = map.len();
            map.retain(|_, entry| !entry.is_idle(now));
            removed += before - map.len();
        }
        removed
    }

    /// The number of keys with state.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Formats a duration the way OpenAI's `x-ratelimit-reset-*` headers do,
/// which is Go's `time.Duration` notation at millisecond precision: `0s`,
/// `20ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`.
///
/// Sub-millisecond remainders round up, so a client that waits the printed
/// time is never early.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::with_capacity(16);
    // Writing to a String cannot fail.
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let _ = write!(out, "{s}");
    if frac > 0 {
        let digits = format!("{frac:03}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn key(n: u64) -> KeyId {
        KeyId::generate(&mut StdRng::seed_from_u64(n))
    }

    fn rpm(n: u32) -> Limits {
        Limits {
            rpm: Some(n),
            tpm: None,
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn allows_exactly_n_per_minute() {
        for n in [1, 2, 3, 7, 60, 1000, 100_000] {
            let rl = RateLimiter::new();
            let (k, t0) = (key(1), Instant::now());
            for i in 0..n {
                let d = rl.check_request(&k, rpm(n), t0);
                assert!(d.is_allowed(), "n={n} i={i}");
                assert_eq!(d.requests.unwrap().remaining, n - i - 1);
            }
            let d = rl.check_request(&k, rpm(n), t0);
            let refusal = d.refusal.unwrap();
            assert_eq!(refusal.dimension, Dimension::Requests);
            // One n-th of a minute, rounded up to the nanosecond.
            let step = Duration::from_nanos(60_000_000_000u64.div_ceil(u64::from(n)));
            assert_eq!(refusal.retry_after, step, "n={n}");
            assert_eq!(d.requests.unwrap().remaining, 0);
            assert_eq!(d.requests.unwrap().reset, WINDOW);
            // Just before the retry time: still refused. At it: allowed.
            let early = t0 + refusal.retry_after - Duration::from_nanos(1);
            assert!(!rl.check_request(&k, rpm(n), early).is_allowed());
            assert!(
                rl.check_request(&k, rpm(n), t0 + refusal.retry_after)
                    .is_allowed()
            );
        }
    }

    #[test]
    fn refills_over_time() {
        let rl = RateLimiter::new();
        let (k, t0) = (key(1), Instant::now());
        for _ in 0..60 {
            assert!(rl.check_request(&k, rpm(60), t0).is_allowed());
        }
        // Half a minute refills half the bucket.
        let t1 = t0 + 30 * SEC;
        for i in 0..30 {
            assert!(rl.check_request(&k, rpm(60), t1).is_allowed(), "{i}");
        }
        assert!(!rl.check_request(&k, rpm(60), t1).is_allowed());
        // A full minute of idleness refills everything, and no more.
        let t2 = t1 + 10 * WINDOW;
        let d = rl.check_request(&k, rpm(60), t2);
        assert_eq!(d.requests.unwrap().remaining, 59);
        assert_eq!(d.requests.unwrap().reset, SEC);
    }

    #[test]
    fn reset_counts_down() {
        let rl = RateLimiter::new();
        let (k, t0) = (key(1), Instant::now());
        for _ in 0..3 {
            let _ = rl.check_request(&k, rpm(6), t0);
        }
        let d = rl.check_request(&k, rpm(6), t0 + 5 * SEC);
        // 3 used, 0.5 refilled, 1 more used: 3.5 missing at 6/min = 35 s.
        let status = d.requests.unwrap();
        assert_eq!(status.reset, 35 * SEC);
        assert_eq!(status.remaining, 2);
        assert_eq!(status.limit, 6);
    }

    #[test]
    fn tokens_are_debited_and_refuse_when_exhausted() {
        let rl = RateLimiter::new();
        let (k, t0) = (key(1), Instant::now());
        let limits = Limits {
            rpm: Some(100),
            tpm: Some(1000),
        };
        let d = rl.check_request(&k, limits, t0);
        assert!(d.is_allowed());
        assert_eq!(d.tokens.unwrap().remaining, 1000);
        rl.record_tokens(&k, 400, t0);
        let d = rl.check_request(&k, limits, t0);
        assert!(d.is_allowed());
        assert_eq!(d.tokens.unwrap().remaining, 600);
        // Usage beyond what is left drives the bucket into debt.
        rl.record_tokens(&k, 1100, t0);
        let d = rl.check_request(&k, limits, t0);
        let refusal = d.refusal.unwrap();
        assert_eq!(refusal.dimension, Dimension::Tokens);
        // -500 tokens; one whole token needs 501 at 1000/min = 30.06 s.
        assert_eq!(refusal.retry_after, Duration::from_millis(30_060));
        assert_eq!(refusal.retry_after_secs(), 31);
        assert_eq!(d.tokens.unwrap().remaining, 0);
        assert_eq!(d.tokens.unwrap().reset, 90 * SEC);
        // A refused request consumed no request.
        assert_eq!(d.requests.unwrap().remaining, 98);
        assert!(
            !rl.check_request(&k, limits, t0 + Duration::from_millis(30_059))
                .is_allowed()
        );
        assert!(
            rl.check_request(&k, limits, t0 + Duration::from_millis(30_060))
                .is_allowed()
        );
    }

    #[test]
    fn both_exhausted_reports_the_longer_wait() {
        let rl = RateLimiter::new();
        let (k, t0) = (key(1), Instant::now());
        let limits = Limits {
            rpm: Some(1),
            tpm: Some(60),
        };
        assert!(rl.check_request(&k, limits, t0).is_allowed());
        rl.record_tokens(&k, 600, t0);
        let refusal = rl.check_request(&k, limits, t0).refusal.unwrap();
        assert_eq!(refusal.dimension, Dimension::Tokens);
        assert_eq!(refusal.retry_after, 541 * SEC);
    }

    #[test]
    fn unlimited_keeps_no_state() {
        let rl = RateLimiter::new();
        let d = rl.check_request(&key(1), Limits::UNLIMITED, Instant::now());
        assert!(d.is_allowed());
        assert_eq!(d.requests, None);
        assert_eq!(d.tokens, None);
        rl.record_tokens(&key(1), 1_000_000, Instant::now());
        assert!(rl.is_empty());
    }

    #[test]
    fn zero_limit_refuses_everything() {
        let rl = RateLimiter::new();
        let d = rl.check_request(&key(1), rpm(0), Instant::now());
        assert_eq!(
            d.refusal,
            Some(Refusal {
                dimension: Dimension::Requests,
                retry_after: WINDOW
            })
        );
    }

    #[test]
    fn limit_changes_take_effect() {
        let rl = RateLimiter::new();
        let (k, t0) = (key(1), Instant::now());
        for _ in 0..10 {
            assert!(rl.check_request(&k, rpm(100), t0).is_allowed());
        }
        // Lowering the limit below what is left caps the bucket.
        let d = rl.check_request(&k, rpm(5), t0);
        assert_eq!(d.requests.unwrap().remaining, 4);
        // Raising it does not grant a free refill.
        let d = rl.check_request(&k, rpm(100), t0);
        assert_eq!(d.requests.unwrap().remaining, 3);
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let rl = RateLimiter::new();
        let (k, t0) = (key(1), Instant::now() + WINDOW);
        assert!(rl.check_request(&k, rpm(1), t0).is_allowed());
        assert!(!rl.check_request(&k, rpm(1), t0 - WINDOW).is_allowed());
        assert!(!rl.check_request(&k, rpm(1), t0).is_allowed());
    }

    #[test]
    fn keys_are_independent() {
        let rl = RateLimiter::new();
        let t0 = Instant::now();
        assert!(rl.check_request(&key(1), rpm(1), t0).is_allowed());
        assert!(rl.check_request(&key(2), rpm(1), t0).is_allowed());
        assert!(!rl.check_request(&key(1), rpm(1), t0).is_allowed());
    }

    #[test]
    fn concurrent_checks_allow_exactly_the_limit() {
        let rl = RateLimiter::new();
        let t0 = Instant::now();
        let keys: Vec<KeyId> = (0..4).map(key).collect();
        let allowed: Vec<AtomicU32> = keys.iter().map(|_| AtomicU32::new(0)).collect();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..500 {
                        for (k, count) in keys.iter().zip(&allowed) {
                            if rl.check_request(k, rpm(1000), t0).is_allowed() {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        for count in &allowed {
            assert_eq!(count.load(Ordering::Relaxed), 1000);
        }
    }

    #[test]
    fn sweep_bounds_memory() {
        let rl = RateLimiter::new();
        let t0 = Instant::now();
        let limits = Limits {
            rpm: Some(60),
            tpm: Some(1000),
        };
        for n in 0..1000 {
            let _ = rl.check_request(&key(n), limits, t0);
        }
        assert_eq!(rl.len(), 1000);
        // Each key used one request, which takes a second to drip back.
        rl.record_tokens(&key(0), 5000, t0);
        assert_eq!(rl.sweep(t0 + SEC / 2), 0);
        assert_eq!(rl.len(), 1000);
        // After a minute every bucket but the indebted one is full again.
        assert_eq!(rl.sweep(t0 + WINDOW), 999);
        assert_eq!(rl.len(), 1);
        let d = rl.check_request(&key(0), limits, t0 + WINDOW);
        assert!(!d.is_allowed());
        assert_eq!(rl.sweep(t0 + 10 * WINDOW), 1);
        assert!(rl.is_empty());
        // A swept key starts again with full buckets.
        let d = rl.check_request(&key(5), limits, t0 + 10 * WINDOW);
        assert_eq!(d.requests.unwrap().remaining, 59);
    }

    #[test]
    fn reset_format_matches_openai() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ms"),
            (Duration::from_micros(19_001), "20ms"),
            (Duration::from_millis(20), "20ms"),
            (Duration::from_millis(999), "999ms"),
            (SEC, "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(2524), "2.524s"),
            (Duration::from_millis(8640), "8.64s"),
            (59 * SEC, "59s"),
            (WINDOW, "1m0s"),
            (6 * WINDOW, "6m0s"),
            (61 * SEC + Duration::from_millis(100), "1m1.1s"),
            (60 * WINDOW, "1h0m0s"),
            (Duration::from_secs(3723), "1h2m3s"),
            (Duration::from_secs(25 * 3600), "25h0m0s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_reset(d), want, "{d:?}");
        }
    }

    #[test]
    fn retry_after_secs_rounds_up() {
        let r = |ms| Refusal {
            dimension: Dimension::Requests,
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(r(0).retry_after_secs(), 0);
        assert_eq!(r(1).retry_after_secs(), 1);
        assert_eq!(r(1000).retry_after_secs(), 1);
        assert_eq!(r(1001).retry_after_secs(), 2);
    }
}
