//! Receipts: a record, its inclusion proof and the signed checkpoint the
//! proof leads to, in one JSON object that anyone can check offline with
//! the log's public key.
//!
//! The type lives here, next to the record schema, because both the
//! writer (which builds receipts) and the verifier (which checks them)
//! need it, and neither may depend on the other.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::error::RecordError;

/// The receipt format version, the `v` field.
const RECEIPT_VERSION: u64 = 1;

/// A portable proof that one record is in the log.
///
/// JSON shape, keys in this order:
///
/// ```json
/// {"checkpoint":"<signed note>","proof":["<base64 hash>",...],"record":"<canonical record>","seq":5,"v":1}
/// ```
///
/// `record` is the record's canonical encoding as a JSON string, `seq` its
/// leaf index, `proof` the RFC 6962 inclusion proof (sibling hashes from
/// the leaf upwards, each standard base64 of 32 bytes) against the tree
/// size and root in `checkpoint`, a complete signed note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The signed checkpoint note text.
    pub checkpoint: String,
    /// The inclusion proof hashes, base64.
    pub proof: Vec<String>,
    /// The canonical record text.
    pub record: String,
    /// The record's leaf index.
    pub seq: u64,
    /// The receipt format version, 1.
    pub v: u64,
}

impl Receipt {
    /// A version 1 receipt from its parts.
    #[must_use]
    pub fn new(record: String, seq: u64, proof: &[[u8; 32]], checkpoint: String) -> Self {
        Receipt {
            checkpoint,
            proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
            record,
            seq,
            v: RECEIPT_VERSION,
        }
    }

    /// The JSON text of the receipt.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serialising strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a receipt.
    ///
    /// # Errors
    ///
    /// [`RecordError::Receipt`] if the text is not a version 1 receipt.
    pub fn from_json(text: &str) -> Result<Self, RecordError> {
        let receipt: Receipt = serde_json::from_str(text).map_err(|e| RecordError::Receipt {
            reason: e.to_string(),
        })?;
        if receipt.v != RECEIPT_VERSION {
            return Err(RecordError::Receipt {
                reason: format!("unsupported receipt version {}", receipt.v),
            });
        }
        Ok(receipt)
    }

    /// The proof hashes, decoded.
    ///
    /// # Errors
    ///
    /// [`RecordError::Receipt`] if a hash is not base64 of 32 bytes.
    pub fn proof_hashes(&self) -> Result<Vec<[u8; 32]>, RecordError> {
        self.proof
            .iter()
            .enumerate()
            .map(|(i, h)| {
                STANDARD
                    .decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| RecordError::Receipt {
                        reason: format!("proof[{i}] is not base64 of 32 bytes"),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = Receipt::new("{}".into(), 3, &[[1; 32]], "note\n".into());
        let back = Receipt::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.proof_hashes().unwrap(), vec![[1; 32]]);
        assert!(Receipt::from_json(&r.to_json().replace("\"v\":1", "\"v\":2")).is_err());
    }
}
