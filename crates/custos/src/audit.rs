//! The ledger as the server uses it: opening it from the configuration,
//! the gateway's audit sink (fail closed, bounded recording of
//! unauthenticated refusals), system events, and the outbox drain that
//! brings key lifecycle events written by other processes into the log.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use custos_config::{Config, LedgerSink};
use custos_gateway::audit::to_record;
use custos_gateway::auth::BoxFuture;
use custos_gateway::{AuditSink, AuditUnavailable, RequestOutcome};
use custos_ledger::{CheckpointSink, DirSink, Ledger, LedgerError, LedgerOptions, RecoveryReport};
use custos_record::{Admin, AdminActor, Change, RecordBody, Scalar, System, Target, Via};
use custos_store::{ActorKind, OutboxEvent, Store};
use custos_types::SystemClock;
use std::io::Write as _;
use std::sync::Mutex;

/// The ledger directory inside the data directory.
pub const LEDGER_DIR: &str = "ledger";

/// A stable, random identifier of this installation, created once.
fn install_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("install-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let mut bytes = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(id.as_bytes())?;
    Ok(id)
}

/// Publishes each checkpoint by HTTP POST, from the ledger's sink thread.
struct HttpSink {
    url: String,
    name: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl CheckpointSink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn publish(&mut self, size: u64, note: &str) -> Result<(), String> {
        let request = self
            .client
            .post(&self.url)
            .header("content-type", "text/plain; charset=utf-8")
            .header("x-custos-tree-size", size.to_string())
            .body(note.to_owned())
            .timeout(Duration::from_secs(10));
        // The sink thread is not a runtime thread, so blocking on the
        // runtime's handle is allowed here.
        let status = self
            .runtime
            .block_on(request.send())
            .map_err(|e| e.without_url().to_string())?
            .status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

/// Opens `<data_dir>/ledger` as configured.
pub fn open(
    config: &Config,
    data_dir: &Path,
    runtime: tokio::runtime::Handle,
    on_fsync: custos_ledger::FsyncObserver,
) -> anyhow::Result<(Ledger, RecoveryReport)> {
    let l = &config.ledger;
    let origin = match &l.origin {
        Some(o) => o.clone(),
        None => format!("custos.local/{}", install_id(data_dir)?),
    };
    let mut options = LedgerOptions::new(origin);
    options.durability = match l.durability {
        custos_config::Durability::Sync => custos_ledger::Durability::Sync,
        custos_config::Durability::Batched { window } => {
            custos_ledger::Durability::Batched { max_delay: window }
        }
    };
    options.checkpoint_every_records = l.checkpoint_every_records;
    options.checkpoint_every = l.checkpoint_interval;
    options.checkpoint_thinning =
        l.checkpoint_thinning
            .map(|t| custos_ledger::CheckpointThinning {
                keep_all_for: t.keep_all_for,
                keep_one_per: t.keep_one_per,
            });
    options.segment_max_bytes = l.segment_max_size;
    options.segment_max_age = l.segment_max_age;
    options.on_fsync = Some(on_fsync);
    for sink in &l.sinks {
        let sink: Box<dyn CheckpointSink> = match sink {
            LedgerSink::Directory(dir) => Box::new(DirSink::new(dir.clone())),
            LedgerSink::Http(url) => Box::new(HttpSink {
                url: url.clone(),
                name: format!("http:{url}"),
                client: reqwest::Client::new(),
                runtime: runtime.clone(),
            }),
        };
        options.sinks.push(sink);
    }
    let ledger = Ledger::open(&data_dir.join(LEDGER_DIR), options, Arc::new(SystemClock))?;
    Ok(ledger)
}

/// The gateway's audit sink over the ledger.
pub struct LedgerAudit {
    ledger: Option<Arc<Ledger>>,
    /// Why the ledger could not be opened, when it could not.
    open_error: Option<String>,
    fail_open: bool,
    unauthenticated: Mutex<Bucket>,
    /// Refusals before authentication not recorded because of the bound,
    /// since the last summary record.
    unrecorded: AtomicU64,
    /// The same, since the last metrics refresh.
    unrecorded_metric: AtomicU64,
}

/// A simple token bucket for the unauthenticated-recording bound.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let burst = self.rate * 10.0;
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl LedgerAudit {
    /// A sink over `ledger`, or over the error that kept it from opening
    /// (every request is then refused with that reason, unless fail-open).
    pub fn new(ledger: Result<Arc<Ledger>, String>, config: &Config) -> Arc<Self> {
        let rate = f64::from(config.ledger.unauthenticated_records_per_second);
        let (ledger, open_error) = match ledger {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(e)),
        };
        Arc::new(LedgerAudit {
            ledger,
            open_error,
            fail_open: config.ledger.fail_open,
            unauthenticated: Mutex::new(Bucket {
                rate,
                tokens: rate * 10.0,
                at: Instant::now(),
            }),
            unrecorded: AtomicU64::new(0),
            unrecorded_metric: AtomicU64::new(0),
        })
    }

    /// The ledger, when it is open.
    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.as_ref()
    }

