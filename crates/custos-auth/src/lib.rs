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
