//! Exact US-dollar amounts.
//!
//! Prices arrive as JSON numbers in US dollars (`0.00581`). Floating point never
//! touches them: the JSON number *text* is parsed straight into an integer count
//! of [`Usd::SCALE`]-th parts of a dollar (10^-10 USD), and all arithmetic is
//! integer arithmetic on `i128`. A price with more than ten decimal places of
//! non-zero digits cannot be represented exactly and is rejected rather than
//! rounded.

use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of decimal places kept: amounts are exact multiples of 10^-10 USD.
pub const SCALE_DIGITS: u32 = 10;

/// An exact amount of US dollars, stored as an integer count of 10^-10 USD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(i128);

/// Why a number text is not an exact dollar amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The text is not a JSON/decimal number.
    #[error("not a decimal number: {0:?}")]
    Syntax(String),
    /// The number has non-zero digits beyond the tenth decimal place.
    #[error("{0} has more than {SCALE_DIGITS} decimal places; it cannot be kept exactly")]
    TooPrecise(String),
    /// The number does not fit the 128-bit range.
    #[error("{0} is out of range")]
    OutOfRange(String),
}

impl Usd {
    /// Zero dollars.
    pub const ZERO: Usd = Usd(0);
    /// Units per dollar (10^10).
    pub const SCALE: i128 = 10_000_000_000;

    /// The amount as an integer count of 10^-10 USD (the archive's DECIMAL(38,10) value).
    pub const fn units(self) -> i128 {
        self.0
    }

    /// An amount from an integer count of 10^-10 USD.
    pub const fn from_units(units: i128) -> Usd {
        Usd(units)
    }

    /// Whole dollars.
    pub const fn from_dollars(d: i64) -> Usd {
        Usd(d as i128 * Self::SCALE)
    }

    /// True when the amount is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Checked addition.
    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0.checked_add(other.0).map(Usd)
    }

    /// Parses a JSON number text (`-?int(.frac)?([eE][+-]?exp)?`) or a plain
    /// decimal string exactly.
    pub fn parse_exact(text: &str) -> Result<Usd, MoneyError> {
        let err = || MoneyError::Syntax(text.to_owned());
        let b = text.trim().as_bytes();
        let mut i = 0;
        let negative = b.first() == Some(&b'-');
        if negative {
            i += 1;
        }
        let mut digits: Vec<u8> = Vec::with_capacity(24);
        let int_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            digits.push(b[i] - b'0');
            i += 1;
        }
        if i == int_start {
            return Err(err());
        }
        let mut frac_len: i64 = 0;
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let frac_start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                digits.push(b[i] - b'0');
                i += 1;
            }
            if i == frac_start {
                return Err(err());
            }
            frac_len = (i - frac_start) as i64;
        }
        let mut exp: i64 = 0;
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            let mut exp_neg = false;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                exp_neg = b[i] == b'-';
                i += 1;
            }
            let exp_start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                exp = exp
                    .saturating_mul(10)
                    .saturating_add(i64::from(b[i] - b'0'));
                i += 1;
            }
            if i == exp_start {
                return Err(err());
            }
            if exp_neg {
                exp = -exp;
            }
        }
        if i != b.len() {
            return Err(err());
        }
        // value = digits * 10^(exp - frac_len); units = value * 10^SCALE_DIGITS
        let shift = exp.saturating_sub(frac_len) + i64::from(SCALE_DIGITS);
        // strip leading zeros so huge zero-padded inputs do not overflow
        let first_nonzero = digits.iter().position(|&d| d != 0);
        let Some(first_nonzero) = first_nonzero else {
            return Ok(Usd::ZERO);
        };
        let digits = &digits[first_nonzero..];
        let (kept, dropped) = if shift < 0 {
            let drop = usize::try_from(-shift).unwrap_or(usize::MAX);
            if drop >= digits.len() {
                (&digits[..0], digits)
            } else {
                digits.split_at(digits.len() - drop)
            }
        } else {
            (digits, &digits[..0])
        };
        if dropped.iter().any(|&d| d != 0) {
            return Err(MoneyError::TooPrecise(text.to_owned()));
        }
        let out_of_range = || MoneyError::OutOfRange(text.to_owned());
        let mut units: i128 = 0;
        for &d in kept {
            units = units
                .checked_mul(10)
                .and_then(|u| u.checked_add(i128::from(d)))
                .ok_or_else(out_of_range)?;
        }
        if shift > 0 {
            let pow = u32::try_from(shift).map_err(|_| out_of_range())?;
            let factor = 10i128.checked_pow(pow).ok_or_else(out_of_range)?;
            units = units.checked_mul(factor).ok_or_else(out_of_range)?;
        }
        Ok(Usd(if negative { -units } else { units }))
    }
}

