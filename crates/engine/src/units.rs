//! Sizes as lvm2 writes and reads them: `10G`, `512m`, `2048s`, `1.5t` (binary multiples;
//! megabytes when no unit is given), extent counts with percentages (`100%FREE`), and the
//! report units (`--units h|b|s|k|m|g|t|p|e`, upper case for powers of 1000).

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// A change requested relative to the current size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sign {
    Plus,
    Minus,
}

/// What a percentage is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PercentOf {
    /// The VG's free extents.
    Free,
    /// The VG's size.
    Vg,
    /// The size of the PVs given for the allocation (all the VG's when none are).
    Pvs,
}

/// An amount of space as the user asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Amount {
    Bytes(u64),
    Extents(u64),
    Percent(u64, PercentOf),
}

/// A size or extent argument, perhaps relative (`+1G`, `-10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeArg {
    pub sign: Option<Sign>,
    pub amount: Amount,
}

fn split_sign(s: &str) -> (Option<Sign>, &str) {
    if let Some(rest) = s.strip_prefix('+') {
        (Some(Sign::Plus), rest)
    } else if let Some(rest) = s.strip_prefix('-') {
        (Some(Sign::Minus), rest)
    } else {
        (None, s)
    }
}

/// Parses `--size`: a number with an optional fraction and unit (b, s, k, m, g, t, p, e in
/// either case, binary multiples; m when absent).
pub fn parse_size(text: &str) -> Result<SizeArg> {
    let bad = |why: &str| EngineError::BadArgument(format!("size '{text}': {why}"));
    let (sign, s) = split_sign(text.trim());
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(bad("expected a number, such as 10G or 512M"));
    }
    let unit = unit.to_ascii_lowercase();
    let shift: u32 = match unit.trim_end_matches(['b', 'i']).trim() {
        "" if unit == "b" => 0,
        "" => 20,
        "s" => 9,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        "e" => 60,
        _ => return Err(bad("unknown unit; use b, s, k, m, g, t, p or e")),
    };
    let multiplier = 1u128 << shift;
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(bad("not a number"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad("number too large"))?
    };
    let mut bytes = whole
        .checked_mul(multiplier)
        .ok_or_else(|| bad("number too large"))?;
    if !frac.is_empty() {
        let digits = frac.len().min(18) as u32;
        let frac_value: u128 = frac[..digits as usize]
            .parse()
            .map_err(|_| bad("not a number"))?;
        bytes += frac_value * multiplier / 10u128.pow(digits);
    }
    let bytes = u64::try_from(bytes).map_err(|_| bad("number too large"))?;
    Ok(SizeArg {
        sign,
        amount: Amount::Bytes(bytes),
    })
}

/// Parses `--extents`: a count, or a percentage of FREE, VG or PVS (`100%FREE`).
pub fn parse_extents(text: &str) -> Result<SizeArg> {
    let bad = |why: &str| EngineError::BadArgument(format!("extents '{text}': {why}"));
    let (sign, s) = split_sign(text.trim());
    if let Some((number, of)) = s.split_once('%') {
        let pct: u64 = number
            .parse()
            .map_err(|_| bad("expected a whole percentage, such as 100%FREE"))?;
        let of = match of.to_ascii_uppercase().as_str() {
            "FREE" => PercentOf::Free,
            "VG" | "" => PercentOf::Vg,
            "PVS" => PercentOf::Pvs,
            other => return Err(bad(&format!("'%{other}' is not one of %FREE, %VG, %PVS"))),
        };
        if pct == 0 || pct > 100 && of != PercentOf::Free {
            return Err(bad("percentage must be between 1 and 100"));
        }
        return Ok(SizeArg {
            sign,
            amount: Amount::Percent(pct, of),
        });
    }
    let n: u64 = s
        .parse()
        .map_err(|_| bad("expected a number of extents or a percentage such as 100%FREE"))?;
    Ok(SizeArg {
        sign,
        amount: Amount::Extents(n),
    })
}

/// How report sizes are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Units {
    /// None for human-readable (`h`/`H`).
    pub unit: Option<char>,
    /// Powers of 1000 instead of 1024.
    pub si: bool,
    pub suffix: bool,
}

