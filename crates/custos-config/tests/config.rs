//! Configuration loading: the embedded default, the documented example, and
//! every class of error with its field path.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::collections::HashMap;
use std::time::Duration;

use custos_config::{ConfigError, CredentialSource, LogFormat, ProviderKind, load, load_default};
use expect_test::expect;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

fn error_text(text: &str) -> String {
    load("custos.toml", text, &no_env).unwrap_err().to_string()
}

#[test]
fn embedded_default_loads() {
    let config = load_default(&no_env).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:8081");
    assert_eq!(config.server.data_dir, None);
    assert_eq!(config.log.format, LogFormat::Text);
    let names: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["mock-chat", "mock-embed"]);
    assert!(matches!(
        config.providers["mock"].kind,
        ProviderKind::Mock(_)
    ));
}

#[test]
fn documented_example_loads() {
    let text = include_str!("../../../docs/custos.example.toml");
    let config = load("docs/custos.example.toml", text, &no_env).unwrap();
    let ProviderKind::OpenAi(openai) = &config.providers["openai"].kind else {
        panic!("openai provider has the wrong kind");
    };
    assert_eq!(openai.base_url, "https://api.openai.com/v1");
    assert_eq!(
        openai.credential,
        CredentialSource::Env("OPENAI_API_KEY".into())
    );
    let vllm = &config.providers["vllm"];
    assert_eq!(vllm.timeouts.connect, Duration::from_secs(2));
    assert_eq!(vllm.timeouts.total, Duration::from_secs(600));
    let gpt = config.model("gpt-4o").unwrap();
    assert_eq!(gpt.targets[1].model, "meta-llama/Llama-3.1-70B-Instruct");
    assert_eq!(gpt.targets[1].priority, 1);
    // A target without `model` serves the public name.
    assert_eq!(
        config.model("mock-chat").unwrap().targets[0].model,
        "mock-chat"
    );
    assert_eq!(
        config.console.public_url.as_deref(),
        Some("https://custos-admin.example.com")
    );
    assert_eq!(config.console.max_failed_attempts, 5);
    assert_eq!(config.console.lockout, Duration::from_secs(900));
}

#[test]
fn console_section_defaults_and_errors() {
    let config = load_default(&no_env).unwrap();
    assert_eq!(config.console, custos_config::ConsoleConfig::default());
    let text = error_text(
        "[console]\npublic_url = \"ftp://x\"\nsession_idle_timeout = \"13h\"\n\
         max_failed_attempts = 0\nlockout = \"1s\"\ntoken_max_ttl = \"soon\"\nsecure = true\n",
    );
    assert!(text.contains("unknown field `secure`"), "{text}");
    let text = error_text(
        "[console]\npublic_url = \"https://a.example/path\"\nsession_idle_timeout = \"13h\"\n\
         max_failed_attempts = 0\nlockout = \"1s\"\ntoken_max_ttl = \"soon\"\n",
    );
    for want in [
        "console.public_url: `https://a.example/path` is not an http:// or https:// URL",
        "console.session_idle_timeout: must not be longer than console.session_absolute_timeout",
        "console.max_failed_attempts: 0 is out of range, must be between 1 and 100",
        "console.lockout: `1s` is too short",
        "console.token_max_ttl: `soon` is not a duration",
    ] {
        assert!(text.contains(want), "{want} missing from {text}");
    }
}

#[test]
fn environment_overrides_win() {
    let env = env_of(&[
        ("CUSTOS_LISTEN", "0.0.0.0:9000"),
        ("CUSTOS_ADMIN_LISTEN", "127.0.0.1:0"),
        ("CUSTOS_LOG_FORMAT", "json"),
        ("CUSTOS_MAX_BODY_SIZE", "1MiB"),
    ]);
    let config = load_default(&env).unwrap();
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.server.admin_listen.port(), 0);
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.server.max_body_size, 1024 * 1024);
}

