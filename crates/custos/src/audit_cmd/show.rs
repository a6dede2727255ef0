//! `audit tail` and `audit search`: reading records as an operator does.
//!
//! Search is a linear scan of the segments, with a byte-level prefilter
//! before any record is decoded; a secondary index (by key, model or
//! request ID) may be added later, and would only ever narrow the scan:
//! it is never authoritative, the segment files are.

use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use clap::{Args, ValueEnum};
use custos_ledger::LedgerReader;
use custos_record::{Record, RecordBody, RecordType, Scalar};

use super::scan::{self, Follow, Line, Position, Scan, TimeRange};
use super::{is_broken_pipe, require_ledger, with_stdout};

/// `audit tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// How many records to print.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 10)]
    lines: usize,
    /// Keep printing new records as they are written, until interrupted
    /// (SIGINT or SIGTERM end it cleanly with status 0).
    #[arg(short, long)]
    follow: bool,
    /// How often --follow looks for new records (100ms to 10s).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_interval)]
    interval: Duration,
    /// Print the canonical record JSON, one per line.
    #[arg(long)]
    json: bool,
}

/// The `--type` of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TypeArg {
    /// `/v1` requests.
    Inference,
    /// Administrative actions.
    Admin,
    /// Gateway and ledger events.
    System,
}

impl TypeArg {
    fn record_type(self) -> RecordType {
        match self {
            TypeArg::Inference => RecordType::Inference,
            TypeArg::Admin => RecordType::Admin,
            TypeArg::System => RecordType::System,
        }
    }
}

/// A `--status` filter: one code, or a class such as `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusMatch {
    Code(u16),
    /// The hundreds digit: 4 for `4xx`.
    Class(u16),
}

impl StatusMatch {
    fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(c) => status == c,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

fn parse_status(s: &str) -> Result<StatusMatch, String> {
    let bad = || format!("{s:?}: want a status code (429) or a class (1xx to 5xx)");
    if let Some(digit) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
        return match digit.parse::<u16>() {
            Ok(d @ 1..=5) if digit.len() == 1 => Ok(StatusMatch::Class(d)),
            _ => Err(bad()),
        };
    }
    match s.parse::<u16>() {
        Ok(c @ 100..=599) => Ok(StatusMatch::Code(c)),
        _ => Err(bad()),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(10) {
        return Err("must be between 100ms and 10s".into());
    }
    Ok(d)
}

/// `audit search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Records at or after this time (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, value_name = "TIME", value_parser = scan::parse_time)]
    from: Option<u64>,
    /// Records before this time (exclusive).
    #[arg(long, value_name = "TIME", value_parser = scan::parse_time)]
    to: Option<u64>,
    /// Requests made with this API key, and admin actions whose target is it.
    #[arg(long = "key", value_name = "KEY_ID")]
    key: Option<String>,
    /// Requests for or served by this model.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Requests answered with this status: a code (429) or a class (4xx, 5xx).
    #[arg(long, value_name = "CODE", value_parser = parse_status)]
    status: Option<StatusMatch>,
    /// Requests with this request ID.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// Only records of this type.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    record_type: Option<TypeArg>,
    /// Stop after this many matches.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Print the canonical record JSON, one per line.
    #[arg(long)]
    json: bool,
}

/// A search's conditions; all given ones must hold.
struct Filter {
    range: TimeRange,
    key: Option<String>,
    model: Option<String>,
    status: Option<StatusMatch>,
    request_id: Option<String>,
    record_type: Option<RecordType>,
    /// Byte strings every matching record's canonical encoding contains:
    /// a cheap test before decoding.
    needles: Vec<Vec<u8>>,
}

impl Filter {
    fn new(args: &SearchArgs) -> Self {
        // The canonical encoder escapes strings as serde_json does, so a
        // value's JSON literal appears verbatim in any record holding it.
        let literal = |s: &String| serde_json::to_string(s).unwrap_or_default().into_bytes();
        let mut needles: Vec<Vec<u8>> = [&args.key, &args.model, &args.request_id]
            .into_iter()
            .flatten()
            .map(literal)
            .collect();
        if let Some(t) = args.record_type {
            needles.push(format!("\"type\":\"{}\"", t.record_type()).into_bytes());
        }
        Filter {
            range: TimeRange {
                from: args.from,
                to: args.to,
            },
            key: args.key.clone(),
            model: args.model.clone(),
            status: args.status,
            request_id: args.request_id.clone(),
            record_type: args.record_type.map(TypeArg::record_type),
            needles,
        }
    }

    fn prefilter(&self, bytes: &[u8]) -> bool {
        self.needles
            .iter()
            .all(|n| memchr::memmem::find(bytes, n).is_some())
    }

