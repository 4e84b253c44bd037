//! Redis server logs (Redis 3 and later):
//!
//! ```text
//! 1234:M 22 Nov 2026 19:18:40.123 * Ready to accept connections tcp
//! ```
//!
//! → `{"pid":1234,"role":"master","time":"2026-11-22T19:18:40.123","level":"notice","message":"…"}`.
//! Redis writes local time without an offset, so `time` has none either (in a container
//! local time is normally UTC).
//!
//! What Redis logs from its signal handler has another shape,
//! `1234:signal-handler (1795378104) Received SIGTERM scheduling shutdown...`, with Unix
//! time: `role` is `signal-handler`, `time` is UTC (`Z`), `level` is `warning` (the level
//! Redis logs these at).

use super::ParseError;
use crate::logs::output::{Record, key};

const BAD_PID: ParseError = ParseError::new("expected `pid:role` at the start of a Redis log line");
const BAD_ROLE: ParseError = ParseError::new("expected role X, C, S or M after the pid");
const BAD_TIME: ParseError =
    ParseError::new("expected time as `dd Mon yyyy hh:mm:ss.mmm` after the role");
const BAD_LEVEL: ParseError = ParseError::new("expected level . - * or # after the time");

/// Parses one Redis log line into `out`.
pub fn parse(line: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
    let colon = memchr::memchr(b':', line).ok_or(BAD_PID)?;
    let pid = &line[..colon];
    if pid.is_empty() || pid.len() > 19 || !pid.iter().all(u8::is_ascii_digit) {
        return Err(BAD_PID);
    }
    if let Some(rest) = line[colon + 1..].strip_prefix(b"signal-handler (") {
        return signal_handler(pid, rest, out);
    }
    let role = match line.get(colon + 1..colon + 3) {
        Some(b"M ") => "master",
        Some(b"S ") => "replica",
        Some(b"C ") => "child",
        Some(b"X ") => "sentinel",
        _ => return Err(BAD_ROLE),
    };
    let rest = &line[colon + 3..];
    // The day has no leading zero in Redis' format ("%d" gives one, but be lenient).
    let day_len = if rest.get(1) == Some(&b' ') { 1 } else { 2 };
    let day = rest.get(..day_len).ok_or(BAD_TIME)?;
    let rest = &rest[day_len..];
    // " Mon yyyy hh:mm:ss.mmm " is 23 bytes.
    let t = rest.get(..23).ok_or(BAD_TIME)?;
    let digits = |r: std::ops::Range<usize>| t[r].iter().all(u8::is_ascii_digit);
    if !(day.iter().all(u8::is_ascii_digit)
        && t[0] == b' '
        && t[4] == b' '
        && digits(5..9)
        && t[9] == b' '
        && digits(10..12)
        && t[12] == b':'
        && digits(13..15)
        && t[15] == b':'
        && digits(16..18)
        && t[18] == b'.'
        && digits(19..22)
        && t[22] == b' ')
    {
        return Err(BAD_TIME);
    }
    let month = super::month_digits(&t[1..4]).ok_or(BAD_TIME)?;
    let level = match rest.get(23..25) {
        Some(b". ") | Some(b".") => "debug",
        Some(b"- ") => "verbose",
        Some(b"* ") => "notice",
        Some(b"# ") => "warning",
        _ => match rest.get(23..) {
            Some(b".") => "debug",
            Some(b"-") => "verbose",
            Some(b"*") => "notice",
            Some(b"#") => "warning",
            _ => return Err(BAD_LEVEL),
        },
    };
    let message = rest.get(25..).unwrap_or(b"");

    let mut time = [0u8; 23];
    time[0..4].copy_from_slice(&t[5..9]);
    time[4] = b'-';
    time[5..7].copy_from_slice(&month);
    time[7] = b'-';
    if day_len == 1 {
        time[8] = b'0';
        time[9] = day[0];
    } else {
        time[8..10].copy_from_slice(day);
    }
    time[10] = b'T';
    time[11..23].copy_from_slice(&t[10..22]);

    let mut rec = Record::begin(out);
    rec.num(key!("pid"), pid);
    rec.str(key!("role"), role.as_bytes());
    rec.str(key!("time"), &time);
    rec.str(key!("level"), level.as_bytes());
    rec.str(key!("message"), message);
    rec.end();
    Ok(())
}

