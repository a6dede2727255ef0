//! Configuration in two phases, for the config crate to embed as the
//! `[health]`, `[limits]` and `[incidents]` (with `[[incidents.webhooks]]`)
//! sections: raw serde structs that reject unknown keys, and `validate`
//! methods that turn them into the settings types, collecting every error
//! with its dotted path. Every field is optional; the default is given in
//! its documentation and equals the settings type's `Default`.
//!
//! ```toml
//! [health]
//! target_window = "60s"          # per-target figures and breaker error rate
//! model_window = "5m"            # per-model figures that incidents evaluate
//! buckets = 10                   # each window is split into this many buckets
//!
//! [health.breaker]
//! failure_rate = 0.5
//! min_requests = 20
//! consecutive_failures = 5
//! cool_down = "30s"
//! max_cool_down = "5m"
//!
//! [health.probes]
//! enabled = true
//! interval = "30s"
//! targets = ["openai/gpt-4o-mini"]    # provider/upstream-model; empty = all
//!
//! [limits]
//! max_concurrent = 1024
//! queue_size = 512
//! queue_timeout = "5s"
//! per_key_max_concurrent = 64
//! per_model_max_concurrent = "unlimited"
//! [limits.models."gpt-4o"]
//! max_concurrent = 200
//! [limits.keys."key_01HZX"]
//! max_concurrent = 4
//!
//! [incidents]
//! error_rate = 0.05
//! latency_p95 = "30s"
//! recovery_period = "5m"
//! [incidents.models."gpt-4o"]
//! latency_p95 = "20s"
//!
//! [[incidents.webhooks]]
//! name = "ops-slack"
//! format = "slack"
//! url_env = "CUSTOS_SLACK_WEBHOOK_URL"
//! min_severity = "sev2"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::breaker::BreakerSettings;
use crate::capacity::{CapacitySettings, LimitSpec};
use crate::health::HealthSettings;
use crate::incident::IncidentSettings;
use crate::incident::detect::Thresholds;
use crate::incident::model::Severity;
use crate::probe::ProbeSettings;
use crate::target::TargetId;
use crate::webhook::{ValueSource, WebhookEvent, WebhookFormat, WebhookSettings};
use crate::window::WindowSpec;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// Dotted path such as `health.breaker.cool_down`.
    pub path: String,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
}

/// `[health]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Span of per-target figures and of the breaker's error rate
    /// (default `"60s"`).
    pub target_window: Option<String>,
    /// Span of per-model request figures that incidents evaluate (default
    /// `"5m"`).
    pub model_window: Option<String>,
    /// Buckets per window, 1 to 120 (default 10).
    pub buckets: Option<i64>,
    /// Most targets tracked (default 1024).
    pub max_targets: Option<i64>,
    /// Most models tracked (default 1024).
    pub max_models: Option<i64>,
    /// Most distinct failing keys remembered per model (default 1000).
    pub max_failing_keys: Option<i64>,
    /// Undrained minutes of aggregates kept (default 60).
    pub max_aggregate_minutes: Option<i64>,
    /// `[health.breaker]`.
    #[serde(default)]
    pub breaker: RawBreaker,
    /// `[health.probes]`.
    #[serde(default)]
    pub probes: RawProbes,
}

/// `[health.breaker]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Whether breakers refuse traffic (default true).
    pub enabled: Option<bool>,
    /// Error rate over the target window that opens, in (0, 1] (default 0.5).
    pub failure_rate: Option<f64>,
    /// Attempts in the window before the rate counts (default 20).
    pub min_requests: Option<i64>,
    /// Failures in a row that open; 0 disables the rule (default 5).
    pub consecutive_failures: Option<i64>,
    /// First open period (default `"30s"`).
    pub cool_down: Option<String>,
    /// Longest open period after repeated failed trials (default `"5m"`).
    pub max_cool_down: Option<String>,
    /// Growth of the open period per failed trial, 1 to 10 (default 2.0).
    pub backoff_multiplier: Option<f64>,
    /// Trial requests at once while half-open (default 1).
    pub half_open_trials: Option<i64>,
    /// Successful trials that close (default 1).
    pub half_open_successes: Option<i64>,
    /// Whether a 429 counts as a failure (default true).
    pub rate_limited_is_failure: Option<bool>,
}

