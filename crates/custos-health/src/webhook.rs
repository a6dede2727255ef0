//! The webhook notifier: POSTs incident events (and, when asked, breaker
//! changes) to configured receivers, as a generic JSON document or a
//! Slack-compatible message.
//!
//! The notifier never blocks its caller: [`WebhookNotifier`] implements
//! both listener traits by building the payload and pushing it onto the
//! webhook's bounded queue (dropping the oldest, counted, when full). One
//! task per webhook delivers in order, so a slow receiver delays only
//! itself. Each delivery is tried up to `max_attempts` times with a
//! per-attempt timeout; between attempts it waits an exponential backoff
//! with jitter (`initial_backoff × 2^(n-1)`, capped at `max_backoff`, of
//! which a random half is kept), or the receiver's `Retry-After` when that
//! is longer. Connection errors, timeouts, 408, 429 and 5xx are retried;
//! other answers are final.
//!
//! # Generic payload
//!
//! ```json
//! {
//!   "version": 1,
//!   "source": "custos",
//!   "type": "incident.opened",
//!   "delivery_id": "INC-20250301-0001.1",
//!   "sent_at": "2025-03-01T12:00:00.000Z",
//!   "incident": { "id": "INC-20250301-0001", "model": "gpt-4o", "title": "…",
//!                 "severity": "sev2", "status": "open", "started_at": "…",
//!                 "acknowledged_at": null, "acknowledged_by": null,
//!                 "assignee": null, "resolved_at": null, "resolution": null,
//!                 "symptoms": [ { "kind": "error_rate", … } ],
//!                 "affected_keys": 17, "time_to_acknowledge_ms": null,
//!                 "time_to_resolve_ms": null },
//!   "event": { "seq": 1, "at": "…", "actor": null, "event": "opened", … },
//!   "link": "https://custos.example/admin/incidents/INC-20250301-0001"
//! }
//! ```
//!
//! `type` is `incident.opened`, `incident.updated`, `incident.resolved` or
//! `breaker.changed`; a breaker notice carries `"breaker": {…}` (a
//! [`BreakerEvent`]) instead of `incident` and `event`. `link` is present
//! when `link_base` is configured. `delivery_id` is the same on every retry
//! of one delivery, so receivers can de-duplicate.
//!
//! # Headers and signature
//!
//! `Content-Type: application/json`, `User-Agent: custos/VERSION`,
//! `X-Custos-Event: <type>`, `X-Custos-Delivery: <delivery_id>`, and, when
//! a secret is configured, `X-Custos-Signature-256: sha256=<hex>`, the
//! HMAC-SHA-256 of the exact body bytes keyed with the secret. Receivers
//! must compare it in constant time and should reject a `sent_at` older
//! than a few minutes. Webhook URLs (a Slack URL is itself a credential)
//! and secrets never appear in logs or errors; webhooks are named by their
//! `name`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use custos_types::{Clock, ExposeSecret, SecretString};
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::breaker::BreakerEvent;
use crate::health::BreakerListener;
use crate::incident::IncidentListener;
use crate::incident::model::{
    IncidentNotice, IncidentSummary, NoticeKind, Severity, TimelineEvent, TimelineKind,
};

/// The body format of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The documented generic JSON document.
    Generic,
    /// A Slack incoming-webhook message (`text` plus `blocks`).
    Slack,
}

/// What a webhook is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WebhookEvent {
    /// An incident opened.
    #[serde(rename = "incident.opened")]
    IncidentOpened,
    /// An incident's timeline grew (severity, symptoms, acknowledgement,
    /// notes, breaker changes …).
    #[serde(rename = "incident.updated")]
    IncidentUpdated,
    /// An incident was resolved.
    #[serde(rename = "incident.resolved")]
    IncidentResolved,
    /// A target's circuit breaker changed state.
    #[serde(rename = "breaker.changed")]
    BreakerChanged,
}

impl WebhookEvent {
    /// Every event, in order.
    pub const ALL: [WebhookEvent; 4] = [
        WebhookEvent::IncidentOpened,
        WebhookEvent::IncidentUpdated,
        WebhookEvent::IncidentResolved,
        WebhookEvent::BreakerChanged,
    ];

    /// The name used in configuration, payloads and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::IncidentOpened => "incident.opened",
            WebhookEvent::IncidentUpdated => "incident.updated",
            WebhookEvent::IncidentResolved => "incident.resolved",
            WebhookEvent::BreakerChanged => "breaker.changed",
        }
    }

    fn of(kind: NoticeKind) -> Self {
        match kind {
            NoticeKind::Opened => WebhookEvent::IncidentOpened,
            NoticeKind::Updated => WebhookEvent::IncidentUpdated,
            NoticeKind::Resolved => WebhookEvent::IncidentResolved,
        }
    }
}

