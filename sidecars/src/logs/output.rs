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
///
/// Log text rarely needs escaping, so this checks eight bytes at a time (SWAR) and copies
/// clean runs whole; only where a word holds a quote, a backslash or a control byte does
/// it go byte by byte.
#[inline]
pub fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    escape_impl::<false>(out, s);
}

/// Like [`escape_into`], but first undoes the escapes web servers and logfmt writers put
/// in quoted strings: `\"`, `\\`, `\n`, `\t`, `\r`, and nginx's `\xHH` for ASCII bytes.
/// Any other backslash (including `\xHH` above 0x7f, which could make the text invalid
/// UTF-8) is kept as written. One pass for both jobs.
#[inline]
pub fn unescape_into(out: &mut Vec<u8>, s: &[u8]) {
    escape_impl::<true>(out, s);
}

#[inline]
fn escape_impl<const UNESCAPE: bool>(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        if i + 8 <= s.len() {
            let word = u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
            if !needs_escape(word) {
                i += 8;
                continue;
            }
        }
        let b = s[i];
        let esc = ESCAPE[b as usize];
        if esc == 0 {
            i += 1;
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        let (decoded, len) = if UNESCAPE && b == b'\\' {
            web_escape(&s[i..])
        } else {
            (b, 1)
        };
        escape_byte_into(out, decoded);
        i += len;
        start = i;
    }
    out.extend_from_slice(&s[start..]);
}

/// The byte a backslash escape at the start of `s` stands for, and its length; a lone
/// backslash stands for itself.
#[inline]
fn web_escape(s: &[u8]) -> (u8, usize) {
    match s.get(1) {
        Some(b'"') => (b'"', 2),
        Some(b'\\') => (b'\\', 2),
        Some(b'n') => (b'\n', 2),
        Some(b't') => (b'\t', 2),
        Some(b'r') => (b'\r', 2),
        Some(b'x') => match (
            s.get(2).and_then(|&h| hex_value(h)),
            s.get(3).and_then(|&h| hex_value(h)),
        ) {
            (Some(hi), Some(lo)) if hi < 8 => ((hi << 4) | lo, 4),
            _ => (b'\\', 1),
        },
        _ => (b'\\', 1),
    }
}

#[inline]
fn hex_value(h: u8) -> Option<u8> {
    match h {
        b'0'..=b'9' => Some(h - b'0'),
        b'a'..=b'f' => Some(h - b'a' + 10),
        b'A'..=b'F' => Some(h - b'A' + 10),
        _ => None,
    }
}

/// Whether any byte of `word` is below 0x20, `"` or `\` (exact as an existence test).
#[inline]
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    (below_space | has_zero(word ^ (ONES * b'"' as u64)) | has_zero(word ^ (ONES * b'\\' as u64)))
        != 0
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

/// `key!("status")` is `"\"status\":"`: a field name as [`Record`]'s methods take it.
macro_rules! key {
    ($name:literal) => {
        concat!("\"", $name, "\":")
    };
}
pub(crate) use key;

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

    /// Writes a key made by `key!` (`"name":`, quoted at
    /// compile time: the fixed formats' field names cost one copy).
    #[inline]
    fn key(&mut self, quoted: &str) {
        if self.empty {
            self.empty = false;
        } else {
            self.out.push(b',');
        }
        self.out.extend_from_slice(quoted.as_bytes());
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
            rec.str(key!("message"), line);
            rec.str(key!("error"), error.as_bytes());
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
    rec.str(key!("message"), lossy.as_bytes());
    rec.str(key!("message_base64"), encoded.as_bytes());
    rec.str(key!("error"), error.as_bytes());
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

    proptest::proptest! {
        /// The word-at-a-time scan misses nothing, whatever sits where in a word.
        #[test]
        fn any_string_round_trips(s in "[ -~\\x00-\\x1f\"\\\\é€😀]{0,80}") {
            let json = format!("\"{}\"", escaped(s.as_bytes()));
            let back: String = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn numbers_lose_leading_zeros() {
        let mut out = Vec::new();
        let mut rec = Record::begin(&mut out);
        rec.num(key!("a"), b"000");
        rec.num(key!("b"), b"0042");
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
