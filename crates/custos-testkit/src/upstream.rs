//! A scripted OpenAI-compatible upstream: a real HTTP server on 127.0.0.1
//! that answers each request with the next scripted [`Reply`] (or the
//! default one), records what it received, and counts clients that went
//! away before an answer was complete.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How a scripted stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// Sends `data: [DONE]` and closes normally.
    Done,
    /// Closes normally without `[DONE]`.
    Close,
    /// Breaks the connection midway.
    Abort,
    /// Stops sending but keeps the connection open.
    Hang,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A whole JSON answer.
    Json {
        /// HTTP status.
        status: u16,
        /// Body text.
        body: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// An OpenAI-style chat stream: a role chunk, one chunk per piece, a
    /// finish chunk, a usage chunk when the request asked for it and
    /// `usage` is set, then the end.
    ChatStream {
        /// Content pieces.
        pieces: Vec<String>,
        /// Delay before each chunk.
        delay: Duration,
        /// Report usage when asked.
        usage: bool,
        /// How the stream ends.
        end: StreamEnd,
    },
    /// Waits, then answers.
    Delay(Duration, Box<Reply>),
    /// Never answers.
    Hang,
}

impl Reply {
    /// A 200 chat completion with this content and usage.
    pub fn chat(content: &str) -> Reply {
        Reply::json(200, &chat_body(content, true))
    }

    /// A 200 chat completion without a `usage` object.
    pub fn chat_without_usage(content: &str) -> Reply {
        Reply::json(200, &chat_body(content, false))
    }

    /// A JSON answer.
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Json {
            status,
            body: body.to_owned(),
            headers: Vec::new(),
        }
    }

    /// An OpenAI error answer.
    pub fn error(status: u16, message: &str) -> Reply {
        let body = serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
        Reply::json(status, &body.to_string())
    }

    /// A chat stream of these pieces, 5 ms apart, ending with `[DONE]`.
    pub fn stream(pieces: &[&str]) -> Reply {
        Reply::ChatStream {
            pieces: pieces.iter().map(|s| (*s).to_owned()).collect(),
            delay: Duration::from_millis(5),
            usage: true,
            end: StreamEnd::Done,
        }
    }
}

/// Usage figures the mock reports: fixed, so tests can assert them.
pub const MOCK_USAGE: (u64, u64) = (11, 7);

fn chat_body(content: &str, usage: bool) -> String {
    let mut v = serde_json::json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "upstream-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    });
    if usage {
        v["usage"] = serde_json::json!({"prompt_tokens": MOCK_USAGE.0, "completion_tokens": MOCK_USAGE.1, "total_tokens": MOCK_USAGE.0 + MOCK_USAGE.1});
    }
    v.to_string()
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    received: Mutex<Vec<Received>>,
    disconnects: AtomicUsize,
    changed: Notify,
}

/// A running mock upstream.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Starts a mock that answers every request with `default`.
    pub async fn start(default: Reply) -> MockUpstream {
        let shared = Arc::new(Shared {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            received: Mutex::new(Vec::new()),
            disconnects: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockUpstream { addr, shared, task }
    }

    /// Queues replies used, in order, before the default.
    pub fn push(&self, reply: Reply) {
        self.shared.script.lock().unwrap().push_back(reply);
    }

    /// Replaces the default reply.
    pub fn set_default(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = reply;
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// How many clients went away before their answer was complete.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }

    /// Waits until `disconnects() >= n`, failing the test after 10 s.
    pub async fn wait_disconnects(&self, n: usize) {
        let wait = async {
            loop {
                let notified = self.shared.changed.notified();
                if self.disconnects() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "upstream saw {} disconnects, wanted {n}",
                    self.disconnects()
                )
            });
    }
}

/// Counts a disconnect unless defused: dropped early means the client left.
struct DropFlag {
    shared: Arc<Shared>,
    armed: bool,
}

impl DropFlag {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if self.armed {
            self.shared.disconnects.fetch_add(1, Ordering::SeqCst);
            self.shared.changed.notify_waiters();
        }
    }
}

async fn answer(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body,
    };
    let wants_usage = serde_json::from_slice::<serde_json::Value>(&received.body)
        .map(|v| v["stream_options"]["include_usage"] == true)
        .unwrap_or(false);
    shared.received.lock().unwrap().push(received);
    shared.changed.notify_waiters();
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| shared.default.lock().unwrap().clone());
    let mut flag = DropFlag {
        shared: shared.clone(),
        armed: true,
    };
    let resp = respond(reply, wants_usage, &shared).await;
    flag.disarm();
    resp
}

async fn respond(mut reply: Reply, wants_usage: bool, shared: &Arc<Shared>) -> Response {
    loop {
        match reply {
            Reply::Delay(d, next) => {
                tokio::time::sleep(d).await;
                reply = *next;
            }
            Reply::Hang => std::future::pending::<()>().await,
            Reply::Json {
                status,
                body,
                headers,
            } => {
                let mut b = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("x-request-id", "upstream-req-1");
                for (k, v) in headers {
                    b = b.header(k, v);
                }
                return b.body(Body::from(body)).unwrap();
            }
            Reply::ChatStream {
                pieces,
                delay,
                usage,
                end,
            } => {
                let mut events: Vec<String> = Vec::new();
                let chunk = |delta: serde_json::Value, finish: Option<&str>| {
                    let mut v = serde_json::json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "upstream-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                    if wants_usage {
                        v["usage"] = serde_json::Value::Null;
                    }
                    format!("data: {v}\n\n")
                };
                events.push(chunk(
                    serde_json::json!({"role": "assistant", "content": ""}),
                    None,
                ));
                for p in &pieces {
                    events.push(chunk(serde_json::json!({"content": p}), None));
                }
                events.push(chunk(serde_json::json!({}), Some("stop")));
                if usage && wants_usage {
                    let u = serde_json::json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "upstream-model", "choices": [], "usage": {"prompt_tokens": MOCK_USAGE.0, "completion_tokens": MOCK_USAGE.1, "total_tokens": MOCK_USAGE.0 + MOCK_USAGE.1}});
                    events.push(format!("data: {u}\n\n"));
                }
                if end == StreamEnd::Done {
                    events.push("data: [DONE]\n\n".to_owned());
                }
                let flag = DropFlag {
                    shared: shared.clone(),
                    armed: true,
                };
                let stream = futures_util::stream::unfold(
                    (events.into_iter(), flag, end),
                    move |(mut it, mut flag, end)| async move {
                        tokio::time::sleep(delay).await;
                        match it.next() {
                            Some(ev) => Some((
                                Ok::<Bytes, std::io::Error>(Bytes::from(ev)),
                                (it, flag, end),
                            )),
                            None => match end {
                                StreamEnd::Done | StreamEnd::Close => {
                                    flag.disarm();
                                    None
                                }
                                StreamEnd::Abort => {
                                    flag.disarm();
                                    Some((
                                        Err(std::io::Error::other("abort")),
                                        (it, flag, StreamEnd::Close),
                                    ))
                                }
                                StreamEnd::Hang => {
                                    std::future::pending::<()>().await;
                                    None
                                }
                            },
                        }
                    },
                );
                return Response::builder()
                    .status(200)
                    .header("content-type", "text/event-stream")
                    .header("x-request-id", "upstream-req-stream")
                    .body(Body::from_stream(stream.map(|r| r)))
                    .unwrap();
            }
        }
    }
}

/// An address where nothing listens: connecting fails at once.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A server that accepts connections and closes them without answering.
pub async fn resetting_server() -> (SocketAddr, tokio::task::JoinHandle<Infallible>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }
    });
    (addr, task)
}
