//! Gateway metrics, fed from [`RequestOutcome`]s. Every label comes from a
//! bounded set: configured model and provider names, endpoint names, status
//! classes and error kinds. Request IDs and key IDs never become labels.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::outcome::{OutcomeSink, RequestOutcome};

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Endpoint name.
    pub endpoint: &'static str,
    /// Configured model the client asked for, or `unknown`.
    pub model_requested: &'static str,
    /// Upstream model that answered, or `none`.
    pub model_served: &'static str,
    /// Provider that answered, or `none`.
    pub provider: &'static str,
    /// `2xx`, `4xx`, `5xx` or `disconnect`.
    pub status_class: &'static str,
}

/// Labels keyed by endpoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Endpoint name.
    pub endpoint: &'static str,
}

/// Labels keyed by provider.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider name.
    pub provider: &'static str,
}

/// Labels of upstream errors.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Provider name.
    pub provider: &'static str,
    /// `connect`, `timeout`, `transport`, `status`, `too_large`.
    pub kind: &'static str,
}

/// Labels of requests refused by authentication, authorisation, rate
/// limits, budgets or capacity limits.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    /// The HTTP status: `401`, `403`, `429` or `503`.
    pub status: u16,
    /// The error code, such as `invalid_api_key` or `rate_limit_exceeded`.
    pub code: String,
}

/// Labels of token counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Configured model.
    pub model: &'static str,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

/// Labels of the opt-in per-key series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// The key ID (never the secret).
    pub key_id: String,
    /// `2xx`, `4xx`, `5xx`, `disconnect`, or for tokens `prompt` /
    /// `completion`.
    pub kind: &'static str,
}

struct PerKey {
    requests: Family<KeyLabels, Counter>,
    tokens: Family<KeyLabels, Counter>,
}

/// The gateway's metric families.
pub struct Metrics {
    known_models: Names,
    known_served: Names,
    known_providers: Names,
    requests: Family<RequestLabels, Counter>,
    duration: Family<EndpointLabels, Histogram>,
    upstream_ttfb: Family<ProviderLabels, Histogram>,
    overhead: Family<EndpointLabels, Histogram>,
    tokens: Family<TokenLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    rejections: Family<RejectionLabels, Counter>,
    /// Per-key series, only when the operator opts in.
    per_key: Option<PerKey>,
    in_flight: Gauge<i64, AtomicI64>,
}

/// A fixed set of configured names, as `&'static str` so that label sets
/// are built without allocating on every request. The names are leaked
/// once per gateway: they come from the configuration, which is loaded
/// once per process, so the set is bounded.
struct Names(HashSet<&'static str>);

impl Names {
    fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Names(
            names
                .into_iter()
                .map(|n| &*Box::leak(n.to_owned().into_boxed_str()))
                .collect(),
        )
    }

    /// The interned name, if it is one of the set.
    fn get(&self, name: &str) -> Option<&'static str> {
        self.0.get(name).copied()
    }
}

fn latency_histogram() -> Histogram {
    // 100µs to ~26s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Metrics {
    /// Registers the families in `registry`. `models` are the configured
    /// model names, `served` the upstream model names of their targets and
    /// `providers` the provider names: the only values these labels take.
    pub fn new<'a>(
        registry: &mut Registry,
        models: impl IntoIterator<Item = &'a str>,
        served: impl IntoIterator<Item = &'a str>,
        providers: impl IntoIterator<Item = &'a str>,
        per_key: bool,
    ) -> Arc<Self> {
        let m = Metrics {
            known_models: Names::new(models),
            known_served: Names::new(served),
            known_providers: Names::new(providers),
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            upstream_ttfb: Family::new_with_constructor(latency_histogram),
            overhead: Family::new_with_constructor(latency_histogram),
            tokens: Family::default(),
            upstream_errors: Family::default(),
            rejections: Family::default(),
            per_key: per_key.then(|| PerKey {
                requests: Family::default(),
                tokens: Family::default(),
            }),
            in_flight: Gauge::default(),
        };
        if let Some(k) = &m.per_key {
            registry.register(
                "custos_key_requests",
                "Requests per API key and status class (metrics.per_key = true)",
                k.requests.clone(),
            );
            registry.register(
                "custos_key_tokens",
                "Tokens per API key and kind (metrics.per_key = true)",
                k.tokens.clone(),
            );
        }
        registry.register(
            "custos_requests",
            "Requests by endpoint, model requested, model served, provider and status class",
            m.requests.clone(),
        );
        registry.register(
            "custos_request_duration_seconds",
            "Whole-request latency as seen by the gateway",
            m.duration.clone(),
        );
        registry.register(
            "custos_upstream_ttfb_seconds",
            "Upstream time to first byte of the attempt that answered",
            m.upstream_ttfb.clone(),
        );
        registry.register(
            "custos_gateway_overhead_seconds",
            "Gateway's own time: total latency minus time waiting on upstreams",
            m.overhead.clone(),
        );
        registry.register(
            "custos_tokens",
            "Tokens by model and kind",
            m.tokens.clone(),
        );
        registry.register(
            "custos_upstream_errors",
            "Failed upstream attempts by provider and kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "custos_rejections",
            "Requests refused by authentication (401), authorisation (403), rate limits and budgets (429) or capacity (503 capacity_exceeded), by code",
            m.rejections.clone(),
        );
        registry.register(
            "custos_in_flight_requests",
            "Requests currently being served",
            m.in_flight.clone(),
        );
        Arc::new(m)
    }

    /// A request started.
    pub fn start(&self) {
        self.in_flight.inc();
    }

    fn bounded_model(&self, model: Option<&str>) -> &'static str {
        match model {
            Some(m) => self.known_models.get(m).unwrap_or("unknown"),
            None => "none",
        }
    }

    fn bounded_provider(&self, provider: &str) -> &'static str {
        self.known_providers.get(provider).unwrap_or("unknown")
    }
}

