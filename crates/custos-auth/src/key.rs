//! API key secrets, public key IDs and peppered key hashes.
//!
//! A secret looks like `cst_live_` + 32 base62 characters of CSPRNG output +
//! a 6-character base62 CRC32 of everything before it, 47 bytes in all. The
//! fixed prefix lets secret scanners find leaked keys; the checksum lets
//! [`parse`] reject a mistyped or truncated key before any lookup.
//!
//! The server stores only [`KeyHash`] = HMAC-SHA-256(pepper, secret), the
//! public [`KeyId`] and the [`mask`]ed display form. The flow on a request is
//! [`parse`] → [`KeyHasher::hash`] → look the hash up → [`KeyHash::ct_eq`].

use std::fmt;
use std::str::FromStr;

use custos_types::SecretString;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use secrecy::{ExposeSecret, SecretBox, SecretSlice};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base62;

/// The fixed prefix of every secret. Registered with secret scanners.
pub const PREFIX: &str = "cst_live_";
/// Number of random base62 characters in a secret (≈ 190 bits).
pub const RANDOM_LEN: usize = 32;
/// Number of base62 characters of the CRC32 checksum at the end of a secret.
pub const CHECKSUM_LEN: usize = 6;
/// Total length in bytes of a well-formed secret.
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;

/// Where the checksum starts: it covers every byte before this offset.
const BODY_LEN: usize = PREFIX.len() + RANDOM_LEN;
/// How many characters of the random part [`mask`] reveals at each end.
const MASK_SHOWN: usize = 4;

/// Why a string is not a well-formed API key secret.
///
/// Every variant means the same to a client (a malformed key); they are kept
/// apart for tests and metrics. No variant carries any part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFormatError {
    /// The input does not start with `cst_live_`: not a Custos key at all, or
    /// a key for another service.
    #[error("api key does not start with `cst_live_`")]
    WrongPrefix,
    /// The input has the prefix but is not exactly [`KEY_LEN`] bytes long,
    /// typically a truncated copy and paste.
    #[error("api key is {len} bytes long, expected {expected}")]
    WrongLength {
        /// The length of the input in bytes.
        len: usize,
        /// The length of every well-formed key.
        expected: usize,
    },
    /// A byte after the prefix is not in `[0-9A-Za-z]`.
    #[error("api key has a character outside [0-9A-Za-z] at byte {position}")]
    BadCharacter {
        /// Byte offset of the first offending byte.
        position: usize,
    },
    /// The trailing checksum does not match the rest of the key: a typo.
    #[error("api key checksum does not match")]
    BadChecksum,
}

impl KeyFormatError {
    /// A short, stable name for metrics labels and test assertions.
    pub fn code(&self) -> &'static str {
        match self {
            KeyFormatError::WrongPrefix => "wrong_prefix",
            KeyFormatError::WrongLength { .. } => "wrong_length",
            KeyFormatError::BadCharacter { .. } => "bad_character",
            KeyFormatError::BadChecksum => "bad_checksum",
        }
    }
}

/// A syntactically valid secret, borrowed from the caller's input.
///
/// Parsing copies nothing: the secret stays in the caller's buffer, and this
/// type's `Debug` shows only the prefix. Read the secret with
/// [`ExposeSecret::expose_secret`].
#[derive(Clone, Copy)]
pub struct ParsedKey<'a> {
    secret: &'a str,
}

impl ParsedKey<'_> {
    /// The safe display form of this key; see [`mask`].
    pub fn mask(&self) -> String {
        mask_valid(self.secret)
    }
}

impl ExposeSecret<str> for ParsedKey<'_> {
    fn expose_secret(&self) -> &str {
        self.secret
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedKey({PREFIX}[REDACTED])")
    }
}

/// Generates a fresh secret from a cryptographically secure RNG.
///
/// The result always satisfies [`parse`]. Show it to the user once and keep
/// only its [`KeyHash`]; [`KeyHasher::issue`] does both steps at once.
pub fn generate(rng: &mut (impl CryptoRng + RngCore)) -> SecretString {
    // Exact capacity, so the string never reallocates and leaves no stray
    // copy of the secret behind in freed memory.
    let mut s = String::with_capacity(KEY_LEN);
    s.push_str(PREFIX);
    base62::push_random(&mut s, RANDOM_LEN, rng);
    let checksum = checksum(s.as_bytes());
    for b in checksum {
        s.push(char::from(b));
    }
    SecretString::from(s)
}

