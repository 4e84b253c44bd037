//! JSON records passed through: each must be one JSON object. A record that spans lines
//! (pretty-printed JSON joined with `--multiline-start`) is made single-line, since the
//! output is one object per line.

use super::ParseError;

const NOT_OBJECT: ParseError = ParseError::new("not a JSON object");

/// Validates `s` as a JSON object and appends it to `out` on one line.
pub fn parse(s: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
    let s = s.trim_ascii();
    if s.first() != Some(&b'{') {
        return Err(NOT_OBJECT);
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(s)
        .map_err(|e| ParseError(format!("invalid JSON: {e}").into()))?;
    if memchr::memchr2(b'\n', b'\r', s).is_none() {
        out.extend_from_slice(s);
    } else {
        minify_into(out, s);
    }
    Ok(())
}

/// Drops whitespace outside strings. Only called on text serde has validated, where raw
/// newlines can only be whitespace between tokens.
fn minify_into(out: &mut Vec<u8>, s: &[u8]) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in s {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            in_string = b == b'"';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<String, ParseError> {
        let mut out = Vec::new();
        parse(s.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn objects_pass_through_verbatim() {
        let line = r#"{"b":1, "a":"x y","n":null}"#;
        assert_eq!(parse_str(line).unwrap(), line);
        assert_eq!(parse_str("  {}  ").unwrap(), "{}");
    }

    #[test]
    fn multi_line_objects_become_one_line() {
        let text = "{\n  \"msg\": \"a \\\" b\",\n  \"list\": [1,\r\n 2]\n}";
        assert_eq!(parse_str(text).unwrap(), r#"{"msg":"a \" b","list":[1,2]}"#);
    }

    #[test]
    fn non_objects_and_broken_json_are_rejected() {
        assert_eq!(parse_str("[1,2]").unwrap_err(), NOT_OBJECT);
        assert_eq!(parse_str("plain text").unwrap_err(), NOT_OBJECT);
        let err = parse_str(r#"{"a":1"#).unwrap_err();
        assert!(err.0.starts_with("invalid JSON: EOF"), "{err:?}");
        assert!(parse_str(r#"{"a":1} trailing"#).is_err());
    }
}
