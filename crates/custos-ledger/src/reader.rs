//! Read-only access for the CLI and the admin console: iterate records,
//! find a request, fetch checkpoints, and build inclusion and consistency
//! proofs and receipts. Safe while the writer runs: a partly written last
//! line is ignored, and nothing here takes the lock or writes.
//!
//! Proofs are built by re-hashing the segments; fine for the CLI today,
//! and the obvious place for a leaf-hash index later.

use std::fs;
use std::path::{Path, PathBuf};

use custos_merkle::{Hash, consistency_proof, inclusion_proof, leaf_hash};
use custos_record::{Receipt, Record, decode};

use crate::error::LedgerError;
use crate::layout::{KeyEntry, Layout, parse_verifiers, read_to_string};

/// One stored record with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The segment file.
    pub file: PathBuf,
    /// Its leaf index.
    pub seq: u64,
    /// The canonical bytes, the leaf input.
    pub bytes: Vec<u8>,
    /// The decoded record.
    pub record: Record,
}

/// A read-only view of a ledger directory.
#[derive(Debug, Clone)]
pub struct LedgerReader {
    layout: Layout,
}

impl LedgerReader {
    /// A reader for the ledger in `dir`. Nothing is read yet.
    #[must_use]
    pub fn open(dir: &Path) -> Self {
        LedgerReader {
            layout: Layout::new(dir),
        }
    }

    /// The first sequence number of each stored segment, ascending.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Io`] if the directory cannot be listed.
    pub fn segments(&self) -> Result<Vec<u64>, LedgerError> {
        self.layout.list_segments()
    }

    /// The sizes of the stored checkpoints, ascending.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Io`] if the directory cannot be listed.
    pub fn checkpoint_sizes(&self) -> Result<Vec<u64>, LedgerError> {
        self.layout.list_checkpoints()
    }

    /// The signed checkpoint note of exactly `size`, if stored.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Io`] if it exists but cannot be read.
    pub fn checkpoint(&self, size: u64) -> Result<Option<String>, LedgerError> {
        let path = self.layout.note(size);
        if !path.exists() {
            return Ok(None);
        }
        read_to_string(&path).map(Some)
    }

    /// The newest checkpoint: its size and signed note text.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Io`] if it cannot be read.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, LedgerError> {
        match self.checkpoint_sizes()?.last() {
            None => Ok(None),
            Some(&size) => Ok(self.checkpoint(size)?.map(|text| (size, text))),
        }
    }

    /// The verifier key history from `keys/verifiers.txt`.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Key`] if the file is malformed.
    pub fn verifier_history(&self) -> Result<Vec<KeyEntry>, LedgerError> {
        let path = self.layout.verifiers();
        parse_verifiers(&read_to_string(&path)?).map_err(|reason| LedgerError::Key { path, reason })
    }

    /// Every stored record in order, segment by segment.
    ///
    /// # Errors
    ///
    /// Each item fails with [`LedgerError::Io`] or [`LedgerError::Corrupt`]
    /// (naming file and seq) on a record that cannot be read; iteration
    /// stops after an error.
    pub fn records(&self) -> Result<Records, LedgerError> {
        Ok(Records {
            layout: self.layout.clone(),
            segments: self.segments()?.into_iter().rev().collect(),
            current: None,
            done: false,
        })
    }

    /// Records with this `request_id` (a caller may reuse one).
    ///
    /// # Errors
    ///
    /// As [`records`](Self::records).
    pub fn find_by_request_id(&self, request_id: &str) -> Result<Vec<StoredRecord>, LedgerError> {
        // Cheap byte search first; only candidate lines are decoded.
        let needle = format!("\"request_id\":{}", serde_json_string(request_id));
        let mut found = Vec::new();
        for item in self.records()? {
            let item = item?;
            if contains(&item.bytes, needle.as_bytes())
                && let custos_record::RecordBody::Inference(r) = &item.record.body
                && r.request_id == request_id
            {
                found.push(item);
            }
        }
        Ok(found)
    }

    /// The record at `seq`.
    ///
    /// # Errors
    ///
    /// [`LedgerError::OutOfRange`] if it is not stored.
    pub fn record(&self, seq: u64) -> Result<StoredRecord, LedgerError> {
        let segments = self.segments()?;
        let Some(&first) = segments.iter().rev().find(|&&s| s <= seq) else {
            return Err(out_of_range(
                format!("seq {seq}"),
                "purged or never written",
            ));
        };
        let path = self.layout.segment(first);
        let data = fs::read(&path).map_err(|e| LedgerError::io("read", &path, e))?;
        let skip = usize::try_from(seq - first).unwrap_or(usize::MAX);
        let line = complete_lines(&data)
            .nth(skip)
            .ok_or_else(|| out_of_range(format!("seq {seq}"), "beyond the end of the log"))?;
        stored(&path, seq, line)
    }

    /// Leaf hashes of records `[0, size)`.
    ///
    /// # Errors
    ///
    /// [`LedgerError::OutOfRange`] if some of them are purged or not yet
    /// written.
    pub fn leaf_hashes(&self, size: u64) -> Result<Vec<Hash>, LedgerError> {
        if self.segments()?.first().is_some_and(|&f| f > 0) && size > 0 {
            return Err(out_of_range(
                format!("tree size {size}"),
                "early records are purged; proofs need every leaf",
            ));
        }
        let mut hashes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 24));
        if size == 0 {
            return Ok(hashes);
        }
        for item in self.records()? {
            let item = item?;
            hashes.push(leaf_hash(&item.bytes));
            if hashes.len() as u64 == size {
                return Ok(hashes);
            }
        }
        Err(out_of_range(
            format!("tree size {size}"),
            "larger than the log",
        ))
    }

    /// The inclusion proof of `seq` in the tree of `tree_size`.
    ///
    /// # Errors
    ///
    /// [`LedgerError::OutOfRange`] if `seq >= tree_size` or records are
    /// missing.
    pub fn inclusion_proof(&self, seq: u64, tree_size: u64) -> Result<Vec<Hash>, LedgerError> {
        let leaves = self.leaf_hashes(tree_size)?;
        inclusion_proof(&leaves, seq)
            .map_err(|_| out_of_range(format!("seq {seq}"), "not below the tree size"))
    }

    /// The consistency proof from tree size `old` to `new`.
    ///
    /// # Errors
    ///
    /// [`LedgerError::OutOfRange`] if `old` is 0 or larger than `new`, or
    /// records are missing.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LedgerError> {
        let leaves = self.leaf_hashes(new)?;
        consistency_proof(&leaves, old).map_err(|_| {
            out_of_range(
                format!("consistency {old} -> {new}"),
                "old size must be between 1 and the new size",
            )
        })
    }

    /// A receipt for `seq` against the stored checkpoint of
    /// `checkpoint_size`, or the newest checkpoint if `None`.
    ///
    /// # Errors
    ///
    /// [`LedgerError::OutOfRange`] if no such checkpoint covers `seq`.
    pub fn receipt(&self, seq: u64, checkpoint_size: Option<u64>) -> Result<Receipt, LedgerError> {
        let (size, note) = match checkpoint_size {
            Some(size) => (
                size,
                self.checkpoint(size)?.ok_or_else(|| {
                    out_of_range(format!("checkpoint {size}"), "no such checkpoint")
                })?,
            ),
            None => self
                .latest_checkpoint()?
                .ok_or_else(|| out_of_range(format!("seq {seq}"), "no checkpoint yet"))?,
        };
        if seq >= size {
            return Err(out_of_range(
                format!("seq {seq}"),
                "not covered by the checkpoint yet",
            ));
        }
        let record = self.record(seq)?;
        let proof = self.inclusion_proof(seq, size)?;
        let text = String::from_utf8(record.bytes)
            .map_err(|_| LedgerError::corrupt(&record.file, Some(seq), "not utf-8"))?;
        Ok(Receipt::new(text, seq, &proof, note))
    }
}

