//! Named Ed25519 note keys and their text encodings.
//!
//! A verifier key reads `name+hex(key ID)+base64(0x01 || public key)` and a
//! signer key `PRIVATE+KEY+name+hex(key ID)+base64(0x01 || seed)`, where the
//! key ID is the first four bytes, big-endian, of
//! `SHA-256(name || "\n" || 0x01 || public key)`. Parsing is strict: every
//! part is checked, including that the key ID matches the name and key.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// The signature type byte of Ed25519 in the signed-note spec, and the only
/// one this crate supports.
pub const ALG_ED25519: u8 = 0x01;

/// The literal prefix that marks an encoded signer key as secret.
const PRIVATE_PREFIX: &str = "PRIVATE+KEY+";

/// Why a key name or encoded key was rejected. Messages never contain key
/// material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key name is empty or contains a Unicode space or a `+`.
    #[error("invalid key name {name:?}: must be non-empty, without spaces or '+'")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The encoded key does not have the expected parts, or a part does not
    /// decode.
    #[error("malformed key: {reason}")]
    Malformed {
        /// Which part is wrong.
        reason: &'static str,
    },
    /// The key data names a signature type other than Ed25519.
    #[error("unsupported signature type {alg:#04x}, only 0x01 (ed25519) is supported")]
    UnsupportedAlgorithm {
        /// The signature type byte found.
        alg: u8,
    },
    /// The key ID in the encoding is not the one derived from the name and
    /// public key, so the key was mistyped or tampered with.
    #[error("key id {got:08x} does not match {want:08x} derived from the name and public key")]
    KeyIdMismatch {
        /// The key ID in the encoding.
        got: u32,
        /// The key ID derived from the name and public key.
        want: u32,
    },
    /// The public key bytes are not a valid Ed25519 point.
    #[error("public key is not a valid ed25519 point")]
    InvalidPublicKey,
}

/// Checks a key name: non-empty, no Unicode white space, no `+`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(KeyError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// `SHA-256(name || "\n" || key_data)[..4]` as a big-endian `u32`, where
/// `key_data` is the signature type byte followed by the public key.
fn key_id(name: &str, key_data: &[u8]) -> u32 {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update(b"\n")
        .chain_update(key_data)
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn ed25519_key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut data = [0u8; 33];
    data[0] = ALG_ED25519;
    data[1..].copy_from_slice(key.as_bytes());
    key_id(name, &data)
}

/// Splits `name+id+data` and decodes each part. The name cannot contain `+`,
/// so the first two `+` are the separators; base64 data may contain more.
fn split_encoded(encoded: &str) -> Result<(&str, u32, Vec<u8>), KeyError> {
    let malformed = |reason| KeyError::Malformed { reason };
    let (name, rest) = encoded
        .split_once('+')
        .ok_or(malformed("missing '+' after the key name"))?;
    let (id_hex, data_b64) = rest
        .split_once('+')
        .ok_or(malformed("missing '+' after the key id"))?;
    check_name(name)?;
    // Lowercase only, so that each key has one encoding (Go writes lowercase
    // but would also read uppercase); `from_str_radix` alone would also
    // accept a leading '+'.
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if id_hex.len() != 8 || !id_hex.bytes().all(lower_hex) {
        return Err(malformed("key id must be 8 lowercase hex digits"));
    }
    let id = u32::from_str_radix(id_hex, 16)
        .map_err(|_| malformed("key id must be 8 lowercase hex digits"))?;
    let data = STANDARD
        .decode(data_b64)
        .map_err(|_| malformed("key data is not canonical base64"))?;
    Ok((name, id, data))
}

/// Splits decoded key data into the Ed25519 type byte and 32 key bytes.
fn ed25519_bytes(data: &[u8]) -> Result<[u8; 32], KeyError> {
    let (&alg, key) = data.split_first().ok_or(KeyError::Malformed {
        reason: "key data is empty",
    })?;
    if alg != ALG_ED25519 {
        return Err(KeyError::UnsupportedAlgorithm { alg });
    }
    key.try_into().map_err(|_| KeyError::Malformed {
        reason: "ed25519 key data must be 32 bytes",
    })
}

