//! Minting secrets for new and rotated keys, including the deterministic
//! derivation that makes a retried rotation return the same secret.
//!
//! # Why rotation secrets are derived, not stored
//!
//! A retried `rotate` with the same rotation ID must return the *same* new
//! secret: the first response may have been lost on the wire after the
//! commit, and a second, different secret would leave the caller holding one
//! that never worked while the real one is unknown to anybody. The store
//! keeps only hashes, so it cannot look the first secret up. Storing it
//! encrypted would put a recoverable secret at rest next to the key that
//! decrypts it. Instead the secret is a pure function of inputs that a retry
//! presents again:
//!
//! ```text
//! derive_key   = HMAC-SHA-256(pepper, "custos-store/rotation/v1")
//! seed         = HMAC-SHA-256(derive_key, "secret" ‖ key_id ‖ rotation_id)
//! secret       = key::generate(HMAC-DRBG(seed))     (the normal key format)
//! rotation_ref = HMAC-SHA-256(derive_key, "ref" ‖ key_id ‖ rotation_id)
//! ```
//!
//! (Fields are length-prefixed, so no two inputs share an encoding.) A retry
//! finds the secret row carrying the same `rotation_ref`, re-derives the
//! secret, checks that it hashes to the stored hash, and returns it: no second
//! secret is ever created, and the database unique constraint on
//! `(key_id, rotation_ref)` backs that up.
//!
//! What this costs: anyone holding the pepper *and* the raw rotation ID can
//! recompute that rotation's secret. The raw rotation ID is therefore never
//! stored or written to the outbox (only `rotation_ref` is, which is a keyed
//! hash), and it must be a high-entropy value the caller generates per
//! rotation, like a UUID: [`validate_rotation_id`] demands at least 16
//! characters. A database dump plus the pepper still reveals no secret.
//! Rotations without a rotation ID use fresh randomness and are not
//! idempotent.

use custos_auth::KeyId;
use custos_auth::key::{IssuedKey, KeyHasher, PepperError};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretBox, SecretSlice};
use sha2::Sha256;

use crate::error::StoreError;

/// Domain separation label for the rotation derivation key.
const DERIVE_LABEL: &[u8] = b"custos-store/rotation/v1";

/// The shortest rotation ID accepted, in bytes.
pub const MIN_ROTATION_ID_LEN: usize = 16;
/// The longest rotation ID accepted, in bytes.
pub const MAX_ROTATION_ID_LEN: usize = 128;

/// Holds the pepper-derived keys that mint secrets: the [`KeyHasher`] for
/// the stored hash and the key that derives idempotent rotation secrets.
///
/// Only [`crate::keys::Keys::create`] and [`crate::keys::Keys::rotate`] need
/// one; listing, revoking and reading keys work without the pepper.
pub struct KeyMinter {
    hasher: KeyHasher,
    derive_key: SecretBox<[u8; 32]>,
}

impl KeyMinter {
    /// A minter keyed by the server pepper (at least 32 bytes).
    pub fn new(pepper: &SecretSlice<u8>) -> Result<Self, PepperError> {
        let hasher = KeyHasher::new(pepper)?;
        let pepper = pepper.expose_secret();
        // HMAC accepts keys of any length, so this error cannot happen; it is
        // mapped rather than unwrapped.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(pepper).map_err(|_| PepperError::TooShort {
                len: pepper.len(),
                min: KeyHasher::MIN_PEPPER_LEN,
            })?;
        mac.update(DERIVE_LABEL);
        let derive_key = SecretBox::new(Box::new(mac.finalize().into_bytes().into()));
        Ok(KeyMinter { hasher, derive_key })
    }

    /// The hasher, for checking presented secrets against an
    /// [`crate::snapshot::AuthSnapshot`].
    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// A new key with a fresh random ID and secret.
    pub(crate) fn issue(&self, rng: &mut (impl CryptoRng + RngCore)) -> IssuedKey {
        self.hasher.issue(rng)
    }

    /// The secret for rotating `id` under `rotation_id`, the same on every
    /// call, and the `rotation_ref` that marks its row.
    pub(crate) fn derive_rotation(&self, id: &KeyId, rotation_id: &str) -> (IssuedKey, String) {
        let seed = self.prf(b"secret", id, rotation_id);
        let mut rng = DerivedRng::new(seed);
        // `issue` draws a key ID and then the secret from the stream; the ID
        // is discarded. Both draws are deterministic, and a change in how
        // custos-auth consumes randomness is caught on replay by the stored
        // hash (`RotationNotReproducible`).
        let issued = self.hasher.issue(&mut rng);
        let reference = hex(&self.prf(b"ref", id, rotation_id));
        (issued, reference)
    }

    fn prf(&self, label: &[u8], id: &KeyId, rotation_id: &str) -> [u8; 32] {
        let mut mac = hmac_with(self.derive_key.expose_secret());
        for part in [label, id.as_str().as_bytes(), rotation_id.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for KeyMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMinter { pepper: [REDACTED] }")
    }
}

