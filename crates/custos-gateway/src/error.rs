//! Every error the gateway itself produces, and the one place where errors
//! become HTTP responses in the OpenAI error shape:
//! `{"error":{"message","type","param","code"}}`.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use custos_auth::Denied;
use custos_auth::limit::Dimension;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

/// Where an error came from. It feeds logs, metrics and the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something wrong.
    Client,
    /// The upstream failed.
    Upstream,
    /// Custos itself could not serve the request.
    Internal,
}

/// An error answered by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The body is not JSON, or not the JSON expected.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// The offending parameter.
        param: Option<String>,
        /// A stable code such as `invalid_json` or `missing_required_parameter`.
        code: &'static str,
    },
    /// The body is larger than `server.max_body_size`.
    #[error("the request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The client took too long to send its body.
    #[error("the request body was not received within {seconds} seconds")]
    BodyTimeout {
        /// The limit in seconds.
        seconds: u64,
    },
    /// The `Content-Type` is not JSON.
    #[error("unsupported content type `{0}`; send `application/json`")]
    UnsupportedMediaType(String),
    /// The path exists but not for this method.
    #[error("method {method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// The allowed methods, for the `Allow` header.
        allow: &'static str,
    },
    /// No such route.
    #[error("invalid URL ({method} {path})")]
    UnknownUrl {
        /// The request method.
        method: String,
        /// The request path, truncated.
        path: String,
    },
    /// The model is not configured.
    #[error("the model `{0}` does not exist or you do not have access to it")]
    ModelNotFound(String),
    /// Every target failed to connect or broke the exchange.
    #[error("the upstream failed: {0}")]
    UpstreamFailed(String),
    /// Every target timed out.
    #[error("the upstream timed out: {0}")]
    UpstreamTimeout(String),
    /// The server is shutting down.
    #[error("the server is shutting down; retry on another instance")]
    ShuttingDown,
    /// No valid API key (401), or keys could not be checked (503).
    #[error("{0}")]
    Unauthenticated(crate::auth::AuthError),
    /// The key may not do this (403).
    #[error("{0}")]
    Forbidden(Denied),
    /// The audit ledger cannot record the request, so it is not served.
    #[error("{0}; the request was not served")]
    AuditUnavailable(crate::audit::AuditUnavailable),
    /// Every target of the model has an open circuit breaker.
    #[error(
        "no target of `{model}` is available right now (circuit open); retry after {retry_after_secs}s"
    )]
    NoHealthyTarget {
        /// The public model.
        model: String,
        /// Seconds until a breaker may admit a trial.
        retry_after_secs: u64,
    },
    /// A concurrency limit is reached and its wait queue is full or timed out.
    #[error("{message}; retry after {retry_after_secs}s")]
    Overloaded {
        /// Which limit, for the message.
        message: String,
        /// `capacity_exceeded` (the gateway or model, 503) or
        /// `key_capacity_exceeded` (the caller's own limit, 429).
        code: &'static str,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The key's per-minute limit is spent (429).
    #[error("rate limit reached for {} per minute; retry after {retry_after_secs}s", .dimension.as_str())]
    RateLimited {
        /// Which limit.
        dimension: Dimension,
        /// Whole seconds until a retry would pass.
        retry_after_secs: u64,
    },
}

