//! The single-pass canonical reader behind [`decode`](crate::decode) and
//! [`decode_view`](crate::decode_view).
//!
//! It accepts exactly the bytes that the canonical encoder writes for a
//! record that passes validation, and checks that while it reads: keys in
//! bytewise order (which also rules out duplicates), no whitespace, the
//! encoder's string escapes and only those, integers in shortest form, the
//! JSON type of every field, the fields each record type requires or
//! forbids, and every rule of `validate`. Nothing is re-encoded: an input
//! that passes all of this is the canonical encoding of what was read.
//! Strings are borrowed from the input unless they contain an escape.
//!
//! It gives no reasons. When it rejects an input, the callers run the serde
//! decoder (`codec::serde_decode`, the strict decode this reader replaced)
//! for the error, so that messages stay exactly as they were; that decoder
//! is also the oracle of the differential tests at the end of this file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::SCHEMA_VERSION;
use crate::canonical::escape_mask;
use crate::schema::{
    Admin, AdminActor, Attempt, Change, Client, Inference, KeyActor, Record, RecordBody,
    RecordType, Scalar, System, Target, Usage, UsageSource, Via,
};
use crate::time::Timestamp;
use crate::validate::{
    MAX_ATTEMPTS, MAX_MAP_ENTRIES, MAX_REASON_BYTES, MAX_RECORD_BYTES, MAX_TEXT_BYTES,
    is_valid_name, map_key, method_ok, path_ok, request_id_ok, text_max,
};

/// The input is not a canonical, valid record; the reason is left to the
/// serde decoder.
pub(crate) struct Bad;

type R<T> = Result<T, Bad>;

/// A string field as read: borrowed unless it held an escape.
type Str<'a> = Cow<'a, str>;

/// A cursor over the input. The input is valid UTF-8, and every position
/// the reader slices at is next to an ASCII byte, so every slice is a
/// character boundary.
struct Reader<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn next(&mut self) -> R<u8> {
        let b = self.peek().ok_or(Bad)?;
        self.i += 1;
        Ok(b)
    }

    fn expect(&mut self, c: u8) -> R<()> {
        if self.next()? == c { Ok(()) } else { Err(Bad) }
    }

    fn slice(&self, from: usize, to: usize) -> R<&'a str> {
        self.s.get(from..to).ok_or(Bad)
    }

    /// After a value in an object or array: `true` after a `,`, `false`
    /// after the closing byte.
    fn more(&mut self, close: u8) -> R<bool> {
        match self.next()? {
            b',' => Ok(true),
            c if c == close => Ok(false),
            _ => Err(Bad),
        }
    }

    /// Moves to the next `"`, `\` or control character inside a string
    /// and returns it; eight bytes at a time while there is none.
    fn skip_to_special(&mut self) -> R<u8> {
        let b = self.s.as_bytes();
        loop {
            if let Some(chunk) = b.get(self.i..self.i + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let mask = escape_mask(u64::from_le_bytes(word));
                if mask == 0 {
                    self.i += 8;
                    continue;
                }
                // The lowest flagged byte is exact (see `escape_mask`).
                self.i += (mask.trailing_zeros() / 8) as usize;
                return b.get(self.i).copied().ok_or(Bad);
            }
            let c = *b.get(self.i).ok_or(Bad)?;
            if c == b'"' || c == b'\\' || c < 0x20 {
                return Ok(c);
            }
            self.i += 1;
        }
    }

    /// A string that cannot need an escape: a key, a name, an enum value,
    /// a time, an address, a request ID. A backslash rejects the input,
    /// which is exact: an escape in such a value is either not the
    /// encoder's, or stands for a character the field does not allow.
    fn plain(&mut self) -> R<&'a str> {
        self.expect(b'"')?;
        let start = self.i;
        if self.skip_to_special()? != b'"' {
            return Err(Bad);
        }
        let s = self.slice(start, self.i)?;
        self.i += 1;
        Ok(s)
    }

    /// An object key and its colon.
    fn key(&mut self) -> R<&'a str> {
        let k = self.plain()?;
        self.expect(b':')?;
        Ok(k)
    }

    /// Any string, with only the escapes the encoder writes: `\"`, `\\`,
    /// `\b`, `\t`, `\n`, `\f`, `\r`, and `\u00xx` (lowercase) for the other
    /// control characters.
    fn string(&mut self) -> R<Str<'a>> {
        self.expect(b'"')?;
        let start = self.i;
        let mut c = self.skip_to_special()?;
        if c == b'"' {
            let s = self.slice(start, self.i)?;
            self.i += 1;
            return Ok(Cow::Borrowed(s));
        }
        let mut out = String::from(self.slice(start, self.i)?);
        loop {
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    self.i += 1;
                    out.push(self.escape()?);
                }
                _ => return Err(Bad),
            }
            let from = self.i;
            c = self.skip_to_special()?;
            out.push_str(self.slice(from, self.i)?);
        }
    }

    /// The character of the escape after a backslash, if it is the one
    /// the encoder writes for that character.
    fn escape(&mut self) -> R<char> {
        Ok(match self.next()? {
            b'"' => '"',
            b'\\' => '\\',
            b'b' => '\u{8}',
            b't' => '\t',
            b'n' => '\n',
            b'f' => '\u{c}',
            b'r' => '\r',
            b'u' => {
                let hex = |c: u8| match c {
                    b'0'..=b'9' => Ok(c - b'0'),
                    b'a'..=b'f' => Ok(c - b'a' + 10),
                    _ => Err(Bad),
                };
                self.expect(b'0')?;
                self.expect(b'0')?;
                let v = hex(self.next()?)? << 4 | hex(self.next()?)?;
                if v >= 0x20 || matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                    return Err(Bad);
                }
                char::from(v)
            }
            _ => return Err(Bad),
        })
    }

    /// A non-negative integer in shortest form that fits a `u64`.
    fn u64(&mut self) -> R<u64> {
        let first = self.next()?;
        if first == b'0' {
            return if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                Err(Bad)
            } else {
                Ok(0)
            };
        }
        if !(b'1'..=b'9').contains(&first) {
            return Err(Bad);
        }
        let mut n = u64::from(first - b'0');
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(c - b'0')))
                .ok_or(Bad)?;
            self.i += 1;
        }
        Ok(n)
    }

    fn u16(&mut self) -> R<u16> {
        u16::try_from(self.u64()?).map_err(|_| Bad)
    }

    /// An `i64` in shortest form. `-0` is not one: serde reads it as a
    /// float.
    fn i64(&mut self) -> R<i64> {
        if self.peek() == Some(b'-') {
            self.i += 1;
            if self.peek() == Some(b'0') {
                return Err(Bad);
            }
            0i64.checked_sub_unsigned(self.u64()?).ok_or(Bad)
        } else {
            i64::try_from(self.u64()?).map_err(|_| Bad)
        }
    }

    fn bool(&mut self) -> R<bool> {
        let rest = self.s.as_bytes().get(self.i..).ok_or(Bad)?;
        if rest.starts_with(b"true") {
            self.i += 4;
            Ok(true)
        } else if rest.starts_with(b"false") {
            self.i += 5;
            Ok(false)
        } else {
            Err(Bad)
        }
    }

    /// A string, an integer or a boolean.
    fn scalar(&mut self) -> R<ScalarRef<'a>> {
        match self.peek().ok_or(Bad)? {
            b'"' => Ok(ScalarRef::Str(self.string()?)),
            b't' | b'f' => Ok(ScalarRef::Bool(self.bool()?)),
            _ => Ok(ScalarRef::Int(self.i64()?)),
        }
    }

    /// An IP address in the form `Display` writes (RFC 5952 for IPv6):
    /// serde parses any form `FromStr` takes, and the canonical check then
    /// keeps only this one.
    fn ip(&mut self) -> R<IpAddr> {
        let text = self.plain()?;
        let ip: IpAddr = text.parse().map_err(|_| Bad)?;
        let mut buf = [0u8; 48];
        let len = {
            use std::io::Write as _;
            let mut cursor = &mut buf[..];
            write!(cursor, "{ip}").map_err(|_| Bad)?;
            48 - cursor.len()
        };
        if buf.get(..len) == Some(text.as_bytes()) {
            Ok(ip)
        } else {
            Err(Bad)
        }
    }
}

