//! `--check` values: a URL naming what to check, then options after the last `#`.
//!
//! ```text
//! http://127.0.0.1:8080/healthz#status=200-299&body=^ok$&name=app
//! tcp://127.0.0.1:5432#liveness
//! redis://:secret@127.0.0.1:6379#timeout=500ms
//! memcached://127.0.0.1:11211#optional
//! postgres://app:pw@127.0.0.1:5432/app#query=SELECT%20count(*)%20FROM%20jobs
//! exec:test -f /tmp/ready#name=ready-file
//! ```
//!
//! The fragment is never sent anywhere, which is why options live there. Values are
//! percent-decoded. A URL or command that itself contains `#` must end with a `#` (empty
//! options), since options start at the last one.

use std::ops::RangeInclusive;
use std::time::Duration;

use regex::Regex;

use crate::probe::{self, Target};

/// A `--check` value that cannot be used, naming it and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("--check {check:?}: {reason}")]
pub struct SpecError {
    /// The flag's value (passwords masked).
    pub check: String,
    /// What is wrong.
    pub reason: String,
}

/// What one check does.
#[derive(Debug)]
pub enum Probe {
    /// GET the URL; pass on an expected status and, if given, a body matching a regex.
    Http {
        /// The URL without its options.
        uri: http::Uri,
        /// Statuses that pass (default 200–399, as the kubelet counts them).
        status: Vec<RangeInclusive<u16>>,
        /// A regex the body must match.
        body: Option<Regex>,
    },
    /// Open a TCP connection.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// `PING` → `PONG`, after `AUTH` when the URL has credentials.
    Redis(Target),
    /// `version` → `VERSION …`.
    Memcached(Target),
    /// Connect and run a query (default `SELECT 1`).
    Postgres {
        /// The connection settings, parsed from the URL.
        config: tokio_postgres::Config,
        /// The query.
        query: String,
    },
    /// `sh -c COMMAND`; passes on exit status 0.
    Exec {
        /// The shell command.
        command: String,
    },
}

/// One configured check.
#[derive(Debug)]
pub struct Check {
    /// Its name in JSON bodies, logs and the `check` label.
    pub name: String,
    /// What it does.
    pub probe: Probe,
    /// Gates `/readyz` (all checks do unless marked `optional`).
    pub required: bool,
    /// Also gates `/healthz` (only checks marked `liveness`).
    pub liveness: bool,
    /// Its own deadline, if given (`timeout=`), else `--timeout`.
    pub timeout: Option<Duration>,
}

/// Parses one `--check` value.
pub fn parse(spec: &str) -> Result<Check, SpecError> {
    let fail = |reason: String| SpecError {
        check: probe::mask_password(spec),
        reason,
    };
    let (target, options) = match spec.rsplit_once('#') {
        Some((target, options)) => (target, options),
        None => (spec, ""),
    };
    let mut name = None;
    let mut required = true;
    let mut liveness = false;
    let mut timeout = None;
    let mut status = None;
    let mut body = None;
    let mut query = None;
    for option in options.split('&').filter(|o| !o.is_empty()) {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| fail(format!("option {key} is not UTF-8 once decoded")))?
            .into_owned();
        match key {
            "name" if !value.is_empty() => name = Some(value),
            "optional" => required = false,
            "liveness" => liveness = true,
            "timeout" => {
                timeout = Some(
                    humantime::parse_duration(&value)
                        .map_err(|e| fail(format!("timeout={value}: {e}")))?,
                )
            }
            "status" => status = Some(parse_statuses(&value).map_err(fail)?),
            "body" => {
                body = Some(Regex::new(&value).map_err(|e| fail(format!("body regex: {e}")))?)
            }
            "query" if !value.is_empty() => query = Some(value),
            _ => {
                return Err(fail(format!(
                    "unknown option {option:?} (known: name=, optional, liveness, timeout=, \
                     status=, body= for http, query= for postgres)"
                )));
            }
        }
    }
    let only = |what: &str, scheme: &str| fail(format!("{what} applies to {scheme} checks only"));
    let is_http = target.starts_with("http://");
    if !is_http && (status.is_some() || body.is_some()) {
        return Err(only("status= and body=", "http://"));
    }
    if !target.starts_with("postgres") && query.is_some() {
        return Err(only("query=", "postgres://"));
    }
    let (default_name, probe) = if is_http {
        let uri: http::Uri = target
            .parse()
            .map_err(|e| fail(format!("not a URL: {e}")))?;
        if uri.authority().is_none() {
            return Err(fail("expected http://HOST:PORT/PATH".into()));
        }
        let status = status.unwrap_or_else(|| vec![200..=399]);
        (
            probe::mask_password(target),
            Probe::Http { uri, status, body },
        )
    } else if target.starts_with("https://") {
        return Err(fail(
            "https is not supported: check the app over plain http on localhost, or use tcp://"
                .into(),
        ));
    } else if let Some(rest) = target.strip_prefix("tcp://") {
        let authority: http::uri::Authority = rest
            .trim_end_matches('/')
            .parse()
            .map_err(|_| fail("expected tcp://HOST:PORT".into()))?;
        let port = authority
            .port_u16()
            .ok_or_else(|| fail("tcp:// needs a port".into()))?;
        let addr = format!("{}:{port}", authority.host());
        (format!("tcp://{addr}"), Probe::Tcp { addr })
    } else if target.starts_with("redis://") {
        let t = Target::parse(target, "redis", 6379).map_err(|e| fail(e.to_string()))?;
        (t.display.clone(), Probe::Redis(t))
    } else if target.starts_with("memcached://") {
        let t = Target::parse(target, "memcached", 11211).map_err(|e| fail(e.to_string()))?;
        (t.display.clone(), Probe::Memcached(t))
    } else if target.starts_with("postgres://") || target.starts_with("postgresql://") {
        let config: tokio_postgres::Config = target
            .parse()
            .map_err(|e| fail(format!("not a PostgreSQL URL: {e}")))?;
        let query = query.unwrap_or_else(|| "SELECT 1".to_owned());
        (postgres_name(&config), Probe::Postgres { config, query })
    } else if let Some(command) = target.strip_prefix("exec:") {
        if command.trim().is_empty() {
            return Err(fail("exec: needs a command".into()));
        }
        (
            target.to_owned(),
            Probe::Exec {
                command: command.to_owned(),
            },
        )
    } else {
        return Err(fail(
            "expected http://, tcp://, redis://, memcached://, postgres:// or exec:".into(),
        ));
    };
    Ok(Check {
        name: name.unwrap_or(default_name),
        probe,
        required,
        liveness,
        timeout,
    })
}

