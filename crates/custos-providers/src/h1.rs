//! Plain-HTTP/1.1 upstream connections, pooled, and driven by the task of
//! the request that uses them.
//!
//! hyper-util's pooled client runs every connection as a task of its own:
//! a request hands its message to that task, which writes it, reads the
//! answer and hands it back, and each request also spawns a task that
//! returns the connection to the pool. On a two-core machine those
//! hand-offs wake the other runtime worker several times per request
//! (issue #8). Here a request checks a connection out, drives it itself
//! until its response body ends, and puts it back: one task, no spawn.
//!
//! Used for `http://` upstreams that no outbound proxy applies to (a
//! self-hosted vLLM, Ollama or llama.cpp server next to the gateway);
//! `https://` and proxied upstreams keep hyper-util's client, whose TLS
//! and HTTP/2 this does not replace.
//!
//! A connection is reused only after its response body was read to the
//! end. An idle connection is polled once when checked out, so one the
//! upstream closed meanwhile is discarded rather than used; one that the
//! upstream closes in the instant between that check and the request is
//! retried once on a new connection, as long as hyper reports that the
//! request was not sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{ProviderError, TimeoutPhase};

type Driver = Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// How long an unused connection is kept. Below nginx's default
/// `keepalive_timeout` (75 s), so the upstream rarely closes one first.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A pool of plain HTTP/1.1 connections to one upstream address.
pub(crate) struct Pool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One connection: the handle requests are sent on, and the connection
/// state machine that the user's task drives.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
    /// The driver finished (the connection is closed); never poll it again.
    ended: bool,
}

impl Conn {
    /// Drives the connection's I/O. Returns `true` while it is open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended && self.driver.as_mut().poll(cx).is_ready() {
            self.ended = true;
        }
        !self.ended
    }
}

