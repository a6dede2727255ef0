//! Incident wiring shared by `custos serve` and `custos incidents …`: the
//! listener that writes every incident event into the audit ledger, the
//! operator actions (applied by whoever holds the ledger: the server, or
//! the CLI when no server runs), the server's command and aggregate loops,
//! and the webhook notifier built from configuration.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use custos_health::{
    HealthEngine, IncidentEngine, IncidentError, IncidentListener, IncidentNotice, TimelineKind,
    ValueSource, WebhookNotifier, WebhookTarget,
};
use custos_ledger::Ledger;
use custos_record::{Admin, AdminActor, Change, RecordBody, Scalar, System, Target, Via};
use custos_store::{Actor, ActorKind, CommandOutcome, IncidentCommand, Store};
use custos_types::{ExposeSecret as _, SecretString};

/// How an operator is named in incident timelines: `cli:alice`,
/// `user:bob`, `api:deploy-bot`.
pub fn actor_label(actor: &Actor) -> String {
    format!("{}:{}", actor.kind.as_str(), actor.name)
}

/// Writes every incident event into the ledger: an `admin` record naming
/// the operator for operator actions, a `system` record for what Custos
/// detected by itself. Appends are enqueued; nothing waits on them.
pub struct IncidentToLedger {
    ledger: Option<Arc<Ledger>>,
    /// The operator whose action is being applied, so that its record
    /// carries the whole actor (interface, address, MFA), not only a name.
    operator: Mutex<Option<Actor>>,
    /// Events that could not be appended.
    failures: std::sync::atomic::AtomicU64,
}