/// Keys of one object must come in strictly increasing order; `idx` is
/// the key's position in the object's sorted key list.
fn order(last: &mut u8, idx: u8) -> R<()> {
    if idx > *last {
        *last = idx;
        Ok(())
    } else {
        Err(Bad)
    }
}

fn ok(rule: bool) -> R<()> {
    if rule { Ok(()) } else { Err(Bad) }
}

fn name(s: &str) -> R<()> {
    ok(is_valid_name(s))
}

fn text(s: &str) -> R<()> {
    text_max("", s, MAX_TEXT_BYTES).map_err(|_| Bad)
}

fn opt_text(s: Option<&Str<'_>>) -> R<()> {
    s.map_or(Ok(()), |s| text(s))
}

/// A `changes` or `details` value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScalarRef<'a> {
    Bool(bool),
    Int(i64),
    Str(Str<'a>),
}

impl ScalarRef<'_> {
    fn check(&self) -> R<()> {
        match self {
            ScalarRef::Str(s) => text(s),
            ScalarRef::Bool(_) | ScalarRef::Int(_) => Ok(()),
        }
    }

    fn to_owned(&self) -> Scalar {
        match self {
            ScalarRef::Bool(b) => Scalar::Bool(*b),
            ScalarRef::Int(i) => Scalar::Int(*i),
            ScalarRef::Str(s) => Scalar::Str(s.clone().into_owned()),
        }
    }
}

/// Both actor shapes, told apart by the record type.
#[derive(Default)]
struct ActorRef<'a> {
    ip: Option<IpAddr>,
    key_id: Option<Str<'a>>,
    key_name: Option<Str<'a>>,
    mfa: Option<bool>,
    owner: Option<Str<'a>>,
    role: Option<&'a str>,
    team: Option<Str<'a>>,
    user: Option<Str<'a>>,
    via: Option<Via>,
}

fn actor<'a>(r: &mut Reader<'a>) -> R<ActorRef<'a>> {
    let mut a = ActorRef::default();
    r.expect(b'{')?;
    if r.peek() == Some(b'}') {
        r.i += 1;
        return Ok(a);
    }
    let mut last = 0;
    loop {
        match r.key()? {
            "ip" => {
                order(&mut last, 1)?;
                a.ip = Some(r.ip()?);
            }
            "key_id" => {
                order(&mut last, 2)?;
                a.key_id = Some(r.string()?);
            }
            "key_name" => {
                order(&mut last, 3)?;
                a.key_name = Some(r.string()?);
            }
            "mfa" => {
                order(&mut last, 4)?;
                a.mfa = Some(r.bool()?);
            }
            "owner" => {
                order(&mut last, 5)?;
                a.owner = Some(r.string()?);
            }
            "role" => {
                order(&mut last, 6)?;
                a.role = Some(r.plain()?);
            }
            "team" => {
                order(&mut last, 7)?;
                a.team = Some(r.string()?);
            }
            "user" => {
                order(&mut last, 8)?;
                a.user = Some(r.string()?);
            }
            "via" => {
                order(&mut last, 9)?;
                a.via = Some(match r.plain()? {
                    "console" => Via::Console,
                    "api" => Via::Api,
                    "cli" => Via::Cli,
                    _ => return Err(Bad),
                });
            }
            _ => return Err(Bad),
        }
        if !r.more(b'}')? {
            return Ok(a);
        }
    }
}

struct ClientRef<'a> {
    ip: Option<IpAddr>,
    user_agent: Option<Str<'a>>,
}

fn client<'a>(r: &mut Reader<'a>) -> R<ClientRef<'a>> {
    let mut c = ClientRef {
        ip: None,
        user_agent: None,
    };
    r.expect(b'{')?;
    if r.peek() == Some(b'}') {
        r.i += 1;
        return Ok(c);
    }
    let mut last = 0;
    loop {
        match r.key()? {
            "ip" => {
                order(&mut last, 1)?;
                c.ip = Some(r.ip()?);
            }
            "user_agent" => {
                order(&mut last, 2)?;
                c.user_agent = Some(r.string()?);
            }
            _ => return Err(Bad),
        }
        if !r.more(b'}')? {
            return Ok(c);
        }
    }
}

fn usage(r: &mut Reader<'_>) -> R<Usage> {
    r.expect(b'{')?;
    let mut ord = 0;
    let mut field = |r: &mut Reader<'_>, key: &str, idx: u8| -> R<()> {
        if r.key()? != key {
            return Err(Bad);
        }
        order(&mut ord, idx)
    };
    field(r, "completion_tokens", 1)?;
    let completion_tokens = r.u64()?;
    r.expect(b',')?;
    field(r, "prompt_tokens", 2)?;
    let prompt_tokens = r.u64()?;
    r.expect(b',')?;
    field(r, "source", 3)?;
    let source = match r.plain()? {
        "upstream" => UsageSource::Upstream,
        "estimated" => UsageSource::Estimated,
        _ => return Err(Bad),
    };
    r.expect(b',')?;
    field(r, "total_tokens", 4)?;
    let total_tokens = r.u64()?;
    r.expect(b'}')?;
    Ok(Usage {
        completion_tokens,
        prompt_tokens,
        source,
        total_tokens,
    })
}

struct TargetRef<'a> {
    id: Str<'a>,
    kind: &'a str,
}

fn target<'a>(r: &mut Reader<'a>) -> R<TargetRef<'a>> {
    r.expect(b'{')?;
    if r.key()? != "id" {
        return Err(Bad);
    }
    let id = r.string()?;
    r.expect(b',')?;
    if r.key()? != "kind" {
        return Err(Bad);
    }
    let kind = r.plain()?;
    r.expect(b'}')?;
    Ok(TargetRef { id, kind })
}

struct AttemptRef<'a> {
    duration_us: u64,
    error: Option<&'a str>,
    model: Str<'a>,
    provider: Str<'a>,
    status: Option<u16>,
}

