//! `custos serve`: builds the providers, the gateway and the admin listener,
//! binds both addresses, prints the ready line, and shuts down gracefully on
//! SIGTERM or SIGINT.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::serve::ListenerExt as _;
use custos_admin::AdminState;
use custos_auth::KeyHasher;
use custos_config::{Config, CredentialSource, ProviderKind};
use custos_gateway::{Auth, Gateway, LogSink, RotationPolicy};
use custos_providers::Provider;
use custos_record::{Scalar, System};
use custos_types::SecretString;
use custos_types::SystemClock;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn run(config_file: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let config = crate::load_config(config_file)?;
    crate::telemetry::init(&config.log)?;
    let data_dir = crate::data_dir(data_dir, &config);
    prepare_data_dir(&data_dir)?;
    let providers = build_providers(&config)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.server.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder
        .enable_all()
        .thread_name("custos")
        .build()
        .context("cannot start the async runtime")?;
    let source = config_file.map_or_else(
        || "embedded default".to_owned(),
        |p| p.display().to_string(),
    );
    runtime.block_on(serve(&source, config, data_dir, providers))
}

/// Creates the data directory (0700), or restricts an existing one to 0700.
pub(crate) fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read data directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("data directory {} is not a directory", dir.display());
    }
    // The directory holds the state store and the ledger signing key: only
    // the service user may enter it.
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "data directory {} is mode {:o}; cannot restrict it to 0700",
                    dir.display(),
                    mode & 0o777
                )
            },
        )?;
        tracing::warn!(
            data_dir = %dir.display(),
            was = format!("{:o}", mode & 0o777),
            "data directory was accessible to other users; restricted it to 0700"
        );
    }
    Ok(())
}

fn build_providers(config: &Config) -> anyhow::Result<HashMap<String, Arc<Provider>>> {
    let mut out = HashMap::new();
    for (name, provider) in &config.providers {
        let credential = match &provider.kind {
            ProviderKind::OpenAi(settings) => resolve_credential(name, &settings.credential)?,
            ProviderKind::Mock(_) => None,
        };
        let built = Provider::new(provider, credential)?;
        out.insert(name.clone(), Arc::new(built));
    }
    Ok(out)
}

fn resolve_credential(
    provider: &str,
    source: &CredentialSource,
) -> anyhow::Result<Option<SecretString>> {
    match source {
        CredentialSource::None => Ok(None),
        CredentialSource::Env(var) => match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => {
                Ok(Some(SecretString::from(value.trim().to_owned())))
            }
            _ => {
                bail!("provider `{provider}`: environment variable {var} (api_key_env) is not set")
            }
        },
        CredentialSource::File(path) => {
            let meta = std::fs::metadata(path).with_context(|| {
                format!(
                    "provider `{provider}`: cannot read api_key_file {}",
                    path.display()
                )
            })?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    provider,
                    file = %path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "api_key_file is readable by other users; chmod 600 it"
                );
            }
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "provider `{provider}`: cannot read api_key_file {}",
                    path.display()
                )
            })?;
            let key = text.trim();
            if key.is_empty() {
                bail!(
                    "provider `{provider}`: api_key_file {} is empty",
                    path.display()
                );
            }
            Ok(Some(SecretString::from(key.to_owned())))
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