/// Checks the shape and checksum of a presented secret.
///
/// Checks run in a fixed order (prefix, length, characters, checksum) and the
/// first failure is returned. Runs in time linear in the input, never panics
/// and never allocates.
pub fn parse(input: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    let bytes = input.as_bytes();
    if !bytes.starts_with(PREFIX.as_bytes()) {
        return Err(KeyFormatError::WrongPrefix);
    }
    if bytes.len() != KEY_LEN {
        return Err(KeyFormatError::WrongLength {
            len: bytes.len(),
            expected: KEY_LEN,
        });
    }
    if let Some(i) = bytes[PREFIX.len()..]
        .iter()
        .position(|&b| !base62::is_base62(b))
    {
        return Err(KeyFormatError::BadCharacter {
            position: PREFIX.len() + i,
        });
    }
    // The checksum is a public function of the key, so comparing it in
    // variable time reveals nothing an attacker could not compute.
    let (body, sum) = bytes.split_at(BODY_LEN);
    if checksum(body) != sum {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(ParsedKey { secret: input })
}

/// A display form that is safe to show in UIs and logs, such as
/// `cst_live_Ab12…wXyZ`: the prefix, the first four random characters and the
/// last four characters.
///
/// The shown characters reveal about 24 bits of the 190 random ones (the last
/// four belong to the checksum). Anything that does not [`parse`] masks to
/// `cst_live_…` or `…`, so a mistyped key is never echoed back.
pub fn mask(secret: &str) -> String {
    match parse(secret) {
        Ok(key) => mask_valid(key.secret),
        Err(KeyFormatError::WrongPrefix) => "…".to_owned(),
        Err(_) => format!("{PREFIX}…"),
    }
}

fn mask_valid(secret: &str) -> String {
    let bytes = secret.as_bytes();
    let mut out = String::with_capacity(PREFIX.len() + 2 * MASK_SHOWN + '…'.len_utf8());
    out.push_str(PREFIX);
    // A parsed key is all ASCII, so these byte ranges are whole characters.
    let head = &bytes[PREFIX.len()..PREFIX.len() + MASK_SHOWN];
    let tail = &bytes[bytes.len() - MASK_SHOWN..];
    out.extend(head.iter().map(|&b| char::from(b)));
    out.push('…');
    out.extend(tail.iter().map(|&b| char::from(b)));
    out
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    base62::encode_fixed::<CHECKSUM_LEN>(u64::from(crc32fast::hash(body)))
}

/// Why a string is not a valid [`KeyId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyIdError {
    /// The input does not start with `key_`.
    #[error("key id does not start with `key_`")]
    WrongPrefix,
    /// The input is not exactly [`KeyId::LEN`] bytes long.
    #[error("key id is {len} bytes long, expected {expected}")]
    WrongLength {
        /// The length of the input in bytes.
        len: usize,
        /// The length of every valid key ID.
        expected: usize,
    },
    /// A byte after the prefix is not in `[0-9A-Za-z]`.
    #[error("key id has a character outside [0-9A-Za-z] at byte {position}")]
    BadCharacter {
        /// Byte offset of the first offending byte.
        position: usize,
    },
}

/// The public identifier of an API key, such as `key_3kTMd9fQz8WvBq1R`.
///
/// It is not secret: it appears in the console, the admin API, the audit log
/// and rate-limit state. It is chosen at creation and stays the same when the
/// secret is rotated. Stored inline (20 bytes, `Copy`), so using it as a map
/// key costs no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KeyId::LEN]);

impl KeyId {
    /// The prefix of every key ID.
    pub const PREFIX: &'static str = "key_";
    /// Number of random base62 characters after the prefix (≈ 95 bits).
    pub const RANDOM_LEN: usize = 16;
    /// Total length in bytes of a key ID.
    pub const LEN: usize = Self::PREFIX.len() + Self::RANDOM_LEN;

