//! A small glob matcher for model names: `*` matches any run of characters
//! (including none) and `?` matches exactly one character.
//!
//! It walks the text once and remembers only the most recent `*`. For globs
//! without character classes that is enough for correctness, and it bounds the
//! work at O(pattern × text) with no recursion, so patterns such as
//! `a*a*a*a*a*b` cannot trigger exponential backtracking.

/// Whether `text` matches `pattern`. Pattern bytes must be ASCII (patterns are
/// validated); the text may be any UTF-8, and `?` consumes one whole character.
pub(crate) fn matches(pattern: &[u8], text: &str) -> bool {
    let t = text.as_bytes();
    let (mut p, mut i) = (0, 0);
    // After a `*`: the pattern index just past it, and the text index where
    // the star's current match ends. On a mismatch the star swallows one more
    // character and matching resumes from there.
    let mut star: Option<(usize, usize)> = None;
    while i < t.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, i));
                continue;
            }
            Some(b'?') => {
                p += 1;
                i += char_len(t[i]);
                continue;
            }
            // An ASCII pattern byte never equals a UTF-8 continuation byte,
            // so `i` only ever lands on character boundaries.
            Some(&c) if c == t[i] => {
                p += 1;
                i += 1;
                continue;
            }
            _ => {}
        }
        let Some((after_star, end)) = star else {
            return false;
        };
        // `end <= i < t.len()`, so there is a character to swallow.
        let end = end + char_len(t[end]);
        star = Some((after_star, end));
        p = after_star;
        i = end;
    }
    pattern[p.min(pattern.len())..].iter().all(|&b| b == b'*')
}

/// Length of the UTF-8 character starting with `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    /// A memoised reference matcher over characters, obviously correct and
    /// only used on small inputs.
    fn reference(pattern: &str, text: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        // dp[i][j]: whether p[i..] matches t[j..].
        let mut dp = vec![vec![false; t.len() + 1]; p.len() + 1];
        dp[p.len()][t.len()] = true;
        for i in (0..p.len()).rev() {
            for j in (0..=t.len()).rev() {
                dp[i][j] = match p[i] {
                    '*' => dp[i + 1][j] || (j < t.len() && dp[i][j + 1]),
                    '?' => j < t.len() && dp[i + 1][j + 1],
                    c => j < t.len() && t[j] == c && dp[i + 1][j + 1],
                };
            }
        }
        dp[0][0]
    }

    #[test]
    fn cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o", "gpt-4o-mini", false),
            ("gpt-4o", "gpt-4", false),
            ("gpt-4o*", "gpt-4o", true),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4", false),
            ("*", "", true),
            ("*", "anything at all", true),
            ("", "", true),
            ("", "a", false),
            ("?", "", false),
            ("?", "a", true),
            ("?", "é", true),
            ("?", "ab", false),
            ("gpt-?o", "gpt-4o", true),
            ("gpt-?o", "gpt-o", false),
            ("*-mini", "gpt-4o-mini", true),
            ("*-mini", "gpt-4o-mini-2024", false),
            ("claude-*-sonnet-*", "claude-3-5-sonnet-20241022", true),
            ("claude-*-sonnet-*", "claude-3-5-haiku-20241022", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("**", "x", true),
            ("*?", "", false),
            ("*?", "é", true),
            ("a*b", "aéb", true),
            ("a?b", "aéb", true),
            ("a??b", "aéb", false),
            ("*a", "ééa", true),
            ("?a", "éa", true),
            ("Gpt-4o", "gpt-4o", false),
        ];
        for &(pattern, text, want) in cases {
            assert_eq!(
                matches(pattern.as_bytes(), text),
                want,
                "{pattern:?} vs {text:?}"
            );
            assert_eq!(
                reference(pattern, text),
                want,
                "reference: {pattern:?} vs {text:?}"
            );
        }
    }

    #[test]
    fn pathological_patterns_are_fast() {
        let text = "a".repeat(100_000);
        let started = Instant::now();
        assert!(!matches(b"a*a*a*a*a*a*a*a*a*a*a*a*a*b", &text));
        assert!(!matches(b"*a*a*a*a*a*a*a*a*a*a*a*a*?b", &text));
        assert!(matches(b"a*a*a*a*a*a*a*a*a*a*a*a*a", &text));
        let long_pattern = format!("{}b", "a*".repeat(127));
        assert!(!matches(long_pattern.as_bytes(), &text));
        // Debug builds do this in a few milliseconds; exponential
        // backtracking would not finish at all.
        assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
    }

    proptest! {
        #[test]
        fn agrees_with_reference(
            pattern in "[ab*?]{0,8}",
            text in "[abé]{0,10}",
        ) {
            prop_assert_eq!(matches(pattern.as_bytes(), &text), reference(&pattern, &text));
        }
    }
}
