//! The `custos` binary: command-line parsing, startup and shutdown. This is
//! the only crate that reads arguments, the environment and files.

#![allow(clippy::print_stdout, reason = "a CLI writes its results to stdout")]

mod audit;
mod audit_cmd;
mod evidence_cmd;
mod incidents;
mod incidents_cmd;
mod keys_cmd;
mod keys_remote;
mod ledger_cmd;
mod readiness_cmd;
mod serve;
mod state;
mod table;
mod telemetry;
mod users_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: per-thread free lists without the
/// arena contention and consolidation that made glibc's `malloc`/`free`
/// the largest user-space cost of a proxied request (see
/// docs/benchmarks.md, "What limits Custos now"). Built with `no_thp`:
/// mimalloc then never asks for transparent huge pages, which on a kernel
/// in `madvise` THP mode took peak RSS at 64 connections from about
/// 50 MiB to 66 MiB for no measurable speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Custos: an LLM API gateway whose request log an auditor can verify.
#[derive(Debug, Parser)]
#[command(name = "custos", version, about, long_about = None)]
struct Cli {
    /// State directory (SQLite, audit ledger).
    #[arg(long, global = true, env = "CUSTOS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file; without it the embedded default is used.
    #[arg(long, global = true, env = "CUSTOS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
enum Command {
    /// Runs the gateway and admin listeners.
    Serve,
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Scoped API keys: create, list, show, update, rotate, revoke.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Console users from the host shell: create (first admin), reset-mfa,
    /// unlock, disable.
    #[command(subcommand)]
    Users(users_cmd::UsersCommand),
    /// The audit ledger: verify, prove, export, read (read-only).
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Model-availability incidents: list, show, ack, note, resolve, postmortem.
    #[command(subcommand)]
    Incidents(incidents_cmd::IncidentsCommand),
    /// Writer operations on the audit ledger (server stopped): rotate-key.
    #[command(subcommand)]
    Ledger(ledger_cmd::LedgerCommand),
    /// SOC 2 evidence pack: `evidence --from --to --out DIR`, `evidence verify DIR`.
    Evidence(evidence_cmd::EvidenceCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validates a configuration file (with environment overrides) without starting.
    Check {
        /// The file; defaults to --config, or the embedded default.
        file: Option<PathBuf>,
    },
    /// Prints the embedded default configuration.
    Default,
}

/// The default state directory.
const DEFAULT_DATA_DIR: &str = "./custos-data";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve => serve::run(cli.config.as_deref(), cli.data_dir),
        Command::Config(ConfigCommand::Check { file }) => {
            config_check(file.as_deref().or(cli.config.as_deref()))
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", custos_config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Audit(audit_cmd::AuditCommand::Readiness(args)) => {
            load_config(cli.config.as_deref()).and_then(|config| {
                let data_dir = data_dir(cli.data_dir, &config);
                readiness_cmd::run(&config, &data_dir, *args)
            })
        }
        Command::Audit(cmd) => load_config(cli.config.as_deref()).and_then(|config| {
            let data_dir = data_dir(cli.data_dir, &config);
            audit_cmd::run(&data_dir, cmd)
        }),
        Command::Ledger(cmd) => load_config(cli.config.as_deref()).and_then(|config| {
            let data_dir = data_dir(cli.data_dir, &config);
            ledger_cmd::run(&config, &data_dir, cmd)
        }),
        Command::Users(cmd) => load_config(cli.config.as_deref()).and_then(|config| {
            let data_dir = data_dir(cli.data_dir, &config);
            users_cmd::run(&data_dir, &config, cmd)
        }),
        Command::Incidents(cmd) => load_config(cli.config.as_deref()).and_then(|config| {
            let data_dir = data_dir(cli.data_dir, &config);
            incidents_cmd::run(&config, &data_dir, cmd)
        }),
        Command::Evidence(cmd) => load_config(cli.config.as_deref()).and_then(|config| {
            let data_dir = data_dir(cli.data_dir, &config);
            evidence_cmd::run(&config, cli.config.as_deref(), &data_dir, cmd)
        }),
        Command::Keys(cmd) => load_config(cli.config.as_deref()).and_then(|config| {
            let data_dir = data_dir(cli.data_dir, &config);
            keys_cmd::run(&data_dir, &config.keys, cmd)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custos: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The state directory: the flag (or `CUSTOS_DATA_DIR`), else the config's
/// `server.data_dir`, else `./custos-data`.
pub(crate) fn data_dir(flag: Option<PathBuf>, config: &custos_config::Config) -> PathBuf {
    flag.or_else(|| config.server.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// Reads and validates the configuration: the file if given, otherwise the
/// embedded default, then `CUSTOS_…` overrides from the environment.
pub(crate) fn load_config(file: Option<&Path>) -> anyhow::Result<custos_config::Config> {
    let env = |name: &str| std::env::var(name).ok();
    match file {
        None => Ok(custos_config::load_default(&env)?),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            Ok(custos_config::load(
                &path.display().to_string(),
                &text,
                &env,
            )?)
        }
    }
}

fn config_check(file: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(file)?;
    let name = file.map_or_else(
        || "<embedded default>".to_owned(),
        |p| p.display().to_string(),
    );
    println!(
        "{name}: ok ({} provider(s), {} model(s); gateway {}, admin {})",
        config.providers.len(),
        config.models.len(),
        config.server.listen,
        config.server.admin_listen
    );
    Ok(())
}