/// Where a value comes from. Only the binary resolves it; this crate reads
/// no environment and no files. `Debug` and `Display` never show an inline
/// value: a URL can carry a token.
#[derive(Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// Written in the configuration (allowed for URLs that are not secret).
    Inline(String),
    /// The named environment variable.
    Env(String),
    /// The file at this path; surrounding whitespace is trimmed.
    File(std::path::PathBuf),
}

impl std::fmt::Debug for ValueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueSource::Inline(_) => f.write_str("Inline([redacted])"),
            ValueSource::Env(var) => f.debug_tuple("Env").field(var).finish(),
            ValueSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// Validated `[[incidents.webhooks]]` entry; see
/// [`crate::config::RawWebhook`] for the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// A name for logs and metrics.
    pub name: String,
    /// Body format.
    pub format: WebhookFormat,
    /// Where the URL comes from.
    pub url: ValueSource,
    /// Where the HMAC secret comes from (never inline).
    pub secret: Option<ValueSource>,
    /// What it is sent.
    pub events: BTreeSet<WebhookEvent>,
    /// Incidents less severe than this are not sent.
    pub min_severity: Severity,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Deliveries waiting at most; the oldest is dropped past it.
    pub queue_size: usize,
    /// Base of incident links, such as
    /// `https://custos.example/admin/incidents/`.
    pub link_base: Option<String>,
}

impl WebhookSettings {
    /// Settings with every default, for `url`.
    pub fn new(name: impl Into<String>, format: WebhookFormat, url: ValueSource) -> Self {
        WebhookSettings {
            name: name.into(),
            format,
            url,
            secret: None,
            events: [
                WebhookEvent::IncidentOpened,
                WebhookEvent::IncidentUpdated,
                WebhookEvent::IncidentResolved,
            ]
            .into_iter()
            .collect(),
            min_severity: Severity::Sev4,
            timeout: Duration::from_secs(5),
            max_attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            queue_size: 1000,
            link_base: None,
        }
    }
}

/// Why a webhook could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The resolved URL is not an absolute http(s) URL. The URL itself is
    /// not repeated: it may be a credential.
    #[error("webhook `{name}`: the url is not an absolute http or https url")]
    BadUrl {
        /// The webhook's name.
        name: String,
    },
}

/// A webhook with its URL and secret resolved by the binary. Its `Debug`
/// shows neither.
#[derive(Clone)]
pub struct WebhookTarget {
    settings: WebhookSettings,
    url: reqwest::Url,
    secret: Option<SecretString>,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("name", &self.settings.name)
            .field("format", &self.settings.format)
            .field("url", &"[redacted]")
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl WebhookTarget {
    /// Builds a target from its settings and the resolved URL and secret.
    pub fn new(
        settings: WebhookSettings,
        url: &SecretString,
        secret: Option<SecretString>,
    ) -> Result<Self, WebhookError> {
        let bad = || WebhookError::BadUrl {
            name: settings.name.clone(),
        };
        let url = reqwest::Url::parse(url.expose_secret().trim()).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad());
        }
        Ok(WebhookTarget {
            settings,
            url,
            secret,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }
}

/// Delivery counters of one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStats {
    /// The webhook's name.
    pub name: String,
    /// Deliveries waiting.
    pub queued: usize,
    /// Deliveries accepted by the receiver.
    pub delivered: u64,
    /// Deliveries given up after their last attempt or a final refusal.
    pub failed: u64,
    /// Deliveries dropped because the queue was full.
    pub dropped: u64,
    /// HTTP attempts made.
    pub attempts: u64,
}

#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    event: WebhookEvent,
    body: Vec<u8>,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    attempts: AtomicU64,
}

#[derive(Debug)]
struct Hook {
    target: WebhookTarget,
    queue: Mutex<VecDeque<Delivery>>,
    notify: Notify,
    counters: Counters,
}

struct Shared {
    hooks: Vec<Arc<Hook>>,
    clock: Arc<dyn Clock>,
    rng: Mutex<StdRng>,
    breaker_seq: AtomicU64,
}

