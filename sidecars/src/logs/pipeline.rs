//! Lines in, JSON records out: CRLF handling, the UTF-8 check, multi-line joining, error
//! records, and one reusable output buffer written out in large blocks.

use std::io::{self, Write};

use super::format::Parser;
use super::output::{error_record, invalid_utf8_record};

/// A record (one line, or lines joined by `--multiline-start`) is cut here: beyond it a
/// runaway continuation would hold memory without bound.
pub const MAX_RECORD: usize = 1 << 20;

/// The output buffer is written out when it grows past this.
const WRITE_AT: usize = 256 * 1024;

/// Running totals, published to the admin port's metrics by the reader loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Bytes read from the input.
    pub bytes: u64,
    /// Lines read (pieces of over-long lines count one each).
    pub lines: u64,
    /// JSON records written.
    pub records: u64,
    /// Records that are error records (did not parse, or were not UTF-8).
    pub errors: u64,
}

/// Parses records into the output buffer.
struct Emitter {
    parser: Parser,
    out: Vec<u8>,
    stats: Stats,
}

impl Emitter {
    #[inline]
    fn record(&mut self, text: &[u8]) {
        let mark = self.out.len();
        match std::str::from_utf8(text) {
            Ok(_) => {
                if let Err(err) = self.parser.parse(text, &mut self.out) {
                    self.out.truncate(mark);
                    error_record(&mut self.out, text, &err.0);
                    self.stats.errors += 1;
                }
            }
            Err(err) => {
                invalid_utf8_record(&mut self.out, text, err.valid_up_to());
                self.stats.errors += 1;
            }
        }
        self.out.push(b'\n');
        self.stats.records += 1;
    }
}

/// `--multiline-start`: a line matching the pattern starts a record; any other line is
/// appended (after a `\n`) to the record before it.
struct Joiner {
    start: regex::bytes::Regex,
    pending: Vec<u8>,
    open: bool,
}

impl Joiner {
    fn push(&mut self, line: &[u8], emit: &mut Emitter) {
        let starts = !self.open || self.start.is_match(line);
        if starts || self.pending.len() + 1 + line.len() > MAX_RECORD {
            if self.open {
                emit.record(&self.pending);
            } else if line.is_empty() {
                return;
            }
            self.pending.clear();
            self.pending.extend_from_slice(line);
            self.open = true;
        } else {
            self.pending.push(b'\n');
            self.pending.extend_from_slice(line);
        }
    }

    fn flush(&mut self, emit: &mut Emitter) {
        if self.open {
            emit.record(&self.pending);
            self.open = false;
            self.pending.clear();
        }
    }
}

/// The whole path from input lines to the output sink.
pub struct Pipeline<W: Write> {
    emit: Emitter,
    joiner: Option<Joiner>,
    sink: W,
}

impl<W: Write> Pipeline<W> {
    /// A pipeline writing to `sink`.
    pub fn new(parser: Parser, multiline_start: Option<regex::bytes::Regex>, sink: W) -> Self {
        Pipeline {
            emit: Emitter {
                parser,
                out: Vec::with_capacity(WRITE_AT + MAX_RECORD / 4),
                stats: Stats::default(),
            },
            joiner: multiline_start.map(|start| Joiner {
                start,
                pending: Vec::new(),
                open: false,
            }),
            sink,
        }
    }

    /// One complete line, without its `\n`. A trailing `\r` (CRLF files) is dropped;
    /// empty lines make no record.
    #[inline]
    pub fn line(&mut self, line: &[u8]) -> io::Result<()> {
        self.emit.stats.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match &mut self.joiner {
            None if line.is_empty() => {}
            None => self.emit.record(line),
            Some(joiner) => joiner.push(line, &mut self.emit),
        }
        if self.emit.out.len() >= WRITE_AT {
            self.write_out()?;
        }
        Ok(())
    }

    /// A piece of a line too long to buffer: written as an error record of its own so
    /// that its bytes are kept, with the rest following in the next record(s).
    pub fn overlong_piece(&mut self, piece: &[u8]) -> io::Result<()> {
        self.emit.stats.lines += 1;
        if let Some(joiner) = &mut self.joiner {
            joiner.flush(&mut self.emit);
        }
        let mark = self.emit.out.len();
        error_record(
            &mut self.emit.out,
            piece,
            "line longer than 1048576 bytes: split, continued in the next record",
        );
        debug_assert!(self.emit.out.len() > mark);
        self.emit.out.push(b'\n');
        self.emit.stats.records += 1;
        self.emit.stats.errors += 1;
        self.write_out()
    }

    /// Emits the record being joined, if any (at EOF, or when the input has been idle
    /// long enough that no continuation is coming).
    pub fn flush_pending(&mut self) {
        if let Some(joiner) = &mut self.joiner {
            joiner.flush(&mut self.emit);
        }
    }

