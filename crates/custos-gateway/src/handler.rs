//! The request pipeline. Stages run top-down in [`handle`]; each stage either
//! passes the request on or ends it with a [`GatewayError`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use custos_providers::sse::{SseRelay, error_event};
use custos_providers::{
    ByteStream, Endpoint, ProviderError, UpstreamBody, UpstreamRequest, UpstreamResponse, body,
    usage,
};
use custos_types::{RequestId, Usage};
use futures_util::StreamExt;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, StatusCode, request::Parts};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::Gateway;
use crate::audit::AuditUnavailable;
use crate::auth::{Auth, Principal};
use crate::error::GatewayError;
use crate::outcome::{Actor, Attempt, Durable, RequestGuard, new_outcome};
use custos_auth::AccessRequest;
use custos_auth::limit::{RateDecision, format_reset};
use custos_health::{AttemptOutcome, CapacityGuard, TargetId};
use custos_types::Capability;

/// The request ID header, on every request and response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The upstream model that served the request.
pub const X_MODEL_SERVED: HeaderName = HeaderName::from_static("x-custos-model-served");
/// The provider that served the request.
pub const X_PROVIDER: HeaderName = HeaderName::from_static("x-custos-provider");
/// When the caller's key is due for rotation (within the warning window).
pub const X_ROTATION_DUE: HeaderName = HeaderName::from_static("x-custos-key-rotation-due");

/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

enum Route {
    Inference(Endpoint),
    ListModels,
    GetModel(String),
}

/// Every `/v1` request enters here.
pub(crate) async fn handle(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let request_id = RequestId::from_client_or_generate(
        parts.headers.get(X_REQUEST_ID).map(HeaderValue::as_bytes),
    );
    let client_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let user_agent = parts.headers.get(USER_AGENT).and_then(|v| v.to_str().ok());
    let outcome = new_outcome(
        request_id.clone(),
        parts.method.as_str(),
        parts.uri.path(),
        client_ip,
        user_agent,
    );
    gw.metrics.start();
    let mut guard = RequestGuard::new(outcome, started, gw.sink.clone(), gw.audit.clone());

    let mut access = Access {
        auth: gw.auth.as_deref(),
        principal: None,
        client_ip,
        rate: None,
    };
    let route = route(&parts.method, parts.uri.path());
    // Named before authentication, so refusals are recorded with it too.
    guard.get_mut().endpoint = match &route {
        Ok(Route::Inference(endpoint)) => endpoint.as_str(),
        Ok(Route::ListModels | Route::GetModel(_)) => "models",
        Err(_) => "other",
    };
    let mut response = match route {
        Err(e) => fail(guard, e).await,
        Ok(_) if let Some(Err(e)) = gw.audit.as_ref().map(|a| a.ready()) => {
            // Fail closed: nothing is served that cannot be recorded.
            fail(guard, GatewayError::AuditUnavailable(e)).await
        }
        Ok(route) => match authenticate(gw.auth.as_deref(), &parts).await {
            Err(e) => fail(guard, e).await,
            Ok(principal) => {
                if let Some(p) = &principal {
                    guard.get_mut().actor = Some(Actor {
                        key_id: p.key.id,
                        key_name: p.key.name.clone(),
                        owner: p.key.owner.clone(),
                        team: p.key.team.clone(),
                    });
                }
                access.principal = principal;
                dispatch(&gw, route, &parts, body, guard, &mut access).await
            }
        },
    };
    if let Some(decision) = &access.rate {
        rate_limit_headers(response.headers_mut(), decision);
    }
    if let Some(due) = access.principal.as_ref().and_then(|p| p.rotation_due)
        && let Ok(v) = HeaderValue::from_str(&humantime::format_rfc3339_seconds(due).to_string())
    {
        response.headers_mut().insert(X_ROTATION_DUE, v);
    }
    if let Ok(value) = HeaderValue::from_str(request_id.as_str()) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

async fn authenticate(
    auth: Option<&Auth>,
    parts: &Parts,
) -> Result<Option<Principal>, GatewayError> {
    match auth {
        None => Ok(None),
        Some(auth) => auth
            .authenticate(&parts.headers)
            .await
            .map(Some)
            .map_err(GatewayError::Unauthenticated),
    }
}

async fn dispatch(
    gw: &Gateway,
    route: Route,
    parts: &Parts,
    body: Body,
    mut guard: RequestGuard,
    access: &mut Access<'_>,
) -> Response {
    match route {
        Route::Inference(endpoint) => {
            guard.get_mut().endpoint = endpoint.as_str();
            inference(gw, endpoint, parts, body, guard, access).await
        }
        Route::ListModels => {
            guard.get_mut().endpoint = "models";
            match access.authorize(None, Capability::Models, false) {
                Ok(()) => done(guard, list_models(gw, access)).await,
                Err(e) => fail(guard, e).await,
            }
        }
        Route::GetModel(id) => {
            guard.get_mut().endpoint = "models";
            guard.get_mut().model_requested = Some(id.clone());
            let result = access
                .authorize(Some(&id), Capability::Models, false)
                .and_then(|()| get_model(gw, &id));
            match result {
                Ok(resp) => done(guard, resp).await,
                Err(e) => fail(guard, e).await,
            }
        }
    }
}

/// The authorization stage: scope, then rate limit.
struct Access<'a> {
    auth: Option<&'a Auth>,
    principal: Option<Principal>,
    client_ip: Option<IpAddr>,
    rate: Option<RateDecision>,
}

