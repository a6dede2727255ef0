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
    to_ms(period.bounds(from_ms(ms)).0)
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
        use custos_auth::scope::{civil_from_days, days_from_civil};
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
