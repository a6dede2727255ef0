//! `custos evidence`: writes the SOC 2 evidence pack for a period, and
//! `custos evidence verify` checks one. The pack logic is
//! `custos-evidence`'s; this module reads inputs, shows progress, records
//! `evidence.generated` in the ledger (through the store's outbox) and
//! reports.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use custos_evidence::{LedgerLink, Period, Request, Sources};
use custos_note::Verifier;
use custos_store::{AdminEvent, Store, StoreOptions};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::Digest as _;

/// `custos evidence`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvidenceCommand {
    #[command(subcommand)]
    sub: Option<EvidenceSub>,
    #[command(flatten)]
    generate: GenerateArgs,
}

/// `custos evidence verify`.
#[derive(Debug, Subcommand)]
enum EvidenceSub {
    /// Checks a pack: every file against manifest.json, the manifest's
    /// signature, and whether its hash is recorded in the ledger.
    Verify(VerifyArgs),
}

/// Writing a pack.
#[derive(Debug, Args)]
struct GenerateArgs {
    /// First day of the period (inclusive): YYYY-MM-DD or RFC 3339 UTC.
    #[arg(long, required = true, value_name = "DATE")]
    from: Option<String>,
    /// End of the period (exclusive): YYYY-MM-DD or RFC 3339 UTC.
    #[arg(long, required = true, value_name = "DATE")]
    to: Option<String>,
    /// The pack directory; must not exist or be empty.
    #[arg(long, required = true, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Also write the pack as `DIR.zip` (which must not exist).
    #[arg(long)]
    zip: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The pack directory, or a `.zip` written by `--zip`.
    dir: PathBuf,
    /// The log's public key(s), one vkey per line (`custos audit pubkey
    /// --all`). Without it, the keys in the ledger under --data-dir are
    /// trusted, or failing that the keys inside the pack (which proves
    /// integrity but not origin).
    #[arg(long, value_name = "FILE")]
    pubkey: Option<PathBuf>,
}

/// Runs `custos evidence …`.
pub fn run(
    config: &custos_config::Config,
    config_file: Option<&Path>,
    data_dir: &Path,
    cmd: EvidenceCommand,
) -> anyhow::Result<()> {
    match cmd.sub {
        Some(EvidenceSub::Verify(args)) => verify(data_dir, &args),
        None => {
            let g = cmd.generate;
            let (Some(from), Some(to), Some(out)) = (g.from, g.to, g.out) else {
                anyhow::bail!("--from, --to and --out are required");
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(generate(
                config,
                config_file,
                data_dir,
                &from,
                &to,
                &out,
                g.zip,
            ))
        }
    }
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg:18} {wide_bar} {binary_bytes}/{binary_total_bytes} ({eta} left)",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(0).with_style(style)
}

/// `DIR.zip` next to `DIR`.
fn zip_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".zip");
    out.with_file_name(name)
}

fn config_sha256(config_file: Option<&Path>) -> anyhow::Result<String> {
    let bytes = match config_file {
        None => custos_config::DEFAULT_CONFIG.as_bytes().to_vec(),
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
    };
    Ok(custos_evidence::hex(&sha2::Sha256::digest(&bytes)))
}

