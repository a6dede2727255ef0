//! Phase two: environment overrides, then raw values into the runtime
//! [`Config`], collecting every problem with its path.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::raw::{RawConfig, RawModel, RawProvider, RawSize, RawTimeouts};
use crate::{
    CheckpointThinning, Config, ConsoleConfig, CredentialSource, Durability, FieldError,
    KeysConfig, LedgerConfig, LedgerSink, LogConfig, LogFormat, MetricsConfig, MockSettings,
    ModelConfig, OpenAiSettings, ProviderConfig, ProviderKind, ServerConfig, TargetConfig,
    Timeouts, TimeseriesConfig,
};

/// Default largest request body: 8 MiB, room for a few inline images.
pub const DEFAULT_MAX_BODY_SIZE: usize = 8 * 1024 * 1024;

/// The most async runtime threads `server.worker_threads` may ask for.
const MAX_WORKER_THREADS: i64 = 1024;

const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(10),
    // For a non-streaming request the first byte only comes once the whole
    // answer is generated, so this has to be generous.
    first_byte: Duration::from_secs(120),
    idle: Duration::from_secs(60),
    total: Duration::from_secs(600),
};

struct Ctx<'a> {
    errors: &'a mut Vec<FieldError>,
    /// Config keys whose value came from an environment variable.
    from_env: BTreeMap<&'static str, &'static str>,
}

impl Ctx<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        let path = match self.from_env.get(path) {
            Some(var) => format!("{path} (from {var})"),
            None => path.to_owned(),
        };
        self.errors.push(FieldError {
            path,
            message: message.into(),
        });
    }
}

/// Overwrites raw values with the `CUSTOS_…` variables that are set.
/// Returns which config keys were overridden, and by which variable.
pub(crate) fn apply_env(
    raw: &mut RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<&'static str, &'static str> {
    let mut from_env = BTreeMap::new();
    for (var, key) in crate::ENV_OVERRIDES {
        let Some(value) = env(var) else { continue };
        from_env.insert(*key, *var);
        let slot = match *key {
            "server.listen" => &mut raw.server.listen,
            "server.admin_listen" => &mut raw.server.admin_listen,
            "server.data_dir" => &mut raw.server.data_dir,
            "server.shutdown_grace" => &mut raw.server.shutdown_grace,
            "log.format" => &mut raw.log.format,
            "log.level" => &mut raw.log.level,
            "ledger.durability" => &mut raw.ledger.durability,
            "server.max_body_size" => {
                raw.server.max_body_size = Some(RawSize::Text(value));
                continue;
            }
            "server.worker_threads" => {
                match value.trim().parse::<i64>() {
                    Ok(n) => raw.server.worker_threads = Some(n),
                    Err(_) => errors.push(FieldError {
                        path: format!("server.worker_threads (from {var})"),
                        message: format!("`{value}` is not a whole number"),
                    }),
                }
                continue;
            }
            other => {
                errors.push(FieldError {
                    path: (*var).to_owned(),
                    message: format!("no override target `{other}`"),
                });
                continue;
            }
        };
        *slot = Some(value);
    }
    from_env
}

/// Turns raw values into a [`Config`]; `from_env` names the keys that came
/// from environment variables, so that messages can say so.
pub(crate) fn validate(
    raw: RawConfig,
    from_env: BTreeMap<&'static str, &'static str>,
    errors: &mut Vec<FieldError>,
) -> Option<Config> {
    let mut ctx = Ctx { errors, from_env };
    let server = server(&raw, &mut ctx);
    let log = log(&raw, &mut ctx);
    let providers = providers(&raw.providers, &mut ctx);
    let models = models(&raw.models, &raw.providers, &mut ctx);
    let keys = keys(&raw, &mut ctx);
    let ledger = ledger(&raw, &mut ctx);
    let console = console(&raw, &mut ctx);
    let health = section(raw.health.validate("health"), &mut ctx);
    let limits = section(raw.limits.validate("limits"), &mut ctx);
    let incidents = section(raw.incidents.validate("incidents"), &mut ctx);
    let timeseries = timeseries(&raw, &mut ctx);
    for name in incidents.iter().flat_map(|i| i.models.keys()) {
        if !raw
            .models
            .iter()
            .any(|m| m.name.as_deref() == Some(name.as_str()))
        {
            ctx.err(
                &format!("incidents.models.{name}"),
                "names no configured model",
            );
        }
    }
    for name in limits.iter().flat_map(|l| l.models.keys()) {
        if !raw
            .models
            .iter()
            .any(|m| m.name.as_deref() == Some(name.as_str()))
        {
            ctx.err(
                &format!("limits.models.{name}"),
                "names no configured model",
            );
        }
    }
    Some(Config {
        server: server?,
        log: log?,
        providers,
        models,
        keys: keys?,
        ledger: ledger?,
        console: console?,
        health: health?,
        limits: limits?,
        incidents: incidents?,
        timeseries: timeseries?,
        metrics: MetricsConfig {
            per_key: raw.metrics.per_key.unwrap_or(false),
        },
    })
}

/// Collects the errors of a section validated by another crate.
fn section<T>(
    result: Result<T, Vec<custos_health::config::FieldError>>,
    ctx: &mut Ctx<'_>,
) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(errors) => {
            for e in errors {
                ctx.err(&e.path, e.message);
            }
            None
        }
    }
}

