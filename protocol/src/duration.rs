//! The one duration grammar of Cairn: `cairn forget --keep-within`,
//! `cairn prune --grace`, the agent's same flags, and the custom resources'
//! fields passed to them (`retention.keepWithin`, `maintenance.grace`) or read
//! by the controller (a schedule's `jitter`). The CRDs' validation rules
//! (crds/src/lib.rs) accept exactly what these parsers accept.
//!
//! A duration is `0`, or one or more terms `NUMBER UNIT`, added up: `7d`,
//! `1y6mo`, `1h30min`. Numbers are whole and unsigned; there are no spaces,
//! signs, fractions or capitals.
//!
//! | unit  | length                  | calendar (`--keep-within`) | fixed (`--grace`, `jitter`) |
//! |-------|-------------------------|----------------------------|-----------------------------|
//! | `y`   | a calendar year         | yes                        | no                          |
//! | `mo`  | a calendar month        | yes                        | no                          |
//! | `w`   | 7 days                  | yes                        | yes                         |
//! | `d`   | 24 hours                | yes                        | yes                         |
//! | `h`   | an hour                 | yes                        | yes                         |
//! | `min` | a minute                | no                         | yes                         |
//! | `s`   | a second                | no                         | yes                         |
//!
//! A bare `m` is refused everywhere: restic reads `--keep-within 6m` as six
//! months, most other tools read `90m` as minutes, and guessing wrong would
//! make `forget` delete far more than meant. `--keep-within` counts in hours at
//! the finest, as restic's does; years and months have no fixed length, so a
//! grace period or a jitter cannot use them.

use std::fmt;
use std::time::Duration;

/// A unit of the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// `y`
    Year,
    /// `mo`
    Month,
    /// `w`
    Week,
    /// `d`
    Day,
    /// `h`
    Hour,
    /// `min`
    Minute,
    /// `s`
    Second,
}

impl Unit {
    /// Every unit, longest first.
    pub const ALL: [Unit; 7] = [
        Unit::Year,
        Unit::Month,
        Unit::Week,
        Unit::Day,
        Unit::Hour,
        Unit::Minute,
        Unit::Second,
    ];

    /// How the unit is written.
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Year => "y",
            Unit::Month => "mo",
            Unit::Week => "w",
            Unit::Day => "d",
            Unit::Hour => "h",
            Unit::Minute => "min",
            Unit::Second => "s",
        }
    }

    fn from_symbol(s: &str) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| u.symbol() == s)
    }

    /// Whether a calendar duration (`--keep-within`) may use the unit.
    pub fn is_calendar(self) -> bool {
        !matches!(self, Unit::Minute | Unit::Second)
    }

    /// Seconds in one unit, for a fixed duration (`--grace`, `jitter`);
    /// `None` for years and months.
    pub fn fixed_seconds(self) -> Option<u64> {
        match self {
            Unit::Year | Unit::Month => None,
            Unit::Week => Some(7 * 86_400),
            Unit::Day => Some(86_400),
            Unit::Hour => Some(3_600),
            Unit::Minute => Some(60),
            Unit::Second => Some(1),
        }
    }
}

/// The two kinds of duration the grammar describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Calendar units `y`, `mo`, `w`, `d`, `h` (`--keep-within`).
    Calendar,
    /// Fixed-length units `w`, `d`, `h`, `min`, `s` (`--grace`, `jitter`).
    Fixed,
}

impl Kind {
    fn units(self) -> &'static str {
        match self {
            Kind::Calendar => "y, mo, w, d, h",
            Kind::Fixed => "w, d, h, min, s",
        }
    }

    fn examples(self) -> &'static str {
        match self {
            Kind::Calendar => "7d, 1y6mo or 12h",
            Kind::Fixed => "24h, 90min, 2d or 0",
        }
    }
}

/// A calendar duration (`--keep-within 1y6mo`): weeks are counted as 7 days.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calendar {
    /// Years.
    pub years: u32,
    /// Months.
    pub months: u32,
    /// Days (weeks included).
    pub days: u32,
    /// Hours.
    pub hours: u32,
}

/// Why a duration was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError {
    input: String,
    kind: Kind,
    reason: Reason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    /// Not `0` nor `NUMBER UNIT...` with known units.
    Malformed,
    /// A bare `m`.
    AmbiguousM,
    /// A known unit this kind does not take.
    Unit(Unit),
    /// More than the numbers can hold.
    TooLong,
}

