//! The schema rules beyond JSON types: bounded strings, names, paths
//! without query strings, flat bounded maps, and a guard against
//! secret-looking detail names and values.

use std::collections::BTreeMap;

use crate::error::RecordError;
use crate::schema::{Admin, Change, Inference, RecordBody, Scalar, System};

/// The longest encoded record accepted, in bytes.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The longest string field, in bytes, except `reason`.
pub const MAX_TEXT_BYTES: usize = 512;
/// The longest `reason`, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// The most upstream attempts in one inference record.
pub const MAX_ATTEMPTS: usize = 16;
/// The most entries in `changes` or `details`.
pub const MAX_MAP_ENTRIES: usize = 32;
/// The longest name: `event`, `action`, map keys and the like.
const MAX_NAME_BYTES: usize = 64;
/// The longest request ID, as in `custos_types::RequestId`.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Name segments (split on `.` and `_`) that suggest a secret or content
/// in a `changes` or `details` key. Such keys are refused outright: the
/// audit log must never hold them.
const FORBIDDEN_KEY_WORDS: &[&str] = &[
    "authorization",
    "bearer",
    "completion",
    "content",
    "cookie",
    "credential",
    "credentials",
    "messages",
    "passphrase",
    "passwd",
    "password",
    "prompt",
    "secret",
    "secrets",
    "skey",
];

/// Whether `name` matches `[a-z0-9_.]{1,64}`, the rule for event names,
/// actions, target kinds, endpoint names, error codes and map keys.
#[must_use]
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Makes arbitrary text fit a string field: control characters become
/// spaces and the result is cut to at most [`MAX_TEXT_BYTES`] on a
/// character boundary. For values such as a `User-Agent` that come from
/// the network.
#[must_use]
pub fn truncate_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT_BYTES));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_TEXT_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

fn invalid(field: impl Into<String>, reason: &'static str) -> RecordError {
    RecordError::InvalidField {
        field: field.into(),
        reason,
    }
}

fn name(field: &str, value: &str) -> Result<(), RecordError> {
    if is_valid_name(value) {
        Ok(())
    } else {
        Err(invalid(field, "must match [a-z0-9_.]{1,64}"))
    }
}

pub(crate) fn text_max(field: &str, value: &str, max: usize) -> Result<(), RecordError> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty (omit it instead)"));
    }
    if value.len() > max {
        return Err(invalid(field, "is too long"));
    }
    if has_control(value) {
        return Err(invalid(field, "contains a control character"));
    }
    if looks_secret(value) {
        return Err(invalid(field, "looks like a secret"));
    }
    Ok(())
}

fn text(field: &str, value: &str) -> Result<(), RecordError> {
    text_max(field, value, MAX_TEXT_BYTES)
}

fn opt_text(field: &str, value: Option<&String>) -> Result<(), RecordError> {
    value.map_or(Ok(()), |v| text(field, v))
}

/// Whether `s` has a character of Unicode category Cc: C0 controls, DEL,
/// or C1 controls (U+0080 to U+009F, encoded as `C2 80` to `C2 9F`).
/// Byte-wise because this runs on every string of every record, and
/// eight bytes at a time while they are printable ASCII.
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(chunk) = b.get(from..from + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if !maybe_control(u64::from_le_bytes(word)) {
            from += 8;
            continue;
        }
        break;
    }
    b.iter().enumerate().skip(from).any(|(i, &c)| {
        c < 0x20 || c == 0x7f || (c == 0xc2 && b.get(i + 1).is_some_and(|&n| n <= 0x9f))
    })
}

/// Whether any byte of `w` is below 0x20, DEL, or not ASCII (which covers
/// the `C2` lead byte of a C1 control). SWAR tests: no false negatives,
/// and false positives only fall back to the byte-wise check.
fn maybe_control(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let del = w ^ (ONES * 0x7f);
    let is_del = del.wrapping_sub(ONES) & !del;
    (below_space | is_del | w) & HIGH != 0
}

