//! The stored responses: per key (host and path), the variants `Vary` tells apart, in a
//! least-recently-used order that evicts once their estimated memory passes `maxSize`.
//! Plus the keys whose last response could not be stored (Varnish's hit-for-miss), so
//! that their requests go straight to the backend instead of waiting for each other.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use prometheus::IntGauge;

use super::freshness::Freshness;

/// Variants kept per key at most; past it the key's least recently used goes. A `Vary`
/// on a header with many values (`User-Agent`) would otherwise make lookups long.
const MAX_VARIANTS: usize = 32;

/// Keys remembered as uncacheable at most (16 bytes each).
const MAX_MARKERS: usize = 65_536;

/// Bookkeeping counted per stored response beyond its bytes (maps, order, `Arc`s).
const ENTRY_OVERHEAD: u64 = 256;

/// Bookkeeping counted per header beyond its name and value.
const HEADER_OVERHEAD: u64 = 32;

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    /// Its status.
    pub status: StatusCode,
    /// Its headers, hop-by-hop fields and `Age` removed, `Content-Length` set.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The request headers `Vary` names, as the request that filled it had them.
    vary: Box<[(HeaderName, Option<Bytes>)]>,
    /// How long it is fresh.
    pub freshness: Freshness,
    /// The memory it is counted for.
    pub size: u64,
}

impl Entry {
    /// The response to `request` (whose key is `key`), stored.
    pub fn new(
        key: &str,
        request: &HeaderMap,
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        freshness: Freshness,
    ) -> Self {
        crate::forwarding::strip_hop_by_hop(&mut headers, false);
        headers.remove(header::AGE);
        if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let vary = super::freshness::vary_names(&headers)
            .unwrap_or_default()
            .into_iter()
            .map(|name| {
                let value = request_value(request, &name);
                (name, value)
            })
            .collect();
        Self::with(key, status, headers, body, vary, freshness)
    }

    fn with(
        key: &str,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        vary: Box<[(HeaderName, Option<Bytes>)]>,
        freshness: Freshness,
    ) -> Self {
        let header_bytes: u64 = headers
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len()) as u64 + HEADER_OVERHEAD)
            .sum();
        let vary_bytes: u64 = vary
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.as_ref().map_or(0, Bytes::len)) as u64)
            .sum();
        let size =
            ENTRY_OVERHEAD + key.len() as u64 + header_bytes + vary_bytes + body.len() as u64;
        Self {
            status,
            headers,
            body,
            vary,
            freshness,
            size,
        }
    }

    /// The same response with new headers and freshness (after a 304), for the same
    /// requests.
    pub fn refreshed(&self, key: &str, headers: HeaderMap, freshness: Freshness) -> Self {
        Self::with(
            key,
            self.status,
            headers,
            self.body.clone(),
            self.vary.clone(),
            freshness,
        )
    }

    /// Whether it answers `request`: every header its `Vary` names has the value the
    /// filling request had (RFC 9111 §4.1).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request_value(request, name) == *value)
    }
}

/// A request header's values as `Vary` compares them: each trimmed, joined with `, `.
fn request_value(request: &HeaderMap, name: &HeaderName) -> Option<Bytes> {
    let mut values = request.get_all(name).iter();
    let first = values.next()?;
    let mut joined = first.as_bytes().trim_ascii().to_vec();
    for value in values {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value.as_bytes().trim_ascii());
    }
    Some(joined.into())
}

struct Variant {
    stamp: u64,
    entry: Arc<Entry>,
}

/// The stored responses, bounded in memory.
pub struct Store {
    slots: HashMap<Arc<str>, Vec<Variant>>,
    /// Use order: stamp to key; the smallest stamp is the least recently used variant.
    order: BTreeMap<u64, Arc<str>>,
    clock: u64,
    bytes: u64,
    objects: usize,
    max_bytes: u64,
    /// Hashed keys whose last response was not stored, until when that holds.
    markers: HashMap<u64, Instant>,
    bytes_gauge: IntGauge,
    objects_gauge: IntGauge,
}

impl Store {
    /// An empty store of at most `max_bytes`, reporting its size to the two gauges.
    pub fn new(max_bytes: u64, bytes_gauge: IntGauge, objects_gauge: IntGauge) -> Self {
        Self {
            slots: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            bytes: 0,
            objects: 0,
            max_bytes,
            markers: HashMap::new(),
            bytes_gauge,
            objects_gauge,
        }
    }

    /// The variant of `key` that answers `request`, now the most recently used.
    pub fn get(&mut self, key: &str, request: &HeaderMap) -> Option<Arc<Entry>> {
        let variants = self.slots.get_mut(key)?;
        let variant = variants.iter_mut().find(|v| v.entry.matches(request))?;
        let name = self
            .order
            .remove(&variant.stamp)
            .expect("a stored variant is in the order");
        self.clock += 1;
        variant.stamp = self.clock;
        self.order.insert(self.clock, name);
        Some(variant.entry.clone())
    }