const BAD_EPOCH: ParseError = ParseError::new("expected `(unix time) ` after `signal-handler`");

/// `(1795378104) message` after `pid:signal-handler `.
fn signal_handler(pid: &[u8], rest: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
    let close = rest.iter().position(|&b| b == b')').ok_or(BAD_EPOCH)?;
    let digits = &rest[..close];
    if digits.is_empty() || digits.len() > 11 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD_EPOCH);
    }
    let secs = digits
        .iter()
        .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
    let message = match &rest[close + 1..] {
        [] => &b""[..],
        [b' ', message @ ..] => message,
        _ => return Err(BAD_EPOCH),
    };
    let time = utc(secs);
    let mut rec = Record::begin(out);
    rec.num(key!("pid"), pid);
    rec.str(key!("role"), b"signal-handler");
    rec.str(key!("time"), time.as_bytes());
    rec.str(key!("level"), b"warning");
    rec.str(key!("message"), message);
    rec.end();
    Ok(())
}

/// Unix seconds → `YYYY-MM-DDThh:mm:ssZ` (proleptic Gregorian, days-to-civil).
fn utc(secs: i64) -> String {
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse_str(line: &str) -> Result<Value, ParseError> {
        let mut out = Vec::new();
        parse(line.as_bytes(), &mut out)?;
        Ok(serde_json::from_slice(&out).expect("parser output is JSON"))
    }

    #[test]
    fn notice_from_the_master() {
        let mut out = Vec::new();
        parse(
            b"1234:M 22 Nov 2026 19:18:40.123 * Ready to accept connections tcp",
            &mut out,
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"pid":1234,"role":"master","time":"2026-11-22T19:18:40.123","level":"notice","message":"Ready to accept connections tcp"}"#
        );
    }

    #[test]
    fn roles_levels_and_single_digit_days() {
        let v = parse_str("7:C 1 Feb 2024 00:00:01.000 # WARNING \"quoted\"").unwrap();
        assert_eq!(v["role"], "child");
        assert_eq!(v["level"], "warning");
        assert_eq!(v["time"], "2024-02-01T00:00:01.000");
        assert_eq!(v["message"], "WARNING \"quoted\"");
        let v = parse_str("7:S 01 Feb 2024 00:00:01.000 - x").unwrap();
        assert_eq!(
            (v["role"].as_str(), v["level"].as_str()),
            (Some("replica"), Some("verbose"))
        );
        let v = parse_str("7:X 11 Feb 2024 00:00:01.000 .").unwrap();
        assert_eq!(
            (v["role"].as_str(), v["level"].as_str()),
            (Some("sentinel"), Some("debug"))
        );
        assert_eq!(v["message"], "");
    }

    #[test]
    fn signal_handler_lines_carry_unix_time() {
        let v =
            parse_str("18559:signal-handler (1795378104) Received SIGTERM scheduling shutdown...")
                .unwrap();
        assert_eq!(v["pid"], 18559);
        assert_eq!(v["role"], "signal-handler");
        assert_eq!(v["time"], "2026-11-22T20:08:24Z");
        assert_eq!(v["level"], "warning");
        assert_eq!(v["message"], "Received SIGTERM scheduling shutdown...");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_str("1:signal-handler (x) y").unwrap_err(), BAD_EPOCH);
    }

    #[test]
    fn other_lines_are_rejected_with_a_reason() {
        assert_eq!(parse_str("                _._").unwrap_err(), BAD_PID);
        assert_eq!(
            parse_str("12:Q 1 Feb 2024 00:00:01.000 * x").unwrap_err(),
            BAD_ROLE
        );
        assert_eq!(
            parse_str("[12] 1 Feb 00:00:01.000 * old format").unwrap_err(),
            BAD_PID
        );
        assert_eq!(
            parse_str("12:M 1 Feb 2024 00:00:01 * x").unwrap_err(),
            BAD_TIME
        );
        assert_eq!(
            parse_str("12:M 1 Foo 2024 00:00:01.000 * x").unwrap_err(),
            BAD_TIME
        );
        assert_eq!(
            parse_str("12:M 1 Feb 2024 00:00:01.000 ! x").unwrap_err(),
            BAD_LEVEL
        );
    }
}
