//! Request field extraction and minimal body rewriting.
//!
//! Custos parses only the fields it needs (`model`, `stream`,
//! `stream_options`) and forwards everything else byte for byte. Rewrites are
//! splices into the original bytes, never a re-serialisation of the body.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Endpoint;

/// What Custos needs to know about an inference request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFields {
    /// The model the client asked for.
    pub model: String,
    /// Whether the client asked for an SSE stream.
    pub stream: bool,
    /// Whether the client itself asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    /// Byte range of the `model` value (including its quotes).
    model_span: Range<usize>,
    /// Byte range of the `stream_options` value, when present and not null.
    stream_options_span: Option<Range<usize>>,
    /// Byte offset of the closing `}` of the top-level object.
    closing_brace: usize,
}

/// Why a request body was rejected. Each variant maps to a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body is not valid JSON (or not valid UTF-8).
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is JSON but not an object.
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// A required field is missing.
    #[error("you must provide the `{0}` parameter")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("`{field}` must be {expected}")]
    WrongType {
        /// The field name.
        field: &'static str,
        /// What it should have been, such as `a string`.
        expected: &'static str,
    },
    /// A field appears twice; which copy wins would be ambiguous.
    #[error("the field `{0}` appears more than once")]
    Duplicate(String),
}

impl BodyError {
    /// The request parameter the error concerns, for the `param` field.
    pub fn param(&self) -> Option<&str> {
        match self {
            BodyError::Missing(f) | BodyError::WrongType { field: f, .. } => Some(f),
            BodyError::Duplicate(f) => Some(f),
            BodyError::InvalidJson(_) | BodyError::NotAnObject => None,
        }
    }
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

fn span(body: &[u8], raw: &RawValue) -> Range<usize> {
    // `raw` borrows from `body`, so its address lies inside it.
    let start = (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + raw.get().len()
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// Extracts and checks the fields Custos needs from an inference request.
pub fn extract(endpoint: Endpoint, body: &[u8]) -> Result<RequestFields, BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some() && first != Some(&b'{') {
        // Still report broken JSON as such rather than as "not an object".
        return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(e) => Err(BodyError::InvalidJson(e.to_string())),
            Ok(_) => Err(BodyError::NotAnObject),
        };
    }
    let fields: Fields<'_> = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix("duplicate field `") {
            Some(rest) => {
                BodyError::Duplicate(rest.split('`').next().unwrap_or_default().to_owned())
            }
            None => BodyError::InvalidJson(msg),
        }
    })?;
    let model_raw = fields
        .model
        .filter(|m| !is_null(m))
        .ok_or(BodyError::Missing("model"))?;
    let model: String = match serde_json::from_str::<String>(model_raw.get()) {
        Ok(m) if !m.is_empty() => m,
        Ok(_) => return Err(BodyError::Missing("model")),
        Err(_) => {
            return Err(BodyError::WrongType {
                field: "model",
                expected: "a string",
            });
        }
    };
    let stream = match fields.stream {
        None => false,
        Some(raw) => match raw.get() {
            "true" => true,
            "false" | "null" => false,
            _ => {
                return Err(BodyError::WrongType {
                    field: "stream",
                    expected: "a boolean",
                });
            }
        },
    };
    let (client_wants_usage, stream_options_span) = match fields.stream_options {
        Some(raw) if !is_null(raw) => {
            let opts: StreamOptions =
                serde_json::from_str(raw.get()).map_err(|_| BodyError::WrongType {
                    field: "stream_options",
                    expected: "an object with a boolean `include_usage`",
                })?;
            (opts.include_usage.unwrap_or(false), Some(span(body, raw)))
        }
        _ => (false, None),
    };
    match endpoint {
        Endpoint::ChatCompletions => require(fields.messages, "messages", b'[', "an array")?,
        Endpoint::Completions => require_any(fields.prompt, "prompt")?,
        Endpoint::Embeddings => require_any(fields.input, "input")?,
    }
    let closing_brace = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .unwrap_or_default();
    Ok(RequestFields {
        model,
        stream,
        client_wants_usage,
        model_span: span(body, model_raw),
        stream_options_span,
        closing_brace,
    })
}

fn require(
    raw: Option<&RawValue>,
    field: &'static str,
    opener: u8,
    expected: &'static str,
) -> Result<(), BodyError> {
    match raw {
        Some(r) if is_null(r) => Err(BodyError::Missing(field)),
        Some(r) if r.get().as_bytes().first() == Some(&opener) => Ok(()),
        Some(_) => Err(BodyError::WrongType { field, expected }),
        None => Err(BodyError::Missing(field)),
    }
}

fn require_any(raw: Option<&RawValue>, field: &'static str) -> Result<(), BodyError> {
    match raw {
        Some(r) if !is_null(r) => Ok(()),
        _ => Err(BodyError::Missing(field)),
    }
}

