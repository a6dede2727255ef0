//! The admin console and the admin API, served on the admin listener only.
//!
//! * `/console/…`: server-rendered pages (maud) with one small embedded
//!   script and stylesheet; sign-in with a password and a mandatory TOTP
//!   second factor, enrolment at first sign-in, recovery codes, sessions
//!   with idle and absolute timeouts, CSRF tokens on every form.
//! * `/admin/v1/…`: a JSON API over the same operations, authenticated by
//!   a console session (plus `X-CSRF-Token` on changes) or by an admin API
//!   token (`Authorization: Bearer cadm_…`), described by
//!   `/admin/v1/openapi.json`.
//!
//! Roles are checked in every handler through [`auth::Principal::require`];
//! every change is written with its audit event by `custos-store`, and
//! sign-ins, failures and sign-outs are recorded as events too.
//!
//! **Architecture invariants:** this crate does not depend on
//! `custos-gateway` or `custos-admin`; its router is merged into the admin
//! router by the binary and never into the gateway's. No password, TOTP
//! seed, recovery code, session ID or token reaches a log, an error or an
//! audit event.

mod api;
mod auth;
pub mod crypto;
mod error;
mod incidents;
pub mod keyjson;
mod ledger;
mod openapi;
mod pages;
mod service;
mod ui;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use custos_config::{ConsoleConfig, KeysConfig};
use custos_store::{KeyMinter, Store};
use custos_types::Clock;

pub use crypto::ServerKeys;
pub use openapi::OPENAPI_JSON;
pub use service::{Invitation, issue_invite, setup_link_if_fresh};

/// Everything the console needs, built by the binary.
pub struct ConsoleOptions {
    /// The state store.
    pub store: Arc<Store>,
    /// Mints key secrets (holds the pepper).
    pub minter: Arc<KeyMinter>,
    /// Keys derived from the pepper for TOTP sealing and CSRF.
    pub server_keys: ServerKeys,
    /// Rotation policy, for "due" dates.
    pub keys_policy: KeysConfig,
    /// `[console]`.
    pub config: ConsoleConfig,
    /// `<data_dir>/ledger`, read-only.
    pub ledger_dir: PathBuf,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// The console's base URL for links (`console.public_url`, or the admin
    /// listener's address).
    pub base_url: String,
}

impl std::fmt::Debug for ConsoleOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOptions")
            .field("config", &self.config)
            .field("ledger_dir", &self.ledger_dir)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Shared state of the console and the admin API.
pub struct ConsoleState {
    opts: ConsoleOptions,
    /// Verified against when the user name is unknown, so that a sign-in
    /// takes as long whether or not the user exists.
    dummy_hash: String,
    /// Whether cookies get `Secure` and the `__Host-` prefix.
    secure: bool,
    /// Failed sign-in attempts per client address, against password
    /// spraying across many (or unknown) user names, which the per-account
    /// lockout does not see.
    ip_failures:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::SystemTime)>>,
}

impl std::fmt::Debug for ConsoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleState")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl ConsoleState {
    /// Builds the state (hashes one dummy password: call it off the async
    /// threads, or accept a few milliseconds).
    pub fn new(opts: ConsoleOptions) -> Arc<Self> {
        let dummy_hash = crypto::hash_password(&mut rand::rngs::OsRng, "custos dummy password")
            .unwrap_or_default();
        let secure = opts.base_url.starts_with("https://");
        Arc::new(ConsoleState {
            opts,
            dummy_hash,
            secure,
            ip_failures: std::sync::Mutex::default(),
        })
    }

    fn store(&self) -> &Store {
        &self.opts.store
    }

    fn now(&self) -> std::time::SystemTime {
        self.opts.clock.now()
    }
}

/// The console and admin API routes, to merge into the admin router. It has
/// no fallback of its own.
pub fn router(state: Arc<ConsoleState>) -> Router {
    Router::new()
        .merge(pages::routes())
        .merge(api::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(ui::security_headers))
        .with_state(state)
}

/// A known path with the wrong method: our JSON error, not an empty 405.
async fn method_not_allowed() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let body = serde_json::json!({"error": {
        "message": "this method is not allowed on this route",
        "type": "invalid_request_error",
        "param": null,
        "code": "method_not_allowed",
    }});
    let mut resp = (http::StatusCode::METHOD_NOT_ALLOWED, body.to_string()).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