impl Access<'_> {
    fn authorize(
        &mut self,
        model: Option<&str>,
        capability: Capability,
        stream: bool,
    ) -> Result<(), GatewayError> {
        let (Some(auth), Some(principal)) = (self.auth, &self.principal) else {
            return Ok(());
        };
        let scope = &principal.key.scope;
        scope
            .check(&AccessRequest {
                model,
                capability,
                stream,
                client_ip: self.client_ip,
            })
            .map_err(GatewayError::Forbidden)?;
        auth.check_budget(&principal.key)
            .map_err(GatewayError::Unauthenticated)?;
        let decision = auth.check_rate(&principal.key.id, scope.limits());
        self.rate = Some(decision);
        match decision.refusal {
            Some(refusal) => Err(GatewayError::RateLimited {
                dimension: refusal.dimension,
                retry_after_secs: refusal.retry_after_secs(),
            }),
            None => Ok(()),
        }
    }

    /// Whether the caller may see `model` in listings.
    fn may_use(&self, model: &str) -> bool {
        self.principal
            .as_ref()
            .is_none_or(|p| p.key.scope.models.allows(model))
    }
}

fn rate_limit_headers(headers: &mut http::HeaderMap, decision: &RateDecision) {
    const NAMES: [[HeaderName; 3]; 2] = [
        [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ],
        [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ],
    ];
    for (names, status) in NAMES.iter().zip([decision.requests, decision.tokens]) {
        if let Some(status) = status {
            headers.insert(names[0].clone(), HeaderValue::from(status.limit));
            headers.insert(names[1].clone(), HeaderValue::from(status.remaining));
            if let Ok(v) = HeaderValue::from_str(&format_reset(status.reset)) {
                headers.insert(names[2].clone(), v);
            }
        }
    }
}

fn route(method: &Method, path: &str) -> Result<Route, GatewayError> {
    let not_allowed = |allow: &'static str| GatewayError::MethodNotAllowed {
        method: method.to_string(),
        path: path.chars().take(256).collect(),
        allow,
    };
    let post = |endpoint| {
        if method == Method::POST {
            Ok(Route::Inference(endpoint))
        } else {
            Err(not_allowed("POST"))
        }
    };
    match path {
        "/v1/chat/completions" => post(Endpoint::ChatCompletions),
        "/v1/completions" => post(Endpoint::Completions),
        "/v1/embeddings" => post(Endpoint::Embeddings),
        "/v1/models" if method == Method::GET => Ok(Route::ListModels),
        "/v1/models" => Err(not_allowed("GET")),
        _ => match path.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() && method == Method::GET => {
                Ok(Route::GetModel(percent_decode(id)))
            }
            Some(id) if !id.is_empty() => Err(not_allowed("GET")),
            _ => Err(GatewayError::UnknownUrl {
                method: method.to_string(),
                path: path.chars().take(256).collect(),
            }),
        },
    }
}

