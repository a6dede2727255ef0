//! The one error type of the console and the admin API, and its two
//! renderings: the JSON error shape for `/admin/v1` and an HTML page (or a
//! redirect to sign-in) for `/console`. Internal errors are logged here,
//! at the edge, once; the client sees a generic message.

use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use custos_store::StoreError;

/// Why a console or API request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// No valid session or token.
    #[error("authentication required")]
    Unauthenticated,
    /// The session is valid but sign-in is not complete (MFA pending).
    #[error("multi-factor authentication is required first")]
    MfaRequired,
    /// The role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// A state-changing request without a valid CSRF token or from another
    /// origin.
    #[error("missing or invalid CSRF token")]
    Csrf,
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// Bad input: the message names the field, never a secret.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// A stable code.
        code: &'static str,
    },
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not of the expected media type.
    #[error("expected Content-Type {0}")]
    MediaType(&'static str),
    /// The account is locked after failed attempts.
    #[error(
        "too many failed attempts; the account is locked, try again later or ask an admin to unlock it"
    )]
    Locked,
    /// Too many failed sign-in attempts from this address; wait.
    #[error("too many failed attempts from this address; try again later")]
    Throttled,
    /// The store is busy; retry.
    #[error("the state store is busy, retry shortly")]
    Busy,
    /// Anything else; logged, not shown.
    #[error("internal error")]
    Internal(String),
}

impl ConsoleError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ConsoleError::Invalid {
            message: message.into(),
            code: "invalid_request",
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ConsoleError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "unauthenticated",
            ),
            ConsoleError::MfaRequired => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "mfa_required",
            ),
            ConsoleError::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_error", "forbidden"),
            ConsoleError::Csrf => (StatusCode::FORBIDDEN, "permission_error", "csrf_failed"),
            ConsoleError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found_error", "not_found"),
            ConsoleError::Invalid { code, .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", code)
            }
            ConsoleError::Conflict(_) => {
                (StatusCode::CONFLICT, "invalid_request_error", "conflict")
            }
            ConsoleError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body_too_large",
            ),
            ConsoleError::MediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "unsupported_media_type",
            ),
            ConsoleError::Locked => (
                StatusCode::TOO_MANY_REQUESTS,
                "authentication_error",
                "account_locked",
            ),
            ConsoleError::Throttled => (
                StatusCode::TOO_MANY_REQUESTS,
                "authentication_error",
                "too_many_attempts",
            ),
            ConsoleError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "store_busy",
            ),
            ConsoleError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
            ),
        }
    }

    fn log(&self) {
        if let ConsoleError::Internal(detail) = self {
            tracing::error!(error = %detail, "console request failed");
        }
    }
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::KeyNotFound { id } => {
                ConsoleError::NotFound(format!("key {id} does not exist"))
            }
            StoreError::UserNotFound { id } => {
                ConsoleError::NotFound(format!("user {id} does not exist"))
            }
            StoreError::TokenNotFound { id } => {
                ConsoleError::NotFound(format!("admin token {id} does not exist"))
            }
            StoreError::KeyRevoked { id } => ConsoleError::Conflict(format!("key {id} is revoked")),
            StoreError::UserExists { name } => {
                ConsoleError::Conflict(format!("user {name} already exists"))
            }
            e @ StoreError::VersionConflict { .. } => ConsoleError::Conflict(e.to_string()),
            e @ (StoreError::RotationSuperseded { .. }
            | StoreError::RotationNotReproducible { .. }) => ConsoleError::Conflict(e.to_string()),
            StoreError::Invalid { field, reason } => ConsoleError::Invalid {
                message: format!("{field}: {reason}"),
                code: "invalid_request",
            },
            StoreError::InviteInvalid => ConsoleError::Invalid {
                message: "the link is invalid, used or expired".into(),
                code: "invalid_link",
            },
            StoreError::Busy => ConsoleError::Busy,
            other => ConsoleError::Internal(other.to_string()),
        }
    }
}

/// An error rendered as the JSON error shape.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) ConsoleError);

impl<E: Into<ConsoleError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        e.log();
        let (status, kind, code) = e.parts();
        let body =
            json!({"error": {"message": e.to_string(), "type": kind, "param": null, "code": code}});
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(e, ConsoleError::Busy) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// An error rendered as a console page; unauthenticated requests are sent
/// to the sign-in page.
#[derive(Debug)]
pub(crate) struct PageError(pub(crate) ConsoleError);

impl<E: Into<ConsoleError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        e.log();
        match e {
            ConsoleError::Unauthenticated => Redirect::to("/console/login").into_response(),
            ConsoleError::MfaRequired => Redirect::to("/console/mfa").into_response(),
            other => {
                let (status, _, _) = other.parts();
                let page = crate::ui::error_page(status, &other.to_string());
                (status, axum::response::Html(page.into_string())).into_response()
            }
        }
    }
}