    /// Takes the count of unrecorded unauthenticated refusals since the
    /// last call.
    pub fn take_unrecorded(&self) -> u64 {
        self.unrecorded.swap(0, Ordering::SeqCst)
    }

    fn unrecorded_since_metrics(&self) -> u64 {
        self.unrecorded_metric.swap(0, Ordering::SeqCst)
    }

    fn unavailable(&self) -> Option<String> {
        match &self.ledger {
            None => Some(
                self.open_error
                    .clone()
                    .unwrap_or_else(|| "the ledger is not open".into()),
            ),
            Some(l) => {
                let status = l.status();
                if status.healthy {
                    None
                } else {
                    Some(
                        status
                            .last_error
                            .unwrap_or_else(|| "the ledger writer stopped".into()),
                    )
                }
            }
        }
    }
}

impl AuditSink for LedgerAudit {
    fn ready(&self) -> Result<(), AuditUnavailable> {
        match self.unavailable() {
            Some(reason) if !self.fail_open => Err(AuditUnavailable(reason)),
            _ => Ok(()),
        }
    }

    fn submit(&self, outcome: &RequestOutcome) -> BoxFuture<'static, Result<(), AuditUnavailable>> {
        // Refusals before authentication are recorded up to a rate, so a
        // flood of garbage cannot fill the disk; the rest are counted and
        // summarised in a system record.
        if outcome.actor.is_none()
            && !self
                .unauthenticated
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
        {
            self.unrecorded.fetch_add(1, Ordering::Relaxed);
            self.unrecorded_metric.fetch_add(1, Ordering::Relaxed);
            return Box::pin(async { Ok(()) });
        }
        let fail_open = self.fail_open;
        let Some(ledger) = &self.ledger else {
            let reason = self.unavailable().unwrap_or_default();
            return Box::pin(async move {
                if fail_open {
                    Ok(())
                } else {
                    Err(AuditUnavailable(reason))
                }
            });
        };
        match ledger.append(RecordBody::Inference(to_record(outcome))) {
            Ok(ticket) => Box::pin(async move {
                match ticket.await {
                    Ok(_) => Ok(()),
                    Err(e) if fail_open => {
                        tracing::error!(error = %e, "audit record lost (fail-open is on)");
                        Ok(())
                    }
                    Err(e) => Err(AuditUnavailable(e.to_string())),
                }
            }),
            Err(e) if fail_open => {
                tracing::error!(error = %e, "audit record lost (fail-open is on)");
                Box::pin(async { Ok(()) })
            }
            Err(e) => {
                let reason = e.to_string();
                Box::pin(async move { Err(AuditUnavailable(reason)) })
            }
        }
    }
}

/// Appends a system record and waits until it is durable.
pub async fn system(ledger: &Ledger, record: System) -> Result<(), LedgerError> {
    ledger.append(RecordBody::System(record))?.await.map(|_| ())
}

/// Records how the last run ended and what recovery did.
pub async fn record_recovery(ledger: &Ledger, report: &RecoveryReport) -> Result<(), LedgerError> {
    if report.created || !report.was_unclean() {
        return Ok(());
    }
    let mut rec = System::new("ledger.recovered")
        .with("tree_size", Scalar::count(report.tree_size))
        .with("checkpoint_size", Scalar::count(report.checkpoint_size))
        .with("unsigned_records", Scalar::count(report.unsigned_records))
        .with("truncated_bytes", Scalar::count(report.truncated_bytes))
        .with("records_rehashed", Scalar::count(report.records_rehashed));
    if let Some(file) = &report.truncated_file {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        rec = rec.with("truncated_file", name);
    }
    tracing::warn!(?report, "the ledger recovered from an unclean shutdown");
    system(ledger, rec).await
}