    /// Stores `entry` for `request` under `key`, in place of any variant that answers
    /// `request`, evicting the least recently used until it fits. False when it is too
    /// large for the store at all (then nothing answers `request` any more).
    pub fn insert(&mut self, key: Arc<str>, request: &HeaderMap, entry: Arc<Entry>) -> bool {
        self.remove(&key, request);
        if entry.size > self.max_bytes {
            return false;
        }
        if let Some(variants) = self.slots.get(&key)
            && variants.len() >= MAX_VARIANTS
            && let Some(oldest) = variants.iter().map(|v| v.stamp).min()
        {
            self.drop_variant(&key, oldest);
        }
        while self.bytes + entry.size > self.max_bytes && self.evict() {}
        self.clock += 1;
        self.order.insert(self.clock, key.clone());
        self.account(entry.size as i64, 1);
        self.slots.entry(key).or_default().push(Variant {
            stamp: self.clock,
            entry,
        });
        true
    }

    /// Removes the variants of `key` that answer `request`.
    pub fn remove(&mut self, key: &str, request: &HeaderMap) {
        let stamps: Vec<u64> = match self.slots.get(key) {
            Some(variants) => variants
                .iter()
                .filter(|v| v.entry.matches(request))
                .map(|v| v.stamp)
                .collect(),
            None => return,
        };
        for stamp in stamps {
            self.drop_variant(key, stamp);
        }
    }

    /// Removes `entry` if it is still stored under `key`.
    pub fn remove_entry(&mut self, key: &str, entry: &Arc<Entry>) {
        let stamp = self
            .slots
            .get(key)
            .and_then(|vs| vs.iter().find(|v| Arc::ptr_eq(&v.entry, entry)))
            .map(|v| v.stamp);
        if let Some(stamp) = stamp {
            self.drop_variant(key, stamp);
        }
    }

    /// Evicts the least recently used variant; false when the store is empty.
    fn evict(&mut self) -> bool {
        let Some((&stamp, key)) = self.order.first_key_value() else {
            return false;
        };
        let key = key.clone();
        self.drop_variant(&key, stamp);
        true
    }

    fn drop_variant(&mut self, key: &str, stamp: u64) {
        let Some(variants) = self.slots.get_mut(key) else {
            return;
        };
        let Some(i) = variants.iter().position(|v| v.stamp == stamp) else {
            return;
        };
        let gone = variants.swap_remove(i);
        if variants.is_empty() {
            self.slots.remove(key);
        }
        self.order.remove(&stamp);
        self.account(-(gone.entry.size as i64), -1);
    }

    fn account(&mut self, bytes: i64, objects: i64) {
        self.bytes = self.bytes.saturating_add_signed(bytes);
        self.objects = self.objects.saturating_add_signed(objects as isize);
        self.bytes_gauge.add(bytes);
        self.objects_gauge.add(objects);
    }

    /// Remembers that key `hash` could not be stored, until `until`.
    pub fn mark(&mut self, hash: u64, until: Instant, now: Instant) {
        if self.markers.len() >= MAX_MARKERS && !self.markers.contains_key(&hash) {
            self.markers.retain(|_, t| *t > now);
            if self.markers.len() >= MAX_MARKERS {
                self.markers.clear();
            }
        }
        self.markers.insert(hash, until);
    }