/// One attempt, validated.
fn attempt<'a>(r: &mut Reader<'a>) -> R<AttemptRef<'a>> {
    r.expect(b'{')?;
    let (mut duration_us, mut error, mut model, mut provider, mut status) =
        (None, None, None, None, None);
    let mut last = 0;
    loop {
        match r.key()? {
            "duration_us" => {
                order(&mut last, 1)?;
                duration_us = Some(r.u64()?);
            }
            "error" => {
                order(&mut last, 2)?;
                let e = r.plain()?;
                name(e)?;
                error = Some(e);
            }
            "model" => {
                order(&mut last, 3)?;
                let m = r.string()?;
                text(&m)?;
                model = Some(m);
            }
            "provider" => {
                order(&mut last, 4)?;
                let p = r.string()?;
                text(&p)?;
                provider = Some(p);
            }
            "status" => {
                order(&mut last, 5)?;
                status = Some(r.u16()?);
            }
            _ => return Err(Bad),
        }
        if !r.more(b'}')? {
            break;
        }
    }
    Ok(AttemptRef {
        duration_us: duration_us.ok_or(Bad)?,
        error,
        model: model.ok_or(Bad)?,
        provider: provider.ok_or(Bad)?,
        status,
    })
}

/// A non-empty array of at most [`MAX_ATTEMPTS`] valid attempts.
fn attempts<'a>(r: &mut Reader<'a>, mut each: impl FnMut(AttemptRef<'a>)) -> R<()> {
    r.expect(b'[')?;
    let mut n = 0;
    loop {
        each(attempt(r)?);
        n += 1;
        if n > MAX_ATTEMPTS {
            return Err(Bad);
        }
        if !r.more(b']')? {
            return Ok(());
        }
    }
}

/// A non-empty map of at most [`MAX_MAP_ENTRIES`] entries under valid,
/// strictly increasing keys; `value` reads and checks each value.
fn map<'a, V>(
    r: &mut Reader<'a>,
    mut value: impl FnMut(&mut Reader<'a>) -> R<V>,
    mut each: impl FnMut(&'a str, V),
) -> R<()> {
    r.expect(b'{')?;
    let mut prev: Option<&str> = None;
    let mut n = 0;
    loop {
        let key = r.key()?;
        if prev.is_some_and(|p| p >= key) || map_key("", key).is_err() {
            return Err(Bad);
        }
        prev = Some(key);
        each(key, value(r)?);
        n += 1;
        if n > MAX_MAP_ENTRIES {
            return Err(Bad);
        }
        if !r.more(b'}')? {
            return Ok(());
        }
    }
}

/// One `changes` entry: `after`, `before` or both, each a valid scalar.
/// An empty object fails at its first key, as validation requires.
fn change<'a>(r: &mut Reader<'a>) -> R<(Option<ScalarRef<'a>>, Option<ScalarRef<'a>>)> {
    r.expect(b'{')?;
    let (mut after, mut before) = (None, None);
    let mut last = 0;
    loop {
        match r.key()? {
            "after" => {
                order(&mut last, 1)?;
                let v = r.scalar()?;
                v.check()?;
                after = Some(v);
            }
            "before" => {
                order(&mut last, 2)?;
                let v = r.scalar()?;
                v.check()?;
                before = Some(v);
            }
            _ => return Err(Bad),
        }
        if !r.more(b'}')? {
            return Ok((after, before));
        }
    }
}

fn changes<'a>(
    r: &mut Reader<'a>,
    each: impl FnMut(&'a str, (Option<ScalarRef<'a>>, Option<ScalarRef<'a>>)),
) -> R<()> {
    map(r, change, each)
}

fn details<'a>(r: &mut Reader<'a>, each: impl FnMut(&'a str, ScalarRef<'a>)) -> R<()> {
    map(
        r,
        |r| {
            let v = r.scalar()?;
            v.check()?;
            Ok(v)
        },
        each,
    )
}

/// Reads a whole value with `read` and returns the text it spanned.
fn span<'a>(r: &mut Reader<'a>, read: impl FnOnce(&mut Reader<'a>) -> R<()>) -> R<&'a str> {
    let start = r.i;
    read(r)?;
    r.slice(start, r.i)
}

/// Every top-level field of every record type, as read. The variable-length
/// parts (`attempts`, `changes`, `details`) are checked while reading and
/// kept as their text, to be walked again only if an owned [`Record`] is
/// wanted.
#[derive(Default)]
struct Top<'a> {
    action: Option<&'a str>,
    actor: Option<ActorRef<'a>>,
    attempts: Option<&'a str>,
    changes: Option<&'a str>,
    client: Option<ClientRef<'a>>,
    details: Option<&'a str>,
    endpoint: Option<&'a str>,
    error_code: Option<&'a str>,
    event: Option<&'a str>,
    latency_us: Option<u64>,
    method: Option<&'a str>,
    model_requested: Option<Str<'a>>,
    model_served: Option<Str<'a>>,
    path: Option<Str<'a>>,
    provider: Option<Str<'a>>,
    reason: Option<Str<'a>>,
    request_id: Option<&'a str>,
    seq: Option<u64>,
    status: Option<u16>,
    stream: Option<bool>,
    target: Option<TargetRef<'a>>,
    ts: Option<Timestamp>,
    ttfb_us: Option<u64>,
    record_type: Option<RecordType>,
    upstream_request_id: Option<Str<'a>>,
    usage: Option<Usage>,
    v: bool,
}

/// Reads and checks a whole record.
fn read(bytes: &[u8]) -> R<Top<'_>> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(Bad);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| Bad)?;
    let mut r = Reader { s, i: 0 };
    let mut t = Top::default();
    r.expect(b'{')?;
    let mut last = 0;
    loop {
        match r.key()? {
            "action" => {
                order(&mut last, 1)?;
                t.action = Some(r.plain()?);
            }
            "actor" => {
                order(&mut last, 2)?;
                t.actor = Some(actor(&mut r)?);
            }
            "attempts" => {
                order(&mut last, 3)?;
                t.attempts = Some(span(&mut r, |r| attempts(r, |_| {}))?);
            }
            "changes" => {
                order(&mut last, 4)?;
                t.changes = Some(span(&mut r, |r| changes(r, |_, _| {}))?);
            }
            "client" => {
                order(&mut last, 5)?;
                t.client = Some(client(&mut r)?);
            }
            "details" => {
                order(&mut last, 6)?;
                t.details = Some(span(&mut r, |r| details(r, |_, _| {}))?);
            }
            "endpoint" => {
                order(&mut last, 7)?;
                t.endpoint = Some(r.plain()?);
            }
            "error_code" => {
                order(&mut last, 8)?;
                t.error_code = Some(r.plain()?);
            }
            "event" => {
                order(&mut last, 9)?;
                t.event = Some(r.plain()?);
            }
            "latency_us" => {
                order(&mut last, 10)?;
                t.latency_us = Some(r.u64()?);
            }
            "method" => {
                order(&mut last, 11)?;
                t.method = Some(r.plain()?);
            }
            "model_requested" => {
                order(&mut last, 12)?;
                t.model_requested = Some(r.string()?);
            }
            "model_served" => {
                order(&mut last, 13)?;
                t.model_served = Some(r.string()?);
            }
            "path" => {
                order(&mut last, 14)?;
                t.path = Some(r.string()?);
            }
            "provider" => {
                order(&mut last, 15)?;
                t.provider = Some(r.string()?);
            }
            "reason" => {
                order(&mut last, 16)?;
                t.reason = Some(r.string()?);
            }
            "request_id" => {
                order(&mut last, 17)?;
                t.request_id = Some(r.plain()?);
            }
            "seq" => {
                order(&mut last, 18)?;
                t.seq = Some(r.u64()?);
            }
            "status" => {
                order(&mut last, 19)?;
                t.status = Some(r.u16()?);
            }
            "stream" => {
                order(&mut last, 20)?;
                t.stream = Some(r.bool()?);
            }
            "target" => {
                order(&mut last, 21)?;
                t.target = Some(target(&mut r)?);
            }
            "ts" => {
                order(&mut last, 22)?;
                t.ts = Some(Timestamp::parse(r.plain()?).map_err(|_| Bad)?);
            }
            "ttfb_us" => {
                order(&mut last, 23)?;
                t.ttfb_us = Some(r.u64()?);
            }
            "type" => {
                order(&mut last, 24)?;
                t.record_type = Some(match r.plain()? {
                    "inference" => RecordType::Inference,
                    "admin" => RecordType::Admin,
                    "system" => RecordType::System,
                    _ => return Err(Bad),
                });
            }
            "upstream_request_id" => {
                order(&mut last, 25)?;
                t.upstream_request_id = Some(r.string()?);
            }
            "usage" => {
                order(&mut last, 26)?;
                t.usage = Some(usage(&mut r)?);
            }
            "v" => {
                order(&mut last, 27)?;
                t.v = r.u64()? == SCHEMA_VERSION;
                if !t.v {
                    return Err(Bad);
                }
            }
            _ => return Err(Bad),
        }
        if !r.more(b'}')? {
            break;
        }
    }
    if r.i != s.len() || !t.v {
        return Err(Bad);
    }
    name(t.event.ok_or(Bad)?)?;
    match t.record_type.ok_or(Bad)? {
        RecordType::Inference => check_inference(&t)?,
        RecordType::Admin => check_admin(&t)?,
        RecordType::System => check_system(&t)?,
    }
    Ok(t)
}

