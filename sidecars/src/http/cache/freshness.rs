//! Whether a response may be stored, and for how long it is fresh (RFC 9111 §3 and §4.2,
//! read as Varnish reads it where the two agree): `Cache-Control` (`s-maxage` before
//! `max-age`, `no-store`, `private`, `no-cache`), `Expires` against `Date`, the `Age` the
//! backend sent, `Set-Cookie`, `Vary: *`, and the config's `defaultTtl` for a response
//! that says nothing.

use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use rigging_crds::sidecar::http as config;

use super::date;

/// How long a stored response is fresh, and what may be done with it once it is not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    /// When the cache received it.
    pub received: Instant,
    /// Its age then: the `Age` the backend (or a cache behind it) sent.
    pub initial_age: Duration,
    /// How long it is fresh, counted from its origin (so the initial age is spent).
    pub lifetime: Duration,
    /// `no-cache`: every use must be revalidated with the backend first.
    pub revalidate_always: bool,
    /// How long past its lifetime it may still be served when the backend fails.
    pub stale_if_error: Duration,
}

impl Freshness {
    /// Its age at `now` (RFC 9111 §4.2.3, with the `Age` it came with as its initial age).
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.received)
    }

    /// The freshness of a response that is served once and not stored: its age only.
    pub fn unstored(now: Instant, headers: &HeaderMap) -> Self {
        Self {
            received: now,
            initial_age: Duration::from_secs(age(headers)),
            lifetime: Duration::ZERO,
            revalidate_always: true,
            stale_if_error: Duration::ZERO,
        }
    }

    /// Whether it may be served at `now` without asking the backend.
    pub fn is_fresh(&self, now: Instant) -> bool {
        !self.revalidate_always && self.age(now) < self.lifetime
    }

    /// Whether it may be served at `now` in place of a backend's failure.
    pub fn usable_on_error(&self, now: Instant) -> bool {
        !self.revalidate_always && self.age(now) < self.lifetime + self.stale_if_error
    }
}

/// Why a response is not stored (for debug logs).
pub type Uncacheable = &'static str;

/// Statuses stored with the config's `defaultTtl` when the response states no freshness:
/// Varnish's list (RFC 9110's heuristically cacheable statuses less 206, 405 and 501),
/// with 308 which RFC 9110 adds.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 410 | 414
    )
}

/// Statuses stored only with an explicit freshness (`max-age`, `s-maxage`, `Expires`).
fn explicitly_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 302 | 307)
}

/// The freshness of a response with `status` and `headers`, received at `now` (`wall` on
/// the wall clock, for `Expires`), or why it is not stored.
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    config: &config::Cache,
    now: Instant,
    wall: SystemTime,
) -> Result<Freshness, Uncacheable> {
    let heuristic = heuristically_cacheable(status);
    if !heuristic && !explicitly_cacheable(status) {
        return Err("the status is not cacheable");
    }
    let cc = Directives::parse(headers);
    if cc.no_store {
        return Err("Cache-Control: no-store");
    }
    if cc.private {
        return Err("Cache-Control: private (a shared cache may not store it)");
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err("it sets a cookie");
    }
    if vary_names(headers).is_none() {
        return Err("Vary: * (or a name that is not a header)");
    }
    let lifetime = match (cc.s_maxage, cc.max_age, headers.get(header::EXPIRES)) {
        (Some(seconds), _, _) | (None, Some(seconds), _) => Duration::from_secs(seconds),
        (None, None, Some(expires)) => expires_lifetime(expires, headers.get(header::DATE), wall),
        (None, None, None) if heuristic && !config.default_ttl.is_zero() => config.default_ttl,
        (None, None, None) => return Err("no freshness stated and no defaultTtl"),
    };
    let initial_age = Duration::from_secs(age(headers));
    let validated =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    if (cc.no_cache || lifetime <= initial_age) && !validated {
        return Err("stale on arrival or no-cache, and no validator to revalidate it with");
    }
    // RFC 9111 §4.2.4: no stale answer where a directive forbids it; s-maxage implies
    // proxy-revalidate, unless the response allows stale-if-error itself.
    let no_stale = cc.no_cache
        || cc.must_revalidate
        || cc.proxy_revalidate
        || (cc.s_maxage.is_some() && cc.stale_if_error.is_none());
    let stale_if_error = match cc.stale_if_error {
        _ if no_stale => Duration::ZERO,
        Some(seconds) => Duration::from_secs(seconds),
        None => config.stale_if_error,
    };
    Ok(Freshness {
        received: now,
        initial_age,
        lifetime,
        revalidate_always: cc.no_cache,
        stale_if_error,
    })
}

