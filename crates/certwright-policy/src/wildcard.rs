//! `*` wildcards, as approver-policy reads them: `*` matches any run of characters
//! (dots included, so `*.example.com` matches `a.b.example.com`), everything else
//! matches itself.

/// The longest pattern a policy may hold.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Whether `value` matches `pattern`.
///
/// Linear in practice: the classic two-pointer glob match, which backtracks only to the
/// last `*`, so no pattern can make it exponential.
pub fn matches(pattern: &str, value: &str) -> bool {
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    let (mut pi, mut vi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, vi));
            pi += 1;
        } else if pi < p.len() && p[pi] == v[vi] {
            pi += 1;
            vi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether any of `patterns` matches `value`.
pub fn any_matches<S: AsRef<str>>(patterns: &[S], value: &str) -> bool {
    patterns.iter().any(|p| matches(p.as_ref(), value))
}

/// Why a pattern cannot be used, if it cannot: empty, too long, or holding a control
/// character.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("must not be empty (use \"*\" to allow any value)".to_string());
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "is {} bytes long; at most {MAX_PATTERN_LEN}",
            pattern.len()
        ));
    }
    if pattern.chars().any(char::is_control) {
        return Err("holds a control character".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stars_match_any_run() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("payments", "payments"));
        assert!(!matches("payments", "payments-dev"));
        assert!(matches("team-*", "team-a"));
        assert!(!matches("", "x"));
        assert!(matches("", ""));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(check_pattern("").is_err());
        assert!(check_pattern("a\nb").is_err());
        assert!(check_pattern(&"a".repeat(MAX_PATTERN_LEN + 1)).is_err());
        assert!(check_pattern("*.example.com").is_ok());
    }

    proptest! {
        #[test]
        fn a_value_matches_itself_and_star(value in "[a-z.*-]{0,40}") {
            prop_assert!(matches("*", &value));
            let literal = value.replace('*', "");
            prop_assert!(matches(&literal, &literal));
        }

        #[test]
        fn prefix_star_suffix(prefix in "[a-z.]{0,10}", middle in "[a-z.]{0,10}", suffix in "[a-z.]{0,10}") {
            let pattern = format!("{prefix}*{suffix}");
            let value = format!("{prefix}{middle}{suffix}");
            prop_assert!(matches(&pattern, &value));
        }

        #[test]
        fn literal_patterns_match_only_themselves(a in "[a-z.]{0,12}", b in "[a-z.]{0,12}") {
            prop_assert_eq!(matches(&a, &b), a == b);
        }
    }
}
