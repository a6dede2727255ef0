//! The `openai` kind: any OpenAI-compatible HTTP API (OpenAI, vLLM, Ollama,
//! the llama.cpp server, Together, Groq, Mistral…). Bodies pass through
//! untouched; connections are pooled and kept alive per provider.
//!
//! A plain `http://` upstream goes through [`crate::h1`]'s pool, whose
//! connections are driven by the request's own task. Otherwise the client
//! is hyper's own pooled client with rustls, not a higher-level HTTP
//! library: a gateway request needs no redirects, cookies or
//! decompression, and the URL of each endpoint is parsed once here instead
//! of once or more per request (issue #8 measured reqwest's per-request
//! URL handling at about 8 % of the instructions of a proxied request).
//!
//! An outbound proxy is honoured as curl and reqwest do: `HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their lower-case forms),
//! decided once per provider from its base URL. A provider behind a proxy
//! sends through reqwest, which speaks the proxy protocols (CONNECT
//! tunnels for HTTPS, absolute-form requests for HTTP, proxy credentials).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use custos_config::{OpenAiSettings, Timeouts};
use custos_types::{ExposeSecret, SecretString};
use futures_util::TryStreamExt;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::TokioExecutor;

use crate::{
    BuildError, ByteStream, Endpoint, ProviderError, RawResponse, TimeoutPhase, UpstreamRequest,
};

/// Sent upstream with the gateway's request ID, for correlation.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An OpenAI-compatible upstream.
pub struct OpenAiProvider {
    transport: Transport,
    /// Each endpoint's URL, parsed once here rather than formatted and
    /// re-parsed (with IDNA host processing) on every request.
    urls: Box<EndpointUrls>,
    headers: HeaderMap,
}

/// How requests leave.
enum Transport {
    /// Plain HTTP/1.1 straight to the upstream, on connections the
    /// request's own task drives.
    Plain(Arc<crate::h1::Pool>),
    /// Straight to the upstream over TLS (HTTP/2 where offered).
    Direct(Box<HttpClient>),
    /// Through the outbound proxy the environment names for this upstream.
    Proxied(reqwest::Client),
}

/// The parsed URL of every [`Endpoint`] of one provider.
struct EndpointUrls {
    chat_completions: Uri,
    completions: Uri,
    embeddings: Uri,
}

impl EndpointUrls {
    fn parse(base_url: &str) -> Result<Self, String> {
        let url = |endpoint: Endpoint| -> Result<Uri, String> {
            // The WHATWG parser normalises what users write (a host in
            // capitals, a default port, percent-encoding); `http::Uri`
            // then only has to accept its canonical output.
            let parsed = url::Url::parse(&format!("{base_url}{}", endpoint.path()))
                .map_err(|e| format!("base_url: {e}"))?;
            match parsed.scheme() {
                "http" | "https" => {}
                other => return Err(format!("base_url: unsupported scheme `{other}`")),
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(
                    "base_url: credentials in the URL are not supported; use api_key".into(),
                );
            }
            let mut text = String::from(parsed.as_str());
            if let Some(hash) = text.find('#') {
                text.truncate(hash);
            }
            text.parse::<Uri>().map_err(|e| format!("base_url: {e}"))
        };
        Ok(EndpointUrls {
            chat_completions: url(Endpoint::ChatCompletions)?,
            completions: url(Endpoint::Completions)?,
            embeddings: url(Endpoint::Embeddings)?,
        })
    }

    fn get(&self, endpoint: Endpoint) -> &Uri {
        match endpoint {
            Endpoint::ChatCompletions => &self.chat_completions,
            Endpoint::Completions => &self.completions,
            Endpoint::Embeddings => &self.embeddings,
        }
    }
}

impl OpenAiProvider {
    /// Builds the adapter and its connection pool, with the outbound proxy
    /// the environment names for its base URL, if any.
    pub fn new(
        name: &str,
        settings: &OpenAiSettings,
        timeouts: &Timeouts,
        credential: Option<SecretString>,
    ) -> Result<Self, BuildError> {
        Self::with_proxies(name, settings, timeouts, credential, &Matcher::from_env())
    }

