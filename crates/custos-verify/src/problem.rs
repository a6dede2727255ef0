//! What can be wrong with a ledger, precisely enough to act on: which file,
//! which record, and what failed.

use std::fmt;
use std::path::PathBuf;

/// The first problem [`verify_dir`](crate::verify_dir) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file where it was found, relative to the ledger directory.
    pub file: Option<PathBuf>,
    /// The record sequence number involved, if any.
    pub seq: Option<u64>,
    /// What failed.
    pub kind: ProblemKind,
}

/// What failed. Any of these means the log must not be trusted as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A file or directory could not be read.
    Unreadable {
        /// The operating system's error.
        reason: String,
    },
    /// `keys/verifiers.txt` is missing or malformed and no key was given.
    KeyHistory {
        /// What is wrong.
        reason: String,
    },
    /// A line is not a canonical version 1 record.
    Record {
        /// The decoder's reason.
        reason: String,
    },
    /// A record's `seq` is not its position: a record was deleted,
    /// inserted or moved.
    SeqMismatch {
        /// The position.
        expected: u64,
        /// The `seq` field found there.
        found: u64,
    },
    /// A record's timestamp is more than the tolerance before the previous one.
    TimestampRegression {
        /// The previous record's timestamp.
        previous: String,
        /// This record's timestamp.
        ts: String,
    },
    /// A segment that is not the last does not end with a newline.
    PartialLine,
    /// A segment starts at the wrong sequence number: its name says
    /// `named`, but the records before it end at `expected`.
    SegmentMisnamed {
        /// Where the previous segment ended.
        expected: u64,
        /// The first seq in the segment's name.
        named: u64,
    },
    /// Records are missing between segments, or before the first segment
    /// without a signed `retention.purged` record allowing it.
    DeletedRecords {
        /// The first missing seq.
        from: u64,
        /// The first seq present again.
        to: u64,
    },
    /// A sealed segment has no checkpoint at its end.
    MissingSealCheckpoint {
        /// The tree size at the end of the segment.
        size: u64,
    },
    /// The frontier snapshot the remaining log starts from is missing.
    MissingFrontier {
        /// Its tree size.
        size: u64,
    },
    /// A frontier snapshot is malformed or does not match the tree.
    FrontierMismatch {
        /// Its tree size.
        size: u64,
    },
    /// A checkpoint note is malformed or its signature does not verify.
    Signature {
        /// The tree size in the file name.
        size: u64,
        /// Why.
        reason: String,
    },
    /// A checkpoint is signed by a key the auditor does not trust (or
    /// that the key history assigns to another size range).
    UntrustedKey {
        /// The tree size.
        size: u64,
        /// The key the history says signs this size.
        key: String,
    },
    /// A checkpoint's origin, or size, is not what its file says.
    CheckpointMismatch {
        /// The tree size in the file name.
        size: u64,
        /// What differs.
        reason: String,
    },
    /// A signed checkpoint's root differs from the root recomputed from
    /// the records: a record in `[since, size)` was modified, inserted,
    /// removed or reordered.
    RootMismatch {
        /// The checkpoint size.
        size: u64,
        /// The previous checkpoint size whose root matched (or the purge
        /// point).
        since: u64,
    },
    /// A signed checkpoint covers more records than are stored: the tail
    /// was truncated.
    TruncatedTail {
        /// The checkpoint size.
        size: u64,
        /// Records stored.
        log_size: u64,
    },
    /// The auditor's trusted checkpoint covers more records than are
    /// stored: the log was truncated or rolled back (with its checkpoints).
    RolledBack {
        /// The trusted checkpoint's size.
        trusted_size: u64,
        /// Records stored.
        log_size: u64,
    },
    /// The auditor's trusted checkpoint has a different root at its size:
    /// the log was rewritten (a fork).
    TrustedRootMismatch {
        /// The trusted checkpoint's size.
        trusted_size: u64,
    },
    /// The trusted checkpoint text itself does not verify.
    TrustedCheckpointInvalid {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::Unreadable { reason } => write!(f, "cannot read: {reason}"),
            ProblemKind::KeyHistory { reason } => write!(f, "key history: {reason}"),
            ProblemKind::Record { reason } => write!(f, "bad record: {reason}"),
            ProblemKind::SeqMismatch { expected, found } => write!(
                f,
                "record at position {expected} has seq {found}: records were deleted, inserted or reordered"
            ),
            ProblemKind::TimestampRegression { previous, ts } => {
                write!(f, "timestamp {ts} goes back from {previous}")
            }
            ProblemKind::PartialLine => write!(f, "sealed segment ends in a partial line"),
            ProblemKind::SegmentMisnamed { expected, named } => write!(
                f,
                "segment is named for seq {named} but the log continues at {expected}"
            ),
            ProblemKind::DeletedRecords { from, to } => write!(
                f,
                "records {from}..{to} are missing and no signed retention record allows it"
            ),
            ProblemKind::MissingSealCheckpoint { size } => {
                write!(
                    f,
                    "sealed segment has no checkpoint at its end (size {size})"
                )
            }
            ProblemKind::MissingFrontier { size } => {
                write!(f, "frontier snapshot at size {size} is missing")
            }
            ProblemKind::FrontierMismatch { size } => {
                write!(
                    f,
                    "frontier snapshot at size {size} does not match the tree"
                )
            }
            ProblemKind::Signature { size, reason } => {
                write!(f, "checkpoint {size} does not verify: {reason}")
            }
            ProblemKind::UntrustedKey { size, key } => {
                write!(f, "checkpoint {size} is signed by untrusted key {key}")
            }
            ProblemKind::CheckpointMismatch { size, reason } => {
                write!(f, "checkpoint {size}: {reason}")
            }
            ProblemKind::RootMismatch { size, since } => write!(
                f,
                "checkpoint {size} root does not match the records: a record in {since}..{size} was modified, inserted, removed or reordered"
            ),
            ProblemKind::TruncatedTail { size, log_size } => write!(
                f,
                "checkpoint {size} covers more records than the {log_size} stored: the tail was truncated"
            ),
            ProblemKind::RolledBack {
                trusted_size,
                log_size,
            } => write!(
                f,
                "trusted checkpoint {trusted_size} covers more records than the {log_size} stored: the log was truncated or rolled back"
            ),
            ProblemKind::TrustedRootMismatch { trusted_size } => write!(
                f,
                "trusted checkpoint {trusted_size} has a different root: the log was rewritten"
            ),
            ProblemKind::TrustedCheckpointInvalid { reason } => {
                write!(f, "trusted checkpoint does not verify: {reason}")
            }
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}: ")?;
        }
        write!(f, "{}", self.kind)
    }
}