impl DurationError {
    /// The refused text.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Whether the text was refused for a bare `m`.
    pub fn is_ambiguous_m(&self) -> bool {
        self.reason == Reason::AmbiguousM
    }
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "duration {:?}: ", self.input)?;
        let units = self.kind.units();
        match self.reason {
            Reason::Malformed => write!(
                f,
                "use whole numbers with units {units}, e.g. {}",
                self.kind.examples()
            ),
            Reason::AmbiguousM => write!(
                f,
                "a bare \"m\" is ambiguous: write \"mo\" for months or \"min\" for minutes"
            ),
            Reason::Unit(u) if self.kind == Kind::Calendar => write!(
                f,
                "\"{}\" is finer than an hour, the smallest unit here (as in restic); use {units}",
                u.symbol()
            ),
            Reason::Unit(u) => write!(
                f,
                "\"{}\" has no fixed length (use 30d for a month, 365d for a year); use {units}",
                u.symbol()
            ),
            Reason::TooLong => write!(f, "too long"),
        }
    }
}

impl std::error::Error for DurationError {}

/// The terms of `s` as a `kind` of duration; none for `0`.
fn terms(s: &str, kind: Kind) -> Result<Vec<(u64, Unit)>, DurationError> {
    let err = |reason| DurationError {
        input: s.to_string(),
        kind,
        reason,
    };
    if s == "0" {
        return Ok(Vec::new());
    }
    if s.is_empty() {
        return Err(err(Reason::Malformed));
    }
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        // Only ASCII bytes are stepped over, so every index is a char boundary.
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(err(Reason::Malformed));
        }
        let n: u64 = s[start..i].parse().map_err(|_| err(Reason::TooLong))?;
        let unit_start = i;
        while i < b.len() && b[i].is_ascii_lowercase() {
            i += 1;
        }
        let symbol = &s[unit_start..i];
        let unit = match Unit::from_symbol(symbol) {
            Some(u) => u,
            None if symbol == "m" => return Err(err(Reason::AmbiguousM)),
            None => return Err(err(Reason::Malformed)),
        };
        let allowed = match kind {
            Kind::Calendar => unit.is_calendar(),
            Kind::Fixed => unit.fixed_seconds().is_some(),
        };
        if !allowed {
            return Err(err(Reason::Unit(unit)));
        }
        out.push((n, unit));
    }
    Ok(out)
}

/// Parse a calendar duration (`--keep-within`, `retention.keepWithin`):
/// `0` or terms in `y`, `mo`, `w`, `d`, `h`.
///
/// # Errors
/// Anything else, a bare `m` and units finer than an hour above all.
pub fn parse_calendar(s: &str) -> Result<Calendar, DurationError> {
    let too_long = || DurationError {
        input: s.to_string(),
        kind: Kind::Calendar,
        reason: Reason::TooLong,
    };
    let mut c = Calendar::default();
    for (n, unit) in terms(s, Kind::Calendar)? {
        let (field, n) = match unit {
            Unit::Year => (&mut c.years, n),
            Unit::Month => (&mut c.months, n),
            Unit::Week => (&mut c.days, n.checked_mul(7).ok_or_else(too_long)?),
            Unit::Day => (&mut c.days, n),
            Unit::Hour => (&mut c.hours, n),
            // Refused by `terms` already.
            Unit::Minute | Unit::Second => {
                return Err(DurationError {
                    reason: Reason::Unit(unit),
                    ..too_long()
                })
            }
        };
        let n = u32::try_from(n).map_err(|_| too_long())?;
        *field = field.checked_add(n).ok_or_else(too_long)?;
    }
    Ok(c)
}

