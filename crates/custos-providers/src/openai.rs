//! The `openai` kind: any OpenAI-compatible HTTP API (OpenAI, vLLM, Ollama,
//! the llama.cpp server, Together, Groq, Mistral…). Bodies pass through
//! untouched; connections are pooled and kept alive per provider.

use std::time::Duration;

use custos_config::{OpenAiSettings, Timeouts};
use custos_types::{ExposeSecret, SecretString};
use futures_util::TryStreamExt;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{BuildError, Endpoint, ProviderError, RawResponse, TimeoutPhase, UpstreamRequest};

/// Sent upstream with the gateway's request ID, for correlation.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An OpenAI-compatible upstream.
pub struct OpenAiProvider {
    client: reqwest::Client,
    /// Each endpoint's URL, parsed once here rather than formatted and
    /// re-parsed (with IDNA host processing) on every request.
    urls: Box<EndpointUrls>,
    headers: HeaderMap,
}

/// The parsed URL of every [`Endpoint`] of one provider.
struct EndpointUrls {
    chat_completions: reqwest::Url,
    completions: reqwest::Url,
    embeddings: reqwest::Url,
}

impl EndpointUrls {
    fn parse(base_url: &str) -> Result<Self, String> {
        let url = |endpoint: Endpoint| {
            reqwest::Url::parse(&format!("{base_url}{}", endpoint.path()))
                .map_err(|e| format!("base_url: {e}"))
        };
        Ok(EndpointUrls {
            chat_completions: url(Endpoint::ChatCompletions)?,
            completions: url(Endpoint::Completions)?,
            embeddings: url(Endpoint::Embeddings)?,
        })
    }

    fn get(&self, endpoint: Endpoint) -> &reqwest::Url {
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
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .pool_max_idle_per_host(settings.max_idle_connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            // Custos relays upstream redirects verbatim rather than following
            // them with the credential attached.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| err(e.to_string()))?;
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
        let mut request =
            reqwest::Request::new(http::Method::POST, self.urls.get(req.endpoint).clone());
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        if let Ok(id) = HeaderValue::from_str(req.request_id.as_str()) {
            headers.insert(X_REQUEST_ID, id);
        }
        if req.stream {
            headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        *request.body_mut() = Some(req.body.into());
        let resp = self.client.execute(request).await.map_err(classify)?;
        let content_type = resp.headers().get(CONTENT_TYPE).cloned();
        let upstream_request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 256)
            .map(str::to_owned);
        let retry_after = resp.headers().get(http::header::RETRY_AFTER).cloned();
        let status = resp.status();
        let body = Box::pin(resp.bytes_stream().map_err(classify));
        Ok(RawResponse {
            status,
            content_type,
            upstream_request_id,
            retry_after,
            body,
        })
    }
}

fn classify(e: reqwest::Error) -> ProviderError {
    // The URL is the configured base URL, not a secret, but it is noise in a
    // client-facing message: the provider name is logged alongside instead.
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

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
