//! `custos audit readiness`: gathers the facts the mock audit needs (the
//! configuration, keys, users, incidents, the ledger's verification, a real
//! revocation probe) and prints the checks of `custos-readiness`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Args;
use custos_auth::scope::{CidrScope, ModelScope};
use custos_auth::{KeyHasher, Scope};
use custos_config::{Config, CredentialSource, LedgerSink, ProviderKind};
use custos_readiness::{Facts, LedgerFacts, RevocationProbe, Status};
use custos_store::{Actor, ActorKind, ListFilter, NewKey, Store};
use custos_types::{CapabilitySet, ExposeSecret as _, SecretString};

/// `custos audit readiness`.
#[derive(Debug, Args)]
pub struct ReadinessArgs {
    /// Review incidents from this date or time (RFC 3339 or YYYY-MM-DD);
    /// default 90 days ago.
    #[arg(long)]
    since: Option<String>,
    /// The incident runbook operators use.
    #[arg(
        long,
        env = "CUSTOS_INCIDENT_RUNBOOK",
        default_value = "docs/incident-response.md"
    )]
    runbook: PathBuf,
    /// The running gateway's base URL (`http://host:port`), for the
    /// revocation probe; default: `server.listen` when it names a port.
    #[arg(long, env = "CUSTOS_GATEWAY_URL")]
    gateway_url: Option<String>,
    /// Print the checks as JSON.
    #[arg(long, conflicts_with = "ocsf")]
    json: bool,
    /// Print the checks as OCSF Compliance Findings (class 2003).
    #[arg(long)]
    ocsf: bool,
}

/// Runs the readiness checks; fails (non-zero exit) when any check FAILs.
pub fn run(config: &Config, data_dir: &Path, args: ReadinessArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(config, data_dir, args))
}

