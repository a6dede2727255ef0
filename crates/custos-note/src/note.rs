//! The signed-note format: a body ending in a newline, a blank line, and
//! one or more lines `— <key name> base64(key ID || signature)`.
//!
//! [`open`] treats its input as hostile. It follows
//! `golang.org/x/mod/sumdb/note` (`Open`) with one deliberate difference:
//! two *different* signatures from the same known key are an error, where
//! Go keeps the first and skips the second without verifying it. Identical
//! repeats are dropped, as in Go.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::key::{Signer, Verifier, is_valid_name};

/// The most signature lines [`open`] reads before rejecting a note, as in Go.
/// The spec requires accepting at least 16.
pub const MAX_SIGNATURES: usize = 100;

/// Every signature line starts with an em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a note could not be signed or opened. Only the names of known keys
/// appear in messages; attacker-chosen text does not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The note is not valid UTF-8.
    #[error("note is not valid utf-8 at byte {offset}")]
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The note or body contains an ASCII control character other than newline.
    #[error("note contains control character {byte:#04x} at byte {offset}")]
    ControlCharacter {
        /// The control character.
        byte: u8,
        /// Its byte offset.
        offset: usize,
    },
    /// The body to sign, or the note's last line, does not end with a newline.
    #[error("note does not end with a newline")]
    MissingFinalNewline,
    /// No blank line separates the body from the signatures.
    #[error("note has no blank line before its signatures")]
    MissingSignatureBlock,
    /// There are no signature lines after the blank line, or no signers
    /// were given.
    #[error("note has no signatures")]
    NoSignatures,
    /// A signature line does not have the form `— <name> <base64>`.
    #[error("signature line {line} is malformed: {reason}")]
    MalformedSignature {
        /// 1-based line number within the signature block.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The note has more than [`MAX_SIGNATURES`] signature lines.
    #[error("note has more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// More than one of the given verifiers has this name and key ID, so
    /// the caller's trust configuration is inconsistent.
    #[error("ambiguous key {name}+{key_id:08x}: several verifiers have this name and key id")]
    AmbiguousKey {
        /// The key name.
        name: String,
        /// The key ID.
        key_id: u32,
    },
    /// A signature from a known key does not verify: the body or the
    /// signature was tampered with.
    #[error("invalid signature for key {name}+{key_id:08x}")]
    InvalidSignature {
        /// The key name.
        name: String,
        /// The key ID.
        key_id: u32,
    },
    /// A known key appears twice with different signatures.
    #[error("conflicting signatures for key {name}+{key_id:08x}")]
    ConflictingSignatures {
        /// The key name.
        name: String,
        /// The key ID.
        key_id: u32,
    },
    /// The note is well formed but none of its signatures is from a given
    /// verifier.
    #[error("note has no verifiable signatures")]
    Unverified {
        /// The signatures from unknown keys, for diagnosis.
        unverified: Vec<Signature>,
    },
}

/// One signature line of a note, verified or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The key name on the line.
    pub name: String,
    /// The key ID, the first four bytes of the decoded signature.
    pub key_id: u32,
    /// The signature as written, `base64(key ID || signature)`.
    pub base64: String,
}

/// A note that [`open`] has checked: its body and which signatures verified.
///
/// There is no other way to build one, so holding a `Note` means at least
/// one trusted key signed the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    body: String,
    verified: Vec<Signature>,
    unverified: Vec<Signature>,
}

impl Note {
    /// The signed text, including its final newline.
    #[must_use]
    pub fn body(&self) -> &str {
        &self.body
    }

    /// Consumes the note and returns its body.
    #[must_use]
    pub fn into_body(self) -> String {
        self.body
    }

    /// Signatures by the given verifiers that verified, in note order, at
    /// least one.
    #[must_use]
    pub fn verified(&self) -> &[Signature] {
        &self.verified
    }

    /// Signatures by keys the caller did not give, which were not checked.
    /// Identical repeats are listed once.
    #[must_use]
    pub fn unverified(&self) -> &[Signature] {
        &self.unverified
    }
}

impl Signer {
    /// Signs `body` and returns the full note text: the body, a blank line
    /// and this key's signature line.
    ///
    /// # Errors
    ///
    /// [`NoteError::MissingFinalNewline`] if the body does not end with a
    /// newline, and [`NoteError::ControlCharacter`] if it contains another
    /// control character; such a note could not be opened.
    pub fn sign(&self, body: &str) -> Result<String, NoteError> {
        sign(body, &[self])
    }
}

