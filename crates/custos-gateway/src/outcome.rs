//! The record of one request, and the guard that guarantees each request
//! yields exactly one.
//!
//! [`RequestGuard`] is created before anything else happens to a request.
//! It is finished explicitly when the response (or the last stream event) is
//! produced; if it is dropped first (the client disconnected and the handler
//! or the stream body was dropped) its `Drop` emits the record as a
//! disconnect. Either way the [`OutcomeSink`] sees it once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use custos_auth::KeyId;

use crate::audit::{AuditSink, AuditUnavailable};
use crate::auth::BoxFuture;
use custos_types::{RequestId, Usage};

/// Status recorded for a client that went away before the answer was done
/// (the nginx convention).
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// One upstream attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The provider name.
    pub provider: String,
    /// The model sent upstream.
    pub model: String,
    /// The upstream status, when it answered.
    pub status: Option<u16>,
    /// The failure kind (`connect`, `timeout`, `transport`, `status`), when it failed.
    pub error: Option<&'static str>,
    /// How long the attempt took until it was decided.
    pub duration: Duration,
}

/// The key a request was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The public key ID.
    pub key_id: KeyId,
    /// The key's name.
    pub key_name: String,
    /// The owning service or person.
    pub owner: Option<String>,
    /// The owning team.
    pub team: Option<String>,
}

/// Everything Custos knows about one request once it is over. Metrics,
/// logs and the audit ledger are all fed from this one structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOutcome {
    /// The ID returned to the client in `X-Request-Id`.
    pub request_id: RequestId,
    /// When the request arrived.
    pub received_at: SystemTime,
    /// `chat.completions`, `completions`, `embeddings`, `models` or `other`.
    pub endpoint: &'static str,
    /// The HTTP method.
    pub method: String,
    /// The request path (bounded).
    pub path: String,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The client's `User-Agent` (bounded).
    pub user_agent: Option<String>,
    /// The authenticated key; `None` when the request was refused before
    /// authentication succeeded.
    pub actor: Option<Actor>,
    /// The model the client asked for.
    pub model_requested: Option<String>,
    /// The upstream model that answered.
    pub model_served: Option<String>,
    /// The provider that answered.
    pub provider: Option<String>,
    /// Every upstream attempt, in order.
    pub attempts: Vec<Attempt>,
    /// The upstream's own request ID.
    pub upstream_request_id: Option<String>,
    /// The status sent to the client (499 for a disconnect).
    pub status: u16,
    /// A stable error code when the request failed.
    pub error_code: Option<String>,
    /// Token usage.
    pub usage: Option<Usage>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Time from arrival to the end of the response.
    pub latency: Duration,
    /// Time from arrival to the first response byte.
    pub ttfb: Option<Duration>,
    /// Time spent waiting on upstreams.
    pub upstream_time: Duration,
}

/// Receives finished requests. Implementations must not block.
pub trait OutcomeSink: Send + Sync + 'static {
    /// Called exactly once per request.
    fn record(&self, outcome: &RequestOutcome);
}

/// A sink that writes one structured log line per request.
#[derive(Debug, Default)]
pub struct LogSink;

