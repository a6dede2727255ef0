//! `audit verify`, `audit verify-receipt` and `audit verify-consistency`:
//! the checks an auditor runs. All the checking is `custos-verify`'s; this
//! module reads the inputs, shows progress and reports.
//!
//! Input the auditor controls (the key file, the ledger path, unreadable
//! files) is a reason the check could not run (exit 2). Content the check
//! is about (a receipt, a proof, the ledger files) is never an excuse: if
//! it is malformed, even not UTF-8 or not JSON, the check fails (exit 1).

use std::io::{IsTerminal as _, Read as _, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use custos_ledger::LedgerReader;
use custos_note::{Checkpoint, Verifier};
use custos_verify::{KeySource, ProblemKind, Report};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::proofs::ConsistencyProof;
use super::{Verdict, with_stdout};

/// `audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The log's public key(s), one vkey per line (as `custos audit pubkey`
    /// prints; `pubkey --all` output works too). Authoritative: checkpoints
    /// signed by any other key fail. Without it, the first key in the
    /// ledger's own keys/verifiers.txt is trusted, which only detects
    /// accidents.
    #[arg(long, value_name = "FILE")]
    pubkey: Option<PathBuf>,
    /// A signed checkpoint kept from an earlier audit or a witness: the log
    /// must still contain it (catches truncation and rollback together with
    /// the checkpoints).
    #[arg(long, value_name = "FILE")]
    trusted_checkpoint: Option<PathBuf>,
    /// Print a machine-readable JSON report (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// `audit verify-receipt`.
#[derive(Debug, Args)]
pub struct VerifyReceiptArgs {
    /// The receipt file (`-` for stdin): one receipt, or a JSON array of
    /// receipts as `audit prove` prints for a reused request ID.
    receipt: PathBuf,
    /// The log's public key(s), one vkey per line. Give every key the log
    /// used (`custos audit pubkey --all`) to check receipts signed before a
    /// key rotation.
    #[arg(long, value_name = "FILE")]
    pubkey: PathBuf,
}

/// `audit verify-consistency`.
#[derive(Debug, Args)]
pub struct VerifyConsistencyArgs {
    /// The proof file that `custos audit consistency` printed (`-` for stdin).
    proof: PathBuf,
    /// The log's public key(s), one vkey per line; both checkpoints must be
    /// signed by one of them.
    #[arg(long, value_name = "FILE")]
    pubkey: PathBuf,
}

/// Reads a file, or stdin for `-`.
fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Reads trusted verifier keys: one per line; blank lines and `#`
/// comments are skipped, and a line `<first size> <vkey>` (as in
/// `keys/verifiers.txt` and `pubkey --all`) counts as its vkey.
pub(super) fn read_pubkeys(path: &Path) -> anyhow::Result<Vec<Verifier>> {
    let bytes = read_input(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not a key file (not UTF-8)", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let vkey = line.rsplit(' ').next().unwrap_or(line);
        let key = Verifier::from_vkey(vkey)
            .with_context(|| format!("{} line {}: not a verifier key", path.display(), i + 1))?;
        keys.push(key);
    }
    if keys.is_empty() {
        anyhow::bail!("{}: no verifier key in the file", path.display());
    }
    Ok(keys)
}

/// A short stable name for each problem kind, for the JSON report.
fn problem_kind(kind: &ProblemKind) -> &'static str {
    match kind {
        ProblemKind::Unreadable { .. } => "unreadable",
        ProblemKind::KeyHistory { .. } => "key_history",
        ProblemKind::Record { .. } => "bad_record",
        ProblemKind::SeqMismatch { .. } => "seq_mismatch",
        ProblemKind::TimestampRegression { .. } => "timestamp_regression",
        ProblemKind::PartialLine => "partial_line",
        ProblemKind::SegmentMisnamed { .. } => "segment_misnamed",
        ProblemKind::DeletedRecords { .. } => "deleted_records",
        ProblemKind::MissingSealCheckpoint { .. } => "missing_seal_checkpoint",
        ProblemKind::MissingFrontier { .. } => "missing_frontier",
        ProblemKind::FrontierMismatch { .. } => "frontier_mismatch",
        ProblemKind::Signature { .. } => "signature",
        ProblemKind::UntrustedKey { .. } => "untrusted_key",
        ProblemKind::CheckpointMismatch { .. } => "checkpoint_mismatch",
        ProblemKind::RootMismatch { .. } => "root_mismatch",
        ProblemKind::TruncatedTail { .. } => "truncated_tail",
        ProblemKind::RolledBack { .. } => "rolled_back",
        ProblemKind::TrustedRootMismatch { .. } => "trusted_root_mismatch",
        ProblemKind::TrustedCheckpointInvalid { .. } => "trusted_checkpoint_invalid",
        _ => "other",
    }
}