fn timeseries(raw: &RawConfig, ctx: &mut Ctx<'_>) -> Option<TimeseriesConfig> {
    let t = &raw.timeseries;
    let retention = long_duration(
        t.retention.as_deref(),
        "timeseries.retention",
        400 * DAY,
        DAY,
        ctx,
    );
    let flush_interval = duration(
        t.flush_interval.as_deref(),
        "timeseries.flush_interval",
        Duration::from_secs(15),
        Duration::from_millis(100),
        ctx,
    );
    Some(TimeseriesConfig {
        retention: retention?,
        flush_interval: flush_interval?,
    })
}

fn console(raw: &RawConfig, ctx: &mut Ctx<'_>) -> Option<ConsoleConfig> {
    let c = &raw.console;
    let d = ConsoleConfig::default();
    let public_url = match c.public_url.as_deref() {
        None => Some(None),
        Some(url) => {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            match rest {
                Some(host)
                    if !host.is_empty()
                        && !host.contains(['/', '?', '#', ' ', '@'])
                        && url.len() <= 512 =>
                {
                    Some(Some(url.to_owned()))
                }
                _ => {
                    ctx.err(
                        "console.public_url",
                        format!("`{url}` is not an http:// or https:// URL of a host, with no path (such as https://custos-admin.example.com)"),
                    );
                    None
                }
            }
        }
    };
    let minute = Duration::from_secs(60);
    let idle = duration(
        c.session_idle_timeout.as_deref(),
        "console.session_idle_timeout",
        d.session_idle_timeout,
        minute,
        ctx,
    );
    let absolute = duration(
        c.session_absolute_timeout.as_deref(),
        "console.session_absolute_timeout",
        d.session_absolute_timeout,
        minute,
        ctx,
    );
    if let (Some(i), Some(a)) = (idle, absolute)
        && i > a
    {
        ctx.err(
            "console.session_idle_timeout",
            "must not be longer than console.session_absolute_timeout",
        );
    }
    let attempts = int_in(
        c.max_failed_attempts,
        "console.max_failed_attempts",
        i64::from(d.max_failed_attempts),
        1..=100,
        ctx,
    );
    let lockout = duration(
        c.lockout.as_deref(),
        "console.lockout",
        d.lockout,
        minute,
        ctx,
    );
    let invite_ttl = long_duration(
        c.invite_ttl.as_deref(),
        "console.invite_ttl",
        d.invite_ttl,
        Duration::from_secs(300),
        ctx,
    );
    let token_max_ttl = long_duration(
        c.token_max_ttl.as_deref(),
        "console.token_max_ttl",
        d.token_max_ttl,
        Duration::from_secs(3600),
        ctx,
    );
    Some(ConsoleConfig {
        public_url: public_url?,
        session_idle_timeout: idle?,
        session_absolute_timeout: absolute?,
        max_failed_attempts: u32::try_from(attempts?).unwrap_or(5),
        lockout: lockout?,
        invite_ttl: invite_ttl?,
        token_max_ttl: token_max_ttl?,
    })
}

const DAY: Duration = Duration::from_secs(24 * 3600);