impl IncidentToLedger {
    /// A listener appending to `ledger`; with `None` events are only logged.
    pub fn new(ledger: Option<Arc<Ledger>>) -> Arc<Self> {
        Arc::new(IncidentToLedger {
            ledger,
            operator: Mutex::new(None),
            failures: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many events could not be appended to the ledger.
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn operator(&self) -> std::sync::MutexGuard<'_, Option<Actor>> {
        self.operator.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn text(s: &str) -> Scalar {
    Scalar::from(custos_record::truncate_text(s))
}

impl IncidentListener for IncidentToLedger {
    fn incident_event(&self, n: &IncidentNotice) {
        let label = n.event.kind.label();
        let inc = &n.incident;
        match &n.event.kind {
            TimelineKind::Opened { .. } | TimelineKind::Resolved { .. } => tracing::warn!(
                target: "custos::incidents",
                id = %inc.id, model = %inc.model, severity = inc.severity.as_str(),
                event = label, title = %inc.title, "incident {label}"
            ),
            _ => tracing::info!(
                target: "custos::incidents",
                id = %inc.id, model = %inc.model, event = label, "incident event"
            ),
        }
        let Some(ledger) = &self.ledger else {
            return;
        };
        let event = format!("incident.{label}");
        let mut details: Vec<(&str, Scalar)> = vec![
            ("incident_id", text(&inc.id)),
            ("model", text(&inc.model)),
            ("severity", Scalar::from(inc.severity.as_str())),
            ("status", Scalar::from(inc.status.as_str())),
            ("timeline_seq", Scalar::from(n.event.seq)),
        ];
        match &n.event.kind {
            TimelineKind::Opened { symptoms, .. }
            | TimelineKind::RecoveryInterrupted { symptoms } => {
                if !symptoms.is_empty() {
                    let described: Vec<String> = symptoms.iter().map(|s| s.describe()).collect();
                    details.push(("symptoms", text(&described.join("; "))));
                }
                details.push(("affected_keys", Scalar::count(inc.affected_keys)));
            }
            TimelineKind::SymptomDetected { symptom } => {
                details.push(("symptoms", text(&symptom.describe())));
            }
            TimelineKind::SeverityChanged { from, to, .. } => {
                details.push(("from", Scalar::from(from.as_str())));
                details.push(("to", Scalar::from(to.as_str())));
            }
            TimelineKind::BreakerChanged {
                target, from, to, ..
            } => {
                details.push(("target", text(target)));
                details.push(("from", Scalar::from(from.as_str())));
                details.push(("to", Scalar::from(to.as_str())));
            }
            TimelineKind::Assigned { assignee } => details.push(("assignee", text(assignee))),
            TimelineKind::Resolved { resolution, .. } => {
                details.push((
                    "resolution",
                    Scalar::from(match resolution {
                        custos_health::Resolution::Auto => "auto",
                        custos_health::Resolution::Manual => "manual",
                    }),
                ));
                if let Some(ttr) = inc.time_to_resolve {
                    details.push(("time_to_resolve_ms", Scalar::count(ttr.as_millis() as u64)));
                }
                details.push(("affected_keys", Scalar::count(inc.affected_keys)));
            }
            TimelineKind::Acknowledged => {
                if let Some(tta) = inc.time_to_acknowledge {
                    details.push((
                        "time_to_acknowledge_ms",
                        Scalar::count(tta.as_millis() as u64),
                    ));
                }
            }
            _ => {}
        }
        let reason = match &n.event.kind {
            TimelineKind::Note { text } => Some(text.clone()),
            TimelineKind::SeverityChanged { reason, .. } => Some(reason.clone()),
            TimelineKind::Resolved { note, .. } => note.clone(),
            _ => None,
        };
        let operator = self.operator().clone();
        let body = match (&n.event.actor, operator) {
            (Some(name), Some(actor)) if *name == actor_label(&actor) => RecordBody::Admin(Admin {
                event,
                actor: admin_actor(&actor),
                action: label.to_owned(),
                target: Some(Target {
                    id: custos_record::truncate_text(&inc.id),
                    kind: "incident".into(),
                }),
                changes: details
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.to_owned(),
                            Change {
                                before: None,
                                after: Some(v),
                            },
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
                reason: reason.map(|r| {
                    r.chars()
                        .take(custos_record::MAX_REASON_BYTES / 4)
                        .collect()
                }),
            }),
            (actor, _) => {
                let mut rec = System::new(event);
                for (k, v) in details {
                    rec = rec.with(k, v);
                }
                if let Some(name) = actor {
                    rec = rec.with("actor", text(name));
                }
                if let Some(r) = reason {
                    rec = rec.with("note", text(&r));
                }
                RecordBody::System(rec)
            }
        };
        if let Err(e) = ledger.append(body) {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, incident = %inc.id, "cannot record an incident event");
        }
    }
}

fn admin_actor(actor: &Actor) -> AdminActor {
    AdminActor {
        ip: actor.ip,
        mfa: actor.mfa,
        role: actor.role.clone().unwrap_or_else(|| match actor.kind {
            ActorKind::Cli => "host_shell".to_owned(),
            ActorKind::Api => "api_token".to_owned(),
            ActorKind::User => "console_user".to_owned(),
        }),
        user: custos_record::truncate_text(&actor.name),
        via: match actor.kind {
            ActorKind::Cli => Via::Cli,
            ActorKind::Api => Via::Api,
            ActorKind::User => Via::Console,
        },
    }
}

/// One operator action on an incident (shared with the console and API).
pub use custos_health::OperatorAction as Action;

/// Applies one action through the engine, attributing its ledger record to
/// `actor`. Returns the incident after the action.
pub async fn apply(
    engine: &IncidentEngine,
    listener: &IncidentToLedger,
    id: &str,
    actor: &Actor,
    action: Action,
) -> Result<custos_health::Incident, IncidentError> {
    let by = actor_label(actor);
    *listener.operator() = Some(actor.clone());
    let result = action.apply(engine, id, &by).await;
    *listener.operator() = None;
    result
}

/// Applies one submitted command and records its outcome.
async fn run_command(
    store: &Store,
    engine: &IncidentEngine,
    listener: &IncidentToLedger,
    cmd: IncidentCommand,
) -> anyhow::Result<()> {
    let outcome = match serde_json::from_value::<Action>(cmd.args.clone()) {
        Err(e) => CommandOutcome::Refused(format!("malformed command: {e}")),
        Ok(action) => match apply(engine, listener, &cmd.incident_id, &cmd.actor, action).await {
            Ok(incident) => CommandOutcome::Applied(serde_json::to_value(&incident)?),
            Err(e) => CommandOutcome::Refused(e.to_string()),
        },
    };
    store.finish_incident_command(cmd.id, &outcome).await?;
    Ok(())
}

/// The server's loop over submitted operator commands.
pub async fn command_loop(
    store: Arc<Store>,
    engine: Arc<IncidentEngine>,
    listener: Arc<IncidentToLedger>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pending = match store.pending_incident_commands(32).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pending incident commands; will retry");
                continue;
            }
        };
        for cmd in pending {
            let id = cmd.id;
            if let Err(e) = run_command(&store, &engine, &listener, cmd).await {
                tracing::warn!(command = id, error = %e, "cannot finish an incident command");
            }
        }
    }
}