#[test]
fn bad_environment_value_names_the_variable() {
    let env = env_of(&[("CUSTOS_LISTEN", "everywhere")]);
    let err = load_default(&env).unwrap_err().to_string();
    expect![[r#"
        <embedded default>: 1 invalid setting(s)
          server.listen (from CUSTOS_LISTEN): `everywhere` is not an address; expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080 (port 0 picks a free port)"#]]
    .assert_eq(&err);
}

#[test]
fn worker_threads_default_to_one_per_cpu_and_are_bounded() {
    assert_eq!(load_default(&no_env).unwrap().server.worker_threads, None);
    // The embedded default with one more line in `[server]`.
    let with = |line: &str| {
        custos_config::DEFAULT_CONFIG.replacen("[server]\n", &format!("[server]\n{line}\n"), 1)
    };
    let threads =
        |line: &str| load("custos.toml", &with(line), &no_env).map(|c| c.server.worker_threads);
    assert_eq!(threads("worker_threads = 0").unwrap(), None);
    assert_eq!(threads("worker_threads = 3").unwrap(), Some(3));
    let env = env_of(&[("CUSTOS_WORKER_THREADS", " 1 ")]);
    assert_eq!(load_default(&env).unwrap().server.worker_threads, Some(1));
    expect![[r#"
        custos.toml: 1 invalid setting(s)
          server.worker_threads: -1 is out of range, must be between 0 and 1024"#]]
    .assert_eq(&error_text(&with("worker_threads = -1")));
    assert!(
        error_text(&with("worker_threads = \"2\"")).contains("invalid type"),
        "a string is not a thread count"
    );
    let err = load_default(&env_of(&[("CUSTOS_WORKER_THREADS", "two")]))
        .unwrap_err()
        .to_string();
    expect![[r#"
        <embedded default>: 1 invalid setting(s)
          server.worker_threads (from CUSTOS_WORKER_THREADS): `two` is not a whole number"#]]
    .assert_eq(&err);
    let err = load_default(&env_of(&[("CUSTOS_WORKER_THREADS", "5000")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.worker_threads (from CUSTOS_WORKER_THREADS): 5000 is out of range"),
        "{err}"
    );
}

#[test]
fn unknown_key_is_rejected_by_name() {
    let err = error_text("[server]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n");
    assert!(err.contains("unknown field `listne`"), "{err}");
    assert!(err.starts_with("custos.toml: "), "{err}");
}

#[test]
fn wrong_type_is_rejected() {
    let err = error_text("[server]\nlisten = 8080\n");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let err = error_text(
        r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:8080"
max_body_size = "12 parsecs"
shutdown_grace = "soon"

[log]
format = "xml"

[providers.openai]
kind = "openai"
base_url = "ftp://example.com"
api_key = "sk-secret"
headers = { Authorization = "Bearer x" }
timeouts = { connect = "20m", total = "10m" }

[providers.Bad]
kind = "anthropicish"

[providers.m]
kind = "mock"
base_url = "http://x"
chunks = 0

[[models]]
name = "a"
targets = [{ provider = "nope" }, { provider = "m", weight = 0 }]

[[models]]
name = "a"

[[models]]
targets = []
"#,
    );
    expect![[r#"
        custos.toml: 17 invalid setting(s)
          server.admin_listen: must differ from server.listen (127.0.0.1:8080): the admin API never shares the gateway listener
          server.max_body_size: unknown size unit `parsecs` in `12 parsecs`, use B, KiB, MiB or GiB
          server.shutdown_grace: `soon` is not a duration (expected number at 0); write it like "250ms", "30s", "5m" or "90d"
          log.format: unknown format `xml`, expected `text` or `json`
          providers.Bad: provider names use only a-z, 0-9, `_` and `-` (at most 64 characters)
          providers.Bad.kind: unknown kind `anthropicish`, expected `openai` or `mock`
          providers.m.base_url: is only valid for kind = "openai"
          providers.m.chunks: 0 is out of range, must be between 1 and 10000
          providers.openai.api_key: credentials are never written in the config file; use api_key_env or api_key_file
          providers.openai.timeouts.connect: 20m exceeds timeouts.total (10m)
          providers.openai.base_url: `ftp://example.com` must start with http:// or https://
          providers.openai.headers.Authorization: is set by Custos itself; credentials go in api_key_env or api_key_file
          models[0].targets[0].provider: unknown provider `nope`, defined: [Bad, m, openai]
          models[0].targets[1].weight: 0 is out of range, must be between 1 and 10000
          models[1].name: duplicate model `a`
          models[1].targets: at least one target is required
          models[2].name: is required"#]]
    .assert_eq(&err);
}

#[test]
fn secrets_in_the_file_never_reach_the_message() {
    let err = error_text(
        "[providers.x]\nkind = \"openai\"\nbase_url = \"https://a\"\napi_key = \"sk-live-DO-NOT-LEAK\"\n[[models]]\nname = \"m\"\ntargets = [{ provider = \"x\" }]\n",
    );
    assert!(!err.contains("DO-NOT-LEAK"), "{err}");
    assert!(matches!(
        load("f", "[[models]]\nname = 1", &no_env),
        Err(ConfigError::Syntax { .. })
    ));
}

#[test]
fn no_models_is_an_error() {
    let err = error_text("[providers.m]\nkind = \"mock\"\n");
    assert!(
        err.contains("models: at least one [[models]] entry is required"),
        "{err}"
    );
}

#[test]
fn key_and_ledger_sections_load_with_defaults() {
    use custos_config::{Durability, LedgerSink};
    let config = load_default(&no_env).unwrap();
    assert_eq!(config.keys.max_age, Duration::from_secs(90 * 86_400));
    assert_eq!(config.ledger.durability, Durability::Sync);
    assert_eq!(config.ledger.retention, Duration::from_secs(365 * 86_400));
    assert!(!config.ledger.fail_open);
    assert_eq!(config.ledger.checkpoint_every_records, 10_000);
    assert_eq!(
        config.ledger.checkpoint_thinning,
        Some(custos_config::CheckpointThinning {
            keep_all_for: Duration::from_secs(86_400),
            keep_one_per: Duration::from_secs(3600),
        })
    );

    let example = load(
        "example",
        include_str!("../../../docs/custos.example.toml"),
        &no_env,
    )
    .unwrap();
    assert_eq!(
        example.ledger.sinks,
        [
            LedgerSink::Directory("/mnt/audit-worm/custos".into()),
            LedgerSink::Http("https://witness.example.com/custos/checkpoints".into()),
        ]
    );

    let env = env_of(&[("CUSTOS_LEDGER_DURABILITY", "batched")]);
    let batched = load_default(&env).unwrap();
    assert_eq!(
        batched.ledger.durability,
        Durability::Batched {
            window: Duration::from_millis(5)
        }
    );
}

#[test]
fn ledger_settings_are_validated() {
    let err = error_text(
        r#"
[providers.m]
kind = "mock"
[[models]]
name = "m"
targets = [{ provider = "m" }]
[keys]
max_age = "10d"
rotation_warning = "30d"
[ledger]
durability = "eventually"
retention = "30d"
origin = "has space"
[[ledger.sinks]]
kind = "directory"
[[ledger.sinks]]
kind = "s3"
"#,
    );
    expect![[r#"
        custos.toml: 6 invalid setting(s)
          keys.rotation_warning: must be shorter than keys.max_age
          ledger.durability: unknown mode `eventually`, expected `sync` or `batched`
          ledger.retention: 30days is below the 365-day audit period; set ledger.allow_short_retention = true to confirm
          ledger.origin: must be 1 to 255 characters without whitespace or `+`
          ledger.sinks[0]: a directory sink needs `path` (and no `url`)
          ledger.sinks[1].kind: unknown kind `s3`, expected `directory` or `http`"#]]
    .assert_eq(&err);
    // An explicit override allows a short retention.
    let ok = load(
        "f",
        "[providers.m]\nkind = \"mock\"\n[[models]]\nname = \"m\"\ntargets = [{ provider = \"m\" }]\n[ledger]\nretention = \"30d\"\nallow_short_retention = true\n",
        &no_env,
    )
    .unwrap();
    assert_eq!(ok.ledger.retention, Duration::from_secs(30 * 86_400));
}

#[test]
fn availability_sections() {
    let config = load(
        "custos.toml",
        r#"
[providers.mock]
kind = "mock"

[[models]]
name = "chat"
targets = [{ provider = "mock" }]

[health.breaker]
consecutive_failures = 3
cool_down = "2s"

[limits]
max_concurrent = 10
queue_size = 2
[limits.models.chat]
max_concurrent = 4

[incidents]
error_rate = 0.2
recovery_period = "30s"
evaluation_interval = "1s"
[incidents.models.chat]
min_requests = 5

[[incidents.webhooks]]
name = "ops"
url = "http://127.0.0.1:9/hook"

[timeseries]
retention = "30d"
"#,
        &no_env,
    )
    .unwrap();
    assert_eq!(config.health.breaker.consecutive_failures, 3);
    assert_eq!(config.limits.global.max_concurrent, 10);
    assert_eq!(config.limits.models["chat"].max_concurrent, 4);
    assert_eq!(config.incidents.recovery_period, Duration::from_secs(30));
    assert_eq!(config.incidents.thresholds_for("chat").min_requests, 5);
    assert_eq!(config.incidents.webhooks.len(), 1);
    assert_eq!(
        config.timeseries.retention,
        Duration::from_secs(30 * 86_400)
    );
    // Defaults when the sections are absent.
    let config = load_default(&no_env).unwrap();
    assert_eq!(
        config.timeseries.retention,
        Duration::from_secs(400 * 86_400)
    );
    assert!(config.incidents.enabled);
}

#[test]
fn availability_section_errors_name_their_fields() {
    let text = error_text(
        r#"
[providers.mock]
kind = "mock"

[[models]]
name = "chat"
targets = [{ provider = "mock" }]

[health.breaker]
failure_rate = 1.5

[limits.models.nope]
max_concurrent = 1

[incidents]
error_rate = 0.5
sev2_error_rate = 0.1
[incidents.models.ghost]
min_requests = 1

[[incidents.webhooks]]
name = "slack"
format = "slack"
url = "https://hooks.slack.example/T000"

[timeseries]
retention = "1h"
"#,
    );
    for path in [
        "health.breaker.failure_rate",
        "limits.models.nope",
        "incidents.models.ghost",
        "incidents.webhooks[0]",
        "timeseries.retention",
        "incidents:",
    ] {
        assert!(text.contains(path), "{path} missing from:\n{text}");
    }
}

#[test]
fn checkpoint_thinning_settings() {
    let base = "[providers.m]\nkind = \"mock\"\n[[models]]\nname = \"m\"\ntargets = [{ provider = \"m\" }]\n[ledger]\n";
    let off = load(
        "f",
        &format!("{base}checkpoint_thinning = false\n"),
        &no_env,
    )
    .unwrap();
    assert_eq!(off.ledger.checkpoint_thinning, None);
    let custom = load(
        "f",
        &format!("{base}checkpoint_keep_all_for = \"7d\"\ncheckpoint_keep_one_per = \"15m\"\n"),
        &no_env,
    )
    .unwrap();
    assert_eq!(
        custom.ledger.checkpoint_thinning,
        Some(custos_config::CheckpointThinning {
            keep_all_for: Duration::from_secs(7 * 86_400),
            keep_one_per: Duration::from_secs(900),
        })
    );
    let err = error_text(&format!(
        "{base}checkpoint_keep_all_for = \"30s\"\ncheckpoint_keep_one_per = \"soon\"\ncheckpoint_thinning = \"yes\"\n"
    ));
    assert!(err.contains("checkpoint_thinning"), "{err}");
    let err = error_text(&format!(
        "{base}checkpoint_keep_all_for = \"30s\"\ncheckpoint_keep_one_per = \"soon\"\n"
    ));
    assert!(
        err.contains("ledger.checkpoint_keep_all_for: `30s` is too short, must be at least 1m"),
        "{err}"
    );
    assert!(err.contains("ledger.checkpoint_keep_one_per"), "{err}");
}