fn keys(raw: &RawConfig, ctx: &mut Ctx<'_>) -> Option<KeysConfig> {
    let k = &raw.keys;
    let max_age = long_duration(k.max_age.as_deref(), "keys.max_age", 90 * DAY, DAY, ctx);
    let warning = long_duration(
        k.rotation_warning.as_deref(),
        "keys.rotation_warning",
        14 * DAY,
        Duration::ZERO,
        ctx,
    );
    let flush = duration(
        k.last_used_flush.as_deref(),
        "keys.last_used_flush",
        Duration::from_secs(10),
        Duration::from_millis(100),
        ctx,
    );
    if let (Some(max_age), Some(warning)) = (max_age, warning)
        && warning >= max_age
    {
        ctx.err("keys.rotation_warning", "must be shorter than keys.max_age");
    }
    Some(KeysConfig {
        max_age: max_age?,
        rotation_warning: warning?,
        last_used_flush: flush?,
    })
}

fn ledger(raw: &RawConfig, ctx: &mut Ctx<'_>) -> Option<LedgerConfig> {
    let l = &raw.ledger;
    let window = duration(
        l.batch_window.as_deref(),
        "ledger.batch_window",
        Duration::from_millis(5),
        Duration::from_micros(100),
        ctx,
    );
    let durability = match l.durability.as_deref().unwrap_or("sync") {
        "sync" => {
            if l.batch_window.is_some() {
                ctx.err(
                    "ledger.batch_window",
                    "is only valid with durability = \"batched\"",
                );
            }
            Some(Durability::Sync)
        }
        "batched" => window.map(|window| Durability::Batched { window }),
        other => {
            ctx.err(
                "ledger.durability",
                format!("unknown mode `{other}`, expected `sync` or `batched`"),
            );
            None
        }
    };
    let every = int_in(
        l.checkpoint_every_records,
        "ledger.checkpoint_every_records",
        10_000,
        1..=10_000_000,
        ctx,
    );
    let interval = duration(
        l.checkpoint_interval.as_deref(),
        "ledger.checkpoint_interval",
        Duration::from_secs(1),
        Duration::from_millis(10),
        ctx,
    );
    let keep_all_for = long_duration(
        l.checkpoint_keep_all_for.as_deref(),
        "ledger.checkpoint_keep_all_for",
        DAY,
        Duration::from_secs(60),
        ctx,
    );
    let keep_one_per = long_duration(
        l.checkpoint_keep_one_per.as_deref(),
        "ledger.checkpoint_keep_one_per",
        Duration::from_secs(3600),
        Duration::from_secs(1),
        ctx,
    );
    let thinning = match (keep_all_for, keep_one_per) {
        (Some(keep_all_for), Some(keep_one_per)) => Some(
            l.checkpoint_thinning
                .unwrap_or(true)
                .then_some(CheckpointThinning {
                    keep_all_for,
                    keep_one_per,
                }),
        ),
        _ => None,
    };
    let segment_max_size = match &l.segment_max_size {
        None => Some(64 * 1024 * 1024),
        Some(size) => match parse_size(size) {
            Ok(n) if (64 * 1024..=1 << 40).contains(&n) => Some(n as u64),
            Ok(n) => {
                ctx.err(
                    "ledger.segment_max_size",
                    format!("{n} bytes is out of range, must be between 64KiB and 1TiB"),
                );
                None
            }
            Err(e) => {
                ctx.err("ledger.segment_max_size", e);
                None
            }
        },
    };
    let segment_max_age = long_duration(
        l.segment_max_age.as_deref(),
        "ledger.segment_max_age",
        DAY,
        Duration::from_secs(1),
        ctx,
    );
    let retention = long_duration(
        l.retention.as_deref(),
        "ledger.retention",
        365 * DAY,
        DAY,
        ctx,
    );
    if let Some(r) = retention
        && r < 365 * DAY
        && l.allow_short_retention != Some(true)
    {
        ctx.err(
            "ledger.retention",
            format!(
                "{} is below the 365-day audit period; set ledger.allow_short_retention = true to confirm",
                humantime::format_duration(r)
            ),
        );
    }
    let origin = match l.origin.as_deref() {
        Some(o)
            if o.is_empty()
                || o.len() > 255
                || o.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '+') =>
        {
            ctx.err(
                "ledger.origin",
                "must be 1 to 255 characters without whitespace or `+`",
            );
            None
        }
        other => Some(other.map(str::to_owned)),
    };
    let unauth = int_in(
        l.unauthenticated_records_per_second,
        "ledger.unauthenticated_records_per_second",
        50,
        1..=1_000_000,
        ctx,
    );
    let mut sinks = Vec::new();
    for (i, sink) in l.sinks.iter().enumerate() {
        let path = format!("ledger.sinks[{i}]");
        match (sink.kind.as_deref(), &sink.path, &sink.url) {
            (Some("directory"), Some(p), None) if !p.is_empty() => {
                sinks.push(LedgerSink::Directory(PathBuf::from(p)));
            }
            (Some("http"), None, Some(u)) => match check_url(u) {
                Ok(u) => sinks.push(LedgerSink::Http(u)),
                Err(e) => ctx.err(&format!("{path}.url"), e),
            },
            (Some("directory"), _, _) => {
                ctx.err(&path, "a directory sink needs `path` (and no `url`)")
            }
            (Some("http"), _, _) => ctx.err(&path, "an http sink needs `url` (and no `path`)"),
            (Some(other), _, _) => ctx.err(
                &format!("{path}.kind"),
                format!("unknown kind `{other}`, expected `directory` or `http`"),
            ),
            (None, _, _) => ctx.err(
                &format!("{path}.kind"),
                "is required: `directory` or `http`",
            ),
        }
    }
    Some(LedgerConfig {
        durability: durability?,
        checkpoint_every_records: every? as u64,
        checkpoint_interval: interval?,
        checkpoint_thinning: thinning?,
        segment_max_size: segment_max_size?,
        segment_max_age: segment_max_age?,
        retention: retention?,
        fail_open: l.fail_open.unwrap_or(false),
        origin: origin?,
        unauthenticated_records_per_second: u32::try_from(unauth?).unwrap_or(u32::MAX),
        sinks,
    })
}

