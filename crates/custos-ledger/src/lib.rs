//! The Custos audit ledger: the single writer of an append-only,
//! tamper-evident log of audit records.
//!
//! - [`Ledger::open`] takes the directory lock, loads or creates the
//!   signing key, recovers after a crash and starts the writer thread.
//! - [`Ledger::append`] takes a [`RecordBody`](custos_record::RecordBody)
//!   on the caller's thread, under the writer's lock, and returns an
//!   [`AppendTicket`] that resolves once the record is durable. In sync
//!   mode the fdatasyncs are group commits: one at a time, each covering
//!   every record written before it began, led by the appender when none
//!   is in flight and by the writer thread for the records that waited.
//! - Checkpoints (C2SP signed notes over the RFC 6962 root) are signed
//!   every N records or T seconds, when a segment is sealed and at
//!   shutdown, always over the writer's own frontier, which only grows.
//! - [`Ledger::rotate_signing_key`], [`Ledger::purge_before`] and the
//!   [`CheckpointSink`]s cover key rotation, retention and external copies.
//! - [`LedgerReader`] is the read-only view for the CLI: records, lookups,
//!   proofs and receipts.
//!
//! The byte-level format is specified in `docs/audit-log-format.md`; the
//! offline verifier (`custos-verify`) is written against that document and
//! shares no code with this crate beyond `custos-merkle`, `custos-note`
//! and `custos-record`.
//!
//! **Invariants.** Only the holder of the writer's lock writes segment
//! files, and it never rewrites a byte it has written except to cut a torn, never
//! acknowledged last line at open. [`Ledger::purge_before`] is the only
//! code that deletes records, and it records itself first. The signer
//! only signs the writer's own frontier, so two signed checkpoints are
//! always consistent.
//!
//! ```no_run
//! use std::sync::Arc;
//! use custos_ledger::{Ledger, LedgerOptions};
//! use custos_record::{RecordBody, System};
//!
//! # async fn demo() -> Result<(), custos_ledger::LedgerError> {
//! let options = LedgerOptions::new("custos.local/example");
//! let clock = Arc::new(custos_types::SystemClock);
//! let (ledger, report) = Ledger::open("/var/lib/custos/ledger".as_ref(), options, clock)?;
//! if let Some(recovered) = report.to_record() {
//!     ledger.append(RecordBody::System(recovered))?.await?;
//! }
//! let done = ledger.append(RecordBody::System(System::new("server.started")))?.await?;
//! println!("server.started is leaf {}", done.seq);
//! ledger.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod error;
mod keys;
mod layout;
mod ledger;
mod options;
mod reader;
mod recovery;
mod signing;
mod sink;
mod stats;
mod thin;
mod writer;

pub use error::LedgerError;
pub use layout::KeyEntry;
pub use ledger::{AppendTicket, Ledger};
pub use options::{Durability, FsyncObserver, LedgerOptions, SecureRng};
pub use reader::{LedgerReader, Records, StoredRecord};
pub use recovery::RecoveryReport;
pub use sink::{CheckpointSink, DirSink};
pub use stats::{LedgerStats, LedgerStatus, StatsSnapshot};
pub use thin::{CheckpointThinning, ThinReport, thin_checkpoints};
pub use writer::{Appended, KeyRotation, PurgeReport};
