//! HTTP dates (RFC 9110 §5.6.7) as `Date`, `Expires`, `Last-Modified` and
//! `If-Modified-Since` carry them: IMF-fixdate, and the obsolete RFC 850 and asctime
//! forms a recipient must still accept.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The time `text` names, or `None` when it is not an HTTP date.
pub fn parse(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (day, month, year, time) = match text.split_once(',') {
        Some((_, rest)) => {
            let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
            match fields[..] {
                // Sun, 06 Nov 1994 08:49:37 GMT
                [day, month, year, time, "GMT"] => (day, month, year.parse().ok()?, time),
                // Sunday, 06-Nov-94 08:49:37 GMT
                [date, time, "GMT"] => {
                    let mut parts = date.split('-');
                    let (day, month, yy) = (parts.next()?, parts.next()?, parts.next()?);
                    if parts.next().is_some() || yy.len() != 2 {
                        return None;
                    }
                    let yy: u32 = yy.parse().ok()?;
                    // RFC 9110: a two-digit year more than 50 years ahead is in the past.
                    (
                        day,
                        month,
                        if yy < 70 { 2000 + yy } else { 1900 + yy },
                        time,
                    )
                }
                _ => return None,
            }
        }
        // Sun Nov  6 08:49:37 1994
        None => match text.split_ascii_whitespace().collect::<Vec<_>>()[..] {
            [_weekday, month, day, time, year] => (day, month, year.parse().ok()?, time),
            _ => return None,
        },
    };
    let day: u32 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let mut hms = time.split(':').map(|f| f.parse::<u32>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    if year < 1970 {
        return Some(UNIX_EPOCH);
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + u64::from(h * 3600 + m * 60 + s);
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Days from 1970-01-01 to the date (Howard Hinnant's `days_from_civil`), for years from
/// 1970 on.
fn days_from_civil(year: u32, month: u32, day: u32) -> u64 {
    let y = u64::from(if month <= 2 { year - 1 } else { year });
    let era = y / 400;
    let yoe = y - era * 400;
    let m = u64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + u64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(seconds))
    }

    #[test]
    fn the_three_forms_of_rfc_9110_name_the_same_time() {
        // RFC 9110 §5.6.7's example.
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), at(784_111_777));
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), at(784_111_777));
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), at(784_111_777));
        assert_eq!(parse("Thu, 01 Jan 1970 00:00:00 GMT"), at(0));
        assert_eq!(parse("Tue, 29 Feb 2028 23:59:59 GMT"), at(1_835_481_599));
    }

    #[test]
    fn anything_else_is_not_a_date() {
        for text in [
            "0",
            "-1",
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }
}