/// Parse a fixed duration (`--grace`, `maintenance.grace`, a schedule's
/// `jitter`): `0` or terms in `w`, `d`, `h`, `min`, `s`.
///
/// # Errors
/// Anything else, a bare `m`, years and months above all.
pub fn parse_fixed(s: &str) -> Result<Duration, DurationError> {
    let too_long = || DurationError {
        input: s.to_string(),
        kind: Kind::Fixed,
        reason: Reason::TooLong,
    };
    let mut total: u64 = 0;
    for (n, unit) in terms(s, Kind::Fixed)? {
        // Years and months are refused by `terms` for this kind.
        let unit_secs = unit.fixed_seconds().ok_or_else(too_long)?;
        total = n
            .checked_mul(unit_secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(too_long)?;
    }
    Ok(Duration::from_secs(total))
}

/// A whole number of seconds in the grammar, in its largest unit that divides
/// it exactly (days at most): `24h`, `90min`, `2d`, `0s`.
pub fn format_fixed(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    for unit in [Unit::Day, Unit::Hour, Unit::Minute] {
        let per = unit.fixed_seconds().unwrap_or(1);
        if s.is_multiple_of(per) {
            return format!("{}{}", s / per, unit.symbol());
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(years: u32, months: u32, days: u32, hours: u32) -> Calendar {
        Calendar {
            years,
            months,
            days,
            hours,
        }
    }

    #[test]
    fn calendar_durations() {
        assert_eq!(parse_calendar("1y2mo3d4h"), Ok(cal(1, 2, 3, 4)));
        assert_eq!(parse_calendar("7d"), Ok(cal(0, 0, 7, 0)));
        assert_eq!(parse_calendar("2w1d"), Ok(cal(0, 0, 15, 0)));
        assert_eq!(parse_calendar("6mo"), Ok(cal(0, 6, 0, 0)));
        assert_eq!(parse_calendar("12h"), Ok(cal(0, 0, 0, 12)));
        assert_eq!(parse_calendar("0"), Ok(cal(0, 0, 0, 0)));
        assert_eq!(parse_calendar("0d"), Ok(cal(0, 0, 0, 0)));
        // Terms add up, in any order.
        assert_eq!(parse_calendar("1d1d"), Ok(cal(0, 0, 2, 0)));
        assert_eq!(parse_calendar("3h1y"), Ok(cal(1, 0, 0, 3)));
        for bad in [
            "",
            "5",
            "3x",
            "d",
            "1.5d",
            "-1d",
            "+1d",
            " 7d",
            "7d ",
            "7 d",
            "7D",
            "1y6m",
            "6m",
            "90min",
            "30s",
            "1mon",
            "1month",
            "7days",
            "1é",
            "4294967296y",
            "613566757w",
            "2147483648d2147483648d",
        ] {
            assert!(parse_calendar(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fixed_durations() {
        let secs = |s: &str| parse_fixed(s).map(|d| d.as_secs());
        assert_eq!(secs("0"), Ok(0));
        assert_eq!(secs("45s"), Ok(45));
        assert_eq!(secs("90min"), Ok(5_400));
        assert_eq!(secs("1h30min"), Ok(5_400));
        assert_eq!(secs("24h"), Ok(86_400));
        assert_eq!(secs("2d"), Ok(172_800));
        assert_eq!(secs("1w"), Ok(604_800));
        assert_eq!(secs("1w1d1h1min1s"), Ok(694_861));
        for bad in [
            "",
            "h",
            "10",
            "1x",
            "-1h",
            "1.5h",
            "90m",
            "1h30m",
            "1mo",
            "1y",
            "1 h",
            "1H",
            "99999999999999999999d",
            "40000000000000w",
        ] {
            assert!(parse_fixed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bare_m_is_refused_everywhere_with_the_two_spellings() {
        for s in ["6m", "6m3d", "0m", "1d6m", "1y6m", "1h30m"] {
            // A unit the kind refuses, met first, is reported first.
            let both = [parse_calendar(s).err(), parse_fixed(s).err()];
            let errors = match s {
                "1y6m" => &both[..1],
                _ => &both[..],
            };
            for e in errors.iter().cloned() {
                let e = e.unwrap_or_else(|| panic!("{s:?} accepted"));
                assert!(e.is_ambiguous_m(), "{s:?}: {e}");
                let msg = e.to_string();
                assert!(msg.contains("\"mo\" for months"), "{msg}");
                assert!(msg.contains("\"min\" for minutes"), "{msg}");
            }
        }
    }

    #[test]
    fn each_kind_says_which_units_it_takes() {
        let e = parse_calendar("90min").unwrap_err().to_string();
        assert!(
            e.contains("finer than an hour") && e.contains("y, mo, w, d, h"),
            "{e}"
        );
        let e = parse_fixed("1mo").unwrap_err().to_string();
        assert!(
            e.contains("no fixed length") && e.contains("w, d, h, min, s"),
            "{e}"
        );
        let e = parse_fixed("a day").unwrap_err().to_string();
        assert!(
            e.starts_with("duration \"a day\": use whole numbers"),
            "{e}"
        );
    }

    #[test]
    fn fixed_durations_are_printed_in_the_grammar() {
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (5_400, "90min"),
            (86_400, "1d"),
            (7_200, "2h"),
            (90_061, "90061s"),
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(format_fixed(d), text);
            assert_eq!(parse_fixed(text), Ok(d));
        }
    }
}
