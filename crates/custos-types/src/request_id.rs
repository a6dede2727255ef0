//! The request ID that correlates a gateway request with the caller's logs,
//! the upstream's logs and the audit record.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A request ID: either the caller's own `X-Request-Id`, when it is a sane
/// token, or a fresh UUIDv7.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    /// The longest caller-supplied ID that is accepted.
    pub const MAX_LEN: usize = 128;

    /// Accepts a caller-supplied ID when it is 1 to 128 characters of
    /// `[A-Za-z0-9._:-]`; anything else could smuggle text into logs.
    pub fn from_client(raw: &[u8]) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !ok {
            return None;
        }
        // The bytes were just checked to be ASCII.
        std::str::from_utf8(raw)
            .ok()
            .map(|s| RequestId(s.to_owned()))
    }

    /// A fresh, time-ordered UUIDv7: milliseconds since the epoch, then
    /// 74 random bits from the thread's CSPRNG (not one `getrandom` system
    /// call per request, which is what `Uuid::now_v7` costs).
    pub fn generate() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let random: [u8; 10] = rand::random();
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        RequestId(id.hyphenated().encode_lower(&mut buf).to_owned())
    }

    /// The client's ID if it is acceptable, otherwise a fresh one.
    pub fn from_client_or_generate(raw: Option<&[u8]>) -> Self {
        raw.and_then(Self::from_client)
            .unwrap_or_else(Self::generate)
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sane_tokens() {
        for ok in ["abc", "req_01J:x.y-z", &"a".repeat(128)] {
            assert_eq!(RequestId::from_client(ok.as_bytes()).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "a".repeat(129);
        for bad in [
            &b""[..],
            b"has space",
            b"new\nline",
            b"semi;colon",
            b"\xff\xfe",
            long.as_bytes(),
        ] {
            assert!(RequestId::from_client(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_uuid_v7() {
        let id = RequestId::generate();
        let parsed = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_ne!(RequestId::generate(), id);
        // The timestamp is now, to the millisecond.
        let (secs, _) = parsed.get_timestamp().unwrap().to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs) <= 2, "{secs} vs {now}");
        // The variant is RFC 9562's, and 1,000 fresh IDs are all distinct.
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| RequestId::generate()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn falls_back_to_generated() {
        let id = RequestId::from_client_or_generate(Some(b"bad id"));
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());
    }
}