/// A duration that may be long (days to years).
fn long_duration(
    text: Option<&str>,
    path: &str,
    default: Duration,
    min: Duration,
    ctx: &mut Ctx<'_>,
) -> Option<Duration> {
    duration_in(text, path, default, min, (20 * 365 * DAY, "20 years"), ctx)
}

fn server(raw: &RawConfig, ctx: &mut Ctx<'_>) -> Option<ServerConfig> {
    let s = &raw.server;
    let listen = addr(
        s.listen.as_deref().unwrap_or("127.0.0.1:8080"),
        "server.listen",
        ctx,
    );
    let admin_listen = addr(
        s.admin_listen.as_deref().unwrap_or("127.0.0.1:8081"),
        "server.admin_listen",
        ctx,
    );
    if let (Some(a), Some(b)) = (listen, admin_listen)
        && a == b
        && a.port() != 0
    {
        ctx.err(
            "server.admin_listen",
            format!("must differ from server.listen ({a}): the admin API never shares the gateway listener"),
        );
    }
    let data_dir = match s.data_dir.as_deref() {
        Some("") => {
            ctx.err("server.data_dir", "must not be empty");
            None
        }
        Some(d) => Some(PathBuf::from(d)),
        None => None,
    };
    let max_body_size = match &s.max_body_size {
        None => Some(DEFAULT_MAX_BODY_SIZE),
        Some(size) => match parse_size(size) {
            Ok(n) if (1024..=1 << 30).contains(&n) => Some(n),
            Ok(n) => {
                ctx.err(
                    "server.max_body_size",
                    format!("{n} bytes is out of range, must be between 1KiB and 1GiB"),
                );
                None
            }
            Err(e) => {
                ctx.err("server.max_body_size", e);
                None
            }
        },
    };
    let shutdown_grace = duration(
        s.shutdown_grace.as_deref(),
        "server.shutdown_grace",
        Duration::from_secs(30),
        Duration::ZERO,
        ctx,
    );
    let worker_threads = int_in(
        s.worker_threads,
        "server.worker_threads",
        0,
        0..=MAX_WORKER_THREADS,
        ctx,
    );
    Some(ServerConfig {
        listen: listen?,
        admin_listen: admin_listen?,
        data_dir,
        max_body_size: max_body_size?,
        shutdown_grace: shutdown_grace?,
        worker_threads: match worker_threads? {
            0 => None,
            n => Some(n),
        },
    })
}

