//! The Custos audit record, schema version 1, and its canonical JSON
//! encoding: the exact bytes that become one Merkle leaf.
//!
//! The crate is pure: no IO, no async, no logging. Both the writer
//! (`custos-ledger`) and the offline verifier (`custos-verify`) depend on
//! it, and on nothing of each other.
//!
//! - [`Record`] is one audit record: a sequence number, a timestamp and a
//!   typed [`RecordBody`] ([`Inference`], [`Admin`] or [`System`]).
//! - [`encode`] writes the canonical encoding; [`decode`] reads it back and
//!   rejects every input that is not exactly what [`encode`] would write;
//!   [`decode_view`] does the same checks without copying the record out.
//! - [`Receipt`] is the portable proof that one record is in a signed
//!   checkpoint.
//!
//! # Canonical encoding
//!
//! A record is one JSON object (RFC 8259) with:
//!
//! 1. keys sorted by their UTF-8 bytes, in every object at every depth;
//! 2. no whitespace outside strings;
//! 3. integers only, written in shortest decimal form (no sign for
//!    non-negative values, no leading zeros, no fraction or exponent);
//!    durations are integer microseconds;
//! 4. strings escaped as `serde_json` does: `"` and `\` as `\"` and `\\`;
//!    U+0008, U+0009, U+000A, U+000C, U+000D as `\b`, `\t`, `\n`, `\f`,
//!    `\r`; other characters below U+0020 as `\u00XX` with lowercase hex;
//!    everything else, including `/`, U+007F and non-ASCII, as raw UTF-8;
//! 5. optional fields that are absent are omitted, never `null`; empty
//!    optional arrays and maps (`attempts`, `changes`, `details`) are
//!    omitted too;
//! 6. no duplicate keys, no unknown keys, and `v` equal to
//!    [`SCHEMA_VERSION`].
//!
//! The leaf input is exactly these bytes, with no trailing newline.
//! `docs/audit-log-format.md` describes every field.
//!
//! ```
//! use custos_record::{Record, RecordBody, System, Timestamp, decode, encode};
//!
//! let record = Record {
//!     seq: 0,
//!     ts: Timestamp::from_unix_micros(1_700_000_000_123_456).unwrap(),
//!     body: RecordBody::System(System::new("server.started")),
//! };
//! let bytes = encode(&record);
//! assert_eq!(
//!     std::str::from_utf8(&bytes)?,
//!     r#"{"event":"server.started","seq":0,"ts":"2023-11-14T22:13:20.123456Z","type":"system","v":1}"#
//! );
//! assert_eq!(decode(&bytes)?, record);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod canonical;
mod codec;
mod error;
mod reader;
mod receipt;
#[cfg(feature = "sample")]
pub mod sample;
mod schema;
mod time;
mod validate;

pub use codec::{PreEncoded, RecordView, decode, decode_view, encode, encode_into};
pub use error::RecordError;
pub use receipt::Receipt;
pub use schema::{
    Admin, AdminActor, Attempt, Change, Client, Inference, KeyActor, Record, RecordBody,
    RecordType, Scalar, System, Target, Usage, UsageSource, Via,
};
pub use time::Timestamp;
pub use validate::{
    MAX_ATTEMPTS, MAX_MAP_ENTRIES, MAX_REASON_BYTES, MAX_RECORD_BYTES, MAX_TEXT_BYTES,
    is_valid_name, truncate_text,
};

/// The schema version written in every record's `v` field. Changing the
/// encoding or the meaning of a field means a new version, an updated
/// format document and new golden vectors.
pub const SCHEMA_VERSION: u64 = 1;