    fn matches(&self, r: &Record) -> bool {
        if !self.range.contains(r.ts.unix_micros()) {
            return false;
        }
        if self.record_type.is_some_and(|t| t != r.body.record_type()) {
            return false;
        }
        let inference = match &r.body {
            RecordBody::Inference(i) => Some(i),
            _ => None,
        };
        if let Some(key) = &self.key {
            let by_key = inference
                .and_then(|i| i.actor.as_ref())
                .and_then(|a| a.key_id.as_deref())
                == Some(key.as_str());
            let on_key = matches!(&r.body, RecordBody::Admin(a)
                if a.target.as_ref().is_some_and(|t| t.kind == "key" && &t.id == key));
            if !by_key && !on_key {
                return false;
            }
        }
        if let Some(model) = &self.model {
            let Some(i) = inference else { return false };
            let m = Some(model.as_str());
            if i.model_requested.as_deref() != m && i.model_served.as_deref() != m {
                return false;
            }
        }
        if let Some(status) = self.status
            && !inference.is_some_and(|i| status.matches(i.status))
        {
            return false;
        }
        if let Some(id) = &self.request_id
            && inference.is_none_or(|i| &i.request_id != id)
        {
            return false;
        }
        true
    }
}

/// Formats microseconds for people: `850µs`, `12.3ms`, `1.24s`.
fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

fn scalar(v: &Scalar) -> String {
    match v {
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Str(s) => s.clone(),
    }
}

/// One line per record: seq, time, type, event, request ID, key, model,
/// status and latency; admin and system records put their own details at
/// the end. Record text has no control characters (the schema forbids
/// them), so it is safe to print to a terminal.
pub(super) fn summary(r: &Record) -> String {
    let head = format!(
        "{:>8}  {}  {:<9}  {:<18}",
        r.seq,
        r.ts,
        r.body.record_type().as_str(),
        r.body.event()
    );
    match &r.body {
        RecordBody::Inference(i) => {
            let key = i
                .actor
                .as_ref()
                .and_then(|a| a.key_id.as_deref())
                .unwrap_or("-");
            let model = match (i.model_requested.as_deref(), i.model_served.as_deref()) {
                (Some(req), Some(served)) if req != served => format!("{req}->{served}"),
                (_, Some(m)) | (Some(m), None) => m.to_owned(),
                (None, None) => "-".to_owned(),
            };
            let error = i
                .error_code
                .as_deref()
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            format!(
                "{head}  {:<26}  {key:<18}  {model:<30}  {:>3}  {:>8}{error}",
                i.request_id,
                i.status,
                micros(i.latency_us)
            )
        }
        RecordBody::Admin(a) => {
            let target = a
                .target
                .as_ref()
                .map(|t| format!(" {}:{}", t.kind, t.id))
                .unwrap_or_default();
            format!(
                "{head}  {:<26}  {:<18}  {}{target} (role {}, via {}{})",
                "-",
                a.actor.user,
                a.action,
                a.actor.role,
                super::export::via_name(a.actor.via),
                if a.actor.mfa { ", mfa" } else { "" }
            )
        }
        RecordBody::System(s) => {
            let details: Vec<String> = s
                .details
                .iter()
                .map(|(k, v)| format!("{k}={}", scalar(v)))
                .collect();
            format!("{head}  {}", details.join(" "))
                .trim_end()
                .to_owned()
        }
    }
}

fn print_line(out: &mut dyn Write, line: &Line, json: bool) -> anyhow::Result<()> {
    if json {
        // The canonical bytes are already one line of JSON.
        line.decode()?;
        out.write_all(&line.bytes)?;
        out.write_all(b"\n")?;
    } else {
        writeln!(out, "{}", summary(&line.decode()?))?;
    }
    Ok(())
}

/// Prints the last `args.lines` records and returns where the log ends.
fn last_lines(ledger: &Path, args: &TailArgs, out: &mut dyn Write) -> anyhow::Result<Position> {
    let segments = LedgerReader::open(ledger).segments()?;
    let Some(&last) = segments.last() else {
        return Ok(Position {
            segment: 0,
            offset: 0,
            next_seq: 0,
        });
    };
    // Sealed segments hold exactly (next first seq - first seq) records, so
    // only the open one is counted; start as far back as `lines` needs.
    let want = args.lines as u64;
    let mut start = segments.len() - 1;
    let mut have = scan::count_lines(&scan::segment_path(ledger, last))?;
    while start > 0 && have < want {
        start -= 1;
        have += segments[start + 1].saturating_sub(segments[start]);
    }
    let mut ring: VecDeque<Line> = VecDeque::new();
    let mut lines = Scan::new(ledger, &segments, start);
    for line in &mut lines {
        let line = line?;
        if args.lines == 0 {
            continue;
        }
        if ring.len() == args.lines {
            ring.pop_front();
        }
        ring.push_back(line);
    }
    for line in &ring {
        print_line(out, line, args.json)?;
    }
    Ok(lines.position().unwrap_or(Position {
        segment: last,
        offset: 0,
        next_seq: last,
    }))
}

