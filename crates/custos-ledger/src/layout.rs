//! Where everything lives under the ledger directory, the small text
//! formats of snapshots and key history, and durable file helpers.
//!
//! ```text
//! <ledger>/LOCK                                  writer lock (flock)
//! <ledger>/segments/<first seq, 20 digits>.jsonl records, one per line
//! <ledger>/checkpoints/<size, 20 digits>.note    signed checkpoint
//! <ledger>/checkpoints/<size, 20 digits>.frontier frontier snapshot
//! <ledger>/keys/signing.key                      signer key, mode 0600
//! <ledger>/keys/verifiers.txt                    "<first size> <vkey>" lines
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use custos_merkle::{Frontier, Hash};
use custos_note::Verifier;

use crate::error::LedgerError;

/// The paths of one ledger directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
}

/// Digits in segment and checkpoint file names: enough for any `u64`.
const NAME_DIGITS: usize = 20;

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }
    pub(crate) fn lock(&self) -> PathBuf {
        self.root.join("LOCK")
    }
    pub(crate) fn segments(&self) -> PathBuf {
        self.root.join("segments")
    }
    pub(crate) fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub(crate) fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub(crate) fn signing_key(&self) -> PathBuf {
        self.keys().join("signing.key")
    }
    pub(crate) fn new_signing_key(&self) -> PathBuf {
        self.keys().join("signing.key.new")
    }
    pub(crate) fn verifiers(&self) -> PathBuf {
        self.keys().join("verifiers.txt")
    }
    pub(crate) fn segment(&self, first_seq: u64) -> PathBuf {
        self.segments()
            .join(format!("{first_seq:0NAME_DIGITS$}.jsonl"))
    }
    pub(crate) fn note(&self, size: u64) -> PathBuf {
        self.checkpoints()
            .join(format!("{size:0NAME_DIGITS$}.note"))
    }
    pub(crate) fn frontier(&self, size: u64) -> PathBuf {
        self.checkpoints()
            .join(format!("{size:0NAME_DIGITS$}.frontier"))
    }

    /// Segment first sequence numbers, ascending.
    pub(crate) fn list_segments(&self) -> Result<Vec<u64>, LedgerError> {
        list_numbered(&self.segments(), ".jsonl")
    }

    /// Sizes of the signed checkpoints, ascending.
    pub(crate) fn list_checkpoints(&self) -> Result<Vec<u64>, LedgerError> {
        list_numbered(&self.checkpoints(), ".note")
    }
}