/// Ends a request with a response, once its audit record is durable. If the
/// record cannot be written the response is withheld: 503 instead.
async fn done(mut guard: RequestGuard, response: Response) -> Response {
    guard.mark_first_byte();
    match await_durable(guard.finish(response.status().as_u16())).await {
        Ok(()) => response,
        Err(e) => GatewayError::AuditUnavailable(e).into_response(),
    }
}

/// Ends a request with an error.
async fn fail(mut guard: RequestGuard, e: GatewayError) -> Response {
    guard.get_mut().error_code = Some(e.code().to_owned());
    guard.mark_first_byte();
    let status = e.status().as_u16();
    tracing::debug!(code = e.code(), status, "request failed: {e}");
    match await_durable(guard.finish(status)).await {
        Ok(()) => e.into_response(),
        Err(audit) => GatewayError::AuditUnavailable(audit).into_response(),
    }
}

async fn await_durable(durable: Durable) -> Result<(), AuditUnavailable> {
    match durable {
        Some(f) => f.await,
        None => Ok(()),
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn model_object(gw: &Gateway, id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": gw.created, "owned_by": "custos"})
}

fn list_models(gw: &Gateway, access: &Access<'_>) -> Response {
    let data: Vec<serde_json::Value> = gw
        .routes
        .names()
        .filter(|m| access.may_use(m))
        .map(|m| model_object(gw, m))
        .collect();
    let body = serde_json::json!({"object": "list", "data": data});
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}

fn get_model(gw: &Gateway, id: &str) -> Result<Response, GatewayError> {
    if gw.routes.get(id).is_none() {
        return Err(GatewayError::ModelNotFound(id.to_owned()));
    }
    let body = model_object(gw, id).to_string();
    Ok(json_response(StatusCode::OK, Bytes::from(body)))
}

/// What the attempt loop produced.
enum Reply {
    /// A whole response, ready to send.
    Full(Response),
    /// A committed stream: response head plus the upstream body to relay.
    Stream(Box<StreamReply>),
}

/// A committed stream: response head plus the upstream body to relay.
struct StreamReply {
    head: Response,
    upstream: ByteStream,
    first: Option<Bytes>,
    relay: SseRelay,
    estimate: Estimate,
    upstream_started: Instant,
    slot: Option<CapacityGuard>,
}

/// The upstream answer a request commits to, with what it holds.
struct Answer {
    resp: UpstreamResponse,
    /// A stream's first chunk, already read.
    first: Option<Bytes>,
    /// The capacity slot, held until the response or stream ends.
    slot: Option<CapacityGuard>,
}

/// What is needed to count tokens when the upstream reports none.
struct Estimate {
    endpoint: Endpoint,
    model: String,
    body: Bytes,
}

async fn inference(
    gw: &Gateway,
    endpoint: Endpoint,
    parts: &Parts,
    body: Body,
    mut guard: RequestGuard,
    access: &mut Access<'_>,
) -> Response {
    match inference_inner(gw, endpoint, parts, body, &mut guard, access).await {
        Ok(Reply::Full(resp)) => done(guard, resp).await,
        Ok(Reply::Stream(reply)) => {
            let StreamReply {
                head,
                upstream,
                first,
                relay,
                estimate,
                upstream_started,
                slot,
            } = *reply;
            let state = StreamState {
                guard: Some(guard),
                upstream,
                first,
                relay,
                estimate: Some(estimate),
                upstream_started,
                closing: false,
                done: false,
                _slot: slot,
            };
            let (parts, _) = head.into_parts();
            Response::from_parts(parts, Body::from_stream(relay_stream(state)))
        }
        Err(e) => fail(guard, e).await,
    }
}

async fn inference_inner(
    gw: &Gateway,
    endpoint: Endpoint,
    parts: &Parts,
    body: Body,
    guard: &mut RequestGuard,
    access: &mut Access<'_>,
) -> Result<Reply, GatewayError> {
    check_content_type(parts)?;
    let bytes = read_body(body, parts, gw.max_body_size).await?;
    let fields = body::extract(endpoint, &bytes).map_err(body_error)?;
    {
        let o = guard.get_mut();
        o.model_requested = Some(fields.model.clone());
        o.stream = fields.stream;
    }
    // Authorization: the key's scope, then its rate limit, before any
    // upstream is contacted.
    access.authorize(Some(&fields.model), capability(endpoint), fields.stream)?;
    let route = gw
        .routes
        .get(&fields.model)
        .ok_or_else(|| GatewayError::ModelNotFound(fields.model.clone()))?
        .clone();

    // Capacity: a bounded, timed wait for a slot; the slot is held until
    // the response or the stream ends.
    let slot = match &gw.capacity {
        None => None,
        Some(limiter) => {
            let key = access.principal.as_ref().map(|p| p.key.id);
            let key = key.as_ref().map(|k| k.as_str());
            Some(limiter.acquire(&fields.model, key).await.map_err(|e| {
                GatewayError::Overloaded {
                    message: format!("capacity limit reached ({})", e.reason()),
                    code: if e.is_caller_limit() {
                        "key_capacity_exceeded"
                    } else {
                        "capacity_exceeded"
                    },
                    retry_after_secs: e.retry_after().as_secs().max(1),
                }
            })?)
        }
    };

    let request_id = guard.get_mut().request_id.clone();
    let plan = route.plan(&mut rand::thread_rng());
    let mut last: Option<Result<UpstreamResponse, ProviderError>> = None;
    let mut circuit_wait: Option<Duration> = None;
    let upstream_started = Instant::now();
    for target in plan {
        // Routing skips targets whose circuit is open.
        let permit = match &gw.health {
            None => None,
            Some(health) => {
                let id = TargetId::new(target.provider.name(), &target.upstream_model);
                match health.allow(&id, tokio::time::Instant::now()) {
                    Ok(permit) => Some(permit),
                    Err(rejected) => {
                        circuit_wait = Some(
                            circuit_wait
                                .map_or(rejected.retry_after, |w| w.min(rejected.retry_after)),
                        );
                        guard.get_mut().attempts.push(Attempt {
                            provider: target.provider.name().to_owned(),
                            model: target.upstream_model.clone(),
                            status: None,
                            error: Some("circuit_open"),
                            duration: Duration::ZERO,
                        });
                        continue;
                    }
                }
            }
        };
        let attempt_started = Instant::now();
        let upstream_body = body::rewrite(&bytes, &fields, &target.upstream_model, true);
        let sent = target
            .provider
            .send(UpstreamRequest {
                endpoint,
                body: upstream_body,
                stream: fields.stream,
                request_id: &request_id,
            })
            .await;
        let mut attempt = Attempt {
            provider: target.provider.name().to_owned(),
            model: target.upstream_model.clone(),
            status: None,
            error: None,
            duration: Duration::ZERO,
        };
        let mut outcome = match sent {
            Ok(resp) => {
                attempt.status = Some(resp.status.as_u16());
                Ok(resp)
            }
            Err(e) => Err(e),
        };
        // A streamed success is committed only once its first chunk is in,
        // so that a stream that dies before its first byte still falls back.
        let mut first = None;
        if let Ok(resp) = &mut outcome
            && let UpstreamBody::Stream(stream) = &mut resp.body
        {
            match stream.next().await {
                Some(Ok(chunk)) => first = Some(chunk),
                Some(Err(e)) => outcome = Err(e),
                None => {}
            }
        }
        attempt.duration = attempt_started.elapsed();
        let retryable = match &outcome {
            Ok(resp) => {
                resp.status.is_server_error() || resp.status == StatusCode::TOO_MANY_REQUESTS
            }
            Err(_) => true,
        };
        attempt.error = match &outcome {
            Err(e) => Some(e.kind()),
            Ok(_) if retryable => Some("status"),
            Ok(_) => None,
        };
        if let Err(e) = &outcome {
            tracing::warn!(
                provider = target.provider.name(),
                model = %target.upstream_model,
                error = %e,
                "upstream attempt failed"
            );
        }
        if let Some(permit) = permit {
            permit.record(
                AttemptOutcome::from_attempt(attempt.status, attempt.error),
                attempt.duration,
                tokio::time::Instant::now(),
            );
        }
        guard.get_mut().attempts.push(attempt);
        if retryable {
            last = Some(outcome);
            continue;
        }
        let Ok(resp) = outcome else { continue };
        {
            let o = guard.get_mut();
            o.provider = Some(target.provider.name().to_owned());
            o.model_served = Some(target.upstream_model.clone());
            o.upstream_request_id = resp.upstream_request_id.clone();
        }
        return Ok(commit(
            guard,
            Answer { resp, first, slot },
            &fields,
            Estimate {
                endpoint,
                model: target.upstream_model.clone(),
                body: bytes.clone(),
            },
            target.provider.name(),
            upstream_started,
        )
        .await);
    }
    guard.get_mut().upstream_time = upstream_started.elapsed();
    match last {
        // Every target answered with an error status: the last one passes
        // through with its own status and body.
        Some(Ok(resp)) => {
            guard.get_mut().error_code = Some("upstream_error".to_owned());
            Ok(Reply::Full(passthrough(resp)))
        }
        Some(Err(ProviderError::Timeout(phase))) => Err(GatewayError::UpstreamTimeout(format!(
            "no target of `{}` answered in time ({} timeout)",
            route.model,
            phase.as_str()
        ))),
        Some(Err(e)) => Err(GatewayError::UpstreamFailed(format!(
            "no target of `{}` could serve the request; last error: {e}",
            route.model
        ))),
        None => match circuit_wait {
            Some(wait) => Err(GatewayError::NoHealthyTarget {
                model: route.model.clone(),
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }),
            None => Err(GatewayError::UpstreamFailed(format!(
                "`{}` has no usable target",
                route.model
            ))),
        },
    }
}

fn capability(endpoint: Endpoint) -> Capability {
    match endpoint {
        Endpoint::ChatCompletions => Capability::Chat,
        Endpoint::Completions => Capability::Completions,
        Endpoint::Embeddings => Capability::Embeddings,
    }
}

/// Turns the answering upstream response into the reply.
async fn commit(
    guard: &mut RequestGuard,
    answer: Answer,
    fields: &body::RequestFields,
    estimate: Estimate,
    provider: &str,
    upstream_started: Instant,
) -> Reply {
    let Answer { resp, first, slot } = answer;
    let served = HeaderValue::from_str(&estimate.model).ok();
    let provider = HeaderValue::from_str(provider).ok();
    let decorate = |resp: &mut Response| {
        let h = resp.headers_mut();
        if let Some(v) = served.clone() {
            h.insert(X_MODEL_SERVED, v);
        }
        if let Some(v) = provider.clone() {
            h.insert(X_PROVIDER, v);
        }
    };
    match resp.body {
        UpstreamBody::Stream(upstream) => {
            let mut head = Response::new(Body::empty());
            *head.status_mut() = resp.status;
            let h = head.headers_mut();
            h.insert(
                CONTENT_TYPE,
                resp.content_type
                    .unwrap_or(HeaderValue::from_static("text/event-stream")),
            );
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert(
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
            decorate(&mut head);
            Reply::Stream(Box::new(StreamReply {
                head,
                upstream,
                first,
                relay: SseRelay::new(!fields.client_wants_usage),
                estimate,
                upstream_started,
                slot,
            }))
        }
        UpstreamBody::Full(bytes) => {
            guard.get_mut().upstream_time = upstream_started.elapsed();
            let usage = match usage::from_response(&bytes) {
                Some(u) => Some(u),
                None if resp.status.is_success() => {
                    Some(estimate_usage(estimate, Some(bytes.clone()), None).await)
                }
                None => None,
            };
            guard.get_mut().usage = usage;
            let mut out = (resp.status, bytes).into_response();
            out.headers_mut().insert(
                CONTENT_TYPE,
                resp.content_type
                    .unwrap_or(HeaderValue::from_static("application/json")),
            );
            decorate(&mut out);
            Reply::Full(out)
        }
    }
}

fn passthrough(resp: UpstreamResponse) -> Response {
    let body = match resp.body {
        UpstreamBody::Full(b) => b,
        UpstreamBody::Stream(_) => Bytes::new(),
    };
    let mut out = (resp.status, body).into_response();
    let h = out.headers_mut();
    h.insert(
        CONTENT_TYPE,
        resp.content_type
            .unwrap_or(HeaderValue::from_static("application/json")),
    );
    if let Some(v) = resp.retry_after {
        h.insert(RETRY_AFTER, v);
    }
    out
}

/// Counts tokens off the runtime threads: the tokenizer is CPU work and
/// loads its vocabulary on first use.
async fn estimate_usage(
    estimate: Estimate,
    response: Option<Bytes>,
    generated: Option<String>,
) -> Usage {
    let work = move || {
        let prompt = usage::estimate_prompt(estimate.endpoint, &estimate.model, &estimate.body);
        let text = match (response, generated) {
            (_, Some(text)) => text,
            (Some(body), None) => usage::response_text(&body),
            (None, None) => String::new(),
        };
        let completion = if estimate.endpoint == Endpoint::Embeddings {
            0
        } else {
            usage::count_tokens(&estimate.model, &text)
        };
        Usage::estimated(prompt, completion)
    };
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Usage::estimated(0, 0))
}

fn check_content_type(parts: &Parts) -> Result<(), GatewayError> {
    let Some(value) = parts.headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let mime = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedMediaType(
            text.chars().take(100).collect(),
        ))
    }
}

