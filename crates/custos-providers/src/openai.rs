//! The `openai` kind: any OpenAI-compatible HTTP API (OpenAI, vLLM, Ollama,
//! the llama.cpp server, Together, Groq, Mistral…). Bodies pass through
//! untouched; connections are pooled and kept alive per provider.
//!
//! The client is hyper's own pooled client with rustls, not a higher-level
//! HTTP library: a gateway request needs no redirects, cookies, proxies or
//! decompression, and the URL of each endpoint is parsed once here instead
//! of once or more per request (issue #8 measured reqwest's per-request
//! URL handling at about 8 % of the instructions of a proxied request).

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
use hyper_util::rt::TokioExecutor;

use crate::{BuildError, Endpoint, ProviderError, RawResponse, TimeoutPhase, UpstreamRequest};

/// Sent upstream with the gateway's request ID, for correlation.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An OpenAI-compatible upstream.
pub struct OpenAiProvider {
    client: HttpClient,
    /// Each endpoint's URL, parsed once here rather than formatted and
    /// re-parsed (with IDNA host processing) on every request.
    urls: Box<EndpointUrls>,
    headers: HeaderMap,
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
    /// Builds the adapter and its connection pool.
    pub fn new(
        name: &str,
        settings: &OpenAiSettings,
        timeouts: &Timeouts,
        credential: Option<SecretString>,
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
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeouts.connect));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("TLS: {e}")))?
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
        // Custos relays upstream redirects verbatim rather than following
        // them with the credential attached: this client never follows any.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(settings.max_idle_connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(OpenAiProvider {
            client,
            urls: Box::new(EndpointUrls::parse(&settings.base_url).map_err(err)?),
            headers,
        })
    }

    pub(crate) async fn send(
        &self,
        req: UpstreamRequest<'_>,
    ) -> Result<RawResponse, ProviderError> {
        let mut request = http::Request::new(Full::new(req.body));
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
        let resp = self.client.request(request).await.map_err(classify)?;
        let (parts, body) = resp.into_parts();
        let upstream_request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 256)
            .map(str::to_owned);
        let mut headers = parts.headers;
        let body = Box::pin(
            body.into_data_stream()
                .map_err(|e| ProviderError::Transport(root_cause(&e))),
        );
        Ok(RawResponse {
            status: parts.status,
            content_type: headers.remove(CONTENT_TYPE),
            upstream_request_id,
            retry_after: headers.remove(http::header::RETRY_AFTER),
            body,
        })
    }
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

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
