//! Scoped API keys for Custos: the key format and its peppered hash, what a
//! key may do, and per-key rate limits.
//!
//! This crate is pure: no IO, no async, no logging. Time and randomness come
//! in as arguments. Storage and HTTP enforcement are built on top of it.
//!
//! A request is authenticated and authorised in this order:
//!
//! 1. [`key::parse`] rejects malformed secrets (wrong prefix, length,
//!    character or checksum) without touching storage.
//! 2. [`key::KeyHasher::hash`] computes the peppered hash, the store looks it
//!    up, and [`key::KeyHash::ct_eq`] confirms the match.
//! 3. [`scope::Scope::check`] decides whether the key may do this request.
//! 4. [`limit::RateLimiter::check_request`] decides whether it may do it now;
//!    [`limit::RateLimiter::record_tokens`] debits usage afterwards.

mod base62;
mod glob;
pub mod key;
pub mod limit;
pub mod scope;

pub use key::{IssuedKey, KeyFormatError, KeyHash, KeyHasher, KeyId, ParsedKey};
pub use limit::{Limits, RateDecision, RateLimiter};
pub use scope::{AccessRequest, Denied, Scope};

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use custos_types::Capability;

    use crate::key::{KeyFormatError, KeyHashError, KeyIdError, PepperError};
    use crate::scope::{Denied, PatternError};

    #[test]
    fn error_messages_follow_the_conventions() {
        let messages = [
            KeyFormatError::WrongPrefix.to_string(),
            KeyFormatError::WrongLength {
                len: 3,
                expected: 47,
            }
            .to_string(),
            KeyFormatError::BadCharacter { position: 9 }.to_string(),
            KeyFormatError::BadChecksum.to_string(),
            KeyIdError::WrongPrefix.to_string(),
            KeyIdError::WrongLength {
                len: 3,
                expected: 20,
            }
            .to_string(),
            KeyIdError::BadCharacter { position: 4 }.to_string(),
            KeyHashError::WrongLength { len: 3 }.to_string(),
            KeyHashError::BadCharacter { position: 0 }.to_string(),
            PepperError::TooShort { len: 3, min: 32 }.to_string(),
            PatternError::Empty.to_string(),
            PatternError::TooLong { len: 300, max: 256 }.to_string(),
            PatternError::BadCharacter { position: 1 }.to_string(),
            Denied::ModelNotAllowed { model: "m".into() }.to_string(),
            Denied::CapabilityNotAllowed {
                capability: Capability::Stream,
            }
            .to_string(),
            Denied::CidrNotAllowed {
                ip: IpAddr::from([192, 0, 2, 1]),
            }
            .to_string(),
            Denied::ClientIpUnknown.to_string(),
        ];
        for m in messages {
            let first = m.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{m}");
            assert!(!m.ends_with('.'), "{m}");
        }
    }
}
