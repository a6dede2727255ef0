//! The admin listener: liveness, readiness and metrics today; the console
//! and admin API later. It is served on its own address and never shares a
//! router with the gateway.
//!
//! **Architecture invariant:** this crate does not depend on
//! `custos-gateway`; the binary wires both listeners.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use prometheus_client::registry::Registry;
use serde_json::json;

/// A boxed future, for the object-safe [`ReadyCheck`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One dependency `/readyz` checks, such as the ledger or the state store.
pub trait ReadyCheck: Send + Sync + 'static {
    /// The check's name in the `/readyz` body.
    fn name(&self) -> &'static str;
    /// `Err` with a reason when the dependency is not usable.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// Shared state of the admin listener.
pub struct AdminState {
    registry: Registry,
    ready: AtomicBool,
    data_dir: PathBuf,
    checks: Vec<Box<dyn ReadyCheck>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &self.ready)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// State serving `registry`, checking `data_dir` and `checks` for
    /// readiness.
    pub fn new(
        registry: Registry,
        data_dir: PathBuf,
        checks: Vec<Box<dyn ReadyCheck>>,
    ) -> Arc<Self> {
        Arc::new(AdminState {
            registry,
            ready: AtomicBool::new(false),
            data_dir,
            checks,
        })
    }

    /// Marks the server ready (listeners bound, state loaded) or not
    /// (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        json_response(StatusCode::OK, json!({"status": "ok"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "starting"}),
        )
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let serving = state.ready.load(Ordering::SeqCst);
    let dir = state.data_dir.clone();
    let writable = tokio::task::spawn_blocking(move || probe_writable(&dir))
        .await
        .unwrap_or_else(|_| Err("probe task failed".to_owned()));
    let mut failed = Vec::new();
    if !serving {
        failed.push("serving");
    }
    if writable.is_err() {
        failed.push("data_dir_writable");
    }
    let mut checks = serde_json::Map::new();
    checks.insert("serving".into(), json!({"ok": serving}));
    checks.insert(
        "data_dir_writable".into(),
        match &writable {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e}),
        },
    );
    for check in &state.checks {
        let result = check.check().await;
        if result.is_err() {
            failed.push(check.name());
        }
        checks.insert(
            check.name().into(),
            match result {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e}),
            },
        );
    }
    let body = json!({
        "status": if failed.is_empty() { "ready" } else { "not_ready" },
        "failed": failed,
        "checks": checks,
    });
    let status = if failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body)
}

fn probe_writable(dir: &std::path::Path) -> Result<(), String> {
    let probe = dir.join(".readyz-probe");
    std::fs::write(&probe, b"ok").map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::remove_file(&probe).map_err(|e| format!("{}: {e}", probe.display()))
}

/// `GET /metrics`: OpenMetrics 1.0 when the scraper asks for it (Prometheus
/// does), the Prometheus text format 0.0.4 otherwise.
async fn metrics(State(state): State<Arc<AdminState>>, headers: http::HeaderMap) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &state.registry).is_err() {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": "metrics encoding failed", "type": "server_error", "param": null, "code": "metrics_encoding"}}),
        );
    }
    let openmetrics = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (
            text,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            openmetrics_to_prometheus(&text),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Rewrites the OpenMetrics exposition of `prometheus-client` into the
/// Prometheus text format 0.0.4: counter families are named after their
/// `_total` samples in `# HELP` and `# TYPE`, `# UNIT` lines and the
/// `# EOF` terminator go, and types the old format lacks become `untyped`.
fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
            && kind == "counter"
        {
            counters.insert(name.to_owned());
        }
    }
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                let tail = match (prefix, tail) {
                    ("# TYPE ", "gaugehistogram" | "stateset" | "info" | "unknown") => "untyped",
                    _ => tail,
                };
                out.push_str(prefix);
                out.push_str(&name);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": {"message": "no such admin route", "type": "invalid_request_error", "param": null, "code": "unknown_url"}}),
    )
}

#[cfg(test)]
mod tests {
    use super::openmetrics_to_prometheus;

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP custos_requests Requests.\n# TYPE custos_requests counter\n\
                  custos_requests_total{a=\"b\"} 3\n# HELP lat Latency.\n# TYPE lat histogram\n\
                  # UNIT lat seconds\nlat_bucket{le=\"+Inf\"} 1\nlat_sum 0.5\nlat_count 1\n\
                  # TYPE g gauge\ng 2\n# EOF\n";
        let prom = openmetrics_to_prometheus(om);
        assert_eq!(
            prom,
            "# HELP custos_requests_total Requests.\n# TYPE custos_requests_total counter\n\
             custos_requests_total{a=\"b\"} 3\n# HELP lat Latency.\n# TYPE lat histogram\n\
             lat_bucket{le=\"+Inf\"} 1\nlat_sum 0.5\nlat_count 1\n# TYPE g gauge\ng 2\n"
        );
    }
}
