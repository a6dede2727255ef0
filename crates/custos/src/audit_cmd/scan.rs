//! Streaming reads of the segment files for tail, search and export: one
//! line at a time, so memory stays flat however large the ledger is, and
//! only complete (newline-terminated) lines, so that reading while the
//! server appends is safe. Also the time-range arguments shared by the
//! commands that filter by time.
//!
//! The layout (`segments/<first seq, 20 digits>.jsonl`, one canonical
//! record per line) is the one `docs/audit-log-format.md` specifies; the
//! segment list comes from `LedgerReader::segments`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use custos_record::{Record, decode};

/// How far a record's timestamp may go back from an earlier record's in a
/// ledger that verifies (the verifier's tolerance). Time-range scans use
/// it to skip segments and to stop early without missing a record.
const TS_TOLERANCE_US: u64 = custos_verify::TIMESTAMP_TOLERANCE;

/// The path of the segment whose first record is `first`.
pub(super) fn segment_path(ledger: &Path, first: u64) -> PathBuf {
    ledger.join("segments").join(format!("{first:020}.jsonl"))
}

/// One stored line: a record's canonical bytes and where they are.
#[derive(Debug)]
pub(super) struct Line {
    /// The segment file.
    pub(super) file: PathBuf,
    /// The record's position in the log (its expected `seq`).
    pub(super) seq: u64,
    /// The canonical record bytes, without the newline.
    pub(super) bytes: Vec<u8>,
}

impl Line {
    /// Decodes the record strictly and checks its `seq` is its position.
    pub(super) fn decode(&self) -> anyhow::Result<Record> {
        let record = decode(&self.bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: seq {}: bad record: {e} (run `custos audit verify`)",
                self.file.display(),
                self.seq
            )
        })?;
        if record.seq != self.seq {
            anyhow::bail!(
                "{}: seq {}: record says seq {} (run `custos audit verify`)",
                self.file.display(),
                self.seq,
                record.seq
            );
        }
        Ok(record)
    }
}

/// Where a reader stands: the segment it reads, the byte offset just after
/// the last complete line it returned, and the seq of the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) segment: u64,
    pub(super) offset: u64,
    pub(super) next_seq: u64,
}

/// Reads complete lines from `reader` at `pos`, advancing it, until end of
/// file or a partial last line (left for a later read).
fn read_lines(
    reader: &mut impl BufRead,
    file: &Path,
    pos: &mut Position,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Line>> {
    buf.clear();
    let n = reader.read_until(b'\n', buf)?;
    if n == 0 || buf.last() != Some(&b'\n') {
        return Ok(None);
    }
    buf.pop();
    let line = Line {
        file: file.to_path_buf(),
        seq: pos.next_seq,
        bytes: std::mem::take(buf),
    };
    pos.offset += n as u64;
    pos.next_seq += 1;
    Ok(Some(line))
}

/// Every complete line of the given segments, in order.
pub(super) struct Scan {
    ledger: PathBuf,
    /// Segments still to open, first at the end.
    pending: Vec<u64>,
    current: Option<(PathBuf, BufReader<File>)>,
    pos: Option<Position>,
    buf: Vec<u8>,
    failed: bool,
}

impl Scan {
    /// A scan of `segments` (ascending first seqs) from index `start` on.
    pub(super) fn new(ledger: &Path, segments: &[u64], start: usize) -> Self {
        Scan {
            ledger: ledger.to_path_buf(),
            pending: segments
                .get(start..)
                .unwrap_or(&[])
                .iter()
                .rev()
                .copied()
                .collect(),
            current: None,
            pos: None,
            buf: Vec::new(),
            failed: false,
        }
    }

    /// Where the scan stands: after the last line returned, in the last
    /// segment opened. `None` before any segment was opened.
    pub(super) fn position(&self) -> Option<Position> {
        self.pos
    }
}

impl Iterator for Scan {
    type Item = anyhow::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let (Some((path, reader)), Some(pos)) = (&mut self.current, &mut self.pos) {
                match read_lines(reader, path, pos, &mut self.buf) {
                    Ok(Some(line)) => return Some(Ok(line)),
                    Ok(None) => self.current = None,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(anyhow::Error::new(e)
                            .context(format!("cannot read {}", path.display()))));
                    }
                }
            }
            let first = self.pending.pop()?;
            let path = segment_path(&self.ledger, first);
            match File::open(&path) {
                Ok(file) => {
                    self.current = Some((path, BufReader::with_capacity(1 << 16, file)));
                    self.pos = Some(Position {
                        segment: first,
                        offset: 0,
                        next_seq: first,
                    });
                }
                // Retention purged it after we listed the directory: its
                // records are legitimately gone.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.failed = true;
                    return Some(Err(
                        anyhow::Error::new(e).context(format!("cannot open {}", path.display()))
                    ));
                }
            }
        }
    }
}

