//! UTC calendar months, the unit of the service's spend counters and limits.
//!
//! A [`MonthKey`] is a year and a month of the proleptic Gregorian calendar in
//! UTC; no local time zone is ever consulted. Month boundaries are computed with
//! integer arithmetic, so [`MonthKey::start_ms`] and [`MonthKey::end_ms`] never
//! fail.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds in a day.
const MS_PER_DAY: i64 = 86_400_000;

/// A UTC calendar month, ordered chronologically. Displayed and serialized as
/// `YYYY-MM` (`2025-10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonthKey {
    year: i32,
    month: u32,
}

/// Why a text is not a month `YYYY-MM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a month YYYY-MM: {0:?}")]
pub struct ParseMonthError(String);

impl MonthKey {
    /// The month `year`-`month`; `None` unless `month` is 1..=12 and the year is
    /// within chrono's calendar range.
    pub fn new(year: i32, month: u32) -> Option<Self> {
        NaiveDate::from_ymd_opt(year, month, 1).map(|_| MonthKey { year, month })
    }

    /// The month of a year and month that were checked when they were first
    /// read ([`MonthKey::new`]) and kept since, e.g. the ledger's packed
    /// entries; no calendar check again (a year beyond `i32` would become
    /// year 0, which checked values never are).
    pub(crate) fn from_checked_parts(year: i64, month: u8) -> Self {
        MonthKey {
            year: i32::try_from(year).unwrap_or(0),
            month: u32::from(month),
        }
    }

    /// The UTC month containing the instant `ms` (epoch milliseconds); `None`
    /// when the instant is outside chrono's range.
    pub fn from_epoch_ms(ms: i64) -> Option<Self> {
        let t = DateTime::<Utc>::from_timestamp_millis(ms)?;
        Some(MonthKey {
            year: t.year(),
            month: t.month(),
        })
    }

    /// Like [`MonthKey::from_epoch_ms`], but an instant outside chrono's range
    /// gives the first or last month of that range instead of `None`.
    pub fn from_epoch_ms_saturating(ms: i64) -> Self {
        let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        });
        MonthKey {
            year: t.year(),
            month: t.month(),
        }
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month, 1..=12.
    pub fn month(self) -> u32 {
        self.month
    }

    /// The first millisecond of the month (UTC), epoch milliseconds.
    pub fn start_ms(self) -> i64 {
        days_from_civil(i64::from(self.year), self.month).saturating_mul(MS_PER_DAY)
    }

    /// The first millisecond of the next month (UTC): the month is the
    /// half-open interval `[start_ms, end_ms)`.
    pub fn end_ms(self) -> i64 {
        let (y, m) = if self.month >= 12 {
            (i64::from(self.year) + 1, 1)
        } else {
            (i64::from(self.year), self.month + 1)
        };
        days_from_civil(y, m).saturating_mul(MS_PER_DAY)
    }

    /// The following month (December of year `i32::MAX` is its own successor).
    pub fn next(self) -> Self {
        if self.month >= 12 {
            match self.year.checked_add(1) {
                Some(year) => MonthKey { year, month: 1 },
                None => self,
            }
        } else {
            MonthKey {
                year: self.year,
                month: self.month + 1,
            }
        }
    }
}

/// Days from 1970-01-01 to the first day of `year`-`month` (proleptic
/// Gregorian; H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32) -> i64 {
    let m = i64::from(month);
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5; // day 1 of the month
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for MonthKey {
    /// `YYYY-MM`; a negative year is written `-YYYY-MM`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.year < 0 {
            write!(f, "-{:04}-{:02}", self.year.unsigned_abs(), self.month)
        } else {
            write!(f, "{:04}-{:02}", self.year, self.month)
        }
    }
}

impl FromStr for MonthKey {
    type Err = ParseMonthError;

    /// Parses `YYYY-MM` (at least four year digits, exactly two month digits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMonthError(s.to_owned());
        let (y, m) = s.rsplit_once('-').ok_or_else(err)?;
        let y_digits = y.strip_prefix('-').unwrap_or(y);
        if y_digits.len() < 4 || !y_digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        if m.len() != 2 || !m.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let year: i32 = y.parse().map_err(|_| err())?;
        let month: u32 = m.parse().map_err(|_| err())?;
        MonthKey::new(year, month).ok_or_else(err)
    }
}

