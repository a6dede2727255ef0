//! The reporting period `[from, to)` in UTC, and how the CLI spells it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::EvidenceError;

/// A half-open period `[from, to)`; `from < to` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    from: SystemTime,
    to: SystemTime,
}

impl Period {
    /// A period from two instants.
    ///
    /// # Errors
    ///
    /// [`EvidenceError::Period`] unless `from < to`.
    pub fn new(from: SystemTime, to: SystemTime) -> Result<Self, EvidenceError> {
        if to <= from {
            return Err(EvidenceError::Period(format!(
                "--to ({}) must be after --from ({})",
                format_time(to),
                format_time(from)
            )));
        }
        Ok(Period { from, to })
    }

    /// Parses `--from` and `--to`, each `YYYY-MM-DD` (midnight UTC) or an
    /// RFC 3339 time in UTC (`2026-01-31T12:00:00Z`).
    ///
    /// # Errors
    ///
    /// [`EvidenceError::Period`] naming the bad value.
    pub fn parse(from: &str, to: &str) -> Result<Self, EvidenceError> {
        Period::new(parse_time("--from", from)?, parse_time("--to", to)?)
    }

    /// The first instant in the period.
    #[must_use]
    pub fn from(&self) -> SystemTime {
        self.from
    }

    /// The first instant after the period.
    #[must_use]
    pub fn to(&self) -> SystemTime {
        self.to
    }

    /// Whether `t` lies in `[from, to)`.
    #[must_use]
    pub fn contains(&self, t: SystemTime) -> bool {
        self.from <= t && t < self.to
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", format_time(self.from), format_time(self.to))
    }
}

/// Parses one bound.
fn parse_time(flag: &str, text: &str) -> Result<SystemTime, EvidenceError> {
    let bad = || {
        EvidenceError::Period(format!(
            "{flag} {text:?}: want YYYY-MM-DD or an RFC 3339 UTC time such as 2026-01-31T00:00:00Z"
        ))
    };
    let full = if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let t = humantime::parse_rfc3339(&full).map_err(|_| bad())?;
    // humantime accepts day 29-31 of any month; reject dates that do not
    // round-trip, such as 2026-02-30.
    let back = humantime::format_rfc3339_seconds(t).to_string();
    if back.get(..10) != full.get(..10) {
        return Err(bad());
    }
    Ok(t)
}

/// RFC 3339 with seconds precision, UTC.
#[must_use]
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The UTC day (`YYYY-MM-DD`) of `t`.
#[must_use]
pub fn day_of(t: SystemTime) -> String {
    let mut s = format_time(t);
    s.truncate(10);
    s
}

/// The UTC days that `period` touches, in order.
#[must_use]
pub fn days(period: &Period) -> Vec<String> {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let first = secs(period.from) / 86_400;
    // `to` is exclusive: a period ending at midnight does not touch that day.
    let last = secs(period.to).saturating_sub(1) / 86_400;
    (first..=last)
        .map(|d| day_of(UNIX_EPOCH + Duration::from_secs(d * 86_400)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dates_and_rfc3339() {
        let p = Period::parse("2026-01-01", "2026-01-03T12:00:00Z").unwrap();
        assert_eq!(format_time(p.from()), "2026-01-01T00:00:00Z");
        assert_eq!(format_time(p.to()), "2026-01-03T12:00:00Z");
        assert_eq!(days(&p), ["2026-01-01", "2026-01-02", "2026-01-03"]);
        let p = Period::parse("2026-01-01", "2026-01-03").unwrap();
        assert_eq!(days(&p), ["2026-01-01", "2026-01-02"]);
    }

    #[test]
    fn rejects_bad_input() {
        for (from, to, want) in [
            ("2026-01-02", "2026-01-01", "must be after"),
            ("2026-01-01", "2026-01-01", "must be after"),
            ("2026-02-30", "2026-03-01", "--from \"2026-02-30\""),
            ("yesterday", "2026-03-01", "--from \"yesterday\""),
            ("2026-01-01", "2026-13-01", "--to \"2026-13-01\""),
            ("2026-01-01", "", "--to \"\""),
        ] {
            let err = Period::parse(from, to).unwrap_err().to_string();
            assert!(err.contains(want), "{from} {to}: {err}");
        }
        assert!(Period::parse("2024-02-29", "2024-03-01").is_ok());
    }
}
