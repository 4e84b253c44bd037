//! nginx and Apache access logs, `combined` and `common`:
//!
//! ```text
//! $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
//! ```
//!
//! Parsed by hand over bytes (memchr for separators), fields named after nginx's variables.
//! A `-` that nginx writes for an empty variable becomes `""` (`0` for the numbers). A
//! request line that is not `METHOD PATH PROTOCOL` (TLS handshakes sent to a plain port,
//! `-` for a closed connection) is kept whole as `request`. Text after the user agent
//! (custom formats that append fields) is kept as `extra`.

use super::{ParseError, closing_quote, month_digits, unescape_into};
use crate::logs::output::{Record, key};

/// The combined/common access-log parser (stateless; a type so the format is explicit).
#[derive(Debug, Default, Clone, Copy)]
pub struct Combined;

const NO_ADDR: ParseError = ParseError::new("expected remote_addr at the start of the line");
const NO_USER: ParseError = ParseError::new("expected `ident remote_user [` after remote_addr");
const BAD_TIME: ParseError =
    ParseError::new("expected time as [dd/Mon/yyyy:hh:mm:ss +hhmm] after remote_user");
const NO_REQUEST: ParseError = ParseError::new("expected a quoted request line after the time");
const BAD_STATUS: ParseError = ParseError::new("expected status as a number after the request");
const BAD_BYTES: ParseError =
    ParseError::new("expected body_bytes_sent as a number after the status");
const BAD_QUOTED: ParseError =
    ParseError::new("expected a quoted http_referer and http_user_agent after body_bytes_sent");

impl Combined {
    /// Parses one access-log line into `out`.
    pub fn parse(&self, line: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
        // Fields before the time are short: a plain scan beats memchr's set-up.
        let sp = line.iter().position(|&b| b == b' ').ok_or(NO_ADDR)?;
        if sp == 0 {
            return Err(NO_ADDR);
        }
        let remote_addr = &line[..sp];
        let rest = &line[sp + 1..];
        // ident (always `-` from nginx), then remote_user up to ` [` (a user name may
        // contain spaces; the time bracket is the reliable anchor).
        let ident_end = rest.iter().position(|&b| b == b' ').ok_or(NO_USER)?;
        let ident = &rest[..ident_end];
        let rest = &rest[ident_end + 1..];
        let (remote_user, rest) = if rest.first() == Some(&b'[') {
            (&b""[..], &rest[1..])
        } else {
            let at = memchr::memmem::find(rest, b" [").ok_or(NO_USER)?;
            (&rest[..at], &rest[at + 2..])
        };
        let time: &[u8; 26] = rest
            .get(..26)
            .and_then(|t| t.try_into().ok())
            .ok_or(BAD_TIME)?;
        let mut time_out = [0u8; 25];
        rfc3339(time, &mut time_out).ok_or(BAD_TIME)?;
        let rest = rest.get(26..).ok_or(BAD_TIME)?;
        let rest = rest.strip_prefix(b"] \"").ok_or(NO_REQUEST)?;
        let end = closing_quote(rest).ok_or(NO_REQUEST)?;
        let request = &rest[..end];
        let rest = rest[end + 1..].strip_prefix(b" ").ok_or(BAD_STATUS)?;
        let (status, rest) = number(rest).ok_or(BAD_STATUS)?;
        let rest = rest.strip_prefix(b" ").ok_or(BAD_BYTES)?;
        let (bytes, rest) = number(rest).ok_or(BAD_BYTES)?;

        // `common` ends here; `combined` has two quoted strings more.
        let (referer, agent, extra) = if rest.iter().all(|&b| b == b' ') {
            (None, None, &b""[..])
        } else {
            let r = rest.strip_prefix(b" \"").ok_or(BAD_QUOTED)?;
            let end = closing_quote(r).ok_or(BAD_QUOTED)?;
            let referer = &r[..end];
            let r = r[end + 1..].strip_prefix(b" \"").ok_or(BAD_QUOTED)?;
            let end = closing_quote(r).ok_or(BAD_QUOTED)?;
            let agent = &r[..end];
            let extra = r[end + 1..].trim_ascii();
            (Some(referer), Some(agent), extra)
        };

        let mut rec = Record::begin(out);
        rec.str(key!("remote_addr"), remote_addr);
        rec.str(key!("remote_user"), dash_empty(remote_user));
        // Apache's %l (identd), nearly always `-`; kept when it is not.
        if ident != b"-" {
            rec.str(key!("ident"), ident);
        }
        rec.str(key!("time"), &time_out);
        match split_request(request) {
            Some((method, path, protocol)) => {
                rec.str(key!("method"), method);
                rec.open_str(key!("path"));
                unescape_into(rec.value_buf(), path);
                rec.close_str();
                rec.str(key!("protocol"), protocol);
            }
            None => {
                rec.open_str(key!("request"));
                unescape_into(rec.value_buf(), dash_empty(request));
                rec.close_str();
            }
        }
        rec.num(key!("status"), status);
        rec.num(key!("body_bytes_sent"), bytes);
        if let (Some(referer), Some(agent)) = (referer, agent) {
            rec.open_str(key!("http_referer"));
            unescape_into(rec.value_buf(), dash_empty(referer));
            rec.close_str();
            rec.open_str(key!("http_user_agent"));
            unescape_into(rec.value_buf(), dash_empty(agent));
            rec.close_str();
        }
        if !extra.is_empty() {
            rec.str(key!("extra"), extra);
        }
        rec.end();
        Ok(())
    }
}