/// The code of a refusal worth counting, bounded to the gateway's own code
/// names (they come from `GatewayError::code`, never from a client).
fn rejection_code(status: u16, code: Option<&str>) -> Option<&str> {
    let code = code?;
    let ours = !code.is_empty()
        && code.len() <= 48
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        // An upstream's own 429 passed through is not our refusal.
        && !code.starts_with("upstream");
    let refusal =
        matches!(status, 401 | 403 | 429) || (status == 503 && code.ends_with("capacity_exceeded"));
    (ours && refusal).then_some(code)
}

impl OutcomeSink for Metrics {
    fn record(&self, o: &RequestOutcome) {
        self.in_flight.dec();
        let status_class = match o.status {
            499 => "disconnect",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let provider = o
            .provider
            .as_deref()
            .map_or("none", |p| self.bounded_provider(p));
        let model_requested = self.bounded_model(o.model_requested.as_deref());
        // The served model is an upstream name from configuration, so it is
        // bounded as long as it came from a configured provider.
        let model_served = match (&o.model_served, provider) {
            (Some(m), p) if p != "none" && p != "unknown" => {
                self.known_served.get(m).unwrap_or("unknown")
            }
            _ => "none",
        };
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: o.endpoint,
                model_requested,
                model_served,
                provider,
                status_class,
            })
            .inc();
        let endpoint = EndpointLabels {
            endpoint: o.endpoint,
        };
        self.duration
            .get_or_create(&endpoint)
            .observe(o.latency.as_secs_f64());
        self.overhead
            .get_or_create(&endpoint)
            .observe(o.latency.saturating_sub(o.upstream_time).as_secs_f64());
        if let Some(last) = o.attempts.last()
            && last.error.is_none()
        {
            self.upstream_ttfb
                .get_or_create(&ProviderLabels { provider })
                .observe(last.duration.as_secs_f64());
        }
        if let (Some(k), Some(actor)) = (&self.per_key, &o.actor) {
            let key_id = actor.key_id.to_string();
            k.requests
                .get_or_create(&KeyLabels {
                    key_id: key_id.clone(),
                    kind: status_class,
                })
                .inc();
            if let Some(usage) = o.usage {
                for (kind, n) in [
                    ("prompt", usage.prompt_tokens),
                    ("completion", usage.completion_tokens),
                ] {
                    k.tokens
                        .get_or_create(&KeyLabels {
                            key_id: key_id.clone(),
                            kind,
                        })
                        .inc_by(n);
                }
            }
        }
        if let Some(code) = rejection_code(o.status, o.error_code.as_deref()) {
            self.rejections
                .get_or_create(&RejectionLabels {
                    status: o.status,
                    code: code.to_owned(),
                })
                .inc();
        }
        for attempt in &o.attempts {
            if let Some(kind) = attempt.error {
                self.upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        provider: self.bounded_provider(&attempt.provider),
                        kind,
                    })
                    .inc();
            }
        }
        if let Some(usage) = o.usage {
            for (kind, n) in [
                ("prompt", usage.prompt_tokens),
                ("completion", usage.completion_tokens),
            ] {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: model_requested,
                        kind,
                    })
                    .inc_by(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rejection_code;

    #[test]
    fn only_our_refusals_are_counted_with_bounded_codes() {
        assert_eq!(
            rejection_code(401, Some("invalid_api_key")),
            Some("invalid_api_key")
        );
        assert_eq!(
            rejection_code(429, Some("rate_limit_exceeded")),
            Some("rate_limit_exceeded")
        );
        assert_eq!(
            rejection_code(503, Some("capacity_exceeded")),
            Some("capacity_exceeded")
        );
        assert_eq!(rejection_code(503, Some("audit_unavailable")), None);
        assert_eq!(rejection_code(429, Some("upstream_error")), None);
        assert_eq!(rejection_code(400, Some("invalid_json")), None);
        assert_eq!(rejection_code(401, Some("Bad Code")), None);
        assert_eq!(rejection_code(401, None), None);
    }
}
