//! What is watched and what is recorded: targets, attempt outcomes and
//! request-level results.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One place a model is served: a configured provider plus the model name
/// sent upstream. Cheap to clone (two reference-counted strings), so the
/// gateway can build each one once when it builds its route table.
/// Serialised as `{"provider": "...", "model": "..."}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId {
    /// The configured provider name (`[providers.NAME]`).
    pub provider: Arc<str>,
    /// The upstream model name.
    pub model: Arc<str>,
}

impl TargetId {
    /// A target from its provider and upstream model names.
    pub fn new(provider: impl AsRef<str>, model: impl AsRef<str>) -> Self {
        TargetId {
            provider: Arc::from(provider.as_ref()),
            model: Arc::from(model.as_ref()),
        }
    }
}

#[derive(Serialize)]
struct TargetRef<'a> {
    provider: &'a str,
    model: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetOwned {
    provider: String,
    model: String,
}

impl Serialize for TargetId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TargetRef {
            provider: &self.provider,
            model: &self.model,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TargetId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = TargetOwned::deserialize(d)?;
        Ok(TargetId::new(t.provider, t.model))
    }
}

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

impl fmt::Debug for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetId({}/{})", self.provider, self.model)
    }
}

/// Why an upstream attempt failed. These are exactly the failures after
/// which the gateway falls back to the next target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// TCP or TLS connection could not be established.
    Connect,
    /// A connect, first-byte, idle or total timeout fired.
    Timeout,
    /// The exchange broke after it started (reset, malformed HTTP, a stream
    /// that died before its first chunk, an oversized body).
    Transport,
    /// The upstream answered with a 5xx status.
    Status5xx,
    /// The upstream answered 429 Too Many Requests.
    RateLimited,
}

impl FailureKind {
    /// Every kind, in the order used by [`FailureCounts`].
    pub const ALL: [FailureKind; 5] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::Transport,
        FailureKind::Status5xx,
        FailureKind::RateLimited,
    ];

    /// The snake_case name used in events, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Transport => "transport",
            FailureKind::Status5xx => "status_5xx",
            FailureKind::RateLimited => "rate_limited",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one upstream attempt ended, as far as the upstream's health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum AttemptOutcome {
    /// A 2xx (or 1xx/3xx) answer.
    Success,
    /// A 4xx other than 429: the upstream is up and refused this request,
    /// which says nothing bad about its health.
    ClientError {
        /// The status.
        status: u16,
    },
    /// A failure that makes the gateway try the next target.
    Failure {
        /// Why.
        kind: FailureKind,
    },
}

impl AttemptOutcome {
    /// Maps what the gateway records per attempt
    /// (`custos_gateway::Attempt { status, error, .. }`) to an outcome.
    ///
    /// `error` is the gateway's failure kind: `connect`, `timeout`,
    /// `transport`, `too_large` (a transport failure) or `status` (a 5xx or
    /// 429 answer, told apart by `status`).
    pub fn from_attempt(status: Option<u16>, error: Option<&str>) -> Self {
        let failure = |kind| AttemptOutcome::Failure { kind };
        match (error, status) {
            (Some("connect"), _) => failure(FailureKind::Connect),
            (Some("timeout"), _) => failure(FailureKind::Timeout),
            (Some("status"), Some(429)) => failure(FailureKind::RateLimited),
            (Some("status"), _) => failure(FailureKind::Status5xx),
            (Some(_), _) => failure(FailureKind::Transport),
            (None, Some(429)) => failure(FailureKind::RateLimited),
            (None, Some(s)) if s >= 500 => failure(FailureKind::Status5xx),
            (None, Some(s)) if (400..500).contains(&s) => AttemptOutcome::ClientError { status: s },
            (None, _) => AttemptOutcome::Success,
        }
    }

    /// The failure kind, when the attempt failed.
    pub fn failure(self) -> Option<FailureKind> {
        match self {
            AttemptOutcome::Failure { kind } => Some(kind),
            _ => None,
        }
    }
}

/// How a whole client request ended for its public model, after fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Served (any 2xx).
    Success,
    /// The model could not serve it: every target failed, an upstream 5xx or
    /// 429 passed through, or no target was available. This is what the
    /// incident error rate counts.
    Failure,
    /// The caller's fault (4xx other than capacity and rate refusals). Not
    /// counted in error rates.
    ClientError,
    /// Refused by Custos's own capacity limits or rate limits before any
    /// upstream was tried. Counted separately, not as an error.
    Shed,
}

/// Failure counts by [`FailureKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCounts {
    /// Connect failures.
    pub connect: u64,
    /// Timeouts.
    pub timeout: u64,
    /// Transport failures.
    pub transport: u64,
    /// 5xx answers.
    pub status_5xx: u64,
    /// 429 answers.
    pub rate_limited: u64,
}

impl FailureCounts {
    /// The sum of all kinds.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.transport + self.status_5xx + self.rate_limited
    }

    pub(crate) fn from_array(a: [u64; 5]) -> Self {
        FailureCounts {
            connect: a[0],
            timeout: a[1],
            transport: a[2],
            status_5xx: a[3],
            rate_limited: a[4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_gateway_attempts() {
        let cases: [(Option<u16>, Option<&str>, AttemptOutcome); 9] = [
            (
                None,
                Some("connect"),
                AttemptOutcome::Failure {
                    kind: FailureKind::Connect,
                },
            ),
            (
                None,
                Some("timeout"),
                AttemptOutcome::Failure {
                    kind: FailureKind::Timeout,
                },
            ),
            (
                None,
                Some("transport"),
                AttemptOutcome::Failure {
                    kind: FailureKind::Transport,
                },
            ),
            (
                None,
                Some("too_large"),
                AttemptOutcome::Failure {
                    kind: FailureKind::Transport,
                },
            ),
            (
                Some(503),
                Some("status"),
                AttemptOutcome::Failure {
                    kind: FailureKind::Status5xx,
                },
            ),
            (
                Some(429),
                Some("status"),
                AttemptOutcome::Failure {
                    kind: FailureKind::RateLimited,
                },
            ),
            (Some(200), None, AttemptOutcome::Success),
            (Some(400), None, AttemptOutcome::ClientError { status: 400 }),
            (
                Some(502),
                None,
                AttemptOutcome::Failure {
                    kind: FailureKind::Status5xx,
                },
            ),
        ];
        for (status, error, want) in cases {
            assert_eq!(
                AttemptOutcome::from_attempt(status, error),
                want,
                "{status:?} {error:?}"
            );
        }
    }

    #[test]
    fn kinds_index_in_order() {
        for (i, k) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        assert_eq!(TargetId::new("a", "m").to_string(), "a/m");
    }
}
