//! nginx `stub_status` → Prometheus. Names follow nginx-prometheus-exporter's, except its
//! two counters without `_total` (`nginx_connections_accepted`, `nginx_connections_handled`),
//! which gain the suffix.

use super::exposition::{self, Kind};

/// The numbers of one `stub_status` page.
#[derive(Debug, PartialEq, Eq)]
pub struct StubStatus {
    /// Open client connections, including idle ones.
    pub active: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections handled since start.
    pub handled: u64,
    /// Requests since start.
    pub requests: u64,
    /// Connections reading a request header.
    pub reading: u64,
    /// Connections writing a response.
    pub writing: u64,
    /// Idle keep-alive connections.
    pub waiting: u64,
}

/// Parses the page:
///
/// ```text
/// Active connections: 1
/// server accepts handled requests
///  1 1 1
/// Reading: 0 Writing: 1 Waiting: 0
/// ```
pub fn parse(page: &[u8]) -> Result<StubStatus, String> {
    let text = std::str::from_utf8(page).map_err(|_| "stub_status page is not UTF-8")?;
    let mut lines = text.lines();
    let number = |s: Option<&str>, what: &str| -> Result<u64, String> {
        s.and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("stub_status: no number for {what}"))
    };
    let active = number(
        lines
            .next()
            .and_then(|l| l.strip_prefix("Active connections:")),
        "active connections",
    )?;
    if lines.next().map(str::trim) != Some("server accepts handled requests") {
        return Err("stub_status: second line is not `server accepts handled requests`".into());
    }
    let mut counts = lines.next().unwrap_or_default().split_whitespace();
    let accepted = number(counts.next(), "accepts")?;
    let handled = number(counts.next(), "handled")?;
    let requests = number(counts.next(), "requests")?;
    let mut states = lines.next().unwrap_or_default().split_whitespace();
    let mut state = |label: &str| -> Result<u64, String> {
        if states.next() != Some(label) {
            return Err(format!("stub_status: expected `{label}` on the last line"));
        }
        number(states.next(), label)
    };
    Ok(StubStatus {
        active,
        accepted,
        handled,
        requests,
        reading: state("Reading:")?,
        writing: state("Writing:")?,
        waiting: state("Waiting:")?,
    })
}

/// Writes the families for one parsed page.
pub fn render(s: &StubStatus, out: &mut Vec<u8>) {
    use Kind::{Counter as C, Gauge as G};
    for (name, help, kind, value) in [
        (
            "nginx_connections_active",
            "Open client connections, idle ones included.",
            G,
            s.active,
        ),
        (
            "nginx_connections_accepted_total",
            "Client connections accepted.",
            C,
            s.accepted,
        ),
        (
            "nginx_connections_handled_total",
            "Client connections handled.",
            C,
            s.handled,
        ),
        ("nginx_http_requests_total", "HTTP requests.", C, s.requests),
        (
            "nginx_connections_reading",
            "Connections reading a request header.",
            G,
            s.reading,
        ),
        (
            "nginx_connections_writing",
            "Connections writing a response.",
            G,
            s.writing,
        ),
        (
            "nginx_connections_waiting",
            "Idle keep-alive connections.",
            G,
            s.waiting,
        ),
    ] {
        exposition::single(out, name, help, kind, value as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_page_parses() {
        let page = b"Active connections: 3 \nserver accepts handled requests\n 10 9 25 \n\
                     Reading: 0 Writing: 1 Waiting: 2 \n";
        assert_eq!(
            parse(page),
            Ok(StubStatus {
                active: 3,
                accepted: 10,
                handled: 9,
                requests: 25,
                reading: 0,
                writing: 1,
                waiting: 2
            })
        );
        let mut out = Vec::new();
        render(&parse(page).unwrap(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "# TYPE nginx_http_requests_total counter\nnginx_http_requests_total 25\n"
            )
        );
        assert!(text.contains("nginx_connections_accepted_total 10\n"));
    }

    #[test]
    fn anything_else_is_an_error_not_zeros() {
        for page in [
            &b"<html>404</html>"[..],
            b"Active connections: x\n",
            b"Active connections: 1\nserver accepts handled requests\n 1 1\n",
            b"Active connections: 1\nserver accepts handled requests\n 1 1 1\nReading: 0\n",
        ] {
            assert!(parse(page).is_err(), "{:?}", String::from_utf8_lossy(page));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_page_parses_or_errs_without_panicking(page in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse(&page);
        }
    }
}