/// Presence rules and validation of an inference record (as
/// `Wire::into_record` and `validate_inference`).
fn check_inference(t: &Top<'_>) -> R<()> {
    ok(t.action.is_none()
        && t.changes.is_none()
        && t.details.is_none()
        && t.reason.is_none()
        && t.target.is_none())?;
    if let Some(a) = &t.actor {
        ok(a.ip.is_none()
            && a.mfa.is_none()
            && a.role.is_none()
            && a.user.is_none()
            && a.via.is_none())?;
        opt_text(a.key_id.as_ref())?;
        opt_text(a.key_name.as_ref())?;
        opt_text(a.owner.as_ref())?;
        opt_text(a.team.as_ref())?;
    }
    ok(t.request_id.is_some_and(request_id_ok))?;
    if let Some(c) = &t.client {
        opt_text(c.user_agent.as_ref())?;
    }
    name(t.endpoint.ok_or(Bad)?)?;
    ok(t.method.is_some_and(method_ok))?;
    let path = t.path.as_ref().ok_or(Bad)?;
    text(path)?;
    ok(path_ok(path))?;
    opt_text(t.model_requested.as_ref())?;
    opt_text(t.model_served.as_ref())?;
    opt_text(t.provider.as_ref())?;
    opt_text(t.upstream_request_id.as_ref())?;
    ok(t.status.is_some_and(|s| (100..=599).contains(&s)))?;
    if let Some(code) = t.error_code {
        name(code)?;
    }
    ok(t.stream.is_some() && t.latency_us.is_some())
}

/// Whether any field that only inference records have is present.
fn has_inference_fields(t: &Top<'_>) -> bool {
    t.attempts.is_some()
        || t.client.is_some()
        || t.endpoint.is_some()
        || t.error_code.is_some()
        || t.latency_us.is_some()
        || t.method.is_some()
        || t.model_requested.is_some()
        || t.model_served.is_some()
        || t.path.is_some()
        || t.provider.is_some()
        || t.request_id.is_some()
        || t.status.is_some()
        || t.stream.is_some()
        || t.ttfb_us.is_some()
        || t.upstream_request_id.is_some()
        || t.usage.is_some()
}

fn check_admin(t: &Top<'_>) -> R<()> {
    ok(t.details.is_none() && !has_inference_fields(t))?;
    let a = t.actor.as_ref().ok_or(Bad)?;
    ok(a.key_id.is_none() && a.key_name.is_none() && a.owner.is_none() && a.team.is_none())?;
    ok(a.mfa.is_some() && a.via.is_some())?;
    text(a.user.as_ref().ok_or(Bad)?)?;
    name(a.role.ok_or(Bad)?)?;
    name(t.action.ok_or(Bad)?)?;
    if let Some(target) = &t.target {
        name(target.kind)?;
        text(&target.id)?;
    }
    if let Some(reason) = &t.reason {
        text_max("", reason, MAX_REASON_BYTES).map_err(|_| Bad)?;
    }
    Ok(())
}

fn check_system(t: &Top<'_>) -> R<()> {
    ok(t.action.is_none()
        && t.actor.is_none()
        && t.changes.is_none()
        && t.reason.is_none()
        && t.target.is_none()
        && !has_inference_fields(t))
}

fn owned(s: Option<Str<'_>>) -> Option<String> {
    s.map(Cow::into_owned)
}

/// Reads, checks and copies out a whole record.
pub(crate) fn record(bytes: &[u8]) -> R<Record> {
    let t = read(bytes)?;
    let body = match t.record_type.ok_or(Bad)? {
        RecordType::Inference => {
            let mut attempt_list = Vec::new();
            if let Some(text) = t.attempts {
                attempts(&mut Reader { s: text, i: 0 }, |a| {
                    attempt_list.push(Attempt {
                        duration_us: a.duration_us,
                        error: a.error.map(str::to_owned),
                        model: a.model.into_owned(),
                        provider: a.provider.into_owned(),
                        status: a.status,
                    });
                })?;
            }
            RecordBody::Inference(Inference {
                event: t.event.ok_or(Bad)?.to_owned(),
                request_id: t.request_id.ok_or(Bad)?.to_owned(),
                actor: t.actor.map(|a| KeyActor {
                    key_id: owned(a.key_id),
                    key_name: owned(a.key_name),
                    owner: owned(a.owner),
                    team: owned(a.team),
                }),
                client: t.client.map(|c| Client {
                    ip: c.ip,
                    user_agent: owned(c.user_agent),
                }),
                endpoint: t.endpoint.ok_or(Bad)?.to_owned(),
                method: t.method.ok_or(Bad)?.to_owned(),
                path: owned(t.path).ok_or(Bad)?,
                model_requested: owned(t.model_requested),
                model_served: owned(t.model_served),
                provider: owned(t.provider),
                attempts: attempt_list,
                upstream_request_id: owned(t.upstream_request_id),
                status: t.status.ok_or(Bad)?,
                error_code: t.error_code.map(str::to_owned),
                usage: t.usage,
                stream: t.stream.ok_or(Bad)?,
                latency_us: t.latency_us.ok_or(Bad)?,
                ttfb_us: t.ttfb_us,
            })
        }
        RecordType::Admin => {
            let mut change_map = BTreeMap::new();
            if let Some(text) = t.changes {
                changes(&mut Reader { s: text, i: 0 }, |k, (after, before)| {
                    change_map.insert(
                        k.to_owned(),
                        Change {
                            after: after.as_ref().map(ScalarRef::to_owned),
                            before: before.as_ref().map(ScalarRef::to_owned),
                        },
                    );
                })?;
            }
            let a = t.actor.ok_or(Bad)?;
            RecordBody::Admin(Admin {
                event: t.event.ok_or(Bad)?.to_owned(),
                actor: AdminActor {
                    ip: a.ip,
                    mfa: a.mfa.ok_or(Bad)?,
                    role: a.role.ok_or(Bad)?.to_owned(),
                    user: owned(a.user).ok_or(Bad)?,
                    via: a.via.ok_or(Bad)?,
                },
                action: t.action.ok_or(Bad)?.to_owned(),
                target: t.target.map(|x| Target {
                    id: x.id.into_owned(),
                    kind: x.kind.to_owned(),
                }),
                changes: change_map,
                reason: owned(t.reason),
            })
        }
        RecordType::System => RecordBody::System(System {
            event: t.event.ok_or(Bad)?.to_owned(),
            details: t.details.map_or(Ok(BTreeMap::new()), detail_map)?,
        }),
    };
    Ok(Record {
        seq: t.seq.ok_or(Bad)?,
        ts: t.ts.ok_or(Bad)?,
        body,
    })
}