async fn run_async(config: &Config, data_dir: &Path, args: ReadinessArgs) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let since = match &args.since {
        Some(s) => crate::incidents_cmd::parse_time("--since", s)?,
        None => now - Duration::from_secs(90 * 86_400),
    };
    let (store, minter) = crate::state::open(data_dir).await?;
    let users = store.users().list().await?;
    let incidents = store
        .incidents(&custos_health::IncidentQuery {
            since: Some(since),
            until: Some(now),
            ..Default::default()
        })
        .await?;
    let ledger_dir = data_dir.join(crate::audit::LEDGER_DIR);
    let ledger = {
        let (config, dir) = (config.clone(), ledger_dir.clone());
        tokio::task::spawn_blocking(move || ledger_facts(&config, &dir))
            .await
            .context("the ledger check failed")??
    };
    let revocation = probe_revocation(config, data_dir, &store, &minter, &args).await;
    // Listed after the probe, so the inventory includes its revoked canary.
    let keys = store.keys().list(&ListFilter::default()).await?;
    let runbook_ok = std::fs::metadata(&args.runbook).is_ok_and(|m| m.is_file() && m.len() > 0);
    let facts = Facts {
        now,
        period: (since, now),
        config: config.clone(),
        keys: store
            .keys()
            .list(&ListFilter::default())
            .await
            .unwrap_or(keys),
        users,
        incidents,
        ledger,
        revocation: revocation.map_err(|e| format!("{e:#}")),
        runbook: (args.runbook.display().to_string(), runbook_ok),
        loose_credential_files: loose_credential_files(config),
    };
    let checks = custos_readiness::evaluate(&facts);
    if args.ocsf {
        let v = custos_readiness::ocsf(&checks, now, env!("CARGO_PKG_VERSION"));
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if args.json {
        let v = serde_json::json!({
            "generated_at": humantime::format_rfc3339_seconds(now).to_string(),
            "period": {
                "from": humantime::format_rfc3339_seconds(since).to_string(),
                "to": humantime::format_rfc3339_seconds(now).to_string(),
            },
            "checks": checks,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", custos_readiness::render_table(&checks));
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        anyhow::bail!("readiness: {failed} check(s) FAIL");
    }
    Ok(())
}

/// Verifies the ledger (read-only) and reads its newest checkpoint, its
/// oldest record and what the sinks hold.
fn ledger_facts(config: &Config, dir: &Path) -> anyhow::Result<LedgerFacts> {
    if !dir.join("keys").is_dir() {
        return Ok(LedgerFacts {
            problem: Some(format!(
                "there is no ledger in {} (has the server ever run with this data directory?)",
                dir.display()
            )),
            tree_size: 0,
            first_seq: 0,
            oldest_record_at: None,
            newest_checkpoint: None,
            sinks: sink_facts(config, None),
        });
    }
    let report = custos_verify::verify_dir(dir, &[], None, &mut |_, _| {});
    let reader = custos_ledger::LedgerReader::open(dir);
    let oldest_record_at = match reader.records() {
        Ok(mut records) => records
            .next()
            .and_then(Result::ok)
            .map(|r| r.record.ts.to_system_time()),
        Err(_) => None,
    };
    let newest = reader.latest_checkpoint().ok().flatten().map(|(size, _)| {
        let file = dir.join("checkpoints").join(format!("{size:020}.note"));
        let at = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        (size, at)
    });
    let sinks = sink_facts(config, newest.map(|(size, _)| size));
    Ok(LedgerFacts {
        problem: report.problem.as_ref().map(ToString::to_string),
        tree_size: report.tree_size,
        first_seq: report.first_seq,
        oldest_record_at,
        newest_checkpoint: newest,
        sinks,
    })
}

/// Each configured sink, with whether it holds the checkpoint of size
/// `newest` (`None` when that cannot be checked from here).
fn sink_facts(config: &Config, newest: Option<u64>) -> Vec<(String, Option<bool>)> {
    config
        .ledger
        .sinks
        .iter()
        .map(|s| match s {
            LedgerSink::Directory(path) => (
                format!("directory {}", path.display()),
                newest.map(|size| path.join(format!("{size:020}.note")).is_file()),
            ),
            LedgerSink::Http(url) => (format!("http {url}"), None),
        })
        .collect()
}

/// Creates a canary key, revokes it, and presents it to the enforcement
/// path: the running gateway when one answers, else the same `Auth` code
/// in this process. Also checks that every revoked key is marked revoked
/// in the authentication snapshot.
async fn probe_revocation(
    config: &Config,
    data_dir: &Path,
    store: &Arc<Store>,
    minter: &custos_store::KeyMinter,
    args: &ReadinessArgs,
) -> anyhow::Result<RevocationProbe> {
    let actor = Actor::new(ActorKind::Cli, "custos-readiness");
    let canary = NewKey {
        name: "readiness-canary".into(),
        owner: "custos-readiness".into(),
        team: None,
        description: "created and revoked at once by `custos audit readiness` to prove that revocation is enforced".into(),
        labels: Default::default(),
        scope: Scope {
            models: ModelScope::parse_list("custos-readiness-canary")
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            capabilities: CapabilitySet::parse_list("chat").map_err(|e| anyhow::anyhow!("{e}"))?,
            cidrs: CidrScope::new(Vec::new()),
            rpm: None,
            tpm: None,
            budget: None,
        },
        expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
    };
    let (record, secret) = store
        .keys()
        .create(minter, canary, &actor, &mut rand::rngs::OsRng)
        .await?;
    store
        .keys()
        .revoke(&record.id, &actor, "readiness canary")
        .await?;
    let gateway = args.gateway_url.clone().or_else(|| {
        (config.server.listen.port() != 0).then(|| format!("http://{}", config.server.listen))
    });
    let via_gateway = match &gateway {
        Some(url) => present_to_gateway(url, &secret).await.ok(),
        None => None,
    };
    let (path, outcome) = match via_gateway {
        Some(code) => (
            format!("running gateway at {}", gateway.unwrap_or_default()),
            code,
        ),
        None => (
            "in-process enforcement path (no gateway answered)".to_owned(),
            present_in_process(config, data_dir, store, &secret).await?,
        ),
    };
    let snapshot = store.keys().load_auth_snapshot().await?;
    let revoked: std::collections::HashSet<String> = store
        .keys()
        .list(&ListFilter::default())
        .await?
        .into_iter()
        .filter(|k| k.revoked.is_some())
        .map(|k| k.id.to_string())
        .collect();
    let mut still: Vec<String> = snapshot
        .entries
        .values()
        .filter(|e| e.key.revoked_at.is_none() && revoked.contains(e.key.id.as_str()))
        .map(|e| e.key.id.to_string())
        .collect();
    still.sort();
    still.dedup();
    Ok(RevocationProbe {
        path,
        outcome,
        revoked_still_authenticating: still,
    })
}

async fn present_to_gateway(base: &str, secret: &SecretString) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let resp = client
        .post(format!("{}/v1/chat/completions", base.trim_end_matches('/')))
        .bearer_auth(secret.expose_secret())
        .header("content-type", "application/json")
        .body(r#"{"model":"custos-readiness-canary","messages":[{"role":"user","content":"canary"}]}"#)
        .send()
        .await?;
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(if status.is_success() {
        "accepted".to_owned()
    } else {
        body["error"]["code"]
            .as_str()
            .map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned)
    })
}

async fn present_in_process(
    config: &Config,
    data_dir: &Path,
    store: &Arc<Store>,
    secret: &SecretString,
) -> anyhow::Result<String> {
    let pepper = crate::state::load_or_create_pepper(data_dir)?;
    let hasher = KeyHasher::new(&pepper).map_err(|e| anyhow::anyhow!("pepper: {e}"))?;
    let source = Arc::new(crate::state::StoreKeySource::new(store.clone())?);
    let auth = custos_gateway::Auth::new(
        hasher,
        source,
        Arc::new(custos_types::SystemClock),
        custos_gateway::RotationPolicy {
            max_age: config.keys.max_age,
            warn_before: config.keys.rotation_warning,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot load API keys: {e}"))?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {}", secret.expose_secret()))?,
    );
    Ok(match auth.authenticate(&headers).await {
        Ok(_) => "accepted".to_owned(),
        Err(e) => e.code().to_owned(),
    })
}

fn loose_credential_files(config: &Config) -> Vec<String> {
    config
        .providers
        .iter()
        .filter_map(|(name, p)| match &p.kind {
            ProviderKind::OpenAi(s) => match &s.credential {
                CredentialSource::File(path) => std::fs::metadata(path)
                    .ok()
                    .filter(|m| m.permissions().mode() & 0o077 != 0)
                    .map(|m| {
                        format!(
                            "providers.{name}.api_key_file {} (mode {:o})",
                            path.display(),
                            m.permissions().mode() & 0o777
                        )
                    }),
                _ => None,
            },
            ProviderKind::Mock(_) => None,
        })
        .collect()
}
