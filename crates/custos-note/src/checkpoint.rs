//! The tlog-checkpoint note body: origin, tree size, root hash, and
//! optional extension lines, each ending in a newline.
//!
//! Parsing is strict so that one checkpoint has exactly one encoding: a
//! size in canonical decimal, a root in canonical base64 of 32 bytes, and
//! no empty or control-character lines.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Why a checkpoint body was rejected, or a checkpoint could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The body does not end with a newline.
    #[error("checkpoint does not end with a newline")]
    MissingFinalNewline,
    /// The body has fewer than the three mandatory lines.
    #[error("checkpoint has {lines} lines, want at least 3")]
    TooFewLines {
        /// How many lines it has.
        lines: usize,
    },
    /// The origin line is empty.
    #[error("checkpoint origin is empty")]
    EmptyOrigin,
    /// The size line is not a decimal `u64` without sign or leading zeros.
    #[error("checkpoint size is not a canonical decimal u64")]
    InvalidSize,
    /// The root line is not canonical base64 of 32 bytes.
    #[error("checkpoint root is not base64 of 32 bytes")]
    InvalidRoot,
    /// An extension line is empty.
    #[error("checkpoint line {line} is an empty extension line")]
    EmptyExtension {
        /// 1-based line number.
        line: usize,
    },
    /// A line contains a newline or another ASCII control character.
    #[error("checkpoint line {line} contains a control character")]
    ControlCharacter {
        /// 1-based line number.
        line: usize,
    },
}

/// A transparency log checkpoint: the log's identity and its tree head.
///
/// The fields are private so that every value encodes to a body that
/// [`Checkpoint::parse`] reads back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: [u8; 32],
    extensions: Vec<String>,
}

impl Checkpoint {
    /// Builds a checkpoint.
    ///
    /// # Errors
    ///
    /// [`CheckpointError::EmptyOrigin`], [`CheckpointError::EmptyExtension`]
    /// or [`CheckpointError::ControlCharacter`] if a line would be empty or
    /// contain a control character (including a newline).
    pub fn new(
        origin: impl Into<String>,
        size: u64,
        root: [u8; 32],
        extensions: Vec<String>,
    ) -> Result<Self, CheckpointError> {
        let origin = origin.into();
        check_line(&origin, 1)?;
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        for (i, ext) in extensions.iter().enumerate() {
            check_extension(ext, i + 4)?;
        }
        Ok(Self {
            origin,
            size,
            root,
            extensions,
        })
    }

    /// Parses a checkpoint body, such as [`Note::body`](crate::Note::body).
    ///
    /// # Errors
    ///
    /// Any [`CheckpointError`] except those only [`new`](Self::new) returns.
    pub fn parse(body: &str) -> Result<Self, CheckpointError> {
        let content = body
            .strip_suffix('\n')
            .ok_or(CheckpointError::MissingFinalNewline)?;
        let lines: Vec<&str> = content.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            check_line(line, i + 1)?;
        }
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(CheckpointError::TooFewLines { lines: lines.len() });
        };
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        let size = parse_size(size)?;
        let root = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or(CheckpointError::InvalidRoot)?;
        for (i, ext) in extensions.iter().enumerate() {
            check_extension(ext, i + 4)?;
        }
        Ok(Self {
            origin: (*origin).to_owned(),
            size,
            root,
            extensions: extensions.iter().map(|&e| e.to_owned()).collect(),
        })
    }

    /// The note body: `origin\nsize\nbase64(root)\n` and then each extension
    /// line followed by a newline.
    #[must_use]
    pub fn to_body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for ext in &self.extensions {
            body.push_str(ext);
            body.push('\n');
        }
        body
    }

    /// The log's identity, usually a schema-less URL such as `example.com/log`.
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of leaves in the tree.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 6962 root hash of the tree at this size.
    #[must_use]
    pub fn root(&self) -> &[u8; 32] {
        &self.root
    }

    /// The opaque extension lines, without their newlines.
    #[must_use]
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }
}

/// Decimal digits only, and no leading zero unless the size is `0`.
fn parse_size(line: &str) -> Result<u64, CheckpointError> {
    let canonical = !line.is_empty()
        && line.bytes().all(|b| b.is_ascii_digit())
        && (line == "0" || !line.starts_with('0'));
    if !canonical {
        return Err(CheckpointError::InvalidSize);
    }
    line.parse().map_err(|_| CheckpointError::InvalidSize)
}

fn check_line(line: &str, line_no: usize) -> Result<(), CheckpointError> {
    if line.bytes().any(|b| b < 0x20) {
        Err(CheckpointError::ControlCharacter { line: line_no })
    } else {
        Ok(())
    }
}

fn check_extension(ext: &str, line_no: usize) -> Result<(), CheckpointError> {
    check_line(ext, line_no)?;
    if ext.is_empty() {
        return Err(CheckpointError::EmptyExtension { line: line_no });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_be_canonical() {
        for good in [
            ("0", 0),
            ("1", 1),
            ("20852163", 20_852_163),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_size(good.0), Ok(good.1));
        }
        for bad in [
            "",
            "00",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "0x1",
            "1e3",
            "18446744073709551616",
            "١",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(CheckpointError::InvalidSize),
                "{bad:?}"
            );
        }
    }
}