/// `[health.probes]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbes {
    /// Whether probes run (default false).
    pub enabled: Option<bool>,
    /// Time between rounds, at least 1 s (default `"30s"`).
    pub interval: Option<String>,
    /// Timeout of one probe (default `"10s"`).
    pub timeout: Option<String>,
    /// `provider/upstream-model` entries; empty probes every target
    /// (default empty).
    #[serde(default)]
    pub targets: Vec<String>,
}

/// A concurrency limit: a number, or `"unlimited"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawLimit {
    /// At most this many at once.
    Count(i64),
    /// `"unlimited"`.
    Text(String),
}

/// `[limits]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Requests in flight in the whole gateway (default 1024).
    pub max_concurrent: Option<i64>,
    /// Requests waiting for a global slot (default 512).
    pub queue_size: Option<i64>,
    /// Longest total wait for slots (default `"5s"`).
    pub queue_timeout: Option<String>,
    /// Base of the `Retry-After` suggestion (default `"1s"`).
    pub retry_after: Option<String>,
    /// Limit of each model without its own entry (default `"unlimited"`).
    pub per_model_max_concurrent: Option<RawLimit>,
    /// Queue of each model limit (default 128).
    pub per_model_queue_size: Option<i64>,
    /// Limit of each key without its own entry (default 64).
    pub per_key_max_concurrent: Option<RawLimit>,
    /// Queue of each key limit (default 16).
    pub per_key_queue_size: Option<i64>,
    /// Most keys waiting or in flight at once (default 65536).
    pub max_tracked_keys: Option<i64>,
    /// Most models with their own limit state (default 1024).
    pub max_tracked_models: Option<i64>,
    /// `[limits.models.NAME]`.
    #[serde(default)]
    pub models: BTreeMap<String, RawLimitSpec>,
    /// `[limits.keys.KEY_ID]`.
    #[serde(default)]
    pub keys: BTreeMap<String, RawLimitSpec>,
}

/// `[limits.models.NAME]` and `[limits.keys.KEY_ID]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimitSpec {
    /// Requests in flight at once (required).
    pub max_concurrent: Option<i64>,
    /// Requests that may wait (default: the per-model or per-key queue
    /// size).
    pub queue_size: Option<i64>,
}

/// `[incidents]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncidents {
    /// Whether incidents are detected (default true).
    pub enabled: Option<bool>,
    /// Time between evaluations, at least 1 s (default `"10s"`).
    pub evaluation_interval: Option<String>,
    /// Time without symptoms before an incident resolves itself (default
    /// `"5m"`).
    pub recovery_period: Option<String>,
    /// Most distinct affected keys counted per incident (default 10000).
    pub max_affected_keys: Option<i64>,
    /// Most timeline events kept per incident (default 500).
    pub max_timeline_events: Option<i64>,
    /// Requests in the model window before rates count (default 20).
    pub min_requests: Option<i64>,
    /// Error rate that opens a sev3 incident (default 0.05).
    pub error_rate: Option<f64>,
    /// Error rate that makes it sev2 (default 0.25).
    pub sev2_error_rate: Option<f64>,
    /// Error rate that makes it sev1 (default 0.9).
    pub sev1_error_rate: Option<f64>,
    /// p95 latency objective of served requests (default: none, no
    /// latency symptom).
    pub latency_p95: Option<String>,
    /// Share of targets that must have a closed breaker, 0 to 1 (default
    /// 0.5).
    pub min_target_availability: Option<f64>,
    /// `[incidents.models.NAME]`: per-model overrides of the thresholds.
    #[serde(default)]
    pub models: BTreeMap<String, RawThresholds>,
    /// `[[incidents.webhooks]]`.
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
}

/// `[incidents.models.NAME]`: unset fields inherit from `[incidents]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    /// See [`RawIncidents::min_requests`].
    pub min_requests: Option<i64>,
    /// See [`RawIncidents::error_rate`].
    pub error_rate: Option<f64>,
    /// See [`RawIncidents::sev2_error_rate`].
    pub sev2_error_rate: Option<f64>,
    /// See [`RawIncidents::sev1_error_rate`].
    pub sev1_error_rate: Option<f64>,
    /// See [`RawIncidents::latency_p95`]; `"off"` disables it for the model.
    pub latency_p95: Option<String>,
    /// See [`RawIncidents::min_target_availability`].
    pub min_target_availability: Option<f64>,
}

