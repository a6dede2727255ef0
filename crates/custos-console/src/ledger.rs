//! The audit browser's read-only view of the ledger directory: search,
//! one record, the latest signed checkpoint, and verify-now through the
//! independent verifier. Nothing here writes.
//!
//! Search reads the segments newest-last in one streaming pass and keeps
//! the newest matches, so memory is bounded by the page size; its cost is
//! linear in the ledger's size (an index is future work).

use std::collections::VecDeque;
use std::path::Path;

use custos_ledger::LedgerReader;
use serde_json::{Value, json};

/// One search hit: the record's canonical JSON, parsed for display.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) seq: u64,
    pub(crate) value: Value,
    /// The canonical text.
    pub(crate) text: String,
}

/// The newest `limit` records whose canonical text contains `q`
/// (ASCII case-insensitive) and whose type is `kind` (if given), newest
/// first, and how many records were scanned.
pub(crate) fn search(
    dir: &Path,
    q: &str,
    kind: Option<&str>,
    limit: usize,
) -> Result<(Vec<Hit>, u64), String> {
    let reader = LedgerReader::open(dir);
    if !dir.join("segments").exists() {
        return Ok((Vec::new(), 0));
    }
    let needle = q.trim().to_ascii_lowercase().into_bytes();
    let type_needle = kind.map(|k| format!("\"type\":\"{k}\"").into_bytes());
    let mut hits: VecDeque<Hit> = VecDeque::with_capacity(limit + 1);
    let mut scanned = 0u64;
    for item in reader.records().map_err(|e| e.to_string())? {
        let rec = item.map_err(|e| e.to_string())?;
        scanned += 1;
        if let Some(t) = &type_needle
            && !contains(&rec.bytes, t)
        {
            continue;
        }
        if !needle.is_empty() && !contains(&rec.bytes.to_ascii_lowercase(), &needle) {
            continue;
        }
        let value = serde_json::from_slice(&rec.bytes).unwrap_or(Value::Null);
        hits.push_back(Hit {
            seq: rec.seq,
            value,
            text: String::from_utf8_lossy(&rec.bytes).into_owned(),
        });
        if hits.len() > limit {
            hits.pop_front();
        }
    }
    Ok((hits.into_iter().rev().collect(), scanned))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// One record by seq, as its canonical text.
pub(crate) fn record(dir: &Path, seq: u64) -> Result<Option<(String, Value)>, String> {
    let reader = LedgerReader::open(dir);
    match reader.record(seq) {
        Ok(rec) => {
            let text = String::from_utf8_lossy(&rec.bytes).into_owned();
            let value = serde_json::from_slice(&rec.bytes).unwrap_or(Value::Null);
            Ok(Some((text, value)))
        }
        Err(custos_ledger::LedgerError::OutOfRange { .. }) => Ok(None),
        Err(e) if !dir.join("segments").exists() => {
            let _ = e;
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The latest signed checkpoint: size, origin, root hash and the note.
pub(crate) fn checkpoint(dir: &Path) -> Result<Option<Value>, String> {
    let reader = LedgerReader::open(dir);
    let Some((size, note)) = reader.latest_checkpoint().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let mut lines = note.lines();
    let origin = lines.next().unwrap_or("").to_owned();
    let _size_line = lines.next();
    let root = lines.next().unwrap_or("").to_owned();
    let signers: Vec<String> = note
        .lines()
        .filter_map(|l| l.strip_prefix("\u{2014} "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    Ok(Some(json!({
        "tree_size": size,
        "origin": origin,
        "root_hash": root,
        "signed_by": signers,
        "note": note,
    })))
}

/// Runs the offline verifier over the directory (blocking).
pub(crate) fn verify(dir: &Path) -> Value {
    let report = custos_verify::verify_dir(dir, &[], None, &mut |_, _| {});
    json!({
        "intact": report.is_intact(),
        "records_checked": report.records_checked,
        "tree_size": report.tree_size,
        "checkpoints_checked": report.checkpoints_checked,
        "newest_checkpoint": report.newest_checkpoint,
        "key_source": match report.key_source {
            custos_verify::KeySource::Given => "given",
            custos_verify::KeySource::LedgerDirectory => "ledger_directory (trust on first use: verify offline with the published key for a real audit)",
        },
        "warnings": report.warnings,
        "problem": report.problem.as_ref().map(ToString::to_string),
    })
}

/// A short "who" for a record: the admin actor, or the key of a request.
pub(crate) fn who(v: &Value) -> String {
    if let Some(a) = v.get("actor").filter(|a| a.is_object()) {
        let user = a.get("user").and_then(Value::as_str).unwrap_or("?");
        let via = a.get("via").and_then(Value::as_str).unwrap_or("?");
        let mfa = if a.get("mfa").and_then(Value::as_bool) == Some(true) {
            ", mfa"
        } else {
            ""
        };
        return format!("{user} ({via}{mfa})");
    }
    if let Some(k) = v
        .get("key")
        .and_then(|k| k.get("id"))
        .and_then(Value::as_str)
    {
        return k.to_owned();
    }
    "—".to_owned()
}

/// A short "what" for a record: its target or model.
pub(crate) fn what(v: &Value) -> String {
    if let Some(t) = v.get("target").filter(|t| t.is_object()) {
        let kind = t.get("kind").and_then(Value::as_str).unwrap_or("");
        let id = t.get("id").and_then(Value::as_str).unwrap_or("");
        return format!("{kind} {id}");
    }
    if let Some(m) = v.get("model_requested").and_then(Value::as_str) {
        let status = v.get("status").and_then(Value::as_i64).unwrap_or(0);
        return format!("{m} → {status}");
    }
    String::new()
}
