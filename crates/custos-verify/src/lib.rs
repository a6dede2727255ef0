//! The offline verifier of a Custos audit ledger.
//!
//! It needs only the ledger directory (or a copy of it) and the log's
//! public key, and recomputes everything: each record's canonical
//! encoding and leaf hash, sequence continuity, the Merkle tree, every
//! checkpoint signature and root, the frontier snapshots, and the tail
//! against the newest checkpoint or a checkpoint the auditor kept.
//!
//! **Architecture invariant:** this crate depends on `custos-merkle`,
//! `custos-note` and `custos-record` only, never on `custos-ledger`: an
//! auditor must not have to trust the code that wrote the log. It reads
//! the files as `docs/audit-log-format.md` describes them.
//!
//! - [`verify_dir`] checks a whole ledger directory and returns a
//!   [`Report`] naming the first [`Problem`].
//! - [`verify_receipt`] checks one record's [`Receipt`](custos_record::Receipt).
//! - [`verify_consistency`] checks that one signed checkpoint extends another.

mod dir;
mod problem;
mod proofs;

pub use dir::{KeySource, Report, TIMESTAMP_TOLERANCE, verify_dir};
pub use problem::{Problem, ProblemKind};
pub use proofs::{ProofError, VerifiedReceipt, verify_consistency, verify_receipt};