/// Follows the end of the log: each [`poll`](Self::poll) returns the
/// complete lines written since the last one, moving on to the next
/// segment when the writer seals the current one.
pub(super) struct Follow {
    ledger: PathBuf,
    pos: Position,
}

impl Follow {
    /// Follows from `pos` (normally where a [`Scan`] ended).
    pub(super) fn new(ledger: &Path, pos: Position) -> Self {
        Follow {
            ledger: ledger.to_path_buf(),
            pos,
        }
    }

    /// The lines appended since the last poll.
    pub(super) fn poll(&mut self) -> anyhow::Result<Vec<Line>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            let path = segment_path(&self.ledger, self.pos.segment);
            match File::open(&path) {
                Ok(mut file) => {
                    file.seek(SeekFrom::Start(self.pos.offset))
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let mut reader = BufReader::new(file);
                    while let Some(line) =
                        read_lines(&mut reader, &path, &mut self.pos, &mut buf)
                            .with_context(|| format!("cannot read {}", path.display()))?
                    {
                        out.push(line);
                    }
                }
                // Not created yet (an empty ledger).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot open {}", path.display()))
                    );
                }
            }
            // A sealed segment is never written again, and its successor is
            // named after the next seq; switch once that file exists. Lines
            // written to the old one before the seal were read above.
            let next = segment_path(&self.ledger, self.pos.next_seq);
            if self.pos.next_seq != self.pos.segment && next.exists() {
                self.pos = Position {
                    segment: self.pos.next_seq,
                    offset: 0,
                    next_seq: self.pos.next_seq,
                };
                continue;
            }
            return Ok(out);
        }
    }
}

/// Counts the complete lines of a segment, streaming.
pub(super) fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot open {}", path.display())));
        }
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut lines = 0u64;
    loop {
        let chunk = reader
            .fill_buf()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if chunk.is_empty() {
            return Ok(lines);
        }
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = chunk.len();
        reader.consume(n);
    }
}

/// The timestamp (µs) of a segment's first record, if it has a readable one.
fn first_ts(ledger: &Path, first: u64) -> Option<u64> {
    let file = File::open(segment_path(ledger, first)).ok()?;
    let mut reader = BufReader::new(file);
    let mut pos = Position {
        segment: first,
        offset: 0,
        next_seq: first,
    };
    let line = read_lines(&mut reader, Path::new(""), &mut pos, &mut Vec::new()).ok()??;
    decode(&line.bytes).ok().map(|r| r.ts.unix_micros())
}

/// The index of the first segment that can hold a record at or after
/// `from` (µs). A segment holds only records no later than the next
/// segment's first one (plus the tolerance), so every segment whose
/// successor starts before `from - tolerance` is skipped unread.
pub(super) fn start_index(ledger: &Path, segments: &[u64], from: Option<u64>) -> usize {
    let Some(from) = from else { return 0 };
    let mut start = 0;
    for (i, &first) in segments.iter().enumerate().skip(1) {
        match first_ts(ledger, first) {
            Some(ts) if ts.saturating_add(TS_TOLERANCE_US) < from => start = i,
            _ => break,
        }
    }
    start
}

/// A half-open time range `[from, to)` in microseconds since the epoch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TimeRange {
    pub(super) from: Option<u64>,
    pub(super) to: Option<u64>,
}

impl TimeRange {
    /// Whether `ts` (µs) is inside the range.
    pub(super) fn contains(&self, ts: u64) -> bool {
        self.from.is_none_or(|f| ts >= f) && self.to.is_none_or(|t| ts < t)
    }