impl Usd {
    /// Appends the [`Display`](fmt::Display) text (`0.01181`) to `out`,
    /// without the formatting machinery (enriched records write several
    /// amounts each).
    pub fn write_decimal(self, out: &mut Vec<u8>) {
        let mut buf = [0u8; 48];
        let pos = self.digits(&mut buf);
        out.extend_from_slice(&buf[pos..]);
    }

    /// Writes the shortest exact decimal right-aligned into `buf`; returns
    /// where it starts.
    fn digits(self, buf: &mut [u8; 48]) -> usize {
        let abs = self.0.unsigned_abs();
        // Common amounts fit 64 bits: no 128-bit division.
        let pos = match u64::try_from(abs) {
            Ok(abs) => write_unsigned(abs, Self::SCALE as u64, buf),
            Err(_) => write_unsigned(abs, Self::SCALE as u128, buf),
        };
        if self.0 < 0 {
            buf[pos - 1] = b'-';
            return pos - 1;
        }
        pos
    }
}

/// Writes `abs / scale` as the shortest exact decimal (`scale` =
/// 10^[`SCALE_DIGITS`]) right-aligned into `buf`; returns where it starts.
/// Generic so the common 64-bit amounts avoid 128-bit division.
fn write_unsigned<T>(abs: T, scale: T, buf: &mut [u8; 48]) -> usize
where
    T: Copy
        + PartialEq
        + From<u8>
        + TryInto<u8>
        + std::ops::Div<Output = T>
        + std::ops::Rem<Output = T>,
{
    let zero = T::from(0);
    let ten = T::from(10);
    let digit = |v: T| b'0' + (v % ten).try_into().unwrap_or(0);
    let mut pos = buf.len();
    let mut int = abs / scale;
    let mut frac = abs % scale;
    if frac != zero {
        let mut width = SCALE_DIGITS;
        while frac % ten == zero {
            frac = frac / ten;
            width -= 1;
        }
        for _ in 0..width {
            pos -= 1;
            buf[pos] = digit(frac);
            frac = frac / ten;
        }
        pos -= 1;
        buf[pos] = b'.';
    }
    loop {
        pos -= 1;
        buf[pos] = digit(int);
        int = int / ten;
        if int == zero {
            break;
        }
    }
    pos
}

impl fmt::Display for Usd {
    /// Shortest exact decimal: `0.01181`, `80`, `-0.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 48];
        let pos = self.digits(&mut buf);
        // Only ASCII digits, '.' and '-' were written.
        f.write_str(std::str::from_utf8(&buf[pos..]).unwrap_or("?"))
    }
}

impl FromStr for Usd {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Usd::parse_exact(s)
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, rhs: Usd) -> Usd {
        Usd(self.0 + rhs.0)
    }
}

impl AddAssign for Usd {
    fn add_assign(&mut self, rhs: Usd) {
        self.0 += rhs.0;
    }
}

impl Sub for Usd {
    type Output = Usd;
    fn sub(self, rhs: Usd) -> Usd {
        Usd(self.0 - rhs.0)
    }
}

impl SubAssign for Usd {
    fn sub_assign(&mut self, rhs: Usd) {
        self.0 -= rhs.0;
    }
}