    /// As [`new`](Self::new), with the proxy rules given instead of read
    /// from the environment.
    pub fn with_proxies(
        name: &str,
        settings: &OpenAiSettings,
        timeouts: &Timeouts,
        credential: Option<SecretString>,
        proxies: &Matcher,
    ) -> Result<Self, BuildError> {
        let err = |message: String| BuildError::Client {
            provider: name.to_owned(),
            message,
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &settings.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| err(format!("header `{k}`: {e}")))?;
            let value = HeaderValue::from_str(v).map_err(|e| err(format!("header `{k}`: {e}")))?;
            headers.insert(name, value);
        }
        if let Some(key) = credential {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
                .map_err(|_| {
                    err("the API key contains characters not allowed in a header".to_owned())
                })?;
            // Keeps the value out of any Debug output of the header map.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let urls = Box::new(EndpointUrls::parse(&settings.base_url).map_err(err)?);
        let url = &urls.chat_completions;
        let transport = match proxies.intercept(url) {
            Some(proxy) => Transport::Proxied(
                proxied_client(&proxy, settings, timeouts)
                    .map_err(|e| err(format!("proxy: {e}")))?,
            ),
            None if url.scheme() == Some(&http::uri::Scheme::HTTP) => {
                let host = url.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Transport::Plain(Arc::new(crate::h1::Pool::new(
                    host.to_owned(),
                    url.port_u16().unwrap_or(80),
                    timeouts.connect,
                    settings.max_idle_connections,
                )))
            }
            None => Transport::Direct(Box::new(direct_client(settings, timeouts).map_err(err)?)),
        };
        if let Some(authority) = url.authority() {
            // hyper's connection-level client sends no `Host` of its own.
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| err(format!("base_url: {e}")))?;
            headers.insert(http::header::HOST, host);
        }
        Ok(OpenAiProvider {
            transport,
            urls,
            headers,
        })
    }

    pub(crate) async fn send(
        &self,
        req: UpstreamRequest<'_>,
    ) -> Result<RawResponse, ProviderError> {
        let mut request = http::Request::new(req.body);
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.urls.get(req.endpoint).clone();
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        if let Ok(id) = HeaderValue::from_str(req.request_id.as_str()) {
            headers.insert(X_REQUEST_ID, id);
        }
        let accept = if req.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        headers.insert(ACCEPT, HeaderValue::from_static(accept));
        let (status, mut headers, body): (_, _, ByteStream) = match &self.transport {
            Transport::Plain(pool) => {
                // Origin form: the connection already is the upstream's.
                if let Some(path) = request.uri().path_and_query().cloned() {
                    *request.uri_mut() = Uri::from(path);
                }
                let (parts, body) = pool.send(request.map(Full::new)).await?.into_parts();
                (parts.status, parts.headers, Box::pin(body))
            }
            Transport::Direct(client) => {
                let resp = client
                    .request(request.map(Full::new))
                    .await
                    .map_err(classify)?;
                let (parts, body) = resp.into_parts();
                let body = body
                    .into_data_stream()
                    .map_err(|e| ProviderError::Transport(root_cause(&e)));
                (parts.status, parts.headers, Box::pin(body))
            }
            Transport::Proxied(client) => {
                let request = reqwest::Request::try_from(request.map(reqwest::Body::from))
                    .map_err(|e| ProviderError::Transport(root_cause(&e)))?;
                let mut resp = client.execute(request).await.map_err(classify_proxied)?;
                let headers = std::mem::take(resp.headers_mut());
                let status = resp.status();
                let body = resp.bytes_stream().map_err(classify_proxied);
                (status, headers, Box::pin(body))
            }
        };
        let upstream_request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 256)
            .map(str::to_owned);
        Ok(RawResponse {
            status,
            content_type: headers.remove(CONTENT_TYPE),
            upstream_request_id,
            retry_after: headers.remove(http::header::RETRY_AFTER),
            body,
        })
    }
}

/// hyper-util's pooled client over rustls (ring, webpki roots; ALPN h2).
fn direct_client(settings: &OpenAiSettings, timeouts: &Timeouts) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeouts.connect));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(30)));
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
    .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    // Custos relays upstream redirects verbatim rather than following them
    // with the credential attached: this client never follows any.
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(settings.max_idle_connections)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector))
}

