//! The canonical encoder and the strict decoder.
//!
//! Encoding (in `canonical`) writes the keys of each record type in a
//! fixed, sorted order by hand; the serde definition it is tested against
//! lives here.
//! Decoding reads into one private struct that has every top-level key of
//! every record type (so it needs a single pass and no buffering), checks
//! which keys the record type allows, validates the values, and finally
//! re-encodes and compares: only the canonical bytes are accepted.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
#[cfg(test)]
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::SCHEMA_VERSION;
use crate::error::RecordError;
use crate::schema::{
    Admin, AdminActor, Attempt, Change, Client, Inference, KeyActor, Record, RecordBody,
    RecordType, Scalar, System, Target, Usage, Via,
};
use crate::time::Timestamp;
use crate::validate::MAX_RECORD_BYTES;

/// The canonical encoding of `record`: the exact leaf input, without a
/// trailing newline.
///
/// The record is not validated here; the ledger calls
/// [`RecordBody::validate`] before it assigns a sequence number, and
/// [`decode`] rejects the bytes of an invalid record.
#[must_use]
pub fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(384);
    encode_into(record, &mut out);
    out
}

/// Appends the canonical encoding of `record` to `out`, so that a writer
/// can encode a batch into one buffer.
pub fn encode_into(record: &Record, out: &mut Vec<u8>) {
    crate::canonical::write_record(record, out);
}

/// The canonical encoding through serde, the definition the hand-written
/// encoder is tested against.
#[cfg(test)]
pub(crate) fn serde_encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    // Serialising into a Vec cannot fail: every map key is a string and
    // every value a string, integer, boolean, sequence or map of those.
    let _ = Canonical(record).serialize(&mut ser);
    out
}

/// Decodes one record and checks that `bytes` is exactly its canonical
/// encoding.
///
/// The single-pass reader (`reader`) does this without re-encoding; only
/// when it rejects the input does the serde decoder run, to name the
/// problem. The two accept exactly the same inputs (differential tests in
/// `reader`).
///
/// # Errors
///
/// [`RecordError::TooLarge`], [`RecordError::Malformed`],
/// [`RecordError::UnsupportedVersion`], [`RecordError::MissingField`],
/// [`RecordError::UnexpectedField`], [`RecordError::InvalidField`],
/// [`RecordError::InvalidTimestamp`] or [`RecordError::NonCanonical`].
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    match crate::reader::record(bytes) {
        Ok(record) => Ok(record),
        Err(crate::reader::Bad) => serde_decode(bytes),
    }
}

/// Checks one record as [`decode`] does, without copying it out: the
/// fields a verifier needs, borrowed from `bytes`.
///
/// # Errors
///
/// As [`decode`], with the same messages.
pub fn decode_view(bytes: &[u8]) -> Result<RecordView<'_>, RecordError> {
    match crate::reader::view(bytes) {
        Ok(head) => Ok(RecordView {
            seq: head.seq,
            ts: head.ts,
            record_type: head.record_type,
            event: Cow::Borrowed(head.event),
            details: head.details.map_or(Details::None, Details::Text),
        }),
        // The serde decoder names the problem. Should it accept what the
        // reader rejected (the differential tests say it never does), its
        // verdict stands, so that the two can only ever agree.
        Err(crate::reader::Bad) => serde_decode(bytes).map(|record| {
            let (record_type, event) = (record.body.record_type(), record.body.event().to_owned());
            RecordView {
                seq: record.seq,
                ts: record.ts,
                record_type,
                event: Cow::Owned(event),
                details: match record.body {
                    RecordBody::System(s) if !s.details.is_empty() => Details::Map(s.details),
                    _ => Details::None,
                },
            }
        }),
    }
}

/// A checked record, read in place by [`decode_view`]: what the verifier
/// needs of each record, without copying its strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    seq: u64,
    ts: Timestamp,
    record_type: RecordType,
    event: Cow<'a, str>,
    details: Details<'a>,
}

/// The `details` of a system record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Details<'a> {
    /// Absent (always so in other record types).
    None,
    /// The checked text of the map, read again on demand.
    Text(&'a str),
    /// Decoded by serde.
    Map(BTreeMap<String, Scalar>),
}

impl RecordView<'_> {
    /// The `seq` field.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The `ts` field.
    #[must_use]
    pub fn ts(&self) -> Timestamp {
        self.ts
    }

    /// The `type` field.
    #[must_use]
    pub fn record_type(&self) -> RecordType {
        self.record_type
    }

    /// The `event` field.
    #[must_use]
    pub fn event(&self) -> &str {
        &self.event
    }

    /// One entry of a system record's `details`; `None` when absent or in
    /// other record types.
    #[must_use]
    pub fn detail(&self, key: &str) -> Option<Scalar> {
        match &self.details {
            Details::None => None,
            Details::Text(text) => crate::reader::detail(text, key),
            Details::Map(map) => map.get(key).cloned(),
        }
    }

    /// All of a system record's `details` (empty when absent).
    #[must_use]
    pub fn details(&self) -> BTreeMap<String, Scalar> {
        match &self.details {
            Details::None => BTreeMap::new(),
            Details::Text(text) => crate::reader::details_of(text).unwrap_or_default(),
            Details::Map(map) => map.clone(),
        }
    }
}