/// `postgres://host:port/db`, without user or password.
fn postgres_name(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{host}:{port}/{db}")
}

/// `200`, `200-299`, `200,204,301-302`.
fn parse_statuses(value: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    value
        .split(',')
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let parse = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (100..=599).contains(n))
                    .ok_or_else(|| format!("status={value}: {s:?} is not an HTTP status"))
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("status={value}: range {lo}-{hi} is empty"));
            }
            Ok(lo..=hi)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_options_come_from_the_fragment() {
        let check =
            parse("http://127.0.0.1:8080/healthz?x=1#status=200,204-205&body=%5Eok&name=app")
                .unwrap();
        assert_eq!(check.name, "app");
        assert!(check.required && !check.liveness);
        let Probe::Http { uri, status, body } = check.probe else {
            panic!("not http")
        };
        assert_eq!(uri.to_string(), "http://127.0.0.1:8080/healthz?x=1");
        assert_eq!(status, vec![200..=200, 204..=205]);
        assert!(body.unwrap().is_match("ok then"));
    }

    #[test]
    fn defaults_and_names() {
        let http = parse("http://127.0.0.1:80/").unwrap();
        assert_eq!(http.name, "http://127.0.0.1:80/");
        assert!(matches!(http.probe, Probe::Http { ref status, .. } if *status == vec![200..=399]));

        let redis = parse("redis://:pw@127.0.0.1:6379#liveness&optional&timeout=250ms").unwrap();
        assert_eq!(redis.name, "redis://127.0.0.1:6379");
        assert!(redis.liveness && !redis.required);
        assert_eq!(redis.timeout, Some(Duration::from_millis(250)));

        let pg = parse("postgres://app:pw@127.0.0.1:5433/jobs").unwrap();
        assert_eq!(pg.name, "postgres://127.0.0.1:5433/jobs");
        assert!(matches!(pg.probe, Probe::Postgres { ref query, .. } if query == "SELECT 1"));

        let exec = parse("exec:echo '#1' && true#").unwrap();
        assert_eq!(exec.name, "exec:echo '#1' && true");
        assert!(
            matches!(exec.probe, Probe::Exec { ref command } if command == "echo '#1' && true")
        );

        assert_eq!(
            parse("tcp://127.0.0.1:22").unwrap().name,
            "tcp://127.0.0.1:22"
        );
    }

    #[test]
    fn mistakes_are_named_and_passwords_masked() {
        for (spec, expect) in [
            ("ftp://x", "expected http://"),
            ("tcp://127.0.0.1", "needs a port"),
            ("tcp://127.0.0.1:1#body=x", "http:// checks only"),
            ("http://a:1/#status=700", "not an HTTP status"),
            ("http://a:1/#status=300-200", "empty"),
            ("http://a:1/#body=(", "body regex"),
            ("http://a:1/#colour=red", "unknown option"),
            ("redis://:hunter2@a:1#query=x", "postgres:// checks only"),
            ("exec:#name=x", "needs a command"),
            ("https://a/", "https is not supported"),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(expect), "{spec}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
