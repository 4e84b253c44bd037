//! logfmt: `key=value key2="quoted value" flag`. Values stay strings (logfmt has no types;
//! guessing them would change a field's JSON type from one line to the next), a bare key
//! becomes `true`, and fields keep their order.

use super::{ParseError, closing_quote, unescape_into};
use crate::logs::output::{Record, escape_into};

const UNTERMINATED: ParseError = ParseError::new("unterminated quoted value");
const EMPTY_KEY: ParseError = ParseError::new("`=` without a key");
const QUOTED_KEY: ParseError = ParseError::new("a key contains a quote");
const NO_PAIR: ParseError = ParseError::new("no key=value pair");
const GLUED: ParseError = ParseError::new("text right after a closing quote");

#[inline]
fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses one logfmt line into `out`.
pub fn parse(s: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
    let mut rec = Record::begin(out);
    let mut pairs = 0usize;
    let mut i = 0;
    loop {
        while i < s.len() && is_space(s[i]) {
            i += 1;
        }
        if i >= s.len() {
            break;
        }
        let start = i;
        while i < s.len() && s[i] != b'=' && !is_space(s[i]) {
            i += 1;
        }
        let key = &s[start..i];
        if key.is_empty() {
            return Err(EMPTY_KEY);
        }
        if memchr::memchr(b'"', key).is_some() {
            return Err(QUOTED_KEY);
        }
        rec.key_escaped(key);
        if s.get(i) != Some(&b'=') {
            rec.value_raw(b"true");
            continue;
        }
        pairs += 1;
        i += 1;
        let buf = {
            rec.value_raw(b"\"");
            rec.value_buf()
        };
        if s.get(i) == Some(&b'"') {
            let body = &s[i + 1..];
            let end = closing_quote(body).ok_or(UNTERMINATED)?;
            unescape_into(buf, &body[..end]);
            i += end + 2;
            if i < s.len() && !is_space(s[i]) {
                return Err(GLUED);
            }
        } else {
            let vstart = i;
            while i < s.len() && !is_space(s[i]) {
                i += 1;
            }
            escape_into(buf, &s[vstart..i]);
        }
        buf.push(b'"');
    }
    if pairs == 0 {
        return Err(NO_PAIR);
    }
    rec.end();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<String, ParseError> {
        let mut out = Vec::new();
        parse(line.as_bytes(), &mut out)?;
        serde_json::from_slice::<serde_json::Value>(&out).expect("parser output is JSON");
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn pairs_quoted_values_and_flags_in_order() {
        assert_eq!(
            parse_str(r#"level=info msg="hello \"world\"" dur=1.5ms  cached path=/a=b empty="""#)
                .unwrap(),
            r#"{"level":"info","msg":"hello \"world\"","dur":"1.5ms","cached":true,"path":"/a=b","empty":""}"#
        );
        assert_eq!(parse_str("a= b=1").unwrap(), r#"{"a":"","b":"1"}"#);
        assert_eq!(
            parse_str("\tk=\"tab\\tand\\nnewline\"\t").unwrap(),
            r#"{"k":"tab\tand\nnewline"}"#
        );
    }

    #[test]
    fn malformed_logfmt_is_rejected() {
        assert_eq!(parse_str(r#"msg="no end"#).unwrap_err(), UNTERMINATED);
        assert_eq!(parse_str("=value").unwrap_err(), EMPTY_KEY);
        assert_eq!(parse_str(r#"a"b=1"#).unwrap_err(), QUOTED_KEY);
        assert_eq!(parse_str("just some words").unwrap_err(), NO_PAIR);
        assert_eq!(parse_str(r#"a="x"y"#).unwrap_err(), GLUED);
    }
}