/// The strict decode through serde: parse, validate, re-encode, compare.
/// It runs only for inputs the single-pass reader rejects, to say why, and
/// is the definition that reader is tested against.
pub(crate) fn serde_decode(bytes: &[u8]) -> Result<Record, RecordError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge {
            len: bytes.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    // One UTF-8 check for the whole line is cheaper than one per string.
    let text = std::str::from_utf8(bytes).map_err(|e| RecordError::Malformed {
        reason: format!("invalid utf-8 at byte {}", e.valid_up_to()),
    })?;
    let wire: Wire = match serde_json::from_str(text) {
        Ok(w) => w,
        Err(e) => return Err(version_error(bytes).unwrap_or_else(|| malformed(&e))),
    };
    if wire.v != SCHEMA_VERSION {
        return Err(RecordError::UnsupportedVersion { v: wire.v });
    }
    let record = wire.into_record()?;
    record.body.validate()?;
    // Re-encode and compare: only the canonical bytes are accepted. The
    // encoding goes into a reused per-thread buffer and is compared with
    // one `memcmp`; comparing each of the serialiser's many small writes
    // as it went cost more than the encoding itself.
    REENCODED.with_borrow_mut(|buf| {
        buf.clear();
        encode_into(&record, buf);
        if buf.as_slice() == bytes {
            return Ok(());
        }
        let same = buf.iter().zip(bytes).take_while(|(a, b)| a == b).count();
        Err(RecordError::NonCanonical { offset: same })
    })?;
    Ok(record)
}

thread_local! {
    /// [`PreEncoded::new`]'s encoding buffer, reused across calls.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// [`serde_decode`]'s buffer for the re-encoding, reused across calls.
    static REENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A record body encoded ahead of its `seq` and `ts`, so that callers can
/// do the encoding (and validation) in parallel and the single writer only
/// splices in the two values the ledger assigns.
///
/// [`finish`](Self::finish) produces exactly the bytes [`encode`] would
/// for the same record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreEncoded {
    /// Canonical bytes with `seq` 0 and `ts` at the epoch.
    bytes: Vec<u8>,
    /// Offset of the placeholder `0` of the top-level `seq`.
    seq_at: usize,
    /// Offset of the placeholder timestamp text of the top-level `ts`.
    ts_at: usize,
}

/// The placeholder timestamp text, [`Timestamp::EPOCH`] in canonical form.
const TS_PLACEHOLDER: &[u8] = b"1970-01-01T00:00:00.000000Z";

impl PreEncoded {
    /// Validates and encodes `body`.
    ///
    /// # Errors
    ///
    /// As [`RecordBody::validate`].
    pub fn new(body: RecordBody) -> Result<Self, RecordError> {
        body.validate()?;
        // Encoded into a reused per-thread buffer and then copied into one
        // allocation of the right size: cheaper than growing a guessed one.
        // The encoder reports where it put the two values, so nothing has
        // to search for the placeholders.
        let (bytes, placed) = SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            let placed = crate::canonical::write_parts(0, Timestamp::EPOCH, &body, buf);
            (buf.clone(), placed)
        });
        Ok(PreEncoded {
            bytes,
            seq_at: placed.seq_at,
            ts_at: placed.ts_at,
        })
    }

    /// Appends the canonical encoding of the record with `seq` and `ts`
    /// to `out`.
    pub fn finish(&self, seq: u64, ts: Timestamp, out: &mut Vec<u8>) {
        let (head, rest) = self.bytes.split_at(self.seq_at);
        out.extend_from_slice(head);
        let mut digits = [0u8; 20];
        let mut n = seq;
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
        let (middle, tail) = rest[1..].split_at(self.ts_at - self.seq_at - 1);
        out.extend_from_slice(middle);
        out.extend_from_slice(&ts.to_canonical());
        out.extend_from_slice(&tail[TS_PLACEHOLDER.len()..]);
    }

    /// The encoding up to the value of the top-level `seq`: the first bytes
    /// of what [`finish`](Self::finish) writes, whatever `seq` and `ts`
    /// are. A writer can hash them before it knows either.
    #[must_use]
    pub fn head(&self) -> &[u8] {
        &self.bytes[..self.seq_at]
    }

    /// The encoded length with the placeholders, a lower bound of the
    /// final length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: an encoded record is never empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn malformed(e: &serde_json::Error) -> RecordError {
    RecordError::Malformed {
        reason: e.to_string(),
    }
}