/// The `details` text of a checked record as a map.
fn detail_map(text: &str) -> R<BTreeMap<String, Scalar>> {
    let mut out = BTreeMap::new();
    details(&mut Reader { s: text, i: 0 }, |k, v| {
        out.insert(k.to_owned(), v.to_owned());
    })?;
    Ok(out)
}

/// What [`view`] reads of a record.
pub(crate) struct Head<'a> {
    pub(crate) seq: u64,
    pub(crate) ts: Timestamp,
    pub(crate) record_type: RecordType,
    pub(crate) event: &'a str,
    /// The text of `details`, a checked map.
    pub(crate) details: Option<&'a str>,
}

/// Reads and checks a whole record and returns what a verifier needs.
pub(crate) fn view(bytes: &[u8]) -> R<Head<'_>> {
    let t = read(bytes)?;
    Ok(Head {
        seq: t.seq.ok_or(Bad)?,
        ts: t.ts.ok_or(Bad)?,
        record_type: t.record_type.ok_or(Bad)?,
        event: t.event.ok_or(Bad)?,
        details: t.details,
    })
}

/// One entry of a checked `details` text.
pub(crate) fn detail(text: &str, key: &str) -> Option<Scalar> {
    let mut found = None;
    details(&mut Reader { s: text, i: 0 }, |k, v| {
        if k == key {
            found = Some(v.to_owned());
        }
    })
    .ok()?;
    found
}

/// The whole checked `details` text as a map.
pub(crate) fn details_of(text: &str) -> Option<BTreeMap<String, Scalar>> {
    detail_map(text).ok()
}

#[cfg(test)]
mod tests {
    //! Differential tests: the reader must accept exactly what the serde
    //! decoder (`serde_decode`) accepts, and read the same record, over
    //! many random records and mechanically mutated copies of them.

    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use serde_json::{Map, Value, json};

    use super::*;
    use crate::codec::serde_decode;
    use crate::encode;

    /// xorshift64: deterministic, so a failure reproduces.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// True with probability 1/n.
        fn one_in(&mut self, n: u64) -> bool {
            self.next().is_multiple_of(n)
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        /// A name, mostly valid, at times breaking a rule.
        fn name(&mut self) -> String {
            if self.one_in(25) {
                return self
                    .pick(&["", "Key", "a-b", "a b", "é", "a\"b", "a\\b"])
                    .to_string();
            }
            if self.one_in(50) {
                return "n".repeat(64 + self.below(2));
            }
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_.";
            let len = 1 + self.below(10);
            (0..len).map(|_| char::from(*self.pick(ALPHABET))).collect()
        }

        /// A map key: a name, at times a forbidden word.
        fn map_key(&mut self) -> String {
            if self.one_in(20) {
                return self
                    .pick(&["password", "api.secret", "prompt_count", "content"])
                    .to_string();
            }
            self.name()
        }

        /// Free text, mostly valid, with characters that need escaping and
        /// the other ways to break the text rules.
        fn text(&mut self) -> String {
            if self.one_in(30) {
                return self
                    .pick(&[
                        "",
                        "Bearer abc",
                        "bearer x",
                        "PRIVATE+KEY+a",
                        "a\u{7f}b",
                        "a\u{85}b",
                        "tab\there",
                        "nl\n",
                        "\u{1}",
                    ])
                    .to_string();
            }
            if self.one_in(60) {
                return "t".repeat(MAX_TEXT_BYTES + self.below(2));
            }
            const ALPHABET: &[&str] = &[
                "a", "Z", "0", " ", "/", "-", "\"", "\\", "é", "€", "𝄞", "abcdefgh", "?", "#",
                "\u{a0}", "\u{2028}",
            ];
            let len = 1 + self.below(20);
            (0..len).map(|_| *self.pick(ALPHABET)).collect()
        }

        fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
            if self.one_in(2) { Some(f(self)) } else { None }
        }

        fn scalar(&mut self) -> Scalar {
            match self.below(5) {
                0 => Scalar::Bool(self.one_in(2)),
                1 => Scalar::Int(self.next() as i64),
                2 => Scalar::Int(*self.pick(&[i64::MIN, -1, 0, 1, i64::MAX])),
                _ => Scalar::Str(self.text()),
            }
        }