impl Neg for Usd {
    type Output = Usd;
    fn neg(self) -> Usd {
        Usd(-self.0)
    }
}

impl Serialize for Usd {
    /// Serialized as an exact decimal string (`"0.01181"`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Usd {
    /// Deserialized from a decimal string (config files: `threshold_usd = "80"`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Usd::parse_exact(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Usd {
        Usd::parse_exact(s).expect(s)
    }

    #[test]
    fn parses_real_prices_exactly() {
        assert_eq!(p("0.00581").units(), 58_100_000);
        assert_eq!(p("0.00302").units(), 30_200_000);
        assert_eq!((p("0.00581") + p("0.00302")).to_string(), "0.00883");
        assert_eq!(p("0.06087").to_string(), "0.06087");
        assert_eq!(p("0.0").to_string(), "0");
        assert_eq!(p("80").to_string(), "80");
        assert_eq!(p("100.50").to_string(), "100.5");
    }

    #[test]
    fn float_sum_trap_is_exact() {
        // 0.1 + 0.2 in f64 is 0.30000000000000004
        assert_eq!((p("0.1") + p("0.2")).to_string(), "0.3");
        let mut total = Usd::ZERO;
        for _ in 0..1000 {
            total += p("0.00581");
        }
        assert_eq!(total.to_string(), "5.81");
    }

    #[test]
    fn exponents() {
        assert_eq!(p("5.81e-3").to_string(), "0.00581");
        assert_eq!(p("1E2").to_string(), "100");
        assert_eq!(p("1e-10").units(), 1);
        assert_eq!(p("0.00000000000e5"), Usd::ZERO);
        assert_eq!(p("-0.5").to_string(), "-0.5");
        assert_eq!(p("2.500000000000000e-1").to_string(), "0.25");
    }

    #[test]
    fn rejects_what_cannot_be_exact() {
        assert!(matches!(
            Usd::parse_exact("1e-11"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Usd::parse_exact("0.00000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Usd::parse_exact("1e40"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(matches!(
            Usd::parse_exact("1e999999999999"),
            Err(MoneyError::OutOfRange(_))
        ));
        for bad in ["", "-", ".5", "1.", "1e", "abc", "1.2.3", "0x10", "1 2"] {
            assert!(
                matches!(Usd::parse_exact(bad), Err(MoneyError::Syntax(_))),
                "{bad}"
            );
        }
    }

    /// The shortest decimal written independently (128-bit `format!`).
    fn reference(units: i128) -> String {
        let abs = units.unsigned_abs();
        let scale = Usd::SCALE as u128;
        let text = format!("{}.{:010}", abs / scale, abs % scale);
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{}{text}", if units < 0 { "-" } else { "" })
    }

    proptest::proptest! {
        #[test]
        fn display_is_the_shortest_exact_decimal(units in proptest::prelude::any::<i128>()) {
            let u = Usd::from_units(units);
            proptest::prop_assert_eq!(u.to_string(), reference(units));
            let mut w = Vec::new();
            u.write_decimal(&mut w);
            proptest::prop_assert_eq!(w, reference(units).into_bytes());
        }

        #[test]
        fn display_of_small_amounts(units in -100_000_000_000_000i128..100_000_000_000_000) {
            proptest::prop_assert_eq!(Usd::from_units(units).to_string(), reference(units));
        }
    }

    #[test]
    fn display_round_trips() {
        for units in [
            0i128,
            1,
            9,
            10,
            58_100_000,
            -3,
            123_456_789_012_345,
            i64::MAX as i128,
            u64::MAX as i128,
            u64::MAX as i128 + 1,
            -(u64::MAX as i128) - 5,
            i128::MAX,
        ] {
            let u = Usd::from_units(units);
            assert_eq!(p(&u.to_string()), u, "{units}");
            let mut w = Vec::new();
            u.write_decimal(&mut w);
            assert_eq!(w, u.to_string().into_bytes());
        }
    }
}
