//! Token usage: taken from the upstream's answer when it reports one, and
//! otherwise counted with a tiktoken-compatible tokenizer and marked
//! `estimated`.

use custos_types::{Usage, UsageSource};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Endpoint;

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl WireUsage {
    fn into_usage(self) -> Option<Usage> {
        let prompt = self.prompt_tokens?;
        let completion = self.completion_tokens.unwrap_or(0);
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: self.total_tokens.unwrap_or(prompt + completion),
            source: UsageSource::Upstream,
        })
    }
}

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<WireUsage>,
}

/// The `usage` object of a non-streaming response, if it has a valid one.
pub fn from_response(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<WithUsage>(body)
        .ok()?
        .usage?
        .into_usage()
}

/// What one streamed chunk (`data: {...}`) tells Custos.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The chunk's usage, when it carries one.
    pub usage: Option<Usage>,
    /// Whether this is the usage-only chunk (`choices: []` plus `usage`)
    /// that exists only because Custos asked for it.
    pub usage_only: bool,
    /// Whether the chunk is an `{"error": …}` event.
    pub is_error: bool,
}

#[derive(Deserialize)]
struct WireChunk<'a> {
    usage: Option<WireUsage>,
    #[serde(borrow)]
    choices: Option<Vec<WireChoice<'a>>>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(borrow)]
    delta: Option<WireDelta<'a>>,
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// Inspects one chunk's JSON, appending any generated text to `text` (up to
/// `text_cap` bytes) for estimation should the upstream report no usage.
pub fn inspect_chunk(data: &[u8], text: &mut String, text_cap: usize) -> ChunkInfo {
    let Ok(chunk) = serde_json::from_slice::<WireChunk<'_>>(data) else {
        return ChunkInfo::default();
    };
    let mut no_choices = true;
    if let Some(choices) = &chunk.choices {
        no_choices = choices.is_empty();
        for choice in choices {
            let piece = choice
                .delta
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .or(choice.text.as_deref());
            if let Some(piece) = piece
                && text.len() + piece.len() <= text_cap
            {
                text.push_str(piece);
            }
        }
    }
    let usage = chunk.usage.and_then(WireUsage::into_usage);
    ChunkInfo {
        usage_only: usage.is_some() && no_choices,
        usage,
        is_error: chunk.error.is_some_and(|e| e.get() != "null"),
    }
}

/// The generated text of a non-streaming response, for estimation.
pub fn response_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Resp {
        choices: Option<Vec<Choice>>,
    }
    #[derive(Deserialize)]
    struct Choice {
        message: Option<Message>,
        text: Option<String>,
    }
    #[derive(Deserialize)]
    struct Message {
        content: Option<String>,
    }
    let Ok(resp) = serde_json::from_slice::<Resp>(body) else {
        return String::new();
    };
    let mut out = String::new();
    for choice in resp.choices.unwrap_or_default() {
        if let Some(t) = choice.message.and_then(|m| m.content).or(choice.text) {
            out.push_str(&t);
        }
    }
    out
}

fn bpe_for(model: &str) -> &'static tiktoken_rs::CoreBPE {
    // The o200k vocabulary is used by the GPT-4o, GPT-4.1, GPT-5 and o-series
    // families; everything else is counted with cl100k, which is close enough
    // for open models and is what most gateways use.
    let m = model.to_ascii_lowercase();
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
    ]
    .iter()
    .any(|p| m.starts_with(p));
    if o200k {
        tiktoken_rs::o200k_base_singleton()
    } else {
        tiktoken_rs::cl100k_base_singleton()
    }
}

/// Counts the tokens of `text` as `model` would.
pub fn count_tokens(model: &str, text: &str) -> u64 {
    bpe_for(model).encode_with_special_tokens(text).len() as u64
}

