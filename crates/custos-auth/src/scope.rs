//! What a key may do: which models, which capabilities, from which networks,
//! and the limits that the gateway enforces with [`crate::limit`].
//!
//! Everything here is least privilege: an empty model list allows no model,
//! and a key restricted to networks is refused when the client address is
//! unknown.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_types::{Capability, CapabilitySet};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::glob;
use crate::limit::Limits;

/// The capabilities a new key gets unless its creator narrows them: chat,
/// stream, embeddings, completions and models.
pub const DEFAULT_CAPABILITIES: [Capability; 5] = [
    Capability::Chat,
    Capability::Stream,
    Capability::Embeddings,
    Capability::Completions,
    Capability::Models,
];

/// [`DEFAULT_CAPABILITIES`] as a set.
pub fn default_capabilities() -> CapabilitySet {
    DEFAULT_CAPABILITIES.into_iter().collect()
}

/// Why a model pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern is empty.
    #[error("model pattern is empty")]
    Empty,
    /// The pattern is longer than [`ModelPattern::MAX_LEN`] bytes.
    #[error("model pattern is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// The length of the pattern in bytes.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// The pattern has a byte that is not printable ASCII (or is a space).
    #[error("model pattern has a character outside printable ascii at byte {position}")]
    BadCharacter {
        /// Byte offset of the first offending byte.
        position: usize,
    },
}

/// A model name, or a glob over model names where `*` matches any run of
/// characters (including none) and `?` matches exactly one.
///
/// Matching is case-sensitive, like provider model IDs. Patterns are 1 to 256
/// bytes of printable ASCII without spaces: model IDs never contain spaces,
/// and a stray space from a config file should fail loudly rather than make a
/// pattern that silently matches nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ModelPattern {
    text: Box<str>,
    wildcard: bool,
}

impl ModelPattern {
    /// The longest pattern accepted, in bytes.
    pub const MAX_LEN: usize = 256;
    /// The longest model name that any pattern can allow, in bytes. Longer
    /// names are refused outright, which also bounds matching time.
    pub const MAX_MODEL_LEN: usize = 256;

    /// Validates a pattern.
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        let bytes = pattern.as_bytes();
        if bytes.is_empty() {
            return Err(PatternError::Empty);
        }
        if bytes.len() > Self::MAX_LEN {
            return Err(PatternError::TooLong {
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        if let Some(position) = bytes.iter().position(|b| !b.is_ascii_graphic()) {
            return Err(PatternError::BadCharacter { position });
        }
        Ok(ModelPattern {
            text: pattern.into(),
            wildcard: bytes.iter().any(|&b| b == b'*' || b == b'?'),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern contains `*` or `?`, so that it may allow models
    /// nobody has reviewed yet.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether `model` matches. Names longer than
    /// [`ModelPattern::MAX_MODEL_LEN`] never match.
    pub fn matches(&self, model: &str) -> bool {
        if model.len() > Self::MAX_MODEL_LEN {
            return false;
        }
        if self.wildcard {
            glob::matches(self.text.as_bytes(), model)
        } else {
            *self.text == *model
        }
    }
}

impl fmt::Display for ModelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ModelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelPattern({:?})", self.text)
    }
}

impl FromStr for ModelPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelPattern::new(s)
    }
}

impl Serialize for ModelPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ModelPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ModelPattern;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a model name or glob such as `gpt-4o*`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelPattern, E> {
                ModelPattern::new(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// The models a key may use. An empty list allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelScope {
    patterns: Vec<ModelPattern>,
}

impl ModelScope {
    /// A scope allowing the models that match any of `patterns`.
    pub fn new(patterns: Vec<ModelPattern>) -> Self {
        ModelScope { patterns }
    }

    /// The scope that allows no model.
    pub fn none() -> Self {
        ModelScope::default()
    }

