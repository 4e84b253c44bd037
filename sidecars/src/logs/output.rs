//! JSON written straight into one reusable buffer: no `serde_json::Value`, no per-record
//! allocation. Callers guarantee that string values are valid UTF-8 (the pipeline checks
//! each line once before parsing), so escaping only has to handle `"`, `\` and control
//! characters.

/// What each byte becomes inside a JSON string: 0 = itself, `u` = `\u00XX`, else `\<that>`.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` JSON-escaped (without the surrounding quotes).
#[inline]
pub fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc = ESCAPE[b as usize];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        push_escape(out, b, esc);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

#[inline]
fn push_escape(out: &mut Vec<u8>, b: u8, esc: u8) {
    if esc == b'u' {
        out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(b >> 4) as usize],
            HEX[(b & 0xf) as usize],
        ]);
    } else {
        out.extend_from_slice(&[b'\\', esc]);
    }
}

/// Appends one byte JSON-escaped (for decoders that produce bytes one at a time).
#[inline]
pub fn escape_byte_into(out: &mut Vec<u8>, b: u8) {
    let esc = ESCAPE[b as usize];
    if esc == 0 {
        out.push(b);
    } else {
        push_escape(out, b, esc);
    }
}

/// Builds one JSON object field by field, keeping the order fields are added in (stable
/// output that humans can read down a column).
pub struct Record<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Record<'a> {
    /// Opens an object at the end of `out`.
    #[inline]
    pub fn begin(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Record { out, empty: true }
    }

    /// Writes `"key":` for a key that needs no escaping (the fixed formats' field names).
    #[inline]
    fn key(&mut self, key: &str) {
        self.key_raw(key.as_bytes());
    }

    /// Writes `"key":` for a key escaped beforehand (capture names, escaped at start-up).
    #[inline]
    pub fn key_raw(&mut self, key: &[u8]) {
        if self.empty {
            self.empty = false;
            self.out.push(b'"');
        } else {
            self.out.extend_from_slice(b",\"");
        }
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(b"\":");
    }

    /// Writes `"key":` for a key taken from the input (logfmt keys, capture names).
    #[inline]
    pub fn key_escaped(&mut self, key: &[u8]) {
        if self.empty {
            self.empty = false;
            self.out.push(b'"');
        } else {
            self.out.extend_from_slice(b",\"");
        }
        escape_into(self.out, key);
        self.out.extend_from_slice(b"\":");
    }

    /// A string field.
    #[inline]
    pub fn str(&mut self, key: &str, value: &[u8]) {
        self.key(key);
        self.out.push(b'"');
        escape_into(self.out, value);
        self.out.push(b'"');
    }

    /// A string field whose value the caller writes with [`Self::value_buf`]; closed by
    /// [`Self::close_str`].
    #[inline]
    pub fn open_str(&mut self, key: &str) {
        self.key(key);
        self.out.push(b'"');
    }

    /// The buffer to write an already-escaped value into.
    #[inline]
    pub fn value_buf(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Closes a string opened with [`Self::open_str`].
    #[inline]
    pub fn close_str(&mut self) {
        self.out.push(b'"');
    }

    /// A string value after [`Self::key_escaped`].
    #[inline]
    pub fn value_str(&mut self, value: &[u8]) {
        self.out.push(b'"');
        escape_into(self.out, value);
        self.out.push(b'"');
    }

    /// A raw JSON token (`true`, a number) after [`Self::key_escaped`].
    #[inline]
    pub fn value_raw(&mut self, token: &[u8]) {
        self.out.extend_from_slice(token);
    }

    /// A number field from ASCII digits (validated by the caller), without leading zeros.
    #[inline]
    pub fn num(&mut self, key: &str, digits: &[u8]) {
        self.key(key);
        let trimmed = match digits.iter().position(|&d| d != b'0') {
            Some(i) => &digits[i..],
            None => b"0",
        };
        self.out.extend_from_slice(trimmed);
    }

    /// Closes the object.
    #[inline]
    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// The record written for input that no parser understood: the line, whole, and why.
///
/// Lines that are not UTF-8 cannot be a JSON string as they are, so they get the
/// replacement-character text for people and the exact bytes in base64 for machines.
pub fn error_record(out: &mut Vec<u8>, line: &[u8], error: &str) {
    match std::str::from_utf8(line) {
        Ok(_) => {
            let mut rec = Record::begin(out);
            rec.str("message", line);
            rec.str("error", error.as_bytes());
            rec.end();
        }
        Err(err) => invalid_utf8_record(out, line, err.valid_up_to()),
    }
}

/// The record for a line that is not valid UTF-8 (see [`error_record`]).
pub fn invalid_utf8_record(out: &mut Vec<u8>, line: &[u8], valid_up_to: usize) {
    use base64::Engine as _;
    let lossy = String::from_utf8_lossy(line);
    let encoded = base64::engine::general_purpose::STANDARD.encode(line);
    let error = format!("invalid UTF-8 at byte {valid_up_to}");
    let mut rec = Record::begin(out);
    rec.str("message", lossy.as_bytes());
    rec.str("message_base64", encoded.as_bytes());
    rec.str("error", error.as_bytes());
    rec.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &[u8]) -> String {
        let mut out = Vec::new();
        escape_into(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_quotes_backslashes_and_controls() {
        assert_eq!(escaped(b"plain"), "plain");
        assert_eq!(escaped(b"a\"b\\c"), r#"a\"b\\c"#);
        assert_eq!(
            escaped(b"\n\r\t\x08\x0c\x01\x1f"),
            r"\n\r\t\b\f\u0001\u001f"
        );
        assert_eq!(escaped("ünï €".as_bytes()), "ünï €");
    }

    #[test]
    fn escaped_strings_round_trip_through_a_json_parser() {
        let all: Vec<u8> = (0u8..0x80).collect();
        let json = format!("\"{}\"", escaped(&all));
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_bytes(), &all[..]);
    }

    #[test]
    fn numbers_lose_leading_zeros() {
        let mut out = Vec::new();
        let mut rec = Record::begin(&mut out);
        rec.num("a", b"000");
        rec.num("b", b"0042");
        rec.end();
        assert_eq!(out, br#"{"a":0,"b":42}"#);
    }

    #[test]
    fn invalid_utf8_keeps_the_exact_bytes() {
        let mut out = Vec::new();
        error_record(&mut out, b"ab\xffcd", "whatever");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"], "ab\u{fffd}cd");
        assert_eq!(v["message_base64"], "YWL/Y2Q=");
        assert_eq!(v["error"], "invalid UTF-8 at byte 2");
    }
}