/// Estimates the prompt tokens of a request body.
///
/// For chat this follows OpenAI's published accounting: 3 tokens of framing
/// per message, plus the name when present, plus 3 to prime the reply.
pub fn estimate_prompt(endpoint: Endpoint, model: &str, body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    match endpoint {
        Endpoint::ChatCompletions => {
            let mut tokens = 3;
            for msg in v["messages"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                tokens += 3;
                if let Some(role) = msg["role"].as_str() {
                    tokens += count_tokens(model, role);
                }
                if let Some(name) = msg["name"].as_str() {
                    tokens += 1 + count_tokens(model, name);
                }
                tokens += count_tokens(model, &text_of(&msg["content"]));
            }
            tokens
        }
        Endpoint::Completions => count_inputs(model, &v["prompt"]),
        Endpoint::Embeddings => count_inputs(model, &v["input"]),
    }
}

/// The text of a message `content`: a string, or the `text` of its parts.
fn text_of(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A prompt or input: a string, an array of strings, or pre-tokenised arrays.
fn count_inputs(model: &str, v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => count_tokens(model, s),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                serde_json::Value::String(s) => count_tokens(model, s),
                serde_json::Value::Number(_) => 1,
                serde_json::Value::Array(tokens) => tokens.len() as u64,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_usage_is_read() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
        let u = from_response(body).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (12, 5, 17)
        );
        assert_eq!(u.source, UsageSource::Upstream);
    }

    #[test]
    fn embeddings_usage_has_no_completion() {
        let u =
            from_response(br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (8, 0, 8)
        );
    }

    #[test]
    fn missing_or_null_usage_is_none() {
        assert!(from_response(br#"{"choices":[]}"#).is_none());
        assert!(from_response(br#"{"usage":null}"#).is_none());
        assert!(from_response(b"not json").is_none());
        assert!(from_response(br#"{"usage":{"prompt_tokens":"many"}}"#).is_none());
    }

    #[test]
    fn chunks_are_inspected() {
        let mut text = String::new();
        let info = inspect_chunk(
            br#"{"choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}"#,
            &mut text,
            100,
        );
        assert_eq!(info, ChunkInfo::default());
        inspect_chunk(
            br#"{"choices":[{"delta":{"content":"lo"}}]}"#,
            &mut text,
            100,
        );
        assert_eq!(text, "Hello");
        let info = inspect_chunk(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            &mut text,
            100,
        );
        assert!(info.usage_only);
        assert_eq!(info.usage.unwrap().total_tokens, 5);
        let info = inspect_chunk(br#"{"error":{"message":"boom"}}"#, &mut text, 100);
        assert!(info.is_error);
    }

    #[test]
    fn text_cap_bounds_memory() {
        let mut text = String::new();
        for _ in 0..10 {
            inspect_chunk(
                br#"{"choices":[{"delta":{"content":"abcd"}}]}"#,
                &mut text,
                10,
            );
        }
        assert_eq!(text.len(), 8);
    }

    #[test]
    fn estimates_with_a_real_tokenizer() {
        // "Hello world" is two tokens in both cl100k and o200k.
        assert_eq!(count_tokens("gpt-4o", "Hello world"), 2);
        assert_eq!(count_tokens("llama", "Hello world"), 2);
        let body = br#"{"model":"gpt-4","messages":[{"role":"user","content":"Hello world"}]}"#;
        // 3 (priming) + 3 (message) + 1 ("user") + 2 (content).
        assert_eq!(estimate_prompt(Endpoint::ChatCompletions, "gpt-4", body), 9);
        assert_eq!(
            estimate_prompt(
                Endpoint::Embeddings,
                "e",
                br#"{"input":["Hello world",[1,2,3]]}"#
            ),
            5
        );
    }

    #[test]
    fn response_text_is_collected() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"Hi there"}}]}"#;
        assert_eq!(response_text(body), "Hi there");
        assert_eq!(response_text(br#"{"choices":[{"text":"abc"}]}"#), "abc");
    }
}
