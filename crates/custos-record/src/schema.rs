//! The typed record schema, version 1.
//!
//! There is deliberately no field for prompt or response content, headers,
//! key material or any free-form JSON: the only maps are
//! [`Admin::changes`] and [`System::details`], whose values are
//! [`Scalar`]s under `[a-z0-9_.]` names, bounded in count and size.
//!
//! Fields of every serialised struct are declared in bytewise key order,
//! which is what makes the derived serialisation canonical; a test checks
//! it on every golden record.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::Timestamp;

/// One audit record: one Merkle leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The 0-based leaf index, assigned by the ledger.
    pub seq: u64,
    /// When the ledger accepted the record, assigned by the ledger.
    pub ts: Timestamp,
    /// The typed content.
    pub body: RecordBody,
}

/// What a record is about; the `type` field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a body is built once and moved into the ledger queue; boxing would add an allocation per request"
)]
pub enum RecordBody {
    /// One request to the `/v1` API.
    Inference(Inference),
    /// One administrative action by a person or tool.
    Admin(Admin),
    /// Something the gateway or ledger did by itself.
    System(System),
}

impl RecordBody {
    /// The record type.
    #[must_use]
    pub fn record_type(&self) -> RecordType {
        match self {
            RecordBody::Inference(_) => RecordType::Inference,
            RecordBody::Admin(_) => RecordType::Admin,
            RecordBody::System(_) => RecordType::System,
        }
    }

    /// The `event` field.
    #[must_use]
    pub fn event(&self) -> &str {
        match self {
            RecordBody::Inference(r) => &r.event,
            RecordBody::Admin(r) => &r.event,
            RecordBody::System(r) => &r.event,
        }
    }
}

/// The `type` field of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordType {
    /// `inference`: a `/v1` request.
    Inference,
    /// `admin`: an administrative action.
    Admin,
    /// `system`: a gateway or ledger event.
    System,
}

impl RecordType {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Inference => "inference",
            RecordType::Admin => "admin",
            RecordType::System => "system",
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request to the `/v1` API, written once when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inference {
    /// The event name, normally `request`.
    pub event: String,
    /// The request ID returned to the client in `X-Request-Id`.
    pub request_id: String,
    /// The API key that made the request; `None` before authentication.
    pub actor: Option<KeyActor>,
    /// Where the request came from.
    pub client: Option<Client>,
    /// The endpoint name, such as `chat.completions`.
    pub endpoint: String,
    /// The HTTP method.
    pub method: String,
    /// The request path, without query string.
    pub path: String,
    /// The model the client asked for.
    pub model_requested: Option<String>,
    /// The upstream model that answered.
    pub model_served: Option<String>,
    /// The provider that answered.
    pub provider: Option<String>,
    /// Every upstream attempt, in order; omitted when empty.
    pub attempts: Vec<Attempt>,
    /// The upstream's own request ID.
    pub upstream_request_id: Option<String>,
    /// The HTTP status sent to the client; 499 when the client went away.
    pub status: u16,
    /// A stable error code when the request failed.
    pub error_code: Option<String>,
    /// Token usage.
    pub usage: Option<Usage>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Microseconds from arrival to the end of the response.
    pub latency_us: u64,
    /// Microseconds from arrival to the first response byte.
    pub ttfb_us: Option<u64>,
}

/// The API key behind an inference request. Only identifiers: never the
/// key itself or its hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyActor {
    /// The public key ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The key's display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// The person or service that owns the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The owner's team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// Where an inference request came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The client's `User-Agent`, truncated to
    /// [`MAX_TEXT_BYTES`](crate::MAX_TEXT_BYTES).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// One upstream attempt of an inference request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// Microseconds until the attempt was decided.
    pub duration_us: u64,
    /// The failure kind (`connect`, `timeout`, `transport`, `status`), when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The model sent upstream.
    pub model: String,
    /// The provider name.
    pub provider: String,
    /// The upstream HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// Token usage of an inference request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Tokens in the prompt or input.
    pub prompt_tokens: u64,
    /// Where the figures came from.
    pub source: UsageSource,
    /// Prompt plus completion, as reported.
    pub total_tokens: u64,
}