async fn read_body(body: Body, parts: &Parts, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
        Err(_) => Err(GatewayError::BodyTimeout {
            seconds: BODY_TIMEOUT.as_secs(),
        }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        Ok(Err(_)) => Err(GatewayError::invalid(
            "the request body could not be read",
            None,
            "invalid_body",
        )),
    }
}

fn body_error(e: body::BodyError) -> GatewayError {
    let code = match &e {
        body::BodyError::InvalidJson(_) => "invalid_json",
        body::BodyError::NotAnObject => "invalid_json",
        body::BodyError::Missing(_) => "missing_required_parameter",
        body::BodyError::WrongType { .. } => "invalid_type",
        body::BodyError::Duplicate(_) => "duplicate_parameter",
        _ => "invalid_request",
    };
    GatewayError::invalid(e.to_string(), e.param(), code)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct StreamState {
    guard: Option<RequestGuard>,
    upstream: ByteStream,
    first: Option<Bytes>,
    relay: SseRelay,
    estimate: Option<Estimate>,
    upstream_started: Instant,
    /// `[DONE]` was seen and everything before it forwarded: what is left
    /// is to record the request and send the held `[DONE]`.
    closing: bool,
    done: bool,
    /// The capacity slot, released when the stream ends or is dropped.
    _slot: Option<CapacityGuard>,
}

impl StreamState {
    /// Records the stream's outcome and waits until it is durable; `false`
    /// when the audit record could not be written.
    async fn finish(&mut self, error_code: Option<&str>) -> bool {
        let usage = match (self.relay.usage(), self.estimate.take()) {
            (Some(u), _) => Some(u),
            (None, Some(est)) => {
                Some(estimate_usage(est, None, Some(self.relay.generated_text().to_owned())).await)
            }
            (None, None) => None,
        };
        if let Some(mut guard) = self.guard.take() {
            let o = guard.get_mut();
            o.usage = usage;
            o.upstream_time = self.upstream_started.elapsed();
            if let Some(code) = error_code {
                o.error_code = Some(code.to_owned());
            }
            // The status line went out with the first byte.
            let durable = guard.finish(200);
            self.done = true;
            return await_durable(durable).await.is_ok();
        }
        self.done = true;
        true
    }
}

/// The event that replaces a stream's ending when its record is lost.
fn audit_failed_event() -> Bytes {
    error_event(
        "the audit ledger could not record this request",
        "audit_unavailable",
    )
}

/// The relayed body: every complete upstream event is forwarded as soon as
/// it arrives. A failure midway ends the stream with an error event.
fn relay_stream(state: StreamState) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if st.closing {
                // The answer is complete: record it, then send the rest
                // with `[DONE]`. The upstream connection is released
                // without waiting for it to close. Yield first, so that
                // the events just returned are flushed to the client
                // before the append, which in `sync` mode may run the
                // fdatasync on this thread.
                tokio::task::yield_now().await;
                let rest = st.relay.finish();
                let code = st.relay.saw_error().then_some("upstream_stream_error");
                if !st.finish(code).await {
                    return Some((Ok(audit_failed_event()), st));
                }
                return Some((Ok(rest), st));
            }
            let next = match st.first.take() {
                Some(first) => Some(Ok(first)),
                None => st.upstream.next().await,
            };
            match next {
                Some(Ok(chunk)) => match st.relay.push(&chunk) {
                    Ok(out) if st.relay.saw_done() && !out.is_empty() => {
                        // The events before `[DONE]` go out now, not after
                        // the record: an upstream that sends the whole
                        // stream in one read must not have its first token
                        // held behind the ledger.
                        st.closing = true;
                        if let Some(g) = st.guard.as_mut() {
                            g.mark_first_byte();
                        }
                        return Some((Ok(out), st));
                    }
                    Ok(_) if st.relay.saw_done() => {
                        st.closing = true;
                        continue;
                    }
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => {
                        if let Some(g) = st.guard.as_mut() {
                            g.mark_first_byte();
                        }
                        return Some((Ok(out), st));
                    }
                    Err(e) => {
                        let mut event = error_event(&e.to_string(), "upstream_stream_invalid");
                        if !st.finish(Some("upstream_stream_invalid")).await {
                            event = audit_failed_event();
                        }
                        return Some((Ok(event), st));
                    }
                },
                Some(Err(e)) => {
                    let code = match e {
                        ProviderError::Timeout(_) => "upstream_stream_timeout",
                        _ => "upstream_stream_interrupted",
                    };
                    tracing::warn!(error = %e, "upstream stream failed midway");
                    let mut event = error_event(&format!("the upstream stream failed: {e}"), code);
                    if !st.finish(Some(code)).await {
                        event = audit_failed_event();
                    }
                    return Some((Ok(event), st));
                }
                None => {
                    let mut out = BytesMut::from(&st.relay.finish()[..]);
                    let mut code = None;
                    if st.relay.saw_error() {
                        code = Some("upstream_stream_error");
                    } else if !st.relay.saw_done() {
                        code = Some("upstream_stream_truncated");
                        out.extend_from_slice(&error_event(
                            "the upstream stream ended before [DONE]",
                            "upstream_stream_truncated",
                        ));
                    }
                    // In sync durability the last event (normally
                    // `[DONE]`) waits until the record is on disk.
                    if !st.finish(code).await {
                        return Some((Ok(audit_failed_event()), st));
                    }
                    if out.is_empty() {
                        return None;
                    }
                    return Some((Ok(out.freeze()), st));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert!(matches!(
            route(&Method::POST, "/v1/chat/completions"),
            Ok(Route::Inference(Endpoint::ChatCompletions))
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/models/meta-llama/Llama-3"),
            Ok(Route::GetModel(id)) if id == "meta-llama/Llama-3"
        ));
        assert_eq!(
            route(&Method::GET, "/v1/embeddings")
                .err()
                .unwrap()
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            route(&Method::POST, "/v1/models").err().unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            route(&Method::POST, "/v2/chat").err().unwrap().status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }
}
