//! Who made a change: recorded with every lifecycle event.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Through which door a change came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A person signed in to the admin console.
    User,
    /// The `custos` command line on the server host.
    Cli,
    /// A client of the admin API, authenticated by an admin token.
    Api,
}

impl ActorKind {
    /// The lowercase name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Cli => "cli",
            ActorKind::Api => "api",
        }
    }
}

/// Who made a change, as recorded in the outbox event and on the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// Through which door.
    pub kind: ActorKind,
    /// The user name, OS user or token name. Not validated beyond length:
    /// it is recorded, not trusted.
    pub name: String,
    /// Whether the actor passed multi-factor authentication for this session.
    pub mfa: bool,
    /// The client address, when known.
    pub ip: Option<IpAddr>,
    /// The role the actor acted in (a console role such as `admin`, or an
    /// admin token's role); `None` for the host shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Actor {
    /// The longest accepted name, in bytes.
    pub const MAX_NAME_LEN: usize = 256;

    /// An actor of the given kind with no MFA and no address.
    pub fn new(kind: ActorKind, name: impl Into<String>) -> Self {
        Actor {
            kind,
            name: name.into(),
            mfa: false,
            ip: None,
            role: None,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.name)
    }
}