/// `[[incidents.webhooks]]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Name for logs and metrics: letters, digits, `-`, `_`, `.` (required).
    pub name: Option<String>,
    /// `generic` or `slack` (default `generic`).
    pub format: Option<String>,
    /// The URL, when it is not a secret (not allowed for `slack`).
    pub url: Option<String>,
    /// Environment variable holding the URL.
    pub url_env: Option<String>,
    /// File holding the URL.
    pub url_file: Option<String>,
    /// Present only to give a precise error: secrets never live in the file.
    pub secret: Option<ignored::Ignored>,
    /// Environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// File holding the HMAC secret.
    pub secret_file: Option<String>,
    /// Events to send (default `["incident.opened", "incident.updated",
    /// "incident.resolved"]`; `"breaker.changed"` may be added).
    pub events: Option<Vec<String>>,
    /// Least severe incident sent (default `"sev4"`, everything).
    pub min_severity: Option<String>,
    /// Timeout per attempt (default `"5s"`).
    pub timeout: Option<String>,
    /// Attempts per delivery, 1 to 20 (default 6).
    pub max_attempts: Option<i64>,
    /// Backoff before the second attempt (default `"1s"`).
    pub initial_backoff: Option<String>,
    /// Longest backoff (default `"60s"`).
    pub max_backoff: Option<String>,
    /// Deliveries queued at most (default 1000).
    pub queue_size: Option<i64>,
    /// Base of incident links, such as
    /// `"https://custos.example/admin/incidents/"` (default none).
    pub link_base: Option<String>,
}

/// A value of any type that is accepted only to be reported as an error.
pub mod ignored {
    use serde::Deserialize;

    /// Any value; its content is discarded unread.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Ignored;

    impl<'de> Deserialize<'de> for Ignored {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde::de::IgnoredAny::deserialize(d).map(|_| Ignored)
        }
    }
}

struct Ctx {
    errors: Vec<FieldError>,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Ctx {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        path: &str,
        v: Option<&str>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some(text) = v else { return default };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d < min => {
                self.err(
                    path,
                    format!(
                        "`{text}` is too short, must be at least {}",
                        humantime::format_duration(min)
                    ),
                );
                default
            }
            Ok(d) if d > DAY => {
                self.err(path, format!("`{text}` is longer than 24h"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    path,
                    format!("`{text}` is not a duration ({e}); write it like \"250ms\", \"30s\" or \"5m\""),
                );
                default
            }
        }
    }

