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
        // The fixed length excludes other precisions before parsing; the
        // round trip below excludes every other alternative form.
        if text.len() != "2006-01-02T15:04:05.000000Z".len() {
            return Err(RecordError::InvalidTimestamp);
        }
        let time = humantime::parse_rfc3339(text).map_err(|_| RecordError::InvalidTimestamp)?;
        let ts = Self::from_system_time(time);
        let mut check = String::with_capacity(27);
        ts.write_to(&mut check);
        if check != text || ts.to_system_time() != time {
            return Err(RecordError::InvalidTimestamp);
        }
        Ok(ts)
    }

    /// Appends the canonical text to `out`.
    pub(crate) fn write_to(self, out: &mut String) {
        use fmt::Write as _;
        // The formatter only fails past the year 9999, which the
        // constructors exclude.
        let _ = write!(
            out,
            "{}",
            humantime::format_rfc3339_micros(self.to_system_time())
        );
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_rfc3339_micros(self.to_system_time()), f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = String::with_capacity(27);
        self.write_to(&mut text);
        s.serialize_str(&text)
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
