//! The SSE relay: a synchronous state machine that takes upstream bytes as
//! they arrive and returns, at once, every complete event to forward.
//!
//! It reads each event's usage, drops the usage-only chunk when Custos asked
//! for it on the client's behalf, notices `[DONE]` and error events, and keeps
//! the generated text (bounded) for estimation. It never holds more than one
//! incomplete event.
//!
//! Parsing every event's JSON was most of a stream's cost (issue #8), and
//! most events can only contribute generated text, which is needed only if
//! the upstream never reports usage. So an event is parsed at once only
//! when its bytes could hold a usage object, an error or an escaped key
//! (see `needs_parse`), and only for those; every event's data is kept, up
//! to `DEFER_CAP` bytes, and parsed for its text only if the text is asked
//! for (no usage came) or the cap is reached, in order, so the text comes
//! out the same as parsing each event at once would give. With usage
//! reported, the kept events are dropped unparsed.

use bytes::{BufMut, Bytes, BytesMut};
use custos_types::Usage;

use crate::usage::{ChunkInfo, inspect_chunk};

/// Largest single event accepted; larger means a broken or hostile upstream.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Generated text kept for estimation when no usage arrives.
const TEXT_CAP: usize = 1024 * 1024;

/// Event data kept unparsed, at most, before it is parsed for its text.
const DEFER_CAP: usize = 128 * 1024;

/// Why a stream could not be relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// One event grew past [`MAX_EVENT_BYTES`] without ending.
    #[error("an upstream stream event exceeded {MAX_EVENT_BYTES} bytes")]
    EventTooLarge,
}

/// Relays one SSE stream.
#[derive(Debug)]
pub struct SseRelay {
    pending: BytesMut,
    strip_usage: bool,
    usage: Option<Usage>,
    done: bool,
    upstream_error: bool,
    events: u64,
    text: String,
    /// Events' data not parsed yet: they can only hold generated text.
    deferred: Vec<Vec<u8>>,
    deferred_bytes: usize,
    held: BytesMut,
}

impl SseRelay {
    /// A relay; `strip_usage` drops the usage-only chunk, for clients that
    /// did not ask for it.
    pub fn new(strip_usage: bool) -> Self {
        SseRelay {
            pending: BytesMut::new(),
            strip_usage,
            usage: None,
            done: false,
            upstream_error: false,
            events: 0,
            text: String::new(),
            deferred: Vec::new(),
            deferred_bytes: 0,
            held: BytesMut::new(),
        }
    }