    /// Parses a comma-separated list such as `gpt-4o, claude-*`; empty items
    /// are skipped.
    pub fn parse_list(s: &str) -> Result<Self, PatternError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(ModelPattern::new)
            .collect()
    }

    /// The patterns, in the order given.
    pub fn patterns(&self) -> &[ModelPattern] {
        &self.patterns
    }

    /// Whether the scope allows no model at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern matches `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(model))
    }

    /// Whether any pattern is a glob. Readiness checks flag such keys,
    /// because they allow models added later without review.
    pub fn is_wildcard(&self) -> bool {
        self.patterns.iter().any(ModelPattern::is_wildcard)
    }
}

impl FromIterator<ModelPattern> for ModelScope {
    fn from_iter<I: IntoIterator<Item = ModelPattern>>(iter: I) -> Self {
        ModelScope::new(iter.into_iter().collect())
    }
}

/// The client networks a key may be used from. An empty list allows any
/// address.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), which dual-stack sockets
/// report for IPv4 clients, are treated as the IPv4 address, both in the
/// configured networks and in the client address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrScope {
    nets: Vec<IpNet>,
}

impl CidrScope {
    /// A scope allowing addresses in any of `nets`. Host bits are cleared and
    /// IPv4-mapped IPv6 networks of prefix /96 or longer become IPv4 networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        CidrScope {
            nets: nets.into_iter().map(canonical_net).collect(),
        }
    }

    /// The scope that allows any address.
    pub fn any() -> Self {
        CidrScope::default()
    }

    /// The networks, in canonical form.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether any address is allowed.
    pub fn is_any(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.is_any() || self.nets.iter().any(|n| n.contains(&ip))
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(v4net) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4net.trunc());
    }
    net.trunc()
}

impl FromIterator<IpNet> for CidrScope {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        CidrScope::new(iter)
    }
}

impl Serialize for CidrScope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.nets.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for CidrScope {
    /// Reads a list of CIDR strings; a bare address means that single host.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        let nets = raw
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| serde::de::Error::custom(format_args!("invalid network `{s}`")))
            })
            .collect::<Result<Vec<_>, D::Error>>()?;
        Ok(CidrScope::new(nets))
    }
}

/// How often a [`TokenBudget`] starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// Every UTC day.
    Day,
    /// Every UTC calendar month.
    Month,
}

impl BudgetPeriod {
    /// The UTC period containing `now`: its first instant and the first
    /// instant of the next period.
    pub fn bounds(self, now: SystemTime) -> (SystemTime, SystemTime) {
        const DAY: i64 = 86_400;
        let secs = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        let day = secs.div_euclid(DAY);
        let (start_day, end_day) = match self {
            BudgetPeriod::Day => (day, day + 1),
            BudgetPeriod::Month => {
                let (y, m, _) = civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m, 1), days_from_civil(ny, nm, 1))
            }
        };
        (at_day(start_day), at_day(end_day))
    }
}

fn at_day(day: i64) -> SystemTime {
    let secs = day.saturating_mul(86_400);
    let d = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

// Howard Hinnant's algorithms (public domain), for the proleptic Gregorian
// calendar: <https://howardhinnant.github.io/date_algorithms.html>.

/// Days since 1970-01-01 to (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    // d is in 1..=31 and m in 1..=12 by construction.
    (
        if m <= 2 { y + 1 } else { y },
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A cap on tokens used per period. Enforcing it needs durable usage
/// counters, so this crate only carries it; the store and gateway enforce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBudget {
    /// Tokens (prompt plus completion) allowed per period.
    pub tokens: u64,
    /// When the count starts over.
    pub period: BudgetPeriod,
}

/// Everything a key is allowed to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Models the key may name. Empty allows none.
    pub models: ModelScope,
    /// Endpoints the key may call, plus `stream` for streamed responses.
    #[serde(default = "default_capabilities")]
    pub capabilities: CapabilitySet,
    /// Client networks the key may be used from. Empty allows any.
    #[serde(default)]
    pub cidrs: CidrScope,
    /// Requests per minute, or `None` for no limit.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute, or `None` for no limit.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// A longer-term token cap, or `None` for no cap.
    #[serde(default)]
    pub budget: Option<TokenBudget>,
}