async fn serve(
    config_source: &str,
    config: Config,
    data_dir: PathBuf,
    providers: HashMap<String, Arc<Provider>>,
) -> anyhow::Result<()> {
    let (store, minter) = crate::state::open(&data_dir).await?;
    let pepper = crate::state::load_or_create_pepper(&data_dir)?;
    let server_keys =
        custos_console::ServerKeys::from_pepper(secrecy::ExposeSecret::expose_secret(&pepper));
    let hasher = KeyHasher::new(&pepper).map_err(|e| anyhow::anyhow!("pepper: {e}"))?;
    let source = Arc::new(crate::state::StoreKeySource::new(store.clone())?);
    let auth = Auth::new(
        hasher,
        source,
        Arc::new(SystemClock),
        RotationPolicy {
            max_age: config.keys.max_age,
            warn_before: config.keys.rotation_warning,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot load API keys: {e}"))?;
    tokio::spawn(flush_last_used(auth.clone(), config.keys.last_used_flush));

    // The audit ledger. A ledger that cannot be opened does not stop the
    // server: every request is refused with 503 and the reason (fail
    // closed), and /readyz says why. Another writer holding it is a
    // configuration mistake and does stop the server.
    let mut registry = Registry::default();
    let ledger_metrics = crate::audit::LedgerMetrics::new(&mut registry);
    let handle = tokio::runtime::Handle::current();
    let opened = {
        let (config, dir) = (config.clone(), data_dir.clone());
        let fsync = ledger_metrics.fsync.clone();
        let observer: custos_ledger::FsyncObserver =
            Arc::new(move |d| fsync.observe(d.as_secs_f64()));
        tokio::task::spawn_blocking(move || crate::audit::open(&config, &dir, handle, observer))
            .await
            .context("the ledger open task failed")?
    };
    let ledger = match opened {
        Ok((ledger, report)) => {
            let ledger = Arc::new(ledger);
            if let Err(e) = crate::audit::record_recovery(&ledger, &report).await {
                tracing::error!(error = %e, "cannot record the ledger recovery");
            }
            Ok((ledger, report))
        }
        Err(e) => {
            if let Some(custos_ledger::LedgerError::Locked { .. }) = e.downcast_ref() {
                return Err(e.context("another custos process is writing this ledger"));
            }
            tracing::error!(error = %format!("{e:#}"), "the audit ledger cannot be opened; refusing traffic");
            Err(format!("{e:#}"))
        }
    };
    let audit = crate::audit::LedgerAudit::new(
        ledger
            .as_ref()
            .map(|(l, _)| l.clone())
            .map_err(Clone::clone),
        &config,
    );
    if config.ledger.fail_open {
        tracing::warn!(
            "ledger.fail_open is ON: requests are served even when they cannot be recorded"
        );
    }
    if let Ok((ledger, report)) = &ledger {
        let started = System::new("server.started")
            .with("version", env!("CARGO_PKG_VERSION"))
            .with("config", config_source.to_owned())
            .with(
                "durability",
                match config.ledger.durability {
                    custos_config::Durability::Sync => "sync",
                    custos_config::Durability::Batched { .. } => "batched",
                },
            )
            .with("fail_open", config.ledger.fail_open)
            .with(
                "retention_days",
                Scalar::count(config.ledger.retention.as_secs() / 86_400),
            )
            .with("models", Scalar::count(config.models.len() as u64))
            .with("tree_size", Scalar::count(report.tree_size));
        crate::audit::system(ledger, started)
            .await
            .context("cannot record server.started in the ledger")?;
        // What configuration is running, by digest, so an auditor can tie a
        // change in behaviour to a change of configuration.
        let digest = config_digest(config_source);
        let loaded = System::new("config.loaded")
            .with("source", config_source.to_owned())
            .with("sha256", digest);
        crate::audit::system(ledger, loaded)
            .await
            .context("cannot record config.loaded in the ledger")?;
        if config.ledger.retention < Duration::from_secs(365 * 86_400) {
            tracing::warn!(
                days = config.ledger.retention.as_secs() / 86_400,
                "ledger.retention is below the 365-day audit period (allow_short_retention is set)"
            );
            let rec = System::new("ledger.short_retention").with(
                "retention_days",
                Scalar::count(config.ledger.retention.as_secs() / 86_400),
            );
            crate::audit::system(ledger, rec).await?;
        }
        if config.ledger.fail_open {
            crate::audit::system(ledger, System::new("ledger.fail_open_enabled")).await?;
        }
        tokio::spawn(crate::audit::drain_outbox(
            store.clone(),
            ledger.clone(),
            Duration::from_secs(1),
        ));
        tokio::spawn(crate::audit::report_unrecorded(
            audit.clone(),
            Duration::from_secs(10),
        ));
        tokio::spawn(purge_expired(ledger.clone(), config.ledger.retention));
    }

    tokio::spawn(ledger_metrics.clone().run(audit.clone()));

    // Availability: incidents (every event recorded in the ledger and sent
    // to the webhooks), circuit breakers per target (every change recorded
    // in the ledger and added to incident timelines) and concurrency limits
    // with bounded queues.
    let webhooks = crate::incidents::start_webhooks(&config.incidents)?;
    let incident_ledger = crate::incidents::IncidentToLedger::new(audit.ledger().cloned());
    let mut incident_listeners: Vec<Arc<dyn custos_health::IncidentListener>> =
        vec![incident_ledger.clone()];
    if let Some(w) = &webhooks {
        incident_listeners.push(w.clone());
    }
    let incidents = Arc::new(custos_health::IncidentEngine::new(
        config.incidents.clone(),
        store.clone(),
        Arc::new(SystemClock),
        Arc::new(custos_health::IncidentFanout(incident_listeners)),
    ));
    match incidents.restore().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(active = n, "active incidents restored from the store"),
        Err(e) => tracing::error!(error = %e, "cannot restore active incidents"),
    }
    let mut breaker_listeners: Vec<Arc<dyn custos_health::BreakerListener>> = vec![
        Arc::new(crate::audit::BreakerToLedger(audit.clone())),
        incidents.breaker_listener(),
    ];
    if let Some(w) = &webhooks {
        breaker_listeners.push(w.clone());
    }
    let health = custos_health::HealthEngine::new(
        config.health.clone(),
        Arc::new(SystemClock),
        Arc::new(custos_health::BreakerFanout(breaker_listeners)),
    );
    let breaker_gauge = crate::audit::BreakerGauge::default();
    registry.register(
        "custos_circuit_breaker_state",
        "Circuit breaker state per target: 0 closed, 1 half-open, 2 open",
        breaker_gauge.clone(),
    );
    tokio::spawn(crate::audit::breaker_gauges(health.clone(), breaker_gauge));
    let incident_metrics = crate::incidents::IncidentMetrics::new(&mut registry);
    tokio::spawn(incident_metrics.run(incidents.clone(), webhooks.clone()));
    let capacity = Arc::new(custos_health::CapacityLimiter::new(config.limits.clone()));

    let gateway = Gateway::new(
        &config,
        &providers,
        &mut registry,
        custos_gateway::Hooks {
            auth: Some(auth.clone()),
            audit: Some(audit.clone()),
            sinks: vec![Arc::new(LogSink)],
            health: Some(health.clone()),
            capacity: Some(capacity),
        },
    );
    let admin = AdminState::new(
        registry,
        data_dir.clone(),
        vec![
            Box::new(crate::audit::LedgerReady(audit.clone())),
            Box::new(crate::audit::StoreReady(store.clone())),
            Box::new(crate::audit::ModelsReady {
                health: health.clone(),
                models: config
                    .models
                    .iter()
                    .map(|m| {
                        let targets = m
                            .targets
                            .iter()
                            .map(|t| custos_health::TargetId::new(&t.provider, &t.model))
                            .collect();
                        (m.name.clone(), targets)
                    })
                    .collect(),
            }),
        ],
    );

    // Incident evaluation, operator commands submitted by the CLI, per-minute
    // aggregates and (when enabled) active probes. The gateway registered
    // every model with the health engine above.
    let incident_loop = custos_health::spawn_incident_loop(incidents.clone(), health.clone());
    tokio::spawn(crate::incidents::command_loop(
        store.clone(),
        incidents.clone(),
        incident_ledger.clone(),
        Duration::from_millis(500),
    ));
    tokio::spawn(crate::incidents::aggregates_loop(
        store.clone(),
        health.clone(),
        config.timeseries.flush_interval,
        config.timeseries.retention,
    ));
    let probes = custos_health::spawn_probes(
        health.clone(),
        Arc::new(crate::incidents::ProviderProber::new(&config, &providers)),
        &config.health.probes,
    );

    let gateway_listener = bind(config.server.listen, "server.listen").await?;
    let admin_listener = bind(config.server.admin_listen, "server.admin_listen").await?;
    let gateway_addr = gateway_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone(), admin.clone()));

    let gateway_server = axum::serve(
        gateway_listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        custos_gateway::router(gateway).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    // The console and the admin API live on the admin listener only: their
    // router is merged into the admin router, never into the gateway's.
    let console_base = config
        .console
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{admin_addr}"));
    let console = custos_console::ConsoleState::new(custos_console::ConsoleOptions {
        store: store.clone(),
        minter: Arc::new(minter),
        server_keys,
        keys_policy: config.keys,
        config: config.console.clone(),
        ledger_dir: data_dir.join(crate::audit::LEDGER_DIR),
        clock: Arc::new(SystemClock),
        base_url: console_base.clone(),
    });
    tokio::spawn(purge_sessions(
        store.clone(),
        config.console.session_idle_timeout,
    ));
    let admin_router = custos_admin::router(admin.clone()).merge(custos_console::router(console));
    let admin_server = axum::serve(
        admin_listener,
        admin_router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let setup_link =
        custos_console::setup_link_if_fresh(&store, &console_base, config.console.invite_ttl)
            .await
            .context("cannot issue the first admin's setup link")?;

    admin.set_ready(true);
    tracing::info!(
        gateway = %gateway_addr,
        admin = %admin_addr,
        data_dir = %data_dir.display(),
        models = config.models.len(),
        "custos ready"
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "custos ready gateway=http://{gateway_addr} admin=http://{admin_addr}"
        )?;
        // No console user exists yet: the one-time link to create the first
        // admin goes to the server's console only (stdout), never the log.
        if let Some(link) = &setup_link {
            writeln!(
                out,
                "custos setup: no console user exists yet. Create the first admin within {} at:\ncustos setup: {}",
                humantime::format_duration(config.console.invite_ttl),
                link.link
            )?;
            tracing::warn!(
                "no console user exists; a one-time setup link was printed on stdout (or run `custos users create NAME --role admin`)"
            );
        }
        out.flush()?;
    }

    let servers = async {
        tokio::try_join!(
            std::future::IntoFuture::into_future(gateway_server),
            std::future::IntoFuture::into_future(admin_server)
        )
    };
    let grace = config.server.shutdown_grace;
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = servers => {
            result.context("server failed")?;
            tracing::info!("all connections closed; stopped");
        }
        () = deadline => {
            tracing::warn!(grace = ?grace, "shutdown grace period elapsed; closing remaining connections");
        }
    }
    if let Err(e) = auth.flush().await {
        tracing::warn!(error = %e, "cannot store last-used times at shutdown");
    }
    incident_loop.shutdown().await;
    if let Some(p) = probes {
        p.shutdown().await;
    }
    let minutes =
        health.drain_completed_minutes(std::time::SystemTime::now() + Duration::from_secs(60));
    if let Err(e) = store.save_minutes(&minutes).await {
        tracing::warn!(error = %e, "cannot save the last per-minute aggregates at shutdown");
    }
    if let Ok((ledger, _)) = &ledger {
        let mut already = std::collections::HashSet::new();
        if let Err(e) = crate::audit::drain_once(&store, ledger, &mut already).await {
            tracing::warn!(error = %e, "cannot drain the outbox at shutdown; it drains at next start");
        }
        if let Err(e) = crate::audit::system(ledger, System::new("server.stopped")).await {
            tracing::warn!(error = %e, "cannot record server.stopped");
        }
        match ledger.shutdown().await {
            Ok(size) => tracing::info!(tree_size = size, "ledger closed with a final checkpoint"),
            Err(e) => tracing::error!(error = %e, "ledger shutdown failed"),
        }
    }
    store.close().await;
    Ok(())
}

