//! Event times: reading them out of records and writing `@timestamp`.
//!
//! Why hand-written RFC 3339 and calendar code instead of chrono: every JSON
//! line on the hot path has its time read and `@timestamp` written, and
//! chrono's generic parser (items, `Parsed`, validation) costs several times
//! the rest of the line. RFC 3339 has a fixed layout, so slice patterns read it
//! without indexing, and the civil-date conversions are Howard Hinnant's
//! branch-light algorithms. chrono is kept for what it does well and what is
//! rare: user-supplied strftime patterns, compiled once per parser.
//!
//! Why the formatter caches one second: consecutive records of a file almost
//! always share the second they were written in, so the 19 bytes of
//! `YYYY-MM-DDTHH:MM:SS` are computed once per second of log time, and only the
//! milliseconds are written per record.
//!
//! Why times are confined to years 0000–9999: RFC 3339 has four-digit years,
//! and every sink downstream expects them. A value outside is treated as
//! unparseable (the read time is used), and the formatter clamps what it is
//! handed, so no output is ever malformed.
//!
//! Why sub-millisecond digits are truncated, not rounded: rounding could move
//! a record into the next second (or day, or file partition) than the one its
//! own text names.

use std::fmt;
use std::str::FromStr;

use chrono::format::{Item, Parsed as ChronoParsed, StrftimeItems};

use super::ParserConfigError;

/// How to read the event time out of `time_key`.
///
/// Config string: `auto` (default), `rfc3339`, `epoch_s`, `epoch_ms`,
/// `epoch_us`, `epoch_ns`, or any other string containing `%`: a chrono
/// strftime pattern (times without an offset are UTC).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum TimeFormat {
    /// Strings as RFC 3339 (a space for `T`, `,` for `.`, and a missing
    /// offset, meaning UTC, are accepted), numbers and numeric strings as Unix
    /// time with the unit guessed from the magnitude.
    #[default]
    Auto,
    /// RFC 3339 strings with an offset (`Z` or `±hh:mm`).
    Rfc3339,
    EpochS,
    EpochMs,
    EpochUs,
    EpochNs,
    /// A chrono strftime pattern.
    Strftime(String),
}

impl FromStr for TimeFormat {
    type Err = ParserConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => TimeFormat::Auto,
            "rfc3339" => TimeFormat::Rfc3339,
            "epoch_s" => TimeFormat::EpochS,
            "epoch_ms" => TimeFormat::EpochMs,
            "epoch_us" => TimeFormat::EpochUs,
            "epoch_ns" => TimeFormat::EpochNs,
            pattern if pattern.contains('%') => {
                compile_strftime(pattern)?;
                TimeFormat::Strftime(pattern.to_string())
            }
            other => {
                return Err(ParserConfigError::BadTimeFormat {
                    value: other.to_string(),
                    reason: "expected auto, rfc3339, epoch_s, epoch_ms, epoch_us, epoch_ns, \
                             or a strftime pattern containing '%'"
                        .to_string(),
                });
            }
        })
    }
}

fn compile_strftime(pattern: &str) -> Result<Vec<Item<'static>>, ParserConfigError> {
    StrftimeItems::new(pattern)
        .parse_to_owned()
        .map_err(|e| ParserConfigError::BadTimeFormat {
            value: pattern.to_string(),
            reason: format!("invalid strftime pattern: {e}"),
        })
}

/// Earliest time that can be written: 0000-01-01T00:00:00.000Z.
pub(super) const MIN_MS: i64 = -62_167_219_200_000;
/// Latest time that can be written: 9999-12-31T23:59:59.999Z.
pub(super) const MAX_MS: i64 = 253_402_300_799_999;

/// Brings any Unix-ms value into the writable range.
#[inline]
pub(super) fn clamp_ms(ms: i64) -> i64 {
    ms.clamp(MIN_MS, MAX_MS)
}