impl GatewayError {
    /// A 400 for a body problem.
    pub fn invalid(message: impl Into<String>, param: Option<&str>, code: &'static str) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::UnknownUrl { .. } | GatewayError::ModelNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            GatewayError::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ShuttingDown
            | GatewayError::AuditUnavailable(_)
            | GatewayError::NoHealthyTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Overloaded { code, .. } if *code == "key_capacity_exceeded" => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Unauthenticated(crate::auth::AuthError::Unavailable) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Unauthenticated(crate::auth::AuthError::BudgetExceeded { .. }) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `error.code` field; the same string goes to metrics and the audit
    /// record.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest { code, .. } => code,
            GatewayError::BodyTooLarge { .. } => "request_too_large",
            GatewayError::BodyTimeout { .. } => "request_timeout",
            GatewayError::UnsupportedMediaType(_) => "unsupported_media_type",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::UnknownUrl { .. } => "unknown_url",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::UpstreamFailed(_) => "upstream_error",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::ShuttingDown => "shutting_down",
            GatewayError::AuditUnavailable(_) => "audit_unavailable",
            GatewayError::NoHealthyTarget { .. } => "no_healthy_target",
            GatewayError::Overloaded { code, .. } => code,
            GatewayError::Unauthenticated(e) => e.code(),
            GatewayError::Forbidden(d) => d.code(),
            GatewayError::RateLimited { .. } => "rate_limit_exceeded",
        }
    }

    /// The `error.type` field, following OpenAI's vocabulary.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::Unauthenticated(crate::auth::AuthError::Unavailable) => {
                return "server_error";
            }
            GatewayError::Unauthenticated(crate::auth::AuthError::BudgetExceeded { .. }) => {
                return "rate_limit_error";
            }
            GatewayError::Unauthenticated(_) => return "authentication_error",
            GatewayError::Forbidden(_) => return "permission_error",
            GatewayError::RateLimited { .. } => return "rate_limit_error",
            _ => {}
        }
        match self.source() {
            ErrorSource::Client => "invalid_request_error",
            ErrorSource::Upstream => "upstream_error",
            ErrorSource::Internal => "server_error",
        }
    }

    /// Where the error came from.
    pub fn source(&self) -> ErrorSource {
        match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::BodyTimeout { .. }
            | GatewayError::UnsupportedMediaType(_)
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::UnknownUrl { .. }
            | GatewayError::ModelNotFound(_)
            | GatewayError::Forbidden(_)
            | GatewayError::RateLimited { .. } => ErrorSource::Client,
            GatewayError::Unauthenticated(crate::auth::AuthError::Unavailable) => {
                ErrorSource::Internal
            }
            GatewayError::Unauthenticated(_) => ErrorSource::Client,
            GatewayError::UpstreamFailed(_) | GatewayError::UpstreamTimeout(_) => {
                ErrorSource::Upstream
            }
            GatewayError::ShuttingDown
            | GatewayError::AuditUnavailable(_)
            | GatewayError::Overloaded { .. } => ErrorSource::Internal,
            GatewayError::NoHealthyTarget { .. } => ErrorSource::Upstream,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. } => param.as_deref(),
            GatewayError::ModelNotFound(_)
            | GatewayError::Forbidden(Denied::ModelNotAllowed { .. }) => Some("model"),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: String,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: &'a str,
        }
        let envelope = Envelope {
            error: Inner {
                message: self.to_string(),
                kind: self.error_type(),
                param: self.param(),
                code: self.code(),
            },
        };
        // Serialising a struct of strings cannot fail.
        Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), self.body()).into_response();
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self {
            GatewayError::MethodNotAllowed { allow, .. } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            GatewayError::ShuttingDown
            | GatewayError::AuditUnavailable(_)
            | GatewayError::Unauthenticated(crate::auth::AuthError::Unavailable) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::Unauthenticated(crate::auth::AuthError::BudgetExceeded {
                retry_after_secs,
                ..
            }) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            GatewayError::Unauthenticated(_) => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"custos\""),
                );
            }
            GatewayError::RateLimited {
                retry_after_secs, ..
            }
            | GatewayError::NoHealthyTarget {
                retry_after_secs, ..
            }
            | GatewayError::Overloaded {
                retry_after_secs, ..
            } => {
                headers.insert(RETRY_AFTER, HeaderValue::from((*retry_after_secs).max(1)));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = GatewayError::ModelNotFound("gpt-9".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        expect_test::expect![[r#"{"error":{"code":"model_not_found","message":"the model `gpt-9` does not exist or you do not have access to it","param":"model","type":"invalid_request_error"}}"#]]
            .assert_eq(&v.to_string());
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn method_not_allowed_sets_allow() {
        let resp = GatewayError::MethodNotAllowed {
            method: "GET".into(),
            path: "/v1/embeddings".into(),
            allow: "POST",
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "POST");
    }
}