fn json_scalar(v: &serde_json::Value) -> Option<Scalar> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::Bool(b) => Some(Scalar::from(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Scalar::from(i)),
            None => Some(Scalar::from(custos_record::truncate_text(&n.to_string()))),
        },
        serde_json::Value::String(s) if s.is_empty() => None,
        serde_json::Value::String(s) => Some(Scalar::from(custos_record::truncate_text(s))),
        other => Some(Scalar::from(custos_record::truncate_text(
            &other.to_string(),
        ))),
    }
}

/// A record field name for a store change field. Record keys may never
/// suggest a secret: the store describes a new secret by its masked form
/// (`secret` → `masked`) and an old one's grace (`previous_secret_not_after`
/// → `previous_material_not_after`).
fn change_name(field: &str) -> String {
    if field == "secret" {
        return "masked".to_owned();
    }
    let clean: String = field
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    clean
        .split('_')
        .map(|w| if w == "secret" { "material" } else { w })
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .take(64)
        .collect()
}

/// The admin record for one key lifecycle event from the outbox.
fn key_event_record(id: i64, event: &custos_store::KeyEvent) -> Admin {
    let action = match event.kind {
        custos_store::KeyEventKind::Created => "create",
        custos_store::KeyEventKind::Updated => "update",
        custos_store::KeyEventKind::Rotated => "rotate",
        custos_store::KeyEventKind::Revoked => "revoke",
    };
    admin_record(
        id,
        OutboxFields {
            kind: event.kind.as_str(),
            action,
            at_ms: event.at_ms,
            actor: &event.actor,
            target: Some(("key", event.key_id.to_string())),
            changes: &event.changes,
            reason: event.reason.as_deref(),
        },
    )
}

/// The admin record for any other outbox event (users, sign-ins, tokens,
/// incidents, evidence packs). The action is the kind's last part.
fn admin_event_record(id: i64, event: &custos_store::AdminEvent) -> Admin {
    let action = event.kind.rsplit('.').next().unwrap_or(&event.kind);
    admin_record(
        id,
        OutboxFields {
            kind: &event.kind,
            action,
            at_ms: event.at_ms,
            actor: &event.actor,
            target: event
                .target
                .as_ref()
                .map(|t| (t.kind.as_str(), t.id.clone())),
            changes: &event.changes,
            reason: event.reason.as_deref(),
        },
    )
}

/// What an outbox event of either shape contributes to its admin record.
struct OutboxFields<'a> {
    kind: &'a str,
    action: &'a str,
    at_ms: i64,
    actor: &'a custos_store::Actor,
    target: Option<(&'a str, String)>,
    changes: &'a BTreeMap<String, custos_store::outbox::FieldChange>,
    reason: Option<&'a str>,
}

fn admin_record(id: i64, f: OutboxFields<'_>) -> Admin {
    let mut changes = BTreeMap::new();
    for (field, change) in f.changes.iter().take(custos_record::MAX_MAP_ENTRIES - 2) {
        let name = change_name(field);
        let (before, after) = (json_scalar(&change.before), json_scalar(&change.after));
        if before.is_some() || after.is_some() {
            changes.insert(name, Change { before, after });
        }
    }
    // The outbox row ID makes the drain idempotent, and the time of the
    // change is kept even when the server drains it later.
    changes.insert(
        "outbox_id".into(),
        Change {
            before: None,
            after: Some(Scalar::from(id)),
        },
    );
    changes.insert(
        "occurred_at_ms".into(),
        Change {
            before: None,
            after: Some(Scalar::from(f.at_ms)),
        },
    );
    let actor = f.actor;
    Admin {
        event: f.kind.to_owned(),
        actor: AdminActor {
            ip: actor.ip,
            mfa: actor.mfa,
            role: match (&actor.role, actor.kind) {
                (Some(role), _) => custos_record::truncate_text(role),
                (None, ActorKind::Cli) => "host_shell".to_owned(),
                (None, ActorKind::Api) => "api_token".to_owned(),
                (None, ActorKind::User) => "console_user".to_owned(),
            },
            user: custos_record::truncate_text(&actor.name),
            via: match actor.kind {
                ActorKind::Cli => Via::Cli,
                ActorKind::Api => Via::Api,
                ActorKind::User => Via::Console,
            },
        },
        action: f.action.to_owned(),
        target: f.target.map(|(kind, id)| Target {
            id,
            kind: kind.to_owned(),
        }),
        changes,
        reason: f.reason.map(|r| {
            r.chars()
                .take(custos_record::MAX_REASON_BYTES / 4)
                .collect()
        }),
    }
}