impl Pool {
    pub(crate) fn new(host: String, port: u16, connect_timeout: Duration, max_idle: usize) -> Self {
        Pool {
            host,
            port,
            connect_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` and returns the response head with its body, which
    /// drives the connection and returns it to the pool once read to the
    /// end.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, ProviderError> {
        let (conn, reused) = match self.checkout() {
            Some(conn) => (conn, true),
            None => (self.connect().await?, false),
        };
        let (mut conn, result) = exchange(conn, req).await;
        let resp = match result {
            Ok(resp) => resp,
            // The upstream closed a kept-alive connection before the
            // request went out: once more on a new connection.
            Err(e) if reused && e.message().is_some() => {
                let mut e = e;
                let Some(req) = e.take_message() else {
                    return Err(transport(e.error()));
                };
                let (fresh, result) = exchange(self.connect().await?, req).await;
                conn = fresh;
                result.map_err(|e| transport(e.error()))?
            }
            Err(e) => return Err(transport(e.error())),
        };
        let (parts, incoming) = resp.into_parts();
        let body = PooledBody {
            incoming,
            conn: Some(conn),
            pool: Arc::clone(self),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// An open idle connection, most recently used first.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let cutoff = Instant::now().checked_sub(IDLE_TIMEOUT);
        // The oldest are at the front: drop those past the idle timeout.
        if let Some(cutoff) = cutoff {
            let stale = idle.iter().take_while(|i| i.since < cutoff).count();
            idle.drain(..stale);
        }
        while let Some(Idle { mut conn, .. }) = idle.pop() {
            // One poll notices a connection the upstream closed while it
            // sat here; the real waker replaces this one when it is used.
            let mut cx = Context::from_waker(Waker::noop());
            if conn.drive(&mut cx) && conn.sender.is_ready() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Conn, ProviderError> {
        let addr = (self.host.as_str(), self.port);
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Err(_) => return Err(ProviderError::Timeout(TimeoutPhase::Connect)),
                Ok(Err(e)) => return Err(ProviderError::Connect(e.to_string())),
                Ok(Ok(stream)) => stream,
            };
        stream
            .set_nodelay(true)
            .map_err(|e| ProviderError::Connect(e.to_string()))?;
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProviderError::Connect(crate::openai::root_cause(&e)))?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            ended: false,
        })
    }
}

/// A failed send, with the request when hyper did not send it.
type SendError = hyper::client::conn::TrySendError<Request<Full<Bytes>>>;

/// Sends `req` on `conn`, driving the connection until the response head
/// arrives.
async fn exchange(
    mut conn: Conn,
    req: Request<Full<Bytes>>,
) -> (Conn, Result<Response<Incoming>, SendError>) {
    let mut response = std::pin::pin!(conn.sender.try_send_request(req));
    let result = std::future::poll_fn(|cx| {
        conn.drive(cx);
        // If the connection ended, the response future now resolves with
        // the reason.
        response.as_mut().poll(cx)
    })
    .await;
    (conn, result)
}

fn transport(e: &hyper::Error) -> ProviderError {
    ProviderError::Transport(crate::openai::root_cause(e))
}

/// A response body that drives its connection and returns it to the pool
/// when read to the end. Dropped early, it closes the connection.
pub(crate) struct PooledBody {
    incoming: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl Stream for PooledBody {
    type Item = Result<Bytes, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(conn) = &mut this.conn {
                conn.drive(cx);
            }
            match Pin::new(&mut this.incoming).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    // Trailers: nothing to relay.
                    Err(_) => {}
                },
                Poll::Ready(Some(Err(e))) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(transport(&e))));
                }
                Poll::Ready(None) => {
                    if let Some(mut conn) = this.conn.take() {
                        // The connection moves on to its next message;
                        // it is reusable once hyper says so.
                        if conn.drive(cx) && conn.sender.is_ready() {
                            this.pool.checkin(conn);
                        }
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl PooledBody {
    /// Whether the body is known to be complete.
    #[cfg(test)]
    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }
}

impl Drop for PooledBody {
    /// A body dropped right after its last byte, before anyone polled it to
    /// its end (the stream relay stops reading at `[DONE]`), still leaves a
    /// reusable connection: finish it here, without waiting. A body with
    /// anything left to read closes its connection.
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        // The chunked terminator may already be buffered: one look.
        if !self.incoming.is_end_stream() {
            conn.drive(&mut cx);
            match Pin::new(&mut self.incoming).poll_frame(&mut cx) {
                Poll::Ready(None) => {}
                Poll::Ready(Some(_)) | Poll::Pending => return,
            }
        }
        if conn.drive(&mut cx) && conn.sender.is_ready() {
            self.pool.checkin(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// How an upstream connection behaves after each answer.
    #[derive(Clone, Copy)]
    enum After {
        KeepAlive,
        /// Closes the connection right after answering, without saying so
        /// in the response (as a server whose keep-alive timeout fired).
        Close,
    }

    /// An HTTP/1.1 server on 127.0.0.1 answering `body` to every request;
    /// counts the connections it accepted.
    async fn upstream(body: &'static str, after: After) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request: head and its content-length body.
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let n = sock.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + 4 + len {
                            let n = sock.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        buf.drain(..end + 4 + len);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        if let After::Close = after {
                            let _ = sock.shutdown().await;
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn request() -> Request<Full<Bytes>> {
        Request::post("/v1/chat/completions")
            .header(http::header::HOST, "127.0.0.1")
            .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
            .unwrap()
    }

    async fn read_all(pool: &Arc<Pool>) -> String {
        let resp = pool.send(request()).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        assert!(body.is_end_stream());
        String::from_utf8(out).unwrap()
    }

    fn pool(port: u16) -> Arc<Pool> {
        Arc::new(Pool::new(
            "127.0.0.1".into(),
            port,
            Duration::from_secs(2),
            4,
        ))
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (port, accepted) = upstream("{\"ok\":1}", After::KeepAlive).await;
        let pool = pool(port);
        for _ in 0..10 {
            assert_eq!(read_all(&pool).await, "{\"ok\":1}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_more_and_keep_at_most_max_idle() {
        let (port, accepted) = upstream("{\"ok\":2}", After::KeepAlive).await;
        let pool = pool(port);
        let all = futures_util::future::join_all((0..8).map(|_| read_all(&pool))).await;
        assert!(all.iter().all(|b| b == "{\"ok\":2}"));
        assert_eq!(accepted.load(Ordering::SeqCst), 8);
        assert_eq!(pool.idle.lock().unwrap().len(), 4, "max_idle is 4");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (port, accepted) = upstream("{\"ok\":3}", After::Close).await;
        let pool = pool(port);
        for _ in 0..5 {
            assert_eq!(read_all(&pool).await, "{\"ok\":3}");
            // Let the close reach this side before the next checkout.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let (port, accepted) = upstream("{\"ok\":4}", After::KeepAlive).await;
        let pool = pool(port);
        let resp = pool.send(request()).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle.lock().unwrap().len(), 0);
        assert_eq!(read_all(&pool).await, "{\"ok\":4}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// The stream relay drops the body once it has seen `[DONE]`, before
    /// polling it to its end: the connection is kept all the same.
    #[tokio::test]
    async fn a_body_dropped_after_its_last_byte_keeps_its_connection() {
        let answer = "{\"ok\":5}";
        let (port, accepted) = upstream("{\"ok\":5}", After::KeepAlive).await;
        let pool = pool(port);
        for _ in 0..5 {
            let mut body = pool.send(request()).await.unwrap().into_body();
            let mut got = Vec::new();
            while got.len() < answer.len() {
                got.extend_from_slice(&body.next().await.unwrap().unwrap());
            }
            assert_eq!(got, answer.as_bytes());
            drop(body);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_dead_upstream_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let Err(err) = pool(port).send(request()).await else {
            panic!("nothing listens there");
        };
        assert!(matches!(err, ProviderError::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn an_upstream_that_hangs_up_mid_answer_is_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 4096];
            let _ = sock.read(&mut chunk).await;
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\"")
                .await
                .unwrap();
        });
        let pool = pool(port);
        let mut body = pool.send(request()).await.unwrap().into_body();
        let mut got = Vec::new();
        let err = loop {
            match body.next().await {
                Some(Ok(chunk)) => got.extend_from_slice(&chunk),
                Some(Err(e)) => break e,
                None => panic!("a truncated body must not end cleanly"),
            }
        };
        assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
        assert_eq!(pool.idle.lock().unwrap().len(), 0);
    }
}
