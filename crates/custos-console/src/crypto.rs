//! The console's cryptography, all in one place: random tokens and their
//! hashes, Argon2id passwords and the password policy, TOTP (RFC 6238)
//! seeds, sealing and checking, recovery codes, CSRF tokens, QR codes.
//!
//! Which hash for what: passwords are low-entropy, so Argon2id with the
//! OWASP parameters. Session IDs, admin tokens, invitation tokens and
//! recovery codes are at least 80 random bits, which no dictionary or
//! brute force reaches, so a plain SHA-256 is enough and keeps every
//! request cheap.

use std::fmt;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use rand::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

type HmacSha256 = Hmac<Sha256>;

/// A secret string (password, token, code) whose `Debug` redacts it.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value, for hashing or showing once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `len` random bytes, base64url without padding.
pub fn random_token(rng: &mut (impl RngCore + CryptoRng), len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A random identifier with a prefix, such as `usr_3f9a…` (64 bits, hex).
pub fn random_id(rng: &mut (impl RngCore + CryptoRng), prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    rng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

/// SHA-256 of `value`, hex.
pub fn sha256_hex(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time equality of two strings.
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Keys derived from the server pepper: one for sealing TOTP seeds, one
/// for CSRF tokens. `Debug` shows neither.
#[derive(Clone)]
pub struct ServerKeys {
    seal: [u8; 32],
    csrf: [u8; 32],
}

impl fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKeys([redacted])")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl ServerKeys {
    /// Derives the keys from the pepper.
    pub fn from_pepper(pepper: &[u8]) -> Self {
        ServerKeys {
            seal: hmac(pepper, &[b"custos console totp seal v1"]),
            csrf: hmac(pepper, &[b"custos console csrf v1"]),
        }
    }

    /// The CSRF token of a session: a MAC of its ID, so nothing needs
    /// storing and it changes when the session ID rotates.
    pub fn csrf_token(&self, session_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac(&self.csrf, &[session_id.as_bytes()]))
    }

    /// Whether `token` is the CSRF token of `session_id`, in constant time.
    pub fn csrf_ok(&self, session_id: &str, token: &str) -> bool {
        ct_eq(&self.csrf_token(session_id), token)
    }

    /// Seals a TOTP seed for storage: a random nonce, the seed XORed with
    /// an HMAC-derived pad bound to the user, and a 128-bit tag.
    pub fn seal(&self, rng: &mut (impl RngCore + CryptoRng), user_id: &str, seed: &[u8]) -> String {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let pad = hmac(&self.seal, &[b"pad", user_id.as_bytes(), &nonce]);
        let ct: Vec<u8> = seed.iter().zip(pad.iter()).map(|(a, b)| a ^ b).collect();
        let tag = hmac(&self.seal, &[b"tag", user_id.as_bytes(), &nonce, &ct]);
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag[..16]);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens what [`ServerKeys::seal`] made for `user_id`; `None` if it was
    /// altered, belongs to another user, or the pepper changed.
    pub fn unseal(&self, user_id: &str, sealed: &str) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < 16 + 16 + 1 || raw.len() > 16 + 32 + 16 {
            return None;
        }
        let (nonce, rest) = raw.split_at(16);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let want = hmac(&self.seal, &[b"tag", user_id.as_bytes(), nonce, ct]);
        if !bool::from(want[..16].ct_eq(tag)) {
            return None;
        }
        let pad = hmac(&self.seal, &[b"pad", user_id.as_bytes(), nonce]);
        Some(ct.iter().zip(pad.iter()).map(|(a, b)| a ^ b).collect())
    }
}

/// The shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest accepted password, in bytes (Argon2 of megabytes is a DoS).
pub const MAX_PASSWORD_BYTES: usize = 256;