/// `custos audit tail`.
pub(super) fn tail(ledger: &Path, args: &TailArgs) -> anyhow::Result<()> {
    require_ledger(ledger)?;
    if !args.follow {
        return with_stdout(|out| {
            last_lines(ledger, args, out)?;
            Ok(())
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Caught before anything is printed, so an interrupt at any point
        // ends the command cleanly: output flushed, status 0.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        let result: anyhow::Result<()> = async {
            let pos = last_lines(ledger, args, &mut out)?;
            out.flush()?;
            let mut follow = Follow::new(ledger, pos);
            loop {
                // Blocking file reads are fine here: this single-threaded
                // runtime only waits for the timer and the signals.
                for line in follow.poll()? {
                    print_line(&mut out, &line, args.json)?;
                }
                out.flush()?;
                tokio::select! {
                    () = tokio::time::sleep(args.interval) => {}
                    _ = term.recv() => return Ok(()),
                    _ = int.recv() => return Ok(()),
                }
            }
        }
        .await;
        match result {
            Err(e) if is_broken_pipe(&e) => Ok(()),
            other => other,
        }
    })
}

/// The top-level `ts` of a canonical record, without decoding it. Keys are
/// sorted and only `type` and `v` (both scalars) follow `ts`, and a raw
/// `"` cannot occur inside a string, so the last `"ts":"` is the one.
fn quick_ts(bytes: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts\":\"";
    let at = memchr::memmem::rfind(bytes, KEY)? + KEY.len();
    let text = std::str::from_utf8(bytes.get(at..at + 27)?).ok()?;
    custos_record::Timestamp::parse(text)
        .ok()
        .map(custos_record::Timestamp::unix_micros)
}

/// `custos audit search`.
pub(super) fn search(ledger: &Path, args: &SearchArgs) -> anyhow::Result<()> {
    require_ledger(ledger)?;
    let filter = Filter::new(args);
    filter.range.check()?;
    let segments = LedgerReader::open(ledger).segments()?;
    let start = scan::start_index(ledger, &segments, filter.range.from);
    with_stdout(|out| {
        let mut found = 0usize;
        for line in Scan::new(ledger, &segments, start) {
            if args.limit.is_some_and(|l| found >= l) {
                break;
            }
            let line = line?;
            if let Some(ts) = quick_ts(&line.bytes) {
                if filter.range.is_past(ts) {
                    break;
                }
                if !filter.range.contains(ts) {
                    continue;
                }
            }
            if !filter.prefilter(&line.bytes) {
                continue;
            }
            let record = line.decode()?;
            if filter.range.is_past(record.ts.unix_micros()) {
                break;
            }
            if !filter.matches(&record) {
                continue;
            }
            if args.json {
                out.write_all(&line.bytes)?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{}", summary(&record))?;
            }
            found += 1;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters() {
        assert_eq!(parse_status("429"), Ok(StatusMatch::Code(429)));
        assert_eq!(parse_status("4xx"), Ok(StatusMatch::Class(4)));
        assert_eq!(parse_status("5XX"), Ok(StatusMatch::Class(5)));
        for bad in ["", "42", "600", "6xx", "0xx", "44xx", "x", "4x"] {
            assert!(parse_status(bad).is_err(), "{bad:?}");
        }
        assert!(StatusMatch::Class(4).matches(404));
        assert!(!StatusMatch::Class(4).matches(500));
        assert!(StatusMatch::Code(499).matches(499));
    }

    #[test]
    fn quick_ts_finds_the_top_level_timestamp() {
        use custos_record::{System, Timestamp, encode};
        let ts = Timestamp::from_unix_micros(1_735_689_600_000_001).unwrap();
        let record = Record {
            seq: 3,
            ts,
            body: RecordBody::System(
                System::new("server.started").with("ts", "2000-01-01T00:00:00.000000Z"),
            ),
        };
        assert_eq!(quick_ts(&encode(&record)), Some(ts.unix_micros()));
        assert_eq!(quick_ts(b"{}"), None);
    }

    #[test]
    fn latency_is_readable() {
        assert_eq!(micros(850), "850µs");
        assert_eq!(micros(12_340), "12.3ms");
        assert_eq!(micros(1_240_000), "1.24s");
    }
}
