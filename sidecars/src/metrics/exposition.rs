//! The Prometheus text exposition format, written straight into a byte buffer: a scrape
//! copies the upstream's number bytes through instead of building metric objects.

use std::io::Write;

/// A metric family's type, as written on its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Only goes up (resets on restart); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines that open a family.
pub fn header(out: &mut Vec<u8>, name: &str, help: &str, kind: Kind) {
    out.extend_from_slice(b"# HELP ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    if memchr::memchr2(b'\\', b'\n', help.as_bytes()).is_none() {
        // The common case (every built-in help text): nothing to escape.
        out.extend_from_slice(help.as_bytes());
    } else {
        for &b in help.as_bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                _ => out.push(b),
            }
        }
    }
    out.extend_from_slice(b"\n# TYPE ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(kind.as_str().as_bytes());
    out.push(b'\n');
}

/// Writes `name{labels} value\n`; `value` must already be a valid number (see
/// [`number`]). Label values are escaped here.
pub fn sample(out: &mut Vec<u8>, name: &str, labels: &[(&str, &[u8])], value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    write_labels(out, labels);
    out.push(b' ');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// [`sample`] with a computed value.
pub fn sample_f64(out: &mut Vec<u8>, name: &str, labels: &[(&str, &[u8])], value: f64) {
    out.extend_from_slice(name.as_bytes());
    write_labels(out, labels);
    out.push(b' ');
    write_f64(out, value);
    out.push(b'\n');
}

/// A family with one unlabelled sample: header and sample together.
pub fn single(out: &mut Vec<u8>, name: &str, help: &str, kind: Kind, value: f64) {
    header(out, name, help, kind);
    sample_f64(out, name, &[], value);
}

/// Writes a float the way Prometheus reads it (`NaN`, `+Inf`, `-Inf` spelled its way).
pub fn write_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 { b"+Inf" } else { b"-Inf" });
    } else {
        // Display prints the shortest text that reads back as the same f64.
        let _ = write!(out, "{value}");
    }
}

/// `text` if it is a plain decimal number Prometheus accepts, so it can be copied through
/// unchanged (`Inf`/`NaN` spellings, hex and empty strings are refused).
pub fn number(text: &[u8]) -> Option<&[u8]> {
    let first = *text.first()?;
    if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
        return None;
    }
    let digits = if first == b'-' { &text[1..] } else { text };
    if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
        // Integers, most of INFO and stats: valid without a float parse.
        return Some(text);
    }
    let valid = text
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    (valid && std::str::from_utf8(text).ok()?.parse::<f64>().is_ok()).then_some(text)
}

/// Parses a number the way [`number`] accepts it.
pub fn parse_f64(text: &[u8]) -> Option<f64> {
    number(text).and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
}

/// Whether `name` is a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether `name` is a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__`-prefixed).
pub fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    !name.starts_with("__")
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn write_labels(out: &mut Vec<u8>, labels: &[(&str, &[u8])]) {
    if labels.is_empty() {
        return;
    }
    out.push(b'{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label_value(out, value);
        out.push(b'"');
    }
    out.push(b'}');
}

/// Appends a label value with `\`, `"` and newlines escaped; invalid UTF-8 becomes U+FFFD
/// (the format is UTF-8).
pub fn escape_label_value(out: &mut Vec<u8>, value: &[u8]) {
    for chunk in value.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'"' => out.extend_from_slice(b"\\\""),
                b'\n' => out.extend_from_slice(b"\\n"),
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
}

/// Test support: panics unless `text` is made of `# HELP`/`# TYPE` lines and samples whose
/// name is valid and whose value Prometheus reads.
#[cfg(test)]
pub(crate) fn assert_well_formed(text: &str) {
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let name = series.split('{').next().unwrap();
        assert!(valid_metric_name(name), "bad name in {line:?}");
        assert!(
            number(value.as_bytes()).is_some() || matches!(value, "NaN" | "+Inf" | "-Inf"),
            "bad value in {line:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_copied_through_only_when_prometheus_reads_them() {
        for ok in [&b"0"[..], b"-1", b"1.5", b"1e+06", b".5", b"12.55"] {
            assert_eq!(number(ok), Some(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"inf",
            b"NaN",
            b"0x10",
            b"1,5",
            b"ok",
            b"1.2.3",
            b"-",
        ] {
            assert_eq!(number(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Vec::new();
        header(&mut out, "x_total", "a\\b\nc", Kind::Counter);
        sample(&mut out, "x_total", &[("k", b"q\"\\\n\xff")], b"1");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# HELP x_total a\\\\b\\nc\n# TYPE x_total counter\nx_total{k=\"q\\\"\\\\\\n\u{FFFD}\"} 1\n"
        );
    }

    #[test]
    fn floats_use_prometheus_spellings() {
        let mut out = Vec::new();
        for v in [0.25, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 3.0] {
            write_f64(&mut out, v);
            out.push(b' ');
        }
        assert_eq!(out, b"0.25 +Inf -Inf NaN 3 ");
    }

    #[test]
    fn names_follow_the_data_model() {
        assert!(valid_metric_name("app:requests_total"));
        assert!(!valid_metric_name("1x"));
        assert!(!valid_metric_name("a-b"));
        assert!(valid_label_name("route"));
        assert!(!valid_label_name("__name__"));
        assert!(!valid_label_name("a:b"));
    }
}