/// The lifetime `Expires` gives: from `Date` when there is one, else from now. An invalid
/// `Expires` (`0`, `-1`) is in the past (RFC 9111 §5.3).
fn expires_lifetime(
    expires: &HeaderValue,
    date: Option<&HeaderValue>,
    wall: SystemTime,
) -> Duration {
    let Some(expires) = expires.to_str().ok().and_then(date::parse) else {
        return Duration::ZERO;
    };
    let origin = date
        .and_then(|d| d.to_str().ok())
        .and_then(date::parse)
        .unwrap_or(wall);
    expires.duration_since(origin).unwrap_or(Duration::ZERO)
}

/// The `Age` header in seconds; 0 when absent or invalid.
pub fn age(headers: &HeaderMap) -> u64 {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| delta_seconds(v.trim()))
        .unwrap_or(0)
}

/// The header names of `Vary`, lowercase; `None` for `Vary: *` or a name that is not one.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<header::HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        for name in value.to_str().ok()?.split(',').map(str::trim) {
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return None;
            }
            let name = header::HeaderName::from_bytes(name.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// RFC 9111 §1.2.2: digits; past 2^31 counts as 2^31. Anything else is invalid, which
/// for `max-age` means stale (so [`Directives`] maps it to 0).
fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(u64::MAX).min(1 << 31))
}