/// Parses `<20 digits><ext>`; anything else is not ours.
pub(crate) fn parse_numbered(name: &str, ext: &str) -> Option<u64> {
    let digits = name.strip_suffix(ext)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn list_numbered(dir: &Path, ext: &str) -> Result<Vec<u64>, LedgerError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LedgerError::io("read directory", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LedgerError::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = parse_numbered(name, ext) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Lowercase hex of a hash.
pub(crate) fn hex(hash: &Hash) -> String {
    let mut s = String::with_capacity(64);
    for b in hash {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

fn unhex(text: &str) -> Option<Hash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The frontier snapshot text: the decimal tree size on the first line,
/// then one lowercase hex hash per line, largest subtree first, each line
/// ending in `\n`.
pub(crate) fn frontier_text(frontier: &Frontier) -> String {
    let mut s = format!("{}\n", frontier.size());
    for h in frontier.hashes() {
        s.push_str(&hex(h));
        s.push('\n');
    }
    s
}

/// Parses a frontier snapshot written by [`frontier_text`].
pub(crate) fn parse_frontier(text: &str) -> Option<Frontier> {
    let body = text.strip_suffix('\n')?;
    let mut lines = body.split('\n');
    let size_line = lines.next()?;
    if size_line.is_empty() || (size_line.len() > 1 && size_line.starts_with('0')) {
        return None;
    }
    let size: u64 = size_line.parse().ok()?;
    let hashes: Option<Vec<Hash>> = if size == 0 {
        // An empty tree has no hash lines; `body` is just "0".
        lines.next().is_none().then(Vec::new)
    } else {
        lines.map(unhex).collect()
    };
    Frontier::from_parts(size, &hashes?).ok()
}

/// One entry of `keys/verifiers.txt`: this key signs checkpoints of size
/// `first_size` and larger, until the next entry's `first_size` (the
/// checkpoint at exactly that size is signed by both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The smallest checkpoint size this key signs.
    pub first_size: u64,
    /// The verifier key.
    pub verifier: Verifier,
}

/// Parses `verifiers.txt`: lines `<first size> <vkey>\n`, strictly
/// increasing sizes, the first one 0.
pub(crate) fn parse_verifiers(text: &str) -> Result<Vec<KeyEntry>, String> {
    let mut out: Vec<KeyEntry> = Vec::new();
    let body = text
        .strip_suffix('\n')
        .ok_or_else(|| "must end with a newline".to_owned())?;
    for (i, line) in body.split('\n').enumerate() {
        let n = i + 1;
        let (size, vkey) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {n}: want `<first size> <vkey>`"))?;
        let first_size: u64 = size
            .parse()
            .ok()
            .filter(|_| size == "0" || !size.starts_with('0'))
            .ok_or_else(|| format!("line {n}: bad size"))?;
        let verifier = Verifier::from_vkey(vkey).map_err(|e| format!("line {n}: {e}"))?;
        let increasing = out.last().is_none_or(|prev| first_size > prev.first_size);
        if (out.is_empty() && first_size != 0) || !increasing {
            return Err(format!("line {n}: sizes must start at 0 and increase"));
        }
        out.push(KeyEntry {
            first_size,
            verifier,
        });
    }
    Ok(out)
}

/// The key that signs checkpoints of `size`.
pub(crate) fn key_for_size(keys: &[KeyEntry], size: u64) -> Option<&KeyEntry> {
    keys.iter().rev().find(|k| k.first_size <= size)
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, LedgerError> {
    fs::read_to_string(path).map_err(|e| LedgerError::io("read", path, e))
}

pub(crate) fn create_dir(path: &Path, mode: u32) -> Result<(), LedgerError> {
    use std::os::unix::fs::DirBuilderExt as _;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(LedgerError::io("create directory", path, e)),
    }
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), LedgerError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| LedgerError::io("fsync directory", path, e))
}

/// Writes a new file that must not exist yet, with `mode`, and fsyncs it.
pub(crate) fn write_new(path: &Path, mode: u32, data: &[u8]) -> Result<(), LedgerError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| LedgerError::io("create", path, e))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| LedgerError::io("write", path, e))
}

/// Replaces `path` atomically: write `<path>.tmp`, fsync, rename. The
/// caller fsyncs the directory.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), LedgerError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| LedgerError::io("create", &tmp, e))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| LedgerError::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| LedgerError::io("rename", path, e))
}

/// Appends to an existing file and fsyncs it.
pub(crate) fn append_line(path: &Path, line: &str) -> Result<(), LedgerError> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| LedgerError::io("open", path, e))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| LedgerError::io("append", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_merkle::leaf_hash;

    #[test]
    fn frontier_text_round_trips() {
        let mut f = Frontier::new();
        assert_eq!(frontier_text(&f), "0\n");
        assert_eq!(parse_frontier("0\n"), Some(f.clone()));
        for i in 0u8..7 {
            f.append(leaf_hash(&[i])).unwrap();
        }
        let text = frontier_text(&f);
        assert_eq!(text.lines().count(), 4);
        assert_eq!(parse_frontier(&text), Some(f));
        assert_eq!(parse_frontier(&text.replace("7\n", "6\n")), None);
        assert_eq!(parse_frontier("07\n"), None);
    }

    #[test]
    fn numbered_names() {
        assert_eq!(
            parse_numbered("00000000000000000042.note", ".note"),
            Some(42)
        );
        assert_eq!(parse_numbered("42.note", ".note"), None);
        assert_eq!(
            parse_numbered("00000000000000000042.note.tmp", ".note"),
            None
        );
    }
}