#[inline]
fn in_range(ms: i64) -> Option<i64> {
    (MIN_MS..=MAX_MS).contains(&ms).then_some(ms)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    S,
    Ms,
    Us,
    Ns,
}

impl Unit {
    /// Guess of a Unix time's unit from its magnitude: seconds reach 1e11 only
    /// in year 5138, and each finer unit is 1000 times larger.
    fn guess(magnitude: f64) -> Unit {
        if magnitude < 1e11 {
            Unit::S
        } else if magnitude < 1e14 {
            Unit::Ms
        } else if magnitude < 1e17 {
            Unit::Us
        } else {
            Unit::Ns
        }
    }
}

#[derive(Debug, Clone)]
enum Mode {
    Auto,
    Rfc3339,
    Epoch(Unit),
    Strftime(Vec<Item<'static>>),
}

/// A [`TimeFormat`] made ready to parse values (strftime pattern compiled).
#[derive(Debug, Clone)]
pub(super) struct TimeParser {
    mode: Mode,
}

impl TimeParser {
    pub(super) fn new(format: &TimeFormat) -> Result<Self, ParserConfigError> {
        let mode = match format {
            TimeFormat::Auto => Mode::Auto,
            TimeFormat::Rfc3339 => Mode::Rfc3339,
            TimeFormat::EpochS => Mode::Epoch(Unit::S),
            TimeFormat::EpochMs => Mode::Epoch(Unit::Ms),
            TimeFormat::EpochUs => Mode::Epoch(Unit::Us),
            TimeFormat::EpochNs => Mode::Epoch(Unit::Ns),
            TimeFormat::Strftime(p) => Mode::Strftime(compile_strftime(p)?),
        };
        Ok(TimeParser { mode })
    }

    pub(super) const fn auto() -> Self {
        TimeParser { mode: Mode::Auto }
    }

    /// A string value, as Unix ms.
    pub(super) fn parse_str(&self, s: &str) -> Option<i64> {
        match &self.mode {
            Mode::Auto => parse_rfc3339(s, true).or_else(|| parse_decimal(s, None)),
            Mode::Rfc3339 => parse_rfc3339(s, false),
            Mode::Epoch(unit) => parse_decimal(s, Some(*unit)),
            Mode::Strftime(items) => parse_strftime(s, items),
        }
    }

    /// An integer JSON number, as Unix ms.
    pub(super) fn parse_i64(&self, n: i64) -> Option<i64> {
        match &self.mode {
            Mode::Auto => epoch_int(n, Unit::guess(n.unsigned_abs() as f64)),
            Mode::Epoch(unit) => epoch_int(n, *unit),
            Mode::Rfc3339 => None,
            Mode::Strftime(items) => parse_strftime(&n.to_string(), items),
        }
    }

    pub(super) fn parse_u64(&self, n: u64) -> Option<i64> {
        self.parse_i64(i64::try_from(n).ok()?)
    }