/// How long a finished incident command (its outcome) is kept: its
/// submitter reads the outcome within seconds, and what it did is in the
/// incident's timeline and the audit ledger.
const FINISHED_COMMANDS_KEPT: Duration = Duration::from_secs(86_400);

/// Writes completed minutes of the per-model aggregates to the store every
/// `every`, and hourly purges minutes older than `retention` and incident
/// commands finished more than a day ago.
pub async fn aggregates_loop(
    store: Arc<Store>,
    health: HealthEngine,
    every: Duration,
    retention: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge: Option<std::time::Instant> = None;
    let mut unsaved = Vec::new();
    loop {
        tick.tick().await;
        unsaved.extend(health.drain_completed_minutes(SystemTime::now()));
        if !unsaved.is_empty() {
            match store.save_minutes(&unsaved).await {
                Ok(()) => unsaved.clear(),
                Err(e) => {
                    // Kept for the next tick, bounded to a day of minutes
                    // for a few hundred models.
                    tracing::warn!(error = %e, minutes = unsaved.len(), "cannot save per-minute aggregates; will retry");
                    let excess = unsaved.len().saturating_sub(500_000);
                    unsaved.drain(..excess);
                }
            }
        }
        if last_purge.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_purge = Some(std::time::Instant::now());
            match store.purge_minutes(retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "purged per-minute aggregates past retention"),
                Err(e) => tracing::warn!(error = %e, "cannot purge per-minute aggregates"),
            }
            match store.purge_incident_commands(FINISHED_COMMANDS_KEPT).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "purged finished incident commands"),
                Err(e) => tracing::warn!(error = %e, "cannot purge finished incident commands"),
            }
        }
    }
}

fn resolve_value(what: &str, source: &ValueSource) -> anyhow::Result<SecretString> {
    let value = match source {
        ValueSource::Inline(v) => v.clone(),
        ValueSource::Env(var) => std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .with_context(|| format!("{what}: environment variable {var} is not set"))?,
        ValueSource::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("{what}: cannot read {}", path.display()))?,
    };
    Ok(SecretString::from(value.trim().to_owned()))
}

/// Starts the webhook notifier of `[[incidents.webhooks]]`, or `None` when
/// there is none. A webhook whose URL or secret cannot be resolved stops
/// the server: a silently missing pager is worse than a failed start.
pub fn start_webhooks(
    settings: &custos_health::IncidentSettings,
) -> anyhow::Result<Option<Arc<WebhookNotifier>>> {
    if settings.webhooks.is_empty() {
        return Ok(None);
    }
    let mut targets = Vec::new();
    for hook in &settings.webhooks {
        let what = format!("incidents.webhooks `{}`", hook.name);
        let url = resolve_value(&format!("{what} url"), &hook.url)?;
        let secret = hook
            .secret
            .as_ref()
            .map(|s| resolve_value(&format!("{what} secret"), s))
            .transpose()?;
        if url.expose_secret().is_empty() {
            anyhow::bail!("{what}: the URL is empty");
        }
        targets.push(
            WebhookTarget::new(hook.clone(), &url, secret)
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))?,
        );
    }
    let client = reqwest::Client::builder()
        .user_agent(concat!("custos/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the webhook HTTP client")?;
    Ok(Some(Arc::new(WebhookNotifier::start(
        targets,
        client,
        Arc::new(custos_types::SystemClock),
        rand::random(),
    ))))
}

