//! The evidence crate's error type.

use std::path::PathBuf;

/// Why a pack could not be gathered, written or checked. (A pack that was
/// checked and found tampered is not an error: see
/// [`VerifyReport`](crate::VerifyReport).)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The period is malformed or empty.
    #[error("{0}")]
    Period(String),
    /// The output directory exists and is not empty.
    #[error("output directory {} exists and is not empty; choose a new one", .0.display())]
    OutputNotEmpty(PathBuf),
    /// A file could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] custos_store::StoreError),
    /// The ledger could not be read.
    #[error("audit ledger: {0}")]
    Ledger(#[from] custos_ledger::LedgerError),
    /// The ledger signing key is missing, unreadable or malformed.
    #[error("ledger signing key {}: {reason}", path.display())]
    SigningKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The pack could not be encoded (a bug).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl EvidenceError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        EvidenceError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