/// Catches the obvious ways a credential could slip into a string field.
fn looks_secret(value: &str) -> bool {
    value.starts_with("PRIVATE+KEY+")
        || value
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
}

pub(crate) fn map_key(field: &str, key: &str) -> Result<(), RecordError> {
    if !is_valid_name(key) {
        return Err(invalid(
            format!("{field}.{key}"),
            "key must match [a-z0-9_.]{1,64}",
        ));
    }
    if key
        .split(['.', '_'])
        .any(|word| FORBIDDEN_KEY_WORDS.contains(&word))
    {
        return Err(invalid(
            format!("{field}.{key}"),
            "key names a secret or content, which the audit log never holds",
        ));
    }
    Ok(())
}

fn scalar(field: &str, value: &Scalar) -> Result<(), RecordError> {
    match value {
        Scalar::Str(s) => text(field, s),
        Scalar::Bool(_) | Scalar::Int(_) => Ok(()),
    }
}

fn bounded_map<V>(field: &str, map: &BTreeMap<String, V>) -> Result<(), RecordError> {
    if map.len() > MAX_MAP_ENTRIES {
        return Err(invalid(field, "has more than 32 entries"));
    }
    map.keys().try_for_each(|k| map_key(field, k))
}

impl RecordBody {
    /// Checks every rule of the schema that the types alone do not
    /// enforce. The ledger calls this before accepting a record, and
    /// [`decode`](crate::decode) calls it on every record it reads.
    ///
    /// # Errors
    ///
    /// [`RecordError::InvalidField`] naming the first field that breaks a
    /// rule.
    pub fn validate(&self) -> Result<(), RecordError> {
        name("event", self.event())?;
        match self {
            RecordBody::Inference(r) => validate_inference(r),
            RecordBody::Admin(r) => validate_admin(r),
            RecordBody::System(r) => validate_system(r),
        }
    }
}

/// Whether `id` matches `[A-Za-z0-9._:-]{1,128}`, the rule for request IDs.
pub(crate) fn request_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `method` matches `[A-Z]{1,16}`.
pub(crate) fn method_ok(method: &str) -> bool {
    !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_uppercase())
}

/// The path rules beyond those of any text: a leading `/` and no query
/// string or fragment.
pub(crate) fn path_ok(path: &str) -> bool {
    path.starts_with('/') && !path.contains(['?', '#'])
}

fn validate_inference(r: &Inference) -> Result<(), RecordError> {
    if !request_id_ok(&r.request_id) {
        return Err(invalid("request_id", "must match [A-Za-z0-9._:-]{1,128}"));
    }
    if let Some(actor) = &r.actor {
        opt_text("actor.key_id", actor.key_id.as_ref())?;
        opt_text("actor.key_name", actor.key_name.as_ref())?;
        opt_text("actor.owner", actor.owner.as_ref())?;
        opt_text("actor.team", actor.team.as_ref())?;
    }
    if let Some(client) = &r.client {
        opt_text("client.user_agent", client.user_agent.as_ref())?;
    }
    name("endpoint", &r.endpoint)?;
    if !method_ok(&r.method) {
        return Err(invalid("method", "must match [A-Z]{1,16}"));
    }
    text("path", &r.path)?;
    if !r.path.starts_with('/') {
        return Err(invalid("path", "must start with '/'"));
    }
    if !path_ok(&r.path) {
        // Query strings can carry credentials; the gateway strips them.
        return Err(invalid(
            "path",
            "must not contain a query string or fragment",
        ));
    }
    opt_text("model_requested", r.model_requested.as_ref())?;
    opt_text("model_served", r.model_served.as_ref())?;
    opt_text("provider", r.provider.as_ref())?;
    if r.attempts.len() > MAX_ATTEMPTS {
        return Err(invalid("attempts", "has more than 16 entries"));
    }
    for (i, a) in r.attempts.iter().enumerate() {
        text(&format!("attempts[{i}].provider"), &a.provider)?;
        text(&format!("attempts[{i}].model"), &a.model)?;
        if let Some(e) = &a.error {
            name(&format!("attempts[{i}].error"), e)?;
        }
    }
    opt_text("upstream_request_id", r.upstream_request_id.as_ref())?;
    if !(100..=599).contains(&r.status) {
        return Err(invalid(
            "status",
            "must be an HTTP status between 100 and 599",
        ));
    }
    if let Some(code) = &r.error_code {
        name("error_code", code)?;
    }
    Ok(())
}