/// Outbox IDs already in the ledger, so that a drain interrupted between
/// the append and the store update is not repeated. Only run when the
/// outbox has pending rows at startup; it reads the whole ledger.
fn appended_outbox_ids(ledger_dir: &Path) -> anyhow::Result<std::collections::HashSet<i64>> {
    let reader = custos_ledger::LedgerReader::open(ledger_dir);
    let mut seen = std::collections::HashSet::new();
    for stored in reader.records()? {
        let stored = stored?;
        if let RecordBody::Admin(a) = &stored.record.body
            && let Some(Change { after: Some(v), .. }) = a.changes.get("outbox_id")
            && let Some(id) = v.as_int()
        {
            seen.insert(id);
        }
    }
    Ok(seen)
}

/// Drains the store's outbox into the ledger: at start (events written
/// while the server was down) and then every `every`.
pub async fn drain_outbox(store: Arc<Store>, ledger: Arc<Ledger>, every: Duration) {
    let ledger_dir = ledger.dir().to_path_buf();
    let pending_at_start = store
        .outbox_pending(1)
        .await
        .map(|p| !p.is_empty())
        .unwrap_or(true);
    let mut already = if pending_at_start {
        match tokio::task::spawn_blocking(move || appended_outbox_ids(&ledger_dir)).await {
            Ok(Ok(set)) => set,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the ledger to resume the outbox drain");
                return;
            }
            Err(_) => return,
        }
    } else {
        std::collections::HashSet::new()
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = drain_once(&store, &ledger, &mut already).await {
            tracing::warn!(error = %e, "cannot drain the audit outbox; will retry");
        }
    }
}

/// One pass of the drain; returns how many events were recorded.
///
/// Each event is appended, made durable, remembered in `already`, and only
/// then marked drained in the store; after a crash between the two, the
/// startup scan finds its `outbox_id` in the ledger and skips it. An event
/// that cannot become a valid record is not dropped silently: a system
/// record names it, and then it is marked drained.
pub async fn drain_once(
    store: &Store,
    ledger: &Ledger,
    already: &mut std::collections::HashSet<i64>,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let pending = store.outbox_pending(256).await?;
        if pending.is_empty() {
            return Ok(total);
        }
        for entry in &pending {
            if !already.contains(&entry.id) {
                let body = match entry.event() {
                    Ok(OutboxEvent::Key(event)) => {
                        RecordBody::Admin(key_event_record(entry.id, &event))
                    }
                    Ok(OutboxEvent::Admin(event)) => {
                        RecordBody::Admin(admin_event_record(entry.id, &event))
                    }
                    Err(e) => unrecordable(entry, &e.to_string()),
                };
                let ticket = match ledger.append(body) {
                    Err(LedgerError::InvalidRecord(e)) => {
                        tracing::error!(outbox_id = entry.id, error = %e, "outbox event is not a valid record");
                        ledger.append(unrecordable(entry, &e.to_string()))?
                    }
                    other => other?,
                };
                ticket.await?;
                already.insert(entry.id);
            }
            store.outbox_mark_drained(&[entry.id]).await?;
            already.remove(&entry.id);
            total += 1;
        }
    }
}

fn unrecordable(entry: &custos_store::OutboxEntry, error: &str) -> RecordBody {
    RecordBody::System(
        System::new("outbox.unrecordable")
            .with("outbox_id", Scalar::from(entry.id))
            .with("kind", custos_record::truncate_text(&entry.kind))
            .with("error", custos_record::truncate_text(error)),
    )
}

/// Periodically records how many unauthenticated refusals went unrecorded.
pub async fn report_unrecorded(audit: Arc<LedgerAudit>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let n = audit.take_unrecorded();
        if n > 0
            && let Some(ledger) = audit.ledger()
        {
            let rec = System::new("requests.unrecorded")
                .with("count", Scalar::count(n))
                .with("window_seconds", Scalar::count(every.as_secs()));
            if let Err(e) = system(ledger, rec).await {
                tracing::warn!(error = %e, "cannot record the unrecorded-refusals summary");
            }
        }
    }
}

/// `/readyz`: the ledger accepts records.
pub struct LedgerReady(pub Arc<LedgerAudit>);