    /// Whether key `hash` is remembered as uncacheable at `now`.
    pub fn marked(&mut self, hash: u64, now: Instant) -> bool {
        match self.markers.get(&hash) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.markers.remove(&hash);
                false
            }
            None => false,
        }
    }

    /// Forgets that key `hash` was uncacheable.
    pub fn unmark(&mut self, hash: u64) {
        self.markers.remove(&hash);
    }

    /// The memory counted for what is stored.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The responses stored.
    #[cfg(test)]
    pub fn objects(&self) -> usize {
        self.objects
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // A store replaced by a reload with other settings stops counting.
        self.bytes_gauge.sub(self.bytes as i64);
        self.objects_gauge.sub(self.objects as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn freshness() -> Freshness {
        Freshness {
            received: Instant::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            revalidate_always: false,
            stale_if_error: Duration::ZERO,
        }
    }

    fn store(max: u64) -> (Store, IntGauge, IntGauge) {
        let bytes = IntGauge::new("b", "b").unwrap();
        let objects = IntGauge::new("o", "o").unwrap();
        (
            Store::new(max, bytes.clone(), objects.clone()),
            bytes,
            objects,
        )
    }

    fn entry(
        key: &str,
        request: &HeaderMap,
        vary: Option<&'static str>,
        body: usize,
    ) -> Arc<Entry> {
        let mut headers = HeaderMap::new();
        if let Some(vary) = vary {
            headers.insert(header::VARY, HeaderValue::from_static(vary));
        }
        Arc::new(Entry::new(
            key,
            request,
            StatusCode::OK,
            headers,
            Bytes::from(vec![b'x'; body]),
            freshness(),
        ))
    }

    fn put(store: &mut Store, key: &str, body: usize) {
        let none = HeaderMap::new();
        assert!(store.insert(key.into(), &none, entry(key, &none, None, body)));
    }

    fn has(store: &mut Store, key: &str) -> bool {
        store.get(key, &HeaderMap::new()).is_some()
    }

    #[test]
    fn the_size_counts_body_headers_and_key() {
        let e = entry("host\n/a", &HeaderMap::new(), None, 1000);
        // content-length: 1000
        assert_eq!(
            e.size,
            ENTRY_OVERHEAD + 7 + (14 + 4 + HEADER_OVERHEAD) + 1000
        );
    }

    #[test]
    fn past_max_size_the_least_recently_used_goes() {
        let one = entry("k0", &HeaderMap::new(), None, 1000).size;
        let (mut s, bytes, objects) = store(one * 3);
        put(&mut s, "k0", 1000);
        put(&mut s, "k1", 1000);
        put(&mut s, "k2", 1000);
        assert!(has(&mut s, "k0"), "k0 used: k1 is now the oldest");
        put(&mut s, "k3", 1000);
        assert!(!has(&mut s, "k1"));
        assert!(has(&mut s, "k0") && has(&mut s, "k2") && has(&mut s, "k3"));
        assert_eq!((s.bytes(), s.objects()), (one * 3, 3));
        assert_eq!((bytes.get(), objects.get()), (one as i64 * 3, 3));
        // A larger one takes the room of two.
        put(&mut s, "big", 1900);
        assert!(s.bytes() <= one * 3, "{} > {}", s.bytes(), one * 3);
        assert_eq!(s.objects(), 2);
        assert!(has(&mut s, "k3") && has(&mut s, "big"));
        drop(s);
        assert_eq!(
            (bytes.get(), objects.get()),
            (0, 0),
            "a dropped store stops counting"
        );
    }

    #[test]
    fn a_response_larger_than_the_store_is_not_stored_and_evicts_nothing() {
        let (mut s, _, _) = store(2000);
        put(&mut s, "small", 10);
        let none = HeaderMap::new();
        assert!(!s.insert("huge".into(), &none, entry("huge", &none, None, 5000)));
        assert!(has(&mut s, "small") && !has(&mut s, "huge"));
    }

    #[test]
    fn vary_keeps_one_variant_per_request_value() {
        let (mut s, _, _) = store(1 << 20);
        let gzip = {
            let mut h = HeaderMap::new();
            h.insert("accept-encoding", HeaderValue::from_static("gzip"));
            h
        };
        let plain = HeaderMap::new();
        let key: Arc<str> = "k".into();
        s.insert(
            key.clone(),
            &gzip,
            entry("k", &gzip, Some("Accept-Encoding"), 1),
        );
        assert!(
            s.get("k", &plain).is_none(),
            "no variant for a request without it"
        );
        s.insert(
            key.clone(),
            &plain,
            entry("k", &plain, Some("accept-encoding"), 2),
        );
        assert_eq!(s.get("k", &gzip).unwrap().body.len(), 1);
        assert_eq!(s.get("k", &plain).unwrap().body.len(), 2);
        // A new response for gzip replaces the gzip variant only.
        s.insert(
            key.clone(),
            &gzip,
            entry("k", &gzip, Some("Accept-Encoding"), 3),
        );
        assert_eq!(s.get("k", &gzip).unwrap().body.len(), 3);
        assert_eq!(s.objects(), 2);
        let mut spaced = HeaderMap::new();
        spaced.insert("accept-encoding", HeaderValue::from_static(" gzip "));
        assert!(s.get("k", &spaced).is_some(), "values are compared trimmed");
        s.remove("k", &plain);
        assert_eq!(s.objects(), 1);
    }

    #[test]
    fn a_key_keeps_a_bounded_number_of_variants() {
        let (mut s, _, _) = store(1 << 30);
        let key: Arc<str> = "k".into();
        for i in 0..MAX_VARIANTS + 5 {
            let mut h = HeaderMap::new();
            h.insert("user-agent", HeaderValue::from(i));
            s.insert(key.clone(), &h, entry("k", &h, Some("user-agent"), 1));
        }
        assert_eq!(s.objects(), MAX_VARIANTS);
        let mut first = HeaderMap::new();
        first.insert("user-agent", HeaderValue::from(0));
        assert!(s.get("k", &first).is_none(), "the oldest variants went");
    }

    #[test]
    fn markers_expire_and_stay_bounded() {
        let (mut s, _, _) = store(1000);
        let t0 = Instant::now();
        s.mark(1, t0 + Duration::from_secs(1), t0);
        assert!(s.marked(1, t0));
        assert!(!s.marked(1, t0 + Duration::from_secs(1)));
        for i in 0..MAX_MARKERS as u64 + 10 {
            s.mark(i, t0 + Duration::from_secs(5), t0);
        }
        assert!(s.markers.len() <= MAX_MARKERS);
        s.unmark(MAX_MARKERS as u64 + 9);
        assert!(!s.marked(MAX_MARKERS as u64 + 9, t0));
    }
}
