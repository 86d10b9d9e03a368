//! Text that reaches a terminal: which characters user-supplied text may not contain, and how
//! stored text is escaped before it is printed.
//!
//! Names, descriptions and tags end up in tables on someone's terminal, and public images bring
//! them from other accounts. A control character (ESC starts ANSI escape sequences; CR and
//! newline rewrite lines; C1 `U+009B` is a one-character CSI) could recolour, hide or forge
//! output, and Unicode bidirectional formatting characters reorder what is displayed
//! ("Trojan Source", CVE-2021-42574). They are refused at input ([`find_unsafe_char`]) and
//! escaped on output ([`escape_unsafe`]) for anything stored before the check existed.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Unicode bidirectional formatting characters: LRE, RLE, PDF, LRO, RLO (`U+202A..=U+202E`)
/// and LRI, RLI, FSI, PDI (`U+2066..=U+2069`) (Unicode Standard Annex #9, table 1).
const BIDI_CONTROLS: [std::ops::RangeInclusive<char>; 2] =
    ['\u{202A}'..='\u{202E}', '\u{2066}'..='\u{2069}'];

/// Whether `c` must not reach a terminal unescaped: a control character (Unicode category Cc:
/// C0, DEL and C1) or a bidirectional formatting character.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || BIDI_CONTROLS.iter().any(|r| r.contains(&c))
}

/// The first character of `s` that [`is_unsafe_char`], if any.
pub fn find_unsafe_char(s: &str) -> Option<char> {
    s.chars().find(|c| is_unsafe_char(*c))
}

/// `s` with every unsafe character written as a visible escape: `\n`, `\r`, `\t`, `\x1b`,
/// `\u{202e}`. Text without such characters is returned as it is.
pub fn escape_unsafe(s: &str) -> Cow<'_, str> {
    if find_unsafe_char(s).is_none() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe_char(c) && u32::from(c) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if is_unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_found() {
        assert_eq!(find_unsafe_char("web tier (v2) é ü 日本"), None);
        assert_eq!(find_unsafe_char("a\x1b[31mred"), Some('\x1b'));
        assert_eq!(find_unsafe_char("a\rb"), Some('\r'));
        assert_eq!(find_unsafe_char("x\u{9b}2J"), Some('\u{9b}'));
        assert_eq!(find_unsafe_char("x\u{7f}"), Some('\u{7f}'));
        assert_eq!(find_unsafe_char("abc\u{202e}fed"), Some('\u{202e}'));
        assert_eq!(find_unsafe_char("\u{2066}"), Some('\u{2066}'));
    }

    #[test]
    fn escaping_makes_them_visible() {
        assert!(matches!(escape_unsafe("plain text"), Cow::Borrowed(_)));
        assert_eq!(escape_unsafe("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape_unsafe("l1\nl2\r\t"), "l1\\nl2\\r\\t");
        assert_eq!(escape_unsafe("\u{9b}\u{7f}"), "\\x9b\\x7f");
        assert_eq!(escape_unsafe("x\u{202e}y"), "x\\u{202e}y");
        for s in ["a\x1b[2Jb", "\u{9b}\n", "x\u{2069}"] {
            assert_eq!(find_unsafe_char(&escape_unsafe(s)), None);
        }
    }
}
