//! Record timestamps: UTC, whole microseconds, written as RFC 3339 with
//! exactly six fractional digits and a `Z`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::RecordError;

/// The latest timestamp accepted: the start of year 9999, well inside what
/// the RFC 3339 formatter supports.
const MAX_MICROS: u64 = 253_370_764_800 * 1_000_000;

/// A record time: whole microseconds since the Unix epoch, between 1970 and
/// the year 9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch, `1970-01-01T00:00:00.000000Z`.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from microseconds since the Unix epoch, or `None` past
    /// the year 9999.
    #[must_use]
    pub fn from_unix_micros(micros: u64) -> Option<Self> {
        (micros < MAX_MICROS).then_some(Self(micros))
    }

    /// The system time truncated to microseconds, clamped to the supported
    /// range (times before 1970 become the epoch).
    #[must_use]
    pub fn from_system_time(time: SystemTime) -> Self {
        let micros = time
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self(micros.min(MAX_MICROS - 1))
    }

    /// Microseconds since the Unix epoch.
    #[must_use]
    pub fn unix_micros(self) -> u64 {
        self.0
    }

    /// The same instant as a [`SystemTime`].
    #[must_use]
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }

    /// Parses the canonical form, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    ///
    /// # Errors
    ///
    /// [`RecordError::InvalidTimestamp`] for any other form, including
    /// other fraction lengths, offsets other than `Z`, and leap seconds.
    pub fn parse(text: &str) -> Result<Self, RecordError> {
        // Every field has a fixed width and a checked range, so there is
        // exactly one accepted text per instant: no round trip is needed
        // to reject alternative forms. This runs on every record the
        // verifier reads, hence no allocation and no general parser.
        let b: &[u8; CANONICAL_LEN] = text
            .as_bytes()
            .try_into()
            .map_err(|_| RecordError::InvalidTimestamp)?;
        let separators = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ];
        if separators.iter().any(|&(i, c)| b[i] != c) {
            return Err(RecordError::InvalidTimestamp);
        }
        let num = |from: usize, to: usize| -> Result<u64, RecordError> {
            b[from..to].iter().try_fold(0u64, |n, &d| {
                if d.is_ascii_digit() {
                    Ok(n * 10 + u64::from(d - b'0'))
                } else {
                    Err(RecordError::InvalidTimestamp)
                }
            })
        };
        let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        let micros = num(20, 26)?;
        let valid = year >= 1970
            && (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month)
            && hour < 24
            && minute < 60
            && second < 60;
        if !valid {
            return Err(RecordError::InvalidTimestamp);
        }
        let secs = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
        Self::from_unix_micros(secs * 1_000_000 + micros).ok_or(RecordError::InvalidTimestamp)
    }

    /// The canonical text, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as bytes.
    #[must_use]
    pub fn to_canonical(self) -> [u8; CANONICAL_LEN] {
        let secs = self.0 / 1_000_000;
        let micros = self.0 % 1_000_000;
        let (year, month, day) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        put_digits(&mut out[0..4], year);
        put_digits(&mut out[5..7], month);
        put_digits(&mut out[8..10], day);
        put_digits(&mut out[11..13], rem / 3_600);
        put_digits(&mut out[14..16], rem % 3_600 / 60);
        put_digits(&mut out[17..19], rem % 60);
        put_digits(&mut out[20..26], micros);
        out
    }
}

/// The length of the canonical text.
pub const CANONICAL_LEN: usize = 27;

/// Writes `n` as zero-padded decimal filling `out`.
fn put_digits(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date on or after it
/// (H. Hinnant's `days_from_civil`, for non-negative years).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for non-negative counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_canonical();
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.to_canonical();
        s.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 UTC timestamp with microseconds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_six_digits_and_z() {
        let ts = Timestamp::from_unix_micros(1_700_000_000_000_001).unwrap();
        assert_eq!(ts.to_string(), "2023-11-14T22:13:20.000001Z");
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(Timestamp::parse(&ts.to_string()), Ok(ts));
    }

    #[test]
    fn rejects_other_forms() {
        for bad in [
            "2023-11-14T22:13:20Z",
            "2023-11-14T22:13:20.000Z",
            "2023-11-14T22:13:20.000001000Z",
            "2023-11-14T22:13:20.000001+00:00",
            "2023-11-14 22:13:20.000001Z",
            "2023-11-14T22:13:60.000001Z",
            "2023-02-30T22:13:20.000001Z",
            "2023-11-14T22:13:20.00000aZ",
            "",
        ] {
            assert_eq!(
                Timestamp::parse(bad),
                Err(RecordError::InvalidTimestamp),
                "{bad}"
            );
        }
    }

    /// The hand-written calendar code against humantime, which the
    /// format was first defined with: the same text for the same instant,
    /// and the same verdict on mutated texts.
    #[test]
    fn agrees_with_humantime() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let edges = [
            0,
            1,
            86_399_999_999,
            951_782_400_000_000,   // 2000-02-29
            4_107_542_400_000_000, // 2100-03-01
            MAX_MICROS - 1,
        ];
        let randoms: Vec<u64> = (0..20_000).map(|_| next() % MAX_MICROS).collect();
        for micros in edges.into_iter().chain(randoms) {
            let ts = Timestamp(micros);
            let ours = ts.to_string();
            let theirs = humantime::format_rfc3339_micros(ts.to_system_time()).to_string();
            assert_eq!(ours, theirs);
            assert_eq!(Timestamp::parse(&ours), Ok(ts));
            // Mutate one byte into another digit or separator and compare
            // the verdict with the humantime round trip.
            let mut bytes = ours.into_bytes();
            let at = (next() % 27) as usize;
            let pick = (next() % 15) as usize;
            bytes[at] = b"0123456789-:TZ."[pick];
            let text = String::from_utf8(bytes).unwrap();
            let reference = humantime::parse_rfc3339(&text)
                .ok()
                .map(Timestamp::from_system_time)
                .filter(|t| {
                    humantime::format_rfc3339_micros(t.to_system_time()).to_string() == text
                });
            assert_eq!(Timestamp::parse(&text).ok(), reference, "{text}");
        }
    }

    #[test]
    fn system_time_is_truncated_and_clamped() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_999);
        assert_eq!(Timestamp::from_system_time(t).unix_micros(), 1);
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Timestamp::from_system_time(before), Timestamp::EPOCH);
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert!(
            Timestamp::from_system_time(far)
                .to_string()
                .starts_with("9998-12-31T23:59:59")
        );
        assert!(Timestamp::from_unix_micros(MAX_MICROS).is_none());
    }
}
