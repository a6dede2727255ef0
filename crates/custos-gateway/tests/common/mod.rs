//! Shared harness: the real gateway router served on 127.0.0.1:0 in
//! process, pointed at real mock upstreams, with every request outcome
//! collected for assertions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test harness"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custos_gateway::{Gateway, OutcomeSink, RequestOutcome};
use custos_providers::Provider;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

/// Collects outcomes.
#[derive(Default)]
pub struct Collect {
    outcomes: Mutex<Vec<RequestOutcome>>,
    changed: Notify,
}

impl OutcomeSink for Collect {
    fn record(&self, outcome: &RequestOutcome) {
        self.outcomes.lock().unwrap().push(outcome.clone());
        self.changed.notify_waiters();
    }
}

impl Collect {
    /// Waits until `n` outcomes were recorded, then returns them all.
    pub async fn wait(&self, n: usize) -> Vec<RequestOutcome> {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                {
                    let got = self.outcomes.lock().unwrap();
                    if got.len() >= n {
                        return got.clone();
                    }
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "wanted {n} outcomes, got {:?}",
                    self.outcomes.lock().unwrap()
                )
            })
    }

    /// The outcomes so far.
    pub fn all(&self) -> Vec<RequestOutcome> {
        self.outcomes.lock().unwrap().clone()
    }
}

/// A gateway under test.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub outcomes: Arc<Collect>,
    pub client: reqwest::Client,
    pub registry: Arc<Registry>,
}

impl TestGateway {
    /// Serves a gateway built from `toml`.
    pub async fn start(toml: &str) -> TestGateway {
        Self::start_with_auth(toml, None).await
    }

    /// Serves a gateway built from `toml` with an authentication stage.
    pub async fn start_with_auth(
        toml: &str,
        auth: Option<Arc<custos_gateway::Auth>>,
    ) -> TestGateway {
        Self::start_with(toml, auth, None).await
    }

    /// Serves a gateway built from `toml` with the given stages.
    pub async fn start_with(
        toml: &str,
        auth: Option<Arc<custos_gateway::Auth>>,
        audit: Option<Arc<dyn custos_gateway::AuditSink>>,
    ) -> TestGateway {
        Self::start_full(
            toml,
            custos_gateway::Hooks {
                auth,
                audit,
                ..Default::default()
            },
        )
        .await
    }

    /// Serves a gateway built from `toml` with these hooks (the outcome
    /// collector is added to `hooks.sinks`).
    pub async fn start_full(toml: &str, mut hooks: custos_gateway::Hooks) -> TestGateway {
        let config = custos_config::load("test.toml", toml, &|_| None).unwrap();
        let providers: HashMap<String, Arc<Provider>> = config
            .providers
            .values()
            .map(|p| (p.name.clone(), Arc::new(Provider::new(p, None).unwrap())))
            .collect();
        let outcomes = Arc::new(Collect::default());
        let mut registry = Registry::default();
        let gateway = Gateway::new(&config, &providers, &mut registry, {
            hooks.sinks.push(outcomes.clone());
            hooks
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            custos_gateway::router(gateway).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestGateway {
            addr,
            outcomes,
            client: reqwest::Client::new(),
            registry: Arc::new(registry),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a JSON body to `path`.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// POSTs raw bytes with a content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

/// A config with one provider per upstream URL (named p0, p1, …) and one
/// model `m` whose targets are those providers in order of priority.
pub fn config_for(upstreams: &[String], timeouts: &str) -> String {
    let mut out = String::new();
    for (i, url) in upstreams.iter().enumerate() {
        out.push_str(&format!(
            "[providers.p{i}]\nkind = \"openai\"\nbase_url = \"{url}\"\ntimeouts = {{ {timeouts} }}\n\n"
        ));
    }
    out.push_str("[[models]]\nname = \"m\"\ntargets = [\n");
    for i in 0..upstreams.len() {
        out.push_str(&format!(
            "  {{ provider = \"p{i}\", model = \"up{i}\", priority = {i} }},\n"
        ));
    }
    out.push_str("]\n");
    out
}

/// Asserts an OpenAI-shaped error body and returns its `error` object.
pub async fn error_of(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert!(
        resp.headers().contains_key("x-request-id"),
        "x-request-id missing"
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    let err = body["error"].clone();
    assert!(err["message"].is_string(), "{body}");
    assert!(err["type"].is_string(), "{body}");
    assert!(err.get("param").is_some(), "{body}");
    assert!(err.get("code").is_some(), "{body}");
    err
}

/// A chat request body.
pub fn chat(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Hello world"}],
        "stream": stream,
    })
}