    /// A fresh random key ID.
    pub fn generate(rng: &mut (impl CryptoRng + RngCore)) -> Self {
        let mut s = String::with_capacity(Self::LEN);
        s.push_str(Self::PREFIX);
        base62::push_random(&mut s, Self::RANDOM_LEN, rng);
        let mut out = [0u8; Self::LEN];
        out.copy_from_slice(s.as_bytes());
        KeyId(out)
    }

    /// Validates a key ID: `key_` followed by 16 base62 characters.
    pub fn parse(input: &str) -> Result<Self, KeyIdError> {
        let bytes = input.as_bytes();
        if !bytes.starts_with(Self::PREFIX.as_bytes()) {
            return Err(KeyIdError::WrongPrefix);
        }
        let Ok(arr) = <[u8; Self::LEN]>::try_from(bytes) else {
            return Err(KeyIdError::WrongLength {
                len: bytes.len(),
                expected: Self::LEN,
            });
        };
        if let Some(i) = arr[Self::PREFIX.len()..]
            .iter()
            .position(|&b| !base62::is_base62(b))
        {
            return Err(KeyIdError::BadCharacter {
                position: Self::PREFIX.len() + i,
            });
        }
        Ok(KeyId(arr))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        // Both constructors admit only ASCII, so the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

impl FromStr for KeyId {
    type Err = KeyIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyId::parse(s)
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KeyId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key id such as `key_` followed by 16 base62 characters")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyId, E> {
                KeyId::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Why a stored hash could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyHashError {
    /// The text is not exactly 64 characters long.
    #[error("key hash is {len} characters long, expected 64")]
    WrongLength {
        /// The length of the input in bytes.
        len: usize,
    },
    /// A character is not a lowercase hex digit.
    #[error("key hash has a character outside [0-9a-f] at byte {position}")]
    BadCharacter {
        /// Byte offset of the first offending byte.
        position: usize,
    },
}

/// HMAC-SHA-256(pepper, secret): what the store keeps instead of the secret.
///
/// `Hash` and `Eq` let it key a `HashMap`. Looking a presented key up by its
/// hash leaks nothing useful through timing: the attacker chooses the secret
/// but cannot predict its peppered hash, so bucket and comparison timings say
/// nothing about any stored hash. Still confirm a hit with [`KeyHash::ct_eq`]
/// (or use [`KeyHasher::verify`]): it makes the authentication decision one
/// explicit, constant-time comparison of the full 256 bits, whatever the index
/// in front of it does (a database index, a truncated or prefix index, a cache),
/// and gives reviewers a single place where a key is declared authentic.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Wraps raw hash bytes, for example read from a `BYTEA` column.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        KeyHash(bytes)
    }

    /// The raw hash bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares in constant time. Use this, not `==`, to decide that a key is
    /// authentic.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }

    /// The canonical storage form: 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s
    }

    /// Decodes the form written by [`KeyHash::to_hex`]. Only lowercase is
    /// accepted, so each hash has exactly one stored spelling.
    pub fn from_hex(s: &str) -> Result<Self, KeyHashError> {
        fn nibble(b: u8) -> Option<u8> {
            match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            }
        }
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(KeyHashError::WrongLength { len: bytes.len() });
        }
        let mut out = [0u8; 32];
        for (i, (slot, pair)) in out.iter_mut().zip(bytes.chunks_exact(2)).enumerate() {
            let hi = nibble(pair[0]).ok_or(KeyHashError::BadCharacter { position: 2 * i })?;
            let lo = nibble(pair[1]).ok_or(KeyHashError::BadCharacter {
                position: 2 * i + 1,
            })?;
            *slot = hi << 4 | lo;
        }
        Ok(KeyHash(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not a secret, but a short form is enough to tell hashes apart.
        let hex = self.to_hex();
        write!(f, "KeyHash({}…)", &hex[..12])
    }
}

/// Why a pepper was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PepperError {
    /// The pepper is shorter than [`KeyHasher::MIN_PEPPER_LEN`] bytes.
    #[error("key pepper is {len} bytes long, expected at least {min}")]
    TooShort {
        /// The length of the pepper in bytes.
        len: usize,
        /// The minimum length.
        min: usize,
    },
}