    fn int(&mut self, path: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> i64 {
        let v = v.unwrap_or(default);
        if (lo..=hi).contains(&v) {
            v
        } else {
            self.err(
                path,
                format!("{v} is out of range, must be between {lo} and {hi}"),
            );
            default
        }
    }

    fn count<T: TryFrom<i64> + Copy>(
        &mut self,
        path: &str,
        v: Option<i64>,
        default: T,
        lo: i64,
        hi: i64,
    ) -> T
    where
        i64: From<T>,
    {
        let v = self.int(path, v, i64::from(default), lo, hi);
        T::try_from(v).unwrap_or(default)
    }

    fn fraction(&mut self, path: &str, v: Option<f64>, default: f64, zero_ok: bool) -> f64 {
        let Some(v) = v else { return default };
        let ok = v.is_finite() && v <= 1.0 && (v > 0.0 || (zero_ok && v == 0.0));
        if ok {
            v
        } else {
            let range = if zero_ok {
                "0 and 1"
            } else {
                "0 (exclusive) and 1"
            };
            self.err(
                path,
                format!("{v} is out of range, must be between {range}"),
            );
            default
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

fn window(
    ctx: &mut Ctx,
    path: &str,
    span: Option<&str>,
    default: Duration,
    buckets: usize,
) -> WindowSpec {
    let span = ctx.duration(path, span, default, Duration::from_secs(1));
    let n = u32::try_from(buckets).unwrap_or(1).max(1);
    WindowSpec {
        bucket: span / n,
        buckets,
    }
}

impl RawHealth {
    /// Validates `[health]`; `path` is its name in the file (`"health"`).
    pub fn validate(&self, path: &str) -> Result<HealthSettings, Vec<FieldError>> {
        let mut ctx = Ctx { errors: Vec::new() };
        let d = HealthSettings::default();
        let p = |f: &str| format!("{path}.{f}");
        let buckets: usize = ctx.count(&p("buckets"), self.buckets, 10u32, 1, 120) as usize;
        let target_window = window(
            &mut ctx,
            &p("target_window"),
            self.target_window.as_deref(),
            d.target_window.span(),
            buckets,
        );
        let model_window = window(
            &mut ctx,
            &p("model_window"),
            self.model_window.as_deref(),
            d.model_window.span(),
            buckets,
        );
        let settings = HealthSettings {
            target_window,
            model_window,
            max_targets: ctx.count(&p("max_targets"), self.max_targets, 1024u32, 1, 1_000_000)
                as usize,
            max_models: ctx.count(&p("max_models"), self.max_models, 1024u32, 1, 1_000_000)
                as usize,
            max_failing_keys: ctx.count(
                &p("max_failing_keys"),
                self.max_failing_keys,
                1000u32,
                1,
                1_000_000,
            ) as usize,
            max_aggregate_minutes: ctx.count(
                &p("max_aggregate_minutes"),
                self.max_aggregate_minutes,
                60u32,
                2,
                10_080,
            ) as usize,
            breaker: self.breaker.validate_into(&mut ctx, &p("breaker")),
            probes: self.probes.validate_into(&mut ctx, &p("probes")),
        };
        ctx.finish(settings)
    }
}

impl RawBreaker {
    fn validate_into(&self, ctx: &mut Ctx, path: &str) -> BreakerSettings {
        let d = BreakerSettings::default();
        let p = |f: &str| format!("{path}.{f}");
        let cool_down = ctx.duration(
            &p("cool_down"),
            self.cool_down.as_deref(),
            d.cool_down,
            Duration::from_secs(1),
        );
        let max_cool_down = ctx.duration(
            &p("max_cool_down"),
            self.max_cool_down.as_deref(),
            d.max_cool_down.max(cool_down),
            Duration::from_secs(1),
        );
        if max_cool_down < cool_down {
            ctx.err(&p("max_cool_down"), "must be at least cool_down");
        }
        let backoff_multiplier = match self.backoff_multiplier {
            None => d.backoff_multiplier,
            Some(m) if m.is_finite() && (1.0..=10.0).contains(&m) => m,
            Some(m) => {
                ctx.err(
                    &p("backoff_multiplier"),
                    format!("{m} is out of range, must be between 1 and 10"),
                );
                d.backoff_multiplier
            }
        };
        BreakerSettings {
            enabled: self.enabled.unwrap_or(d.enabled),
            failure_rate: ctx.fraction(
                &p("failure_rate"),
                self.failure_rate,
                d.failure_rate,
                false,
            ),
            min_requests: ctx
                .count(&p("min_requests"), self.min_requests, 20u32, 1, 1_000_000)
                .into(),
            consecutive_failures: ctx.count(
                &p("consecutive_failures"),
                self.consecutive_failures,
                5u32,
                0,
                1000,
            ),
            cool_down,
            max_cool_down,
            backoff_multiplier,
            half_open_trials: ctx.count(
                &p("half_open_trials"),
                self.half_open_trials,
                1u32,
                1,
                100,
            ),
            half_open_successes: ctx.count(
                &p("half_open_successes"),
                self.half_open_successes,
                1u32,
                1,
                100,
            ),
            rate_limited_is_failure: self
                .rate_limited_is_failure
                .unwrap_or(d.rate_limited_is_failure),
        }
    }
}

impl RawProbes {
    fn validate_into(&self, ctx: &mut Ctx, path: &str) -> ProbeSettings {
        let d = ProbeSettings::default();
        let p = |f: &str| format!("{path}.{f}");
        let mut targets = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            match t.split_once('/') {
                Some((provider, model)) if !provider.is_empty() && !model.is_empty() => {
                    targets.push(TargetId::new(provider, model));
                }
                _ => ctx.err(
                    &format!("{path}.targets[{i}]"),
                    format!("`{t}` is not `provider/upstream-model`"),
                ),
            }
        }
        ProbeSettings {
            enabled: self.enabled.unwrap_or(d.enabled),
            interval: ctx.duration(
                &p("interval"),
                self.interval.as_deref(),
                d.interval,
                Duration::from_secs(1),
            ),
            timeout: ctx.duration(
                &p("timeout"),
                self.timeout.as_deref(),
                d.timeout,
                Duration::from_millis(100),
            ),
            targets,
        }
    }
}

impl RawLimits {
    /// Validates `[limits]`; `path` is its name in the file (`"limits"`).
    pub fn validate(&self, path: &str) -> Result<CapacitySettings, Vec<FieldError>> {
        let mut ctx = Ctx { errors: Vec::new() };
        let d = CapacitySettings::default();
        let p = |f: &str| format!("{path}.{f}");
        const MAX: i64 = 1_000_000;
        let global = LimitSpec {
            max_concurrent: ctx.count(
                &p("max_concurrent"),
                self.max_concurrent,
                d.global.max_concurrent,
                1,
                MAX,
            ),
            queue_size: ctx.count(
                &p("queue_size"),
                self.queue_size,
                d.global.queue_size,
                0,
                MAX,
            ),
        };
        let model_queue: u32 = ctx.count(
            &p("per_model_queue_size"),
            self.per_model_queue_size,
            128u32,
            0,
            MAX,
        );
        let key_queue: u32 = ctx.count(
            &p("per_key_queue_size"),
            self.per_key_queue_size,
            16u32,
            0,
            MAX,
        );
        let limit =
            |ctx: &mut Ctx, field: &str, v: &Option<RawLimit>, default: Option<u32>, queue: u32| {
                let max = match v {
                    None => default,
                    Some(RawLimit::Count(n)) => Some(ctx.count(&p(field), Some(*n), 1u32, 1, MAX)),
                    Some(RawLimit::Text(t)) if t == "unlimited" => None,
                    Some(RawLimit::Text(t)) => {
                        ctx.err(
                            &p(field),
                            format!("`{t}` is neither a number nor \"unlimited\""),
                        );
                        None
                    }
                };
                max.map(|max_concurrent| LimitSpec {
                    max_concurrent,
                    queue_size: queue,
                })
            };
        let per_model = limit(
            &mut ctx,
            "per_model_max_concurrent",
            &self.per_model_max_concurrent,
            None,
            model_queue,
        );
        let per_key = limit(
            &mut ctx,
            "per_key_max_concurrent",
            &self.per_key_max_concurrent,
            Some(64),
            key_queue,
        );
        let specs =
            |ctx: &mut Ctx, table: &str, raw: &BTreeMap<String, RawLimitSpec>, queue: u32| {
                let mut out = BTreeMap::new();
                for (name, spec) in raw {
                    let sp = format!("{path}.{table}.{name}");
                    let Some(max) = spec.max_concurrent else {
                        ctx.err(&format!("{sp}.max_concurrent"), "is required");
                        continue;
                    };
                    out.insert(
                        name.clone(),
                        LimitSpec {
                            max_concurrent: ctx.count(
                                &format!("{sp}.max_concurrent"),
                                Some(max),
                                1u32,
                                1,
                                MAX,
                            ),
                            queue_size: ctx.count(
                                &format!("{sp}.queue_size"),
                                spec.queue_size,
                                queue,
                                0,
                                MAX,
                            ),
                        },
                    );
                }
                out
            };
        let models = specs(&mut ctx, "models", &self.models, model_queue);
        let keys = specs(&mut ctx, "keys", &self.keys, key_queue);
        let settings = CapacitySettings {
            global,
            per_model,
            models,
            per_key,
            keys,
            queue_timeout: ctx.duration(
                &p("queue_timeout"),
                self.queue_timeout.as_deref(),
                d.queue_timeout,
                Duration::ZERO,
            ),
            retry_after: ctx.duration(
                &p("retry_after"),
                self.retry_after.as_deref(),
                d.retry_after,
                Duration::from_secs(1),
            ),
            max_tracked_keys: ctx.count(
                &p("max_tracked_keys"),
                self.max_tracked_keys,
                65_536u32,
                1,
                10_000_000,
            ) as usize,
            max_tracked_models: ctx.count(
                &p("max_tracked_models"),
                self.max_tracked_models,
                1024u32,
                1,
                1_000_000,
            ) as usize,
        };
        ctx.finish(settings)
    }
}

fn latency(
    ctx: &mut Ctx,
    path: &str,
    v: Option<&str>,
    inherited: Option<Duration>,
) -> Option<Duration> {
    match v {
        None => inherited,
        Some("off") => None,
        Some(text) => Some(ctx.duration(
            path,
            Some(text),
            Duration::from_secs(1),
            Duration::from_millis(1),
        )),
    }
}

fn thresholds(ctx: &mut Ctx, path: &str, raw: &RawThresholds, base: &Thresholds) -> Thresholds {
    let p = |f: &str| format!("{path}.{f}");
    let th = Thresholds {
        min_requests: ctx
            .count(
                &p("min_requests"),
                raw.min_requests,
                u32::try_from(base.min_requests).unwrap_or(20),
                1,
                1_000_000,
            )
            .into(),
        error_rate: ctx.fraction(&p("error_rate"), raw.error_rate, base.error_rate, false),
        sev2_error_rate: ctx.fraction(
            &p("sev2_error_rate"),
            raw.sev2_error_rate,
            base.sev2_error_rate,
            false,
        ),
        sev1_error_rate: ctx.fraction(
            &p("sev1_error_rate"),
            raw.sev1_error_rate,
            base.sev1_error_rate,
            false,
        ),
        latency_p95: latency(
            ctx,
            &p("latency_p95"),
            raw.latency_p95.as_deref(),
            base.latency_p95,
        ),
        min_target_availability: ctx.fraction(
            &p("min_target_availability"),
            raw.min_target_availability,
            base.min_target_availability,
            true,
        ),
    };
    if !(th.error_rate <= th.sev2_error_rate && th.sev2_error_rate <= th.sev1_error_rate) {
        ctx.err(
            path,
            "error rates must satisfy error_rate ≤ sev2_error_rate ≤ sev1_error_rate",
        );
    }
    th
}

impl RawIncidents {
    /// Validates `[incidents]`; `path` is its name in the file
    /// (`"incidents"`).
    pub fn validate(&self, path: &str) -> Result<IncidentSettings, Vec<FieldError>> {
        let mut ctx = Ctx { errors: Vec::new() };
        let d = IncidentSettings::default();
        let p = |f: &str| format!("{path}.{f}");
        let own = RawThresholds {
            min_requests: self.min_requests,
            error_rate: self.error_rate,
            sev2_error_rate: self.sev2_error_rate,
            sev1_error_rate: self.sev1_error_rate,
            latency_p95: self.latency_p95.clone(),
            min_target_availability: self.min_target_availability,
        };
        let base = thresholds(&mut ctx, path, &own, &d.thresholds);
        let models = self
            .models
            .iter()
            .map(|(name, raw)| {
                let th = thresholds(&mut ctx, &format!("{path}.models.{name}"), raw, &base);
                (name.clone(), th)
            })
            .collect();
        let mut names = BTreeSet::new();
        let webhooks = self
            .webhooks
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                w.validate_into(&mut ctx, &format!("{path}.webhooks[{i}]"), &mut names)
            })
            .collect();
        let settings = IncidentSettings {
            enabled: self.enabled.unwrap_or(d.enabled),
            evaluation_interval: ctx.duration(
                &p("evaluation_interval"),
                self.evaluation_interval.as_deref(),
                d.evaluation_interval,
                Duration::from_secs(1),
            ),
            thresholds: base,
            models,
            recovery_period: ctx.duration(
                &p("recovery_period"),
                self.recovery_period.as_deref(),
                d.recovery_period,
                Duration::ZERO,
            ),
            max_affected_keys: ctx.count(
                &p("max_affected_keys"),
                self.max_affected_keys,
                10_000u32,
                1,
                1_000_000,
            ) as usize,
            max_timeline_events: ctx.count(
                &p("max_timeline_events"),
                self.max_timeline_events,
                500u32,
                10,
                100_000,
            ) as usize,
            webhooks,
        };
        ctx.finish(settings)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl RawWebhook {
    fn validate_into(
        &self,
        ctx: &mut Ctx,
        path: &str,
        names: &mut BTreeSet<String>,
    ) -> Option<WebhookSettings> {
        let p = |f: &str| format!("{path}.{f}");
        let errors_before = ctx.errors.len();
        let name = match self.name.as_deref() {
            None => {
                ctx.err(&p("name"), "is required");
                String::new()
            }
            Some(n) if !valid_name(n) => {
                ctx.err(
                    &p("name"),
                    format!("`{n}` must be 1 to 64 letters, digits, `-`, `_` or `.`"),
                );
                String::new()
            }
            Some(n) if !names.insert(n.to_owned()) => {
                ctx.err(&p("name"), format!("`{n}` is used by another webhook"));
                String::new()
            }
            Some(n) => n.to_owned(),
        };
        let format = match self.format.as_deref() {
            None | Some("generic") => WebhookFormat::Generic,
            Some("slack") => WebhookFormat::Slack,
            Some(other) => {
                ctx.err(
                    &p("format"),
                    format!("`{other}` is not a format; expected generic or slack"),
                );
                WebhookFormat::Generic
            }
        };
        let url = match (&self.url, &self.url_env, &self.url_file) {
            (Some(_), None, None) if format == WebhookFormat::Slack => {
                ctx.err(
                    &p("url"),
                    "a slack webhook url is a credential; give it with url_env or url_file",
                );
                None
            }
            (Some(u), None, None) => {
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    ctx.err(&p("url"), "must start with https:// or http://");
                }
                Some(ValueSource::Inline(u.clone()))
            }
            (None, Some(var), None) if !var.is_empty() => Some(ValueSource::Env(var.clone())),
            (None, None, Some(file)) if !file.is_empty() => {
                Some(ValueSource::File(PathBuf::from(file)))
            }
            (None, None, None) => {
                ctx.err(path, "one of url, url_env or url_file is required");
                None
            }
            _ => {
                ctx.err(path, "give exactly one non-empty url, url_env or url_file");
                None
            }
        };
        if self.secret.is_some() {
            ctx.err(
                &p("secret"),
                "secrets are not allowed in the file; use secret_env or secret_file",
            );
        }
        let secret = match (&self.secret_env, &self.secret_file) {
            (None, None) => None,
            (Some(var), None) if !var.is_empty() => Some(ValueSource::Env(var.clone())),
            (None, Some(file)) if !file.is_empty() => Some(ValueSource::File(PathBuf::from(file))),
            _ => {
                ctx.err(path, "give at most one non-empty secret_env or secret_file");
                None
            }
        };
        let defaults =
            WebhookSettings::new(name.clone(), format, ValueSource::Inline(String::new()));
        let events = match &self.events {
            None => defaults.events.clone(),
            Some(list) => {
                let mut set = BTreeSet::new();
                for (i, e) in list.iter().enumerate() {
                    match WebhookEvent::ALL.into_iter().find(|k| k.as_str() == e) {
                        Some(k) => {
                            set.insert(k);
                        }
                        None => ctx.err(
                            &format!("{path}.events[{i}]"),
                            format!("`{e}` is not an event; expected incident.opened, incident.updated, incident.resolved or breaker.changed"),
                        ),
                    }
                }
                if list.is_empty() {
                    ctx.err(&p("events"), "must not be empty");
                }
                set
            }
        };
        let min_severity = match self.min_severity.as_deref() {
            None => defaults.min_severity,
            Some(s) => s.parse::<Severity>().unwrap_or_else(|e| {
                ctx.err(&p("min_severity"), e.to_string());
                defaults.min_severity
            }),
        };
        let timeout = ctx.duration(
            &p("timeout"),
            self.timeout.as_deref(),
            defaults.timeout,
            Duration::from_millis(100),
        );
        let initial_backoff = ctx.duration(
            &p("initial_backoff"),
            self.initial_backoff.as_deref(),
            defaults.initial_backoff,
            Duration::from_millis(1),
        );
        let max_backoff = ctx.duration(
            &p("max_backoff"),
            self.max_backoff.as_deref(),
            defaults.max_backoff.max(initial_backoff),
            Duration::from_millis(1),
        );
        if max_backoff < initial_backoff {
            ctx.err(&p("max_backoff"), "must be at least initial_backoff");
        }
        if let Some(base) = &self.link_base
            && !(base.starts_with("https://") || base.starts_with("http://"))
        {
            ctx.err(&p("link_base"), "must start with https:// or http://");
        }
        let settings = WebhookSettings {
            name,
            format,
            url: url.unwrap_or(ValueSource::Inline(String::new())),
            secret,
            events,
            min_severity,
            timeout,
            max_attempts: ctx.count(
                &p("max_attempts"),
                self.max_attempts,
                defaults.max_attempts,
                1,
                20,
            ),
            initial_backoff,
            max_backoff,
            queue_size: ctx.count(&p("queue_size"), self.queue_size, 1000u32, 1, 100_000) as usize,
            link_base: self.link_base.clone(),
        };
        (ctx.errors.len() == errors_before).then_some(settings)
    }
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // An inline value is never printed: it may be a URL with a token.
            ValueSource::Inline(_) => f.write_str("inline value"),
            ValueSource::Env(var) => write!(f, "environment variable {var}"),
            ValueSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sections_give_the_defaults() {
        assert_eq!(
            RawHealth::default().validate("health").unwrap(),
            HealthSettings::default()
        );
        assert_eq!(
            RawLimits::default().validate("limits").unwrap(),
            CapacitySettings::default()
        );
        assert_eq!(
            RawIncidents::default().validate("incidents").unwrap(),
            IncidentSettings::default()
        );
    }

    #[test]
    fn all_errors_are_collected_with_paths() {
        let raw: RawHealth = toml::from_str(
            r#"
buckets = 0
target_window = "soon"
[breaker]
failure_rate = 1.5
cool_down = "1m"
max_cool_down = "10s"
[probes]
targets = ["nomodel"]
"#,
        )
        .unwrap();
        let errors = raw.validate("health").unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "health.buckets",
                "health.target_window",
                "health.breaker.max_cool_down",
                "health.breaker.failure_rate",
                "health.probes.targets[0]",
            ]
        );
        assert_eq!(
            errors[0].to_string(),
            "health.buckets: 0 is out of range, must be between 1 and 120"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<RawLimits>("max_concurent = 3").is_err());
        assert!(toml::from_str::<RawIncidents>("[[webhooks]]\nurl_envv = \"X\"").is_err());
    }