/// The body of a signed note (everything before the blank line).
fn note_body(note: &str) -> Option<&str> {
    note.find("\n\n").map(|i| &note[..=i])
}

/// `custos audit verify`.
pub(super) fn verify(ledger: &Path, args: &VerifyArgs) -> anyhow::Result<Verdict> {
    if !ledger.is_dir() {
        anyhow::bail!(
            "no audit ledger in {} (wrong --data-dir?)",
            ledger.display()
        );
    }
    let keys = match &args.pubkey {
        Some(path) => read_pubkeys(path)?,
        None => Vec::new(),
    };
    let trusted = match &args.trusted_checkpoint {
        Some(path) => {
            let bytes = read_input(path)?;
            // A kept checkpoint that is not even text is still a checkpoint
            // that does not verify; let the verifier say so.
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        None => None,
    };

    let bar = if args.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let style = ProgressStyle::with_template(
            "verifying {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressBar::new(0).with_style(style)
    };
    let report =
        custos_verify::verify_dir(ledger, &keys, trusted.as_deref(), &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
    bar.finish_and_clear();

    let reader = LedgerReader::open(ledger);
    let segments = reader.segments().map(|s| s.len()).unwrap_or(0);
    let history = reader.verifier_history().unwrap_or_default();
    // The signed root of the newest checkpoint the verifier checked: only
    // meaningful (and only shown) when the log is intact.
    let root = report
        .newest_checkpoint
        .filter(|_| report.is_intact())
        .and_then(|size| {
            reader
                .checkpoint(size)
                .ok()
                .flatten()
                .map(|note| (size, note))
        })
        .and_then(|(size, note)| {
            let cp = Checkpoint::parse(note_body(&note)?).ok()?;
            Some((size, STANDARD.encode(cp.root())))
        });

    let keys_json: Vec<Value> = history
        .iter()
        .map(|k| json!({"first_size": k.first_size, "vkey": k.verifier.to_vkey()}))
        .collect();
    let given: Vec<String> = keys.iter().map(Verifier::to_vkey).collect();
    with_stdout(|out| {
        if args.json {
            let problem = report.problem.as_ref().map(|p| {
                json!({
                    "file": p.file.as_ref().map(|f| f.display().to_string()),
                    "seq": p.seq,
                    "kind": problem_kind(&p.kind),
                    "message": p.kind.to_string(),
                })
            });
            let doc = json!({
                "intact": report.is_intact(),
                "ledger": ledger.display().to_string(),
                "records_checked": report.records_checked,
                "first_seq": report.first_seq,
                "tree_size": report.tree_size,
                "segments": segments,
                "checkpoints_checked": report.checkpoints_checked,
                "newest_checkpoint": report.newest_checkpoint,
                "root": root.as_ref().map(|(_, r)| r),
                "root_size": root.as_ref().map(|(s, _)| s),
                "key_source": match report.key_source {
                    KeySource::Given => "given",
                    KeySource::LedgerDirectory => "ledger_directory",
                },
                "given_keys": given,
                "keys": keys_json,
                "trusted_checkpoint": args.trusted_checkpoint.is_some(),
                "warnings": report.warnings,
                "problem": problem,
            });
            writeln!(out, "{doc}")?;
        } else {
            print_report(
                out,
                ledger,
                &report,
                segments,
                root.as_ref(),
                &history,
                args,
            )?;
        }
        Ok(())
    })?;
    Ok(match &report.problem {
        None => Verdict::Valid,
        Some(p) => Verdict::Invalid(format!("ledger verification failed: {p}")),
    })
}

fn print_report(
    out: &mut dyn Write,
    ledger: &Path,
    report: &Report,
    segments: usize,
    root: Option<&(u64, String)>,
    history: &[custos_ledger::KeyEntry],
    args: &VerifyArgs,
) -> anyhow::Result<()> {
    writeln!(out, "ledger        {}", ledger.display())?;
    let purged = if report.first_seq > 0 {
        format!(" (from seq {}; earlier records purged)", report.first_seq)
    } else {
        String::new()
    };
    writeln!(
        out,
        "records       {} checked{purged}",
        report.records_checked
    )?;
    writeln!(out, "segments      {segments}")?;
    match report.newest_checkpoint {
        Some(newest) => writeln!(
            out,
            "checkpoints   {} checked, newest at size {newest}",
            report.checkpoints_checked
        )?,
        None => writeln!(out, "checkpoints   none")?,
    }
    writeln!(out, "tree size     {}", report.tree_size)?;
    if let Some((size, root)) = root {
        writeln!(out, "root          {root} (signed at size {size})")?;
    }
    let source = match report.key_source {
        KeySource::Given => "given with --pubkey (authoritative)",
        KeySource::LedgerDirectory => {
            "first key of keys/verifiers.txt (trust on first use; pass --pubkey for a real audit)"
        }
    };
    writeln!(out, "keys          {source}")?;
    for k in history {
        writeln!(
            out,
            "              from size {}: {}",
            k.first_size,
            k.verifier.to_vkey()
        )?;
    }
    if let Some(path) = &args.trusted_checkpoint {
        writeln!(out, "trusted cp    {}", path.display())?;
    }
    for w in &report.warnings {
        writeln!(out, "warning       {w}")?;
    }
    match &report.problem {
        None => writeln!(out, "result        INTACT")?,
        Some(p) => {
            writeln!(
                out,
                "result        TAMPERED (or unreadable): the log must not be trusted as it is"
            )?;
            writeln!(
                out,
                "first problem {}",
                p.file
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |f| f.display().to_string())
            )?;
            if let Some(seq) = p.seq {
                writeln!(out, "  at seq      {seq}")?;
            }
            writeln!(out, "  what        {}", p.kind)?;
        }
    }
    Ok(())
}

/// `custos audit verify-receipt`.
pub(super) fn verify_receipt(args: &VerifyReceiptArgs) -> anyhow::Result<Verdict> {
    let keys = read_pubkeys(&args.pubkey)?;
    let bytes = read_input(&args.receipt)?;
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(Verdict::Invalid(
            "receipt does not verify: not UTF-8".into(),
        ));
    };
    // `audit prove` prints an array when several records share the ID.
    let receipts: Vec<String> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) if !items.is_empty() => {
            items.iter().map(Value::to_string).collect()
        }
        Ok(Value::Array(_)) => {
            return Ok(Verdict::Invalid(
                "receipt does not verify: empty array".into(),
            ));
        }
        _ => vec![text],
    };
    let mut lines = Vec::new();
    for (i, receipt) in receipts.iter().enumerate() {
        let which = if receipts.len() > 1 {
            format!("receipt {}", i + 1)
        } else {
            "receipt".to_owned()
        };
        match custos_verify::verify_receipt(receipt, &keys) {
            Ok(ok) => {
                let request = match &ok.record.body {
                    custos_record::RecordBody::Inference(r) => {
                        format!(" (request_id {})", r.request_id)
                    }
                    other => format!(" ({} {})", other.record_type(), other.event()),
                };
                lines.push(format!(
                    "{which} valid: seq {}{request} at {} is in checkpoint {} of {}",
                    ok.record.seq,
                    ok.record.ts,
                    ok.checkpoint.size(),
                    ok.checkpoint.origin()
                ));
            }
            Err(e) => return Ok(Verdict::Invalid(format!("{which} does not verify: {e}"))),
        }
    }
    with_stdout(|out| {
        for line in &lines {
            writeln!(out, "{line}")?;
        }
        Ok(())
    })?;
    Ok(Verdict::Valid)
}

