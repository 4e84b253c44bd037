//! The cache tier (the book's Varnish layer): GET and HEAD answered from stored
//! responses, shared by every route with `cache: true`. See `docs/sidecars/http-cache.md`.
//!
//! A request is looked up by host and path (with the query); `Vary` tells variants
//! apart. A fresh response is served with its `Age`. A stale one with a validator is
//! revalidated, and the backend's 304 refreshes it. A miss fetches the whole response (a
//! HEAD fetches a GET, as in Varnish), and stores it when its headers allow; concurrent
//! misses for one key make one fetch, the others wait for it. When the backend fails, a
//! stale response still within `staleIfError` is served instead. Requests with
//! `Authorization`, `Cookie`, `Range` or a condition the cache does not evaluate go to
//! the backend as they are.

mod body;
mod conditional;
mod date;
mod freshness;
mod store;

pub use body::Body;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};
use prometheus::IntCounter;
use rigging_crds::sidecar::http as config;
use tokio::sync::watch;

use super::metrics::Metrics;
use crate::forwarding::ResponseBody;
use body::Read;
use freshness::Freshness;
use store::{Entry, Store};

/// How long a key whose response could not be stored skips waiting for other requests'
/// fetches (Varnish's hit-for-miss, also 120 s): an uncacheable URL must not make its
/// requests queue behind each other. A response that can be stored ends it early.
const HIT_FOR_MISS: Duration = Duration::from_secs(120);

/// The response cache shared by every route with `cache: true`.
pub struct Cache {
    config: config::Cache,
    /// Larger bodies stream through unstored.
    max_object: u64,
    state: Mutex<State>,
    /// Seeds the hashes of uncacheable keys.
    seed: RandomState,
    results: Results,
}

struct State {
    store: Store,
    /// Fetches in flight by key, each with an id: requests that find one wait for it.
    fills: HashMap<Arc<str>, (u64, watch::Receiver<Option<Outcome>>)>,
    next_fill: u64,
}

/// The `rigging_http_cache_requests_total` series.
struct Results {
    hit: IntCounter,
    miss: IntCounter,
    stale: IntCounter,
    revalidated: IntCounter,
    pass: IntCounter,
}

/// What a fetch for the cache came to, for the requests that waited for it.
#[derive(Clone)]
enum Outcome {
    /// This response answers them (stored, refreshed, or stale in place of a failure).
    Entry(Arc<Entry>, Served),
    /// Nothing they can use: each goes to the backend itself.
    Uncacheable,
}

#[derive(Clone, Copy)]
enum Served {
    Fresh,
    Stale,
}

/// What to do with a request.
enum Plan<'c> {
    /// Serve this fresh response.
    Hit(Arc<Entry>),
    /// Send the request to the backend as it is; store nothing.
    Pass,
    /// Fetch for the cache (revalidating `stale` when it has a validator), as the one
    /// fetch others wait for when `fill` is set.
    Fetch {
        stale: Option<Arc<Entry>>,
        fill: Option<Fill<'c>>,
    },
    /// Wait for another request's fetch.
    Wait(watch::Receiver<Option<Outcome>>),
}

/// The one fetch in flight for a key. Dropped without an outcome (its client went away),
/// it wakes its waiters to look again.
struct Fill<'c> {
    cache: &'c Cache,
    key: Arc<str>,
    id: u64,
    tx: watch::Sender<Option<Outcome>>,
}