/// nginx writes `-` for an empty variable.
#[inline]
fn dash_empty(s: &[u8]) -> &[u8] {
    if s == b"-" { b"" } else { s }
}

/// Digits up to the next space or the end (`-` means 0), at most 19 so any JSON reader
/// takes it as an integer.
#[inline]
fn number(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let digits = &s[..end];
    if digits == b"-" {
        return Some((b"0", &s[end..]));
    }
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((digits, &s[end..]))
}

/// `METHOD PATH PROTOCOL` (or HTTP/0.9's `METHOD PATH`); `None` for anything else.
#[inline]
fn split_request(request: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let first = memchr::memchr(b' ', request)?;
    let method = &request[..first];
    if method.is_empty()
        || method.len() > 32
        || !method
            .iter()
            .all(|&b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
    {
        return None;
    }
    let last = memchr::memrchr(b' ', request)?;
    if last == first {
        let path = &request[first + 1..];
        return (!path.is_empty()).then_some((method, path, &b""[..]));
    }
    let protocol = &request[last + 1..];
    let path = &request[first + 1..last];
    if !protocol.starts_with(b"HTTP/") || path.is_empty() {
        return None;
    }
    Some((method, path, protocol))
}

/// `10/Oct/2000:13:55:36 -0700` → `2000-10-10T13:55:36-07:00`, keeping the offset.
#[inline]
fn rfc3339(t: &[u8; 26], out: &mut [u8; 25]) -> Option<()> {
    let digits = |range: std::ops::Range<usize>| t[range].iter().all(u8::is_ascii_digit);
    if !(digits(0..2)
        && t[2] == b'/'
        && t[6] == b'/'
        && digits(7..11)
        && t[11] == b':'
        && digits(12..14)
        && t[14] == b':'
        && digits(15..17)
        && t[17] == b':'
        && digits(18..20)
        && t[20] == b' '
        && (t[21] == b'+' || t[21] == b'-')
        && digits(22..26))
    {
        return None;
    }
    let month = month_digits(&t[3..6])?;
    out[0..4].copy_from_slice(&t[7..11]);
    out[4] = b'-';
    out[5..7].copy_from_slice(&month);
    out[7] = b'-';
    out[8..10].copy_from_slice(&t[0..2]);
    out[10] = b'T';
    out[11..19].copy_from_slice(&t[12..20]);
    out[19] = t[21];
    out[20..22].copy_from_slice(&t[22..24]);
    out[22] = b':';
    out[23..25].copy_from_slice(&t[24..26]);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(line: &str) -> Result<Value, ParseError> {
        let mut out = Vec::new();
        Combined.parse(line.as_bytes(), &mut out)?;
        Ok(serde_json::from_slice(&out).expect("parser output is JSON"))
    }

    #[test]
    fn combined_line_becomes_nginx_variables_in_order() {
        let line = r#"93.184.216.34 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif?a=1 HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;
        let mut out = Vec::new();
        Combined.parse(line.as_bytes(), &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"remote_addr":"93.184.216.34","remote_user":"frank","time":"2000-10-10T13:55:36-07:00","method":"GET","path":"/apache_pb.gif?a=1","protocol":"HTTP/1.0","status":200,"body_bytes_sent":2326,"http_referer":"http://www.example.com/start.html","http_user_agent":"Mozilla/4.08 [en] (Win98; I ;Nav)"}"#
        );
    }

    #[test]
    fn dashes_become_empty_strings_and_zero() {
        let v = parse(r#"::1 - - [01/Jan/2024:00:00:00 +0000] "HEAD / HTTP/1.1" 304 - "-" "-""#)
            .unwrap();
        assert_eq!(v["remote_addr"], "::1");
        assert_eq!(v["remote_user"], "");
        assert!(v.get("ident").is_none());
        assert_eq!(v["time"], "2024-01-01T00:00:00+00:00");
        assert_eq!(v["status"], 304);
        assert_eq!(v["body_bytes_sent"], 0);
        assert_eq!(v["http_referer"], "");
        assert_eq!(v["http_user_agent"], "");
    }

    #[test]
    fn ipv6_address_and_positive_offset() {
        let v = parse(r#"2001:db8::ff00:42:8329 - - [31/Dec/2023:23:59:59 +0530] "GET /x HTTP/2.0" 200 5 "-" "curl/8.0""#).unwrap();
        assert_eq!(v["remote_addr"], "2001:db8::ff00:42:8329");
        assert_eq!(v["time"], "2023-12-31T23:59:59+05:30");
        assert_eq!(v["protocol"], "HTTP/2.0");
    }

    #[test]
    fn escaped_quotes_in_user_agent_and_referer() {
        // Apache escapes with \" ; nginx with \x22.
        let v = parse(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1 "http://a/\"q\"" "Bot \"quoted\" \x22nginx\x22 \\ end""#).unwrap();
        assert_eq!(v["http_referer"], r#"http://a/"q""#);
        assert_eq!(v["http_user_agent"], r#"Bot "quoted" "nginx" \ end"#);
    }

    #[test]
    fn request_that_is_not_method_path_protocol_is_kept_whole() {
        let v = parse(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "\x16\x03\x01\x00\xF7\x01" 400 157 "-" "-""#).unwrap();
        assert_eq!(v["request"], "\u{16}\u{3}\u{1}\u{0}\\xF7\u{1}");
        assert!(v.get("method").is_none());
        let v = parse(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "-" 408 0 "-" "-""#).unwrap();
        assert_eq!(v["request"], "");
        let v =
            parse(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /old" 200 0 "-" "-""#).unwrap();
        assert_eq!(
            (&v["method"], &v["path"], &v["protocol"]),
            (&json!("GET"), &json!("/old"), &json!(""))
        );
        let v = parse(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / SPDY/3" 200 0 "-" "-""#)
            .unwrap();
        assert_eq!(v["request"], "GET / SPDY/3");
    }

    #[test]
    fn common_format_has_no_referer_or_agent() {
        let v = parse(r#"10.0.0.1 user-identifier bob smith [10/Oct/2000:13:55:36 -0700] "POST /form HTTP/1.1" 201 12"#).unwrap();
        assert_eq!(v["remote_user"], "bob smith");
        assert_eq!(v["ident"], "user-identifier");
        assert_eq!(v["status"], 201);
        assert!(v.get("http_user_agent").is_none());
    }

    #[test]
    fn trailing_custom_fields_are_kept_as_extra() {
        let v = parse(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1 "-" "ua" "203.0.113.9" 0.004"#).unwrap();
        assert_eq!(v["extra"], r#""203.0.113.9" 0.004"#);
    }

    #[test]
    fn malformed_lines_say_what_was_wrong() {
        let cases = [
            ("", NO_ADDR),
            ("1.2.3.4", NO_ADDR),
            ("1.2.3.4 - - 10/Oct/2000", NO_USER),
            (
                r#"1.2.3.4 - - [10/Foo/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1"#,
                BAD_TIME,
            ),
            (
                r#"1.2.3.4 - - [10/Oct/2000:13:55:36] "GET / HTTP/1.1" 200 1"#,
                BAD_TIME,
            ),
            (
                r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] GET / HTTP/1.1 200 1"#,
                NO_REQUEST,
            ),
            (
                r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1 200 1"#,
                NO_REQUEST,
            ),
            (
                r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" OK 1"#,
                BAD_STATUS,
            ),
            (
                r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200"#,
                BAD_BYTES,
            ),
            (
                r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1x"#,
                BAD_BYTES,
            ),
            (
                r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1 "ref"#,
                BAD_QUOTED,
            ),
            (
                r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1 "ref""#,
                BAD_QUOTED,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line).unwrap_err(), want, "{line}");
        }
    }
}