        fn ip(&mut self) -> IpAddr {
            *self.pick(&[
                IpAddr::from([10, 0, 0, 1]),
                IpAddr::from([192, 0, 2, 7]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                IpAddr::from([0x2001u16, 0xdb8, 0, 0, 0, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0xffff, 0x0102, 0x0304]),
            ])
        }

        fn request_id(&mut self) -> String {
            if self.one_in(30) {
                return self.pick(&["", "a b", "a/b", "é"]).to_string();
            }
            const ALPHABET: &[u8] = b"ABCxyz019._:-";
            let len = 1 + self.below(30);
            (0..len).map(|_| char::from(*self.pick(ALPHABET))).collect()
        }

        fn body(&mut self) -> RecordBody {
            match self.below(3) {
                0 => RecordBody::Inference(Inference {
                    event: self.name(),
                    request_id: self.request_id(),
                    actor: self.opt(|g| KeyActor {
                        key_id: g.opt(Gen::text),
                        key_name: g.opt(Gen::text),
                        owner: g.opt(Gen::text),
                        team: g.opt(Gen::text),
                    }),
                    client: self.opt(|g| Client {
                        ip: g.opt(Gen::ip),
                        user_agent: g.opt(Gen::text),
                    }),
                    endpoint: self.name(),
                    method: self
                        .pick(&["GET", "POST", "DELETE", "get", "", "ABCDEFGHIJKLMNOPQ"])
                        .to_string(),
                    path: if self.one_in(10) {
                        self.text()
                    } else {
                        format!("/v1/{}", self.text())
                    },
                    model_requested: self.opt(Gen::text),
                    model_served: self.opt(Gen::text),
                    provider: self.opt(Gen::text),
                    attempts: (0..if self.one_in(40) { 17 } else { self.below(3) })
                        .map(|_| Attempt {
                            duration_us: self.next(),
                            error: self.opt(Gen::name),
                            model: self.text(),
                            provider: self.text(),
                            status: self.opt(|g| g.next() as u16),
                        })
                        .collect(),
                    upstream_request_id: self.opt(Gen::text),
                    status: if self.one_in(20) {
                        self.next() as u16
                    } else {
                        100 + self.below(500) as u16
                    },
                    error_code: self.opt(Gen::name),
                    usage: self.opt(|g| Usage {
                        completion_tokens: g.next(),
                        prompt_tokens: g.next() % 1000,
                        source: if g.one_in(2) {
                            UsageSource::Upstream
                        } else {
                            UsageSource::Estimated
                        },
                        total_tokens: g.next(),
                    }),
                    stream: self.one_in(2),
                    latency_us: self.next() >> self.below(64),
                    ttfb_us: self.opt(|g| g.next() % 10_000),
                }),
                1 => RecordBody::Admin(Admin {
                    event: self.name(),
                    actor: AdminActor {
                        ip: self.opt(Gen::ip),
                        mfa: self.one_in(2),
                        role: self.name(),
                        user: self.text(),
                        via: *self.pick(&[Via::Console, Via::Api, Via::Cli]),
                    },
                    action: self.name(),
                    target: self.opt(|g| Target {
                        id: g.text(),
                        kind: g.name(),
                    }),
                    changes: (0..if self.one_in(40) { 33 } else { self.below(4) })
                        .map(|_| {
                            let change = if self.one_in(20) {
                                Change {
                                    after: None,
                                    before: None,
                                }
                            } else if self.one_in(2) {
                                Change {
                                    after: Some(self.scalar()),
                                    before: self.opt(Gen::scalar),
                                }
                            } else {
                                Change {
                                    after: self.opt(Gen::scalar),
                                    before: Some(self.scalar()),
                                }
                            };
                            (self.map_key(), change)
                        })
                        .collect::<BTreeMap<_, _>>(),
                    reason: self.opt(|g| {
                        if g.one_in(20) {
                            "r".repeat(MAX_REASON_BYTES + g.below(2))
                        } else {
                            g.text()
                        }
                    }),
                }),
                _ => RecordBody::System(System {
                    event: self.name(),
                    details: (0..if self.one_in(40) { 33 } else { self.below(4) })
                        .map(|_| (self.map_key(), self.scalar()))
                        .collect(),
                }),
            }
        }

        fn record(&mut self) -> Record {
            Record {
                seq: if self.one_in(5) {
                    u64::MAX - self.next() % 10
                } else {
                    self.next() >> self.below(64)
                },
                ts: Timestamp::from_unix_micros(self.next() % 253_370_764_800_000_000)
                    .unwrap_or(Timestamp::EPOCH),
                body: self.body(),
            }
        }

        /// A JSON value of a random type, for the fields of the wire soup.
        fn value(&mut self) -> Value {
            match self.below(12) {
                0 => json!(null),
                1 => json!(self.one_in(2)),
                2 => json!(self.next() >> self.below(64)),
                3 => json!(-((self.next() >> 2) as i64)),
                4 => json!(1.5),
                5 => json!([]),
                6 => json!({}),
                7 => json!(self.name()),
                8 => json!(self.text()),
                9 => json!(self.pick(&["inference", "admin", "system", "console", "upstream"])),
                10 => json!(200),
                _ => json!("2025-01-01T00:00:00.000042Z"),
            }
        }
    }

    /// Makes a value that fits one key, for a record type.
    type Fit = fn(&mut Gen, &str) -> Value;

    /// An object of field values that fit their keys, with the fields of
    /// one record type and at times a field of another type or a missing
    /// one; canonical otherwise.
    fn soup(g: &mut Gen) -> Vec<u8> {
        let record_type = *g.pick(&["inference", "admin", "system"]);
        let fits: &[(&str, Fit)] = &[
            ("action", |g, _| json!(g.name())),
            ("actor", |g, t| {
                let mut m = Map::new();
                for (k, v, admin) in [
                    ("ip", json!("10.0.0.1"), true),
                    ("key_id", json!(g.text()), false),
                    ("key_name", json!("k"), false),
                    ("mfa", json!(true), true),
                    ("owner", json!("o"), false),
                    ("role", json!(g.name()), true),
                    ("team", json!("t"), false),
                    ("user", json!(g.text()), true),
                    ("via", json!("cli"), true),
                ] {
                    let own = admin == (t == "admin");
                    if (own && !g.one_in(5)) || g.one_in(20) {
                        m.insert(k.into(), v);
                    }
                }
                Value::Object(m)
            }),
            (
                "attempts",
                |g, _| json!([{"duration_us": g.next() % 100, "model": "m", "provider": "p"}]),
            ),
            ("changes", |g, _| json!({ g.name(): {"after": 1} })),
            ("client", |g, _| {
                if g.one_in(2) {
                    json!({})
                } else {
                    json!({"ip": "::1", "user_agent": g.text()})
                }
            }),
            ("details", |g, _| json!({ g.name(): g.text() })),
            ("endpoint", |g, _| json!(g.name())),
            ("error_code", |g, _| json!(g.name())),
            ("event", |g, _| json!(g.name())),
            ("latency_us", |g, _| json!(g.next() % 1000)),
            ("method", |_, _| json!("POST")),
            ("model_requested", |g, _| json!(g.text())),
            ("model_served", |g, _| json!(g.text())),
            ("path", |_, _| json!("/v1/x")),
            ("provider", |g, _| json!(g.text())),
            ("reason", |g, _| json!(g.text())),
            ("request_id", |g, _| json!(g.request_id())),
            ("seq", |g, _| json!(g.next() % 100)),
            ("status", |_, _| json!(200)),
            ("stream", |g, _| json!(g.one_in(2))),
            ("target", |g, _| json!({"id": g.text(), "kind": g.name()})),
            ("ts", |_, _| json!("2025-01-01T00:00:00.000042Z")),
            ("ttfb_us", |_, _| json!(5)),
            ("type", |g, t| {
                if g.one_in(20) {
                    json!(g.pick(&["inference", "admin", "system", "other"]))
                } else {
                    json!(t)
                }
            }),
            ("upstream_request_id", |g, _| json!(g.text())),
            (
                "usage",
                |_, _| json!({"completion_tokens": 1, "prompt_tokens": 2, "source": "estimated", "total_tokens": 3}),
            ),
            ("v", |g, _| if g.one_in(20) { json!(2) } else { json!(1) }),
        ];
        let required: &[&str] = match record_type {
            "inference" => &[
                "request_id",
                "endpoint",
                "method",
                "path",
                "status",
                "stream",
                "latency_us",
            ],
            "admin" => &["actor", "action"],
            _ => &[],
        };
        let optional: &[&str] = match record_type {
            "inference" => &[
                "actor",
                "attempts",
                "client",
                "error_code",
                "model_requested",
                "model_served",
                "provider",
                "ttfb_us",
                "upstream_request_id",
                "usage",
            ],
            "admin" => &["changes", "reason", "target"],
            _ => &["details"],
        };
        let always = ["event", "seq", "ts", "type", "v"];
        let mut m = Map::new();
        for (key, fit) in fits {
            let present = if always.contains(key) || required.contains(key) {
                !g.one_in(40)
            } else if optional.contains(key) {
                g.one_in(2)
            } else {
                g.one_in(60)
            };
            if present {
                let value = if g.one_in(15) {
                    g.value()
                } else {
                    fit(g, record_type)
                };
                m.insert((*key).into(), value);
            }
        }
        // `Value` keeps keys sorted and writes compactly, with serde's
        // escapes: the canonical form, except for the combination.
        serde_json::to_vec(&Value::Object(m)).unwrap()
    }

