//! Go-style durations (`2160h`, `30s`, `1h30m`), the format cert-manager and Kubernetes
//! manifests use for `duration`, `defaultDuration`, `timeout` and `pollInterval`.

use std::time::Duration;

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration")]
    Empty,
    /// A number was expected at this byte offset.
    #[error("expected a number at offset {offset} in {input:?}")]
    ExpectedNumber {
        /// The whole input.
        input: String,
        /// Byte offset of the problem.
        offset: usize,
    },
    /// A number had no unit, or the unit is not one of ns, us, µs, ms, s, m, h.
    #[error("unknown or missing unit {unit:?} in {input:?} (use ns, us, ms, s, m or h)")]
    BadUnit {
        /// The whole input.
        input: String,
        /// The unit found.
        unit: String,
    },
    /// The duration does not fit in 64-bit nanoseconds, as Go's does not.
    #[error("duration {input:?} is out of range")]
    Overflow {
        /// The whole input.
        input: String,
    },
    /// Negative durations make no sense for any certwright field.
    #[error("duration {input:?} is negative")]
    Negative {
        /// The whole input.
        input: String,
    },
}

/// Parses a Go duration string such as `2160h`, `1h30m`, `1.5s` or `0`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let (negative, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if negative {
        return Err(DurationError::Negative {
            input: input.to_string(),
        });
    }
    let overflow = || DurationError::Overflow {
        input: input.to_string(),
    };
    let mut total: u128 = 0;
    let mut rest = body;
    if rest.is_empty() {
        return Err(DurationError::ExpectedNumber {
            input: input.to_string(),
            offset: s.len(),
        });
    }
    while !rest.is_empty() {
        let offset = s.len() - rest.len();
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(DurationError::ExpectedNumber {
                input: input.to_string(),
                offset,
            });
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => {
                return Err(DurationError::BadUnit {
                    input: input.to_string(),
                    unit: unit.to_string(),
                });
            }
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(overflow)?;
        // Fractions: at most 18 significant digits matter at nanosecond resolution.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes().take(18) {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
        if total > i64::MAX as u128 {
            return Err(overflow());
        }
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| overflow())?;
    let sub = u32::try_from(total % 1_000_000_000).map_err(|_| overflow())?;
    Ok(Duration::new(secs, sub))
}

/// Formats a duration the way Go's `time.Duration.String` does for whole seconds
/// (`2160h0m0s`, `5m0s`, `30s`), with sub-second remainders as fractional seconds.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 && nanos == 0 {
        return "0s".to_string();
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let seconds = if nanos == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{nanos:09}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{seconds}")
    } else if m > 0 {
        format!("{m}m{seconds}")
    } else {
        seconds
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(
            parse_duration("2160h").unwrap(),
            Duration::from_secs(2160 * 3600)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration(".5m").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        assert_eq!(parse_duration("10µs").unwrap(), Duration::from_micros(10));
        assert_eq!(parse_duration("7ns").unwrap(), Duration::from_nanos(7));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1h0m0s").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn rejects_malformed_durations_naming_the_cause() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(
            matches!(parse_duration("90d"), Err(DurationError::BadUnit { unit, .. }) if unit == "d")
        );
        assert!(
            matches!(parse_duration("10"), Err(DurationError::BadUnit { unit, .. }) if unit.is_empty())
        );
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::ExpectedNumber { offset: 0, .. })
        ));
        assert!(matches!(
            parse_duration("-5m"),
            Err(DurationError::Negative { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse_duration("3000000h"),
            Err(DurationError::Overflow { .. })
        ));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(
            format_duration(Duration::from_secs(2160 * 3600)),
            "2160h0m0s"
        );
        assert_eq!(format_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for s in ["2160h", "1h30m", "45s", "1.25s"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