/// `custos audit verify-consistency`.
pub(super) fn verify_consistency(args: &VerifyConsistencyArgs) -> anyhow::Result<Verdict> {
    let keys = read_pubkeys(&args.pubkey)?;
    let bytes = read_input(&args.proof)?;
    let invalid = |why: String| {
        Ok(Verdict::Invalid(format!(
            "consistency proof does not verify: {why}"
        )))
    };
    let proof: ConsistencyProof = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => return invalid(format!("malformed proof file: {e}")),
    };
    if proof.v != 1 {
        return invalid(format!("unsupported proof version {}", proof.v));
    }
    let hashes = match proof.hashes() {
        Ok(h) => h,
        Err(why) => return invalid(why),
    };
    if let Err(e) = custos_verify::verify_consistency(
        &proof.old_checkpoint,
        &proof.new_checkpoint,
        &hashes,
        &keys,
    ) {
        return invalid(e.to_string());
    }
    // Both notes verified above; read their sizes for the message.
    let size = |note: &str| {
        note_body(note)
            .and_then(|b| Checkpoint::parse(b).ok())
            .map(|c| (c.size(), c.origin().to_owned()))
    };
    let (old, new) = (size(&proof.old_checkpoint), size(&proof.new_checkpoint));
    with_stdout(|out| {
        match (old, new) {
            (Some((old, origin)), Some((new, _))) => writeln!(
                out,
                "consistent: the log {origin} at size {new} extends its checkpoint at size {old} (append-only)"
            )?,
            _ => writeln!(out, "consistent")?,
        }
        Ok(())
    })?;
    Ok(Verdict::Valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_body_stops_at_the_blank_line() {
        assert_eq!(note_body("a\n1\nx\n\n— k sig\n"), Some("a\n1\nx\n"));
        assert_eq!(note_body("no signature block\n"), None);
    }
}