impl Serialize for MonthKey {
    /// Serialized as the string `YYYY-MM`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MonthKey {
    /// Deserialized from the string `YYYY-MM`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect(rfc3339)
            .timestamp_millis()
    }

    fn mk(y: i32, m: u32) -> MonthKey {
        MonthKey::new(y, m).expect("valid month")
    }

    #[test]
    fn utc_month_of_an_instant() {
        assert_eq!(
            MonthKey::from_epoch_ms(ms("2025-10-31T23:59:59.999Z")),
            Some(mk(2025, 10))
        );
        assert_eq!(
            MonthKey::from_epoch_ms(ms("2025-11-01T00:00:00.000Z")),
            Some(mk(2025, 11))
        );
        // an offset in the input text does not matter: the instant is what counts
        assert_eq!(
            MonthKey::from_epoch_ms(ms("2025-10-31T20:00:00-05:00")),
            Some(mk(2025, 11))
        );
        assert_eq!(MonthKey::from_epoch_ms(0), Some(mk(1970, 1)));
        assert_eq!(MonthKey::from_epoch_ms(-1), Some(mk(1969, 12)));
        assert_eq!(MonthKey::from_epoch_ms(i64::MAX), None);
        assert_eq!(MonthKey::from_epoch_ms(i64::MIN), None);
        assert_eq!(
            MonthKey::from_epoch_ms_saturating(i64::MIN),
            MonthKey::from_epoch_ms(DateTime::<Utc>::MIN_UTC.timestamp_millis())
                .expect("min in range")
        );
        assert!(MonthKey::from_epoch_ms_saturating(i64::MAX) > mk(9999, 12));
    }

    #[test]
    fn bounds() {
        let oct = mk(2025, 10);
        assert_eq!(oct.start_ms(), ms("2025-10-01T00:00:00Z"));
        assert_eq!(oct.end_ms(), ms("2025-11-01T00:00:00Z"));
        assert_eq!(mk(2025, 12).end_ms(), ms("2026-01-01T00:00:00Z"));
        assert_eq!(mk(2024, 2).end_ms(), ms("2024-03-01T00:00:00Z"));
        assert_eq!(mk(1970, 1).start_ms(), 0);
        assert_eq!(mk(1969, 12).start_ms(), ms("1969-12-01T00:00:00Z"));
        assert_eq!(mk(2025, 12).next(), mk(2026, 1));
        assert_eq!(mk(2025, 1).next(), mk(2025, 2));
        assert!(mk(2025, 12) < mk(2026, 1));
    }

    #[test]
    fn arithmetic_bounds_agree_with_chrono() {
        for y in [
            -400, -1, 0, 1, 1600, 1900, 1969, 1970, 2000, 2024, 2100, 2200, 9999,
        ] {
            for m in 1..=12 {
                let k = mk(y, m);
                let start = NaiveDate::from_ymd_opt(y, m, 1)
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .expect("date")
                    .and_utc()
                    .timestamp_millis();
                assert_eq!(k.start_ms(), start, "{k}");
                assert_eq!(k.end_ms(), k.next().start_ms(), "{k}");
                assert_eq!(MonthKey::from_epoch_ms(k.start_ms()), Some(k));
                assert_eq!(MonthKey::from_epoch_ms(k.end_ms() - 1), Some(k));
            }
        }
    }

    #[test]
    fn text_forms() {
        assert_eq!(mk(2025, 10).to_string(), "2025-10");
        assert_eq!(mk(987, 3).to_string(), "0987-03");
        assert_eq!(mk(-5, 1).to_string(), "-0005-01");
        for k in [mk(2025, 10), mk(987, 3), mk(-5, 1), mk(12345, 12)] {
            assert_eq!(k.to_string().parse::<MonthKey>(), Ok(k));
        }
        for bad in [
            "", "2025", "2025-1", "2025-13", "2025-00", "25-01", "2025/01", "2025-1a", "+2025-01",
            "2025-010", "-",
        ] {
            assert!(bad.parse::<MonthKey>().is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&mk(2025, 10)).expect("json"),
            "\"2025-10\""
        );
        assert_eq!(
            serde_json::from_str::<MonthKey>("\"2025-10\"").expect("json"),
            mk(2025, 10)
        );
    }
}