/// Where a usage figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// `upstream`: reported by the upstream.
    Upstream,
    /// `estimated`: counted by Custos.
    Estimated,
}

impl From<custos_types::Usage> for Usage {
    fn from(u: custos_types::Usage) -> Self {
        Usage {
            completion_tokens: u.completion_tokens,
            prompt_tokens: u.prompt_tokens,
            source: match u.source {
                custos_types::UsageSource::Upstream => UsageSource::Upstream,
                custos_types::UsageSource::Estimated => UsageSource::Estimated,
            },
            total_tokens: u.total_tokens,
        }
    }
}

/// One administrative action: a key created, a login, a config change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// The event name, such as `key.created` or `login.failed`.
    pub event: String,
    /// Who acted.
    pub actor: AdminActor,
    /// What they did, such as `create` or `revoke`; `[a-z0-9_.]{1,64}`.
    pub action: String,
    /// What they acted on.
    pub target: Option<Target>,
    /// Changed fields, each with its value before and after; only
    /// non-secret metadata. Omitted when empty.
    pub changes: BTreeMap<String, Change>,
    /// The reason the actor gave.
    pub reason: Option<String>,
}

/// The person or tool behind an admin record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminActor {
    /// The client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Whether the session passed multi-factor authentication.
    pub mfa: bool,
    /// The role the user acted in.
    pub role: String,
    /// The user name.
    pub user: String,
    /// Which interface was used.
    pub via: Via,
}

/// The interface an admin action came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `console`: the web console.
    Console,
    /// `api`: the admin API.
    Api,
    /// `cli`: the `custos` command line.
    Cli,
}

/// The object of an admin action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Its identifier.
    pub id: String,
    /// Its kind, such as `key` or `user`; `[a-z0-9_.]{1,64}`.
    pub kind: String,
}

/// One changed field of an admin action. At least one side is present:
/// `before` is absent for a field that was set for the first time, `after`
/// for a field that was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The new value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Scalar>,
    /// The old value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Scalar>,
}

/// Something the gateway or ledger did by itself: started, stopped,
/// recovered, rotated its key, purged old segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    /// The event name, such as `server.started` or `retention.purged`.
    pub event: String,
    /// Flat, bounded details; omitted when empty.
    pub details: BTreeMap<String, Scalar>,
}

impl System {
    /// A system record with no details.
    #[must_use]
    pub fn new(event: impl Into<String>) -> Self {
        System {
            event: event.into(),
            details: BTreeMap::new(),
        }
    }

    /// Adds one detail; a builder for readable call sites.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Scalar>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// A flat value in `changes` or `details`: a string, an integer or a
/// boolean. There is no float, no null, no array and no object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    /// A JSON boolean.
    Bool(bool),
    /// A JSON integer in the `i64` range.
    Int(i64),
    /// A JSON string.
    Str(String),
}

impl From<bool> for Scalar {
    fn from(v: bool) -> Self {
        Scalar::Bool(v)
    }
}

impl From<i64> for Scalar {
    fn from(v: i64) -> Self {
        Scalar::Int(v)
    }
}

impl From<u32> for Scalar {
    fn from(v: u32) -> Self {
        Scalar::Int(i64::from(v))
    }
}

impl From<&str> for Scalar {
    fn from(v: &str) -> Self {
        Scalar::Str(v.to_owned())
    }
}

impl From<String> for Scalar {
    fn from(v: String) -> Self {
        Scalar::Str(v)
    }
}

impl Scalar {
    /// An unsigned count, saturated to `i64::MAX` (record sequence numbers
    /// and sizes never get there).
    #[must_use]
    pub fn count(v: u64) -> Self {
        Scalar::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }

    /// The string value, if this is a string.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer value, if this is an integer.
    #[must_use]
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Scalar::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Bool(b) => s.serialize_bool(*b),
            Scalar::Int(i) => s.serialize_i64(*i),
            Scalar::Str(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a boolean")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("integer out of i64 range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}
