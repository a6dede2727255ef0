//! The configuration file exactly as written: serde structs that reject
//! unknown keys. Nothing here is validated beyond its TOML type.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`.
    #[serde(default)]
    pub server: RawServer,
    /// `[log]`.
    #[serde(default)]
    pub log: RawLog,
    /// `[providers.NAME]`.
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// `[[models]]`.
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// `[keys]`.
    #[serde(default)]
    pub keys: RawKeys,
    /// `[ledger]`.
    #[serde(default)]
    pub ledger: RawLedger,
    /// `[console]`.
    #[serde(default)]
    pub console: RawConsole,
    /// `[health]`: upstream health windows, breakers and probes.
    #[serde(default)]
    pub health: custos_health::config::RawHealth,
    /// `[limits]`: concurrency limits and wait queues.
    #[serde(default)]
    pub limits: custos_health::config::RawLimits,
    /// `[incidents]`: model-availability incidents and their webhooks.
    #[serde(default)]
    pub incidents: custos_health::config::RawIncidents,
    /// `[timeseries]`: per-minute aggregates in the state store.
    #[serde(default)]
    pub timeseries: RawTimeseries,
    /// `[metrics]`: what `/metrics` exposes.
    #[serde(default)]
    pub metrics: RawMetrics,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Adds per-key series (labelled with key IDs); off by default.
    pub per_key: Option<bool>,
}

/// `[timeseries]`: the per-minute aggregates kept in the state store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeseries {
    /// Keep per-minute aggregates this long.
    pub retention: Option<String>,
    /// How often completed minutes are written to the store.
    pub flush_interval: Option<String>,
}

/// `[console]`: the admin console and admin API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    /// The URL operators reach the console at, for setup links and cookies.
    pub public_url: Option<String>,
    /// A session ends after this long without a request.
    pub session_idle_timeout: Option<String>,
    /// A session ends this long after sign-in, whatever happens.
    pub session_absolute_timeout: Option<String>,
    /// Failed password or MFA attempts before the account locks.
    pub max_failed_attempts: Option<i64>,
    /// How long a locked account stays locked.
    pub lockout: Option<String>,
    /// How long invitation and setup links work.
    pub invite_ttl: Option<String>,
    /// Longest lifetime of an admin API token.
    pub token_max_ttl: Option<String>,
}

/// `[keys]`: API key policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// Largest age of a key's current secret before it is due for rotation.
    pub max_age: Option<String>,
    /// How long before `max_age` callers and operators are warned.
    pub rotation_warning: Option<String>,
    /// How often last-used times are written to the store.
    pub last_used_flush: Option<String>,
}

/// `[ledger]`: the audit ledger.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    /// `sync` or `batched`.
    pub durability: Option<String>,
    /// Batched mode: longest time between a write and its fsync.
    pub batch_window: Option<String>,
    /// Sign a checkpoint after this many records.
    pub checkpoint_every_records: Option<i64>,
    /// Sign a checkpoint at least this often while the log grows.
    pub checkpoint_interval: Option<String>,
    /// Remove old checkpoints down to one per `checkpoint_keep_one_per`.
    pub checkpoint_thinning: Option<bool>,
    /// Every checkpoint younger than this is kept.
    pub checkpoint_keep_all_for: Option<String>,
    /// Of older checkpoints, the newest of each period this long is kept.
    pub checkpoint_keep_one_per: Option<String>,
    /// Seal a segment at this size.
    pub segment_max_size: Option<RawSize>,
    /// Seal a segment at this age.
    pub segment_max_age: Option<String>,
    /// Keep records at least this long.
    pub retention: Option<String>,
    /// Required to set `retention` below 365 days.
    pub allow_short_retention: Option<bool>,
    /// Serve traffic even when the ledger cannot record it.
    pub fail_open: Option<bool>,
    /// The checkpoint origin line; defaults to `custos.local/<install-id>`.
    pub origin: Option<String>,
    /// Requests refused before authentication recorded per second, at most.
    pub unauthenticated_records_per_second: Option<i64>,
    /// External checkpoint copies.
    #[serde(default)]
    pub sinks: Vec<RawLedgerSink>,
}

/// One `[[ledger.sinks]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedgerSink {
    /// `directory` or `http`.
    pub kind: Option<String>,
    /// Directory sinks: where checkpoint notes are copied.
    pub path: Option<String>,
    /// HTTP sinks: where checkpoint notes are POSTed.
    pub url: Option<String>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Gateway listen address.
    pub listen: Option<String>,
    /// Admin listen address.
    pub admin_listen: Option<String>,
    /// Where state lives.
    pub data_dir: Option<String>,
    /// Largest accepted request body.
    pub max_body_size: Option<RawSize>,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Option<String>,
    /// Async runtime threads; 0 means one per CPU.
    pub worker_threads: Option<i64>,
}

/// A byte size: a plain integer, or a string such as `"4MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// A number of bytes.
    Bytes(i64),
    /// A number with a unit.
    Text(String),
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: Option<String>,
    /// A tracing filter directive such as `info` or `custos_gateway=debug`.
    pub level: Option<String>,
}

/// `[providers.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// `openai` or `mock`.
    pub kind: Option<String>,
    /// Base URL of an OpenAI-compatible API, including `/v1`.
    pub base_url: Option<String>,
    /// Name of the environment variable that holds the API key.
    pub api_key_env: Option<String>,
    /// Path of a file that holds the API key.
    pub api_key_file: Option<String>,
    /// Present only to give a precise error: keys never live in the config.
    pub api_key: Option<toml::Value>,
    /// Extra headers sent upstream on every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Upper bound of idle pooled connections kept per upstream host.
    pub max_idle_connections: Option<i64>,
    /// Mock only: delay before the first byte.
    pub latency: Option<String>,
    /// Mock only: delay between stream chunks.
    pub chunk_delay: Option<String>,
    /// Mock only: number of content chunks in a streamed answer.
    pub chunks: Option<i64>,
    /// Mock only: embedding vector length.
    pub embedding_dimensions: Option<i64>,
}

/// `[providers.NAME.timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP and TLS connect.
    pub connect: Option<String>,
    /// Until the response headers, and for streams the first chunk.
    pub first_byte: Option<String>,
    /// Largest gap between two stream chunks.
    pub idle: Option<String>,
    /// The whole upstream exchange.
    pub total: Option<String>,
}

/// `[[models]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The public model name clients ask for.
    pub name: Option<String>,
    /// Ordered targets.
    #[serde(default)]
    pub targets: Vec<RawTarget>,
}

/// One entry of `models[].targets`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Name of a `[providers.NAME]` table.
    pub provider: Option<String>,
    /// Model name sent upstream; defaults to the public name.
    pub model: Option<String>,
    /// Lower is tried first; default 0.
    pub priority: Option<i64>,
    /// Relative share among targets of equal priority; default 1.
    pub weight: Option<i64>,
}