async fn generate(
    config: &custos_config::Config,
    config_file: Option<&Path>,
    data_dir: &Path,
    from: &str,
    to: &str,
    out: &Path,
    zip: bool,
) -> anyhow::Result<()> {
    // Cheap checks first, so a typo fails before a long scan.
    let period = Period::parse(from, to)?;
    custos_evidence::check_output(out)?;
    let zip_path = zip.then(|| zip_path(out));
    if let Some(z) = &zip_path
        && z.exists()
    {
        anyhow::bail!("{} exists; choose a new --out", z.display());
    }
    let ledger_dir = data_dir.join("ledger");
    if !ledger_dir.is_dir() {
        anyhow::bail!(
            "no audit ledger in {} (wrong --data-dir?)",
            ledger_dir.display()
        );
    }
    let signer = custos_evidence::load_signer(&ledger_dir)?;
    let store = Store::open(
        data_dir,
        StoreOptions {
            create: false,
            ..StoreOptions::default()
        },
    )
    .await
    .with_context(|| format!("cannot open the state store in {}", data_dir.display()))?;
    let sha = config_sha256(config_file)?;
    let actor = crate::incidents_cmd::os_actor();
    let request = Request {
        period,
        generated_at: store.now(),
        generated_by: actor.to_string(),
    };
    let sources = Sources {
        config,
        config_sha256: Some(&sha),
        ledger_dir: &ledger_dir,
        store: &store,
    };
    let bar = progress_bar();
    let evidence = custos_evidence::gather(&sources, request, &mut |phase, done, total| {
        bar.set_message(phase.to_owned());
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    let written = custos_evidence::write_pack(&evidence, out, &signer)?;
    if let Some(z) = &zip_path {
        custos_evidence::zip_pack(out, z)?;
        println!("wrote {}", z.display());
    }
    // Tie the pack to the log: the server (or its next start) drains the
    // outbox into the ledger as an `evidence.generated` admin record.
    let event = AdminEvent::new("evidence.generated", actor, store.now())
        .target(
            "evidence_pack",
            written.manifest_sha256.get(..16).unwrap_or_default(),
        )
        .set("manifest_sha256", written.manifest_sha256.clone())
        .set("period_from", custos_evidence::format_time(period.from()))
        .set("period_to", custos_evidence::format_time(period.to()))
        .set("files", written.files);
    store
        .record_event(&event)
        .await
        .context("cannot record evidence.generated")?;
    store.close().await;
    let ig = &evidence.integrity;
    println!(
        "wrote {} ({} files) for {period}\nmanifest sha256 {}\nledger records in period: {} (seq {}..{}); verification: {}",
        out.display(),
        written.files,
        written.manifest_sha256,
        ig.period_end_seq.saturating_sub(ig.period_first_seq),
        ig.period_first_seq,
        ig.period_end_seq,
        if ig.intact { "intact" } else { "FAILED" },
    );
    if !ig.intact {
        eprintln!(
            "custos: warning: the audit ledger failed verification: {}",
            ig.problem.as_deref().unwrap_or("unknown problem")
        );
    }
    Ok(())
}

/// Reads vkeys, one per line; `<first size> <vkey>` lines count as their vkey.
fn parse_keys(text: &str, what: &str) -> anyhow::Result<Vec<Verifier>> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let vkey = line.rsplit(' ').next().unwrap_or(line);
        keys.push(
            Verifier::from_vkey(vkey)
                .with_context(|| format!("{what} line {}: not a verifier key", i + 1))?,
        );
    }
    if keys.is_empty() {
        anyhow::bail!("{what}: no verifier key");
    }
    Ok(keys)
}

fn verify(data_dir: &Path, args: &VerifyArgs) -> anyhow::Result<()> {
    let files = if args.dir.is_dir() {
        custos_evidence::read_dir(&args.dir)?
    } else if args.dir.is_file() {
        custos_evidence::read_zip(&args.dir)?
    } else {
        anyhow::bail!("{} is not a pack directory or zip file", args.dir.display());
    };
    let ledger_dir = data_dir.join("ledger");
    let verifiers = ledger_dir.join("keys").join("verifiers.txt");
    let (keys, source) = if let Some(path) = &args.pubkey {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        (
            parse_keys(&text, &path.display().to_string())?,
            "--pubkey".to_owned(),
        )
    } else if verifiers.is_file() {
        let text = std::fs::read_to_string(&verifiers)
            .with_context(|| format!("cannot read {}", verifiers.display()))?;
        (
            parse_keys(&text, &verifiers.display().to_string())?,
            format!("the ledger's key history ({})", verifiers.display()),
        )
    } else {
        let text = files
            .get("integrity/public-keys.txt")
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        (
            parse_keys(&text, "integrity/public-keys.txt").unwrap_or_default(),
            "the pack's own integrity/public-keys.txt (proves integrity, not origin: pass --pubkey)".to_owned(),
        )
    };
    let mut report = custos_evidence::verify_pack(&files, &keys);
    if let Some(sha) = &report.manifest_sha256
        && ledger_dir.is_dir()
    {
        report.ledger = custos_evidence::find_in_ledger(&ledger_dir, sha);
    }
    if let Some((from, to)) = &report.period {
        println!("pack {} for [{from}, {to})", args.dir.display());
    }
    println!("trusted keys: {source}");
    println!("files checked: {}", report.files_ok);
    if let Some(sha) = &report.manifest_sha256 {
        println!("manifest sha256 {sha}");
    }
    if let Some(name) = &report.signed_by {
        println!("signature: ok (key {name})");
    }
    match &report.ledger {
        LedgerLink::NotChecked => println!("ledger: not checked (no ledger under --data-dir)"),
        LedgerLink::Recorded { seq } => println!("ledger: manifest hash recorded at seq {seq}"),
        LedgerLink::NotFound => println!(
            "ledger: manifest hash NOT found (a pack just written reaches the ledger when the server drains its outbox)"
        ),
        LedgerLink::Unreadable(e) => println!("ledger: cannot read: {e}"),
    }
    if report.is_intact() {
        println!("pack: intact");
        Ok(())
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        anyhow::bail!(
            "evidence pack {} FAILED verification ({} problem(s))",
            args.dir.display(),
            report.problems.len()
        )
    }
}