/// SHA-256 of the configuration text in use (the file, or the embedded
/// default), hex-encoded.
fn config_digest(source: &str) -> String {
    use sha2::Digest as _;
    let text = if source == "embedded default" {
        custos_config::DEFAULT_CONFIG.as_bytes().to_vec()
    } else {
        std::fs::read(source).unwrap_or_default()
    };
    sha2::Sha256::digest(&text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Removes sealed segments past retention, hourly; the ledger records each
/// purge itself.
async fn purge_expired(ledger: Arc<custos_ledger::Ledger>, retention: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let Some(cutoff) = std::time::SystemTime::now().checked_sub(retention) else {
            continue;
        };
        if let Err(e) = ledger.purge_before(cutoff).await {
            tracing::warn!(error = %e, "retention purge failed; will retry");
        }
    }
}

/// Removes expired console sessions every ten minutes (expiry is also
/// checked on every request; this only keeps the table small).
async fn purge_sessions(store: Arc<custos_store::Store>, idle: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let Some(before) = store.now().checked_sub(idle) else {
            continue;
        };
        if let Err(e) = store.sessions().purge(before).await {
            tracing::warn!(error = %e, "cannot purge expired console sessions; will retry");
        }
    }
}

/// Writes last-used times in batches instead of once per request.
async fn flush_last_used(auth: Arc<Auth>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = auth.flush().await {
            tracing::warn!(error = %e, "cannot store last-used times; will retry");
        }
    }
}

async fn watch_signals(shutdown: CancellationToken, admin: Arc<AdminState>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; draining"),
        () = terminate => tracing::info!("SIGTERM received; draining"),
    }
    admin.set_ready(false);
    shutdown.cancel();
}
