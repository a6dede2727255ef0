//! Checking a single receipt, and the consistency of two checkpoints.

use custos_merkle::{Hash, VerifyError, leaf_hash, verify_inclusion};
use custos_note::{Checkpoint, CheckpointError, NoteError, Verifier, open as open_note};
use custos_record::{Receipt, Record, RecordError, decode};

/// Why a receipt or consistency proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The receipt JSON is malformed.
    #[error("receipt: {0}")]
    Receipt(RecordError),
    /// The record text is not a canonical record.
    #[error("record: {0}")]
    Record(RecordError),
    /// A checkpoint note does not verify with the given keys.
    #[error("checkpoint signature: {0}")]
    Note(#[from] NoteError),
    /// A checkpoint body is malformed.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The record's `seq` differs from the receipt's.
    #[error("record has seq {record}, receipt says {receipt}")]
    SeqMismatch {
        /// The record's `seq`.
        record: u64,
        /// The receipt's `seq`.
        receipt: u64,
    },
    /// The two checkpoints are of different logs.
    #[error("checkpoints have different origins {old:?} and {new:?}")]
    OriginMismatch {
        /// The old checkpoint's origin.
        old: String,
        /// The new checkpoint's origin.
        new: String,
    },
    /// The Merkle proof does not lead to the signed root.
    #[error("proof: {0}")]
    Merkle(#[from] VerifyError),
}

/// A receipt that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// The record.
    pub record: Record,
    /// The checkpoint that includes it.
    pub checkpoint: Checkpoint,
}

/// Checks a receipt: the checkpoint signature (by one of `keys`), the
/// record's canonical form and `seq`, and its inclusion proof.
///
/// # Errors
///
/// The first check that failed.
pub fn verify_receipt(
    receipt_json: &str,
    keys: &[Verifier],
) -> Result<VerifiedReceipt, ProofError> {
    let receipt = Receipt::from_json(receipt_json).map_err(ProofError::Receipt)?;
    let note = open_note(receipt.checkpoint.as_bytes(), keys)?;
    let checkpoint = Checkpoint::parse(note.body())?;
    let record = decode(receipt.record.as_bytes()).map_err(ProofError::Record)?;
    if record.seq != receipt.seq {
        return Err(ProofError::SeqMismatch {
            record: record.seq,
            receipt: receipt.seq,
        });
    }
    let proof = receipt.proof_hashes().map_err(ProofError::Receipt)?;
    verify_inclusion(
        &leaf_hash(receipt.record.as_bytes()),
        receipt.seq,
        checkpoint.size(),
        &proof,
        checkpoint.root(),
    )?;
    Ok(VerifiedReceipt { record, checkpoint })
}

/// Checks that the log of `new_note` extends the log of `old_note`: both
/// signed by one of `keys`, same origin, and `proof` an RFC 6962
/// consistency proof between their roots.
///
/// # Errors
///
/// The first check that failed.
pub fn verify_consistency(
    old_note: &str,
    new_note: &str,
    proof: &[Hash],
    keys: &[Verifier],
) -> Result<(), ProofError> {
    let old = Checkpoint::parse(open_note(old_note.as_bytes(), keys)?.body())?;
    let new = Checkpoint::parse(open_note(new_note.as_bytes(), keys)?.body())?;
    if old.origin() != new.origin() {
        return Err(ProofError::OriginMismatch {
            old: old.origin().to_owned(),
            new: new.origin().to_owned(),
        });
    }
    if old.size() == 0 {
        // Every log extends the empty one; there is nothing to prove.
        return Ok(());
    }
    custos_merkle::verify_consistency(old.size(), new.size(), old.root(), new.root(), proof)?;
    Ok(())
}