fn validate_admin(r: &Admin) -> Result<(), RecordError> {
    text("actor.user", &r.actor.user)?;
    name("actor.role", &r.actor.role)?;
    name("action", &r.action)?;
    if let Some(t) = &r.target {
        name("target.kind", &t.kind)?;
        text("target.id", &t.id)?;
    }
    bounded_map("changes", &r.changes)?;
    for (key, Change { before, after }) in &r.changes {
        if before.is_none() && after.is_none() {
            return Err(invalid(
                format!("changes.{key}"),
                "needs `before` or `after`",
            ));
        }
        if let Some(v) = before {
            scalar(&format!("changes.{key}.before"), v)?;
        }
        if let Some(v) = after {
            scalar(&format!("changes.{key}.after"), v)?;
        }
    }
    if let Some(reason) = &r.reason {
        text_max("reason", reason, MAX_REASON_BYTES)?;
    }
    Ok(())
}

fn validate_system(r: &System) -> Result<(), RecordError> {
    bounded_map("details", &r.details)?;
    for (key, v) in &r.details {
        scalar(&format!("details.{key}"), v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_detection_matches_unicode() {
        for c in [
            '\0', '\n', '\u{7f}', '\u{80}', '\u{9f}', 'a', 'é', '\u{a0}', '\u{ff}', '€', '\u{2028}',
        ] {
            let s = format!("x{c}y");
            assert_eq!(has_control(&s), c.is_control(), "{c:?}");
        }
    }

    #[test]
    fn word_wise_control_detection_matches_byte_wise() {
        const PIECES: &[&str] = &[
            "a", "Z", " ", "~", "\u{0}", "\u{1f}", "\u{7f}", "\u{80}", "\u{9f}", "\u{a0}", "é",
            "€", "𝄞", "abcdefgh",
        ];
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let s: String = (0..len)
                .map(|i| PIECES[((x >> (i % 60)) as usize + i * 7) % PIECES.len()])
                .collect();
            assert_eq!(has_control(&s), s.chars().any(char::is_control), "{s:?}");
        }
    }

    #[test]
    fn names() {
        for good in ["request", "key.created", "a", "x_1.y", &"a".repeat(64)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "Key", "a-b", "a b", "é", &"a".repeat(65)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn truncate_text_fits_and_cleans() {
        assert_eq!(truncate_text("a\nb"), "a b");
        let long = "é".repeat(400);
        let cut = truncate_text(&long);
        assert!(cut.len() <= MAX_TEXT_BYTES && cut.len() >= MAX_TEXT_BYTES - 1);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn secret_looking_details_are_refused() {
        for key in [
            "password",
            "api.secret",
            "prompt",
            "old_password",
            "content",
        ] {
            let body = RecordBody::System(System::new("x").with(key, "v"));
            assert!(body.validate().is_err(), "{key}");
        }
        let ok = RecordBody::System(System::new("x").with("prompt_count", 3u32));
        // `prompt` is a forbidden word even as part of a name.
        assert!(ok.validate().is_err());
        let ok = RecordBody::System(System::new("x").with("key_id", "k1"));
        assert!(ok.validate().is_ok());
        let bad = RecordBody::System(System::new("x").with("note", "PRIVATE+KEY+a+b+c"));
        assert!(bad.validate().is_err());
    }
}
