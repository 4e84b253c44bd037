//! The log formats `rigging-sidecar logs` understands. Each parser turns one record (a
//! line, or lines joined by `--multiline-start`) into one JSON object appended to a buffer;
//! on failure the pipeline rolls the buffer back and writes an error record instead.

pub mod json;
pub mod logfmt;
pub mod nginx;
pub mod redis;
pub mod regex;

use std::borrow::Cow;

/// Why a record did not parse. Static for the fixed formats (no allocation on the error
/// path of a hot loop); JSON errors carry serde's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub Cow<'static, str>);

impl ParseError {
    /// An error with a fixed message.
    pub const fn new(message: &'static str) -> Self {
        ParseError(Cow::Borrowed(message))
    }
}

/// A parser for one format, chosen once at start-up.
#[derive(Debug)]
pub enum Parser {
    /// nginx `combined` (and `common`) access logs.
    Nginx(nginx::Combined),
    /// Apache `combined` / `common` access logs.
    Apache(nginx::Combined),
    /// Redis server logs.
    Redis,
    /// `key=value` pairs.
    Logfmt,
    /// One JSON object per record, passed through (made single-line when needed).
    Json,
    /// A user regex with named captures.
    Regex(regex::Captures),
}

impl Parser {
    /// Appends the record parsed from `text` (valid UTF-8, no line terminator) to `out`.
    /// On error `out` may hold a partial object: the caller truncates it.
    #[inline]
    pub fn parse(&mut self, text: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
        match self {
            Parser::Nginx(p) | Parser::Apache(p) => p.parse(text, out),
            Parser::Redis => redis::parse(text, out),
            Parser::Logfmt => logfmt::parse(text, out),
            Parser::Json => json::parse(text, out),
            Parser::Regex(p) => p.parse(text, out),
        }
    }
}

/// The index of the `"` closing a quoted string that starts at `s[0]` (just after its
/// opening quote), skipping quotes escaped with a backslash.
#[inline]
pub(crate) fn closing_quote(s: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'"', &s[from..]) {
        let at = from + i;
        let backslashes = s[..at].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

pub(crate) use super::output::unescape_into;

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `Oct` → `10`: the month number as two ASCII digits.
#[inline]
pub(crate) fn month_digits(name: &[u8]) -> Option<[u8; 2]> {
    let month = MONTHS.iter().position(|m| m[..] == *name)? + 1;
    Some([b'0' + (month / 10) as u8, b'0' + (month % 10) as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescaped(s: &str) -> String {
        let mut out = Vec::new();
        unescape_into(&mut out, s.as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn closing_quote_skips_escaped_quotes() {
        assert_eq!(closing_quote(br#"abc" rest"#), Some(3));
        assert_eq!(closing_quote(br#"a\"b" rest"#), Some(4));
        assert_eq!(closing_quote(br#"a\\" rest"#), Some(3));
        assert_eq!(closing_quote(br#"a\\\"b"#), None);
        assert_eq!(closing_quote(b"no end"), None);
    }

    #[test]
    fn unescape_handles_web_server_escapes() {
        assert_eq!(unescaped(r#"say \"hi\""#), r#"say \"hi\""#);
        assert_eq!(unescaped(r"a\x22b\x5Cc"), r#"a\"b\\c"#);
        assert_eq!(unescaped(r"tab\there"), r"tab\there");
        // Non-ASCII \xHH stays literal, so the output is always valid UTF-8.
        assert_eq!(unescaped(r"\xC3\xA9"), r"\\xC3\\xA9");
        assert_eq!(unescaped(r"trailing\"), r"trailing\\");
        assert_eq!(unescaped(r"\q\x2"), r"\\q\\x2");
    }
}
