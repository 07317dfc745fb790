//! ISO-8601 durations as Azure writes them (`PT1M`, `PT5M`, `PT1H30M`, `P7D`, `PT0.5S`), parsed into
//! [`std::time::Duration`] and printed back in the shortest canonical form.
//!
//! Years and months are refused: their length depends on the calendar, and no autoscale field
//! accepts durations that long. Weeks (`P1W`) are accepted. Letters may be in either case.

use std::time::Duration;

/// Why a duration string could not be read. The message names the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not an ISO-8601 duration ({why}); write it like PT30S, PT5M, PT1H30M or P7D")]
pub struct DurationError {
    pub text: String,
    pub why: &'static str,
}

/// Parses an ISO-8601 duration: `P[nW][nD][T[nH][nM][n[.f]S]]`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        text: text.to_string(),
        why,
    };
    let s = text.trim();
    let rest = s
        .strip_prefix(['P', 'p'])
        .ok_or_else(|| err("it must start with P"))?;
    if rest.is_empty() {
        return Err(err("it has no components"));
    }
    let mut total_nanos: u128 = 0;
    let mut in_time = false;
    let mut number = String::new();
    let mut components = 0;
    let mut saw_t_component = false;
    for c in rest.chars() {
        match c {
            '0'..='9' | '.' | ',' => number.push(if c == ',' { '.' } else { c }),
            'T' | 't' => {
                if in_time || !number.is_empty() {
                    return Err(err("T is misplaced"));
                }
                in_time = true;
            }
            _ => {
                let unit_secs: f64 = match (in_time, c.to_ascii_uppercase()) {
                    (false, 'W') => 7.0 * 86_400.0,
                    (false, 'D') => 86_400.0,
                    (false, 'Y') | (false, 'M') => {
                        return Err(err(
                            "years and months have no fixed length; use days (P30D) instead",
                        ));
                    }
                    (true, 'H') => 3_600.0,
                    (true, 'M') => 60.0,
                    (true, 'S') => 1.0,
                    _ => return Err(err("it has an unknown unit")),
                };
                if number.is_empty() {
                    return Err(err("a unit has no number before it"));
                }
                let n: f64 = number.parse().map_err(|_| err("a number is malformed"))?;
                if !n.is_finite() || n < 0.0 {
                    return Err(err("a number is malformed"));
                }
                let nanos = n * unit_secs * 1e9;
                if nanos > 1e21 {
                    return Err(err("it is too long"));
                }
                // Cast: checked finite, non-negative and below 1e21 just above.
                let nanos = nanos.round() as u128;
                total_nanos += nanos;
                number.clear();
                components += 1;
                if in_time {
                    saw_t_component = true;
                }
            }
        }
    }
    if !number.is_empty() {
        return Err(err("a number has no unit after it"));
    }
    if components == 0 || (in_time && !saw_t_component) {
        return Err(err("it has no components"));
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("it is too long"))?;
    let nanos = u32::try_from(total_nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

/// Prints a duration in the shortest ISO-8601 form: `PT5M`, `PT1H30M`, `P7D`, `PT0.5S`, `PT0S`.
pub fn format(d: Duration) -> String {
    let mut secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let days = secs / 86_400;
    secs %= 86_400;
    let hours = secs / 3_600;
    secs %= 3_600;
    let minutes = secs / 60;
    secs %= 60;
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    if hours > 0 || minutes > 0 || secs > 0 || nanos > 0 || days == 0 {
        out.push('T');
        if hours > 0 {
            out.push_str(&format!("{hours}H"));
        }
        if minutes > 0 {
            out.push_str(&format!("{minutes}M"));
        }
        if nanos > 0 {
            let frac = format!("{nanos:09}");
            out.push_str(&format!("{secs}.{}S", frac.trim_end_matches('0')));
        } else if secs > 0 || (hours == 0 && minutes == 0) {
            out.push_str(&format!("{secs}S"));
        }
    }
    out
}

/// A short human form for summaries: `30s`, `5m`, `1h30m`, `7d`.
pub fn human(d: Duration) -> String {
    let total = d.as_secs();
    if total == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (days, rem) = (total / 86_400, total % 86_400);
    let (hours, rem) = (rem / 3_600, rem % 3_600);
    let (minutes, secs) = (rem / 60, rem % 60);
    let mut out = String::new();
    for (n, unit) in [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// Serde adapter: a `Duration` written as an ISO-8601 string.
pub mod iso {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter: an `Option<Duration>` written as an ISO-8601 string or null.
pub mod iso_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_azure_writes() {
        for (text, secs) in [
            ("PT1M", 60.0),
            ("PT5M", 300.0),
            ("PT10M", 600.0),
            ("PT1H30M", 5400.0),
            ("PT12H", 43_200.0),
            ("P7D", 604_800.0),
            ("P1W", 604_800.0),
            ("P1DT2H", 93_600.0),
            ("PT30S", 30.0),
            ("PT0.5S", 0.5),
            ("pt5m", 300.0),
            ("PT1,5S", 1.5),
        ] {
            assert_eq!(parse(text).map(|d| d.as_secs_f64()), Ok(secs), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for text in [
            "", "5M", "P", "PT", "P1M", "P1Y", "PT5", "PTM", "PT5X", "P5H", "PT1H2T",
        ] {
            assert!(parse(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn formats_canonically() {
        for (secs, text) in [
            (60, "PT1M"),
            (5400, "PT1H30M"),
            (604_800, "P7D"),
            (93_600, "P1DT2H"),
            (0, "PT0S"),
            (1, "PT1S"),
            (3661, "PT1H1M1S"),
        ] {
            assert_eq!(format(Duration::from_secs(secs)), text);
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)));
        }
        assert_eq!(format(Duration::from_millis(1500)), "PT1.5S");
        assert_eq!(human(Duration::from_secs(5400)), "1h30m");
    }
}
