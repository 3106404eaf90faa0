//! Go-style duration strings ("30s", "1m30s", "500ms", "1.5h") as Nomad users write them.
//!
//! [`parse`] follows Go's `time.ParseDuration`: a sequence of decimal numbers, each with an
//! optional fraction and a required unit (`ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`), an
//! optional leading `+`, and the bare `0`. Negative durations are refused (nothing in the
//! configs can use one), and so is anything above Go's limit of about 292 years.
//! Arithmetic is done in whole nanoseconds, as in Go, so "1h0m0.000000001s" is exact.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why} (write e.g. \"30s\", \"1m30s\", \"500ms\" or \"2h\")")]
pub struct DurationError {
    pub input: String,
    pub why: &'static str,
}

/// Go's `time.Duration` limit (i64 nanoseconds).
const MAX_NANOS: u128 = i64::MAX as u128;

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        _ => return None,
    })
}

/// Parses a Go duration string into a [`Duration`].
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        input: input.to_owned(),
        why,
    };
    let mut s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("there is no number after the sign"));
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        // Integer part.
        let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let int_digits = &s[..int_len];
        s = &s[int_len..];
        // Fraction.
        let mut frac_digits = "";
        if let Some(rest) = s.strip_prefix('.') {
            let len = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            frac_digits = &rest[..len];
            s = &rest[len..];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(err("expected a number before each unit"));
        }
        // Unit: everything up to the next digit or '.'.
        let unit_len = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        if unit.is_empty() {
            return Err(err("a number has no unit (ns, us, ms, s, m, h)"));
        }
        let scale =
            unit_nanos(unit).ok_or_else(|| err("unknown unit (use ns, us, ms, s, m or h)"))?;
        let too_big = || err("it is too long (the limit is about 292 years)");
        let mut whole: u128 = 0;
        for d in int_digits.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(d - b'0')))
                .filter(|w| *w <= MAX_NANOS)
                .ok_or_else(too_big)?;
        }
        let mut part = whole.checked_mul(scale).ok_or_else(too_big)?;
        // Fraction: digits beyond nanosecond precision of the largest unit cannot matter.
        let mut num: u128 = 0;
        let mut den: u128 = 1;
        for d in frac_digits.bytes().take(24) {
            num = num * 10 + u128::from(d - b'0');
            den *= 10;
        }
        part += num * scale / den;
        total = total
            .checked_add(part)
            .filter(|t| *t <= MAX_NANOS)
            .ok_or_else(too_big)?;
    }
    if negative && total != 0 {
        return Err(err("negative durations are not allowed"));
    }
    // total <= i64::MAX, so it fits u64.
    Ok(Duration::from_nanos(total as u64))
}

/// Whole milliseconds of `d` as the `*_ms` fields of the shim API and the spec carry them,
/// saturating at `u64::MAX` ("forever") instead of truncating the u128 that
/// `Duration::as_millis` returns (which could turn a huge timeout into a short one).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Formats a duration the way Go prints one: "1h2m3.5s", "1m30s", "500ms", "1.5µs", "0s".
pub fn format(d: Duration) -> String {
    // `is_multiple_of` is newer than the workspace's rust-version.
    #[allow(clippy::manual_is_multiple_of)]
    fn frac(mut n: u128, digits: u32) -> String {
        // n is a fraction of 10^digits; drop trailing zeros.
        let mut digits = digits;
        while digits > 0 && n % 10 == 0 {
            n /= 10;
            digits -= 1;
        }
        if digits == 0 {
            String::new()
        } else {
            format!(".{:0width$}", n, width = digits as usize)
        }
    }
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}{}µs", ns / 1_000, frac(ns % 1_000, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}{}ms", ns / 1_000_000, frac(ns % 1_000_000, 6));
    }
    let secs = ns / 1_000_000_000;
    let sub = ns % 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{s}{}s", frac(sub, 9)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_secs(i64::MAX as u64)), u64::MAX);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("2h", Duration::from_secs(7200)),
            ("1.5h", Duration::from_secs(5400)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("+5s", Duration::from_secs(5)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("100μs", Duration::from_micros(100)),
            ("7ns", Duration::from_nanos(7)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("1h0m0.000000001s", Duration::new(3600, 1)),
            ("0.1s", Duration::from_millis(100)),
            (" 10s ", Duration::from_secs(10)),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_reason_and_an_example() {
        let cases = [
            ("", "empty"),
            ("5", "no unit"),
            ("abc", "expected a number"),
            ("5x", "unknown unit"),
            ("5 s", "unknown unit"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("-", "no number"),
            ("-5s", "negative"),
            ("1.5.5s", "no unit"),
            ("3000000h", "too long"),
            ("99999999999999999999999s", "too long"),
        ];
        for (bad, why) in cases {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("\"30s\""), "{bad:?}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn formats_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(7200), "2h0m0s"),
            (Duration::new(3723, 500_000_000), "1h2m3.5s"),
        ];
        for (d, want) in cases {
            assert_eq!(format(d), want);
            assert_eq!(parse(want), Ok(d), "{want} round-trips");
        }
    }
}
