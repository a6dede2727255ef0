//! `custos users …`: console users from the host shell. This is the
//! break-glass path: create the first admin (or any user) as a one-time
//! setup link, reset a locked-out user's MFA, unlock, disable, enable, list.
//! Every change is recorded in the ledger with the OS user as a `cli` actor.

use std::path::Path;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use custos_store::{Actor, ActorKind, Role, UserState};

/// The user commands.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Creates a user: prints a one-time link where they choose a password
    /// and set up TOTP. `--role admin` creates the first admin.
    Create {
        /// The user name (lowercase letters, digits, `.`, `_`, `@`, `-`).
        username: String,
        /// admin, key_manager, auditor or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// Lists console users.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Clears a user's TOTP and recovery codes and ends their sessions: they
    /// set up two-step verification again at next sign-in.
    ResetMfa {
        /// The user name.
        username: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "reset from the host shell")]
        reason: String,
    },
    /// Prints a one-time link to choose a new password (clears MFA too).
    ResetPassword {
        /// The user name.
        username: String,
    },
    /// Lifts a lockout after failed attempts.
    Unlock {
        /// The user name.
        username: String,
    },
    /// Disables a user: no sign-in, sessions and tokens stop working.
    Disable {
        /// The user name.
        username: String,
    },
    /// Re-enables a disabled user.
    Enable {
        /// The user name.
        username: String,
    },
}

fn cli_actor() -> Actor {
    let name = ["CUSTOS_ACTOR", "SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned());
    Actor::new(ActorKind::Cli, name)
}

/// Runs one user command against the store in `data_dir`.
pub fn run(
    data_dir: &Path,
    config: &custos_config::Config,
    cmd: UsersCommand,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(data_dir, config, cmd))
}

async fn run_async(
    data_dir: &Path,
    config: &custos_config::Config,
    cmd: UsersCommand,
) -> anyhow::Result<()> {
    crate::serve::prepare_data_dir(data_dir)?;
    let (store, _) = crate::state::open(data_dir).await?;
    let users = store.users();
    let base = config
        .console
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.server.admin_listen));
    let actor = cli_actor();
    let find = |name: String| async move {
        users
            .by_username(&name.trim().to_lowercase())
            .await?
            .with_context(|| format!("no console user {name}"))
    };
    match cmd {
        UsersCommand::Create { username, role } => {
            let Some(role) = Role::parse(&role) else {
                bail!("--role: `{role}` is not admin, key_manager, auditor or viewer");
            };
            let name = username.trim().to_lowercase();
            let inv = custos_console::issue_invite(
                &store,
                &base,
                config.console.invite_ttl,
                Some(&name),
                role,
                false,
                &actor,
            )
            .await?;
            println!(
                "Invitation for {name} ({role}). Open this one-time link to choose a password and set up two-step verification:"
            );
            println!("{}", inv.link);
            println!(
                "It works once, until {}.",
                custos_console::keyjson::rfc3339(inv.expires_at)
            );
        }
        UsersCommand::List { json } => {
            let now = store.now();
            let list = users.list().await?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|u| custos_console::keyjson::user_json(u, now))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<24} {:<12} {:<9} {:<8} LOCKED",
                    "USERNAME", "ROLE", "STATE", "MFA"
                );
                for u in &list {
                    println!(
                        "{:<24} {:<12} {:<9} {:<8} {}",
                        u.username,
                        u.role.as_str(),
                        u.state.as_str(),
                        if u.mfa_enrolled_at.is_some() {
                            "yes"
                        } else {
                            "pending"
                        },
                        if u.is_locked(now) { "yes" } else { "no" }
                    );
                }
                if list.is_empty() {
                    println!("(no users; run `custos users create NAME --role admin`)");
                }
            }
        }
        UsersCommand::ResetMfa { username, reason } => {
            let u = find(username).await?;
            users.reset_mfa(&u.id, &actor, &reason).await?;
            println!(
                "reset two-step verification of {}; they set it up again at next sign-in",
                u.username
            );
        }
        UsersCommand::ResetPassword { username } => {
            let u = find(username).await?;
            let inv = custos_console::issue_invite(
                &store,
                &base,
                config.console.invite_ttl,
                Some(&u.username),
                u.role,
                true,
                &actor,
            )
            .await?;
            println!("One-time password reset link for {}:", u.username);
            println!("{}", inv.link);
        }
        UsersCommand::Unlock { username } => {
            let u = find(username).await?;
            users.unlock(&u.id, &actor).await?;
            println!("unlocked {}", u.username);
        }
        UsersCommand::Disable { username } => {
            let u = find(username).await?;
            users.set_state(&u.id, UserState::Disabled, &actor).await?;
            println!("disabled {}", u.username);
        }
        UsersCommand::Enable { username } => {
            let u = find(username).await?;
            users.set_state(&u.id, UserState::Active, &actor).await?;
            println!("enabled {}", u.username);
        }
    }
    store.close().await;
    Ok(())
}
