//! Matching a request against a route's conditions.

use http::header::HeaderName;
use http::request::Parts;
use http::{Method, header};
use regex::Regex;
use rigging_crds::sidecar::http::{self as config, PathMatch};

/// A route's compiled conditions.
#[derive(Debug)]
pub struct Matcher {
    path: Option<Path>,
    host: Option<Host>,
    methods: Vec<Method>,
    headers: Vec<HeaderCondition>,
}

#[derive(Debug)]
enum Path {
    Prefix(String),
    Exact(String),
    Suffix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum Host {
    Exact(String),
    /// `*.example`: the suffix `.example`, with at least one label before it.
    Wildcard(String),
}

#[derive(Debug)]
struct HeaderCondition {
    name: HeaderName,
    value: Value,
    invert: bool,
}

#[derive(Debug)]
enum Value {
    Present,
    Exact(String),
    Regex(Regex),
}

/// Compiles a whole-string regex, naming `field` in the error.
pub fn anchored(field: &str, pattern: &str) -> Result<Regex, (String, String)> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|err| {
        (
            field.to_owned(),
            format!("{pattern:?} is not a regex: {err}"),
        )
    })
}

impl Matcher {
    /// Compiles `m`; an error is `(field, message)`, with the field under `at`.
    pub fn compile(at: &str, m: &config::RouteMatch) -> Result<Self, (String, String)> {
        let path = match &m.path {
            None => None,
            Some(PathMatch::Prefix(p)) => Some(Path::Prefix(p.trim_end_matches('/').to_owned())),
            Some(PathMatch::Exact(p)) => Some(Path::Exact(p.clone())),
            Some(PathMatch::Suffix(p)) => Some(Path::Suffix(p.clone())),
            Some(PathMatch::Regex(p)) => {
                Some(Path::Regex(anchored(&format!("{at}.match.path.regex"), p)?))
            }
        };
        let host = m.host.as_ref().map(|h| match h.strip_prefix('*') {
            Some(suffix) => Host::Wildcard(suffix.to_ascii_lowercase()),
            None => Host::Exact(h.to_ascii_lowercase()),
        });
        let methods = m
            .methods
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Method::from_bytes(name.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    (
                        format!("{at}.match.methods[{i}]"),
                        format!("{name:?} is not a method"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let field = format!("{at}.match.headers[{i}]");
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    (
                        format!("{field}.name"),
                        format!("{:?} is not a header name", h.name),
                    )
                })?;
                let value = match (&h.value, &h.regex) {
                    (None, None) => Value::Present,
                    (Some(v), None) => Value::Exact(v.clone()),
                    (None, Some(r)) => Value::Regex(anchored(&format!("{field}.regex"), r)?),
                    (Some(_), Some(_)) => {
                        return Err((field, "give value or regex, not both".into()));
                    }
                };
                Ok(HeaderCondition {
                    name,
                    value,
                    invert: h.invert,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path,
            host,
            methods,
            headers,
        })
    }

    /// Whether the request meets every condition.
    pub fn matches(&self, parts: &Parts) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(&parts.method) {
            return false;
        }
        if let Some(path) = &self.path {
            let p = parts.uri.path();
            let ok = match path {
                // `/api` takes `/api`, `/api/` and `/api/x`, never `/apix`; `/` takes all.
                Path::Prefix(prefix) => {
                    p.starts_with(prefix.as_str())
                        && (p.len() == prefix.len() || p.as_bytes()[prefix.len()] == b'/')
                }
                Path::Exact(exact) => p == exact,
                Path::Suffix(suffix) => p.ends_with(suffix.as_str()),
                Path::Regex(re) => re.is_match(p),
            };
            if !ok {
                return false;
            }
        }
        if let Some(host) = &self.host {
            let Some(h) = request_host(parts) else {
                return false;
            };
            let ok = match host {
                Host::Exact(exact) => h.eq_ignore_ascii_case(exact),
                Host::Wildcard(suffix) => {
                    h.len() > suffix.len()
                        && h.get(h.len() - suffix.len()..)
                            .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
                }
            };
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|c| {
            let value = parts.headers.get(&c.name);
            let hit = match (&c.value, value) {
                (_, None) => false,
                (Value::Present, Some(_)) => true,
                (Value::Exact(want), Some(v)) => v.as_bytes() == want.as_bytes(),
                (Value::Regex(re), Some(v)) => v.to_str().is_ok_and(|v| re.is_match(v)),
            };
            hit != c.invert
        })
    }
}