    /// The top-level members of an encoded record, as text.
    fn members(text: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let (mut depth, mut in_str, mut esc, mut start) = (0, false, false, 1);
        for (i, &c) in text.iter().enumerate() {
            if in_str {
                match (esc, c) {
                    (true, _) => esc = false,
                    (false, b'\\') => esc = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match c {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        out.push(text[start..i].to_vec());
                    }
                }
                b',' if depth == 1 => {
                    out.push(text[start..i].to_vec());
                    start = i + 1;
                }
                _ => {}
            }
        }
        out
    }

    fn join(members: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"{".to_vec();
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(m);
        }
        out.push(b'}');
        out
    }

    /// One mechanical mutation of a canonical encoding.
    fn mutate(g: &mut Gen, bytes: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        let at = g.below(b.len() + 1);
        const NOISE: &[u8] =
            b"\"\\,:{}[] \n\t0123456789-.+eEnulltrfa/Zu\x00\x1f\x7f\x80\xbf\xc3\xe2\xf0\xff";
        match g.below(16) {
            0 if !b.is_empty() => {
                let i = g.below(b.len());
                b[i] = *g.pick(NOISE);
            }
            1 => b.insert(at, *g.pick(NOISE)),
            2 if at < b.len() => {
                b.remove(at);
            }
            3 => b.truncate(at),
            4 | 5 => {
                // Swap two neighbouring members, or duplicate or drop one.
                let mut m = members(&b);
                if m.len() >= 2 {
                    let i = g.below(m.len() - 1);
                    match g.below(3) {
                        0 => m.swap(i, i + 1),
                        1 => {
                            let copy = m[i].clone();
                            m.insert(i + 1, copy);
                        }
                        _ => {
                            m.remove(i);
                        }
                    }
                }
                b = join(&m);
            }
            6 => {
                // Whitespace between tokens.
                let ws = *g.pick(&[&b" "[..], b"\n", b"\t", b"\r"]);
                let spots: Vec<usize> = (0..b.len())
                    .filter(|&i| matches!(b[i], b',' | b':' | b'{' | b'[' | b'}'))
                    .collect();
                if !spots.is_empty() {
                    let i = *g.pick(&spots);
                    b.splice(i + 1..i + 1, ws.iter().copied());
                }
            }
            7 => {
                // A non-canonical escape for a character in a string.
                let swaps: &[(&[u8], &[u8])] = &[
                    (b"a", b"\\u0061"),
                    (b"/", b"\\/"),
                    (b"\\\"", b"\\u0022"),
                    (b"\\\\", b"\\u005c"),
                    (b"\\\\", b"\\u005C"),
                    (b"e", b"\\u0065"),
                    (b"\xc3\xa9", b"\\u00e9"),
                    (b"t", b"\\t"),
                    (b" ", b"\\u0020"),
                    (b"0", b"\\u0030"),
                ];
                let (from, to) = *g.pick(swaps);
                b = replace_nth(g, &b, from, to);
            }
            8 => {
                // Number forms.
                let swaps: &[(&[u8], &[u8])] = &[
                    (b":1", b":01"),
                    (b":2", b":2.0"),
                    (b":2", b":2e0"),
                    (b":0", b":-0"),
                    (b":1", b":+1"),
                    (b":1", b":1.5"),
                    (b":-", b":-0"),
                    (b":9", b":99999999999999999999"),
                    (b":1", b":18446744073709551616"),
                    (b":1", b":-9223372036854775809"),
                    (b":1", b":9223372036854775808"),
                    (b":1", b":-9223372036854775808"),
                    (b"\"status\":", b"\"status\":6"),
                    (b":2", b":\"2\""),
                ];
                let (from, to) = *g.pick(swaps);
                b = replace_nth(g, &b, from, to);
            }
            9 => {
                // Other JSON types and explicit nulls.
                let swaps: &[(&[u8], &[u8])] = &[
                    (b"true", b"1"),
                    (b"false", b"null"),
                    (b":\"", b":null,\"x\":\""),
                    (b"{\"", b"{\"attempts\":[],\""),
                    (b"{\"", b"{\"details\":{},\""),
                    (b"{\"", b"{\"changes\":null,\""),
                    (b"{\"", b"{\"actor\":{},\""),
                    (b"{\"", b"{\"client\":{},\""),
                    (b"\"v\":1", b"\"v\":1,\"w\":0"),
                    (b"\"v\":1", b"\"v\":2"),
                    (b"\"type\":\"system\"", b"\"type\":\"admin\""),
                    (b"\"type\":\"admin\"", b"\"type\":\"inference\""),
                ];
                let (from, to) = *g.pick(swaps);
                b = replace_nth(g, &b, from, to);
            }
            10 => {
                // Bad UTF-8: a lone continuation byte, a cut sequence, an
                // overlong form, a surrogate.
                let bad = *g.pick(&[
                    &b"\x80"[..],
                    b"\xc3",
                    b"\xc0\xaf",
                    b"\xed\xa0\x80",
                    b"\xf4\x90\x80\x80",
                ]);
                b.splice(at..at, bad.iter().copied());
            }
            11 => {
                // Case and neighbouring letters in keys.
                let i = g.below(b.len().max(1));
                if let Some(c) = b.get_mut(i)
                    && c.is_ascii_alphabetic()
                {
                    *c = if g.one_in(2) {
                        c.to_ascii_uppercase()
                    } else {
                        *c + 1
                    };
                }
            }
            _ => {
                // Two mutations.
                b = mutate(g, &b);
                b = mutate(g, &b);
            }
        }
        b
    }

    fn replace_nth(g: &mut Gen, b: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let hits: Vec<usize> = (0..b.len().saturating_sub(from.len() - 1))
            .filter(|&i| b[i..].starts_with(from))
            .collect();
        if hits.is_empty() {
            return b.to_vec();
        }
        let i = *g.pick(&hits);
        [&b[..i], to, &b[i + from.len()..]].concat()
    }

    /// Tallies of one differential run, so that a test can show it
    /// exercised both verdicts.
    #[derive(Default, Debug)]
    struct Tally {
        accepted: u64,
        rejected: u64,
    }

    /// The reader, its view and `decode` must agree with the serde decoder
    /// on `bytes`.
    fn agree(bytes: &[u8], tally: &mut Tally) {
        let oracle = serde_decode(bytes);
        let ours = record(bytes).ok();
        let show = || String::from_utf8_lossy(bytes).into_owned();
        match (&oracle, &ours) {
            (Ok(want), Some(got)) => assert_eq!(want, got, "{}", show()),
            (Err(e), None) => {
                // Errors come from the serde decoder, unchanged.
                assert_eq!(crate::decode(bytes).as_ref().err(), Some(e), "{}", show());
                assert_eq!(
                    crate::decode_view(bytes).err().as_ref(),
                    Some(e),
                    "{}",
                    show()
                );
            }
            (Ok(_), None) => panic!("reader rejects what serde accepts: {}", show()),
            (Err(e), Some(_)) => panic!("reader accepts what serde rejects ({e}): {}", show()),
        }
        match (view(bytes).ok(), &oracle) {
            (Some(head), Ok(want)) => {
                assert_eq!(head.seq, want.seq);
                assert_eq!(head.ts, want.ts);
                assert_eq!(head.record_type, want.body.record_type());
                assert_eq!(head.event, want.body.event());
                let details = match &want.body {
                    RecordBody::System(s) => s.details.clone(),
                    _ => BTreeMap::new(),
                };
                assert_eq!(head.details.map(details_of), {
                    (!details.is_empty()).then(|| Some(details.clone()))
                });
                for (k, v) in &details {
                    assert_eq!(head.details.and_then(|d| detail(d, k)).as_ref(), Some(v));
                }
                let view = crate::decode_view(bytes).unwrap();
                assert_eq!(view.details(), details);
                tally.accepted += 1;
            }
            (None, Err(_)) => tally.rejected += 1,
            (v, o) => panic!("view {} but serde {}: {}", v.is_some(), o.is_ok(), show()),
        }
    }

    #[test]
    fn reader_agrees_with_serde_on_random_records_and_their_mutations() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut originals = Tally::default();
        let mut mutants = Tally::default();
        for _ in 0..20_000 {
            let bytes = encode(&g.record());
            agree(&bytes, &mut originals);
            for _ in 0..4 {
                agree(&mutate(&mut g, &bytes), &mut mutants);
            }
        }
        eprintln!("originals {originals:?}, mutants {mutants:?}");
        // Both verdicts must be common, or the comparison means little.
        assert!(originals.accepted > 5_000, "{originals:?}");
        assert!(originals.rejected > 2_000, "{originals:?}");
        assert!(mutants.accepted > 2_000, "{mutants:?}");
        assert!(mutants.rejected > 40_000, "{mutants:?}");
    }

    #[test]
    fn reader_agrees_with_serde_on_field_combinations() {
        let mut g = Gen(0x2545_f491_4f6c_dd1d);
        let mut tally = Tally::default();
        for _ in 0..20_000 {
            let bytes = soup(&mut g);
            agree(&bytes, &mut tally);
            agree(&mutate(&mut g, &bytes), &mut tally);
        }
        eprintln!("{tally:?}");
        assert!(tally.accepted > 2_000, "{tally:?}");
        assert!(tally.rejected > 20_000, "{tally:?}");
    }

    #[test]
    fn reader_agrees_on_hand_picked_edges() {
        let sys = r#"{"event":"server.started","seq":1,"ts":"2025-01-01T00:00:00.000042Z","type":"system","v":1}"#;
        let cases = [
            sys.to_owned(),
            sys.replace("\"seq\":1", "\"seq\":18446744073709551615"),
            sys.replace("\"seq\":1", "\"seq\":18446744073709551616"),
            sys.replace("\"seq\":1", "\"seq\":0"),
            sys.replace("\"seq\":1", "\"seq\":00"),
            sys.replace(
                "{\"event\"",
                "{\"details\":{\"n\":-9223372036854775808},\"event\"",
            ),
            sys.replace(
                "{\"event\"",
                "{\"details\":{\"n\":-9223372036854775809},\"event\"",
            ),
            sys.replace(
                "{\"event\"",
                "{\"details\":{\"n\":9223372036854775807},\"event\"",
            ),
            sys.replace(
                "{\"event\"",
                "{\"details\":{\"n\":9223372036854775808},\"event\"",
            ),
            sys.replace("{\"event\"", "{\"details\":{\"n\":-0},\"event\""),
            sys.replace(
                "{\"event\"",
                "{\"details\":{\"n\":\"a\\\"b\\\\c\"},\"event\"",
            ),
            sys.replace("{\"event\"", "{\"details\":{\"n\":\"a\\u0001\"},\"event\""),
            sys.replace("{\"event\"", "{\"details\":{\"a\":1,\"a\":2},\"event\""),
            sys.replace("{\"event\"", "{\"details\":{\"b\":1,\"a\":2},\"event\""),
            sys.replace("{\"event\"", "{\"details\":{\"n\":true},\"event\""),
            sys.replace("{\"event\"", "{\"details\":{\"n\":tru},\"event\""),
            sys.replace("\"v\":1", "\"v\":1 "),
            sys.replace("\"v\":1}", "\"v\":1}}"),
            sys.to_owned() + "x",
            String::new(),
            "{}".to_owned(),
            "[]".to_owned(),
            "\"x\"".to_owned(),
        ];
        let mut tally = Tally::default();
        for case in &cases {
            agree(case.as_bytes(), &mut tally);
        }
        assert_eq!(tally.accepted, 7, "{tally:?}");
        // Addresses: only the form `Display` writes.
        let inf = String::from_utf8(encode(&Record {
            seq: 3,
            ts: Timestamp::EPOCH,
            body: RecordBody::Inference(Inference {
                event: "request".into(),
                request_id: "r1".into(),
                actor: None,
                client: Some(Client {
                    ip: Some(IpAddr::from([0x2001u16, 0xdb8, 0, 0, 0, 0, 0, 1])),
                    user_agent: None,
                }),
                endpoint: "models".into(),
                method: "GET".into(),
                path: "/v1/models".into(),
                model_requested: None,
                model_served: None,
                provider: None,
                attempts: Vec::new(),
                upstream_request_id: None,
                status: 200,
                error_code: None,
                usage: None,
                stream: false,
                latency_us: 0,
                ttfb_us: None,
            }),
        }))
        .unwrap();
        let mut tally = Tally::default();
        for ip in [
            "2001:db8::1",
            "2001:DB8::1",
            "2001:db8:0::1",
            "2001:0db8::1",
            "10.0.0.1",
            "010.0.0.1",
            "::ffff:1.2.3.4",
            "::ffff:102:304",
            "1.2.3",
        ] {
            agree(inf.replace("2001:db8::1", ip).as_bytes(), &mut tally);
        }
        assert_eq!(tally.accepted, 3, "{tally:?}");
    }

    #[test]
    fn escape_mask_marks_the_first_special_byte() {
        let mut g = Gen(7);
        for _ in 0..100_000 {
            let mut word = [0u8; 8];
            for b in &mut word {
                *b = if g.one_in(4) {
                    *g.pick(&[b'"', b'\\', 0, 0x1f, 0x20, 0x7f, 0x80, 0xff])
                } else {
                    g.next() as u8
                };
            }
            let first = word
                .iter()
                .position(|&b| b < 0x20 || b == b'"' || b == b'\\');
            let mask = escape_mask(u64::from_le_bytes(word));
            assert_eq!(
                (mask != 0).then(|| (mask.trailing_zeros() / 8) as usize),
                first,
                "{word:?}"
            );
        }
    }
}