/// Active probes: a one-token chat completion to the target, through the
/// same provider adapter (and timeouts) as real traffic. Probes cost a
/// request each, so they are off unless `[health.probes] enabled = true`.
pub struct ProviderProber {
    providers: std::collections::HashMap<String, Arc<custos_providers::Provider>>,
}

impl ProviderProber {
    /// A prober over the configured providers.
    pub fn new(
        _config: &custos_config::Config,
        providers: &std::collections::HashMap<String, Arc<custos_providers::Provider>>,
    ) -> Self {
        ProviderProber {
            providers: providers.clone(),
        }
    }
}

impl custos_health::Prober for ProviderProber {
    fn probe<'a>(
        &'a self,
        target: &'a custos_health::TargetId,
    ) -> custos_health::BoxFuture<'a, custos_health::AttemptOutcome> {
        Box::pin(async move {
            use custos_health::{AttemptOutcome, FailureKind};
            let Some(provider) = self.providers.get(&*target.provider) else {
                return AttemptOutcome::Failure {
                    kind: FailureKind::Connect,
                };
            };
            let body = serde_json::json!({
                "model": &*target.model,
                "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 1,
            });
            let request_id = custos_types::RequestId::generate();
            let sent = provider
                .send(custos_providers::UpstreamRequest {
                    endpoint: custos_providers::Endpoint::ChatCompletions,
                    body: bytes::Bytes::from(body.to_string()),
                    stream: false,
                    request_id: &request_id,
                })
                .await;
            match sent {
                Ok(resp) => {
                    let status = resp.status.as_u16();
                    let error = (status == 429 || status >= 500).then_some("status");
                    AttemptOutcome::from_attempt(Some(status), error)
                }
                Err(e) => AttemptOutcome::from_attempt(None, Some(e.kind())),
            }
        })
    }
}

/// Incident and webhook metrics, refreshed every few seconds.
#[derive(Clone)]
pub struct IncidentMetrics {
    open: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::gauge::Gauge,
    >,
    webhook: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

impl IncidentMetrics {
    /// Registers the families.
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = IncidentMetrics {
            open: Default::default(),
            webhook: Default::default(),
        };
        registry.register(
            "custos_incidents_open",
            "Active model-availability incidents by model and severity",
            m.open.clone(),
        );
        registry.register(
            "custos_webhook_deliveries",
            "Incident webhook deliveries by webhook and outcome (delivered, failed, dropped, queued)",
            m.webhook.clone(),
        );
        m
    }

    /// Refreshes the gauges every 2 s.
    pub async fn run(self, engine: Arc<IncidentEngine>, webhooks: Option<Arc<WebhookNotifier>>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut seen: std::collections::HashSet<Vec<(String, String)>> = Default::default();
        loop {
            tick.tick().await;
            let mut now_open = std::collections::HashMap::new();
            for i in engine.active().await {
                *now_open
                    .entry(vec![
                        ("model".to_owned(), i.model.clone()),
                        ("severity".to_owned(), i.severity.as_str().to_owned()),
                    ])
                    .or_insert(0i64) += 1;
            }
            // Series of incidents that ended go back to 0 rather than
            // vanish, so a dashboard sees the drop.
            for labels in &seen {
                if !now_open.contains_key(labels) {
                    self.open.get_or_create(labels).set(0);
                }
            }
            for (labels, n) in now_open {
                self.open.get_or_create(&labels).set(n);
                seen.insert(labels);
            }
            for s in webhooks.iter().flat_map(|w| w.stats()) {
                for (outcome, n) in [
                    ("delivered", s.delivered),
                    ("failed", s.failed),
                    ("dropped", s.dropped),
                    ("queued", s.queued as u64),
                ] {
                    self.webhook
                        .get_or_create(&vec![
                            ("webhook".to_owned(), s.name.clone()),
                            ("outcome".to_owned(), outcome.to_owned()),
                        ])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
    }
}
