//! `--format regex --pattern RE`: each named capture group becomes a string field, in the
//! order the groups appear in the pattern; groups that did not take part in the match are
//! left out.
//!
//! A record joined from several lines (`--multiline-start`) is matched whole first, so a
//! pattern written for several lines (`(?s)`) works as written. When that fails, the
//! pattern is matched against the record's first line, which is what people write it for,
//! and the continuation lines (a traceback, a stack trace) are appended, after a newline,
//! to the last named group that took part in the match: the message, in any pattern that
//! ends with one.

use super::ParseError;
use crate::logs::output::{Record, escape_into};

const NO_MATCH: ParseError = ParseError::new("line does not match --pattern");

/// A compiled pattern and its reusable capture slots (no allocation per record).
#[derive(Debug)]
pub struct Captures {
    re: regex::bytes::Regex,
    slots: regex::bytes::CaptureLocations,
    /// (group index, JSON-escaped name) of every named group.
    names: Vec<(usize, Vec<u8>)>,
    /// The last group's value with the continuation lines, reused.
    joined: Vec<u8>,
}

impl Captures {
    /// Wraps a compiled pattern; `None` when it has no named group (every record would be
    /// an empty object, which is never what the user meant).
    pub fn new(re: regex::bytes::Regex) -> Option<Self> {
        let names: Vec<(usize, Vec<u8>)> = re
            .capture_names()
            .enumerate()
            .filter_map(|(i, name)| {
                name.map(|n| {
                    let mut escaped = Vec::new();
                    escape_into(&mut escaped, n.as_bytes());
                    (i, escaped)
                })
            })
            .collect();
        if names.is_empty() {
            return None;
        }
        let slots = re.capture_locations();
        Some(Captures {
            re,
            slots,
            names,
            joined: Vec::new(),
        })
    }

    /// Parses one record into `out`.
    pub fn parse(&mut self, s: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
        if self.re.captures_read(&mut self.slots, s).is_some() {
            self.write(s, None, out);
            return Ok(());
        }
        let Some(newline) = memchr::memchr(b'\n', s) else {
            return Err(NO_MATCH);
        };
        let (first, rest) = s.split_at(newline);
        self.re
            .captures_read(&mut self.slots, first)
            .ok_or(NO_MATCH)?;
        self.write(first, Some(rest), out);
        Ok(())
    }

    /// Writes the groups matched in `s`; `rest` (starting with its newline) goes on the
    /// end of the last group that matched.
    fn write(&mut self, s: &[u8], rest: Option<&[u8]>, out: &mut Vec<u8>) {
        let last = self
            .names
            .iter()
            .rposition(|(i, _)| self.slots.get(*i).is_some());
        let mut rec = Record::begin(out);
        for (n, (i, name)) in self.names.iter().enumerate() {
            let Some((start, end)) = self.slots.get(*i) else {
                continue;
            };
            rec.key_raw(name);
            match rest {
                Some(rest) if Some(n) == last => {
                    self.joined.clear();
                    self.joined.extend_from_slice(&s[start..end]);
                    self.joined.extend_from_slice(rest);
                    rec.value_str(&self.joined);
                }
                _ => rec.value_str(&s[start..end]),
            }
        }
        rec.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captures(pattern: &str) -> Option<Captures> {
        Captures::new(regex::bytes::Regex::new(pattern).unwrap())
    }

    #[test]
    fn named_groups_become_fields_in_pattern_order() {
        let mut c =
            captures(r"^(?P<level>\w+) \[(?P<mod>[^\]]+)\](?: (?P<code>\d+))? (?P<msg>.*)$")
                .unwrap();
        let mut out = Vec::new();
        c.parse(br#"WARN [db] slow "query""#, &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"level":"WARN","mod":"db","msg":"slow \"query\""}"#
        );
        out.clear();
        c.parse(b"ERROR [net] 42 down", &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"level":"ERROR","mod":"net","code":"42","msg":"down"}"#
        );
        out.clear();
        assert_eq!(c.parse(b"nope", &mut out).unwrap_err(), NO_MATCH);
    }

    /// The issue's pattern, written for one line.
    const FIRST_LINE: &str = r"^(?P<time>\S+ \S+) (?P<level>[A-Z]+) (?P<message>.*)$";

    #[test]
    fn a_python_traceback_belongs_to_the_message_of_its_first_line() {
        let mut c = captures(FIRST_LINE).unwrap();
        let record = b"2026-12-02 10:00:01,123 ERROR request failed\n\
Traceback (most recent call last):\n\
  File \"/app/main.py\", line 8, in handle\n\
    total = price / qty\n\
ZeroDivisionError: division by zero";
        let mut out = Vec::new();
        c.parse(record, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-12-02 10:00:01,123");
        assert_eq!(v["level"], "ERROR");
        let message = v["message"].as_str().unwrap();
        assert!(
            message.starts_with("request failed\nTraceback (most recent call last):\n"),
            "{message}"
        );
        assert!(
            message.ends_with("ZeroDivisionError: division by zero"),
            "{message}"
        );
        assert!(v.get("error").is_none());
    }

    #[test]
    fn a_java_stack_trace_belongs_to_the_message_of_its_first_line() {
        let mut c = captures(FIRST_LINE).unwrap();
        let record = b"2026-12-02 10:00:02.456 WARN Unhandled exception\n\
java.lang.IllegalStateException: pool closed\n\
\tat com.shop.Pool.take(Pool.java:42)\n\
\tat com.shop.Api.handle(Api.java:17)\n\
Caused by: java.io.IOException: reset\n\
\t... 2 more";
        let mut out = Vec::new();
        c.parse(record, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(
            v["message"],
            "Unhandled exception\njava.lang.IllegalStateException: pool closed\n\tat com.shop.Pool.take(Pool.java:42)\n\tat com.shop.Api.handle(Api.java:17)\nCaused by: java.io.IOException: reset\n\t... 2 more"
        );
    }

    #[test]
    fn a_pattern_written_for_several_lines_still_matches_as_written() {
        let mut c = captures(r"(?s)^(?P<head>[^\n]*)\n(?P<body>.*)$").unwrap();
        let mut out = Vec::new();
        c.parse(b"a\nb\nc", &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"head":"a","body":"b\nc"}"#
        );
        // A first line that does not match is still an error.
        let mut strict = captures(FIRST_LINE).unwrap();
        out.clear();
        assert_eq!(
            strict.parse(b"no time here\nmore", &mut out).unwrap_err(),
            NO_MATCH
        );
    }

    #[test]
    fn a_pattern_without_named_groups_is_refused() {
        assert!(captures(r"^(\w+) (.*)$").is_none());
    }
}