    #[test]
    fn the_module_example_validates() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            health: RawHealth,
            limits: RawLimits,
            incidents: RawIncidents,
        }
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").unwrap_or("").to_owned() + "\n")
            .collect();
        let file: File = toml::from_str(&doc).unwrap();
        let health = file.health.validate("health").unwrap();
        assert!(health.probes.enabled);
        assert_eq!(
            health.probes.targets,
            [TargetId::new("openai", "gpt-4o-mini")]
        );
        assert_eq!(health.model_window.bucket, Duration::from_secs(30));
        let limits = file.limits.validate("limits").unwrap();
        assert_eq!(limits.models["gpt-4o"].max_concurrent, 200);
        assert_eq!(limits.models["gpt-4o"].queue_size, 128);
        assert_eq!(limits.keys["key_01HZX"].queue_size, 16);
        assert_eq!(limits.per_model, None);
        let incidents = file.incidents.validate("incidents").unwrap();
        assert_eq!(
            incidents.thresholds.latency_p95,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            incidents.thresholds_for("gpt-4o").latency_p95,
            Some(Duration::from_secs(20))
        );
        assert_eq!(incidents.thresholds_for("gpt-4o").error_rate, 0.05);
        let hook = &incidents.webhooks[0];
        assert_eq!(hook.format, WebhookFormat::Slack);
        assert_eq!(
            hook.url,
            ValueSource::Env("CUSTOS_SLACK_WEBHOOK_URL".into())
        );
        assert_eq!(hook.min_severity, Severity::Sev2);
    }

    #[test]
    fn webhook_secrets_and_slack_urls_stay_out_of_the_file() {
        let raw: RawIncidents = toml::from_str(
            r#"
[[webhooks]]
name = "a"
format = "slack"
url = "https://hooks.slack.com/services/T/B/secret"
secret = "hunter2"
[[webhooks]]
name = "a"
url_env = "X"
url_file = "/f"
events = ["incident.exploded"]
min_severity = "sev9"
"#,
        )
        .unwrap();
        let errors = raw.validate("incidents").unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "incidents.webhooks[0].url: a slack webhook url is a credential; give it with url_env or url_file",
                "incidents.webhooks[0].secret: secrets are not allowed in the file; use secret_env or secret_file",
                "incidents.webhooks[1].name: `a` is used by another webhook",
                "incidents.webhooks[1]: give exactly one non-empty url, url_env or url_file",
                "incidents.webhooks[1].events[0]: `incident.exploded` is not an event; expected incident.opened, incident.updated, incident.resolved or breaker.changed",
                "incidents.webhooks[1].min_severity: unknown severity `sev9`, expected sev1, sev2, sev3 or sev4",
            ]
        );
        assert!(
            text.iter()
                .all(|t| !t.contains("hunter2") && !t.contains("/B/secret"))
        );
    }

    #[test]
    fn thresholds_must_be_ordered() {
        let raw: RawIncidents = toml::from_str("error_rate = 0.5\nsev2_error_rate = 0.3").unwrap();
        let errors = raw.validate("incidents").unwrap_err();
        assert_eq!(errors[0].path, "incidents");
    }
}