    /// Whether a multi-line record is waiting for more lines.
    pub fn has_pending(&self) -> bool {
        self.joiner.as_ref().is_some_and(|j| j.open)
    }

    /// Writes buffered records to the sink and flushes it.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.sink.flush()
    }

    /// Emits everything still held (a record being joined) and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        self.flush_pending();
        self.flush()
    }

    /// Totals so far.
    pub fn stats(&self) -> Stats {
        self.emit.stats
    }

    /// Counts bytes read from the input.
    pub fn add_bytes(&mut self, n: usize) {
        self.emit.stats.bytes += n as u64;
    }

    /// The sink (tests read what was written).
    pub fn into_sink(self) -> W {
        self.sink
    }

    fn write_out(&mut self) -> io::Result<()> {
        if !self.emit.out.is_empty() {
            self.sink.write_all(&self.emit.out)?;
            self.emit.out.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::format::{self, Parser};
    use base64::Engine as _;
    use proptest::prelude::*;
    use serde_json::Value;

    fn parsers() -> Vec<(&'static str, Parser)> {
        let any_line = regex::bytes::Regex::new(r"(?s)^(?P<text>.*)$").unwrap();
        vec![
            ("nginx", Parser::Nginx(format::nginx::Combined)),
            ("apache", Parser::Apache(format::nginx::Combined)),
            ("redis", Parser::Redis),
            ("logfmt", Parser::Logfmt),
            ("json", Parser::Json),
            (
                "regex",
                Parser::Regex(format::regex::Captures::new(any_line).unwrap()),
            ),
        ]
    }

    /// Runs `input` through a pipeline as one read; returns the parsed records.
    fn run(parser: Parser, multiline: Option<&str>, input: &[u8]) -> Vec<Value> {
        let multiline = multiline.map(|p| regex::bytes::Regex::new(p).unwrap());
        let mut pipe = Pipeline::new(parser, multiline, Vec::new());
        let mut rest = input;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            pipe.line(&rest[..nl]).unwrap();
            rest = &rest[nl + 1..];
        }
        if !rest.is_empty() {
            pipe.line(rest).unwrap();
        }
        pipe.finish().unwrap();
        let stats = pipe.stats();
        let out = pipe.into_sink();
        assert!(out.is_empty() || out.ends_with(b"\n"));
        let records: Vec<Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                assert!(memchr::memchr(b'\r', l).is_none(), "one record per line");
                serde_json::from_slice(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(l)))
            })
            .collect();
        assert_eq!(stats.records as usize, records.len());
        assert!(records.iter().all(Value::is_object));
        records
    }

    /// The input's lines as the pipeline sees them: split on `\n`, CR dropped.
    fn input_lines(input: &[u8]) -> Vec<&[u8]> {
        let body = input.strip_suffix(b"\n").unwrap_or(input);
        if input.is_empty() {
            return Vec::new();
        }
        body.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect()
    }

    /// The exact bytes an error record stands for.
    fn error_bytes(record: &Value) -> Option<Vec<u8>> {
        record.get("error")?;
        Some(match record.get("message_base64") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().unwrap())
                .unwrap(),
            None => record["message"].as_str().unwrap().as_bytes().to_vec(),
        })
    }

    #[test]
    fn unparsable_and_non_utf8_lines_are_emitted_whole_with_an_error() {
        let input = b"not an access log\n\xff\xfe bad bytes\r\n";
        let records = run(Parser::Nginx(format::nginx::Combined), None, input);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["message"], "not an access log");
        assert_eq!(
            records[0]["error"],
            "expected `ident remote_user [` after remote_addr"
        );
        assert_eq!(error_bytes(&records[1]).unwrap(), b"\xff\xfe bad bytes");
        assert_eq!(records[1]["error"], "invalid UTF-8 at byte 0");
    }

    #[test]
    fn multiline_joins_stack_traces_into_the_record_that_started_them() {
        // Written for the first line: the continuation lines join the message.
        let pattern = r"^(?P<time>\d\d:\d\d) (?P<level>\w+) (?P<message>.*)$";
        let parser = Parser::Regex(
            format::regex::Captures::new(regex::bytes::Regex::new(pattern).unwrap()).unwrap(),
        );
        let input = b"  orphan continuation\n10:00 ERROR boom\r\n\tat a.b(C.java:1)\n\n\tat d.e(F.java:2)\n10:01 INFO fine\n";
        let records = run(parser, Some(r"^\d\d:\d\d "), input);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0]["message"], "  orphan continuation");
        assert!(
            records[0]["error"].is_string(),
            "does not match the pattern"
        );
        assert_eq!(
            records[1]["message"],
            "boom\n\tat a.b(C.java:1)\n\n\tat d.e(F.java:2)"
        );
        assert_eq!(records[1]["level"], "ERROR");
        assert_eq!(records[2]["message"], "fine");
    }

    #[test]
    fn pretty_printed_json_is_joined_into_one_line() {
        let input = b"{\n  \"a\": 1,\n  \"b\": [\n    2\n  ]\n}\n{\"c\":3}\n";
        let records = run(Parser::Json, Some(r"^\{"), input);
        assert_eq!(
            records,
            [
                serde_json::json!({"a":1,"b":[2]}),
                serde_json::json!({"c":3})
            ]
        );
    }

    fn log_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => any::<u8>(),
            2 => Just(b'\n'),
            1 => Just(b'\r'),
            2 => Just(b' '),
            1 => Just(b'"'),
            1 => Just(b'\\'),
            1 => Just(b'='),
            1 => Just(b'{'),
            1 => Just(b'['),
        ];
        prop::collection::vec(byte, 0..600)
    }

    proptest! {
        /// Any bytes, any format: no panic, one JSON object per non-empty line, and every
        /// line that did not parse comes back byte for byte.
        #[test]
        fn any_bytes_become_records_and_errors_keep_their_line(input in log_bytes()) {
            let lines: Vec<&[u8]> =
                input_lines(&input).into_iter().filter(|l| !l.is_empty()).collect();
            for (name, parser) in parsers() {
                let records = run(parser, None, &input);
                prop_assert_eq!(records.len(), lines.len(), "format {}", name);
                for (record, line) in records.iter().zip(&lines) {
                    if let Some(bytes) = error_bytes(record) {
                        prop_assert_eq!(&bytes[..], *line, "format {}", name);
                    }
                }
            }
        }

        /// With a pattern that takes the whole record, the output holds every input byte
        /// (line terminators aside), with and without multi-line joining.
        #[test]
        fn every_input_byte_survives(input in log_bytes(), multiline in any::<bool>()) {
            let any_line = regex::bytes::Regex::new(r"(?s)^(?P<text>.*)$").unwrap();
            let parser = Parser::Regex(format::regex::Captures::new(any_line).unwrap());
            let start = multiline.then_some(r"^\S");
            let records = run(parser, start, &input);
            let texts: Vec<Vec<u8>> = records
                .iter()
                .map(|r| match error_bytes(r) {
                    Some(bytes) => bytes,
                    None => r["text"].as_str().unwrap().as_bytes().to_vec(),
                })
                .collect();
            let lines = input_lines(&input);
            if multiline {
                let first = lines.iter().position(|l| !l.is_empty()).unwrap_or(lines.len());
                prop_assert_eq!(texts.join(&b'\n'), lines[first..].join(&b'\n'));
            } else {
                let expected: Vec<&[u8]> = lines.into_iter().filter(|l| !l.is_empty()).collect();
                prop_assert_eq!(texts, expected);
            }
        }

        /// Generated access-log lines parse back to the fields they were made from.
        #[test]
        fn nginx_lines_round_trip(
            addr in "[0-9a-f:.]{2,39}",
            user in prop_oneof![Just("-".to_owned()), "[a-z]{1,8}"],
            method in "[A-Z]{3,7}",
            path in "/[!-~&&[^\"\\\\ ]]{0,40}",
            status in 100u16..600,
            bytes in prop_oneof![Just(None), (0u64..10_000_000).prop_map(Some)],
            agent in "[ -~]{0,60}",
            offset in "[+-](0[0-9]|1[0-4])(00|30|45)",
        ) {
            let escaped_agent = agent.replace('\\', "\\\\").replace('"', "\\\"");
            let bytes_field = bytes.map_or("-".to_owned(), |b| b.to_string());
            let line = format!(
                "{addr} - {user} [05/Mar/2024:07:08:09 {offset}] \"{method} {path} HTTP/1.1\" {status} {bytes_field} \"-\" \"{escaped_agent}\""
            );
            let records = run(Parser::Nginx(format::nginx::Combined), None, line.as_bytes());
            let r = &records[0];
            prop_assert!(r.get("error").is_none(), "{line}: {r}");
            prop_assert_eq!(&r["remote_addr"], addr.as_str());
            prop_assert_eq!(&r["remote_user"], if user == "-" { "" } else { user.as_str() });
            let want_time = format!("2024-03-05T07:08:09{}:{}", &offset[..3], &offset[3..]);
            prop_assert_eq!(&r["time"], want_time.as_str());
            prop_assert_eq!(&r["method"], method.as_str());
            prop_assert_eq!(&r["protocol"], "HTTP/1.1");
            prop_assert_eq!(&r["status"], status);
            prop_assert_eq!(&r["body_bytes_sent"], bytes.unwrap_or(0));
            prop_assert_eq!(&r["http_referer"], "");
            // nginx writes "-" for a missing User-Agent, which the parser reads as empty,
            // as it does for the referer.
            let want_agent = if agent == "-" { "" } else { agent.as_str() };
            prop_assert_eq!(&r["http_user_agent"], want_agent);
        }
    }
}
