//! `audit pubkey`, `audit checkpoint`, `audit prove` and `audit
//! consistency`: what the operator hands to an auditor. Proofs are built
//! by `custos-ledger`'s `LedgerReader` and checked with `custos-verify`
//! before they are printed, so a tampered ledger yields an error, not a
//! receipt that would fail later in someone else's hands.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use custos_ledger::{LedgerReader, StoredRecord};
use custos_note::{Checkpoint, Verifier};
use serde::{Deserialize, Serialize};

use super::{require_ledger, with_stdout};

/// `audit prove`.
#[derive(Debug, Args)]
pub struct ProveArgs {
    /// The request ID (the `X-Request-Id` the client got).
    request_id: String,
    /// Prove against the stored checkpoint of exactly this tree size
    /// instead of the newest one.
    #[arg(long, value_name = "N")]
    checkpoint_size: Option<u64>,
    /// When several records share the request ID (a client reused it),
    /// prove only the one with this seq. Without it, all of them are
    /// printed as a JSON array.
    #[arg(long, value_name = "SEQ")]
    seq: Option<u64>,
}

/// `audit consistency`.
#[derive(Debug, Args)]
pub struct ConsistencyArgs {
    /// A signed checkpoint note the auditor kept (for example the output of
    /// an earlier `custos audit checkpoint`).
    old_checkpoint: PathBuf,
    /// Prove up to the stored checkpoint of exactly this tree size instead
    /// of the newest one.
    #[arg(long, value_name = "N")]
    to_size: Option<u64>,
}

/// The file `audit consistency` prints and `audit verify-consistency`
/// reads: both signed notes and the RFC 6962 consistency proof between
/// their roots (standard base64 hashes).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsistencyProof {
    /// The newer checkpoint note.
    pub(super) new_checkpoint: String,
    /// The checkpoint note the auditor kept.
    pub(super) old_checkpoint: String,
    /// The proof hashes.
    pub(super) proof: Vec<String>,
    /// Format version, 1.
    pub(super) v: u64,
}

impl ConsistencyProof {
    /// The proof hashes, decoded.
    pub(super) fn hashes(&self) -> Result<Vec<[u8; 32]>, String> {
        self.proof
            .iter()
            .enumerate()
            .map(|(i, h)| {
                STANDARD
                    .decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| format!("proof[{i}] is not base64 of 32 bytes"))
            })
            .collect()
    }
}

/// Every key the ledger has used, from its own history: what the writer
/// signed with. Proofs are checked against these before printing.
fn ledger_keys(reader: &LedgerReader) -> anyhow::Result<Vec<Verifier>> {
    Ok(reader
        .verifier_history()
        .context("cannot read the ledger's key history")?
        .into_iter()
        .map(|k| k.verifier)
        .collect())
}

/// The stored checkpoint of `size`, or the newest.
fn stored_checkpoint(reader: &LedgerReader, size: Option<u64>) -> anyhow::Result<(u64, String)> {
    match size {
        Some(size) => reader
            .checkpoint(size)?
            .map(|note| (size, note))
            .ok_or_else(|| anyhow::anyhow!("no checkpoint of size {size} is stored")),
        None => reader
            .latest_checkpoint()?
            .ok_or_else(|| anyhow::anyhow!("the ledger has no signed checkpoint yet")),
    }
}

/// `custos audit pubkey`.
pub(super) fn pubkey(ledger: &Path, all: bool) -> anyhow::Result<()> {
    require_ledger(ledger)?;
    let keys = LedgerReader::open(ledger).verifier_history()?;
    let Some(last) = keys.last() else {
        anyhow::bail!("no ledger in {}", ledger.display());
    };
    with_stdout(|out| {
        if all {
            for k in &keys {
                writeln!(out, "{} {}", k.first_size, k.verifier)?;
            }
        } else {
            writeln!(out, "{}", last.verifier)?;
        }
        Ok(())
    })
}