impl Default for Scope {
    /// No models, the default capabilities, any network and no limits.
    fn default() -> Self {
        Scope {
            models: ModelScope::none(),
            capabilities: default_capabilities(),
            cidrs: CidrScope::any(),
            rpm: None,
            tpm: None,
            budget: None,
        }
    }
}

/// What a request wants to do, as seen by [`Scope::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRequest<'a> {
    /// The model named by the request, or `None` when it names none (such as
    /// `GET /v1/models`).
    pub model: Option<&'a str>,
    /// The endpoint's capability.
    pub capability: Capability,
    /// Whether the request asks for a streamed response.
    pub stream: bool,
    /// The client's address, if known.
    pub client_ip: Option<IpAddr>,
}

/// Why a scope refused a request. Maps to a 403 at the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// The model is not matched by the key's model scope.
    #[error("model {model:?} is not allowed for this key")]
    ModelNotAllowed {
        /// The requested model, cut to [`ModelPattern::MAX_MODEL_LEN`] bytes.
        model: String,
    },
    /// The endpoint's capability, or `stream` for a streamed request, is not
    /// in the key's capabilities.
    #[error("capability `{capability}` is not allowed for this key")]
    CapabilityNotAllowed {
        /// The missing capability.
        capability: Capability,
    },
    /// The client address is outside the key's networks.
    #[error("client address {ip} is not allowed for this key")]
    CidrNotAllowed {
        /// The client address, with IPv4-mapped IPv6 shown as IPv4.
        ip: IpAddr,
    },
    /// The key is restricted to networks but the client address is unknown,
    /// so the request is refused rather than guessed about.
    #[error("client address is unknown and this key is restricted to networks")]
    ClientIpUnknown,
}

impl Denied {
    /// A short, stable name for metrics labels and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::ModelNotAllowed { .. } => "model_not_allowed",
            Denied::CapabilityNotAllowed { .. } => "capability_not_allowed",
            Denied::CidrNotAllowed { .. } => "cidr_not_allowed",
            Denied::ClientIpUnknown => "client_ip_unknown",
        }
    }
}

impl Scope {
    /// Checks a request against the scope, in a fixed order: network,
    /// capability, `stream`, model. Allocates only when refusing a model.
    pub fn check(&self, req: &AccessRequest<'_>) -> Result<(), Denied> {
        if !self.cidrs.is_any() {
            let ip = req.client_ip.ok_or(Denied::ClientIpUnknown)?;
            if !self.cidrs.allows(ip) {
                return Err(Denied::CidrNotAllowed {
                    ip: ip.to_canonical(),
                });
            }
        }
        if !self.capabilities.contains(req.capability) {
            return Err(Denied::CapabilityNotAllowed {
                capability: req.capability,
            });
        }
        if req.stream && !self.capabilities.contains(Capability::Stream) {
            return Err(Denied::CapabilityNotAllowed {
                capability: Capability::Stream,
            });
        }
        if let Some(model) = req.model
            && !self.models.allows(model)
        {
            return Err(Denied::ModelNotAllowed {
                model: truncate(model, ModelPattern::MAX_MODEL_LEN).to_owned(),
            });
        }
        Ok(())
    }