/// A named Ed25519 public key that checks note signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl Verifier {
    /// A verifier for `key` under `name`, with the standard key ID.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidName`] if the name is empty or has spaces or `+`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, KeyError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: ed25519_key_id(name, &key),
            key,
        })
    }

    /// Parses a verifier key, `name+hex(key ID)+base64(0x01 || public key)`.
    ///
    /// # Errors
    ///
    /// Any [`KeyError`]: a bad name, a missing or undecodable part, a type
    /// other than Ed25519, a wrong-length or invalid key, or a key ID that
    /// does not match.
    pub fn from_vkey(vkey: &str) -> Result<Self, KeyError> {
        let (name, id, data) = split_encoded(vkey)?;
        let want = key_id(name, &data);
        if id != want {
            return Err(KeyError::KeyIdMismatch { got: id, want });
        }
        let bytes = ed25519_bytes(&data)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPublicKey)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: id,
            key,
        })
    }

    /// The verifier key encoding, `name+hex(key ID)+base64(0x01 || public key)`.
    #[must_use]
    pub fn to_vkey(&self) -> String {
        self.to_string()
    }

    /// The key name, which appears in signature lines.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID, which prefixes every signature by this key.
    #[must_use]
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    #[must_use]
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `sig` is a valid signature of `msg` by this key. Uses strict
    /// verification, which also rejects weak keys and non-canonical
    /// signatures.
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        ed25519_dalek::Signature::from_slice(sig)
            .is_ok_and(|sig| self.key.verify_strict(msg, &sig).is_ok())
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut data = [0u8; 33];
        data[0] = ALG_ED25519;
        data[1..].copy_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(data)
        )
    }
}

impl FromStr for Verifier {
    type Err = KeyError;

    fn from_str(vkey: &str) -> Result<Self, Self::Err> {
        Self::from_vkey(vkey)
    }
}

/// A named Ed25519 private key that signs notes. Its `Debug` output hides
/// the key.
#[derive(Clone)]
pub struct Signer {
    name: String,
    key_id: u32,
    pub(crate) key: SigningKey,
}

impl Signer {
    /// A signer for `key` under `name`, with the standard key ID.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidName`] if the name is empty or has spaces or `+`.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, KeyError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: ed25519_key_id(name, &key.verifying_key()),
            key,
        })
    }

    /// Generates a fresh key from the caller's cryptographic RNG.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidName`] if the name is empty or has spaces or `+`.
    pub fn generate(name: &str, rng: &mut (impl CryptoRng + RngCore)) -> Result<Self, KeyError> {
        check_name(name)?;
        Self::new(name, SigningKey::generate(rng))
    }

    /// Parses a signer key, `PRIVATE+KEY+name+hex(key ID)+base64(0x01 || seed)`.
    ///
    /// # Errors
    ///
    /// Any [`KeyError`]: a missing prefix, a bad name, a missing or
    /// undecodable part, a type other than Ed25519, a wrong-length seed, or
    /// a key ID that does not match the derived public key.
    pub fn from_skey(skey: &str) -> Result<Self, KeyError> {
        let rest = skey
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or(KeyError::Malformed {
                reason: "signer key must start with PRIVATE+KEY+",
            })?;
        let (name, id, data) = split_encoded(rest)?;
        let key = SigningKey::from_bytes(&ed25519_bytes(&data)?);
        let want = ed25519_key_id(name, &key.verifying_key());
        if id != want {
            return Err(KeyError::KeyIdMismatch { got: id, want });
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: id,
            key,
        })
    }

    /// The signer key encoding, `PRIVATE+KEY+name+hex(key ID)+base64(0x01 || seed)`.
    /// Anyone holding it can sign as this key.
    #[must_use]
    pub fn to_skey(&self) -> SecretString {
        let mut data = [0u8; 33];
        data[0] = ALG_ED25519;
        data[1..].copy_from_slice(self.key.as_bytes());
        let encoded = format!(
            "{PRIVATE_PREFIX}{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(data)
        );
        data.fill(0);
        SecretString::from(encoded)
    }

    /// The matching verifier, to hand to auditors.
    #[must_use]
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The key name, which appears in signature lines.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID, which prefixes every signature by this key.
    #[must_use]
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Signs raw bytes and returns `key ID || signature`, the payload of a
    /// signature line.
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> [u8; 68] {
        let mut out = [0u8; 68];
        out[..4].copy_from_slice(&self.key_id.to_be_bytes());
        out[4..].copy_from_slice(&self.key.sign(msg).to_bytes());
        out
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .field("key", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        for good in ["a", "example.com/log", "PeterNeumann", "ünïcode", "a-b_c"] {
            assert!(is_valid_name(good), "{good:?}");
        }
        for bad in [
            "",
            "a b",
            "a+b",
            "a\tb",
            "a\nb",
            "a\u{a0}b",
            "a\u{2003}b",
            "a\u{85}b",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_private_key() {
        let signer = Signer::new("n", SigningKey::from_bytes(&[9; 32])).unwrap();
        let debug = format!("{signer:?}");
        assert!(debug.contains("[redacted]"), "{debug}");
        assert!(!debug.contains(&STANDARD.encode([9u8; 32])[..8]), "{debug}");
    }
}