/// On the error path only: a record of another version may have fields
/// version 1 does not know, so report the version rather than the field.
fn version_error(bytes: &[u8]) -> Option<RecordError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u64,
    }
    let v = serde_json::from_slice::<VersionOnly>(bytes).ok()?.v;
    (v != SCHEMA_VERSION).then_some(RecordError::UnsupportedVersion { v })
}

/// Serialises a record with its keys in bytewise order.
#[cfg(test)]
struct Canonical<'a>(&'a Record);

#[cfg(test)]
fn opt<M: SerializeMap, T: Serialize>(m: &mut M, key: &str, v: Option<&T>) -> Result<(), M::Error> {
    match v {
        Some(v) => m.serialize_entry(key, v),
        None => Ok(()),
    }
}

#[cfg(test)]
impl Serialize for Canonical<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Record { seq, ts, body } = self.0;
        let mut m = s.serialize_map(None)?;
        match body {
            RecordBody::Inference(r) => {
                opt(&mut m, "actor", r.actor.as_ref())?;
                if !r.attempts.is_empty() {
                    m.serialize_entry("attempts", &r.attempts)?;
                }
                opt(&mut m, "client", r.client.as_ref())?;
                m.serialize_entry("endpoint", &r.endpoint)?;
                opt(&mut m, "error_code", r.error_code.as_ref())?;
                m.serialize_entry("event", &r.event)?;
                m.serialize_entry("latency_us", &r.latency_us)?;
                m.serialize_entry("method", &r.method)?;
                opt(&mut m, "model_requested", r.model_requested.as_ref())?;
                opt(&mut m, "model_served", r.model_served.as_ref())?;
                m.serialize_entry("path", &r.path)?;
                opt(&mut m, "provider", r.provider.as_ref())?;
                m.serialize_entry("request_id", &r.request_id)?;
                m.serialize_entry("seq", seq)?;
                m.serialize_entry("status", &r.status)?;
                m.serialize_entry("stream", &r.stream)?;
                m.serialize_entry("ts", ts)?;
                opt(&mut m, "ttfb_us", r.ttfb_us.as_ref())?;
                m.serialize_entry("type", &RecordType::Inference)?;
                opt(
                    &mut m,
                    "upstream_request_id",
                    r.upstream_request_id.as_ref(),
                )?;
                opt(&mut m, "usage", r.usage.as_ref())?;
            }
            RecordBody::Admin(r) => {
                m.serialize_entry("action", &r.action)?;
                m.serialize_entry("actor", &r.actor)?;
                if !r.changes.is_empty() {
                    m.serialize_entry("changes", &r.changes)?;
                }
                m.serialize_entry("event", &r.event)?;
                opt(&mut m, "reason", r.reason.as_ref())?;
                m.serialize_entry("seq", seq)?;
                opt(&mut m, "target", r.target.as_ref())?;
                m.serialize_entry("ts", ts)?;
                m.serialize_entry("type", &RecordType::Admin)?;
            }
            RecordBody::System(r) => {
                if !r.details.is_empty() {
                    m.serialize_entry("details", &r.details)?;
                }
                m.serialize_entry("event", &r.event)?;
                m.serialize_entry("seq", seq)?;
                m.serialize_entry("ts", ts)?;
                m.serialize_entry("type", &RecordType::System)?;
            }
        }
        m.serialize_entry("v", &SCHEMA_VERSION)?;
        m.end()
    }
}

/// Every top-level key of every record type, so that decoding is one pass.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    action: Option<String>,
    actor: Option<WireActor>,
    attempts: Option<Vec<Attempt>>,
    changes: Option<BTreeMap<String, Change>>,
    client: Option<Client>,
    details: Option<BTreeMap<String, Scalar>>,
    endpoint: Option<String>,
    error_code: Option<String>,
    event: String,
    latency_us: Option<u64>,
    method: Option<String>,
    model_requested: Option<String>,
    model_served: Option<String>,
    path: Option<String>,
    provider: Option<String>,
    reason: Option<String>,
    request_id: Option<String>,
    seq: u64,
    status: Option<u16>,
    stream: Option<bool>,
    target: Option<Target>,
    ts: Timestamp,
    ttfb_us: Option<u64>,
    #[serde(rename = "type")]
    record_type: RecordType,
    upstream_request_id: Option<String>,
    usage: Option<Usage>,
    v: u64,
}

/// Both actor shapes, told apart by the record type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireActor {
    ip: Option<IpAddr>,
    key_id: Option<String>,
    key_name: Option<String>,
    mfa: Option<bool>,
    owner: Option<String>,
    role: Option<String>,
    team: Option<String>,
    user: Option<String>,
    via: Option<Via>,
}