const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// Checks a new password against the policy; the message is shown to the
/// user and never contains the password.
pub fn check_password_policy(password: &str, username: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password must be at least {MIN_PASSWORD_CHARS} characters long"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password must be at most {MAX_PASSWORD_BYTES} bytes long"
        ));
    }
    let lower = password.to_lowercase();
    if COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|common| {
            lower == common
                || (common.len() >= 8
                    && lower.starts_with(common)
                    && lower[common.len()..]
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b'!'))
        })
    {
        return Err("this password is too common; choose another".into());
    }
    if username.len() >= 3 && lower.contains(&username.to_lowercase()) {
        return Err("the password must not contain your user name".into());
    }
    if password
        .chars()
        .collect::<std::collections::HashSet<_>>()
        .len()
        < 5
    {
        return Err("the password repeats too few different characters".into());
    }
    Ok(())
}

/// Argon2id with the OWASP Password Storage Cheat Sheet's first
/// recommendation: 19 MiB, 2 iterations, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password (blocking: call it off the async threads).
pub fn hash_password(
    rng: &mut (impl RngCore + CryptoRng),
    password: &str,
) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    argon2()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `hash` (blocking). A hash that
/// does not parse never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The TOTP parameters: SHA-1, 6 digits, 30 s steps, ±1 step accepted,
/// which is what every authenticator app supports.
pub const TOTP_STEP: u64 = 30;

/// A fresh 160-bit TOTP seed.
pub fn new_totp_seed(rng: &mut (impl RngCore + CryptoRng)) -> Vec<u8> {
    let mut seed = vec![0u8; 20];
    rng.fill_bytes(&mut seed);
    seed
}

fn totp(seed: &[u8], account: &str) -> Option<totp_rs::Totp> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(TOTP_STEP)
        .with_secret(seed.to_vec())
        .with_issuer(Some("Custos"))
        .with_account_name(account)
        .build()
        .ok()
}

/// The `otpauth://totp/…` URI authenticator apps read (from the QR code).
pub fn otpauth_uri(seed: &[u8], account: &str) -> Option<String> {
    totp(seed, account)?.to_url().ok()
}

/// The seed in base32, for typing it into an app by hand.
pub fn seed_base32(seed: &[u8]) -> String {
    totp_rs::Secret::from(seed.to_vec()).to_base32()
}

/// The code for `unix_secs` (for tests and tools).
pub fn totp_code(seed: &[u8], unix_secs: u64) -> Option<String> {
    Some(totp(seed, "x")?.generate(unix_secs).to_string())
}

/// The time step a six-digit `code` is valid for at `unix_secs`, looking
/// one step either side, compared in constant time. The caller must still
/// refuse a step at or before the last accepted one (replay).
pub fn totp_step(seed: &[u8], code: &str, unix_secs: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(seed, "x")?;
    let now = unix_secs / TOTP_STEP;
    let mut found = None;
    for step in now.saturating_sub(1)..=now + 1 {
        let want = t.generate(step * TOTP_STEP).to_string();
        if ct_eq(&want, code) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// How many recovery codes a user gets.
pub const RECOVERY_CODES: usize = 10;

const CODE_ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz023456789";

/// Ten fresh recovery codes (80 bits each), formatted `xxxx-xxxx-xxxx-xxxx`.
pub fn new_recovery_codes(rng: &mut (impl RngCore + CryptoRng)) -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 16];
            rng.fill_bytes(&mut bytes);
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(CODE_ALPHABET[usize::from(b & 31)]))
                .collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// Whether the input looks like a recovery code rather than a TOTP code.
pub fn looks_like_recovery_code(input: &str) -> bool {
    normalise_code(input).len() == 16
}