    /// The per-minute limits, for [`crate::limit::RateLimiter::check_request`].
    pub fn limits(&self) -> Limits {
        Limits {
            rpm: self.rpm,
            tpm: self.tpm,
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {

    #[test]
    fn budget_periods_follow_the_utc_calendar() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        // 2024-02-29T13:00:00Z, a leap day.
        let now = at(1_709_211_600);
        assert_eq!(
            BudgetPeriod::Day.bounds(now),
            (at(1_709_164_800), at(1_709_251_200))
        );
        // February 2024 → March 2024.
        assert_eq!(
            BudgetPeriod::Month.bounds(now),
            (at(1_706_745_600), at(1_709_251_200))
        );
        // December rolls into January of the next year.
        let dec = at(1_735_603_200); // 2024-12-31T00:00:00Z
        assert_eq!(BudgetPeriod::Month.bounds(dec).1, at(1_735_689_600));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn scope(models: &str, caps: &str, cidrs: &[&str]) -> Scope {
        Scope {
            models: ModelScope::parse_list(models).unwrap(),
            capabilities: CapabilitySet::parse_list(caps).unwrap(),
            cidrs: cidrs.iter().map(|c| c.parse::<IpNet>().unwrap()).collect(),
            ..Scope::default()
        }
    }

    fn req(model: Option<&str>, capability: Capability, stream: bool) -> AccessRequest<'_> {
        AccessRequest {
            model,
            capability,
            stream,
            client_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        }
    }

    #[test]
    fn pattern_validation() {
        assert_eq!(ModelPattern::new(""), Err(PatternError::Empty));
        assert_eq!(
            ModelPattern::new(&"a".repeat(257)),
            Err(PatternError::TooLong { len: 257, max: 256 })
        );
        assert!(ModelPattern::new(&"a".repeat(256)).is_ok());
        for (bad, position) in [
            (" gpt", 0),
            ("gpt 4", 3),
            ("gpt\n", 3),
            ("gpté", 3),
            ("\u{7f}", 0),
        ] {
            assert_eq!(
                ModelPattern::new(bad),
                Err(PatternError::BadCharacter { position }),
                "{bad:?}"
            );
        }
        for good in [
            "gpt-4o",
            "ft:gpt-4o:org:x:1",
            "models/gemini-1.5-pro",
            "*",
            "a?c",
        ] {
            assert!(ModelPattern::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn empty_model_scope_allows_nothing() {
        let none = ModelScope::none();
        assert!(!none.allows("gpt-4o"));
        assert!(!none.allows(""));
        assert!(!none.is_wildcard());
        assert!(ModelScope::parse_list(" , ").unwrap().is_empty());
    }

    #[test]
    fn model_scope_cases() {
        let s = ModelScope::parse_list("gpt-4o, claude-3-5-*, o?-mini").unwrap();
        assert!(s.is_wildcard());
        for (model, want) in [
            ("gpt-4o", true),
            ("gpt-4o-mini", false),
            ("claude-3-5-sonnet-20241022", true),
            ("claude-3-opus", false),
            ("o1-mini", true),
            ("o3-mini", true),
            ("o1-preview", false),
            ("", false),
        ] {
            assert_eq!(s.allows(model), want, "{model}");
        }
        assert!(
            !ModelScope::parse_list("gpt-4o,gpt-4o-mini")
                .unwrap()
                .is_wildcard()
        );
    }

    #[test]
    fn overlong_model_names_never_match() {
        let any = ModelScope::parse_list("*").unwrap();
        assert!(any.allows(&"m".repeat(256)));
        assert!(!any.allows(&"m".repeat(257)));
    }

    #[test]
    fn cidr_cases() {
        let s = CidrScope::new(
            [
                "10.0.0.0/8",
                "192.168.1.7/32",
                "2001:db8::/32",
                "::ffff:172.16.0.0/108",
            ]
            .iter()
            .map(|n| n.parse::<IpNet>().unwrap()),
        );
        let cases: &[(&str, bool)] = &[
            ("10.255.0.1", true),
            ("11.0.0.1", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            // IPv4-mapped clients are judged as IPv4.
            ("::ffff:10.9.8.7", true),
            ("::ffff:11.9.8.7", false),
            // A mapped network in the config is an IPv4 network too.
            ("172.16.5.5", true),
            ("::ffff:172.16.5.5", true),
            ("172.32.0.1", false),
            ("::1", false),
        ];
        for &(ip, want) in cases {
            assert_eq!(s.allows(ip.parse().unwrap()), want, "{ip}");
        }
        assert_eq!(s.nets()[3].to_string(), "172.16.0.0/12");
        assert!(CidrScope::any().allows(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn cidr_host_bits_are_cleared() {
        let s = CidrScope::new(["10.1.2.3/8".parse::<IpNet>().unwrap()]);
        assert_eq!(s.nets()[0].to_string(), "10.0.0.0/8");
    }

    #[test]
    fn check_denies_in_order() {
        let s = scope("gpt-4o*", "chat,models", &["10.0.0.0/8"]);
        assert_eq!(
            s.check(&req(Some("gpt-4o-mini"), Capability::Chat, false)),
            Ok(())
        );
        assert_eq!(s.check(&req(None, Capability::Models, false)), Ok(()));
        assert_eq!(
            s.check(&req(Some("gpt-4o"), Capability::Chat, true)),
            Err(Denied::CapabilityNotAllowed {
                capability: Capability::Stream
            })
        );
        assert_eq!(
            s.check(&req(Some("gpt-4o"), Capability::Embeddings, false)),
            Err(Denied::CapabilityNotAllowed {
                capability: Capability::Embeddings
            })
        );
        assert_eq!(
            s.check(&req(Some("o1"), Capability::Chat, false)),
            Err(Denied::ModelNotAllowed { model: "o1".into() })
        );
        let mut outside = req(Some("o1"), Capability::Embeddings, true);
        outside.client_ip = Some("::ffff:8.8.8.8".parse().unwrap());
        assert_eq!(
            s.check(&outside),
            Err(Denied::CidrNotAllowed {
                ip: "8.8.8.8".parse().unwrap()
            })
        );
        outside.client_ip = None;
        assert_eq!(s.check(&outside), Err(Denied::ClientIpUnknown));
    }

    #[test]
    fn denied_messages_are_lowercase_and_escaped() {
        let s = scope("gpt-4o", "chat", &[]);
        let err = s
            .check(&req(Some("evil\n[INFO] forged"), Capability::Chat, false))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"model "evil\n[INFO] forged" is not allowed for this key"#
        );
        let long = "é".repeat(200);
        let Err(Denied::ModelNotAllowed { model }) =
            s.check(&req(Some(&long), Capability::Chat, false))
        else {
            panic!("expected a model denial");
        };
        assert_eq!(model.len(), 256);
        assert_eq!(err.code(), "model_not_allowed");
    }

    #[test]
    fn default_scope_is_least_privilege() {
        let s = Scope::default();
        assert_eq!(s.capabilities, CapabilitySet::all());
        assert_eq!(default_capabilities(), CapabilitySet::all());
        assert!(
            s.check(&req(Some("gpt-4o"), Capability::Chat, false))
                .is_err()
        );
        assert!(s.check(&req(None, Capability::Models, true)).is_ok());
    }

    #[test]
    fn serde_shapes() {
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, SeqDeserializer};
        let nets: SeqDeserializer<_, Error> =
            vec!["10.0.0.0/8", "192.168.0.1", "::ffff:1.2.3.4"].into_deserializer();
        let s = CidrScope::deserialize(nets).unwrap();
        let shown: Vec<String> = s.nets().iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.0.1/32", "1.2.3.4/32"]);
        let bad: SeqDeserializer<_, Error> = vec!["10.0.0.0/33"].into_deserializer();
        let err = CidrScope::deserialize(bad).unwrap_err();
        assert_eq!(err.to_string(), "invalid network `10.0.0.0/33`");
        let pats: SeqDeserializer<_, Error> = vec!["gpt-4o", "bad pattern"].into_deserializer();
        let err = ModelScope::deserialize(pats).unwrap_err();
        assert!(
            err.to_string().contains("printable ascii at byte 3"),
            "{err}"
        );
    }
}