/// Checks a caller-supplied rotation ID: 16 to 128 bytes of
/// `[A-Za-z0-9._:-]`, such as a UUID.
pub fn validate_rotation_id(rotation_id: &str) -> Result<(), StoreError> {
    let len = rotation_id.len();
    if !(MIN_ROTATION_ID_LEN..=MAX_ROTATION_ID_LEN).contains(&len) {
        return Err(StoreError::invalid(
            "rotation_id",
            format!(
                "is {len} bytes long, expected {MIN_ROTATION_ID_LEN} to {MAX_ROTATION_ID_LEN} (use a random uuid)"
            ),
        ));
    }
    if let Some(position) = rotation_id
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')))
    {
        return Err(StoreError::invalid(
            "rotation_id",
            format!("has a character outside [A-Za-z0-9._:-] at byte {position}"),
        ));
    }
    Ok(())
}

/// HMAC-SHA-256 keyed by a 32-byte key. The key is zero-padded to the
/// 64-byte block, which RFC 2104 defines to be the same MAC, and which needs
/// no fallible length check.
fn hmac_with(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    block.zeroize();
    mac
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

/// HMAC-SHA-256 in counter mode: block `i` is HMAC(seed, i as u64 BE). A PRF
/// keyed by a secret seed, so its output is as good as random to anyone
/// without the seed; reproducible by construction.
struct DerivedRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl DerivedRng {
    fn new(seed: [u8; 32]) -> Self {
        DerivedRng {
            seed,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    fn refill(&mut self) {
        let mut mac = hmac_with(&self.seed);
        mac.update(&self.counter.to_be_bytes());
        self.counter += 1;
        self.block = mac.finalize().into_bytes().into();
        self.used = 0;
    }
}

impl Drop for DerivedRng {
    fn drop(&mut self) {
        self.seed.zeroize();
        self.block.zeroize();
    }
}

impl RngCore for DerivedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let mut filled = 0;
        while filled < dest.len() {
            if self.used == self.block.len() {
                self.refill();
            }
            let n = (self.block.len() - self.used).min(dest.len() - filled);
            dest[filled..filled + n].copy_from_slice(&self.block[self.used..self.used + n]);
            self.used += n;
            filled += n;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for DerivedRng {}

#[cfg(test)]
mod tests {
    use super::*;

    fn minter(byte: u8) -> KeyMinter {
        KeyMinter::new(&SecretSlice::from(vec![byte; 32])).unwrap()
    }

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let m = minter(1);
        let a = KeyId::parse("key_AAAAAAAAAAAAAAAA").unwrap();
        let b = KeyId::parse("key_BBBBBBBBBBBBBBBB").unwrap();
        let rid = "0f8e2b7c-5d41-4a3e-9f00-7a6b5c4d3e2f";
        let (x, rx) = m.derive_rotation(&a, rid);
        let (y, ry) = m.derive_rotation(&a, rid);
        assert_eq!(x.secret.expose_secret(), y.secret.expose_secret());
        assert_eq!(x.hash, y.hash);
        assert_eq!(rx, ry);
        assert!(custos_auth::key::parse(x.secret.expose_secret()).is_ok());
        let (other_key, r_other_key) = m.derive_rotation(&b, rid);
        assert_ne!(other_key.hash, x.hash);
        assert_ne!(r_other_key, rx);
        let (other_rid, _) = m.derive_rotation(&a, "0f8e2b7c-5d41-4a3e-9f00-7a6b5c4d3e30");
        assert_ne!(other_rid.hash, x.hash);
        let (other_pepper, r_other_pepper) = minter(2).derive_rotation(&a, rid);
        assert_ne!(
            other_pepper.secret.expose_secret(),
            x.secret.expose_secret()
        );
        assert_ne!(r_other_pepper, rx);
        // The reference is not the hash of the secret, nor derived from it.
        assert_ne!(rx, x.hash.to_hex());
    }

    #[test]
    fn rotation_id_rules() {
        assert!(validate_rotation_id("0f8e2b7c-5d41-4a3e-9f00-7a6b5c4d3e2f").is_ok());
        assert!(validate_rotation_id("abcdefghijklmnop").is_ok());
        let short = validate_rotation_id("retry-1").unwrap_err();
        assert_eq!(
            short.to_string(),
            "rotation_id: is 7 bytes long, expected 16 to 128 (use a random uuid)"
        );
        let bad = validate_rotation_id("abcdefghijklmnop qr").unwrap_err();
        assert!(bad.to_string().contains("at byte 16"), "{bad}");
        assert!(validate_rotation_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn padded_key_is_the_same_hmac() {
        let key = [0xabu8; 32];
        let mut padded = hmac_with(&key);
        let mut plain = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        padded.update(b"m");
        plain.update(b"m");
        assert_eq!(
            padded.finalize().into_bytes(),
            plain.finalize().into_bytes()
        );
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", minter(7)),
            "KeyMinter { pepper: [REDACTED] }"
        );
    }
}
