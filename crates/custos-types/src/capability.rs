//! What a caller may do through the gateway, independent of the model.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One thing a key may be allowed to do on the `/v1` API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models` and `GET /v1/models/{id}`.
    Models,
    /// Any request with `"stream": true`, in addition to the endpoint's own capability.
    Stream,
}

impl Capability {
    /// Every capability, in a stable order.
    pub const ALL: [Capability; 5] = [
        Capability::Chat,
        Capability::Completions,
        Capability::Embeddings,
        Capability::Models,
        Capability::Stream,
    ];

    /// The lowercase name used in configuration, the CLI and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Chat => "chat",
            Capability::Completions => "completions",
            Capability::Embeddings => "embeddings",
            Capability::Models => "models",
            Capability::Stream => "stream",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A capability name that is not one of [`Capability::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability `{0}`, expected one of chat, completions, embeddings, models, stream")]
pub struct ParseCapabilityError(pub String);

impl FromStr for Capability {
    type Err = ParseCapabilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| ParseCapabilityError(s.to_owned()))
    }
}

/// A small set of capabilities stored as a bit mask, so that checks on the
/// hot path are a single AND.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapabilitySet(u8);

impl CapabilitySet {
    /// The empty set.
    pub const fn empty() -> Self {
        CapabilitySet(0)
    }

    /// Every capability.
    pub fn all() -> Self {
        Capability::ALL.into_iter().collect()
    }

    /// Whether `cap` is in the set.
    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    /// Adds `cap` to the set.
    pub fn insert(&mut self, cap: Capability) {
        self.0 |= cap.bit();
    }

    /// Whether the set holds every capability.
    pub fn is_all(self) -> bool {
        self == Self::all()
    }

    /// The members, in [`Capability::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// Parses a comma-separated list such as `chat,stream`.
    pub fn parse_list(s: &str) -> Result<Self, ParseCapabilityError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Capability::from_str)
            .collect()
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut set = CapabilitySet::empty();
        for cap in iter {
            set.insert(cap);
        }
        set
    }
}

impl fmt::Debug for CapabilitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for CapabilitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for cap in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(cap.as_str())?;
        }
        Ok(())
    }
}

impl Serialize for CapabilitySet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for CapabilitySet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let caps = Vec::<Capability>::deserialize(d)?;
        Ok(caps.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_list_round_trips() {
        let set = CapabilitySet::parse_list("chat, stream,models").unwrap();
        assert!(set.contains(Capability::Chat));
        assert!(set.contains(Capability::Stream));
        assert!(!set.contains(Capability::Embeddings));
        assert_eq!(set.to_string(), "chat,models,stream");
        assert_eq!(CapabilitySet::parse_list(&set.to_string()).unwrap(), set);
    }

    #[test]
    fn unknown_capability_is_named() {
        let err = CapabilitySet::parse_list("chat,admin").unwrap_err();
        assert_eq!(err.0, "admin");
    }

    #[test]
    fn all_is_all() {
        assert!(CapabilitySet::all().is_all());
        assert!(!CapabilitySet::parse_list("chat").unwrap().is_all());
    }
}
