//! Form and URI encoding: parsing an `application/x-www-form-urlencoded` body (or a query
//! string) into parameters, strictly, and the URI encoding SigV4 canonicalises with.
//!
//! Parsing follows the WHATWG URL standard's `application/x-www-form-urlencoded` parser (`&`
//! separates pairs, the first `=` separates name and value, `+` is a space, `%XX` a byte),
//! except that it refuses what that parser would pass through silently: a `%` not followed by
//! two hex digits, bytes that are not UTF-8 once decoded, and a name given twice (an EC2 Query
//! request names each parameter once).

use std::collections::BTreeMap;
use thiserror::Error;

/// Most parameters one request may carry: EC2's largest requests (a CreateTags of 1000
/// resources with 50 tags) stay far below it, and it bounds the work a request can cause.
pub const MAX_PARAMS: usize = 10_000;

/// Why a form could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormError {
    #[error("bad percent-encoding at byte {0}")]
    BadPercent(usize),
    #[error("parameter name or value is not UTF-8 once decoded")]
    NotUtf8,
    #[error("parameter '{0}' is given more than once")]
    Duplicate(String),
    #[error("more than {MAX_PARAMS} parameters")]
    TooMany,
    #[error("empty parameter name")]
    EmptyName,
}

/// Decode `%XX` escapes (and `+` as a space when `plus_is_space`) into UTF-8 text.
pub fn percent_decode(s: &[u8], plus_is_space: bool) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hi = s.get(i + 1).and_then(|c| hex_val(*c));
                let lo = s.get(i + 2).and_then(|c| hex_val(*c));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(FormError::BadPercent(i)),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Split and decode a form body or query string into name → value.
pub fn parse_form(body: &[u8]) -> Result<BTreeMap<String, String>, FormError> {
    let mut out = BTreeMap::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        let name = percent_decode(name, true)?;
        if name.is_empty() {
            return Err(FormError::EmptyName);
        }
        let value = percent_decode(value, true)?;
        if out.len() >= MAX_PARAMS {
            return Err(FormError::TooMany);
        }
        if out.contains_key(&name) {
            return Err(FormError::Duplicate(name));
        }
        out.insert(name, value);
    }
    Ok(out)
}

/// RFC 3986 unreserved characters, which SigV4's `UriEncode` leaves as they are.
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~')
}

/// SigV4's `UriEncode`: every byte but the unreserved ones as `%XX` (uppercase hex); `/` kept
/// when `keep_slash` (for paths).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if unreserved(c) || (keep_slash && c == b'/') {
            out.push(char::from(c));
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ec2_query_bodies() {
        let f = parse_form(b"Action=DescribeImages&Version=2016-11-15&Owner.1=self&Filter.1.Name=name&Filter.1.Value.1=my%20image+v1%2A").unwrap();
        assert_eq!(f["Action"], "DescribeImages");
        assert_eq!(f["Owner.1"], "self");
        assert_eq!(f["Filter.1.Value.1"], "my image v1*");
        assert_eq!(parse_form(b"").unwrap().len(), 0);
        assert_eq!(parse_form(b"A&B=").unwrap()["A"], "");
        assert_eq!(parse_form(b"K=a%3Db%26c").unwrap()["K"], "a=b&c");
        assert_eq!(parse_form(b"K=%C3%A9").unwrap()["K"], "é");
    }

    #[test]
    fn refuses_malformed_forms() {
        assert_eq!(parse_form(b"A=%").unwrap_err(), FormError::BadPercent(0));
        assert_eq!(parse_form(b"A=1%2"), Err(FormError::BadPercent(1)));
        assert_eq!(parse_form(b"A=%zz"), Err(FormError::BadPercent(0)));
        assert_eq!(parse_form(b"A=%FF"), Err(FormError::NotUtf8));
        assert_eq!(
            parse_form(b"A=1&A=2"),
            Err(FormError::Duplicate("A".into()))
        );
        assert_eq!(parse_form(b"=1"), Err(FormError::EmptyName));
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(
            parse_form(many.join("&").as_bytes()),
            Err(FormError::TooMany)
        );
    }

    #[test]
    fn uri_encoding_as_sigv4_wants() {
        assert_eq!(uri_encode("a b/c~d*é", false), "a%20b%2Fc~d%2A%C3%A9");
        assert_eq!(uri_encode("/a b/", true), "/a%20b/");
    }
}
