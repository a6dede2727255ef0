//! Conversions between `SystemTime` and the stored form (integer
//! milliseconds since the Unix epoch), and UTC day and month boundaries.
//!
//! Milliseconds are portable across SQLite and PostgreSQL, sort correctly and
//! need no time-zone handling; sub-millisecond precision is dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_auth::scope::BudgetPeriod;

const MS_PER_DAY: i64 = 86_400_000;

/// `t` as milliseconds since the epoch, negative before it, saturating far
/// outside the representable range.
pub(crate) fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The inverse of [`to_ms`].
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The first millisecond of the UTC day that contains `ms`.
pub(crate) fn day_start(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_DAY) * MS_PER_DAY
}

/// The first millisecond of the budget period that contains `ms`.
pub(crate) fn period_start(period: BudgetPeriod, ms: i64) -> i64 {
    match period {
        BudgetPeriod::Day => day_start(ms),
        BudgetPeriod::Month => {
            let (y, m, _) = civil_from_days(ms.div_euclid(MS_PER_DAY));
            days_from_civil(y, m, 1) * MS_PER_DAY
        }
    }
}

// Howard Hinnant's algorithms (public domain), for the proleptic Gregorian
// calendar: <https://howardhinnant.github.io/date_algorithms.html>.

fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_round_trips() {
        for ms in [0, 1, 1_700_000_000_123, -1, -86_400_001] {
            assert_eq!(to_ms(from_ms(ms)), ms);
        }
    }

    #[test]
    fn calendar_known_answers() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        for z in -800_000..800_000i64 {
            if z % 997 != 0 {
                continue;
            }
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn period_starts() {
        // 2024-02-29T13:14:15.123Z
        let t = 1_709_212_455_123;
        assert_eq!(period_start(BudgetPeriod::Day, t), 1_709_164_800_000);
        // 2024-02-01T00:00:00Z
        assert_eq!(period_start(BudgetPeriod::Month, t), 1_706_745_600_000);
        assert_eq!(
            period_start(BudgetPeriod::Month, 1_706_745_600_000),
            1_706_745_600_000
        );
        assert_eq!(
            period_start(BudgetPeriod::Month, 1_706_745_599_999),
            1_704_067_200_000
        );
    }
}
