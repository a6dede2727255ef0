//! `custos keys …`: create, list, show, update, rotate and revoke scoped API
//! keys in the data directory a running server uses. The server sees each
//! change on its next request.

use crate::table::text;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use custos_auth::scope::{BudgetPeriod, CidrScope, ModelScope, TokenBudget};
use custos_auth::{KeyId, Scope};
use custos_store::{
    Actor, ActorKind, KeyRecord, KeyState, KeyUpdate, ListFilter, NewKey, RotationDue, ScopeUpdate,
};
use custos_types::{CapabilitySet, ExposeSecret, SecretString};
use serde_json::{Value, json};

/// The key commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Creates a key; its secret is shown once.
    Create(CreateArgs),
    /// Lists keys.
    List(ListArgs),
    /// Shows one key.
    Show {
        /// The key ID (`key_…`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Changes a key's scopes or metadata.
    Update(UpdateArgs),
    /// Issues a new secret under the same key ID; the old one keeps working
    /// for the grace period.
    Rotate {
        /// The key ID.
        id: String,
        /// How long the old secret keeps working (0 = at once).
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        grace: Duration,
        /// Makes a retried rotation return the same secret (16–128 characters).
        #[arg(long)]
        rotation_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a key, finally and at once.
    Revoke {
        /// The key ID.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "revoked with the CLI")]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `keys create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name for the key.
    #[arg(long)]
    pub(crate) name: String,
    /// The owning service or person (default: the OS user).
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// The owning team.
    #[arg(long)]
    pub(crate) team: Option<String>,
    /// What the key is for.
    #[arg(long, default_value = "")]
    pub(crate) description: String,
    /// A label, `key=value`; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub(crate) labels: Vec<(String, String)>,
    /// Models the key may use: exact names and globs, comma-separated. No
    /// models means none: least privilege is the default.
    #[arg(long, default_value = "")]
    pub(crate) models: String,
    /// Capabilities: chat, completions, embeddings, models, stream.
    #[arg(long, default_value = "chat,stream,embeddings,completions,models")]
    pub(crate) capabilities: String,
    /// Requests per minute.
    #[arg(long)]
    pub(crate) rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long)]
    pub(crate) tpm: Option<u32>,
    /// Token budget, `TOKENS/day` or `TOKENS/month`.
    #[arg(long, value_parser = parse_budget)]
    pub(crate) budget: Option<TokenBudget>,
    /// Expiry from now, such as `90d`.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) expires_in: Option<Duration>,
    /// Allowed client networks; repeatable (default: any).
    #[arg(long = "cidr")]
    pub(crate) cidrs: Vec<ipnet::IpNet>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `keys list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys past or near the rotation policy (`keys.max_age`).
    #[arg(long)]
    pub(crate) due: bool,
    /// Only this owner.
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// Only this team.
    #[arg(long)]
    pub(crate) team: Option<String>,
    /// Only `active`, `expired` or `revoked` keys.
    #[arg(long)]
    pub(crate) state: Option<String>,
    /// Search names and descriptions.
    #[arg(long)]
    pub(crate) search: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `keys update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The key ID.
    pub(crate) id: String,
    /// New name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// New owner.
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// New team (`none` clears it).
    #[arg(long)]
    pub(crate) team: Option<String>,
    /// New description.
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// New model scope (replaces the old one).
    #[arg(long)]
    pub(crate) models: Option<String>,
    /// New capabilities.
    #[arg(long)]
    pub(crate) capabilities: Option<String>,
    /// New requests per minute (`none` removes the limit).
    #[arg(long)]
    pub(crate) rpm: Option<String>,
    /// New tokens per minute (`none` removes the limit).
    #[arg(long)]
    pub(crate) tpm: Option<String>,
    /// New allowed networks, comma-separated (`any` allows any).
    #[arg(long)]
    pub(crate) cidrs: Option<String>,
    /// New expiry from now (`never` removes it).
    #[arg(long)]
    pub(crate) expires_in: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (write it like 1h, 90d)"))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not key=value"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

fn parse_budget(s: &str) -> Result<TokenBudget, String> {
    let (n, period) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not TOKENS/day or TOKENS/month"))?;
    let tokens = n
        .trim()
        .parse()
        .map_err(|_| format!("`{n}` is not a number"))?;
    let period = match period.trim() {
        "day" => BudgetPeriod::Day,
        "month" => BudgetPeriod::Month,
        other => return Err(format!("unknown period `{other}`, use day or month")),
    };
    Ok(TokenBudget { tokens, period })
}

fn parse_limit(s: &str) -> anyhow::Result<Option<u32>> {
    if s == "none" {
        return Ok(None);
    }
    Ok(Some(s.parse().with_context(|| {
        format!("`{s}` is not a number or `none`")
    })?))
}

fn os_user() -> String {
    ["CUSTOS_ACTOR", "SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cli_actor() -> Actor {
    Actor::new(ActorKind::Cli, os_user())
}

fn key_id(s: &str) -> anyhow::Result<KeyId> {
    KeyId::parse(s).map_err(|e| anyhow::anyhow!("`{s}` is not a key ID: {e}"))
}

/// Runs one key command against the store in `data_dir`.
pub fn run(
    data_dir: &Path,
    policy: &custos_config::KeysConfig,
    cmd: KeysCommand,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let url = std::env::var("CUSTOS_ADMIN_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let token = std::env::var("CUSTOS_ADMIN_TOKEN")
        .ok()
        .filter(|v| !v.is_empty());
    match (url, token) {
        (Some(url), Some(token)) => runtime.block_on(crate::keys_remote::run(&url, &token, cmd)),
        (None, None) => runtime.block_on(run_async(data_dir, policy, cmd)),
        _ => bail!(
            "set both CUSTOS_ADMIN_URL and CUSTOS_ADMIN_TOKEN to use a running server's admin API, or neither to use the data directory"
        ),
    }
}

async fn run_async(
    data_dir: &Path,
    policy: &custos_config::KeysConfig,
    cmd: KeysCommand,
) -> anyhow::Result<()> {
    crate::serve::prepare_data_dir(data_dir)?;
    let (store, minter) = crate::state::open(data_dir).await?;
    let keys = store.keys();
    let now = SystemTime::now();
    let due_at = |r: &KeyRecord| r.secret_created_at + policy.max_age;
    let show = |r: &KeyRecord, secret: Option<&SecretString>| -> Value {
        let mut v = custos_console::keyjson::key_json(r, now, due_at(r));
        if let Some(s) = secret {
            v["secret"] = Value::String(s.expose_secret().to_owned());
        }
        v
    };
    match cmd {
        KeysCommand::Create(a) => {
            let models =
                ModelScope::parse_list(&a.models).map_err(|e| anyhow::anyhow!("--models: {e}"))?;
            let capabilities = CapabilitySet::parse_list(&a.capabilities)
                .map_err(|e| anyhow::anyhow!("--capabilities: {e}"))?;
            let scope = Scope {
                models,
                capabilities,
                cidrs: CidrScope::new(a.cidrs),
                rpm: a.rpm,
                tpm: a.tpm,
                budget: a.budget,
            };
            let new = NewKey {
                name: a.name,
                owner: a.owner.unwrap_or_else(os_user),
                team: a.team,
                description: a.description,
                labels: a.labels.into_iter().collect::<BTreeMap<_, _>>(),
                scope,
                expires_at: a.expires_in.map(|d| now + d),
            };
            let (record, secret) = keys
                .create(&minter, new, &cli_actor(), &mut rand::rngs::OsRng)
                .await?;
            if a.json {
                println!("{}", show(&record, Some(&secret)));
            } else {
                print_key(&show(&record, None));
                println!();
                println!("secret: {}", secret.expose_secret());
                println!("This secret is shown once. Store it in your secret manager now.");
            }
        }
        KeysCommand::List(a) => {
            let state = match a.state.as_deref() {
                None => None,
                Some("active") => Some(KeyState::Active),
                Some("expired") => Some(KeyState::Expired),
                Some("revoked") => Some(KeyState::Revoked),
                Some(other) => {
                    bail!("--state: unknown state `{other}`, use active, expired or revoked")
                }
            };
            let filter = ListFilter {
                owner: a.owner,
                team: a.team,
                state,
                search: a.search,
                due_for_rotation: a.due.then_some(RotationDue {
                    max_age: policy.max_age,
                    within: policy.rotation_warning,
                }),
                ..ListFilter::default()
            };
            let records = keys.list(&filter).await?;
            let rows: Vec<Value> = records.iter().map(|r| show(r, None)).collect();
            if a.json {
                println!("{}", Value::Array(rows));
            } else {
                print_table(&rows);
            }
        }
        KeysCommand::Show { id, json } => {
            let id = key_id(&id)?;
            let record = keys
                .get(&id)
                .await?
                .with_context(|| format!("no key {id}"))?;
            if json {
                println!("{}", show(&record, None));
            } else {
                print_key(&show(&record, None));
            }
        }
        KeysCommand::Update(a) => {
            let id = key_id(&a.id)?;
            let scope = ScopeUpdate {
                models: a
                    .models
                    .as_deref()
                    .map(ModelScope::parse_list)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--models: {e}"))?,
                capabilities: a
                    .capabilities
                    .as_deref()
                    .map(CapabilitySet::parse_list)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--capabilities: {e}"))?,
                cidrs: match a.cidrs.as_deref() {
                    None => None,
                    Some("any") => Some(CidrScope::any()),
                    Some(list) => Some(CidrScope::new(
                        list.split(',')
                            .map(|c| c.trim().parse::<ipnet::IpNet>())
                            .collect::<Result<Vec<_>, _>>()
                            .context("--cidrs")?,
                    )),
                },
                rpm: a.rpm.as_deref().map(parse_limit).transpose()?,
                tpm: a.tpm.as_deref().map(parse_limit).transpose()?,
                budget: None,
            };
            let update = KeyUpdate {
                name: a.name,
                owner: a.owner,
                team: a.team.map(|t| (t != "none").then_some(t)),
                description: a.description,
                labels: None,
                expires_at: match a.expires_in.as_deref() {
                    None => None,
                    Some("never") => Some(None),
                    Some(d) => Some(Some(now + parse_duration(d).map_err(anyhow::Error::msg)?)),
                },
                scope,
                expected_version: None,
            };
            let updated = keys.update(&id, &update, &cli_actor()).await?;
            if a.json {
                println!(
                    "{}",
                    json!({"key": show(&updated.after, None), "changed": updated.changed})
                );
            } else {
                print_key(&show(&updated.after, None));
                println!("changed: {}", updated.changed.join(", "));
            }
        }
        KeysCommand::Rotate {
            id,
            grace,
            rotation_id,
            json,
        } => {
            let id = key_id(&id)?;
            let (record, secret) = keys
                .rotate(
                    &minter,
                    id,
                    grace,
                    rotation_id.as_deref(),
                    &cli_actor(),
                    &mut rand::rngs::OsRng,
                )
                .await?;
            if json {
                println!("{}", show(&record, Some(&secret)));
            } else {
                println!(
                    "rotated {id}; the old secret works for {}",
                    humantime::format_duration(grace)
                );
                println!("secret: {}", secret.expose_secret());
                println!("This secret is shown once. Store it in your secret manager now.");
            }
        }
        KeysCommand::Revoke { id, reason, json } => {
            let id = key_id(&id)?;
            let outcome = keys.revoke(&id, &cli_actor(), &reason).await?;
            if json {
                println!(
                    "{}",
                    json!({"key": show(&outcome.record, None), "already_revoked": outcome.already_revoked})
                );
            } else if outcome.already_revoked {
                println!("{id} was already revoked");
            } else {
                println!("revoked {id}");
            }
        }
    }
    store.close().await;
    Ok(())
}

pub(crate) fn print_key(v: &Value) {
    for field in [
        "id",
        "name",
        "owner",
        "team",
        "description",
        "state",
        "masked",
        "models",
        "capabilities",
        "cidrs",
        "rpm",
        "tpm",
        "created_at",
        "created_by",
        "expires_at",
        "last_used_at",
        "secret_created_at",
        "rotation_due_at",
        "grace_until",
        "revoked_at",
        "revoke_reason",
    ] {
        println!("{field:>18}: {}", text(&v[field]));
    }
}

pub(crate) fn print_table(rows: &[Value]) {
    let cols = [
        "id",
        "name",
        "owner",
        "team",
        "models",
        "state",
        "last_used_at",
        "rotation_due_at",
    ];
    crate::table::print_table(&cols, rows, "(no keys)");
}