/// Computes [`KeyHash`]es under the server-side pepper.
///
/// A database dump without the pepper does not let anyone test guesses
/// offline. The pepper is held as the 64-byte HMAC block key derived from it
/// (RFC 2104: zero-padded, or hashed first when longer than a block), inside a
/// [`SecretBox`] that is zeroized on drop and redacted in `Debug`.
pub struct KeyHasher {
    block_key: SecretBox<[u8; 64]>,
}

impl KeyHasher {
    /// The shortest pepper accepted, in bytes.
    pub const MIN_PEPPER_LEN: usize = 32;

    /// A hasher keyed by `pepper`, which must be at least 32 bytes of
    /// high-entropy data (for example 32 bytes from `/dev/urandom`).
    pub fn new(pepper: &SecretSlice<u8>) -> Result<Self, PepperError> {
        let pepper = pepper.expose_secret();
        if pepper.len() < Self::MIN_PEPPER_LEN {
            return Err(PepperError::TooShort {
                len: pepper.len(),
                min: Self::MIN_PEPPER_LEN,
            });
        }
        // Filled in place on the heap, so the only copy is the zeroizing one.
        let mut block = Box::new([0u8; 64]);
        if pepper.len() <= block.len() {
            block[..pepper.len()].copy_from_slice(pepper);
        } else {
            block[..32].copy_from_slice(&Sha256::digest(pepper));
        }
        Ok(KeyHasher {
            block_key: SecretBox::new(block),
        })
    }

    /// The peppered hash of a parsed secret.
    pub fn hash(&self, key: &ParsedKey<'_>) -> KeyHash {
        self.hash_bytes(key.secret.as_bytes())
    }

    /// Whether `key` hashes to `stored`, compared in constant time.
    pub fn verify(&self, key: &ParsedKey<'_>, stored: &KeyHash) -> bool {
        self.hash(key).ct_eq(stored)
    }

    /// Mints a new key: a fresh ID and secret, the hash to store and the
    /// masked form to display later.
    pub fn issue(&self, rng: &mut (impl CryptoRng + RngCore)) -> IssuedKey {
        let id = KeyId::generate(rng);
        let secret = generate(rng);
        let hash = self.hash_bytes(secret.expose_secret().as_bytes());
        let masked = mask_valid(secret.expose_secret());
        IssuedKey {
            id,
            secret,
            hash,
            masked,
        }
    }

    fn hash_bytes(&self, secret: &[u8]) -> KeyHash {
        // A block-sized key goes through `new` unchanged, which is the same
        // HMAC as the original pepper and needs no fallible length check.
        let mut mac = <Hmac<Sha256> as KeyInit>::new(self.block_key.expose_secret().into());
        mac.update(secret);
        KeyHash(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher { pepper: [REDACTED] }")
    }
}

/// A newly minted key, from [`KeyHasher::issue`].
///
/// Show `secret` to the user exactly once, then drop it; persist the rest.
pub struct IssuedKey {
    /// The public, stable identifier.
    pub id: KeyId,
    /// The secret to hand to the user. Zeroized on drop.
    pub secret: SecretString,
    /// What to store for lookups.
    pub hash: KeyHash,
    /// The display form, from [`mask`].
    pub masked: String,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("id", &self.id)
            .field("secret", &"[REDACTED]")
            .field("hash", &self.hash)
            .field("masked", &self.masked)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn hasher() -> KeyHasher {
        KeyHasher::new(&SecretSlice::from(vec![0x42; 32])).unwrap()
    }

    #[test]
    fn generated_keys_parse() {
        let mut rng = rng();
        for _ in 0..1000 {
            let secret = generate(&mut rng);
            let s = secret.expose_secret();
            assert_eq!(s.len(), KEY_LEN);
            let parsed = parse(s).unwrap();
            assert_eq!(parsed.expose_secret(), s);
        }
    }

