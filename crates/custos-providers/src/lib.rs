//! Upstream providers: how Custos talks to the APIs that actually serve
//! models.
//!
//! A [`Provider`] takes an OpenAI-shaped request body and answers with an
//! OpenAI-shaped response, full or streamed. Kinds that speak another API
//! (Anthropic, Azure) translate inside their adapter, so the gateway only
//! ever sees one shape. Timeouts (connect, first byte, idle gap, total) are
//! enforced here, the same for every kind.

pub mod body;
mod h1;
mod mock;
mod openai;
pub mod sse;
pub mod usage;

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use custos_config::{ProviderConfig, ProviderKind, Timeouts};
use custos_types::{RequestId, SecretString};
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, StatusCode};
use tokio::time::Instant;

pub use mock::MockProvider;
pub use openai::OpenAiProvider;

/// The inference endpoints a provider serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl Endpoint {
    /// The path below the provider's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    /// A stable name for logs, metrics and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// Largest non-streamed upstream body Custos accepts.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Largest upstream error body kept for passthrough.
pub const MAX_ERROR_BODY_BYTES: usize = 1024 * 1024;

/// A stream of body bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ProviderError>> + Send>>;

/// One request to send upstream.
#[derive(Debug)]
pub struct UpstreamRequest<'a> {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The OpenAI-shaped body, already rewritten for this target.
    pub body: Bytes,
    /// Whether the body asks for a stream.
    pub stream: bool,
    /// Sent upstream as `X-Request-Id`.
    pub request_id: &'a RequestId,
}

/// An upstream answer. Non-2xx answers and non-streamed answers arrive
/// whole; streamed 2xx answers arrive as a [`ByteStream`] whose chunks are
/// subject to the first-byte, idle and total timeouts.
pub struct UpstreamResponse {
    /// The upstream status.
    pub status: StatusCode,
    /// The upstream `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// The upstream's own request ID (`x-request-id`), for correlation.
    pub upstream_request_id: Option<String>,
    /// The upstream `Retry-After`, relayed with 429 and 503 passthroughs.
    pub retry_after: Option<HeaderValue>,
    /// The body.
    pub body: UpstreamBody,
}

impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .field("upstream_request_id", &self.upstream_request_id)
            .finish_non_exhaustive()
    }
}

/// The body of an [`UpstreamResponse`].
pub enum UpstreamBody {
    /// The whole body.
    Full(Bytes),
    /// A streamed body.
    Stream(ByteStream),
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Connecting.
    Connect,
    /// Waiting for headers or the first stream chunk.
    FirstByte,
    /// Waiting between two stream chunks.
    Idle,
    /// The whole exchange.
    Total,
}

impl TimeoutPhase {
    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "first_byte",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::Total => "total",
        }
    }
}

/// Why an upstream exchange failed. Messages never contain credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The connection could not be made (refused, DNS, TLS).
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    /// A timeout fired.
    #[error("the upstream timed out ({})", .0.as_str())]
    Timeout(TimeoutPhase),
    /// The connection broke or the upstream spoke invalid HTTP.
    #[error("the upstream connection failed: {0}")]
    Transport(String),
    /// The upstream body was larger than Custos accepts.
    #[error("the upstream response exceeded {0} bytes")]
    TooLarge(usize),
}

impl ProviderError {
    /// A stable, bounded name for metrics and audit error codes.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Connect(_) => "connect",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Transport(_) => "transport",
            ProviderError::TooLarge(_) => "too_large",
        }
    }
}

/// Why a provider could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The HTTP client could not be built.
    #[error("provider `{provider}`: {message}")]
    Client {
        /// The provider name.
        provider: String,
        /// What went wrong.
        message: String,
    },
}

/// A configured upstream.
pub struct Provider {
    name: String,
    timeouts: Timeouts,
    inner: Inner,
}

enum Inner {
    OpenAi(Box<OpenAiProvider>),
    Mock(MockProvider),
}

