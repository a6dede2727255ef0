//! The canonical encoder, written by hand.
//!
//! It writes exactly what `serde_json` writes for the `Canonical` view of
//! a record in `codec` (keys in bytewise order, no whitespace, `serde_json`'s string
//! escapes, shortest integers), without serde's per-fragment calls: it runs
//! for every record the gateway appends and for every record the verifier
//! re-encodes. A test checks it byte for byte against the serde encoding
//! on every record shape, including strings that need escaping.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::SCHEMA_VERSION;
use crate::schema::{
    Admin, AdminActor, Attempt, Change, Client, Inference, KeyActor, Record, RecordBody,
    RecordType, Scalar, System, Target, Usage, UsageSource, Via,
};
use crate::time::Timestamp;

/// `,"name":`, the text of a schema key after a previous member.
macro_rules! k {
    ($name:literal) => {
        Key(concat!(",\"", $name, "\":"))
    };
}

/// A schema key as [`k!`] writes it; only that macro makes one.
#[derive(Clone, Copy)]
struct Key(&'static str);

/// Where [`write_record`] wrote the top-level `seq` and `ts` values.
pub(crate) struct Placed {
    /// Offset in `out` of the first digit of `seq`.
    pub(crate) seq_at: usize,
    /// Offset in `out` of the timestamp text (after its opening quote).
    pub(crate) ts_at: usize,
}

/// Appends the canonical encoding of `record` to `out`, and says where the
/// ledger-assigned values went.
pub(crate) fn write_record(record: &Record, out: &mut Vec<u8>) -> Placed {
    write_parts(record.seq, record.ts, &record.body, out)
}

/// [`write_record`] for a record given as its parts, so that a body need
/// not be moved into a [`Record`] to be encoded.
pub(crate) fn write_parts(seq: u64, ts: Timestamp, body: &RecordBody, out: &mut Vec<u8>) -> Placed {
    let (seq, ts) = (&seq, &ts);
    let mut placed = Placed {
        seq_at: 0,
        ts_at: 0,
    };
    let mut m = Obj::open(out);
    match body {
        RecordBody::Inference(r) => {
            let Inference {
                event,
                request_id,
                actor,
                client,
                endpoint,
                method,
                path,
                model_requested,
                model_served,
                provider,
                attempts,
                upstream_request_id,
                status,
                error_code,
                usage,
                stream,
                latency_us,
                ttfb_us,
            } = r;
            if let Some(a) = actor {
                m.key(k!("actor"));
                key_actor(m.out, a);
            }
            if !attempts.is_empty() {
                m.key(k!("attempts"));
                attempt_list(m.out, attempts);
            }
            if let Some(c) = client {
                m.key(k!("client"));
                client_obj(m.out, c);
            }
            m.str(k!("endpoint"), endpoint);
            m.opt_str(k!("error_code"), error_code.as_deref());
            m.str(k!("event"), event);
            m.uint(k!("latency_us"), *latency_us);
            m.str(k!("method"), method);
            m.opt_str(k!("model_requested"), model_requested.as_deref());
            m.opt_str(k!("model_served"), model_served.as_deref());
            m.str(k!("path"), path);
            m.opt_str(k!("provider"), provider.as_deref());
            m.str(k!("request_id"), request_id);
            placed.seq_at = m.seq(*seq);
            m.uint(k!("status"), u64::from(*status));
            m.bool(k!("stream"), *stream);
            placed.ts_at = m.ts(*ts);
            if let Some(t) = ttfb_us {
                m.uint(k!("ttfb_us"), *t);
            }
            m.str(k!("type"), RecordType::Inference.as_str());
            m.opt_str(k!("upstream_request_id"), upstream_request_id.as_deref());
            if let Some(u) = usage {
                m.key(k!("usage"));
                usage_obj(m.out, u);
            }
        }
        RecordBody::Admin(r) => {
            let Admin {
                event,
                actor,
                action,
                target,
                changes,
                reason,
            } = r;
            m.str(k!("action"), action);
            m.key(k!("actor"));
            admin_actor(m.out, actor);
            if !changes.is_empty() {
                m.key(k!("changes"));
                change_map(m.out, changes);
            }
            m.str(k!("event"), event);
            m.opt_str(k!("reason"), reason.as_deref());
            placed.seq_at = m.seq(*seq);
            if let Some(t) = target {
                m.key(k!("target"));
                target_obj(m.out, t);
            }
            placed.ts_at = m.ts(*ts);
            m.str(k!("type"), RecordType::Admin.as_str());
        }
        RecordBody::System(r) => {
            let System { event, details } = r;
            if !details.is_empty() {
                m.key(k!("details"));
                scalar_map(m.out, details);
            }
            m.str(k!("event"), event);
            placed.seq_at = m.seq(*seq);
            placed.ts_at = m.ts(*ts);
            m.str(k!("type"), RecordType::System.as_str());
        }
    }
    m.uint(k!("v"), SCHEMA_VERSION);
    m.close();
    placed
}

/// An object being written: `{`, then `"key":value` pairs with commas.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }

    /// A key: one of the schema's own names, which need no escaping,
    /// written by [`k!`] with its comma, quotes and colon so that it is
    /// one copy.
    fn key(&mut self, key: Key) {
        let bytes = key.0.as_bytes();
        let bytes = if self.first { &bytes[1..] } else { bytes };
        self.first = false;
        self.out.extend_from_slice(bytes);
    }

    /// A key from data (a `changes` or `details` name), escaped.
    fn data_key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        string(self.out, key);
        self.out.push(b':');
    }

    fn str(&mut self, key: Key, value: &str) {
        self.key(key);
        string(self.out, value);
    }

    fn opt_str(&mut self, key: Key, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    fn uint(&mut self, key: Key, value: u64) {
        self.key(key);
        uint(self.out, value);
    }

    /// The top-level `seq`; returns the offset of its first digit.
    fn seq(&mut self, seq: u64) -> usize {
        self.key(k!("seq"));
        let at = self.out.len();
        uint(self.out, seq);
        at
    }

    /// The top-level `ts`; returns the offset of its text.
    fn ts(&mut self, ts: Timestamp) -> usize {
        self.key(k!("ts"));
        // The canonical timestamp text needs no escaping.
        self.out.push(b'"');
        let at = self.out.len();
        if ts == Timestamp::EPOCH {
            // The placeholder of every pre-encoded record.
            self.out.extend_from_slice(b"1970-01-01T00:00:00.000000Z");
        } else {
            self.out.extend_from_slice(&ts.to_canonical());
        }
        self.out.push(b'"');
        at
    }

    fn bool(&mut self, key: Key, value: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

fn key_actor(out: &mut Vec<u8>, a: &KeyActor) {
    let mut m = Obj::open(out);
    m.opt_str(k!("key_id"), a.key_id.as_deref());
    m.opt_str(k!("key_name"), a.key_name.as_deref());
    m.opt_str(k!("owner"), a.owner.as_deref());
    m.opt_str(k!("team"), a.team.as_deref());
    m.close();
}

fn client_obj(out: &mut Vec<u8>, c: &Client) {
    let mut m = Obj::open(out);
    if let Some(ip) = &c.ip {
        m.key(k!("ip"));
        ip_addr(m.out, ip);
    }
    m.opt_str(k!("user_agent"), c.user_agent.as_deref());
    m.close();
}

fn attempt_list(out: &mut Vec<u8>, attempts: &[Attempt]) {
    out.push(b'[');
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut m = Obj::open(out);
        m.uint(k!("duration_us"), a.duration_us);
        m.opt_str(k!("error"), a.error.as_deref());
        m.str(k!("model"), &a.model);
        m.str(k!("provider"), &a.provider);
        if let Some(s) = a.status {
            m.uint(k!("status"), u64::from(s));
        }
        m.close();
    }
    out.push(b']');
}

fn usage_obj(out: &mut Vec<u8>, u: &Usage) {
    let mut m = Obj::open(out);
    m.uint(k!("completion_tokens"), u.completion_tokens);
    m.uint(k!("prompt_tokens"), u.prompt_tokens);
    m.str(
        k!("source"),
        match u.source {
            UsageSource::Upstream => "upstream",
            UsageSource::Estimated => "estimated",
        },
    );
    m.uint(k!("total_tokens"), u.total_tokens);
    m.close();
}

fn admin_actor(out: &mut Vec<u8>, a: &AdminActor) {
    let mut m = Obj::open(out);
    if let Some(ip) = &a.ip {
        m.key(k!("ip"));
        ip_addr(m.out, ip);
    }
    m.bool(k!("mfa"), a.mfa);
    m.str(k!("role"), &a.role);
    m.str(k!("user"), &a.user);
    m.str(
        k!("via"),
        match a.via {
            Via::Console => "console",
            Via::Api => "api",
            Via::Cli => "cli",
        },
    );
    m.close();
}

fn target_obj(out: &mut Vec<u8>, t: &Target) {
    let mut m = Obj::open(out);
    m.str(k!("id"), &t.id);
    m.str(k!("kind"), &t.kind);
    m.close();
}

fn change_map(out: &mut Vec<u8>, changes: &BTreeMap<String, Change>) {
    let mut m = Obj::open(out);
    for (key, change) in changes {
        m.data_key(key);
        let mut c = Obj::open(m.out);
        if let Some(v) = &change.after {
            c.key(k!("after"));
            scalar(c.out, v);
        }
        if let Some(v) = &change.before {
            c.key(k!("before"));
            scalar(c.out, v);
        }
        c.close();
    }
    m.close();
}

fn scalar_map(out: &mut Vec<u8>, details: &BTreeMap<String, Scalar>) {
    let mut m = Obj::open(out);
    for (key, value) in details {
        m.data_key(key);
        scalar(m.out, value);
    }
    m.close();
}

fn scalar(out: &mut Vec<u8>, v: &Scalar) {
    match v {
        Scalar::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Scalar::Int(i) => {
            if *i < 0 {
                out.push(b'-');
            }
            uint(out, i.unsigned_abs());
        }
        Scalar::Str(s) => string(out, s),
    }
}

/// An address in its `Display` form (RFC 5952 for IPv6), as serde writes it.
fn ip_addr(out: &mut Vec<u8>, ip: &IpAddr) {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    let mut cursor = &mut buf[..];
    // 48 bytes hold the longest IPv6 text (45), so this cannot fail.
    let _ = write!(cursor, "{ip}");
    let len = 48 - cursor.len();
    out.push(b'"');
    out.extend_from_slice(&buf[..len]);
    out.push(b'"');
}

/// Shortest decimal form, as `itoa` writes it.
fn uint(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A JSON string with `serde_json`'s escapes: `\"`, `\\`, `\b`, `\t`,
/// `\n`, `\f`, `\r`, other controls as `\u00XX` (lowercase hex), and every
/// other character, `/`, DEL and non-ASCII included, as raw UTF-8.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none needs escaping.
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                i += 1;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any of the eight bytes of `w` is a control character (below
/// 0x20), `"` or `\`.
fn needs_escape(w: u64) -> bool {
    escape_mask(w) != 0
}

/// The high bit of each byte of `w` (little-endian) that may be a control
/// character (below 0x20), `"` or `\`. Classic SWAR zero-byte tests: a
/// borrow can flag a byte above a true match, but never one below it, so
/// the mask is zero exactly when no byte matches, and its lowest set bit
/// always marks the first matching byte.
pub(crate) fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    below_space | has_zero(w ^ (ONES * u64::from(b'"'))) | has_zero(w ^ (ONES * u64::from(b'\\')))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::codec::serde_encode;

    /// Random strings over an alphabet heavy in bytes that need escaping,
    /// at every offset relative to the eight-byte fast path.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn coin(&mut self) -> bool {
            self.next() & 1 == 0
        }

        fn text(&mut self) -> String {
            const ALPHABET: &[&str] = &[
                "a", "Z", "0", " ", "/", "\"", "\\", "\u{0}", "\u{1}", "\u{8}", "\t", "\n",
                "\u{b}", "\u{c}", "\r", "\u{1f}", "\u{7f}", "\u{80}", "é", "€", "𝄞", "abcdefgh",
            ];
            let len = self.next() % 24;
            (0..len)
                .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize])
                .collect()
        }

        fn opt_text(&mut self) -> Option<String> {
            (!self.next().is_multiple_of(3)).then(|| self.text())
        }

        fn scalar(&mut self) -> Scalar {
            match self.next() % 4 {
                0 => Scalar::Bool(self.coin()),
                1 => Scalar::Int(self.next() as i64),
                2 => Scalar::Int([i64::MIN, -1, 0, i64::MAX][(self.next() % 4) as usize]),
                _ => Scalar::Str(self.text()),
            }
        }

        fn ip(&mut self) -> Option<IpAddr> {
            match self.next() % 4 {
                0 => None,
                1 => Some(IpAddr::from([10, 0, (self.next() % 256) as u8, 1])),
                2 => Some(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
                _ => Some(IpAddr::from([
                    0x2001u16,
                    0xdb8,
                    (self.next() % 3) as u16,
                    0,
                    0,
                    (self.next() % 2) as u16,
                    0,
                    1,
                ])),
            }
        }

        fn body(&mut self) -> RecordBody {
            match self.next() % 3 {
                0 => RecordBody::Inference(Inference {
                    event: self.text(),
                    request_id: self.text(),
                    actor: (self.coin()).then(|| KeyActor {
                        key_id: self.opt_text(),
                        key_name: self.opt_text(),
                        owner: self.opt_text(),
                        team: self.opt_text(),
                    }),
                    client: (self.coin()).then(|| Client {
                        ip: self.ip(),
                        user_agent: self.opt_text(),
                    }),
                    endpoint: self.text(),
                    method: self.text(),
                    path: self.text(),
                    model_requested: self.opt_text(),
                    model_served: self.opt_text(),
                    provider: self.opt_text(),
                    attempts: (0..self.next() % 3)
                        .map(|_| Attempt {
                            duration_us: self.next(),
                            error: self.opt_text(),
                            model: self.text(),
                            provider: self.text(),
                            status: (self.coin()).then(|| (self.next() % 600) as u16),
                        })
                        .collect(),
                    upstream_request_id: self.opt_text(),
                    status: (self.next() % 700) as u16,
                    error_code: self.opt_text(),
                    usage: (self.coin()).then(|| Usage {
                        completion_tokens: self.next(),
                        prompt_tokens: self.next() % 1000,
                        source: if self.coin() {
                            UsageSource::Upstream
                        } else {
                            UsageSource::Estimated
                        },
                        total_tokens: self.next(),
                    }),
                    stream: self.coin(),
                    latency_us: self.next(),
                    ttfb_us: (self.coin()).then(|| self.next() % 10_000),
                }),
                1 => RecordBody::Admin(Admin {
                    event: self.text(),
                    actor: AdminActor {
                        ip: self.ip(),
                        mfa: self.coin(),
                        role: self.text(),
                        user: self.text(),
                        via: [Via::Console, Via::Api, Via::Cli][(self.next() % 3) as usize],
                    },
                    action: self.text(),
                    target: (self.coin()).then(|| Target {
                        id: self.text(),
                        kind: self.text(),
                    }),
                    changes: (0..self.next() % 4)
                        .map(|_| {
                            let change = Change {
                                after: (self.coin()).then(|| self.scalar()),
                                before: (self.coin()).then(|| self.scalar()),
                            };
                            (self.text(), change)
                        })
                        .collect::<BTreeMap<_, _>>(),
                    reason: self.opt_text(),
                }),
                _ => RecordBody::System(System {
                    event: self.text(),
                    details: (0..self.next() % 4)
                        .map(|_| (self.text(), self.scalar()))
                        .collect(),
                }),
            }
        }
    }

    #[test]
    fn hand_encoder_matches_serde_on_every_shape() {
        let mut g = Gen(0x2545_f491_4f6c_dd1d);
        for i in 0..20_000u64 {
            let record = Record {
                seq: if i.is_multiple_of(5) { u64::MAX - i } else { i },
                ts: crate::Timestamp::from_unix_micros(g.next() % 253_370_764_800_000_000)
                    .unwrap_or(crate::Timestamp::EPOCH),
                body: g.body(),
            };
            let mut ours = b"prefix".to_vec();
            let placed = write_record(&record, &mut ours);
            let seq_text = record.seq.to_string();
            assert!(ours[placed.seq_at..].starts_with(seq_text.as_bytes()));
            // `event` always precedes `seq`, hence the comma.
            assert_eq!(&ours[placed.seq_at - 7..placed.seq_at], b",\"seq\":");
            assert!(ours[placed.ts_at..].starts_with(&record.ts.to_canonical()));
            assert_eq!(&ours[placed.ts_at - 6..placed.ts_at], b"\"ts\":\"");
            let ours = ours.split_off(6);
            let theirs = serde_encode(&record);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "{record:?}"
            );
        }
    }

    #[test]
    fn escape_detection_is_exact_for_every_byte() {
        for b in 0..=255u8 {
            let expected = b < 0x20 || b == b'"' || b == b'\\';
            for pos in 0..8 {
                let mut word = [b'a'; 8];
                word[pos] = b;
                assert_eq!(
                    needs_escape(u64::from_le_bytes(word)),
                    expected,
                    "{b:#x}@{pos}"
                );
            }
        }
    }
}
