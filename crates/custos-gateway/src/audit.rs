//! The audit hook: every finished request is handed to an [`AuditSink`]
//! (the ledger, in production) as an inference record.
//!
//! The sink is consulted twice. Before any work, [`AuditSink::ready`] lets
//! the gateway refuse traffic it could not record (fail closed, 503). When
//! the request ends, [`AuditSink::submit`] enqueues the record at once and
//! returns a future that resolves when the record is durable; the gateway
//! awaits it before the response (or the last stream event) goes out.

use std::time::Duration;

use custos_record::{Attempt, Client, Inference, KeyActor, truncate_text};

use crate::auth::BoxFuture;
use crate::outcome::RequestOutcome;

/// The sink could not take or persist a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit ledger cannot record requests: {0}")]
pub struct AuditUnavailable(pub String);

/// Where inference records go.
pub trait AuditSink: Send + Sync + 'static {
    /// Whether records can be accepted now. Must be cheap: it runs before
    /// every request.
    fn ready(&self) -> Result<(), AuditUnavailable>;

    /// Enqueues the record for `outcome` immediately (before returning) and
    /// returns a future resolving once it is durable. Dropping the future
    /// does not withdraw the record.
    fn submit(&self, outcome: &RequestOutcome) -> BoxFuture<'static, Result<(), AuditUnavailable>>;
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The inference record for a finished request. Never carries prompt or
/// response content, headers or key material: only identifiers and figures.
pub fn to_record(o: &RequestOutcome) -> Inference {
    Inference {
        event: "request".to_owned(),
        request_id: o.request_id.as_str().to_owned(),
        actor: o.actor.as_ref().map(|a| KeyActor {
            key_id: Some(a.key_id.as_str().to_owned()),
            key_name: Some(truncate_text(&a.key_name)),
            owner: a.owner.as_deref().map(truncate_text),
            team: a.team.as_deref().map(truncate_text),
        }),
        client: Some(Client {
            ip: o.client_ip,
            user_agent: o.user_agent.as_deref().map(truncate_text),
        }),
        endpoint: o.endpoint.to_owned(),
        method: o.method.clone(),
        path: truncate_text(&o.path),
        model_requested: o.model_requested.as_deref().map(truncate_text),
        model_served: o.model_served.as_deref().map(truncate_text),
        provider: o.provider.clone(),
        attempts: o
            .attempts
            .iter()
            .take(custos_record::MAX_ATTEMPTS)
            .map(|a| Attempt {
                duration_us: micros(a.duration),
                error: a.error.map(str::to_owned),
                model: truncate_text(&a.model),
                provider: a.provider.clone(),
                status: a.status,
            })
            .collect(),
        upstream_request_id: o.upstream_request_id.as_deref().map(truncate_text),
        status: o.status,
        error_code: o.error_code.clone(),
        usage: o.usage.map(Into::into),
        stream: o.stream,
        latency_us: micros(o.latency),
        ttfb_us: o.ttfb.map(micros),
    }
}