fn log(raw: &RawConfig, ctx: &mut Ctx<'_>) -> Option<LogConfig> {
    let format = match raw.log.format.as_deref().unwrap_or("text") {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        other => {
            ctx.err(
                "log.format",
                format!("unknown format `{other}`, expected `text` or `json`"),
            );
            None
        }
    };
    let level = raw.log.level.clone().unwrap_or_else(|| "info".to_owned());
    if level.trim().is_empty() {
        ctx.err("log.level", "must not be empty");
    }
    Some(LogConfig {
        format: format?,
        level,
    })
}

fn providers(
    raw: &BTreeMap<String, RawProvider>,
    ctx: &mut Ctx<'_>,
) -> BTreeMap<String, ProviderConfig> {
    let mut out = BTreeMap::new();
    for (name, p) in raw {
        let path = format!("providers.{name}");
        if !valid_name(name) {
            ctx.err(
                &path,
                "provider names use only a-z, 0-9, `_` and `-` (at most 64 characters)",
            );
        }
        if let Some(provider) = provider(name, p, &path, ctx) {
            out.insert(name.clone(), provider);
        }
    }
    out
}

fn provider(name: &str, p: &RawProvider, path: &str, ctx: &mut Ctx<'_>) -> Option<ProviderConfig> {
    if p.api_key.is_some() {
        ctx.err(
            &format!("{path}.api_key"),
            "credentials are never written in the config file; use api_key_env or api_key_file",
        );
    }
    let timeouts = timeouts(&p.timeouts, &format!("{path}.timeouts"), ctx);
    let kind = match p.kind.as_deref() {
        None => {
            ctx.err(&format!("{path}.kind"), "is required: `openai` or `mock`");
            None
        }
        Some("openai") => openai(p, path, ctx).map(ProviderKind::OpenAi),
        Some("mock") => mock(p, path, ctx).map(ProviderKind::Mock),
        Some(other) => {
            ctx.err(
                &format!("{path}.kind"),
                format!("unknown kind `{other}`, expected `openai` or `mock`"),
            );
            None
        }
    };
    Some(ProviderConfig {
        name: name.to_owned(),
        kind: kind?,
        timeouts: timeouts?,
    })
}

fn openai(p: &RawProvider, path: &str, ctx: &mut Ctx<'_>) -> Option<OpenAiSettings> {
    for (field, set) in [
        ("latency", p.latency.is_some()),
        ("chunk_delay", p.chunk_delay.is_some()),
        ("chunks", p.chunks.is_some()),
        ("embedding_dimensions", p.embedding_dimensions.is_some()),
    ] {
        if set {
            ctx.err(
                &format!("{path}.{field}"),
                "is only valid for kind = \"mock\"",
            );
        }
    }
    let base_url = match p.base_url.as_deref() {
        None => {
            ctx.err(
                &format!("{path}.base_url"),
                "is required for kind = \"openai\", for example \"https://api.openai.com/v1\"",
            );
            None
        }
        Some(url) => match check_url(url) {
            Ok(u) => Some(u),
            Err(e) => {
                ctx.err(&format!("{path}.base_url"), e);
                None
            }
        },
    };
    let credential = match (&p.api_key_env, &p.api_key_file) {
        (Some(_), Some(_)) => {
            ctx.err(
                &format!("{path}.api_key_file"),
                "set either api_key_env or api_key_file, not both",
            );
            None
        }
        (Some(var), None) => {
            if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                ctx.err(
                    &format!("{path}.api_key_env"),
                    format!("`{var}` is not a valid environment variable name"),
                );
                None
            } else {
                Some(CredentialSource::Env(var.clone()))
            }
        }
        (None, Some(file)) if file.is_empty() => {
            ctx.err(&format!("{path}.api_key_file"), "must not be empty");
            None
        }
        (None, Some(file)) => Some(CredentialSource::File(PathBuf::from(file))),
        (None, None) => Some(CredentialSource::None),
    };
    let mut headers_ok = true;
    for (header, value) in &p.headers {
        let hpath = format!("{path}.headers.{header}");
        let lower = header.to_ascii_lowercase();
        if header.is_empty() || !header.bytes().all(is_token_byte) {
            ctx.err(&hpath, "is not a valid HTTP header name");
            headers_ok = false;
        } else if matches!(
            lower.as_str(),
            "authorization" | "host" | "content-length" | "content-type" | "transfer-encoding"
        ) {
            ctx.err(
                &hpath,
                "is set by Custos itself; credentials go in api_key_env or api_key_file",
            );
            headers_ok = false;
        }
        if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            ctx.err(&hpath, "value contains control characters");
            headers_ok = false;
        }
    }
    let max_idle_connections = int_in(
        p.max_idle_connections,
        &format!("{path}.max_idle_connections"),
        64,
        0..=4096,
        ctx,
    );
    Some(OpenAiSettings {
        base_url: base_url?,
        credential: credential?,
        headers: if headers_ok {
            p.headers.clone()
        } else {
            return None;
        },
        max_idle_connections: max_idle_connections?,
    })
}

