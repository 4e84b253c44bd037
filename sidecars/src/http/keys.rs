//! What identifies a user (for splits and rate limits) and a stable hash of it: the same
//! user must land in the same arm on every replica of the ambassador, and after a restart.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName};
use rigging_crds::sidecar::http::StickyKey;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A compiled [`StickyKey`].
#[derive(Debug, Clone)]
pub enum Key {
    /// The client's address, or the first `X-Forwarded-For` hop when another proxy is in
    /// front.
    ClientIp,
    /// A header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
}

impl Key {
    /// Compiles `key`; the error names what is wrong with it.
    pub fn compile(key: &StickyKey) -> Result<Self, String> {
        Ok(match key {
            StickyKey::ClientIp => Key::ClientIp,
            StickyKey::Header(name) => Key::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{name:?} is not a header name"))?,
            ),
            StickyKey::Cookie(name) if !name.is_empty() => Key::Cookie(name.clone()),
            StickyKey::Cookie(_) => return Err("a cookie key needs a cookie name".into()),
        })
    }

    /// The request's key. A request without the header or cookie falls back to its client
    /// address, so that it still gets a stable answer.
    pub fn of<'r>(&self, headers: &'r HeaderMap, peer: IpAddr) -> Cow<'r, [u8]> {
        let found = match self {
            Key::ClientIp => None,
            Key::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            Key::Cookie(name) => cookie(headers, name).map(str::as_bytes),
        };
        match found {
            Some(value) => Cow::Borrowed(value),
            None => Cow::Owned(client_ip(headers, peer).to_string().into_bytes()),
        }
    }
}

/// The client's address: the first hop of `X-Forwarded-For` when a proxy in front set
/// it, else the peer's.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse().ok())
        .unwrap_or(peer)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'r>(headers: &'r HeaderMap, name: &str) -> Option<&'r str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

/// A 64-bit hash that is the same in every process and on every machine: FNV-1a, then
/// splitmix64's finalizer, whose avalanche spreads keys that differ in one character.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; session=xyz"));
        h.append(header::COOKIE, HeaderValue::from_static("b=\"2\""));
        assert_eq!(cookie(&h, "session"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "sess"), None);
    }

    #[test]
    fn a_missing_header_falls_back_to_the_client_address_and_forwarded_for_wins() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        let key = Key::compile(&StickyKey::Header("x-user".into())).unwrap();
        assert_eq!(&*key.of(&h, peer), b"10.0.0.1");
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("192.0.2.9, 10.0.0.7"),
        );
        assert_eq!(&*key.of(&h, peer), b"192.0.2.9");
        h.insert("x-user", HeaderValue::from_static("alice"));
        assert_eq!(&*key.of(&h, peer), b"alice");
    }

    #[test]
    fn the_hash_is_fixed_across_processes_and_spreads_similar_keys() {
        // A value computed once: were it to change, every user would change arm.
        assert_eq!(
            stable_hash(&[b"route", b"user-1"]),
            stable_hash(&[b"route", b"user-1"])
        );
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            let key = format!("user-{i}");
            buckets[(stable_hash(&[key.as_bytes()]) % 10) as usize] += 1;
        }
        for n in buckets {
            assert!((900..1100).contains(&n), "{buckets:?}");
        }
    }
}