/// reqwest through one proxy, with its credentials if the proxy URL had
/// any; redirects are never followed.
fn proxied_client(
    proxy: &Intercept,
    settings: &OpenAiSettings,
    timeouts: &Timeouts,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut via = reqwest::Proxy::all(proxy.uri().to_string())?;
    if let Some(auth) = proxy.basic_auth() {
        via = via.custom_http_auth(auth.clone());
    } else if let Some((user, pass)) = proxy.raw_auth() {
        via = via.basic_auth(user, pass);
    }
    reqwest::Client::builder()
        .proxy(via)
        .connect_timeout(timeouts.connect)
        .pool_max_idle_per_host(settings.max_idle_connections)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

fn classify_proxied(e: reqwest::Error) -> ProviderError {
    // Without the URL: it is noise in a client-facing message, and a proxy
    // URL may carry credentials.
    let e = e.without_url();
    if e.is_connect() {
        if e.is_timeout() {
            return ProviderError::Timeout(TimeoutPhase::Connect);
        }
        return ProviderError::Connect(root_cause(&e));
    }
    if e.is_timeout() {
        return ProviderError::Timeout(TimeoutPhase::Total);
    }
    ProviderError::Transport(root_cause(&e))
}

fn classify(e: hyper_util::client::legacy::Error) -> ProviderError {
    // Messages name the failure, never the URL or a header: the provider
    // name is logged alongside instead.
    if e.is_connect() {
        if timed_out(&e) {
            return ProviderError::Timeout(TimeoutPhase::Connect);
        }
        return ProviderError::Connect(root_cause(&e));
    }
    ProviderError::Transport(root_cause(&e))
}

/// Whether an I/O timeout is somewhere in the error's chain.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]

    use std::collections::BTreeMap;

    use custos_config::CredentialSource;
    use custos_types::RequestId;
    use futures_util::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    const ANSWER: &str = r#"{"id":"c","object":"chat.completion","choices":[]}"#;

    /// An HTTP server on 127.0.0.1 that answers every request with
    /// [`ANSWER`] and hands back each request head it read.
    async fn server() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = sock.read(&mut chunk).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let _ = tx.send(head);
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{ANSWER}",
                        ANSWER.len()
                    );
                    sock.write_all(reply.as_bytes()).await.unwrap();
                    let _ = sock.shutdown().await;
                });
            }
        });
        (format!("127.0.0.1:{}", addr.port()), rx)
    }

    fn settings(base_url: &str) -> OpenAiSettings {
        OpenAiSettings {
            base_url: base_url.to_owned(),
            credential: CredentialSource::None,
            headers: BTreeMap::new(),
            max_idle_connections: 4,
        }
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(5),
            idle: Duration::from_secs(5),
            total: Duration::from_secs(10),
        }
    }

    async fn chat(provider: &OpenAiProvider) -> (http::StatusCode, String) {
        let id = RequestId::generate();
        let resp = provider
            .send(UpstreamRequest {
                endpoint: Endpoint::ChatCompletions,
                body: Bytes::from_static(br#"{"model":"m","messages":[]}"#),
                stream: false,
                request_id: &id,
            })
            .await
            .unwrap();
        let mut body = Vec::new();
        let mut stream = resp.body;
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk.unwrap());
        }
        (resp.status, String::from_utf8(body).unwrap())
    }

    #[tokio::test]
    async fn without_a_proxy_requests_go_straight_to_the_upstream() {
        let (upstream, mut seen) = server().await;
        let provider = OpenAiProvider::with_proxies(
            "p",
            &settings(&format!("http://{upstream}/v1")),
            &timeouts(),
            Some(SecretString::from("sk-upstream")),
            &Matcher::builder().build(),
        )
        .unwrap();
        assert!(matches!(provider.transport, Transport::Plain(_)));
        assert_eq!(
            chat(&provider).await,
            (http::StatusCode::OK, ANSWER.to_owned())
        );
        let head = seen.recv().await.unwrap();
        assert!(
            head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("authorization: Bearer sk-upstream"), "{head}");
    }

    /// The environment's proxy applies to a provider it matches: the
    /// upstream's host need not even resolve, the proxy gets the request
    /// in absolute form with its own credentials, and the upstream key
    /// still travels in `Authorization`.
    #[tokio::test]
    async fn a_matching_proxy_carries_the_request() {
        let (proxy, mut seen) = server().await;
        let rules = Matcher::builder()
            .http(format!("http://ops:s3cret@{proxy}"))
            .build();
        let provider = OpenAiProvider::with_proxies(
            "p",
            &settings("http://upstream.invalid/v1"),
            &timeouts(),
            Some(SecretString::from("sk-upstream")),
            &rules,
        )
        .unwrap();
        assert!(matches!(provider.transport, Transport::Proxied(_)));
        assert_eq!(
            chat(&provider).await,
            (http::StatusCode::OK, ANSWER.to_owned())
        );
        let head = seen.recv().await.unwrap();
        assert!(
            head.starts_with("POST http://upstream.invalid/v1/chat/completions HTTP/1.1\r\n"),
            "{head}"
        );
        // base64("ops:s3cret")
        assert!(
            head.contains("proxy-authorization: Basic b3BzOnMzY3JldA=="),
            "{head}"
        );
        assert!(head.contains("authorization: Bearer sk-upstream"), "{head}");
    }

    /// `NO_PROXY` keeps matching hosts direct.
    #[tokio::test]
    async fn no_proxy_hosts_bypass_the_proxy() {
        let (upstream, mut seen) = server().await;
        let rules = Matcher::builder()
            .all("http://127.0.0.1:9".to_owned())
            .no("127.0.0.1".to_owned())
            .build();
        let provider = OpenAiProvider::with_proxies(
            "p",
            &settings(&format!("http://{upstream}/v1")),
            &timeouts(),
            None,
            &rules,
        )
        .unwrap();
        assert!(matches!(provider.transport, Transport::Plain(_)));
        assert_eq!(chat(&provider).await.0, http::StatusCode::OK);
        assert!(
            seen.recv()
                .await
                .unwrap()
                .starts_with("POST /v1/chat/completions")
        );
    }
}