    /// Feeds upstream bytes and returns what to forward now, possibly empty.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, RelayError> {
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        let mut start = 0;
        while let Some((end, next)) = find_boundary(&pending[start..]) {
            let was_done = self.done;
            if self.inspect(&pending[start..start + end]) {
                let event = &pending[start..start + next];
                if self.done && !was_done {
                    // `[DONE]` is held back: it is the stream's final event
                    // and goes out only once the request is recorded.
                    self.held.put_slice(event);
                } else if self.strip_usage {
                    put_without_null_usage(&mut out, event);
                } else {
                    out.put_slice(event);
                }
            }
            start += next;
        }
        let _ = pending.split_to(start);
        self.pending = pending;
        if self.pending.len() > MAX_EVENT_BYTES {
            return Err(RelayError::EventTooLarge);
        }
        Ok(out.freeze())
    }

    /// The stream is over: returns any trailing partial event (forwarded as
    /// it is rather than dropped), then the held-back `[DONE]` event.
    pub fn finish(&mut self) -> Bytes {
        let rest = self.pending.split().freeze();
        if !rest.iter().all(u8::is_ascii_whitespace) {
            let trimmed = rest.clone();
            self.inspect(trim_end(&trimmed));
        }
        let mut out = BytesMut::from(&rest[..]);
        out.put_slice(&self.held.split());
        out.freeze()
    }

    /// Whether `data: [DONE]` was seen. The event itself is held back
    /// until [`SseRelay::finish`].
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// Whether the upstream sent an `{"error": …}` event.
    pub fn saw_error(&self) -> bool {
        self.upstream_error
    }

    /// The usage the upstream reported, if any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Number of events seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The generated text seen so far (bounded), for estimation.
    pub fn generated_text(&mut self) -> &str {
        self.parse_deferred();
        &self.text
    }

    /// Parses the deferred events for their text, in order.
    fn parse_deferred(&mut self) {
        for data in self.deferred.drain(..) {
            inspect_chunk(&data, &mut self.text, TEXT_CAP);
        }
        self.deferred_bytes = 0;
    }

    /// Reads one event; returns whether to forward it.
    fn inspect(&mut self, event: &[u8]) -> bool {
        self.events += 1;
        let mut data: Vec<u8> = Vec::new();
        let mut lines = 0;
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if lines > 0 {
                    data.push(b'\n');
                }
                data.extend_from_slice(rest);
                lines += 1;
            }
        }
        if lines == 0 {
            return true;
        }
        if trim_end(&data) == b"[DONE]" {
            self.done = true;
            return true;
        }
        let info = if self.deferred_bytes + data.len() <= DEFER_CAP {
            // Usage and errors now, from the events that can hold them; the
            // text later, in order, and only if it is asked for.
            let info = if needs_parse(&data) {
                inspect_chunk(&data, &mut String::new(), 0)
            } else {
                ChunkInfo::default()
            };
            self.deferred_bytes += data.len();
            self.deferred.push(data);
            info
        } else {
            self.parse_deferred();
            inspect_chunk(&data, &mut self.text, TEXT_CAP)
        };
        if info.is_error {
            self.upstream_error = true;
        }
        if let Some(usage) = info.usage {
            self.usage = Some(usage);
        }
        !(self.strip_usage && info.usage_only)
    }
}

/// Whether an event's data could hold a usage object or an error, and so
/// must be parsed now. A `false` is certain: a `"usage"` key with an object
/// value has the bytes `"usage"`, optional whitespace, `:`, optional
/// whitespace and `{`; an `"error"` key has `"error"`; and a key spelled
/// with `\u` escapes is caught by the escape itself. A `true` may be a
/// false alarm (the same bytes inside a string), which only costs a parse.
fn needs_parse(data: &[u8]) -> bool {
    if memchr::memmem::find(data, b"\\u").is_some()
        || memchr::memmem::find(data, b"\"error\"").is_some()
    {
        return true;
    }
    memchr::memmem::find_iter(data, b"\"usage\"").any(|at| {
        let rest = &data[at + b"\"usage\"".len()..];
        let rest = trim_start(rest);
        match rest.split_first() {
            Some((b':', value)) => trim_start(value).first() == Some(&b'{'),
            _ => false,
        }
    })
}

fn trim_start(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(b.len());
    &b[start..]
}

/// Copies an event, removing the `"usage":null` members that exist only
/// because Custos asked for usage on the client's behalf.
fn put_without_null_usage(out: &mut BytesMut, event: &[u8]) {
    const WITH_COMMA_AFTER: &[u8] = b"\"usage\":null,";
    const WITH_COMMA_BEFORE: &[u8] = b",\"usage\":null";
    let finder = memchr::memmem::find(event, WITH_COMMA_BEFORE)
        .map(|i| (i, WITH_COMMA_BEFORE.len()))
        .or_else(|| {
            memchr::memmem::find(event, WITH_COMMA_AFTER).map(|i| (i, WITH_COMMA_AFTER.len()))
        });
    match finder {
        Some((i, len)) => {
            out.put_slice(&event[..i]);
            out.put_slice(&event[i + len..]);
        }
        None => out.put_slice(event),
    }
}

fn trim_end(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &b[..end]
}

/// Finds the first blank line: returns (end of event, start of next event).
fn find_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let i = from + i;
        match buf.get(i + 1) {
            Some(b'\n') => return Some((i, i + 2)),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some((i, i + 3)),
            _ => from = i + 1,
        }
    }
    None
}

