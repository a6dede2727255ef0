//! The Custos data plane: the `/v1` router, the request pipeline, routing
//! with fallback, and the OpenAI error shape.
//!
//! A request flows through [`handler`] in fixed stages: request ID and the
//! outcome guard, method and path, content type, bounded body read, field
//! extraction, model lookup, (authentication and authorization: added by the
//! scoped-keys work as one stage here), then the attempt loop over the
//! model's targets, then the response — whole, or relayed as SSE.
//!
//! **Architecture invariant:** this crate builds only the gateway router; the
//! admin router lives in `custos-admin` and the two are never merged.

pub mod audit;
pub mod auth;
pub mod error;
mod handler;
mod health_sink;
pub mod metrics;
pub mod outcome;
pub mod routing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use custos_config::Config;
use custos_health::{CapacityLimiter, HealthEngine, TargetId};
use custos_providers::Provider;
use prometheus_client::registry::Registry;

pub use audit::{AuditSink, AuditUnavailable};
pub use auth::{Auth, KeyEntry, KeySnapshot, KeySource, Principal, RotationPolicy, SecretEntry};
pub use error::GatewayError;
pub use metrics::Metrics;
pub use outcome::{Actor, Attempt, LogSink, OutcomeSink, RequestOutcome};
pub use routing::RouteTable;

/// The shared state of the gateway listener.
pub struct Gateway {
    routes: RouteTable,
    max_body_size: usize,
    sink: Arc<dyn OutcomeSink>,
    metrics: Arc<Metrics>,
    auth: Option<Arc<Auth>>,
    audit: Option<Arc<dyn AuditSink>>,
    health: Option<HealthEngine>,
    capacity: Option<Arc<CapacityLimiter>>,
    created: u64,
}

/// The stages and sinks a [`Gateway`] is built with.
#[derive(Default)]
pub struct Hooks {
    /// The authentication stage. The binary always provides one: every
    /// `/v1` request needs a valid key. `None` serves without
    /// authentication and exists for tests of the rest of the pipeline.
    pub auth: Option<Arc<Auth>>,
    /// Where inference records go; with one, the gateway fails closed when
    /// it cannot record.
    pub audit: Option<Arc<dyn AuditSink>>,
    /// Further sinks for finished requests (logs, tests).
    pub sinks: Vec<Arc<dyn OutcomeSink>>,
    /// Circuit breakers and health windows: routing skips open targets.
    pub health: Option<HealthEngine>,
    /// Concurrency limits with bounded wait queues.
    pub capacity: Option<Arc<CapacityLimiter>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.routes)
            .field("max_body_size", &self.max_body_size)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the gateway from a validated config and its built providers.
    /// Metrics are registered in `registry`; every finished request goes to
    /// the metrics, the authenticator, each of `hooks.sinks`, and the audit
    /// sink.
    pub fn new(
        config: &Config,
        providers: &HashMap<String, Arc<Provider>>,
        registry: &mut Registry,
        hooks: Hooks,
    ) -> Arc<Self> {
        let Hooks {
            auth,
            audit,
            sinks,
            health,
            capacity,
        } = hooks;
        let routes = RouteTable::new(config, providers);
        let served: Vec<&str> = routes
            .names()
            .filter_map(|name| routes.get(name))
            .flat_map(|route| route.targets.iter().map(|t| t.upstream_model.as_str()))
            .collect();
        let metrics = Metrics::new(
            registry,
            routes.names(),
            served,
            providers.keys().map(String::as_str),
            config.metrics.per_key,
        );
        let mut all: Vec<Arc<dyn OutcomeSink>> = vec![metrics.clone()];
        if let Some(auth) = &auth {
            all.push(auth.clone());
        }
        if let Some(health) = &health {
            for name in routes.names() {
                if let Some(route) = routes.get(name) {
                    let targets: Vec<TargetId> = route
                        .targets
                        .iter()
                        .map(|t| TargetId::new(t.provider.name(), &t.upstream_model))
                        .collect();
                    health.register_model(name, &targets);
                }
            }
            all.push(Arc::new(health_sink::HealthSink(health.clone())));
        }
        all.extend(sinks);
        Arc::new(Gateway {
            routes,
            max_body_size: config.server.max_body_size,
            sink: Arc::new(outcome::Sinks(all)),
            metrics,
            auth,
            audit,
            health,
            capacity,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    /// The route table.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The gateway's metric families.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// The `/v1` router. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so client
/// addresses are known.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new().fallback(handler::handle).with_state(gateway)
}