/// The request's host without its port: `:authority` (HTTP/2, absolute form) or `Host`.
pub fn request_host(parts: &Parts) -> Option<&str> {
    let host = match parts.uri.host() {
        Some(h) => h,
        None => {
            let value = parts.headers.get(header::HOST)?.to_str().ok()?;
            // `[::1]:80` keeps its brackets; `shop.example:8080` loses the port.
            match value.rfind(':') {
                Some(i) if !value[i..].contains(']') => &value[..i],
                _ => value,
            }
        }
    };
    Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(yaml: &str) -> Matcher {
        let m: config::RouteMatch = serde_norway::from_str(yaml).unwrap();
        Matcher::compile("routes[0]", &m).unwrap()
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        let m = matcher("path: {prefix: /api}");
        assert!(m.matches(&req("GET", "/api", &[])));
        assert!(m.matches(&req("GET", "/api/users?x=1", &[])));
        assert!(!m.matches(&req("GET", "/apix", &[])));
        let all = matcher("path: {prefix: /}");
        assert!(all.matches(&req("GET", "/anything", &[])));
    }

    #[test]
    fn exact_suffix_and_regex_paths() {
        assert!(matcher("path: {exact: /status}").matches(&req("GET", "/status", &[])));
        assert!(!matcher("path: {exact: /status}").matches(&req("GET", "/status/x", &[])));
        assert!(matcher("path: {suffix: .jpg}").matches(&req("GET", "/a/b.jpg", &[])));
        let re = matcher(r"path: {regex: '/users/[0-9]+'}");
        assert!(re.matches(&req("GET", "/users/42", &[])));
        assert!(
            !re.matches(&req("GET", "/users/42/cart", &[])),
            "the regex is anchored"
        );
    }

    #[test]
    fn host_method_and_header_conditions_all_hold() {
        let m = matcher(
            "host: '*.shop.example'\nmethods: [get, POST]\nheaders:\n  - {name: x-canary, value: '1'}\n  - {name: x-debug, invert: true}\n",
        );
        let ok = [("host", "eu.shop.example:8080"), ("x-canary", "1")];
        assert!(m.matches(&req("GET", "/", &ok)));
        assert!(m.matches(&req("POST", "/", &ok)));
        assert!(!m.matches(&req("DELETE", "/", &ok)));
        assert!(!m.matches(&req(
            "GET",
            "/",
            &[("host", "shop.example"), ("x-canary", "1")]
        )));
        assert!(!m.matches(&req(
            "GET",
            "/",
            &[("host", "eu.shop.example"), ("x-canary", "2")]
        )));
        let debug = [
            ("host", "eu.shop.example"),
            ("x-canary", "1"),
            ("x-debug", "on"),
        ];
        assert!(!m.matches(&req("GET", "/", &debug)));
        assert!(m.matches(&req(
            "GET",
            "https://eu.shop.example/x",
            &[("x-canary", "1")]
        )));
    }

    #[test]
    fn a_bad_regex_or_name_is_refused_naming_the_field() {
        let m: config::RouteMatch = serde_norway::from_str("path: {regex: '(unclosed'}").unwrap();
        let (field, message) = Matcher::compile("routes[3]", &m).unwrap_err();
        assert_eq!(field, "routes[3].match.path.regex");
        assert!(message.contains("(unclosed"), "{message}");
        let m: config::RouteMatch =
            serde_norway::from_str("headers: [{name: 'bad name'}]").unwrap();
        let (field, _) = Matcher::compile("routes[0]", &m).unwrap_err();
        assert_eq!(field, "routes[0].match.headers[0].name");
    }
}
