//! The ambassador's Prometheus metrics: per route, per backend and per server. Label
//! values come from the config file (route, backend and arm names, server addresses), so
//! their number is bounded by it; each compiled route and server resolves its series
//! once, so the hot path does atomic adds, not label lookups.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric family of the ambassador, registered once at start.
#[derive(Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    /// 1 when a server is taken (healthy by checks and not ejected), else 0.
    pub server_up: IntGaugeVec,
    /// Passive ejections by backend and server.
    pub ejections: IntCounterVec,
    /// Requests refused with a fast 503 by a backend's limits.
    pub overloaded: IntCounterVec,
    retries: IntCounterVec,
    /// Cache lookups by result: hit, miss, stale, revalidated, pass.
    pub cache: IntCounterVec,
    /// Bytes held by the cache.
    pub cache_bytes: IntGauge,
    /// Responses held by the cache.
    pub cache_objects: IntGauge,
    rate_limited: IntCounterVec,
    mirrored: IntCounterVec,
    split: IntCounterVec,
    /// Config reloads that took effect.
    pub reloads_ok: IntCounter,
    /// Config reloads refused (the previous config keeps serving).
    pub reloads_failed: IntCounter,
}

/// A route's series, resolved once when the config is compiled.
#[derive(Clone)]
pub struct RouteMetrics {
    classes: [IntCounter; 5],
    /// Time from a request's arrival to its response headers.
    pub duration: Histogram,
    /// Retries sent.
    pub retries: IntCounter,
    /// Retries not sent because the budget was spent.
    pub retries_refused: IntCounter,
    /// Requests answered 429.
    pub rate_limited: IntCounter,
    /// Copies sent to the shadow backend.
    pub mirrored: IntCounter,
    /// Copies that failed or timed out (the client never knows).
    pub mirror_failed: IntCounter,
    /// Copies not made: the request body was too large to copy, or too many copies were
    /// in flight already.
    pub mirror_skipped: IntCounter,
}

impl RouteMetrics {
    /// Counts a response by its status class.
    pub fn response(&self, status: http::StatusCode) {
        self.classes[class(status)].inc();
    }
}

/// A server's series.
#[derive(Clone)]
pub struct ServerMetrics {
    classes: [IntCounter; 5],
    /// Attempts that got no response (connect failure, reset, timeout).
    pub errors: IntCounter,
    /// Time from sending a request to its response headers.
    pub duration: Histogram,
    /// See [`Metrics::server_up`].
    pub up: IntGauge,
    /// See [`Metrics::ejections`].
    pub ejections: IntCounter,
}

impl ServerMetrics {
    /// Counts a response by its status class.
    pub fn response(&self, status: http::StatusCode) {
        self.classes[class(status)].inc();
    }
}

fn class(status: http::StatusCode) -> usize {
    (status.as_u16() / 100).clamp(1, 5) as usize - 1
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(vec.clone()))?;
                Ok(vec)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let vec = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(vec.clone()))?;
                Ok(vec)
            };
        let server_up = IntGaugeVec::new(
            Opts::new(
                "rigging_http_server_up",
                "1 when the server takes requests (healthy and not ejected), else 0",
            ),
            &["backend", "server"],
        )?;
        registry.register(Box::new(server_up.clone()))?;
        let cache_bytes = IntGauge::new("rigging_http_cache_bytes", "Bytes held by the cache")?;
        registry.register(Box::new(cache_bytes.clone()))?;
        let cache_objects =
            IntGauge::new("rigging_http_cache_objects", "Responses held by the cache")?;
        registry.register(Box::new(cache_objects.clone()))?;
        let reloads = counter(
            "rigging_http_config_reloads_total",
            "Config reloads by result (failed: the previous config keeps serving)",
            &["result"],
        )?;
        Ok(Self {
            requests: counter(
                "rigging_http_requests_total",
                "Responses to clients by route and status class",
                &["route", "class"],
            )?,
            request_duration: histogram(
                "rigging_http_request_duration_seconds",
                "Time from a request's arrival to its response headers, by route",
                &["route"],
            )?,
            upstream_requests: counter(
                "rigging_http_upstream_requests_total",
                "Attempts sent to servers by status class (error: no response)",
                &["backend", "server", "class"],
            )?,
            upstream_duration: histogram(
                "rigging_http_upstream_duration_seconds",
                "Time from sending an attempt to its response headers",
                &["backend", "server"],
            )?,
            server_up,
            ejections: counter(
                "rigging_http_ejections_total",
                "Servers ejected by passive outlier detection",
                &["backend", "server"],
            )?,
            overloaded: counter(
                "rigging_http_overloaded_total",
                "Requests answered 503 at once because a backend was at its limits",
                &["backend"],
            )?,
            retries: counter(
                "rigging_http_retries_total",
                "Retries by route and result (refused: over the retry budget)",
                &["route", "result"],
            )?,
            cache: counter(
                "rigging_http_cache_requests_total",
                "Cache lookups by result",
                &["result"],
            )?,
            cache_bytes,
            cache_objects,
            rate_limited: counter(
                "rigging_http_rate_limited_total",
                "Requests answered 429 by route",
                &["route"],
            )?,
            mirrored: counter(
                "rigging_http_mirrored_total",
                "Copies to the shadow backend by route and result",
                &["route", "result"],
            )?,
            split: counter(
                "rigging_http_split_total",
                "Requests by route and experiment arm",
                &["route", "arm"],
            )?,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_failed: reloads.with_label_values(&["failed"]),
        })
    }

    /// The series of route `name`.
    pub fn route(&self, name: &str) -> RouteMetrics {
        RouteMetrics {
            classes: CLASSES.map(|c| self.requests.with_label_values(&[name, c])),
            duration: self.request_duration.with_label_values(&[name]),
            retries: self.retries.with_label_values(&[name, "sent"]),
            retries_refused: self.retries.with_label_values(&[name, "refused"]),
            rate_limited: self.rate_limited.with_label_values(&[name]),
            mirrored: self.mirrored.with_label_values(&[name, "sent"]),
            mirror_failed: self.mirrored.with_label_values(&[name, "failed"]),
            mirror_skipped: self.mirrored.with_label_values(&[name, "skipped"]),
        }
    }

    /// The series of server `address` of backend `backend`.
    pub fn server(&self, backend: &str, address: &str) -> ServerMetrics {
        ServerMetrics {
            classes: CLASSES.map(|c| {
                self.upstream_requests
                    .with_label_values(&[backend, address, c])
            }),
            errors: self
                .upstream_requests
                .with_label_values(&[backend, address, "error"]),
            duration: self
                .upstream_duration
                .with_label_values(&[backend, address]),
            up: self.server_up.with_label_values(&[backend, address]),
            ejections: self.ejections.with_label_values(&[backend, address]),
        }
    }

    /// The counter of requests of route `route` that went to arm `arm`.
    pub fn arm(&self, route: &str, arm: &str) -> IntCounter {
        self.split.with_label_values(&[route, arm])
    }
}