impl OutcomeSink for LogSink {
    fn record(&self, o: &RequestOutcome) {
        tracing::info!(
            target: "custos::access",
            request_id = %o.request_id,
            method = %o.method,
            path = %o.path,
            status = o.status,
            error_code = o.error_code.as_deref(),
            model_requested = o.model_requested.as_deref(),
            model_served = o.model_served.as_deref(),
            provider = o.provider.as_deref(),
            attempts = o.attempts.len(),
            stream = o.stream,
            prompt_tokens = o.usage.map(|u| u.prompt_tokens),
            completion_tokens = o.usage.map(|u| u.completion_tokens),
            latency_ms = o.latency.as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// Fans one outcome out to several sinks.
pub struct Sinks(pub Vec<Arc<dyn OutcomeSink>>);

impl OutcomeSink for Sinks {
    fn record(&self, outcome: &RequestOutcome) {
        for sink in &self.0 {
            sink.record(outcome);
        }
    }
}

/// Resolves once the request's audit record is durable; `None` when no
/// audit sink is configured.
pub type Durable = Option<BoxFuture<'static, Result<(), AuditUnavailable>>>;

/// Guarantees one outcome per request.
pub struct RequestGuard {
    outcome: Option<RequestOutcome>,
    started: Instant,
    sink: Arc<dyn OutcomeSink>,
    audit: Option<Arc<dyn AuditSink>>,
}

impl RequestGuard {
    /// Starts the record of a request.
    pub fn new(
        outcome: RequestOutcome,
        started: Instant,
        sink: Arc<dyn OutcomeSink>,
        audit: Option<Arc<dyn AuditSink>>,
    ) -> Self {
        RequestGuard {
            outcome: Some(outcome),
            started,
            sink,
            audit,
        }
    }

    /// The record so far.
    pub fn get_mut(&mut self) -> &mut RequestOutcome {
        // Only `finish` and `drop` take the outcome, and both consume or end
        // the guard, so it is always present while the guard is usable.
        self.outcome.get_or_insert_with(unreachable_outcome)
    }

    /// The record so far.
    pub fn get(&self) -> Option<&RequestOutcome> {
        self.outcome.as_ref()
    }

    /// When the request arrived (monotonic).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Notes the first byte going to the client, once.
    pub fn mark_first_byte(&mut self) {
        let elapsed = self.started.elapsed();
        let o = self.get_mut();
        if o.ttfb.is_none() {
            o.ttfb = Some(elapsed);
        }
    }

    /// Ends the request with this status and emits its record. The caller
    /// awaits the returned future before the response completes.
    #[must_use = "the response must wait until its audit record is durable"]
    pub fn finish(mut self, status: u16) -> Durable {
        self.emit(status, None)
    }

    fn emit(&mut self, status: u16, error_code: Option<&str>) -> Durable {
        let mut o = self.outcome.take()?;
        o.status = status;
        if let Some(code) = error_code {
            o.error_code = Some(code.to_owned());
        }
        o.latency = self.started.elapsed();
        let durable = self.audit.as_ref().map(|a| a.submit(&o));
        self.sink.record(&o);
        durable
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Reached only when the request ended without `finish`: the client
        // went away and its handler or stream was dropped. The record is
        // enqueued; nobody is left to wait for its durability.
        drop(self.emit(STATUS_CLIENT_CLOSED, Some("client_disconnected")));
    }
}

fn unreachable_outcome() -> RequestOutcome {
    RequestOutcome {
        request_id: RequestId::generate(),
        received_at: SystemTime::now(),
        endpoint: "other",
        method: String::new(),
        path: String::new(),
        client_ip: None,
        user_agent: None,
        actor: None,
        model_requested: None,
        model_served: None,
        provider: None,
        attempts: Vec::new(),
        upstream_request_id: None,
        status: 0,
        error_code: None,
        usage: None,
        stream: false,
        latency: Duration::ZERO,
        ttfb: None,
        upstream_time: Duration::ZERO,
    }
}

/// A fresh record for a request that just arrived.
pub fn new_outcome(
    request_id: RequestId,
    method: &str,
    path: &str,
    client_ip: Option<IpAddr>,
    user_agent: Option<&str>,
) -> RequestOutcome {
    let mut o = unreachable_outcome();
    o.request_id = request_id;
    o.method = method.chars().take(16).collect();
    o.path = path.chars().take(256).collect();
    o.client_ip = client_ip;
    o.user_agent = user_agent.map(|ua| ua.chars().take(256).collect());
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<RequestOutcome>>);
    impl OutcomeSink for Collect {
        fn record(&self, o: &RequestOutcome) {
            self.0.lock().unwrap().push(o.clone());
        }
    }

    fn guard(sink: &Arc<Collect>) -> RequestGuard {
        let o = new_outcome(RequestId::generate(), "POST", "/v1/x", None, Some("ua"));
        RequestGuard::new(o, Instant::now(), sink.clone(), None)
    }

    #[test]
    fn finish_emits_once() {
        let sink = Arc::new(Collect::default());
        assert!(guard(&sink).finish(200).is_none());
        let got = sink.0.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].status, 200);
        assert_eq!(got[0].error_code, None);
    }

    #[test]
    fn drop_emits_a_disconnect() {
        let sink = Arc::new(Collect::default());
        drop(guard(&sink));
        let got = sink.0.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].status, STATUS_CLIENT_CLOSED);
        assert_eq!(got[0].error_code.as_deref(), Some("client_disconnected"));
    }
}
