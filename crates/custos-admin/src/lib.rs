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

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &state.registry).is_err() {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": "metrics encoding failed", "type": "server_error", "param": null, "code": "metrics_encoding"}}),
        );
    }
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": {"message": "no such admin route", "type": "invalid_request_error", "param": null, "code": "unknown_url"}}),
    )
}
