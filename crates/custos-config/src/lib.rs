//! Custos configuration, read in two phases: the TOML file into raw serde
//! structs that reject unknown keys ([`raw`]), then environment overrides, then
//! validation into the runtime [`Config`]. Every problem is collected with its
//! field path, so an operator sees all of them at once.
//!
//! This crate reads no files and no environment itself: the binary hands it
//! the text and a lookup function, so tests stay hermetic.

pub mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use validate::DEFAULT_MAX_BODY_SIZE;

/// The embedded default configuration, used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The environment variables that override configuration keys, with the key
/// each one overrides. `docs/configuration.md` lists the same table.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("CUSTOS_LISTEN", "server.listen"),
    ("CUSTOS_ADMIN_LISTEN", "server.admin_listen"),
    ("CUSTOS_DATA_DIR", "server.data_dir"),
    ("CUSTOS_MAX_BODY_SIZE", "server.max_body_size"),
    ("CUSTOS_SHUTDOWN_GRACE", "server.shutdown_grace"),
    ("CUSTOS_WORKER_THREADS", "server.worker_threads"),
    ("CUSTOS_LOG_FORMAT", "log.format"),
    ("CUSTOS_LOG_LEVEL", "log.level"),
    ("CUSTOS_LEDGER_DURABILITY", "ledger.durability"),
];

/// The validated runtime configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listeners and limits.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Upstream providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Public models, in file order.
    pub models: Vec<ModelConfig>,
    /// API key policy.
    pub keys: KeysConfig,
    /// The audit ledger.
    pub ledger: LedgerConfig,
    /// The admin console and admin API.
    pub console: ConsoleConfig,
    /// `[health]`: per-target windows, circuit breakers, active probes.
    pub health: custos_health::HealthSettings,
    /// `[limits]`: global, per-model and per-key concurrency limits.
    pub limits: custos_health::CapacitySettings,
    /// `[incidents]`: detection thresholds, recovery, webhooks.
    pub incidents: custos_health::IncidentSettings,
    /// `[timeseries]`: per-minute aggregates.
    pub timeseries: TimeseriesConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
}

/// `[metrics]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Whether `/metrics` carries per-key series (`custos_key_requests`,
    /// `custos_key_tokens`), one per key ID. Off by default: label sets
    /// stay bounded by configuration, not by the number of keys.
    pub per_key: bool,
}

/// `[timeseries]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeseriesConfig {
    /// How long per-minute aggregates are kept (default 400 days, so that a
    /// 12-month audit period plus its review fits).
    pub retention: Duration,
    /// How often completed minutes are written to the store (default 15 s).
    pub flush_interval: Duration,
}

/// `[console]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Where operators reach the console (`http://…` or `https://…`, no
    /// path), for setup links; `https` also makes cookies `Secure`. `None`:
    /// the admin listener's own address.
    pub public_url: Option<String>,
    /// A session ends after this long without a request.
    pub session_idle_timeout: Duration,
    /// A session ends this long after sign-in.
    pub session_absolute_timeout: Duration,
    /// Failed attempts (password, TOTP or recovery code) before a lock.
    pub max_failed_attempts: u32,
    /// How long a lock lasts.
    pub lockout: Duration,
    /// How long invitation and setup links work.
    pub invite_ttl: Duration,
    /// Longest lifetime of an admin API token.
    pub token_max_ttl: Duration,
}

impl Default for ConsoleConfig {
    /// The values an empty `[console]` section gives.
    fn default() -> Self {
        ConsoleConfig {
            public_url: None,
            session_idle_timeout: Duration::from_secs(30 * 60),
            session_absolute_timeout: Duration::from_secs(12 * 3600),
            max_failed_attempts: 5,
            lockout: Duration::from_secs(15 * 60),
            invite_ttl: Duration::from_secs(24 * 3600),
            token_max_ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// `[keys]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysConfig {
    /// Largest age of a key's current secret; older keys are due.
    pub max_age: Duration,
    /// Warning window before `max_age`.
    pub rotation_warning: Duration,
    /// How often last-used times are flushed to the store.
    pub last_used_flush: Duration,
}

/// How durable a record is when its response goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before every response completes (group commit).
    Sync,
    /// Responses complete after the write; fsync follows within the window.
    Batched {
        /// Longest delay between a write and its fsync.
        window: Duration,
    },
}

/// Which old checkpoints are kept (`ledger.checkpoint_keep_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointThinning {
    /// Every checkpoint younger than this is kept.
    pub keep_all_for: Duration,
    /// Of older ones, the newest of each period this long is kept.
    pub keep_one_per: Duration,
}