fn normalise_code(input: &str) -> String {
    input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The stored hash of a recovery code of `user_id` (input normalised:
/// case, spaces and dashes do not matter).
pub fn recovery_code_hash(user_id: &str, code: &str) -> String {
    sha256_hex(&format!(
        "custos-recovery-v1:{user_id}:{}",
        normalise_code(code)
    ))
}

/// `text` as a QR code in SVG, for the enrolment page.
pub fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .dark_color(qrcode::render::svg::Color("#0f172a"))
            .light_color(qrcode::render::svg::Color("#ffffff"))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn rfc6238_sha1_known_answers() {
        // RFC 6238 appendix B, SHA-1 seed, last six digits.
        let seed = b"12345678901234567890";
        for (t, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(totp_code(seed, t).as_deref(), Some(code), "t={t}");
        }
    }

    #[test]
    fn totp_window_is_one_step_either_side() {
        let seed = new_totp_seed(&mut rng());
        let t = 1_700_000_010;
        let now = t / TOTP_STEP;
        let code = |step: u64| totp_code(&seed, step * TOTP_STEP).unwrap();
        assert_eq!(totp_step(&seed, &code(now), t), Some(now));
        assert_eq!(totp_step(&seed, &code(now - 1), t), Some(now - 1));
        assert_eq!(totp_step(&seed, &code(now + 1), t), Some(now + 1));
        assert_eq!(totp_step(&seed, &code(now - 2), t), None);
        assert_eq!(totp_step(&seed, &code(now + 2), t), None);
        for bad in ["", "12345", "1234567", "abcdef", "12 456", "１２３４５６"] {
            assert_eq!(totp_step(&seed, bad, t), None, "{bad:?}");
        }
    }

    #[test]
    fn otpauth_uri_names_issuer_and_seed() {
        let seed = b"12345678901234567890";
        let uri = otpauth_uri(seed, "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/Custos:alice?"), "{uri}");
        assert!(
            uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "{uri}"
        );
        assert!(uri.contains("issuer=Custos"), "{uri}");
        assert!(qr_svg(&uri).unwrap().starts_with("<?xml"));
    }

    #[test]
    fn sealing_round_trips_and_detects_tampering() {
        let keys = ServerKeys::from_pepper(&[1u8; 32]);
        let seed = new_totp_seed(&mut rng());
        let sealed = keys.seal(&mut rng(), "usr_a", &seed);
        assert_eq!(keys.unseal("usr_a", &sealed).unwrap(), seed);
        assert!(keys.unseal("usr_b", &sealed).is_none());
        assert!(
            ServerKeys::from_pepper(&[2u8; 32])
                .unseal("usr_a", &sealed)
                .is_none()
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        raw[20] ^= 1;
        assert!(keys.unseal("usr_a", &URL_SAFE_NO_PAD.encode(raw)).is_none());
        for junk in ["", "!!!", "AAAA"] {
            assert!(keys.unseal("usr_a", junk).is_none());
        }
        assert_eq!(format!("{keys:?}"), "ServerKeys([redacted])");
    }

    #[test]
    fn csrf_tokens_bind_to_the_session() {
        let keys = ServerKeys::from_pepper(&[1u8; 32]);
        let t = keys.csrf_token("s1");
        assert!(keys.csrf_ok("s1", &t));
        assert!(!keys.csrf_ok("s2", &t));
        assert!(!keys.csrf_ok("s1", ""));
    }

    #[test]
    fn password_policy() {
        assert!(check_password_policy("short", "alice").is_err());
        assert!(check_password_policy("password1234", "alice").is_err());
        assert!(check_password_policy("Password1234!", "alice").is_err());
        assert!(check_password_policy("aaaaaaaaaaaaaaa", "alice").is_err());
        assert!(check_password_policy("alice-is-great-2024", "alice").is_err());
        assert!(check_password_policy(&"x1y2z3w4v5".repeat(30), "alice").is_err());
        assert!(check_password_policy("correct horse battery staple", "alice").is_ok());
    }

    #[test]
    fn argon2id_hashes_verify() {
        let hash = hash_password(&mut rng(), "correct horse battery staple").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery staple", &hash));
        assert!(!verify_password("correct horse battery stapler", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalised() {
        let codes = new_recovery_codes(&mut rng());
        assert_eq!(codes.len(), 10);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), 10);
        let c = &codes[0];
        assert_eq!(c.len(), 19);
        assert!(looks_like_recovery_code(c));
        assert!(!looks_like_recovery_code("123456"));
        assert_eq!(
            recovery_code_hash("u", c),
            recovery_code_hash("u", &c.to_uppercase().replace('-', " "))
        );
        assert_ne!(recovery_code_hash("u", c), recovery_code_hash("v", c));
    }
}
