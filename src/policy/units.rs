//! Sizes and durations as security teams write them, both ways: parse and render.
//!
//! Sizes: an integer number of bytes (`536870912` or `"536870912"`), or digits followed by
//! one binary unit, `K`, `M`, `G` or `T` (×1024ⁿ, case-insensitive, no space, no fraction):
//! `"64K"`, `"512M"`, `"1G"`. Durations: a number of seconds (`30`, `1.5`), or digits followed
//! by `ms`, `s`, `m` or `h`: `"500ms"`, `"30s"`, `"10m"`, `"1h"`.

use std::time::Duration;

use super::raw::Scalar;

const SIZE_UNITS: [(char, u32); 4] = [('K', 1), ('M', 2), ('G', 3), ('T', 4)];

/// Parse a size in bytes. The error is a message for a diagnostic.
pub fn parse_size(value: &Scalar) -> Result<u64, String> {
    let text = match value {
        Scalar::Int(n) => return u64::try_from(*n).map_err(|_| format!("{n} is negative; a size must be 0 or more")),
        Scalar::Float(x) => return Err(format!("{x} is not a whole number of bytes; write e.g. \"512M\"")),
        Scalar::Str(s) => s.as_str(),
    };
    let bad = || format!("\"{text}\" is not a size; write bytes or a number with K, M, G or T (e.g. \"512M\")");
    let (digits, shift) = match text.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some(u) if u.is_ascii_alphabetic() => {
            let (_, power) = SIZE_UNITS.iter().find(|(c, _)| *c == u).ok_or_else(bad)?;
            (&text[..text.len() - 1], power * 10)
        }
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| format!("\"{text}\" is too large"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("\"{text}\" is too large"))
}

/// Render a size with the largest unit that divides it exactly (`536870912` → `"512M"`).
pub fn format_size(bytes: u64) -> String {
    for (unit, power) in SIZE_UNITS.iter().rev() {
        let scale = 1u64 << (power * 10);
        if bytes != 0 && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

/// Parse a duration. The error is a message for a diagnostic.
pub fn parse_duration(value: &Scalar) -> Result<Duration, String> {
    let d = parse_any_duration(value)?;
    if d > MAX_DURATION {
        return Err(format!("{value} is longer than a year (8760h), the longest duration a policy may set"));
    }
    Ok(d)
}

/// The longest duration a policy may set: far beyond any command or session, and far from
/// the end of the clock (a deadline is `now + duration`).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn parse_any_duration(value: &Scalar) -> Result<Duration, String> {
    let text = match value {
        Scalar::Int(n) => {
            return u64::try_from(*n)
                .map(Duration::from_secs)
                .map_err(|_| format!("{n} is negative; a duration must be 0 or more"))
        }
        Scalar::Float(x) => {
            return Duration::try_from_secs_f64(*x).map_err(|_| format!("{x} is not a valid number of seconds"))
        }
        Scalar::Str(s) => s.as_str(),
    };
    let bad = || format!("\"{text}\" is not a duration; write seconds or a number with ms, s, m or h (e.g. \"10m\")");
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| format!("\"{text}\" is too large"))?;
    let too_large = || format!("\"{text}\" is too large");
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(too_large),
        "h" => n.checked_mul(3600).map(Duration::from_secs).ok_or_else(too_large),
        _ => Err(bad()),
    }
}

/// Render a duration in the largest unit that represents it exactly (`600 s` → `"10m"`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let whole_ms = d.subsec_nanos().is_multiple_of(1_000_000);
    if !ms.is_multiple_of(1000) || !whole_ms {
        return if whole_ms { format!("{ms}ms") } else { format!("{}", d.as_secs_f64()) };
    }
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(text: &str) -> Scalar {
        Scalar::Str(text.to_owned())
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&s("512M")), Ok(512 << 20));
        assert_eq!(parse_size(&s("1G")), Ok(1 << 30));
        assert_eq!(parse_size(&s("64k")), Ok(64 << 10));
        assert_eq!(parse_size(&s("0")), Ok(0));
        assert_eq!(parse_size(&Scalar::Int(4096)), Ok(4096));
        for bad in ["", "M", "-1M", "1.5G", "12X", "1 G", "10MB", "abc", "99999999999999999999", "16777216T"] {
            assert!(parse_size(&s(bad)).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size(&Scalar::Int(-5)).is_err());
        assert!(parse_size(&Scalar::Float(1.5)).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration(&s("10m")), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration(&s("30s")), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(&s("1h")), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(&s("500ms")), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(&Scalar::Int(90)), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(&Scalar::Float(1.5)), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(&s("8760h")), Ok(MAX_DURATION));
        for bad in
            ["", "m", "10 m", "-1s", "1d", "1.5m", "10mins", "99999999999999999999h", "8761h", "18446744073709551615s"]
        {
            assert!(parse_duration(&s(bad)).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration(&Scalar::Int(-1)).is_err());
        assert!(parse_duration(&Scalar::Float(f64::NAN)).is_err());
    }

    #[test]
    fn rendering() {
        assert_eq!(format_size(512 << 20), "512M");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
    }

    proptest! {
        #[test]
        fn size_round_trips(bytes in any::<u64>()) {
            prop_assert_eq!(parse_size(&s(&format_size(bytes))), Ok(bytes));
        }

        #[test]
        fn duration_round_trips(ms in 0u64..=(365 * 24 * 3600 * 1000)) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&s(&format_duration(d))), Ok(d));
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,24}") {
            let _ = parse_size(&s(&text));
            let _ = parse_duration(&s(&text));
        }

        #[test]
        fn unit_sizes_scale(n in 0u64..(1 << 20), unit in prop::sample::select(vec![('K', 10u32), ('M', 20), ('G', 30)])) {
            prop_assert_eq!(parse_size(&s(&format!("{n}{}", unit.0))), Ok(n << unit.1));
        }
    }
}