/// Checks presence rules for one record type.
struct Fields(&'static str);

impl Fields {
    fn required<T>(&self, field: &'static str, v: Option<T>) -> Result<T, RecordError> {
        v.ok_or(RecordError::MissingField {
            field,
            record_type: self.0,
        })
    }

    fn absent(&self, field: &'static str, present: bool) -> Result<(), RecordError> {
        if present {
            Err(RecordError::UnexpectedField {
                field,
                record_type: self.0,
            })
        } else {
            Ok(())
        }
    }
}

impl Wire {
    fn into_record(self) -> Result<Record, RecordError> {
        let f = Fields(self.record_type.as_str());
        let body = match self.record_type {
            RecordType::Inference => {
                f.absent("action", self.action.is_some())?;
                f.absent("changes", self.changes.is_some())?;
                f.absent("details", self.details.is_some())?;
                f.absent("reason", self.reason.is_some())?;
                f.absent("target", self.target.is_some())?;
                let actor = match self.actor {
                    None => None,
                    Some(a) => {
                        f.absent("actor.ip", a.ip.is_some())?;
                        f.absent("actor.mfa", a.mfa.is_some())?;
                        f.absent("actor.role", a.role.is_some())?;
                        f.absent("actor.user", a.user.is_some())?;
                        f.absent("actor.via", a.via.is_some())?;
                        Some(KeyActor {
                            key_id: a.key_id,
                            key_name: a.key_name,
                            owner: a.owner,
                            team: a.team,
                        })
                    }
                };
                RecordBody::Inference(Inference {
                    event: self.event,
                    request_id: f.required("request_id", self.request_id)?,
                    actor,
                    client: self.client,
                    endpoint: f.required("endpoint", self.endpoint)?,
                    method: f.required("method", self.method)?,
                    path: f.required("path", self.path)?,
                    model_requested: self.model_requested,
                    model_served: self.model_served,
                    provider: self.provider,
                    attempts: self.attempts.unwrap_or_default(),
                    upstream_request_id: self.upstream_request_id,
                    status: f.required("status", self.status)?,
                    error_code: self.error_code,
                    usage: self.usage,
                    stream: f.required("stream", self.stream)?,
                    latency_us: f.required("latency_us", self.latency_us)?,
                    ttfb_us: self.ttfb_us,
                })
            }
            RecordType::Admin => {
                f.absent("details", self.details.is_some())?;
                self.absent_inference_fields(&f)?;
                let a = f.required("actor", self.actor)?;
                f.absent("actor.key_id", a.key_id.is_some())?;
                f.absent("actor.key_name", a.key_name.is_some())?;
                f.absent("actor.owner", a.owner.is_some())?;
                f.absent("actor.team", a.team.is_some())?;
                RecordBody::Admin(Admin {
                    event: self.event,
                    actor: AdminActor {
                        ip: a.ip,
                        mfa: f.required("actor.mfa", a.mfa)?,
                        role: f.required("actor.role", a.role)?,
                        user: f.required("actor.user", a.user)?,
                        via: f.required("actor.via", a.via)?,
                    },
                    action: f.required("action", self.action)?,
                    target: self.target,
                    changes: self.changes.unwrap_or_default(),
                    reason: self.reason,
                })
            }
            RecordType::System => {
                f.absent("action", self.action.is_some())?;
                f.absent("actor", self.actor.is_some())?;
                f.absent("changes", self.changes.is_some())?;
                f.absent("reason", self.reason.is_some())?;
                f.absent("target", self.target.is_some())?;
                self.absent_inference_fields(&f)?;
                RecordBody::System(System {
                    event: self.event,
                    details: self.details.unwrap_or_default(),
                })
            }
        };
        Ok(Record {
            seq: self.seq,
            ts: self.ts,
            body,
        })
    }

    fn absent_inference_fields(&self, f: &Fields) -> Result<(), RecordError> {
        f.absent("attempts", self.attempts.is_some())?;
        f.absent("client", self.client.is_some())?;
        f.absent("endpoint", self.endpoint.is_some())?;
        f.absent("error_code", self.error_code.is_some())?;
        f.absent("latency_us", self.latency_us.is_some())?;
        f.absent("method", self.method.is_some())?;
        f.absent("model_requested", self.model_requested.is_some())?;
        f.absent("model_served", self.model_served.is_some())?;
        f.absent("path", self.path.is_some())?;
        f.absent("provider", self.provider.is_some())?;
        f.absent("request_id", self.request_id.is_some())?;
        f.absent("status", self.status.is_some())?;
        f.absent("stream", self.stream.is_some())?;
        f.absent("ttfb_us", self.ttfb_us.is_some())?;
        f.absent("upstream_request_id", self.upstream_request_id.is_some())?;
        f.absent("usage", self.usage.is_some())
    }
}
