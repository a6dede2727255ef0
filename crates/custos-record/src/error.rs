//! Why a record was rejected, by the writer before encoding or by a reader
//! decoding stored bytes.

/// Why a record could not be decoded or failed validation. Messages name
/// the offending field but never echo its value, which could be large or
/// hostile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The input is longer than [`MAX_RECORD_BYTES`](crate::MAX_RECORD_BYTES).
    #[error("record is {len} bytes, more than the maximum {max}")]
    TooLarge {
        /// The input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is not a JSON object of the version 1 shape: a syntax
    /// error, a value of the wrong JSON type, a float, a missing required
    /// field, an unknown field or a duplicate key.
    #[error("record is not valid: {reason}")]
    Malformed {
        /// The parser's description, which names the field and column.
        reason: String,
    },
    /// The `v` field names a schema version this code does not read.
    #[error("unsupported schema version {v}, want 1")]
    UnsupportedVersion {
        /// The version found.
        v: u64,
    },
    /// A field required for this record type is absent.
    #[error("field `{field}` is required in {record_type} records")]
    MissingField {
        /// The field path, such as `actor.user`.
        field: &'static str,
        /// The record type.
        record_type: &'static str,
    },
    /// A field that belongs to another record type is present.
    #[error("field `{field}` is not allowed in {record_type} records")]
    UnexpectedField {
        /// The field path, such as `actor.mfa`.
        field: &'static str,
        /// The record type.
        record_type: &'static str,
    },
    /// A field value breaks a rule of the schema: a bad name, an over-long
    /// string, a control character, a path with a query string, too many
    /// entries.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field path, such as `details.reason` or `attempts[2].model`.
        field: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The `ts` field is not a UTC RFC 3339 time with exactly six
    /// fractional digits and a `Z`, or is out of range.
    #[error("field `ts` is not a canonical utc timestamp with microseconds")]
    InvalidTimestamp,
    /// The input decodes, but re-encoding it gives different bytes: keys
    /// out of order, whitespace, an explicit `null`, an unneeded escape, an
    /// empty optional array. Only the canonical form is accepted, so that
    /// one record has exactly one leaf hash.
    #[error("record is not in canonical form (first difference at byte {offset})")]
    NonCanonical {
        /// Offset of the first byte that differs from the canonical form.
        offset: usize,
    },
    /// A receipt is not valid JSON of the receipt shape, or a proof hash
    /// is not base64 of 32 bytes.
    #[error("receipt is not valid: {reason}")]
    Receipt {
        /// What is wrong.
        reason: String,
    },
}
