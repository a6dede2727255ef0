//! The SOC 2 evidence pack of `custos evidence`: everything an auditor
//! asks for about one period, tied to the tamper-evident audit ledger.
//!
//! - [`gather`] reads the period's records from the ledger (events, key
//!   lifecycle, sign-ins, configuration loads, per-day counts, capacity),
//!   verifies the ledger with `custos-verify`, and takes the current
//!   inventories (keys, console users, incidents) from the store.
//! - [`write_pack`] writes each [`Table`] as JSON and CSV, the incident
//!   write-ups, the bracketing signed checkpoints, policy documents
//!   generated from the configuration and a self-contained HTML report
//!   with inline SVG charts, then `manifest.json` (every file's SHA-256)
//!   and `manifest.sig`, a C2SP signed note by the ledger's key.
//! - [`verify_pack`] checks a pack against its manifest and a trusted key;
//!   [`find_in_ledger`] finds the `evidence.generated` record that ties
//!   the manifest to the log.
//!
//! **Architecture invariants.** The pack never contains a secret: keys
//! appear by ID, users by name, and neither key hashes, password hashes
//! nor TOTP seeds are read. Everything that *happened* comes from the
//! ledger; the store only supplies current state. The crate does not
//! write to the ledger: the binary records `evidence.generated` through
//! the store's outbox. Readiness checks are not here (`custos-readiness`).

mod controls;
mod error;
mod gather;
mod html;
mod pack;
mod period;
mod policy;
mod table;
mod verify;

pub use controls::control_matrix;
pub use error::EvidenceError;
pub use gather::{
    Evidence, INACTIVITY_FLAG, Integrity, Progress, Request, Sources, fingerprint, gather, hex,
};
pub use html::render as render_html;
pub use pack::{
    FORMAT, MANIFEST, SIGNATURE, Written, check_output, load_signer, signed_body, write_pack,
    zip_pack,
};
pub use period::{Period, format_time};
pub use policy::Policy;
pub use table::Table;
pub use verify::{
    LedgerLink, PackFiles, VerifyReport, ZIP_MAX_BYTES, ZIP_MAX_ENTRIES, find_in_ledger, read_dir,
    read_zip, verify_pack,
};