    /// Whether no later record can be inside the range: `ts` is past the
    /// end by more than the tolerance a verifying ledger allows.
    pub(super) fn is_past(&self, ts: u64) -> bool {
        self.to
            .is_some_and(|t| ts >= t.saturating_add(TS_TOLERANCE_US))
    }

    /// Checks `from < to`.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        if let (Some(f), Some(t)) = (self.from, self.to)
            && f >= t
        {
            anyhow::bail!("--from must be before --to");
        }
        Ok(())
    }
}

/// Parses a `--from`/`--to` value into µs since the epoch: RFC 3339
/// (`2025-01-31T12:00:00Z`, `…T12:00:00.5+02:00`) or a UTC date
/// (`2025-01-31`, meaning its midnight).
pub(super) fn parse_time(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?}: want RFC 3339 (2025-01-31T12:00:00Z) or a date (2025-01-31)");
    let is_date = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let (text, offset_secs) = if is_date {
        (format!("{s}T00:00:00Z"), 0i64)
    } else if let Some(rest) = s.strip_suffix(['Z', 'z']) {
        (format!("{rest}Z"), 0)
    } else {
        // A numeric offset `±HH:MM`, which humantime does not parse.
        let split = s.len().checked_sub(6).ok_or_else(bad)?;
        let (rest, off) = s.split_at_checked(split).ok_or_else(bad)?;
        let b = off.as_bytes();
        let digits = |i: usize| -> Option<i64> {
            let d = |c: u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
            Some(d(b[i])? * 10 + d(b[i + 1])?)
        };
        let sign = match b[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let (Some(h), Some(m), b':') = (digits(1), digits(4), b[3]) else {
            return Err(bad());
        };
        if h > 23 || m > 59 {
            return Err(bad());
        }
        (format!("{rest}Z"), sign * (h * 3600 + m * 60))
    };
    let time = humantime::parse_rfc3339(&text).map_err(|_| bad())?;
    let micros = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_micros();
    let micros = i128::try_from(micros).map_err(|_| bad())? - i128::from(offset_secs) * 1_000_000;
    u64::try_from(micros).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dates_and_rfc3339() {
        let day = 1_735_689_600_000_000; // 2025-01-01T00:00:00Z
        assert_eq!(parse_time("2025-01-01"), Ok(day));
        assert_eq!(parse_time("2025-01-01T00:00:00Z"), Ok(day));
        assert_eq!(parse_time("2025-01-01T00:00:00.000001Z"), Ok(day + 1));
        assert_eq!(parse_time("2025-01-01T02:00:00+02:00"), Ok(day));
        assert_eq!(parse_time("2024-12-31T23:30:00-00:30"), Ok(day));
        for bad in [
            "",
            "2025-01-01T00:00:00",
            "2025-13-01",
            "2025-01-01T00:00:00+2:00",
            "2025-01-01T00:00:00+24:00",
            "yesterday",
            "2025/01/01",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn range_is_half_open_and_stops_past_the_tolerance() {
        let r = TimeRange {
            from: Some(10),
            to: Some(20),
        };
        assert!(!r.contains(9));
        assert!(r.contains(10));
        assert!(r.contains(19));
        assert!(!r.contains(20));
        assert!(!r.is_past(20));
        assert!(r.is_past(20 + TS_TOLERANCE_US));
        assert!(TimeRange::default().contains(0));
        assert!(!TimeRange::default().is_past(u64::MAX));
    }

    #[test]
    fn read_lines_leaves_a_partial_line() {
        let data = b"a\nbb\ncc";
        let mut reader = &data[..];
        let mut pos = Position {
            segment: 5,
            offset: 0,
            next_seq: 5,
        };
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(line) = read_lines(&mut reader, Path::new("x"), &mut pos, &mut buf).unwrap()
        {
            got.push((line.seq, line.bytes));
        }
        assert_eq!(got, vec![(5, b"a".to_vec()), (6, b"bb".to_vec())]);
        assert_eq!(
            pos,
            Position {
                segment: 5,
                offset: 5,
                next_seq: 7
            }
        );
    }
}