impl Default for Units {
    fn default() -> Self {
        Units {
            unit: None,
            si: false,
            suffix: true,
        }
    }
}

impl Units {
    pub fn parse(text: &str, suffix: bool) -> Result<Units> {
        let mut chars = text.chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            return Err(EngineError::BadArgument(format!("units '{text}': expected one of h, b, s, k, m, g, t, p, e (upper case for powers of 1000)")));
        };
        let si = c.is_ascii_uppercase() && c != 'B' && c != 'S';
        let unit = match c.to_ascii_lowercase() {
            'h' => None,
            u @ ('b' | 's' | 'k' | 'm' | 'g' | 't' | 'p' | 'e') => Some(u),
            _ => {
                return Err(EngineError::BadArgument(format!(
                    "units '{text}': expected one of h, b, s, k, m, g, t, p, e"
                )))
            }
        };
        Ok(Units { unit, si, suffix })
    }

    /// Formats a size in bytes as lvm2's reports do: `4.00m`, `<1.99g`, `8388608B`.
    pub fn format(&self, bytes: u64) -> String {
        let base: f64 = if self.si { 1000.0 } else { 1024.0 };
        let letters = ['b', 'k', 'm', 'g', 't', 'p', 'e'];
        let (letter, power) = match self.unit {
            Some('b') => ('b', 0),
            Some('s') => {
                let sectors = bytes / 512;
                return if self.suffix {
                    format!("{sectors}S")
                } else {
                    sectors.to_string()
                };
            }
            Some(u) => (u, letters.iter().position(|&l| l == u).unwrap_or(0) as i32),
            None => {
                if bytes == 0 {
                    return if self.suffix { "0 ".into() } else { "0".into() };
                }
                let mut power = 0;
                while power < 6 && (bytes as f64) >= base.powi(power + 1) {
                    power += 1;
                }
                (letters[power as usize], power)
            }
        };
        let letter = if self.si {
            letter.to_ascii_uppercase()
        } else {
            letter
        };
        if power == 0 {
            return if self.suffix {
                format!("{bytes}B")
            } else {
                bytes.to_string()
            };
        }
        let value = bytes as f64 / base.powi(power);
        let rounded = (value * 100.0).round() / 100.0;
        let prefix = if self.unit.is_none() && rounded > value + 1e-9 {
            "<"
        } else {
            ""
        };
        if self.suffix {
            format!("{prefix}{rounded:.2}{letter}")
        } else {
            format!("{prefix}{rounded:.2}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let b = |s| match parse_size(s).unwrap().amount {
            Amount::Bytes(b) => b,
            _ => unreachable!(),
        };
        assert_eq!(b("10G"), 10 << 30);
        assert_eq!(b("10g"), 10 << 30);
        assert_eq!(b("512"), 512 << 20);
        assert_eq!(b("2048s"), 2048 * 512);
        assert_eq!(b("1.5k"), 1536);
        assert_eq!(b("64KiB"), 64 << 10);
        assert_eq!(parse_size("+1G").unwrap().sign, Some(Sign::Plus));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999e").is_err());
    }

    #[test]
    fn extents() {
        assert_eq!(
            parse_extents("100%FREE").unwrap().amount,
            Amount::Percent(100, PercentOf::Free)
        );
        assert_eq!(
            parse_extents("+10").unwrap(),
            SizeArg {
                sign: Some(Sign::Plus),
                amount: Amount::Extents(10)
            }
        );
        assert!(parse_extents("50%BOGUS").is_err());
        assert!(parse_extents("abc").is_err());
    }

    #[test]
    fn report_units() {
        let h = Units::default();
        assert_eq!(h.format(4 << 20), "4.00m");
        assert_eq!(h.format(60 << 20), "60.00m");
        assert_eq!(h.format(2040 << 20), "1.99g");
        assert_eq!(h.format(2044 << 20), "<2.00g");
        assert_eq!(h.format(0), "0 ");
        let b = Units::parse("b", false).unwrap();
        assert_eq!(b.format(8 << 20), "8388608");
        assert_eq!(Units::parse("m", true).unwrap().format(8 << 20), "8.00m");
        assert_eq!(Units::parse("M", true).unwrap().format(8_000_000), "8.00M");
    }
}