fn mock(p: &RawProvider, path: &str, ctx: &mut Ctx<'_>) -> Option<MockSettings> {
    for (field, set) in [
        ("base_url", p.base_url.is_some()),
        ("api_key_env", p.api_key_env.is_some()),
        ("api_key_file", p.api_key_file.is_some()),
        ("headers", !p.headers.is_empty()),
        ("max_idle_connections", p.max_idle_connections.is_some()),
    ] {
        if set {
            ctx.err(
                &format!("{path}.{field}"),
                "is only valid for kind = \"openai\"",
            );
        }
    }
    let latency = duration(
        p.latency.as_deref(),
        &format!("{path}.latency"),
        Duration::from_millis(20),
        Duration::ZERO,
        ctx,
    );
    let chunk_delay = duration(
        p.chunk_delay.as_deref(),
        &format!("{path}.chunk_delay"),
        Duration::from_millis(15),
        Duration::ZERO,
        ctx,
    );
    let chunks = int_in(p.chunks, &format!("{path}.chunks"), 8, 1..=10_000, ctx);
    let embedding_dimensions = int_in(
        p.embedding_dimensions,
        &format!("{path}.embedding_dimensions"),
        256,
        1..=65_536,
        ctx,
    );
    Some(MockSettings {
        latency: latency?,
        chunk_delay: chunk_delay?,
        chunks: chunks?,
        embedding_dimensions: embedding_dimensions?,
    })
}

fn timeouts(raw: &RawTimeouts, path: &str, ctx: &mut Ctx<'_>) -> Option<Timeouts> {
    let d = DEFAULT_TIMEOUTS;
    let min = Duration::from_millis(1);
    let connect = duration(
        raw.connect.as_deref(),
        &format!("{path}.connect"),
        d.connect,
        min,
        ctx,
    );
    let first_byte = duration(
        raw.first_byte.as_deref(),
        &format!("{path}.first_byte"),
        d.first_byte,
        min,
        ctx,
    );
    let idle = duration(
        raw.idle.as_deref(),
        &format!("{path}.idle"),
        d.idle,
        min,
        ctx,
    );
    let total = duration(
        raw.total.as_deref(),
        &format!("{path}.total"),
        d.total,
        min,
        ctx,
    );
    let t = Timeouts {
        connect: connect?,
        first_byte: first_byte?,
        idle: idle?,
        total: total?,
    };
    for (name, value) in [("connect", t.connect), ("first_byte", t.first_byte)] {
        if value > t.total {
            ctx.err(
                &format!("{path}.{name}"),
                format!(
                    "{} exceeds timeouts.total ({})",
                    humantime::format_duration(value),
                    humantime::format_duration(t.total)
                ),
            );
        }
    }
    Some(t)
}

