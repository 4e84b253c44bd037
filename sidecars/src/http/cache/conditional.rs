//! Conditional requests (RFC 9110 §13): a client's `If-None-Match` or `If-Modified-Since`
//! answered 304 from what the cache holds, and the cache's own revalidation of a stale
//! response with the backend, whose 304 refreshes the stored headers (RFC 9111 §4.3.4).

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::date;

/// The request headers that make a GET conditional on the cache's copy, which the cache
/// answers itself.
const CLIENT_CONDITIONS: [HeaderName; 2] = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];

/// Request headers the cache does not evaluate: a request with one goes to the backend
/// as it is (with `Range`, which the cache does not serve from a stored copy).
pub const PASSED: [HeaderName; 3] = [
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// The fields a 304 carries (RFC 9110 §15.4.5), with `Last-Modified`, which helps a
/// client without an ETag.
const NOT_MODIFIED_FIELDS: [HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

/// Whether the request carries a condition the cache answers.
pub fn is_conditional(request: &HeaderMap) -> bool {
    CLIENT_CONDITIONS.iter().any(|h| request.contains_key(h))
}

/// Removes the client's conditions from a request the cache sends to fill itself: the
/// backend must send the whole response, which the cache then stores.
pub fn strip(request: &mut HeaderMap) {
    for name in CLIENT_CONDITIONS {
        request.remove(name);
    }
}

/// Makes a request revalidate a stored response with `stored`'s validators.
pub fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

/// Whether a stored response has a validator to revalidate it with.
pub fn has_validator(stored: &HeaderMap) -> bool {
    stored.contains_key(header::ETAG) || stored.contains_key(header::LAST_MODIFIED)
}

/// Whether the client's conditions say it has the response with `stored` headers (a 200)
/// already, at `now`: `If-None-Match` by weak comparison; only without it,
/// `If-Modified-Since` against `Last-Modified` (or `Date`), ignored when it is in the
/// future (RFC 9110 §13.1.3).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap, now: SystemTime) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG) else {
            return false;
        };
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .any(|value| matches_any(value, etag));
    }
    let Some(since) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(date::parse)
        .filter(|since| *since <= now)
    else {
        return false;
    };
    stored
        .get(header::LAST_MODIFIED)
        .or_else(|| stored.get(header::DATE))
        .and_then(|v| v.to_str().ok())
        .and_then(date::parse)
        .is_some_and(|modified| modified <= since)
}

/// `If-None-Match: *` or a list of entity tags, one of which weakly matches `etag`.
fn matches_any(list: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = list.to_str() else {
        return false;
    };
    if list.trim() == "*" {
        return true;
    }
    let ours = opaque(etag.as_bytes());
    split_tags(list).any(|tag| opaque(tag.as_bytes()) == ours)
}

/// An entity tag without its weakness mark `W/`.
fn opaque(tag: &[u8]) -> &[u8] {
    let tag = tag.trim_ascii();
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// The entity tags of a list; a quoted tag may hold a comma.
fn split_tags(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let start = rest.find('"')?;
        let close = rest[start + 1..].find('"').map(|i| start + 2 + i)?;
        let (tag, tail) = rest.split_at(close);
        rest = tail;
        Some(tag)
    })
}

/// The headers of a 304 for a stored response with `stored` headers.
pub fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in NOT_MODIFIED_FIELDS {
        for value in stored.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// The stored headers updated with a 304's (RFC 9111 §3.2): each field the 304 has
/// replaces the stored one, but not the framing of the stored body, nor the 304's
/// hop-by-hop fields.
pub fn refreshed(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        if [header::CONTENT_LENGTH, header::CONTENT_RANGE].contains(name) {
            continue;
        }
        merged.remove(name);
        for value in not_modified.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    crate::forwarding::strip_hop_by_hop(&mut merged, false);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn now() -> SystemTime {
        date::parse("Sun, 06 Nov 1994 09:00:00 GMT").unwrap()
    }

    #[test]
    fn if_none_match_compares_weakly_against_a_list() {
        let stored = headers(&[("etag", "W/\"v2\"")]);
        let asks =
            |inm: &'static str| not_modified(&headers(&[("if-none-match", inm)]), &stored, now());
        assert!(asks("\"v2\""));
        assert!(asks("\"v1\", W/\"v2\""));
        assert!(asks("*"));
        assert!(!asks("\"v1\""));
        assert!(!asks("\"v2, v3\""), "a comma inside a tag is part of it");
        assert!(
            !not_modified(
                &headers(&[("if-none-match", "*")]),
                &HeaderMap::new(),
                now()
            ),
            "no ETag to match"
        );
    }

    #[test]
    fn if_modified_since_counts_only_without_if_none_match_and_not_in_the_future() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:00:00 GMT"),
        ]);
        let ims = |since: &'static str| {
            not_modified(&headers(&[("if-modified-since", since)]), &stored, now())
        };
        assert!(ims("Sun, 06 Nov 1994 08:00:00 GMT"));
        assert!(ims("Sun, 06 Nov 1994 08:30:00 GMT"));
        assert!(!ims("Sun, 06 Nov 1994 07:59:59 GMT"));
        assert!(!ims("Sun, 06 Nov 1994 09:30:00 GMT"), "in the future");
        assert!(!ims("yesterday"));
        let both = headers(&[
            ("if-none-match", "\"v0\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:30:00 GMT"),
        ]);
        assert!(
            !not_modified(&both, &stored, now()),
            "If-None-Match decides"
        );
    }

    #[test]
    fn a_304_replaces_the_fields_it_has_but_not_the_bodys_length() {
        let stored = headers(&[
            ("content-length", "5"),
            ("cache-control", "max-age=1"),
            ("etag", "\"v1\""),
            ("x-kept", "yes"),
        ]);
        let fresh = headers(&[
            ("cache-control", "max-age=60"),
            ("content-length", "0"),
            ("date", "Sun, 06 Nov 1994 09:00:00 GMT"),
        ]);
        let merged = refreshed(&stored, &fresh);
        assert_eq!(merged["cache-control"], "max-age=60");
        assert_eq!(merged["content-length"], "5");
        assert_eq!(merged["x-kept"], "yes");
        assert_eq!(merged["date"], "Sun, 06 Nov 1994 09:00:00 GMT");
        let answer = not_modified_headers(&merged);
        assert!(answer.contains_key("etag") && !answer.contains_key("content-length"));
        assert!(!answer.contains_key("x-kept"));
    }
}