/// What an adapter returns before timeouts and collection are applied.
pub(crate) struct RawResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub upstream_request_id: Option<String>,
    pub retry_after: Option<HeaderValue>,
    pub body: ByteStream,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Builds a provider. `credential` is the resolved API key, if the
    /// provider has one; the binary reads it from the environment or a file.
    pub fn new(
        config: &ProviderConfig,
        credential: Option<SecretString>,
    ) -> Result<Self, BuildError> {
        let inner = match &config.kind {
            ProviderKind::OpenAi(settings) => Inner::OpenAi(Box::new(OpenAiProvider::new(
                &config.name,
                settings,
                &config.timeouts,
                credential,
            )?)),
            ProviderKind::Mock(settings) => Inner::Mock(MockProvider::new(settings.clone())),
        };
        Ok(Provider {
            name: config.name.clone(),
            timeouts: config.timeouts,
            inner,
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind, as in the config file.
    pub fn kind(&self) -> &'static str {
        match self.inner {
            Inner::OpenAi(_) => "openai",
            Inner::Mock(_) => "mock",
        }
    }

    /// The timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sends one request. Headers must arrive within the first-byte timeout;
    /// a non-streamed or non-2xx body is read whole within the total timeout;
    /// a streamed body is returned for the caller to pull, with the first
    /// chunk still under the first-byte timeout.
    pub async fn send(&self, req: UpstreamRequest<'_>) -> Result<UpstreamResponse, ProviderError> {
        let started = Instant::now();
        let total = started + self.timeouts.total;
        let first_byte = started + self.timeouts.first_byte.min(self.timeouts.total);
        let stream = req.stream;
        let exchange = async {
            match &self.inner {
                Inner::OpenAi(p) => p.send(req).await,
                Inner::Mock(p) => p.send(req).await,
            }
        };
        let raw = match tokio::time::timeout_at(first_byte, exchange).await {
            Ok(result) => result?,
            Err(_) => return Err(TimeoutPhase::FirstByte.into()),
        };
        let timed = timed_stream(raw.body, first_byte, total, self.timeouts.idle);
        let body = if stream && raw.status.is_success() {
            UpstreamBody::Stream(timed)
        } else {
            let limit = if raw.status.is_success() {
                MAX_RESPONSE_BYTES
            } else {
                MAX_ERROR_BODY_BYTES
            };
            UpstreamBody::Full(collect(timed, limit).await?)
        };
        Ok(UpstreamResponse {
            status: raw.status,
            content_type: raw.content_type,
            upstream_request_id: raw.upstream_request_id,
            retry_after: raw.retry_after,
            body,
        })
    }
}

impl From<TimeoutPhase> for ProviderError {
    fn from(phase: TimeoutPhase) -> Self {
        ProviderError::Timeout(phase)
    }
}

struct Timed {
    inner: ByteStream,
    first_byte: Instant,
    total: Instant,
    idle: Duration,
    seen_first: bool,
    finished: bool,
}

/// Wraps a body so that the first chunk must arrive by `first_byte`, each
/// later chunk within `idle` of the previous one, and everything by `total`.
fn timed_stream(
    inner: ByteStream,
    first_byte: Instant,
    total: Instant,
    idle: Duration,
) -> ByteStream {
    let state = Timed {
        inner,
        first_byte,
        total,
        idle,
        seen_first: false,
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let (limit, phase) = if st.seen_first {
            (Instant::now() + st.idle, TimeoutPhase::Idle)
        } else {
            (st.first_byte, TimeoutPhase::FirstByte)
        };
        let (limit, phase) = if st.total <= limit {
            (st.total, TimeoutPhase::Total)
        } else {
            (limit, phase)
        };
        match tokio::time::timeout_at(limit, st.inner.next()).await {
            Err(_) => {
                st.finished = true;
                Some((Err(phase.into()), st))
            }
            Ok(None) => None,
            Ok(Some(Ok(bytes))) => {
                st.seen_first = true;
                Some((Ok(bytes), st))
            }
            Ok(Some(Err(e))) => {
                st.finished = true;
                Some((Err(e), st))
            }
        }
    }))
}

async fn collect(mut body: ByteStream, limit: usize) -> Result<Bytes, ProviderError> {
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > limit {
            return Err(ProviderError::TooLarge(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