    /// A fractional JSON number, as Unix ms.
    pub(super) fn parse_f64(&self, f: f64) -> Option<i64> {
        let unit = match &self.mode {
            Mode::Auto => Unit::guess(f.abs()),
            Mode::Epoch(unit) => *unit,
            Mode::Rfc3339 | Mode::Strftime(_) => return None,
        };
        if !f.is_finite() {
            return None;
        }
        // Through rounded microseconds: 1764064800.123 is 1764064800.1229999…
        // as an f64, and must still give …123 ms.
        let us = match unit {
            Unit::S => f * 1e6,
            Unit::Ms => f * 1e3,
            Unit::Us => f,
            Unit::Ns => f / 1e3,
        }
        .round();
        if us.abs() > 9.0e18 {
            return None;
        }
        in_range((us as i64) / 1000)
    }
}

fn epoch_int(n: i64, unit: Unit) -> Option<i64> {
    let ms = match unit {
        Unit::S => n.checked_mul(1000)?,
        Unit::Ms => n,
        Unit::Us => n / 1000,
        Unit::Ns => n / 1_000_000,
    };
    in_range(ms)
}

/// `[-]digits[.digits]` as Unix time in `unit` (guessed when `None`).
fn parse_decimal(s: &str, unit: Option<Unit>) -> Option<i64> {
    let (neg, body) = match s.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        rest => (false, rest),
    };
    let int_len = body.iter().take_while(|b| b.is_ascii_digit()).count();
    let (int_digits, tail) = body.split_at(int_len);
    let frac = match tail {
        [] => &[][..],
        [b'.', frac @ ..] if !frac.is_empty() && frac.iter().all(u8::is_ascii_digit) => frac,
        _ => return None,
    };
    if int_digits.is_empty() || int_digits.len() > 19 {
        return None;
    }
    let int = int_digits
        .iter()
        .try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))?;
    let int = i64::try_from(int).ok()?;
    let unit = unit.unwrap_or_else(|| Unit::guess(int as f64));
    let magnitude = match unit {
        Unit::S => {
            let ms_digits = frac
                .iter()
                .chain(std::iter::repeat(&b'0'))
                .take(3)
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
            int.checked_mul(1000)?.checked_add(ms_digits)?
        }
        Unit::Ms => int,
        Unit::Us => int / 1000,
        Unit::Ns => int / 1_000_000,
    };
    in_range(if neg { -magnitude } else { magnitude })
}

#[inline]
fn digit(b: u8) -> Option<i64> {
    b.is_ascii_digit().then(|| i64::from(b - b'0'))
}

