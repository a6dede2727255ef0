//! `custos audit …`: read-only commands on the audit ledger of a data
//! directory. They work while the server runs: nothing here takes the
//! ledger lock or writes under `<data_dir>/ledger`, and a last line still
//! being written is ignored.
//!
//! Verification goes through `custos-verify` (which shares no code with
//! the writer); reading, lookups and proofs through `custos-ledger`'s
//! read-only `LedgerReader` and a streaming segment scanner ([`scan`]).
//!
//! Exit status: 0 on success. 1 when a check fails (a tampered ledger, a
//! receipt or consistency proof that does not verify, a request ID with no
//! record) and for any other error. The three `verify…` commands exit 2
//! when they could not check at all (no ledger, an unreadable or malformed
//! key, receipt or proof file), so that for them 1 always means "checked,
//! and it is wrong". Every error is one line on stderr.

mod export;
mod proofs;
mod scan;
mod show;
mod verify;

use std::io::{self, BufWriter, Write};
use std::path::Path;

use clap::Subcommand;

/// The audit commands. Arguments are boxed so that this enum stays small
/// inside the binary's top-level command enum.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recomputes and checks the whole ledger: every record, the Merkle
    /// tree, every checkpoint signature and root. Exit 0 intact, 1 tampered,
    /// 2 could not check.
    Verify(Box<verify::VerifyArgs>),
    /// Prints the ledger's current verifier (public) key.
    Pubkey {
        /// Lists every key the ledger has used, as `<first size> <vkey>`
        /// (the key signs checkpoints from that tree size on).
        #[arg(long)]
        all: bool,
    },
    /// Prints the newest signed checkpoint note verbatim.
    Checkpoint {
        /// The checkpoint of exactly this tree size instead of the newest.
        #[arg(long, value_name = "N")]
        size: Option<u64>,
    },
    /// Prints a self-contained receipt (record, inclusion proof, signed
    /// checkpoint) for the record with this request ID.
    Prove(Box<proofs::ProveArgs>),
    /// Checks a receipt with only the public key. Exit 0 valid, 1 invalid,
    /// 2 could not check.
    VerifyReceipt(Box<verify::VerifyReceiptArgs>),
    /// Prints a consistency proof that the log grew append-only since a
    /// checkpoint an auditor kept.
    Consistency(Box<proofs::ConsistencyArgs>),
    /// Checks a consistency proof with only the public key. Exit 0 valid,
    /// 1 invalid, 2 could not check.
    VerifyConsistency(Box<verify::VerifyConsistencyArgs>),
    /// Exports the records of a time range as JSON lines, CSV or OCSF.
    Export(Box<export::ExportArgs>),
    /// Prints the last records, and with --follow new ones as they come.
    Tail(Box<show::TailArgs>),
    /// Finds records by time, key, model, status, request ID or type (a
    /// linear scan).
    Search(Box<show::SearchArgs>),
    /// The mock audit: SOC 2 control checks over the live configuration
    /// and data, with findings and remediations. Exits non-zero when any
    /// check FAILs, so it can run in CI.
    Readiness(Box<crate::readiness_cmd::ReadinessArgs>),
}

/// Runs one audit command against `<data_dir>/ledger`.
///
/// The `verify…` commands do not return when they could not check: they
/// print the error and exit with status 2 (see the module docs).
pub fn run(data_dir: &Path, cmd: AuditCommand) -> anyhow::Result<()> {
    let ledger = data_dir.join("ledger");
    match cmd {
        AuditCommand::Verify(args) => verdict(verify::verify(&ledger, &args)),
        AuditCommand::VerifyReceipt(args) => verdict(verify::verify_receipt(&args)),
        AuditCommand::VerifyConsistency(args) => verdict(verify::verify_consistency(&args)),
        AuditCommand::Pubkey { all } => proofs::pubkey(&ledger, all),
        AuditCommand::Checkpoint { size } => proofs::checkpoint(&ledger, size),
        AuditCommand::Prove(args) => proofs::prove(&ledger, &args),
        AuditCommand::Consistency(args) => proofs::consistency(&ledger, &args),
        AuditCommand::Export(args) => export::export(&ledger, &args),
        AuditCommand::Tail(args) => show::tail(&ledger, &args),
        AuditCommand::Search(args) => show::search(&ledger, &args),
        AuditCommand::Readiness(_) => {
            anyhow::bail!("readiness needs the configuration; it is dispatched by main")
        }
    }
}

/// The result of a check that ran.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Everything verified.
    Valid,
    /// The check ran and failed; the message says what failed first.
    Invalid(String),
}

/// Maps a check to the exit status: `Ok(Valid)` → 0, `Ok(Invalid)` → an
/// error (main prints it and exits 1), `Err` (could not check) → 2.
fn verdict(result: anyhow::Result<Verdict>) -> anyhow::Result<()> {
    match result {
        Ok(Verdict::Valid) => Ok(()),
        Ok(Verdict::Invalid(why)) => Err(anyhow::anyhow!(why)),
        Err(e) => {
            // Same one-line format as main's errors, but a distinct status:
            // a script must be able to tell "tampered" from "not checked".
            let _ = io::stdout().flush();
            eprintln!("custos: error: {e:#}");
            std::process::exit(2)
        }
    }
}

/// Runs `f` with buffered stdout. A closed pipe (`custos audit … | head`)
/// ends the output quietly instead of failing.
fn with_stdout(f: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = f(&mut out).and_then(|()| out.flush().map_err(anyhow::Error::from));
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let kind = match cause.downcast_ref::<io::Error>() {
            Some(io) => Some(io.kind()),
            // serde_json wraps the writer's error without exposing it as
            // its source.
            None => cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind),
        };
        kind == Some(io::ErrorKind::BrokenPipe)
    })
}

/// Fails unless `ledger` looks like a ledger directory, so that a wrong
/// `--data-dir` gives a clear message instead of an empty result.
fn require_ledger(ledger: &Path) -> anyhow::Result<()> {
    if ledger.join("keys").join("verifiers.txt").is_file() || ledger.join("segments").is_dir() {
        Ok(())
    } else {
        anyhow::bail!(
            "no audit ledger in {} (wrong --data-dir?)",
            ledger.display()
        )
    }
}