impl custos_admin::ReadyCheck for LedgerReady {
    fn name(&self) -> &'static str {
        "ledger_writable"
    }

    /// The writer is healthy, and the ledger directory still accepts new
    /// files (the next segment, checkpoint and frontier are new files, so
    /// a directory that turned read-only fails at the next seal even while
    /// the open segment still takes appends).
    fn check(&self) -> custos_admin::BoxFuture<'_, Result<(), String>> {
        let unavailable = self.0.unavailable();
        let dir = self.0.ledger().map(|l| l.dir().to_path_buf());
        Box::pin(async move {
            if let Some(reason) = unavailable {
                return Err(reason);
            }
            let Some(dir) = dir else {
                return Ok(());
            };
            tokio::task::spawn_blocking(move || {
                let probe = dir.join(".readyz-probe");
                std::fs::write(&probe, b"ok")
                    .and_then(|()| std::fs::remove_file(&probe))
                    .map_err(|e| format!("ledger directory {} is not writable: {e}", dir.display()))
            })
            .await
            .unwrap_or_else(|_| Err("the ledger probe task failed".to_owned()))
        })
    }
}

/// `/readyz`: the state store answers.
pub struct StoreReady(pub Arc<Store>);

impl custos_admin::ReadyCheck for StoreReady {
    fn name(&self) -> &'static str {
        "state_store"
    }

    fn check(&self) -> custos_admin::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match tokio::time::timeout(Duration::from_secs(2), self.0.keys().generation()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the state store did not answer within 2s".into()),
            }
        })
    }
}

/// Ledger metrics: appends, fsync latency, checkpoint age, queue depth.
pub struct LedgerMetrics {
    records: prometheus_client::metrics::gauge::Gauge,
    checkpoint_size: prometheus_client::metrics::gauge::Gauge,
    checkpoint_age: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    queue_depth: prometheus_client::metrics::gauge::Gauge,
    healthy: prometheus_client::metrics::gauge::Gauge,
    unrecorded: prometheus_client::metrics::counter::Counter,
    thinned: prometheus_client::metrics::counter::Counter,
    thin_failures: prometheus_client::metrics::counter::Counter,
    sink_failures: prometheus_client::metrics::counter::Counter,
    /// Observes fsync durations; handed to the ledger options.
    pub fsync: prometheus_client::metrics::histogram::Histogram,
}

impl LedgerMetrics {
    /// Registers the ledger families.
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Arc<Self> {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        let m = LedgerMetrics {
            records: Default::default(),
            checkpoint_size: Default::default(),
            checkpoint_age: Default::default(),
            queue_depth: Default::default(),
            healthy: Default::default(),
            unrecorded: Default::default(),
            thinned: Default::default(),
            thin_failures: Default::default(),
            sink_failures: Default::default(),
            fsync: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
        };
        registry.register(
            "custos_ledger_records",
            "Records in the audit ledger (tree size)",
            m.records.clone(),
        );
        registry.register(
            "custos_ledger_checkpoint_size",
            "Tree size of the newest signed checkpoint",
            m.checkpoint_size.clone(),
        );
        registry.register(
            "custos_ledger_checkpoint_age_seconds",
            "Seconds since the newest checkpoint was signed",
            m.checkpoint_age.clone(),
        );
        registry.register(
            "custos_ledger_queue_depth",
            "Records waiting for the ledger writer",
            m.queue_depth.clone(),
        );
        registry.register(
            "custos_ledger_healthy",
            "1 when the ledger accepts records, 0 when traffic is refused",
            m.healthy.clone(),
        );
        registry.register(
            "custos_ledger_unrecorded_refusals",
            "Unauthenticated refusals not recorded because of the rate bound",
            m.unrecorded.clone(),
        );
        registry.register(
            "custos_ledger_checkpoints_thinned",
            "Old checkpoints removed by thinning",
            m.thinned.clone(),
        );
        registry.register(
            "custos_ledger_thin_failures",
            "Checkpoint thinning passes that failed (the ledger keeps running)",
            m.thin_failures.clone(),
        );
        registry.register(
            "custos_ledger_sink_failures",
            "Checkpoint copies a sink failed to publish",
            m.sink_failures.clone(),
        );
        registry.register(
            "custos_ledger_fsync_seconds",
            "Duration of each ledger fsync",
            m.fsync.clone(),
        );
        Arc::new(m)
    }