/// Signs `body` with each signer in turn, for example an old and a new key
/// during key rotation, and returns the full note text.
///
/// # Errors
///
/// As [`Signer::sign`], and [`NoteError::NoSignatures`] if `signers` is empty.
pub fn sign(body: &str, signers: &[&Signer]) -> Result<String, NoteError> {
    check_text(body)?;
    if !body.ends_with('\n') {
        return Err(NoteError::MissingFinalNewline);
    }
    if signers.is_empty() {
        return Err(NoteError::NoSignatures);
    }
    let mut note = String::with_capacity(body.len() + 1 + signers.len() * 128);
    note.push_str(body);
    note.push('\n');
    for signer in signers {
        note.push_str(SIG_PREFIX);
        note.push_str(signer.name());
        note.push(' ');
        STANDARD.encode_string(signer.sign_raw(body.as_bytes()), &mut note);
        note.push('\n');
    }
    Ok(note)
}

/// Parses a signed note and checks its signatures against `verifiers`.
///
/// A signature whose name and key ID match a verifier must verify; other
/// signatures are ignored but reported in [`Note::unverified`], as the spec
/// requires. At least one signature must verify.
///
/// # Errors
///
/// Any [`NoteError`] except the signing-only ones: malformed text or
/// signature lines, too many signatures, an ambiguous verifier list, a
/// known signature that does not verify or conflicts with another, or no
/// verified signature at all ([`NoteError::Unverified`]).
pub fn open(msg: &[u8], verifiers: &[Verifier]) -> Result<Note, NoteError> {
    let text = std::str::from_utf8(msg).map_err(|e| NoteError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    check_text(text)?;

    // The body may contain blank lines; the last one separates it from the
    // signatures, which never contain one.
    let split = text.rfind("\n\n").ok_or(NoteError::MissingSignatureBlock)?;
    let (body, sigs) = (&text[..=split], &text[split + 2..]);
    if sigs.is_empty() {
        return Err(NoteError::NoSignatures);
    }
    if !sigs.ends_with('\n') {
        return Err(NoteError::MissingFinalNewline);
    }

    let mut verified = Vec::new();
    let mut unverified = Vec::new();
    let mut seen_unknown = HashSet::new();
    let mut seen_known: HashMap<(&str, u32), &str> = HashMap::new();
    for (i, line) in sigs.split_terminator('\n').enumerate() {
        let line_no = i + 1;
        let (name, b64, key_id, sig) = parse_signature_line(line, line_no)?;
        if line_no > MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures {
                max: MAX_SIGNATURES,
            });
        }

        let mut matching = verifiers
            .iter()
            .filter(|v| v.name() == name && v.key_id() == key_id);
        let Some(verifier) = matching.next() else {
            if seen_unknown.insert(line) {
                unverified.push(signature(name, key_id, b64));
            }
            continue;
        };
        if matching.next().is_some() {
            return Err(NoteError::AmbiguousKey {
                name: name.to_owned(),
                key_id,
            });
        }
        if let Some(&previous) = seen_known.get(&(name, key_id)) {
            if previous == b64 {
                continue;
            }
            return Err(NoteError::ConflictingSignatures {
                name: name.to_owned(),
                key_id,
            });
        }
        seen_known.insert((name, key_id), b64);
        if !verifier.verify(body.as_bytes(), &sig) {
            return Err(NoteError::InvalidSignature {
                name: name.to_owned(),
                key_id,
            });
        }
        verified.push(signature(name, key_id, b64));
    }

    if verified.is_empty() {
        return Err(NoteError::Unverified { unverified });
    }
    Ok(Note {
        body: body.to_owned(),
        verified,
        unverified,
    })
}

/// Splits `— <name> <base64>` into the name, the base64 text, the key ID
/// and the raw signature.
fn parse_signature_line(
    line: &str,
    line_no: usize,
) -> Result<(&str, &str, u32, Vec<u8>), NoteError> {
    let malformed = |reason| NoteError::MalformedSignature {
        line: line_no,
        reason,
    };
    let rest = line
        .strip_prefix(SIG_PREFIX)
        .ok_or(malformed("must start with an em dash and a space"))?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or(malformed("missing space between key name and signature"))?;
    if !is_valid_name(name) {
        return Err(malformed("invalid key name"));
    }
    let raw = STANDARD
        .decode(b64)
        .map_err(|_| malformed("signature is not canonical base64"))?;
    match raw.split_first_chunk::<4>() {
        Some((id, sig)) if !sig.is_empty() => {
            Ok((name, b64, u32::from_be_bytes(*id), sig.to_vec()))
        }
        _ => Err(malformed("signature is shorter than 5 bytes")),
    }
}

fn signature(name: &str, key_id: u32, b64: &str) -> Signature {
    Signature {
        name: name.to_owned(),
        key_id,
        base64: b64.to_owned(),
    }
}

/// Rejects ASCII control characters other than newline.
fn check_text(text: &str) -> Result<(), NoteError> {
    match text
        .bytes()
        .enumerate()
        .find(|&(_, b)| b < 0x20 && b != b'\n')
    {
        Some((offset, byte)) => Err(NoteError::ControlCharacter { byte, offset }),
        None => Ok(()),
    }
}