/// `[ledger]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Durability mode.
    pub durability: Durability,
    /// Checkpoint after this many records.
    pub checkpoint_every_records: u64,
    /// Checkpoint at least this often while the log grows.
    pub checkpoint_interval: Duration,
    /// Thinning of old checkpoints; `None` keeps them all.
    pub checkpoint_thinning: Option<CheckpointThinning>,
    /// Seal segments at this size.
    pub segment_max_size: u64,
    /// Seal segments at this age.
    pub segment_max_age: Duration,
    /// Keep records at least this long.
    pub retention: Duration,
    /// Serve traffic even when the ledger cannot record it (audited, loud).
    pub fail_open: bool,
    /// The checkpoint origin; `None` derives it from the install ID.
    pub origin: Option<String>,
    /// Pre-authentication refusals recorded per second, at most.
    pub unauthenticated_records_per_second: u32,
    /// External checkpoint copies.
    pub sinks: Vec<LedgerSink>,
}

/// Where checkpoint copies go, beyond the operator's reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerSink {
    /// A directory (a mounted WORM bucket, another host's share).
    Directory(PathBuf),
    /// An HTTP endpoint that receives each note by POST.
    Http(String),
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Gateway (`/v1`) listen address.
    pub listen: SocketAddr,
    /// Admin listen address (health, metrics, console).
    pub admin_listen: SocketAddr,
    /// State directory; `None` means the CLI default (`./custos-data`).
    pub data_dir: Option<PathBuf>,
    /// Largest accepted request body, in bytes.
    pub max_body_size: usize,
    /// How long in-flight requests and streams may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// Async runtime threads; `None` means one per CPU the process may use.
    pub worker_threads: Option<usize>,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// A tracing filter directive.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One upstream provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// The table name, `[providers.NAME]`.
    pub name: String,
    /// What kind of API it speaks, with kind-specific settings.
    pub kind: ProviderKind,
    /// Timeouts for every exchange with it.
    pub timeouts: Timeouts,
}

/// The API a provider speaks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderKind {
    /// Any OpenAI-compatible HTTP API: OpenAI, vLLM, Ollama, llama.cpp, Groq…
    OpenAi(OpenAiSettings),
    /// The built-in offline mock.
    Mock(MockSettings),
}

impl ProviderKind {
    /// The `kind` string of the config file.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi(_) => "openai",
            ProviderKind::Mock(_) => "mock",
        }
    }
}

/// Settings of an `openai` provider.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiSettings {
    /// Base URL including the version path, without a trailing slash.
    pub base_url: String,
    /// Where the API key comes from.
    pub credential: CredentialSource,
    /// Extra headers for every upstream request.
    pub headers: BTreeMap<String, String>,
    /// Idle pooled connections kept per host.
    pub max_idle_connections: usize,
}

/// Where a provider credential is read from. The value itself never appears
/// in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// No credential (a local vLLM or Ollama, for example).
    None,
    /// The named environment variable.
    Env(String),
    /// The file at this path; surrounding whitespace is trimmed.
    File(PathBuf),
}

/// Settings of the `mock` provider.
#[derive(Debug, Clone, PartialEq)]
pub struct MockSettings {
    /// Delay before the first byte of every answer.
    pub latency: Duration,
    /// Delay between stream chunks.
    pub chunk_delay: Duration,
    /// Content chunks in a streamed answer.
    pub chunks: usize,
    /// Length of embedding vectors.
    pub embedding_dimensions: usize,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP and TLS connect.
    pub connect: Duration,
    /// Until response headers (and, for streams, the first chunk) arrive.
    pub first_byte: Duration,
    /// Largest gap between two stream chunks.
    pub idle: Duration,
    /// The whole upstream exchange, body included.
    pub total: Duration,
}

/// A public model and where it is served.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The name clients send in `model`.
    pub name: String,
    /// Targets, in file order; routing sorts them by priority.
    pub targets: Vec<TargetConfig>,
}

/// One place a model is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// Name of the provider.
    pub provider: String,
    /// Model name sent upstream.
    pub model: String,
    /// Lower is tried first.
    pub priority: u32,
    /// Relative share among targets of equal priority.
    pub weight: u32,
}

/// One problem in a configuration, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path such as `providers.openai.timeouts.total`, or the
    /// environment variable that supplied the bad value.
    pub path: String,
    /// What is wrong, in lowercase without a trailing period.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not valid TOML, or a key is unknown or has the wrong type.
    #[error("{source_name}: {message}")]
    Syntax {
        /// The file name, or `<embedded default>`.
        source_name: String,
        /// The parser's message, which names the line, column and key.
        message: String,
    },
    /// The TOML parsed but some values are invalid.
    #[error("{source_name}: {} invalid setting(s)\n{}", .errors.len(), join(.errors))]
    Invalid {
        /// The file name, or `<embedded default>`.
        source_name: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses and validates a configuration.
///
/// `source_name` names the file in messages. `env` looks up environment
/// variables; only the names in [`ENV_OVERRIDES`] are asked for.
pub fn load(
    source_name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        source_name: source_name.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let mut errors = Vec::new();
    let from_env = validate::apply_env(&mut raw, env, &mut errors);
    let config = validate::validate(raw, from_env, &mut errors);
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid {
            source_name: source_name.to_owned(),
            errors,
        }),
    }
}

/// Loads the embedded default with the given environment.
pub fn load_default(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    load("<embedded default>", DEFAULT_CONFIG, env)
}

impl Config {
    /// The model with this public name.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}
