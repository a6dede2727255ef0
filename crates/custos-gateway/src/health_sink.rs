//! Feeds finished requests into the health engine's per-model windows,
//! which the incident engine reads.

use custos_health::{HealthEngine, RequestSample, RequestStatus};
use tokio::time::Instant;

use crate::outcome::{OutcomeSink, RequestOutcome};

/// An [`OutcomeSink`] over a [`HealthEngine`].
pub struct HealthSink(pub HealthEngine);

/// How a request counts for its model's availability.
fn classify(o: &RequestOutcome) -> RequestStatus {
    let code = o.error_code.as_deref().unwrap_or("");
    match o.status {
        200..=299 => RequestStatus::Success,
        _ if matches!(
            code,
            "rate_limit_exceeded"
                | "budget_exceeded"
                | "capacity_exceeded"
                | "key_capacity_exceeded"
        ) =>
        {
            RequestStatus::Shed
        }
        499 => RequestStatus::ClientError,
        // An upstream 429 or 5xx passed through, or every target failed.
        _ if code == "upstream_error"
            || code == "upstream_timeout"
            || code == "no_healthy_target" =>
        {
            RequestStatus::Failure
        }
        500..=599 => RequestStatus::Failure,
        _ => RequestStatus::ClientError,
    }
}

impl OutcomeSink for HealthSink {
    fn record(&self, o: &RequestOutcome) {
        let Some(model) = o.model_requested.as_deref() else {
            return;
        };
        let usage = o.usage;
        let key = o.actor.as_ref().map(|a| a.key_id);
        self.0.record_request(
            &RequestSample {
                model,
                status: classify(o),
                latency: o.latency,
                prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
                completion_tokens: usage.map_or(0, |u| u.completion_tokens),
                key_id: key.as_ref().map(|k| k.as_str()),
            },
            Instant::now(),
        );
    }
}
