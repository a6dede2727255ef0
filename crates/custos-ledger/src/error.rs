//! The ledger's error type. Each variant says what the caller should do:
//! answer 503 and retry later, fix the record, or stop and call an operator.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use custos_record::RecordError;

/// Why the ledger refused or failed an operation.
///
/// The gateway maps [`Backpressure`](Self::Backpressure),
/// [`Unavailable`](Self::Unavailable) and [`ShutDown`](Self::ShutDown) to
/// 503 with `Retry-After` ([`retry_after`](Self::retry_after)): it never
/// serves a request it cannot audit.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Another process (or another `Ledger` in this one) holds the ledger
    /// lock: there is exactly one writer per ledger directory.
    #[error("ledger {path} is locked by another writer")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A file operation failed. After a failed write or fsync the writer
    /// stops for good (retrying an fsync can silently lose data) and every
    /// later append gets [`Unavailable`](Self::Unavailable).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, such as `fsync`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The stored ledger is inconsistent: records that do not reproduce a
    /// signed checkpoint, a bad signature, a missing snapshot, an
    /// undecodable record before the tail. The ledger refuses to open;
    /// run the verifier and call an operator.
    #[error("ledger is corrupt: {file}{}: {reason}", seq.map(|s| format!(" at seq {s}")).unwrap_or_default())]
    Corrupt {
        /// The file where the problem was found.
        file: PathBuf,
        /// The record sequence number, when one is involved.
        seq: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// The signing key file can be read by group or others.
    #[error(
        "signing key {path} has mode {mode:o}; it must not be group or world accessible (chmod 600)"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file could not be parsed, or does not match `verifiers.txt`.
    #[error("key file {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong, never key material.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid ledger option `{field}`: {reason}")]
    InvalidOptions {
        /// The option name.
        field: &'static str,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The record breaks a schema rule; it was not written. A bug in the
    /// caller, not a reason to retry.
    #[error("invalid record: {0}")]
    InvalidRecord(#[from] RecordError),
    /// The append queue is full: the disk is slower than the traffic.
    /// Answer 503 with `Retry-After` and try again later.
    #[error("ledger queue is full ({capacity} pending)")]
    Backpressure {
        /// The queue capacity.
        capacity: usize,
    },
    /// The writer has failed and accepts nothing more; `reason` is its
    /// first error. Answer 503; an operator must restart the process.
    #[error("ledger is unavailable: {reason}")]
    Unavailable {
        /// The error that stopped the writer.
        reason: String,
    },
    /// [`Ledger::shutdown`](crate::Ledger::shutdown) was called.
    #[error("ledger is shut down")]
    ShutDown,
    /// A read or proof request names records that are not there: beyond
    /// the tree, or purged by retention.
    #[error("{what} is out of range: {reason}")]
    OutOfRange {
        /// What was asked for, such as `seq 12` or `tree size 40`.
        what: String,
        /// Why it cannot be served.
        reason: &'static str,
    },
}

impl LedgerError {
    /// How long a client should wait before retrying, for errors that are
    /// worth retrying; `None` for the others.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LedgerError::Backpressure { .. } => Some(Duration::from_secs(1)),
            LedgerError::Unavailable { .. } | LedgerError::ShutDown => {
                Some(Duration::from_secs(30))
            }
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LedgerError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        seq: Option<u64>,
        reason: impl Into<String>,
    ) -> Self {
        LedgerError::Corrupt {
            file: file.into(),
            seq,
            reason: reason.into(),
        }
    }
}