impl Fill<'_> {
    /// Tells the waiters. The fill is gone first, so that a waiter that looks again does
    /// not find it.
    fn finish(self, outcome: Outcome) {
        self.leave();
        self.tx.send_replace(Some(outcome));
    }

    fn leave(&self) {
        let mut state = self.cache.state();
        if state
            .fills
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
        {
            state.fills.remove(&self.key);
        }
    }
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Cache {
    /// An empty cache bounded by `config`.
    pub fn new(config: &config::Cache, metrics: &Metrics) -> Self {
        let result = |label: &str| metrics.cache.with_label_values(&[label]);
        Self {
            config: config.clone(),
            max_object: config.max_object_size.0.min(config.max_size.0),
            state: Mutex::new(State {
                store: Store::new(
                    config.max_size.0,
                    metrics.cache_bytes.clone(),
                    metrics.cache_objects.clone(),
                ),
                fills: HashMap::new(),
                next_fill: 0,
            }),
            seed: RandomState::new(),
            results: Results {
                hit: result("hit"),
                miss: result("miss"),
                stale: result("stale"),
                revalidated: result("revalidated"),
                pass: result("pass"),
            },
        }
    }

    /// The config it was built from (a reload with the same keeps the cache).
    pub fn config(&self) -> &config::Cache {
        &self.config
    }

    /// Answers a GET or HEAD (`parts`) for `backend` from the cache, or through `fetch`,
    /// which sends the request it is given to the route's backend (retries, balancing and
    /// all) and returns the response, or the proxy's own error answer (502, 503, 504).
    ///
    /// The backend's name is part of the key: the arms of a split, or two routes to two
    /// backends, never share a stored response.
    pub async fn serve<F, Fut>(&self, backend: &str, parts: &Parts, fetch: F) -> Response<Body>
    where
        F: Fn(Parts) -> Fut,
        Fut: Future<Output = Response<ResponseBody>>,
    {
        if passes(parts) {
            self.results.pass.inc();
            return fetch(parts.clone()).await.map(Either::Left);
        }
        let key: Arc<str> = key(backend, parts).into();
        let hash = self.seed.hash_one(&*key);
        loop {
            let now = Instant::now();
            match self.plan(&key, hash, parts, now) {
                Plan::Hit(entry) => {
                    self.results.hit.inc();
                    return deliver(&entry, parts, now);
                }
                Plan::Pass => {
                    self.results.pass.inc();
                    return fetch(parts.clone()).await.map(Either::Left);
                }
                Plan::Fetch { stale, fill } => {
                    return self.fetch(parts, &key, hash, stale, fill, &fetch).await;
                }
                Plan::Wait(mut rx) => {
                    let outcome = rx
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|o| (*o).clone());
                    match outcome {
                        Some(Outcome::Entry(entry, served)) if entry.matches(&parts.headers) => {
                            match served {
                                Served::Fresh => self.results.hit.inc(),
                                Served::Stale => self.results.stale.inc(),
                            }
                            return deliver(&entry, parts, Instant::now());
                        }
                        Some(Outcome::Uncacheable) => {
                            // Each waiter on its own, none waiting for another.
                            if let Plan::Fetch { stale, fill } = alone(parts, None) {
                                return self.fetch(parts, &key, hash, stale, fill, &fetch).await;
                            }
                            self.results.pass.inc();
                            return fetch(parts.clone()).await.map(Either::Left);
                        }
                        // Another variant than this request's, or the fetch was abandoned
                        // (its client went away): look again.
                        _ => continue,
                    }
                }
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change to the state is complete before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn plan(&self, key: &Arc<str>, hash: u64, parts: &Parts, now: Instant) -> Plan<'_> {
        let mut state = self.state();
        let stale = match state.store.get(key, &parts.headers) {
            Some(entry) if entry.freshness.is_fresh(now) => return Plan::Hit(entry),
            Some(entry)
                if conditional::has_validator(&entry.headers)
                    || entry.freshness.usable_on_error(now) =>
            {
                Some(entry)
            }
            Some(dead) => {
                state.store.remove_entry(key, &dead);
                None
            }
            None => None,
        };
        if state.store.marked(hash, now) {
            return alone(parts, stale);
        }
        if let Some((_, rx)) = state.fills.get(key) {
            return Plan::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        state.next_fill += 1;
        let id = state.next_fill;
        state.fills.insert(key.clone(), (id, rx));
        Plan::Fetch {
            stale,
            fill: Some(Fill {
                cache: self,
                key: key.clone(),
                id,
                tx,
            }),
        }
    }

    /// Fetches for the cache: the whole response (a GET, without the client's conditions)
    /// or a revalidation of `stale`; stores what may be stored, and tells `fill`'s
    /// waiters.
    async fn fetch<F, Fut>(
        &self,
        parts: &Parts,
        key: &Arc<str>,
        hash: u64,
        stale: Option<Arc<Entry>>,
        fill: Option<Fill<'_>>,
        fetch: &F,
    ) -> Response<Body>
    where
        F: Fn(Parts) -> Fut,
        Fut: Future<Output = Response<ResponseBody>>,
    {
        let mut request = parts.clone();
        request.method = Method::GET;
        conditional::strip(&mut request.headers);
        let revalidating = stale
            .as_ref()
            .filter(|entry| conditional::has_validator(&entry.headers));
        if let Some(entry) = revalidating {
            conditional::add_validators(&mut request.headers, &entry.headers);
        }
        let response = fetch(request).await;
        let (now, wall) = (Instant::now(), SystemTime::now());

        if response.status() == StatusCode::NOT_MODIFIED
            && let Some(entry) = revalidating
        {
            self.results.revalidated.inc();
            let headers = conditional::refreshed(&entry.headers, response.headers());
            drop(response);
            return match freshness::storable(entry.status, &headers, &self.config, now, wall) {
                Ok(freshness) => {
                    let refreshed = Arc::new(entry.refreshed(key, headers, freshness));
                    self.store(key, hash, parts, refreshed.clone(), fill, now);
                    deliver(&refreshed, parts, now)
                }
                Err(why) => {
                    tracing::debug!(key = %key.replace('\n', " "), why, "revalidated, no longer stored");
                    let once = Freshness::unstored(now, &headers);
                    let once = entry.refreshed(key, headers, once);
                    self.uncacheable(key, hash, parts, fill, now);
                    deliver(&once, parts, now)
                }
            };
        }
        if response.status().is_server_error() {
            if let Some(entry) = stale.filter(|e| e.freshness.usable_on_error(now)) {
                tracing::debug!(key = %key.replace('\n', " "), status = %response.status(), "backend failed, stale response served");
                drop(response);
                self.results.stale.inc();
                if let Some(fill) = fill {
                    fill.finish(Outcome::Entry(entry.clone(), Served::Stale));
                }
                return deliver(&entry, parts, now);
            }
            // A failure neither replaces what is stored nor marks the key.
            self.results.miss.inc();
            if let Some(fill) = fill {
                fill.finish(Outcome::Uncacheable);
            }
            return passed(response.map(Either::Left), parts, wall);
        }

        self.results.miss.inc();
        let (head, body) = response.into_parts();
        let freshness =
            match freshness::storable(head.status, &head.headers, &self.config, now, wall) {
                Ok(freshness) => freshness,
                Err(why) => {
                    tracing::debug!(key = %key.replace('\n', " "), why, "response not stored");
                    self.uncacheable(key, hash, parts, fill, now);
                    return passed(Response::from_parts(head, Either::Left(body)), parts, wall);
                }
            };
        match body::read_up_to(body, self.max_object).await {
            Read::Whole(bytes) => {
                let entry = Arc::new(Entry::new(
                    key,
                    &parts.headers,
                    head.status,
                    head.headers,
                    bytes,
                    freshness,
                ));
                self.store(key, hash, parts, entry.clone(), fill, now);
                deliver(&entry, parts, now)
            }
            Read::TooLarge(rest) => {
                tracing::debug!(key = %key.replace('\n', " "), "response larger than maxObjectSize, not stored");
                self.uncacheable(key, hash, parts, fill, now);
                passed(Response::from_parts(head, Either::Right(rest)), parts, wall)
            }
            Read::Failed(err) => {
                tracing::debug!(key = %key.replace('\n', " "), error = %err, "backend body failed while read into the cache");
                // The waiters look again, and one of them fetches.
                drop(fill);
                crate::forwarding::text(
                    StatusCode::BAD_GATEWAY,
                    "502 bad gateway: the backend's response broke off\n",
                )
                .map(|b| Either::Left(Either::Right(b)))
            }
        }
    }

    /// Stores `entry` and hands it to the waiters. One too large for the whole cache is
    /// still theirs, but the key is marked uncacheable.
    fn store(
        &self,
        key: &Arc<str>,
        hash: u64,
        parts: &Parts,
        entry: Arc<Entry>,
        fill: Option<Fill<'_>>,
        now: Instant,
    ) {
        {
            let mut state = self.state();
            if state
                .store
                .insert(key.clone(), &parts.headers, entry.clone())
            {
                state.store.unmark(hash);
            } else {
                state.store.mark(hash, now + HIT_FOR_MISS, now);
            }
        }
        if let Some(fill) = fill {
            fill.finish(Outcome::Entry(entry, Served::Fresh));
        }
    }

    /// The backend's answer to `parts` may not be stored: what was stored for it goes,
    /// and the key skips the waiting for a while.
    fn uncacheable(
        &self,
        key: &Arc<str>,
        hash: u64,
        parts: &Parts,
        fill: Option<Fill<'_>>,
        now: Instant,
    ) {
        {
            let mut state = self.state();
            state.store.remove(key, &parts.headers);
            state.store.mark(hash, now + HIT_FOR_MISS, now);
        }
        if let Some(fill) = fill {
            fill.finish(Outcome::Uncacheable);
        }
    }
}

/// A request that goes to the backend on its own: a HEAD or a conditional request as it
/// is, since its answer could not be stored; a GET fetched for the cache (its answer may
/// be storable now).
fn alone<'c>(parts: &Parts, stale: Option<Arc<Entry>>) -> Plan<'c> {
    if parts.method == Method::HEAD || conditional::is_conditional(&parts.headers) {
        Plan::Pass
    } else {
        Plan::Fetch { stale, fill: None }
    }
}

/// Requests the cache does not answer: besides methods other than GET and HEAD, those
/// with `Authorization` or `Cookie` (Varnish's builtin VCL passes them too: the answer is
/// likely personal), `Range` (not served from a stored copy) and conditions other than
/// `If-None-Match` and `If-Modified-Since`.
fn passes(parts: &Parts) -> bool {
    !(parts.method == Method::GET || parts.method == Method::HEAD)
        || [header::AUTHORIZATION, header::COOKIE, header::RANGE]
            .iter()
            .chain(conditional::PASSED.iter())
            .any(|h| parts.headers.contains_key(h))
}

/// The cache key: the host (lowercase) and the path with the query, as Varnish's builtin
/// `vcl_hash`, and the backend.
fn key(backend: &str, parts: &Parts) -> String {
    let host = parts
        .headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    format!(
        "{backend}\n{}\n{path}",
        String::from_utf8_lossy(host).to_ascii_lowercase()
    )
}

/// `entry` as the answer to `parts` at `now`: a 304 when the client's conditions say it
/// has it, the headers alone for a HEAD, with its `Age` either way.
fn deliver(entry: &Entry, parts: &Parts, now: Instant) -> Response<Body> {
    let age = HeaderValue::from(entry.freshness.age(now).as_secs());
    let not_modified = entry.status == StatusCode::OK
        && conditional::is_conditional(&parts.headers)
        && conditional::not_modified(&parts.headers, &entry.headers, SystemTime::now());
    let (status, mut headers, body) = if not_modified {
        (
            StatusCode::NOT_MODIFIED,
            conditional::not_modified_headers(&entry.headers),
            Bytes::new(),
        )
    } else if parts.method == Method::HEAD {
        (entry.status, entry.headers.clone(), Bytes::new())
    } else {
        (entry.status, entry.headers.clone(), entry.body.clone())
    };
    headers.insert(header::AGE, age);
    let mut response = Response::new(Either::Left(Either::Right(Full::new(body))));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A response fetched for the cache but not stored, as the answer to `parts`: the
/// headers alone for a HEAD (the cache fetched a GET); a 304 when it is a 200 the
/// client's conditions (which the cache did not send) say it has.
fn passed(mut response: Response<Body>, parts: &Parts, wall: SystemTime) -> Response<Body> {
    let not_modified = response.status() == StatusCode::OK
        && conditional::is_conditional(&parts.headers)
        && conditional::not_modified(&parts.headers, response.headers(), wall);
    if not_modified {
        let mut answer = Response::new(empty());
        *answer.status_mut() = StatusCode::NOT_MODIFIED;
        *answer.headers_mut() = conditional::not_modified_headers(response.headers());
        return answer;
    }
    if parts.method == Method::HEAD {
        *response.body_mut() = empty();
    }
    response
}

fn empty() -> Body {
    Either::Left(Either::Right(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: Method, uri: &str, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut request = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_key_is_the_backend_the_host_and_the_path_with_its_query() {
        let a = parts(Method::GET, "/a?x=1", &[("host", "Shop.Example")]);
        assert_eq!(key("pool", &a), "pool\nshop.example\n/a?x=1");
        let b = parts(Method::HEAD, "/a?x=1", &[("host", "shop.example")]);
        assert_eq!(key("pool", &a), key("pool", &b), "HEAD and GET share");
        assert_ne!(key("pool", &a), key("canary", &a), "arms do not share");
    }

    #[test]
    fn personal_ranged_and_unusual_conditional_requests_pass() {
        assert!(!passes(&parts(Method::GET, "/", &[])));
        assert!(!passes(&parts(
            Method::GET,
            "/",
            &[("if-none-match", "\"a\"")]
        )));
        for header in [
            ("authorization", "Bearer x"),
            ("cookie", "a=b"),
            ("range", "bytes=0-1"),
            ("if-match", "\"a\""),
        ] {
            assert!(passes(&parts(Method::GET, "/", &[header])), "{header:?}");
        }
        assert!(passes(&parts(Method::POST, "/", &[])));
    }
}