    #[test]
    fn generated_keys_differ() {
        let mut rng = rng();
        let a = generate(&mut rng);
        let b = generate(&mut rng);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn parse_errors_are_distinct() {
        let mut rng = rng();
        let secret = generate(&mut rng);
        let good = secret.expose_secret();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "wrong_prefix"),
            ("sk-proj-abc".to_owned(), "wrong_prefix"),
            (good.replacen("cst_live_", "cst_test_", 1), "wrong_prefix"),
            (format!(" {good}"), "wrong_prefix"),
            (good[..KEY_LEN - 1].to_owned(), "wrong_length"),
            (format!("{good}x"), "wrong_length"),
            (format!("{good}\n"), "wrong_length"),
            (PREFIX.to_owned(), "wrong_length"),
            (format!("{}-{}", &good[..20], &good[21..]), "bad_character"),
            (format!("{}é{}", &good[..20], &good[22..]), "bad_character"),
            (format!("{}{}", &good[..KEY_LEN - 1], "_"), "bad_character"),
        ];
        for (input, code) in &cases {
            assert_eq!(parse(input).unwrap_err().code(), *code, "{input:?}");
        }
        // Flip one random character to another base62 character.
        let mut bytes = good.as_bytes().to_vec();
        bytes[15] = if bytes[15] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(parse(&typo).unwrap_err(), KeyFormatError::BadChecksum);
    }

    #[test]
    fn known_answer_checksum() {
        // Pins the checksum definition: CRC32 (IEEE) of the prefix and the
        // random part, as six base62 digits.
        let body = format!("{PREFIX}{}", "0".repeat(RANDOM_LEN));
        let crc = crc32fast::hash(body.as_bytes());
        let key = format!(
            "{body}{}",
            std::str::from_utf8(&base62::encode_fixed::<6>(u64::from(crc))).unwrap()
        );
        assert!(parse(&key).is_ok());
        assert_eq!(key.len(), 47);
    }

    #[test]
    fn mask_shows_prefix_head_and_tail_only() {
        let mut rng = rng();
        let secret = generate(&mut rng);
        let s = secret.expose_secret();
        let masked = mask(s);
        assert_eq!(masked, format!("{PREFIX}{}…{}", &s[9..13], &s[43..]));
        assert_eq!(parse(s).unwrap().mask(), masked);
        assert_eq!(mask("sk-live-whatever"), "…");
        assert_eq!(mask(&s[..40]), "cst_live_…");
    }

