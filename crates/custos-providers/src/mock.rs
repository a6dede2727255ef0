//! The built-in `mock` provider: an offline model that answers like an
//! OpenAI-compatible server, streams in several chunks with configurable
//! latency, and reports realistic usage. It lets the quickstart, the SDK
//! tests and demos run with no network and no credentials.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use custos_config::MockSettings;
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::{Endpoint, ProviderError, RawResponse, UpstreamRequest};

/// The in-process mock model.
pub struct MockProvider {
    settings: MockSettings,
    counter: AtomicU64,
}

#[derive(Deserialize, Default)]
struct MockRequest {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    messages: Option<Vec<serde_json::Value>>,
    prompt: Option<serde_json::Value>,
    input: Option<serde_json::Value>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl MockProvider {
    /// A mock with these settings.
    pub fn new(settings: MockSettings) -> Self {
        MockProvider {
            settings,
            counter: AtomicU64::new(0),
        }
    }

    pub(crate) async fn send(
        &self,
        req: UpstreamRequest<'_>,
    ) -> Result<RawResponse, ProviderError> {
        tokio::time::sleep(self.settings.latency).await;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let upstream_request_id = Some(format!("mock-{n:08}"));
        let parsed: MockRequest = match serde_json::from_slice(&req.body) {
            Ok(p) => p,
            Err(e) => {
                let body = json!({"error": {"message": format!("mock: invalid request: {e}"), "type": "invalid_request_error", "param": null, "code": null}});
                return Ok(full(
                    StatusCode::BAD_REQUEST,
                    body.to_string(),
                    upstream_request_id,
                ));
            }
        };
        let model = parsed.model.clone().unwrap_or_else(|| "mock".to_owned());
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = format!("mock-{n:08}");
        match req.endpoint {
            Endpoint::Embeddings => {
                let body = embeddings(&parsed, &model, self.settings.embedding_dimensions);
                Ok(full(StatusCode::OK, body, upstream_request_id))
            }
            Endpoint::ChatCompletions | Endpoint::Completions => {
                let chat = req.endpoint == Endpoint::ChatCompletions;
                let prompt_text = prompt_text(&parsed);
                let prompt_tokens = approx_tokens(&prompt_text) + if chat { 7 } else { 0 };
                let limit = parsed.max_completion_tokens.or(parsed.max_tokens);
                let pieces = answer(&prompt_text, self.settings.chunks, limit);
                let completion_tokens: u64 = pieces.iter().map(|p| approx_tokens(p)).sum();
                let usage = json!({
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                });
                if parsed.stream {
                    let include_usage = parsed
                        .stream_options
                        .as_ref()
                        .is_some_and(|o| o.include_usage);
                    let events = stream_events(
                        chat,
                        &id,
                        created,
                        &model,
                        &pieces,
                        include_usage.then_some(usage),
                    );
                    Ok(RawResponse {
                        status: StatusCode::OK,
                        content_type: Some(HeaderValue::from_static("text/event-stream")),
                        upstream_request_id,
                        retry_after: None,
                        body: paced(events, self.settings.chunk_delay),
                    })
                } else {
                    let text = pieces.concat();
                    let body = if chat {
                        json!({
                            "id": format!("chatcmpl-{id}"),
                            "object": "chat.completion",
                            "created": created,
                            "model": model,
                            "choices": [{
                                "index": 0,
                                "message": {"role": "assistant", "content": text, "refusal": null},
                                "logprobs": null,
                                "finish_reason": "stop",
                            }],
                            "usage": usage,
                            "system_fingerprint": "custos-mock",
                        })
                    } else {
                        json!({
                            "id": format!("cmpl-{id}"),
                            "object": "text_completion",
                            "created": created,
                            "model": model,
                            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
                            "usage": usage,
                        })
                    };
                    Ok(full(StatusCode::OK, body.to_string(), upstream_request_id))
                }
            }
        }
    }
}

fn full(status: StatusCode, body: String, upstream_request_id: Option<String>) -> RawResponse {
    let body = Bytes::from(body);
    RawResponse {
        status,
        content_type: Some(HeaderValue::from_static("application/json")),
        upstream_request_id,
        retry_after: None,
        body: Box::pin(futures_util::stream::iter([Ok(body)])),
    }
}

/// Emits each event after `delay`, like a model generating tokens.
fn paced(events: Vec<Bytes>, delay: Duration) -> crate::ByteStream {
    Box::pin(futures_util::stream::unfold(
        (events.into_iter(), true),
        move |(mut it, first)| async move {
            let next = it.next()?;
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok(next), (it, false)))
        },
    ))
}