fn out_of_range(what: String, reason: &'static str) -> LedgerError {
    LedgerError::OutOfRange { what, reason }
}

/// A JSON string literal as the canonical encoder writes it.
fn serde_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Complete (newline-terminated) lines, without their newline; a partly
/// written last line is left out.
fn complete_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.iter()
        .rposition(|&b| b == b'\n')
        .map(|last| data[..last].split(|&b| b == b'\n'))
        .into_iter()
        .flatten()
}

fn stored(path: &Path, seq: u64, line: &[u8]) -> Result<StoredRecord, LedgerError> {
    let record = decode(line).map_err(|e| LedgerError::corrupt(path, Some(seq), e.to_string()))?;
    if record.seq != seq {
        return Err(LedgerError::corrupt(
            path,
            Some(seq),
            format!("record has seq {}", record.seq),
        ));
    }
    Ok(StoredRecord {
        file: path.to_path_buf(),
        seq,
        bytes: line.to_vec(),
        record,
    })
}

/// Iterator over stored records; see [`LedgerReader::records`].
#[derive(Debug)]
pub struct Records {
    layout: Layout,
    /// Segments still to read, last first.
    segments: Vec<u64>,
    current: Option<(PathBuf, u64, std::vec::IntoIter<Vec<u8>>)>,
    done: bool,
}

impl Iterator for Records {
    type Item = Result<StoredRecord, LedgerError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some((path, seq, lines)) = &mut self.current
                && let Some(line) = lines.next()
            {
                let item = stored(path, *seq, &line);
                *seq += 1;
                self.done = item.is_err();
                return Some(item);
            }
            let first = self.segments.pop()?;
            let path = self.layout.segment(first);
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) => {
                    self.done = true;
                    return Some(Err(LedgerError::io("read", &path, e)));
                }
            };
            let lines: Vec<Vec<u8>> = complete_lines(&data).map(<[u8]>::to_vec).collect();
            self.current = Some((path, first, lines.into_iter()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_ignores_partial_tail() {
        let lines: Vec<&[u8]> = complete_lines(b"a\nbb\nccc").collect();
        assert_eq!(lines, vec![&b"a"[..], &b"bb"[..]]);
        assert_eq!(complete_lines(b"").count(), 0);
        assert_eq!(complete_lines(b"x").count(), 0);
        assert_eq!(complete_lines(b"a\n\n").count(), 2);
    }
}