/// An SSE event in the OpenAI error shape, used to end a stream that failed
/// midway so the client never mistakes a truncation for a complete answer.
pub fn error_event(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": "upstream_error",
            "param": null,
            "code": code,
        }
    });
    Bytes::from(format!("data: {body}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &str =
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn all() -> String {
        format!("{CONTENT}{CONTENT}{USAGE}{DONE}")
    }

    #[test]
    fn only_events_that_could_carry_usage_or_an_error_are_parsed_at_once() {
        let yes: &[&str] = &[
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
            r#"{"usage" :	{"prompt_tokens":1}}"#,
            "{\"usage\":\n{}}",
            r#"{"usage":null,"x":1,"usage":{"prompt_tokens":1}}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            r#"{"error":null}"#,
            r#"{"\u0075sage":{"prompt_tokens":1}}"#,
            r#"{"choices":[{"delta":{"content":"caf\u00e9"}}]}"#,
            // False alarms cost a parse, nothing else.
            r#"{"choices":[{"delta":{},"finish_reason":"error"}]}"#,
        ];
        let no: &[&str] = &[
            r#"{"choices":[{"delta":{"content":"Hi"}}],"usage":null}"#,
            r#"{"choices":[{"delta":{"content":"Hi"}}]}"#,
            r#"{"usage": [], "choices":[]}"#,
            // Quotes inside a string are escaped, so no key can match.
            r#"{"choices":[{"delta":{"content":"\"usage\": {"}}]}"#,
            r#"{"choices":[{"delta":{"content":"\"error\""}}]}"#,
            r#"{"choices":[{"delta":{"content":"usage"}}]}"#,
        ];
        for d in yes {
            assert!(needs_parse(d.as_bytes()), "{d}");
        }
        for d in no {
            assert!(!needs_parse(d.as_bytes()), "{d}");
        }
    }

    /// A stream longer than the deferral cap, with events of every kind in
    /// it: what the relay reports is what parsing each event at once gives.
    #[test]
    fn deferred_parsing_gives_the_same_text_usage_and_errors() {
        let mut stream = String::new();
        let mut expected = String::new();
        for i in 0..3000 {
            let piece = format!("t{i} ");
            expected.push_str(&piece);
            let event = match i {
                // An escaped character: parsed at once, after the deferred.
                700 => {
                    expected.truncate(expected.len() - piece.len());
                    expected.push_str("caf\u{e9} ");
                    "data: {\"choices\":[{\"delta\":{\"content\":\"caf\\u00e9 \"}}],\"usage\":null}\n\n".to_owned()
                }
                1500 => {
                    expected.truncate(expected.len() - piece.len());
                    "data: {\"error\":{\"message\":\"blip\"}}\n\n".to_owned()
                }
                _ => format!(
                    "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{piece}\"}}}}],\"usage\":null}}\n\n"
                ),
            };
            stream.push_str(&event);
        }
        let mut relay = SseRelay::new(true);
        // In uneven pieces, as a network delivers them.
        for piece in stream.as_bytes().chunks(977) {
            relay.push(piece).unwrap();
        }
        relay.finish();
        assert!(relay.saw_error());
        assert_eq!(relay.usage(), None);
        assert_eq!(relay.events(), 3000);
        assert_eq!(relay.generated_text(), expected);

        // With a usage chunk at the end, the usage is read and the text is
        // still all there if asked for.
        let mut relay = SseRelay::new(true);
        relay.push(stream.as_bytes()).unwrap();
        relay.push(USAGE.as_bytes()).unwrap();
        assert_eq!(relay.usage().map(|u| u.total_tokens), Some(5));
        assert_eq!(relay.generated_text(), expected);
    }

    #[test]
    fn forwards_whole_events_and_strips_usage() {
        let mut relay = SseRelay::new(true);
        let mut out = relay.push(all().as_bytes()).unwrap().to_vec();
        out.extend_from_slice(&relay.finish());
        let stripped = CONTENT.replace(",\"usage\":null", "");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            format!("{stripped}{stripped}{DONE}")
        );
        assert!(relay.saw_done());
        assert_eq!(relay.usage().unwrap().total_tokens, 5);
        assert_eq!(relay.generated_text(), "HiHi");
    }

    #[test]
    fn null_usage_members_are_removed_when_stripping() {
        let mut relay = SseRelay::new(true);
        let out = relay
            .push(b"data: {\"id\":\"c\",\"usage\":null}\n\ndata: {\"usage\":null,\"id\":\"d\"}\n\n")
            .unwrap();
        assert_eq!(
            &out[..],
            b"data: {\"id\":\"c\"}\n\ndata: {\"id\":\"d\"}\n\n"
        );
    }

    #[test]
    fn keeps_usage_when_client_asked() {
        let mut relay = SseRelay::new(false);
        let mut out = relay.push(all().as_bytes()).unwrap().to_vec();
        assert!(!out.ends_with(DONE.as_bytes()), "[DONE] is held back");
        out.extend_from_slice(&relay.finish());
        assert_eq!(std::str::from_utf8(&out).unwrap(), all());
    }

    #[test]
    fn byte_by_byte_gives_the_same_result() {
        for strip in [false, true] {
            let mut whole = SseRelay::new(strip);
            let mut expected = whole.push(all().as_bytes()).unwrap().to_vec();
            expected.extend_from_slice(&whole.finish());
            let mut relay = SseRelay::new(strip);
            let mut got = Vec::new();
            for b in all().as_bytes() {
                got.extend_from_slice(&relay.push(&[*b]).unwrap());
            }
            got.extend_from_slice(&relay.finish());
            assert_eq!(got, expected);
            assert!(relay.saw_done());
        }
    }

    #[test]
    fn crlf_framing_is_understood() {
        let mut relay = SseRelay::new(true);
        let text = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"total_tokens\":1}}\r\n\r\ndata: [DONE]\r\n\r\n";
        assert!(relay.push(text.as_bytes()).unwrap().is_empty());
        assert_eq!(&relay.finish()[..], b"data: [DONE]\r\n\r\n");
        assert_eq!(relay.usage().unwrap().prompt_tokens, 1);
    }

    #[test]
    fn partial_event_is_held_back_until_complete() {
        let mut relay = SseRelay::new(false);
        assert!(relay.push(b"data: {\"choices\":[]").unwrap().is_empty());
        assert_eq!(
            &relay.push(b"}\n\n").unwrap()[..],
            b"data: {\"choices\":[]}\n\n"
        );
    }

    #[test]
    fn comments_and_unknown_fields_pass_through() {
        let mut relay = SseRelay::new(true);
        let text = ": keep-alive\n\nevent: ping\ndata: {}\n\n";
        assert_eq!(&relay.push(text.as_bytes()).unwrap()[..], text.as_bytes());
    }

    #[test]
    fn error_events_are_noticed() {
        let mut relay = SseRelay::new(true);
        relay
            .push(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n")
            .unwrap();
        assert!(relay.saw_error());
    }

    #[test]
    fn trailing_partial_event_is_returned_at_finish() {
        let mut relay = SseRelay::new(false);
        relay.push(b"data: [DONE]").unwrap();
        assert!(!relay.saw_done());
        assert_eq!(&relay.finish()[..], b"data: [DONE]");
        assert!(relay.saw_done());
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut relay = SseRelay::new(false);
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert_eq!(relay.push(&big), Err(RelayError::EventTooLarge));
    }

    #[test]
    fn error_event_is_openai_shaped() {
        let ev = error_event("upstream closed", "upstream_stream_interrupted");
        let text = std::str::from_utf8(&ev).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(json["error"]["code"], "upstream_stream_interrupted");
        assert!(text.ends_with("\n\n"));
    }
}