    #[test]
    fn key_id_round_trips() {
        let mut rng = rng();
        let id = KeyId::generate(&mut rng);
        assert_eq!(id.as_str().len(), KeyId::LEN);
        assert!(id.as_str().starts_with("key_"));
        assert_eq!(KeyId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), format!("KeyId({id})"));
    }

    #[test]
    fn key_id_rejects_malformed() {
        let cases = [
            ("", KeyIdError::WrongPrefix),
            ("kei_0123456789abcdef", KeyIdError::WrongPrefix),
            (
                "key_0123456789abcde",
                KeyIdError::WrongLength {
                    len: 19,
                    expected: 20,
                },
            ),
            (
                "key_0123456789abcdef0",
                KeyIdError::WrongLength {
                    len: 21,
                    expected: 20,
                },
            ),
            (
                "key_0123456789abcde_",
                KeyIdError::BadCharacter { position: 19 },
            ),
            (
                "key_0123456789abcdé",
                KeyIdError::BadCharacter { position: 18 },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(KeyId::parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn key_id_serde_is_a_string() {
        // serde_json is not a dependency; the `value` deserializer is enough.
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StrDeserializer};
        let d: StrDeserializer<'_, Error> = "key_AAAAbbbbCCCCdddd".into_deserializer();
        let id = KeyId::deserialize(d).unwrap();
        assert_eq!(id.as_str(), "key_AAAAbbbbCCCCdddd");
        let bad: StrDeserializer<'_, Error> = "key_short".into_deserializer();
        let err = KeyId::deserialize(bad).unwrap_err();
        assert!(err.to_string().contains("key id is 9 bytes long"), "{err}");
    }

    #[test]
    fn hash_hex_round_trips() {
        let mut rng = rng();
        let hasher = hasher();
        let secret = generate(&mut rng);
        let hash = hasher.hash(&parse(secret.expose_secret()).unwrap());
        let hex = hash.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(KeyHash::from_hex(&hex).unwrap(), hash);
        let letters = KeyHash::from_bytes([0xab; 32]);
        assert_eq!(letters.to_hex(), "ab".repeat(32));
        assert_eq!(
            KeyHash::from_hex(&"AB".repeat(32)),
            Err(KeyHashError::BadCharacter { position: 0 })
        );
        assert_eq!(
            KeyHash::from_hex(&hex[..63]),
            Err(KeyHashError::WrongLength { len: 63 })
        );
        let mut bad = hex.clone();
        bad.replace_range(63..64, "g");
        assert_eq!(
            KeyHash::from_hex(&bad),
            Err(KeyHashError::BadCharacter { position: 63 })
        );
    }

    #[test]
    fn hmac_matches_the_rfc_construction() {
        // RFC 4231 test case 2 uses a short key; a pepper must be >= 32
        // bytes, so check against a direct HMAC with the original pepper
        // instead, for a short and a longer-than-a-block pepper.
        for len in [32, 64, 65, 200] {
            let pepper: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let hasher = KeyHasher::new(&SecretSlice::from(pepper.clone())).unwrap();
            let mut rng = rng();
            let secret = generate(&mut rng);
            let parsed = parse(secret.expose_secret()).unwrap();
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&pepper).unwrap();
            mac.update(secret.expose_secret().as_bytes());
            let want: [u8; 32] = mac.finalize().into_bytes().into();
            assert_eq!(hasher.hash(&parsed).as_bytes(), &want, "pepper len {len}");
        }
    }

    #[test]
    fn pepper_must_be_long_enough() {
        let err = KeyHasher::new(&SecretSlice::from(vec![1u8; 31])).unwrap_err();
        assert_eq!(err, PepperError::TooShort { len: 31, min: 32 });
        assert_eq!(
            err.to_string(),
            "key pepper is 31 bytes long, expected at least 32"
        );
    }

    #[test]
    fn different_peppers_give_different_hashes() {
        let mut rng = rng();
        let secret = generate(&mut rng);
        let parsed = parse(secret.expose_secret()).unwrap();
        let a = KeyHasher::new(&SecretSlice::from(vec![1u8; 32])).unwrap();
        let b = KeyHasher::new(&SecretSlice::from(vec![2u8; 32])).unwrap();
        assert_ne!(a.hash(&parsed), b.hash(&parsed));
        assert!(!a.hash(&parsed).ct_eq(&b.hash(&parsed)));
        assert!(a.hash(&parsed).ct_eq(&a.hash(&parsed)));
    }

    #[test]
    fn issue_is_consistent() {
        let mut rng = rng();
        let hasher = hasher();
        let issued = hasher.issue(&mut rng);
        let parsed = parse(issued.secret.expose_secret()).unwrap();
        assert!(hasher.verify(&parsed, &issued.hash));
        assert_eq!(issued.masked, mask(issued.secret.expose_secret()));
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() {
        let mut rng = rng();
        let hasher = hasher();
        let issued = hasher.issue(&mut rng);
        let s = issued.secret.expose_secret();
        let random = &s[PREFIX.len()..BODY_LEN];
        let parsed = parse(s).unwrap();
        let mut typo = s.as_bytes().to_vec();
        typo[20] = if typo[20] == b'x' { b'y' } else { b'x' };
        let typo = String::from_utf8(typo).unwrap();
        let outputs = [
            format!("{parsed:?}"),
            format!("{issued:?}"),
            format!("{:?}", issued.secret),
            format!("{hasher:?}"),
            format!("{:?}", parse(&typo)),
            format!("{}", parse(&typo).unwrap_err()),
            format!("{:?}", parse(&s[..40])),
            format!("{}", parse(&s[..40]).unwrap_err()),
        ];
        for out in &outputs {
            // Not the whole random part, and not even an 8-character window
            // of it (the mask shows 4).
            for window in random.as_bytes().windows(5) {
                let w = std::str::from_utf8(window).unwrap();
                assert!(!out.contains(w), "{out:?} leaks {w:?}");
            }
        }
        assert_eq!(format!("{parsed:?}"), "ParsedKey(cst_live_[REDACTED])");
        assert!(!format!("{hasher:?}").contains("42"));
    }
}
