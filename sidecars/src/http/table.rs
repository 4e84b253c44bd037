//! The compiled config: routes with their matchers and destinations, and the backends
//! they share. A reload compiles a new table beside the one serving and swaps it in;
//! requests in flight keep the table they started with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use rigging_crds::sidecar::http::{ConfigError, HttpConfig};
use tokio::sync::Semaphore;

use super::backend::Backend;
use super::cache::Cache;
use super::metrics::{Metrics, RouteMetrics};
use super::rate_limit::RateLimiter;
use super::retry::RetryPolicy;
use super::route::Matcher;
use super::rules::Rules;
use super::split::Split;

/// Copies to a shadow backend in flight per route at most: a shadow that hangs holds no
/// more than this many requests' worth of memory.
const MIRRORS_IN_FLIGHT: usize = 256;

/// A compiled config.
pub struct Table {
    /// The routes, tried in order.
    pub routes: Vec<Route>,
    /// The backends, by name.
    pub backends: BTreeMap<String, Arc<Backend>>,
    /// The shared cache, when the file has one.
    pub cache: Option<Arc<Cache>>,
}

/// Where a route sends requests.
pub enum Destination {
    /// One backend.
    Backend(Arc<Backend>),
    /// A sticky split between arms.
    Split(Split),
}

/// A shadow backend and the share of requests it gets.
pub struct Mirror {
    /// The shadow.
    pub backend: Arc<Backend>,
    /// The share, 0 to 1.
    pub share: f64,
    /// Room for copies in flight.
    pub in_flight: Arc<Semaphore>,
}

/// A compiled route.
pub struct Route {
    /// Its name.
    pub name: String,
    matcher: Matcher,
    /// Where it sends requests.
    pub destination: Destination,
    /// Its shadow, if any.
    pub mirror: Option<Mirror>,
    /// Longest a request may take, retries included.
    pub timeout: Duration,
    /// Its retry policy, if any.
    pub retries: Option<RetryPolicy>,
    /// Rules for requests on their way to the backend.
    pub request_headers: Rules,
    /// Rules for responses on their way to the client.
    pub response_headers: Rules,
    /// Whether GET and HEAD go through the cache.
    pub cache: bool,
    /// Its rate limit, if any.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Its series.
    pub metrics: RouteMetrics,
    config: rigging_crds::sidecar::http::Route,
}

fn error((field, message): (String, String)) -> ConfigError {
    ConfigError { field, message }
}

impl Table {
    /// Compiles `config`. State worth keeping across a reload is taken from `previous`:
    /// a backend whose config is unchanged is the same backend (connections, health,
    /// ejections), a changed one keeps the servers it still has; the cache and rate-limit
    /// buckets are kept when their settings are unchanged.
    pub fn compile(
        config: &HttpConfig,
        previous: Option<&Table>,
        metrics: &Metrics,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let backends: BTreeMap<String, Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| {
                let before = previous.and_then(|p| p.backends.get(&b.name));
                let backend = match before {
                    Some(same) if same.config() == b => same.clone(),
                    other => Backend::new(b, other.map(|a| &**a), metrics),
                };
                (b.name.clone(), backend)
            })
            .collect();
        let backend = |name: &str| backends[name].clone();
        let cache = config
            .cache
            .as_ref()
            .map(|c| match previous.and_then(|p| p.cache.as_ref()) {
                Some(same) if same.config() == c => same.clone(),
                _ => Arc::new(Cache::new(c, metrics)),
            });

        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let before = previous.and_then(|p| p.routes.iter().find(|old| old.name == r.name));
            let destination = match (&r.backend, &r.split) {
                (Some(name), _) => Destination::Backend(backend(name)),
                (None, Some(split)) => Destination::Split(
                    Split::compile(&at, &r.name, split, backend, |arm| {
                        metrics.arm(&r.name, arm)
                    })
                    .map_err(error)?,
                ),
                (None, None) => unreachable!("validate() requires a backend or a split"),
            };
            let rate_limit = match &r.rate_limit {
                None => None,
                Some(limit) => Some(
                    match before
                        .and_then(|b| b.rate_limit.as_ref())
                        .filter(|old| old.config() == limit)
                    {
                        Some(same) => same.clone(),
                        None => Arc::new(
                            RateLimiter::new(limit)
                                .map_err(|m| error((format!("{at}.rateLimit.key"), m)))?,
                        ),
                    },
                ),
            };
            routes.push(Route {
                name: r.name.clone(),
                matcher: Matcher::compile(&at, &r.matches).map_err(error)?,
                destination,
                mirror: r.mirror.as_ref().map(|m| Mirror {
                    backend: backend(&m.backend),
                    share: m.percent / 100.0,
                    in_flight: Arc::new(Semaphore::new(MIRRORS_IN_FLIGHT)),
                }),
                timeout: r.timeout,
                retries: r.retries.as_ref().map(RetryPolicy::new),
                request_headers: Rules::compile(
                    &format!("{at}.requestHeaders"),
                    &r.request_headers,
                )
                .map_err(error)?,
                response_headers: Rules::compile(
                    &format!("{at}.responseHeaders"),
                    &r.response_headers,
                )
                .map_err(error)?,
                cache: r.cache,
                rate_limit,
                metrics: metrics.route(&r.name),
                config: r.clone(),
            });
        }
        Ok(Self {
            routes,
            backends,
            cache,
        })
    }

    /// Starts the background work of backends that are new in this table.
    pub fn start(&self, previous: Option<&Table>) {
        for backend in self.backends.values() {
            let old =
                previous.is_some_and(|p| p.backends.values().any(|b| Arc::ptr_eq(b, backend)));
            if !old {
                backend.start();
            }
        }
    }

    /// Ends the background work of this table's backends that `next` does not keep.
    pub fn retire(&self, next: &Table) {
        for backend in self.backends.values() {
            if !next.backends.values().any(|b| Arc::ptr_eq(b, backend)) {
                backend.retire();
            }
        }
    }

    /// The first route that takes the request.
    pub fn route_for(&self, parts: &Parts) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(parts))
    }
}

impl Route {
    /// The route's config.
    pub fn config(&self) -> &rigging_crds::sidecar::http::Route {
        &self.config
    }
}