/// The notifier. Give it to the incident engine and the health engine as a
/// listener (through their fan-outs).
pub struct WebhookNotifier {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .shared
            .hooks
            .iter()
            .map(|h| h.target.settings.name.as_str())
            .collect();
        f.debug_struct("WebhookNotifier")
            .field("webhooks", &names)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex>` of the HMAC-SHA-256 of `body` under `secret`.
pub fn signature(secret: &SecretString, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC
    // would only ever be rejected by the receiver.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

impl WebhookNotifier {
    /// Starts one delivery task per webhook. Must be called inside a tokio
    /// runtime. `seed` seeds the backoff jitter.
    pub fn start(
        targets: Vec<WebhookTarget>,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
        seed: u64,
    ) -> Self {
        let hooks: Vec<Arc<Hook>> = targets
            .into_iter()
            .map(|target| {
                Arc::new(Hook {
                    target,
                    queue: Mutex::new(VecDeque::new()),
                    notify: Notify::new(),
                    counters: Counters::default(),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            hooks,
            clock,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            breaker_seq: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = shared
            .hooks
            .iter()
            .map(|hook| {
                tokio::spawn(worker(
                    hook.clone(),
                    shared.clone(),
                    client.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        WebhookNotifier {
            shared,
            stop,
            tasks: Mutex::new(tasks),
        }
    }

    /// Counters of every webhook.
    pub fn stats(&self) -> Vec<WebhookStats> {
        self.shared
            .hooks
            .iter()
            .map(|h| WebhookStats {
                name: h.target.settings.name.clone(),
                queued: h.queue.lock().unwrap_or_else(PoisonError::into_inner).len(),
                delivered: h.counters.delivered.load(Ordering::Relaxed),
                failed: h.counters.failed.load(Ordering::Relaxed),
                dropped: h.counters.dropped.load(Ordering::Relaxed),
                attempts: h.counters.attempts.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Lets the tasks deliver what is queued for up to `grace` (each
    /// delivery gets at most one more attempt), then stops them.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let deadline = tokio::time::Instant::now() + grace;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    fn enqueue(&self, hook: &Hook, delivery: Delivery) {
        let mut q = hook.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() >= hook.target.settings.queue_size.max(1) {
            q.pop_front();
            hook.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "custos::webhooks",
                webhook = %hook.target.settings.name,
                "webhook queue full; dropped the oldest delivery"
            );
        }
        q.push_back(delivery);
        drop(q);
        hook.notify.notify_one();
    }
}

impl Drop for WebhookNotifier {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

impl IncidentListener for WebhookNotifier {
    fn incident_event(&self, notice: &IncidentNotice) {
        let event = WebhookEvent::of(notice.kind);
        let sent_at = self.shared.clock.now();
        let id = format!("{}.{}", notice.incident.id, notice.event.seq);
        for hook in &self.shared.hooks {
            let s = &hook.target.settings;
            if !s.events.contains(&event) || notice.incident.severity > s.min_severity {
                continue;
            }
            let link = s
                .link_base
                .as_ref()
                .map(|base| format!("{base}{}", notice.incident.id));
            let body = match s.format {
                WebhookFormat::Generic => generic_incident(notice, &id, sent_at, link.as_deref()),
                WebhookFormat::Slack => slack_incident(notice, link.as_deref()),
            };
            self.enqueue(
                hook,
                Delivery {
                    id: id.clone(),
                    event,
                    body: body.to_string().into_bytes(),
                },
            );
        }
    }
}

impl BreakerListener for WebhookNotifier {
    fn breaker_changed(&self, ev: &BreakerEvent) {
        let event = WebhookEvent::BreakerChanged;
        let n = self.shared.breaker_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("breaker.{}.{n}", crate::time::unix_ms(ev.at));
        for hook in &self.shared.hooks {
            if !hook.target.settings.events.contains(&event) {
                continue;
            }
            let body = match hook.target.settings.format {
                WebhookFormat::Generic => json!({
                    "version": 1,
                    "source": "custos",
                    "type": event.as_str(),
                    "delivery_id": id,
                    "sent_at": crate::time::rfc3339(self.shared.clock.now()),
                    "breaker": ev,
                }),
                WebhookFormat::Slack => slack_breaker(ev),
            };
            self.enqueue(
                hook,
                Delivery {
                    id: id.clone(),
                    event,
                    body: body.to_string().into_bytes(),
                },
            );
        }
    }
}

fn generic_incident(
    notice: &IncidentNotice,
    id: &str,
    sent_at: SystemTime,
    link: Option<&str>,
) -> serde_json::Value {
    let mut v = json!({
        "version": 1,
        "source": "custos",
        "type": notice.kind.as_str(),
        "delivery_id": id,
        "sent_at": crate::time::rfc3339(sent_at),
        "incident": notice.incident,
        "event": notice.event,
    });
    if let (Some(link), Some(obj)) = (link, v.as_object_mut()) {
        obj.insert("link".into(), json!(link));
    }
    v
}

/// Escapes text for Slack mrkdwn.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn icon(severity: Severity, resolved: bool) -> &'static str {
    if resolved {
        return ":white_check_mark:";
    }
    match severity {
        Severity::Sev1 => ":rotating_light:",
        Severity::Sev2 => ":red_circle:",
        Severity::Sev3 => ":large_orange_circle:",
        Severity::Sev4 => ":large_yellow_circle:",
    }
}

/// One line about a timeline event, for people.
pub fn describe_event(event: &TimelineEvent) -> String {
    let by = event
        .actor
        .as_deref()
        .map_or_else(|| "Custos".to_owned(), str::to_owned);
    match &event.kind {
        TimelineKind::Opened { severity, symptoms } => format!(
            "opened as {severity}: {}",
            symptoms
                .iter()
                .map(|s| s.describe())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        TimelineKind::SymptomDetected { symptom } => {
            format!("new symptom: {}", symptom.describe())
        }
        TimelineKind::SeverityChanged { from, to, reason } => {
            format!("{by} changed severity {from} → {to}: {reason}")
        }
        TimelineKind::BreakerChanged {
            target,
            from,
            to,
            reason,
        } => format!("circuit breaker of {target}: {from} → {to} ({reason})"),
        TimelineKind::RecoveryStarted => "all symptoms cleared; recovery period started".into(),
        TimelineKind::RecoveryInterrupted { symptoms } => format!(
            "recovery interrupted: {}",
            symptoms
                .iter()
                .map(|s| s.describe())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        TimelineKind::Acknowledged => format!("acknowledged by {by}"),
        TimelineKind::Assigned { assignee } => format!("{by} assigned it to {assignee}"),
        TimelineKind::Note { text } => format!("note by {by}: {text}"),
        TimelineKind::Resolved { resolution, note } => {
            let how = match resolution {
                crate::incident::model::Resolution::Auto => {
                    "resolved automatically after a sustained recovery".to_owned()
                }
                crate::incident::model::Resolution::Manual => format!("resolved by {by}"),
            };
            match note {
                Some(n) => format!("{how}: {n}"),
                None => how,
            }
        }
        TimelineKind::PostmortemAttached => format!("postmortem attached by {by}"),
    }
}

fn verb(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::Opened => "opened",
        NoticeKind::Updated => "updated",
        NoticeKind::Resolved => "resolved",
    }
}

fn slack_incident(notice: &IncidentNotice, link: Option<&str>) -> serde_json::Value {
    let inc: &IncidentSummary = &notice.incident;
    let resolved = notice.kind == NoticeKind::Resolved;
    let sev = inc.severity.as_str().to_uppercase();
    let what = describe_event(&notice.event);
    let text = format!(
        "{} [{sev}] {} {}: {} — {}",
        icon(inc.severity, resolved),
        inc.id,
        verb(notice.kind),
        esc(&inc.model),
        esc(&what)
    );
    let header: String = format!("{sev} · {} {} · {}", inc.id, verb(notice.kind), inc.model)
        .chars()
        .take(150)
        .collect();
    let id_text = match link {
        Some(l) => format!("<{}|{}>", esc(l), inc.id),
        None => inc.id.clone(),
    };
    let field =
        |name: &str, value: String| json!({"type": "mrkdwn", "text": format!("*{name}*\n{value}")});
    json!({
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": true}},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("{} *{}*", icon(inc.severity, resolved), esc(&inc.title))}},
            {"type": "section", "fields": [
                field("Model", esc(&inc.model)),
                field("Severity", inc.severity.as_str().to_owned()),
                field("Status", inc.status.as_str().to_owned()),
                field("Started", crate::time::rfc3339(inc.started_at)),
                field("Affected keys", inc.affected_keys.to_string()),
                field("Assignee", inc.assignee.as_deref().map_or_else(|| "unassigned".to_owned(), esc)),
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*Event:* {}", esc(&what))}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("Custos incident {id_text} · event #{}", notice.event.seq)}
            ]},
        ],
    })
}

fn slack_breaker(ev: &BreakerEvent) -> serde_json::Value {
    let icon = match ev.to {
        crate::breaker::BreakerState::Open => ":red_circle:",
        crate::breaker::BreakerState::HalfOpen => ":large_yellow_circle:",
        crate::breaker::BreakerState::Closed => ":white_check_mark:",
    };
    let text = format!(
        "{icon} Circuit breaker {}: {} → {} ({}; {} failures of {} attempts, {} in a row)",
        esc(&ev.target.to_string()),
        ev.from,
        ev.to,
        ev.reason.label(),
        ev.figures.failures,
        ev.figures.requests,
        ev.figures.consecutive_failures
    );
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        ],
    })
}

/// Whether an HTTP status is worth another attempt.
fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

fn backoff(s: &WebhookSettings, attempt: u32, rng: &Mutex<StdRng>) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = s
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(s.max_backoff);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let jitter = rng
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .gen_range(0..=nanos);
    half + Duration::from_nanos(jitter)
}

async fn worker(
    hook: Arc<Hook>,
    shared: Arc<Shared>,
    client: reqwest::Client,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let next = hook
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        match next {
            Some(delivery) => deliver(&hook, &shared, &client, &delivery, &stopped).await,
            None => {
                if *stopped.borrow() {
                    return;
                }
                // `notify_one` stores a permit when nobody waits, so a
                // delivery enqueued since the queue was read is not missed.
                tokio::select! {
                    _ = hook.notify.notified() => {}
                    _ = stopped.changed() => {}
                }
            }
        }
    }
}

async fn deliver(
    hook: &Hook,
    shared: &Shared,
    client: &reqwest::Client,
    d: &Delivery,
    stopped: &watch::Receiver<bool>,
) {
    let s = &hook.target.settings;
    let signature = hook.target.secret.as_ref().map(|k| signature(k, &d.body));
    let attempts = s.max_attempts.max(1);
    for attempt in 1..=attempts {
        hook.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let mut req = client
            .post(hook.target.url.clone())
            .timeout(s.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::USER_AGENT,
                concat!("custos/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-custos-event", d.event.as_str())
            .header("x-custos-delivery", d.id.as_str())
            .body(d.body.clone());
        if let Some(sig) = &signature {
            req = req.header("x-custos-signature-256", sig.as_str());
        }
        let (retry, wait_hint, outcome) = match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                hook.counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    target: "custos::webhooks",
                    webhook = %s.name,
                    delivery = %d.id,
                    attempt,
                    "webhook delivered"
                );
                return;
            }
            Ok(resp) => {
                let status = resp.status();
                let hint = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                (
                    retryable(status),
                    hint,
                    format!("status {}", status.as_u16()),
                )
            }
            // Without the URL: reqwest's error text can contain it.
            Err(e) if e.is_timeout() => (true, None, "timeout".to_owned()),
            Err(e) if e.is_connect() => (true, None, "connect error".to_owned()),
            Err(_) => (true, None, "transport error".to_owned()),
        };
        let last = attempt == attempts || !retry || *stopped.borrow();
        if last {
            hook.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                target: "custos::webhooks",
                webhook = %s.name,
                delivery = %d.id,
                attempt,
                outcome = %outcome,
                "webhook delivery failed; giving up"
            );
            return;
        }
        let mut wait = backoff(s, attempt, &shared.rng);
        if let Some(hint) = wait_hint {
            wait = wait.max(hint.min(s.max_backoff));
        }
        tracing::warn!(
            target: "custos::webhooks",
            webhook = %s.name,
            delivery = %d.id,
            attempt,
            outcome = %outcome,
            retry_in_ms = crate::time::millis(wait),
            "webhook delivery failed; retrying"
        );
        // A shutdown cuts the wait short: one last immediate attempt follows.
        let mut stop = stopped.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = signature(&SecretString::from("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let s = WebhookSettings {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
            ..WebhookSettings::new(
                "t",
                WebhookFormat::Generic,
                ValueSource::Inline(String::new()),
            )
        };
        let rng = Mutex::new(StdRng::seed_from_u64(1));
        for (attempt, full) in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8)] {
            let full = Duration::from_secs(full);
            let b = backoff(&s, attempt, &rng);
            assert!(b >= full / 2 && b <= full, "{attempt}: {b:?}");
        }
    }

    #[test]
    fn urls_must_be_http() {
        let s = WebhookSettings::new("ops", WebhookFormat::Slack, ValueSource::Env("X".into()));
        for bad in ["", "ftp://x/y", "not a url", "https://", "mailto:a@b"] {
            let err = WebhookTarget::new(s.clone(), &SecretString::from(bad), None).unwrap_err();
            assert!(!err.to_string().contains("ftp"), "{err}");
        }
        let t = WebhookTarget::new(
            s,
            &SecretString::from("https://hooks.example/T0/B0/token"),
            Some(SecretString::from("k3y")),
        )
        .unwrap();
        let debug = format!("{t:?}");
        assert!(
            !debug.contains("token") && !debug.contains("k3y"),
            "{debug}"
        );
    }

    #[test]
    fn slack_text_is_escaped() {
        assert_eq!(esc("a <b> & c"), "a &lt;b&gt; &amp; c");
    }
}