#[inline]
fn two(a: u8, b: u8) -> Option<i64> {
    Some(digit(a)? * 10 + digit(b)?)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant).
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub(super) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD(T|t| )hh:mm:ss[.frac][offset]`. `lenient` also takes `,` as
/// the decimal mark, offsets `±hhmm` and `±hh`, and no offset (UTC).
pub(super) fn parse_rfc3339(s: &str, lenient: bool) -> Option<i64> {
    let [
        y0,
        y1,
        y2,
        y3,
        b'-',
        mo0,
        mo1,
        b'-',
        d0,
        d1,
        sep,
        h0,
        h1,
        b':',
        mi0,
        mi1,
        b':',
        s0,
        s1,
        rest @ ..,
    ] = s.as_bytes()
    else {
        return None;
    };
    if !matches!(sep, b'T' | b't' | b' ') {
        return None;
    }
    let year = two(*y0, *y1)? * 100 + two(*y2, *y3)?;
    let month = two(*mo0, *mo1)?;
    let day = two(*d0, *d1)?;
    let hour = two(*h0, *h1)?;
    let minute = two(*mi0, *mi1)?;
    let second = two(*s0, *s1)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let (millis, rest) = match rest {
        [b'.', frac @ ..] => fraction(frac)?,
        [b',', frac @ ..] if lenient => fraction(frac)?,
        _ => (0, rest),
    };
    let offset_s = match rest {
        [] if lenient => 0,
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), oh0, oh1, b':', om0, om1] => offset(*sign, two(*oh0, *oh1)?, two(*om0, *om1)?)?,
        [sign @ (b'+' | b'-'), oh0, oh1, om0, om1] if lenient => offset(*sign, two(*oh0, *oh1)?, two(*om0, *om1)?)?,
        [sign @ (b'+' | b'-'), oh0, oh1] if lenient => offset(*sign, two(*oh0, *oh1)?, 0)?,
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    in_range(secs * 1000 + millis)
}

/// Digits after the decimal mark: (milliseconds, what follows the digits).
fn fraction(frac: &[u8]) -> Option<(i64, &[u8])> {
    let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let (digits, rest) = frac.split_at(n);
    let millis = digits
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    Some((millis, rest))
}

fn offset(sign: u8, hours: i64, minutes: i64) -> Option<i64> {
    if hours > 23 || minutes > 59 {
        return None;
    }
    let s = hours * 3600 + minutes * 60;
    Some(if sign == b'-' { -s } else { s })
}

fn parse_strftime(s: &str, items: &[Item<'static>]) -> Option<i64> {
    let mut parsed = ChronoParsed::new();
    chrono::format::parse(&mut parsed, s, items.iter()).ok()?;
    let ms = if parsed.offset().is_some() {
        parsed.to_datetime().ok()?.timestamp_millis()
    } else if let Ok(naive) = parsed.to_naive_datetime_with_offset(0) {
        naive.and_utc().timestamp_millis()
    } else {
        // A date-only pattern: midnight UTC.
        parsed
            .to_naive_date()
            .ok()?
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp_millis()
    };
    in_range(ms)
}

/// Writes Unix ms as RFC 3339 UTC with millisecond precision
/// (`2026-11-25T21:15:47.123Z`), caching the text of the last second seen.
#[derive(Clone)]
pub struct TimestampFormatter {
    second: i64,
    text: [u8; 19],
}

impl fmt::Debug for TimestampFormatter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimestampFormatter")
            .field("second", &self.second)
            .finish()
    }
}

impl Default for TimestampFormatter {
    fn default() -> Self {
        Self::new()
    }
}

impl TimestampFormatter {
    pub fn new() -> Self {
        // No clamped time has this second, so the first write renders.
        TimestampFormatter {
            second: i64::MIN,
            text: *b"0000-00-00T00:00:00",
        }
    }

    /// Appends `ts_ms` (clamped to years 0000–9999) to `out`, without quotes.
    #[inline]
    pub fn write(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        let ts = clamp_ms(ts_ms);
        let second = ts.div_euclid(1000);
        let ms = ts.rem_euclid(1000) as u32;
        if second != self.second {
            self.render(second);
        }
        let mut buf = [0u8; 24];
        let (head, tail) = buf.split_at_mut(19);
        head.copy_from_slice(&self.text);
        tail.copy_from_slice(&[b'.', dig(ms / 100), dig(ms / 10 % 10), dig(ms % 10), b'Z']);
        out.extend_from_slice(&buf);
    }

    #[cold]
    fn render(&mut self, second: i64) {
        let days = second.div_euclid(86_400);
        let sod = second.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let (y, m, d, sod) = (y as u32, m as u32, d as u32, sod as u32);
        let (h, mi, s) = (sod / 3600, sod / 60 % 60, sod % 60);
        self.text = [
            dig(y / 1000),
            dig(y / 100 % 10),
            dig(y / 10 % 10),
            dig(y % 10),
            b'-',
            dig(m / 10),
            dig(m % 10),
            b'-',
            dig(d / 10),
            dig(d % 10),
            b'T',
            dig(h / 10),
            dig(h % 10),
            b':',
            dig(mi / 10),
            dig(mi % 10),
            b':',
            dig(s / 10),
            dig(s % 10),
        ];
        self.second = second;
    }
}

#[inline]
fn dig(n: u32) -> u8 {
    b'0' + (n % 10) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(ms: i64) -> String {
        let mut out = Vec::new();
        TimestampFormatter::new().write(ms, &mut out);
        String::from_utf8(out).unwrap()
    }

    const T: i64 = 1_795_641_347_123; // 2026-11-25T21:15:47.123Z

    #[test]
    fn formats_known_times() {
        assert_eq!(fmt(T), "2026-11-25T21:15:47.123Z");
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(fmt(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(fmt(MIN_MS), "0000-01-01T00:00:00.000Z");
        assert_eq!(fmt(MAX_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(fmt(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(fmt(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn formatter_cache_follows_the_second() {
        let mut f = TimestampFormatter::new();
        let mut out = Vec::new();
        for ms in [T, T + 1, T + 877, T + 999_999, T, T - 86_400_000] {
            out.clear();
            f.write(ms, &mut out);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), fmt(ms));
        }
    }

    #[test]
    fn formatter_agrees_with_chrono() {
        let mut f = TimestampFormatter::new();
        let mut out = Vec::new();
        let mut ms = MIN_MS;
        while ms < MAX_MS {
            out.clear();
            f.write(ms, &mut out);
            let want = chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(String::from_utf8_lossy(&out), want);
            ms += 7_777_777_777_777;
        }
    }

    #[test]
    fn civil_round_trip() {
        for z in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }

    #[test]
    fn rfc3339_strict_and_lenient() {
        let auto = TimeParser::auto();
        let strict = TimeParser::new(&TimeFormat::Rfc3339).unwrap();
        for s in [
            "2026-11-25T21:15:47.123Z",
            "2026-11-25t21:15:47.123z",
            "2026-11-25 21:15:47.123Z",
            "2026-11-25T21:15:47.123456789Z",
            "2026-11-25T23:15:47.123+02:00",
            "2026-11-25T20:15:47.1239-01:00",
        ] {
            assert_eq!(strict.parse_str(s), Some(T), "{s}");
            assert_eq!(auto.parse_str(s), Some(T), "{s}");
        }
        for s in [
            "2026-11-25T21:15:47.123",
            "2026-11-25 21:15:47,123",
            "2026-11-25T23:15:47.123+0200",
            "2026-11-25T23:15:47.123+02",
        ] {
            assert_eq!(strict.parse_str(s), None, "{s}");
            assert_eq!(auto.parse_str(s), Some(T), "{s}");
        }
        assert_eq!(auto.parse_str("2026-11-25T21:15:47Z"), Some(T - 123));
        assert_eq!(auto.parse_str("2026-11-25T21:15:47.1Z"), Some(T - 23));
        assert_eq!(auto.parse_str("2016-12-31T23:59:60Z"), Some(1_483_228_800_000));
        assert_eq!(auto.parse_str("1969-12-31T23:59:59.5Z"), Some(-500));
        for bad in [
            "2026-13-25T21:15:47Z",
            "2026-02-29T21:15:47Z",
            "2026-11-25T24:15:47Z",
            "2026-11-25T21:15:47.Z",
            "2026-11-25T21:15:47Zjunk",
            "2026-11-25X21:15:47Z",
            "2026-11-25T21:15Z",
            "2026-11-25T21:15:47+24:00",
            "２026-11-25T21:15:47Z",
            "",
        ] {
            assert_eq!(auto.parse_str(bad), None, "{bad}");
        }
        assert_eq!(auto.parse_str("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
    }

    #[test]
    fn epoch_auto_guesses_unit() {
        let auto = TimeParser::auto();
        assert_eq!(auto.parse_i64(1_795_641_347), Some(T - 123));
        assert_eq!(auto.parse_i64(T), Some(T));
        assert_eq!(auto.parse_i64(T * 1000 + 456), Some(T));
        assert_eq!(auto.parse_i64(T * 1_000_000 + 456_789), Some(T));
        assert_eq!(auto.parse_u64(T as u64), Some(T));
        assert_eq!(auto.parse_u64(u64::MAX), None);
        assert_eq!(auto.parse_f64(1_795_641_347.123), Some(T));
        assert_eq!(auto.parse_f64(1_795_641_347_123.9), Some(T));
        assert_eq!(auto.parse_str("1795641347.123"), Some(T));
        assert_eq!(auto.parse_str("1795641347123"), Some(T));
        assert_eq!(auto.parse_str("1795641347123456789"), Some(T));
        assert_eq!(auto.parse_str("0"), Some(0));
        assert_eq!(auto.parse_str("-1.5"), Some(-1500));
        for bad in ["", "-", "1.", ".5", "1e9", "12a", "99999999999999999999", " 1"] {
            assert_eq!(auto.parse_str(bad), None, "{bad}");
        }
    }

    #[test]
    fn epoch_explicit_units() {
        let p = |f: TimeFormat| TimeParser::new(&f).unwrap();
        assert_eq!(p(TimeFormat::EpochS).parse_i64(1_795_641_347), Some(T - 123));
        assert_eq!(p(TimeFormat::EpochS).parse_str("1795641347.1239"), Some(T));
        assert_eq!(p(TimeFormat::EpochS).parse_f64(1_795_641_347.123), Some(T));
        // Explicit unit is not second-guessed: 5 ms is 5 ms.
        assert_eq!(p(TimeFormat::EpochMs).parse_i64(5), Some(5));
        assert_eq!(p(TimeFormat::EpochMs).parse_str("1795641347123.9"), Some(T));
        assert_eq!(p(TimeFormat::EpochUs).parse_i64(T * 1000 + 999), Some(T));
        assert_eq!(p(TimeFormat::EpochNs).parse_str("1795641347123999999"), Some(T));
        assert_eq!(p(TimeFormat::EpochNs).parse_f64(1.795_641_347_123_5e18), Some(T));
        // Out of the writable range: unparseable.
        assert_eq!(p(TimeFormat::EpochS).parse_i64(T), None);
        assert_eq!(p(TimeFormat::EpochS).parse_i64(i64::MAX), None);
        assert_eq!(p(TimeFormat::EpochS).parse_f64(1e300), None);
        // Named formats do not take each other's shapes.
        assert_eq!(p(TimeFormat::EpochMs).parse_str("2026-11-25T21:15:47.123Z"), None);
        assert_eq!(p(TimeFormat::Rfc3339).parse_i64(T), None);
        assert_eq!(p(TimeFormat::Rfc3339).parse_f64(1.5), None);
    }

    #[test]
    fn strftime_patterns() {
        let p = |s: &str| TimeParser::new(&s.parse::<TimeFormat>().unwrap()).unwrap();
        assert_eq!(
            p("%d/%b/%Y:%H:%M:%S %z").parse_str("25/Nov/2026:22:15:47 +0100"),
            Some(T - 123)
        );
        assert_eq!(
            p("%Y-%m-%d %H:%M:%S%.f").parse_str("2026-11-25 21:15:47.123456"),
            Some(T)
        );
        assert_eq!(p("%Y-%m-%d").parse_str("2026-11-25"), Some(1_795_564_800_000));
        assert_eq!(p("%s").parse_str("1795641347"), Some(T - 123));
        assert_eq!(p("%s").parse_i64(1_795_641_347), Some(T - 123));
        assert_eq!(p("%Y-%m-%d %H:%M:%S").parse_str("2026-11-25"), None);
        assert_eq!(p("%Y-%m-%d %H:%M:%S").parse_str("nope"), None);
        assert_eq!(p("%Y").parse_str("2026"), None);
    }

    #[test]
    fn time_format_from_str() {
        assert_eq!("auto".parse::<TimeFormat>().unwrap(), TimeFormat::Auto);
        assert_eq!("rfc3339".parse::<TimeFormat>().unwrap(), TimeFormat::Rfc3339);
        assert_eq!("epoch_s".parse::<TimeFormat>().unwrap(), TimeFormat::EpochS);
        assert_eq!("epoch_ms".parse::<TimeFormat>().unwrap(), TimeFormat::EpochMs);
        assert_eq!("epoch_us".parse::<TimeFormat>().unwrap(), TimeFormat::EpochUs);
        assert_eq!("epoch_ns".parse::<TimeFormat>().unwrap(), TimeFormat::EpochNs);
        assert_eq!(
            "%Y-%m-%d".parse::<TimeFormat>().unwrap(),
            TimeFormat::Strftime("%Y-%m-%d".to_string())
        );
        let e = "epoch".parse::<TimeFormat>().unwrap_err().to_string();
        assert!(e.contains("`epoch`") && e.contains("epoch_ms"), "{e}");
        let e = "%Y-%Q".parse::<TimeFormat>().unwrap_err().to_string();
        assert!(e.contains("`%Y-%Q`"), "{e}");
        assert!(TimeParser::new(&TimeFormat::Strftime("%Q".into())).is_err());
    }
}