/// Builds the upstream body: the client's bytes with `model` replaced by the
/// upstream model name and, when `ask_usage` is set on a stream, with
/// `stream_options.include_usage` forced on.
pub fn rewrite(
    body: &[u8],
    fields: &RequestFields,
    upstream_model: &str,
    ask_usage: bool,
) -> Bytes {
    let model_json = serde_json::Value::String(upstream_model.to_owned()).to_string();
    let mut edits: Vec<(Range<usize>, Vec<u8>)> =
        vec![(fields.model_span.clone(), model_json.into_bytes())];
    if ask_usage && fields.stream && !fields.client_wants_usage {
        match &fields.stream_options_span {
            Some(span) => {
                let mut opts: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&body[span.clone()]).unwrap_or_default();
                opts.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
                edits.push((
                    span.clone(),
                    serde_json::Value::Object(opts).to_string().into_bytes(),
                ));
            }
            None => edits.push((
                fields.closing_brace..fields.closing_brace,
                br#","stream_options":{"include_usage":true}"#.to_vec(),
            )),
        }
    }
    edits.sort_by_key(|(r, _)| r.start);
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + extra);
    let mut at = 0;
    for (range, bytes) in edits {
        out.put_slice(&body[at..range.start]);
        out.put_slice(&bytes);
        at = range.end;
    }
    out.put_slice(&body[at..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<RequestFields, BodyError> {
        extract(Endpoint::ChatCompletions, body.as_bytes())
    }

    #[test]
    fn extracts_model_and_stream() {
        let f = chat(r#"{"model":"gpt-4o","messages":[],"stream":true}"#).unwrap();
        assert_eq!(f.model, "gpt-4o");
        assert!(f.stream);
        assert!(!f.client_wants_usage);
    }

    #[test]
    fn rewrite_replaces_only_the_model() {
        let body = r#"{ "seed": 7, "model" : "gpt-4o", "tools":[{"x":"model"}], "messages":[{"role":"user","content":"hi"}] }"#;
        let f = chat(body).unwrap();
        let out = rewrite(body.as_bytes(), &f, "gpt-4o-2024-08-06", true);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "seed": 7, "model" : "gpt-4o-2024-08-06", "tools":[{"x":"model"}], "messages":[{"role":"user","content":"hi"}] }"#
        );
    }

    #[test]
    fn rewrite_injects_usage_for_streams() {
        let body = "{\"model\":\"m\",\"messages\":[],\"stream\":true}\n";
        let f = chat(body).unwrap();
        let out = rewrite(body.as_bytes(), &f, "up", true);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{\"model\":\"up\",\"messages\":[],\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n"
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn rewrite_merges_existing_stream_options() {
        let body = r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false,"other":1}}"#;
        let f = chat(body).unwrap();
        assert!(!f.client_wants_usage);
        let out = rewrite(body.as_bytes(), &f, "m", true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["other"], 1);
    }

    #[test]
    fn client_usage_request_is_left_alone() {
        let body =
            r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;
        let f = chat(body).unwrap();
        assert!(f.client_wants_usage);
        let out = rewrite(body.as_bytes(), &f, "m", true);
        assert_eq!(&out[..], body.as_bytes());
    }

    #[test]
    fn model_names_are_json_escaped() {
        let body = r#"{"model":"a","messages":[]}"#;
        let f = chat(body).unwrap();
        let out = rewrite(body.as_bytes(), &f, "we\"ird/\u{e9}", false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "we\"ird/\u{e9}");
    }

    #[test]
    fn bad_bodies_are_classified() {
        use BodyError::*;
        let cases: &[(&str, BodyError)] = &[
            (
                "",
                InvalidJson("EOF while parsing a value at line 1 column 0".into()),
            ),
            (
                "{",
                InvalidJson("EOF while parsing an object at line 1 column 1".into()),
            ),
            ("[1]", NotAnObject),
            ("\"x\"", NotAnObject),
            (r#"{"messages":[]}"#, Missing("model")),
            (r#"{"model":null,"messages":[]}"#, Missing("model")),
            (r#"{"model":"","messages":[]}"#, Missing("model")),
            (
                r#"{"model":5,"messages":[]}"#,
                WrongType {
                    field: "model",
                    expected: "a string",
                },
            ),
            (r#"{"model":"m"}"#, Missing("messages")),
            (
                r#"{"model":"m","messages":"hi"}"#,
                WrongType {
                    field: "messages",
                    expected: "an array",
                },
            ),
            (
                r#"{"model":"m","messages":[],"stream":"yes"}"#,
                WrongType {
                    field: "stream",
                    expected: "a boolean",
                },
            ),
            (
                r#"{"model":"m","messages":[],"stream_options":3}"#,
                WrongType {
                    field: "stream_options",
                    expected: "an object with a boolean `include_usage`",
                },
            ),
            (
                r#"{"model":"a","model":"b","messages":[]}"#,
                Duplicate("model".into()),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(&chat(body).unwrap_err(), want, "{body}");
        }
    }

    #[test]
    fn invalid_utf8_is_invalid_json() {
        let body = b"{\"model\":\"\xff\xfe\",\"messages\":[]}";
        assert!(matches!(
            extract(Endpoint::ChatCompletions, body),
            Err(BodyError::InvalidJson(_))
        ));
    }

    #[test]
    fn other_endpoints_need_their_inputs() {
        assert_eq!(
            extract(Endpoint::Embeddings, br#"{"model":"m"}"#).unwrap_err(),
            BodyError::Missing("input")
        );
        assert_eq!(
            extract(Endpoint::Completions, br#"{"model":"m","input":"x"}"#).unwrap_err(),
            BodyError::Missing("prompt")
        );
        assert!(extract(Endpoint::Embeddings, br#"{"model":"m","input":["a","b"]}"#).is_ok());
    }
}
