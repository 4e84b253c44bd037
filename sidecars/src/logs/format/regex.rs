//! `--format regex --pattern RE`: each named capture group becomes a string field, in the
//! order the groups appear in the pattern; groups that did not take part in the match are
//! left out.

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
        Some(Captures { re, slots, names })
    }

    /// Parses one record into `out`.
    pub fn parse(&mut self, s: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
        self.re.captures_read(&mut self.slots, s).ok_or(NO_MATCH)?;
        let mut rec = Record::begin(out);
        for (i, name) in &self.names {
            if let Some((start, end)) = self.slots.get(*i) {
                rec.key_raw(name);
                rec.value_str(&s[start..end]);
            }
        }
        rec.end();
        Ok(())
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

    #[test]
    fn a_pattern_without_named_groups_is_refused() {
        assert!(captures(r"^(\w+) (.*)$").is_none());
    }
}