fn stream_events(
    chat: bool,
    id: &str,
    created: u64,
    model: &str,
    pieces: &[String],
    usage: Option<serde_json::Value>,
) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(pieces.len() + 4);
    let with_usage = usage.is_some();
    let usage_null = |mut v: serde_json::Value| {
        if with_usage {
            v["usage"] = serde_json::Value::Null;
        }
        v
    };
    let event = |v: serde_json::Value| Bytes::from(format!("data: {v}\n\n"));
    if chat {
        let base = |delta: serde_json::Value, finish: Option<&str>| {
            json!({
                "id": format!("chatcmpl-{id}"),
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "custos-mock",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
        };
        out.push(event(usage_null(base(
            json!({"role": "assistant", "content": ""}),
            None,
        ))));
        for piece in pieces {
            out.push(event(usage_null(base(json!({"content": piece}), None))));
        }
        out.push(event(usage_null(base(json!({}), Some("stop")))));
    } else {
        for (i, piece) in pieces.iter().enumerate() {
            let finish = (i + 1 == pieces.len()).then_some("stop");
            out.push(event(usage_null(json!({
                "id": format!("cmpl-{id}"),
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": piece, "logprobs": null, "finish_reason": finish}],
            }))));
        }
    }
    if let Some(usage) = usage {
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let prefix = if chat { "chatcmpl" } else { "cmpl" };
        out.push(event(json!({
            "id": format!("{prefix}-{id}"),
            "object": object,
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        })));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn prompt_text(req: &MockRequest) -> String {
    if let Some(messages) = &req.messages {
        let mut out = String::new();
        for m in messages {
            match &m["content"] {
                serde_json::Value::String(s) => out.push_str(s),
                serde_json::Value::Array(parts) => {
                    for p in parts {
                        if let Some(t) = p["text"].as_str() {
                            out.push_str(t);
                        }
                    }
                }
                _ => {}
            }
            out.push('\n');
        }
        return out;
    }
    match &req.prompt {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Roughly four characters a token, as OpenAI's rule of thumb says.
fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64)
        .div_ceil(4)
        .max(u64::from(!text.is_empty()))
}

/// The answer, split into `chunks` pieces (fewer when `max_tokens` is small).
fn answer(prompt: &str, chunks: usize, max_tokens: Option<u64>) -> Vec<String> {
    let last_line = prompt
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let echo: String = last_line.chars().take(120).collect();
    let text = if echo.is_empty() {
        "This is a mock response from Custos.".to_owned()
    } else {
        format!("This is a mock response from Custos. You said: {echo}")
    };
    let mut words: Vec<&str> = text.split_inclusive(' ').collect();
    if let Some(max) = max_tokens {
        words.truncate(usize::try_from(max.max(1)).unwrap_or(usize::MAX));
    }
    let per = words.len().div_ceil(chunks.max(1)).max(1);
    words.chunks(per).map(|c| c.concat()).collect()
}

fn embeddings(req: &MockRequest, model: &str, default_dims: usize) -> String {
    let inputs: Vec<String> = match &req.input {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(other) => vec![other.to_string()],
        None => Vec::new(),
    };
    let dims = req
        .dimensions
        .filter(|d| (1..=65_536).contains(d))
        .unwrap_or(default_dims);
    let base64 = req.encoding_format.as_deref() == Some("base64");
    let mut prompt_tokens = 0;
    let data: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            prompt_tokens += approx_tokens(text);
            let v = vector(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
    .to_string()
}

/// A deterministic unit vector derived from the text (FNV-1a seeded
/// xorshift), so equal inputs embed equally.
fn vector(text: &str, dims: usize) -> Vec<f32> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    for x in &mut v {
        *x /= norm;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_is_split_into_chunks() {
        let pieces = answer("user: hello there", 4, None);
        assert_eq!(pieces.len(), 4);
        assert_eq!(
            pieces.concat(),
            "This is a mock response from Custos. You said: user: hello there"
        );
        assert_eq!(answer("x", 4, Some(2)).concat(), "This is ");
    }

    #[test]
    fn vectors_are_deterministic_unit_vectors() {
        let a = vector("hello", 64);
        assert_eq!(a, vector("hello", 64));
        assert_ne!(a, vector("hellp", 64));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn stream_ends_with_usage_then_done() {
        let events = stream_events(
            true,
            "x",
            0,
            "m",
            &["a".into(), "b".into()],
            Some(json!({"total_tokens": 3})),
        );
        assert_eq!(events.len(), 6);
        assert!(
            std::str::from_utf8(&events[4])
                .unwrap()
                .contains("\"choices\":[]")
        );
        assert_eq!(&events[5][..], b"data: [DONE]\n\n");
    }
}