/// `custos audit checkpoint`.
pub(super) fn checkpoint(ledger: &Path, size: Option<u64>) -> anyhow::Result<()> {
    require_ledger(ledger)?;
    let (_, note) = stored_checkpoint(&LedgerReader::open(ledger), size)?;
    with_stdout(|out| {
        out.write_all(note.as_bytes())?;
        Ok(())
    })
}

/// `custos audit prove`.
pub(super) fn prove(ledger: &Path, args: &ProveArgs) -> anyhow::Result<()> {
    require_ledger(ledger)?;
    let reader = LedgerReader::open(ledger);
    let found = reader.find_by_request_id(&args.request_id)?;
    let chosen: Vec<StoredRecord> = match args.seq {
        Some(seq) => {
            let one: Vec<_> = found.into_iter().filter(|r| r.seq == seq).collect();
            if one.is_empty() {
                anyhow::bail!(
                    "no record with request_id {:?} at seq {seq}",
                    args.request_id
                );
            }
            one
        }
        None => found,
    };
    if chosen.is_empty() {
        anyhow::bail!("no record with request_id {:?}", args.request_id);
    }
    let (size, _) = stored_checkpoint(&reader, args.checkpoint_size)?;
    let keys = ledger_keys(&reader)?;
    let mut receipts = Vec::with_capacity(chosen.len());
    for record in &chosen {
        if record.seq >= size {
            anyhow::bail!(
                "record seq {} is not covered by checkpoint {size} yet; retry after the next checkpoint",
                record.seq
            );
        }
        let receipt = reader.receipt(record.seq, Some(size))?;
        let json = receipt.to_json();
        custos_verify::verify_receipt(&json, &keys).map_err(|e| {
            anyhow::anyhow!(
                "the receipt for seq {} does not verify against checkpoint {size} ({e}); run `custos audit verify`",
                record.seq
            )
        })?;
        receipts.push(receipt);
    }
    with_stdout(|out| {
        match receipts.as_slice() {
            [one] => writeln!(out, "{}", one.to_json())?,
            many => {
                // Several records share the ID: print them all, so that
                // nobody mistakes one of them for the only one.
                serde_json::to_writer(&mut *out, many)?;
                writeln!(out)?;
            }
        }
        Ok(())
    })
}

/// `custos audit consistency`.
pub(super) fn consistency(ledger: &Path, args: &ConsistencyArgs) -> anyhow::Result<()> {
    require_ledger(ledger)?;
    let reader = LedgerReader::open(ledger);
    let keys = ledger_keys(&reader)?;
    let old_text = std::fs::read_to_string(&args.old_checkpoint)
        .with_context(|| format!("cannot read {}", args.old_checkpoint.display()))?;
    let old_note = custos_note::open(old_text.as_bytes(), &keys).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a checkpoint signed by this ledger's keys: {e}",
            args.old_checkpoint.display()
        )
    })?;
    let old = Checkpoint::parse(old_note.body())
        .with_context(|| format!("{} is not a checkpoint", args.old_checkpoint.display()))?;
    let (new_size, new_text) = stored_checkpoint(&reader, args.to_size)?;
    if old.size() > new_size {
        anyhow::bail!(
            "the kept checkpoint (size {}) is larger than the ledger's checkpoint {new_size}: the log was truncated or rolled back, or pass a larger --to-size",
            old.size()
        );
    }
    let hashes = if old.size() == 0 || old.size() == new_size {
        Vec::new()
    } else {
        reader.consistency_proof(old.size(), new_size)?
    };
    custos_verify::verify_consistency(&old_text, &new_text, &hashes, &keys).map_err(|e| {
        anyhow::anyhow!(
            "the log is not consistent with the kept checkpoint of size {}: {e} (the log was rewritten; run `custos audit verify --trusted-checkpoint`)",
            old.size()
        )
    })?;
    let proof = ConsistencyProof {
        new_checkpoint: new_text,
        old_checkpoint: old_text,
        proof: hashes.iter().map(|h| STANDARD.encode(h)).collect(),
        v: 1,
    };
    with_stdout(|out| {
        serde_json::to_writer(&mut *out, &proof)?;
        writeln!(out)?;
        Ok(())
    })
}