    /// Refreshes the gauges every second.
    pub async fn run(self: Arc<Self>, audit: Arc<LedgerAudit>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // The ledger's counters are cumulative; the exported ones advance
        // by the difference.
        let mut seen = custos_ledger::StatsSnapshot::default();
        loop {
            tick.tick().await;
            let healthy = audit.unavailable().is_none();
            self.healthy.set(i64::from(healthy));
            if let Some(ledger) = audit.ledger() {
                let status = ledger.status();
                self.records
                    .set(i64::try_from(status.size).unwrap_or(i64::MAX));
                self.checkpoint_size
                    .set(i64::try_from(status.checkpoint_size).unwrap_or(i64::MAX));
                self.checkpoint_age
                    .set(status.checkpoint_age.map_or(0.0, |d| d.as_secs_f64()));
                self.queue_depth
                    .set(i64::try_from(status.queue_depth).unwrap_or(i64::MAX));
                let now = ledger.stats().snapshot();
                self.thinned.inc_by(
                    now.checkpoints_thinned
                        .saturating_sub(seen.checkpoints_thinned),
                );
                self.thin_failures
                    .inc_by(now.thin_failures.saturating_sub(seen.thin_failures));
                self.sink_failures
                    .inc_by(now.sink_failures.saturating_sub(seen.sink_failures));
                seen = now;
            }
            self.unrecorded.inc_by(audit.unrecorded_since_metrics());
        }
    }
}

/// Writes every circuit-breaker change to the ledger (and the log).
pub struct BreakerToLedger(pub Arc<LedgerAudit>);

impl custos_health::BreakerListener for BreakerToLedger {
    fn breaker_changed(&self, e: &custos_health::BreakerEvent) {
        let reason = match &e.reason {
            custos_health::TransitionReason::ErrorRate { .. } => "error_rate",
            custos_health::TransitionReason::ConsecutiveFailures { .. } => "consecutive_failures",
            custos_health::TransitionReason::CoolDownElapsed => "cool_down_elapsed",
            custos_health::TransitionReason::TrialSucceeded => "trial_succeeded",
            custos_health::TransitionReason::TrialFailed { .. } => "trial_failed",
        };
        tracing::warn!(
            provider = %e.target.provider,
            model = %e.target.model,
            from = e.from.as_str(),
            to = e.to.as_str(),
            reason,
            "circuit breaker changed state"
        );
        if let Some(ledger) = self.0.ledger() {
            let rec = System::new("breaker.changed")
                .with("provider", custos_record::truncate_text(&e.target.provider))
                .with("model", custos_record::truncate_text(&e.target.model))
                .with("from", e.from.as_str())
                .with("to", e.to.as_str())
                .with("reason", reason)
                .with("opens", Scalar::count(u64::from(e.opens)));
            // Enqueued now; nothing on the request path waits for it.
            if let Err(err) = ledger.append(RecordBody::System(rec)) {
                tracing::error!(error = %err, "cannot record a breaker change");
            }
        }
    }
}

/// The circuit-breaker state of every target, as a gauge (0 closed,
/// 1 half-open, 2 open).
pub async fn breaker_gauges(health: custos_health::HealthEngine, gauge: BreakerGauge) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for t in health.targets(tokio::time::Instant::now()) {
            gauge
                .get_or_create(&vec![
                    ("provider".to_owned(), t.target.provider.to_string()),
                    ("model".to_owned(), t.target.model.to_string()),
                ])
                .set(t.state.gauge());
        }
    }
}

/// Labels: provider and upstream model, both from configuration (bounded).
pub type BreakerGauge = prometheus_client::metrics::family::Family<
    Vec<(String, String)>,
    prometheus_client::metrics::gauge::Gauge,
>;

/// `/readyz`: every configured model has at least one target whose circuit
/// is not open.
pub struct ModelsReady {
    /// The health engine.
    pub health: custos_health::HealthEngine,
    /// Each public model with its targets.
    pub models: Vec<(String, Vec<custos_health::TargetId>)>,
}

impl custos_admin::ReadyCheck for ModelsReady {
    fn name(&self) -> &'static str {
        "models_available"
    }

    fn check(&self) -> custos_admin::BoxFuture<'_, Result<(), String>> {
        let open: std::collections::HashSet<custos_health::TargetId> = self
            .health
            .targets(tokio::time::Instant::now())
            .into_iter()
            .filter(|t| t.state == custos_health::BreakerState::Open)
            .map(|t| t.target)
            .collect();
        let down: Vec<&str> = self
            .models
            .iter()
            .filter(|(_, targets)| targets.iter().all(|t| open.contains(t)))
            .map(|(m, _)| m.as_str())
            .collect();
        let result = if down.is_empty() {
            Ok(())
        } else {
            Err(format!("no available target for: {}", down.join(", ")))
        };
        Box::pin(async move { result })
    }
}
