//! Durations ("30s", "500ms", "1m30s") and byte sizes ("16KiB", 16384) as
//! written in the configuration, both ways: parsed for `Config`, formatted
//! back for `Config::to_raw` so the admin API shows what the proxy runs with.

use std::time::Duration;

/// Units a duration may be written in, longest suffix first so `ms` is not
/// read as `m` followed by garbage.
const DURATION_UNITS: &[(&str, u64)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

/// Parses `30s`, `500ms`, `1m30s`, `1.5s`, `2h`. A bare number is refused:
/// `30` could mean seconds or milliseconds, and guessing wrong is a
/// thousand-fold mistake.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. 30s, 500ms or 1m".into());
    }
    let bad = || {
        format!("invalid duration \"{text}\"; write e.g. 30s, 500ms, 1m30s (units: ns, us, ms, s, m, h)")
    };
    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let (num, after) = rest.split_at(num_len);
        if after.is_empty() {
            return Err(format!(
                "duration \"{text}\" has no unit; write {num}s or {num}ms"
            ));
        }
        let (unit, scale) = DURATION_UNITS
            .iter()
            .filter(|(u, _)| after.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .ok_or_else(bad)?;
        rest = &after[unit.len()..];
        total_ns += scaled(num, *scale).ok_or_else(bad)?;
        if total_ns > u64::MAX as u128 {
            return Err(format!("duration \"{text}\" is too long"));
        }
    }
    Ok(Duration::from_nanos(total_ns as u64))
}

/// `num` (digits with at most one '.') times `scale` nanoseconds, exactly.
fn scaled(num: &str, scale: u64) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut ns = int.checked_mul(scale as u128)?;
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        let denom = 10u128.pow(frac.len() as u32);
        ns += digits * scale as u128 / denom;
    }
    Some(ns)
}

/// The shortest exact spelling: `30s`, `500ms`, `1m`, `90s` stays `90s`
/// only when it is not a whole number of minutes.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    for (unit, scale) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns.is_multiple_of(scale) {
            return format!("{}{unit}", ns / scale);
        }
    }
    format!("{ns}ns")
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1024),
    ("kb", 1000),
    ("kib", 1024),
    ("m", 1024 * 1024),
    ("mb", 1_000_000),
    ("mib", 1024 * 1024),
];

/// Parses `16384`, `16KiB`, `16k` (= KiB), `16KB` (= 1000 bytes), `1MiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let num_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(num_len);
    let unit_lc = unit.trim().to_ascii_lowercase();
    let bad = || format!("invalid size \"{text}\"; write bytes (16384) or e.g. 16KiB, 1MiB");
    if num.is_empty() {
        return Err(bad());
    }
    let (_, scale) = SIZE_UNITS
        .iter()
        .find(|(u, _)| *u == unit_lc)
        .ok_or_else(bad)?;
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(*scale))
        .ok_or_else(bad)
}

/// `16KiB` when whole kibibytes, else bytes.
pub fn format_size(n: u64) -> String {
    if n != 0 && n.is_multiple_of(1024 * 1024) {
        format!("{}MiB", n / (1024 * 1024))
    } else if n != 0 && n.is_multiple_of(1024) {
        format!("{}KiB", n / 1024)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        let ok = [
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("1m", Duration::from_secs(60)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1.5s", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
            ("10ns", Duration::from_nanos(10)),
            (" 5s ", Duration::from_secs(5)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_bad_durations() {
        for text in ["", "30", "s", "30x", "1.2.3s", "-1s", "30 s", "ms5", "1m30"] {
            assert!(parse_duration(text).is_err(), "{text} accepted");
        }
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
    }

    #[test]
    fn formats_durations_round_trip() {
        for text in ["30s", "500ms", "1m", "90s", "2h", "250us", "7ns", "0s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("16384"), Ok(16384));
        assert_eq!(parse_size("16KiB"), Ok(16384));
        assert_eq!(parse_size("16k"), Ok(16384));
        assert_eq!(parse_size("16KB"), Ok(16000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("16 parsecs").is_err());
        assert_eq!(format_size(16384), "16KiB");
        assert_eq!(format_size(1000), "1000");
    }
}