fn models(
    raw: &[RawModel],
    providers: &BTreeMap<String, RawProvider>,
    ctx: &mut Ctx<'_>,
) -> Vec<ModelConfig> {
    if raw.is_empty() {
        ctx.err("models", "at least one [[models]] entry is required");
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        let path = format!("models[{i}]");
        let name = match m.name.as_deref() {
            None => {
                ctx.err(&format!("{path}.name"), "is required");
                continue;
            }
            Some(n) if n.is_empty() || n.len() > 256 || n.chars().any(char::is_control) => {
                ctx.err(
                    &format!("{path}.name"),
                    "must be 1 to 256 characters without control characters",
                );
                continue;
            }
            Some(n) => n,
        };
        if !seen.insert(name) {
            ctx.err(&format!("{path}.name"), format!("duplicate model `{name}`"));
        }
        if m.targets.is_empty() {
            ctx.err(
                &format!("{path}.targets"),
                "at least one target is required",
            );
        }
        let mut targets = Vec::new();
        for (j, t) in m.targets.iter().enumerate() {
            let tpath = format!("{path}.targets[{j}]");
            let provider = match t.provider.as_deref() {
                None => {
                    ctx.err(&format!("{tpath}.provider"), "is required");
                    continue;
                }
                Some(p) if !providers.contains_key(p) => {
                    let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                    ctx.err(
                        &format!("{tpath}.provider"),
                        format!("unknown provider `{p}`, defined: [{}]", known.join(", ")),
                    );
                    continue;
                }
                Some(p) => p.to_owned(),
            };
            let model = match t.model.as_deref() {
                Some("") => {
                    ctx.err(&format!("{tpath}.model"), "must not be empty");
                    continue;
                }
                Some(m) => m.to_owned(),
                None => name.to_owned(),
            };
            let priority = int_in(t.priority, &format!("{tpath}.priority"), 0, 0..=1000, ctx);
            let weight = int_in(t.weight, &format!("{tpath}.weight"), 1, 1..=10_000, ctx);
            if let (Some(priority), Some(weight)) = (priority, weight) {
                targets.push(TargetConfig {
                    provider,
                    model,
                    priority: priority as u32,
                    weight: weight as u32,
                });
            }
        }
        out.push(ModelConfig {
            name: name.to_owned(),
            targets,
        });
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("`{url}` must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{url}` must not contain a query, fragment or whitespace"
        ));
    }
    if host.contains('@') {
        return Err("must not embed credentials; use api_key_env or api_key_file".to_owned());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn addr(text: &str, path: &str, ctx: &mut Ctx<'_>) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    if let Some(port) = text.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    ctx.err(
        path,
        format!("`{text}` is not an address; expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080 (port 0 picks a free port)"),
    );
    None
}

fn duration(
    text: Option<&str>,
    path: &str,
    default: Duration,
    min: Duration,
    ctx: &mut Ctx<'_>,
) -> Option<Duration> {
    duration_in(text, path, default, min, (DAY, "24h"), ctx)
}

/// Parses a duration between `min` and `max` (with its name for messages),
/// or reports why it cannot be used.
fn duration_in(
    text: Option<&str>,
    path: &str,
    default: Duration,
    min: Duration,
    (max, max_name): (Duration, &str),
    ctx: &mut Ctx<'_>,
) -> Option<Duration> {
    let Some(text) = text else {
        return Some(default);
    };
    match humantime::parse_duration(text) {
        Ok(d) if d < min => {
            ctx.err(
                path,
                format!(
                    "`{text}` is too short, must be at least {}",
                    humantime::format_duration(min)
                ),
            );
            None
        }
        Ok(d) if d > max => {
            ctx.err(path, format!("`{text}` is longer than {max_name}"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            ctx.err(
                path,
                format!("`{text}` is not a duration ({e}); write it like \"250ms\", \"30s\", \"5m\" or \"90d\""),
            );
            None
        }
    }
}

fn int_in(
    value: Option<i64>,
    path: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
    ctx: &mut Ctx<'_>,
) -> Option<usize> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        usize::try_from(v).ok()
    } else {
        ctx.err(
            path,
            format!(
                "{v} is out of range, must be between {} and {}",
                range.start(),
                range.end()
            ),
        );
        None
    }
}

fn parse_size(size: &RawSize) -> Result<usize, String> {
    let text = match size {
        RawSize::Bytes(n) => {
            return usize::try_from(*n).map_err(|_| format!("{n} must not be negative"));
        }
        RawSize::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits.parse().map_err(|_| {
        format!("`{text}` is not a size; write it like 8388608, \"512KiB\" or \"8MiB\"")
    })?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" | "kB" => 1024,
        "MiB" | "M" | "MB" => 1024 * 1024,
        "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`, use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}