/// The response `Cache-Control` directives the cache acts on. The first of a repeated
/// directive counts.
#[derive(Debug, Default, PartialEq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// The directives of every `Cache-Control` header in `headers`.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            for (name, argument) in directives(value.as_bytes()) {
                let seconds = || {
                    Some(
                        std::str::from_utf8(argument.unwrap_or_default())
                            .ok()
                            .and_then(delta_seconds)
                            .unwrap_or(0),
                    )
                };
                match name.to_ascii_lowercase().as_slice() {
                    b"no-store" => cc.no_store = true,
                    // With field names (`no-cache="set-cookie"`) it would allow storing
                    // the rest; treating it as a plain no-cache is the safe reading.
                    b"no-cache" => cc.no_cache = true,
                    b"private" => cc.private = true,
                    b"must-revalidate" => cc.must_revalidate = true,
                    b"proxy-revalidate" => cc.proxy_revalidate = true,
                    b"max-age" => cc.max_age = cc.max_age.or_else(seconds),
                    b"s-maxage" => cc.s_maxage = cc.s_maxage.or_else(seconds),
                    b"stale-if-error" => cc.stale_if_error = cc.stale_if_error.or_else(seconds),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// The `name[=argument]` items of a comma-separated directive list; a quoted argument may
/// hold commas, and comes without its quotes.
fn directives(mut text: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
    let mut out = Vec::new();
    loop {
        text = text.trim_ascii_start();
        if text.is_empty() {
            return out;
        }
        let end = text
            .iter()
            .position(|b| *b == b',' || *b == b'=')
            .unwrap_or(text.len());
        let name = text[..end].trim_ascii();
        text = &text[end..];
        let mut argument = None;
        if text.first() == Some(&b'=') {
            text = text[1..].trim_ascii_start();
            if text.first() == Some(&b'"') {
                let close = text[1..]
                    .iter()
                    .position(|b| *b == b'"')
                    .map_or(text.len(), |i| i + 1);
                argument = Some(&text[1..close]);
                text = &text[(close + 1).min(text.len())..];
            } else {
                let end = text.iter().position(|b| *b == b',').unwrap_or(text.len());
                argument = Some(text[..end].trim_ascii());
                text = &text[end..];
            }
        }
        if !name.is_empty() {
            out.push((name, argument));
        }
        // Skip to the next item.
        let next = text
            .iter()
            .position(|b| *b == b',')
            .map_or(text.len(), |i| i + 1);
        text = &text[next..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(120);

    fn config() -> config::Cache {
        config::Cache {
            default_ttl: TTL,
            stale_if_error: Duration::from_secs(30),
            ..Default::default()
        }
    }

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn decide(
        status: u16,
        lines: &[(&'static str, &'static str)],
    ) -> Result<Freshness, Uncacheable> {
        let wall = date::parse("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        storable(
            StatusCode::from_u16(status).unwrap(),
            &headers(lines),
            &config(),
            Instant::now(),
            wall,
        )
    }

    fn lifetime(status: u16, lines: &[(&'static str, &'static str)]) -> Option<u64> {
        decide(status, lines).ok().map(|f| f.lifetime.as_secs())
    }

    #[test]
    fn s_maxage_wins_over_max_age_which_wins_over_expires() {
        let expires = ("expires", "Sun, 06 Nov 1994 08:59:37 GMT");
        let cc = "cache-control";
        assert_eq!(
            lifetime(200, &[(cc, "max-age=60, s-maxage=10"), expires]),
            Some(10)
        );
        assert_eq!(
            lifetime(200, &[(cc, "public, max-age=60"), expires]),
            Some(60)
        );
        assert_eq!(lifetime(200, &[expires]), Some(600), "Expires less now");
        assert_eq!(
            lifetime(200, &[expires, ("date", "Sun, 06 Nov 1994 08:58:37 GMT")]),
            Some(60),
            "Expires less Date: the backend's clock does not matter"
        );
        assert_eq!(lifetime(200, &[]), Some(120), "the default TTL");
    }

    #[test]
    fn the_default_ttl_is_for_the_statuses_varnish_stores_by_default() {
        assert_eq!(lifetime(404, &[]), Some(120));
        assert_eq!(lifetime(301, &[]), Some(120));
        assert_eq!(
            lifetime(302, &[]),
            None,
            "a 302 needs an explicit freshness"
        );
        assert_eq!(lifetime(302, &[("cache-control", "max-age=5")]), Some(5));
        assert_eq!(lifetime(500, &[("cache-control", "max-age=5")]), None);
        assert_eq!(lifetime(206, &[("cache-control", "max-age=5")]), None);
        let none = config::Cache::default();
        let stored = storable(
            StatusCode::OK,
            &HeaderMap::new(),
            &none,
            Instant::now(),
            SystemTime::now(),
        );
        assert!(stored.is_err(), "defaultTtl 0 stores only stated freshness");
    }

    #[test]
    fn no_store_private_set_cookie_and_vary_star_are_not_stored() {
        for lines in [
            &[("cache-control", "max-age=60, no-store")][..],
            &[("cache-control", "private, max-age=60")],
            &[("cache-control", "max-age=60, private=\"x-user, x-other\"")],
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            &[("cache-control", "max-age=60"), ("vary", "Accept, *")],
        ] {
            assert!(decide(200, lines).is_err(), "{lines:?}");
        }
        assert!(decide(200, &[("vary", "Accept-Encoding, accept")]).is_ok());
    }

    #[test]
    fn no_cache_is_stored_only_with_a_validator_and_always_revalidated() {
        assert!(decide(200, &[("cache-control", "no-cache")]).is_err());
        let f = decide(200, &[("cache-control", "no-cache"), ("etag", "\"v1\"")]).unwrap();
        assert!(f.revalidate_always && !f.is_fresh(f.received));
        assert!(
            !f.usable_on_error(f.received),
            "no-cache forbids stale answers"
        );
    }

    #[test]
    fn the_backends_age_is_spent_from_the_lifetime() {
        let f = decide(200, &[("cache-control", "max-age=60"), ("age", "50")]).unwrap();
        let t0 = f.received;
        assert_eq!(f.age(t0 + Duration::from_secs(5)), Duration::from_secs(55));
        assert!(f.is_fresh(t0 + Duration::from_secs(9)));
        assert!(!f.is_fresh(t0 + Duration::from_secs(10)));
        assert!(
            decide(200, &[("cache-control", "max-age=60"), ("age", "60")]).is_err(),
            "stale on arrival without a validator"
        );
        let f = decide(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("age", "90"),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
        )
        .unwrap();
        assert!(!f.is_fresh(f.received), "kept stale, to be revalidated");
    }

    #[test]
    fn an_invalid_expires_or_max_age_is_already_stale() {
        assert!(decide(200, &[("expires", "0")]).is_err());
        assert!(decide(200, &[("cache-control", "max-age=soon")]).is_err());
        assert_eq!(
            lifetime(200, &[("expires", "0"), ("etag", "\"a\"")]),
            Some(0),
            "kept for revalidation"
        );
    }

    #[test]
    fn stale_if_error_comes_from_the_response_or_the_config_unless_forbidden() {
        let sie = |lines: &[(&'static str, &'static str)]| {
            decide(200, lines).unwrap().stale_if_error.as_secs()
        };
        assert_eq!(sie(&[("cache-control", "max-age=1")]), 30, "the config's");
        assert_eq!(
            sie(&[("cache-control", "max-age=1, stale-if-error=600")]),
            600
        );
        assert_eq!(sie(&[("cache-control", "max-age=1, must-revalidate")]), 0);
        assert_eq!(sie(&[("cache-control", "max-age=1, proxy-revalidate")]), 0);
        assert_eq!(
            sie(&[("cache-control", "s-maxage=1")]),
            0,
            "s-maxage implies proxy-revalidate"
        );
        assert_eq!(sie(&[("cache-control", "s-maxage=1, stale-if-error=5")]), 5);
        let f = decide(200, &[("cache-control", "max-age=1")]).unwrap();
        assert!(f.usable_on_error(f.received + Duration::from_secs(30)));
        assert!(!f.usable_on_error(f.received + Duration::from_secs(31)));
    }

    #[test]
    fn directives_are_parsed_across_headers_with_quotes_and_case() {
        let cc = Directives::parse(&headers(&[
            (
                "cache-control",
                "Public, MAX-AGE=\"30\", community=\"a, no-store\"",
            ),
            ("cache-control", "max-age=99, s-maxage = 7"),
        ]));
        assert_eq!(
            cc,
            Directives {
                max_age: Some(30),
                s_maxage: Some(7),
                ..Default::default()
            }
        );
    }
}
