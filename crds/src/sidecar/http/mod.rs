//! `rigging-sidecar http`: the HTTP ambassador's command line ([`HttpArgs`]) and its
//! reloadable YAML config file ([`HttpConfig`]).
//!
//! The config file is what users (and the operator, for a ReplicatedService's frontend
//! tier) write: routes that match requests and send them to a backend or a split between
//! arms, backends with their servers, balancing, health checks, outlier ejection and
//! limits, and the cache and rate limits of the application-layer tier. Keys are
//! camelCase, as in every Kubernetes manifest; durations are humantime text (`5s`); an
//! unknown key is an error that names it.

#[macro_use]
mod one_of;
mod size;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use size::ByteSize;

use super::{SidecarArgs, duration, ports};

/// Where the app (or, for a frontend tier, the Service) sends requests when `--listen`
/// is not given: localhost, since an ambassador serves its own pod.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9080,
));

/// The flags of `rigging-sidecar http`. Everything about routing lives in the file, which
/// is reloaded; the flags are what needs a restart to change.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct HttpArgs {
    /// The YAML config file ([`HttpConfig`]); watched and reloaded on change.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Address clients connect to (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Admin address for /healthz, /readyz, /metrics and /status.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::HTTP_ADMIN)))]
    pub admin: SocketAddr,
    /// Longest a client may take to send a request's headers, from the moment it connects
    /// or its previous response ends.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    #[arg(long, default_value = "2m", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Most client connections open at once; further clients wait in the listen backlog.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub reload_interval: Duration,
    /// On SIGTERM, how long in-flight requests get to finish before the process exits.
    #[arg(long, default_value = "20s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// The container's memory limit (the operator passes it): a config file whose
    /// `cache.maxSize` is more than half of it is refused, since a full cache would get
    /// the container OOM-killed.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
}

impl SidecarArgs for HttpArgs {
    const SUBCOMMAND: &'static str = "http";
}

impl HttpArgs {
    /// The ambassador reading `config`, with every other setting at its default.
    pub fn new(config: PathBuf) -> Self {
        Self {
            config,
            listen: DEFAULT_LISTEN,
            admin: SocketAddr::from(([0, 0, 0, 0], ports::HTTP_ADMIN)),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
            reload_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(20),
            memory_limit: None,
        }
    }
}

/// The config file of `rigging-sidecar http`.
///
/// Routes are tried in order; the first that matches a request handles it, and a request
/// no route matches gets 404. Every backend a route names must be defined.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    /// The routes, tried in order.
    pub routes: Vec<Route>,
    /// The backends routes send requests to.
    pub backends: Vec<Backend>,
    /// The response cache that routes with `cache: true` share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
}

/// One route: which requests, and where they go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// The route's name, in metrics, logs and the split cookie.
    pub name: String,
    /// What a request must look like; an empty match takes every request.
    #[serde(
        default,
        rename = "match",
        skip_serializing_if = "RouteMatch::is_empty"
    )]
    pub matches: RouteMatch,
    /// The backend that serves the route. Exactly one of `backend` and `split` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// A sticky, weighted split between arms, each arm a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// A share of the route's requests copied to a shadow backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// Longest a request may take, from the first attempt to the response's headers,
    /// retries included; past it the client gets 504.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub timeout: Duration,
    /// Retries of failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Header rules applied to the request before it is sent.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub request_headers: HeaderRules,
    /// Header rules applied to the response before the client gets it.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub response_headers: HeaderRules,
    /// Serve GET and HEAD from the shared cache (the file's `cache` block).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache: bool,
    /// A rate limit on the route's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(15)
}

/// What a request must look like for a route to take it: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// The request's path (the query string is not part of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The host, without port: `shop.example`, or `*.example` for any subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The methods taken (`GET`, `POST`…); empty for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Conditions on headers; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// How a path is matched.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    /// Starts with this, at a segment boundary: `/api` takes `/api` and `/api/x`, not
    /// `/apix`.
    Prefix(String),
    /// Is exactly this.
    Exact(String),
    /// Ends with this (`.jpg`).
    Suffix(String),
    /// The whole path matches this regex (Rust `regex` syntax, anchored).
    Regex(String),
}

/// A condition on one header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// The header's name.
    pub name: String,
    /// The value it must have, exactly. With neither `value` nor `regex`, the header must
    /// be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A regex the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Turns the condition around: the route takes requests that do not match it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// A weighted split between arms, sticky per user: the arm is chosen before load
/// balancing, from a hash of the user's key, and remembered in a cookie.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Split {
    /// What identifies a user.
    #[serde(default)]
    pub key: StickyKey,
    /// The cookie that remembers the arm; `rigging-<route>` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// How long the cookie lasts.
    #[serde(default = "default_cookie_max_age", with = "duration")]
    pub cookie_max_age: Duration,
    /// The arms.
    pub arms: Vec<Arm>,
}

fn default_cookie_max_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// What a sticky choice is keyed on.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum StickyKey {
    /// The client's IP address (behind another proxy: the first `X-Forwarded-For`).
    #[default]
    ClientIp,
    /// The value of this header (`x-user-id`).
    Header(String),
    /// The value of this cookie (`session`).
    Cookie(String),
}

/// One arm of a split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Arm {
    /// The arm's name, which is what the cookie holds.
    pub name: String,
    /// The backend that serves the arm.
    pub backend: String,
    /// The arm's share of new users, relative to the other arms' weights. An arm of weight
    /// 0 takes no new users but keeps those whose cookie names it.
    pub weight: u32,
}

/// Traffic copied to a shadow backend. The copy is sent after the real request, its answer
/// is read and dropped, and nothing about it (slowness, errors) reaches the client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// The shadow backend.
    pub backend: String,
    /// The share of requests copied, in percent (0–100).
    pub percent: f64,
}

/// Retries of failed attempts.
///
/// A connect failure is always safe to retry: the request was never sent. A 5xx answer,
/// a reset or a timeout is retried only for an idempotent method (GET, HEAD, OPTIONS, PUT,
/// DELETE, TRACE) whose body is empty, since another method may already have had its
/// effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Attempts after the first, at most.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Retries may add at most this share of the route's live requests, in percent: the
    /// budget that keeps retries from turning a slow backend into an outage.
    #[serde(default = "default_retry_budget")]
    pub budget_percent: f64,
    /// Retries allowed per second whatever the budget, so that a quiet route still gets
    /// them.
    #[serde(default = "default_min_retries_per_second")]
    pub min_per_second: u32,
    /// Longest one attempt may take; 0 for the route's timeout.
    #[serde(default, with = "duration")]
    pub per_try_timeout: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: default_retry_attempts(),
            budget_percent: default_retry_budget(),
            min_per_second: default_min_retries_per_second(),
            per_try_timeout: Duration::ZERO,
        }
    }
}

fn default_retry_attempts() -> u32 {
    2
}
fn default_retry_budget() -> f64 {
    20.0
}
fn default_min_retries_per_second() -> u32 {
    10
}

/// Headers to add, set or remove: the decorator pattern. Removals happen first, then sets
/// (replacing any value), then adds (appending).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderRules {
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Headers to set, replacing any values they had.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub set: std::collections::BTreeMap<String, String>,
    /// Headers to append, keeping any values they had.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub add: std::collections::BTreeMap<String, String>,
}

impl HeaderRules {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// A backend: a set of servers and how requests are spread over them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// The backend's name, which routes refer to.
    pub name: String,
    /// Static servers. Exactly one of `servers` and `dns` is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// Servers found by resolving a DNS name, again every `refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// How a server is chosen for each request.
    #[serde(default)]
    pub balance: Balance,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Outlier>,
    /// Longest to wait for a server to accept a connection.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// The circuit breaker: limits past which requests get a fast 503.
    #[serde(default)]
    pub limits: Limits,
    /// Idle keep-alive connections kept per server (nginx's `keepalive N`).
    #[serde(default = "default_max_idle")]
    pub max_idle_per_server: usize,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_idle() -> usize {
    64
}

/// A static server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// `HOST:PORT`.
    pub address: String,
    /// Its share of requests under round robin, relative to the others'.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Servers found in DNS: every A/AAAA record of `name` (a headless Service gives one per
/// ready pod), each with `port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dns {
    /// The name to resolve.
    pub name: String,
    /// The servers' port.
    pub port: u16,
    /// How often to resolve it again.
    #[serde(default = "default_dns_refresh", with = "duration")]
    pub refresh: Duration,
}

fn default_dns_refresh() -> Duration {
    Duration::from_secs(5)
}

/// Load-balancing strategies.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Balance {
    /// Weighted round robin (smooth: weights 5:1:1 give a a b a c a a, not a a a a a b c).
    #[default]
    RoundRobin,
    /// Of two servers picked at random, the one with fewer requests in flight.
    LeastRequest,
    /// Of two servers picked at random, the one with the lower peak-EWMA response time
    /// times requests in flight: "weighted response time".
    PeakEwma,
    /// A consistent hash of the request's key, so a key keeps its server while the set of
    /// servers changes little.
    Hash(HashKey),
}

/// What a consistent-hash balancer hashes.
#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// The value of this header; requests without it go round robin.
    Header(String),
}

/// Active health checks: a GET of `path` on every server, every `interval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// The path to GET; a 2xx or 3xx answer is healthy.
    pub path: String,
    /// Time between checks of one server.
    #[serde(default = "default_check_interval", with = "duration")]
    pub interval: Duration,
    /// Longest a check may take.
    #[serde(default = "default_check_timeout", with = "duration")]
    pub timeout: Duration,
    /// Passing checks in a row that bring an unhealthy server back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failing checks in a row that take a server out.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// Passive outlier ejection: a server that fails requests in a row is taken out for a
/// while, without waiting for a health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outlier {
    /// 5xx answers in a row that eject a server; 0 turns it off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_5xx: u32,
    /// Connect failures (refused, timed out, reset before an answer) in a row that eject a
    /// server; 0 turns it off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_connect_errors: u32,
    /// How long the first ejection lasts; each ejection in a row lasts this much longer.
    #[serde(default = "default_ejection_time", with = "duration")]
    pub ejection_time: Duration,
    /// The largest share of the backend's servers ejected at once, in percent. One server
    /// is always left in.
    #[serde(default = "default_max_ejected")]
    pub max_ejected_percent: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_ejection_time() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejected() -> u32 {
    50
}

/// The circuit breaker of a backend; 0 is no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Connections open to each server at most.
    #[serde(default)]
    pub max_connections: usize,
    /// Requests waiting for a connection to a server, at most.
    #[serde(default)]
    pub max_pending: usize,
    /// Requests in flight to the whole backend at most.
    #[serde(default)]
    pub max_requests: usize,
}

/// The response cache shared by every route with `cache: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cache {
    /// Memory for cached responses (headers and bodies), e.g. `64Mi`; past it the least
    /// recently used entries go.
    #[serde(default = "default_cache_size")]
    pub max_size: ByteSize,
    /// Larger responses are passed through and not stored.
    #[serde(default = "default_object_size")]
    pub max_object_size: ByteSize,
    /// Freshness of a response that says nothing about it (no `Cache-Control` max-age or
    /// s-maxage, no `Expires`); Varnish's `default_ttl` is 2 minutes. 0 stores only
    /// responses that state their freshness.
    #[serde(default, with = "duration")]
    pub default_ttl: Duration,
    /// How long past its freshness a response may still be served when the backend fails
    /// (5xx or unreachable), unless the response says otherwise (`stale-if-error=N`).
    #[serde(default, with = "duration")]
    pub stale_if_error: Duration,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            max_size: default_cache_size(),
            max_object_size: default_object_size(),
            default_ttl: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        }
    }
}

fn default_cache_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_object_size() -> ByteSize {
    ByteSize(1 << 20)
}

/// A token bucket per key: `requestsPerSecond` tokens a second, up to `burst`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// The sustained rate each key is allowed.
    pub requests_per_second: f64,
    /// Requests a key may send at once after being quiet; `requestsPerSecond` (at least 1)
    /// when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What a bucket is keyed on.
    #[serde(default)]
    pub key: StickyKey,
}

one_of!(PathMatch { ; Prefix(String) = "prefix", Exact(String) = "exact", Suffix(String) = "suffix", Regex(String) = "regex" });
one_of!(StickyKey { ClientIp = "clientIp"; Header(String) = "header", Cookie(String) = "cookie" });
one_of!(Balance { RoundRobin = "roundRobin", LeastRequest = "leastRequest", PeakEwma = "peakEwma"; Hash(HashKey) = "hash" });
one_of!(HashKey { ClientIp = "clientIp"; Header(String) = "header" });

/// A config file that parses but cannot work, with the path of the field at fault
/// (`routes[1].split.arms[0].backend`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Where, as a path into the file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        field: field.into(),
        message: message.into(),
    })
}

impl HttpConfig {
    /// Refuses a cache that a container with `memory_limit` bytes could not hold: more
    /// than half of it, the rest being what the ambassador needs besides (connections,
    /// buffers, the cache's own index).
    pub fn fits_in(&self, memory_limit: ByteSize) -> Result<(), ConfigError> {
        match &self.cache {
            Some(cache) if cache.max_size.0 > memory_limit.0 / 2 => refuse(
                "cache.maxSize",
                format!(
                    "{} is more than half the container's memory limit {}: a full cache would get it OOM-killed; raise the limit (resources.limits.memory) or shrink the cache",
                    cache.max_size, memory_limit
                ),
            ),
            _ => Ok(()),
        }
    }

    /// Checks what the types alone cannot: names are unique and defined, each route has
    /// exactly one destination, shares are in range. The sidecar runs it before taking a
    /// file, and the operator before writing one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut backends = std::collections::BTreeSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let at = format!("backends[{i}]");
            if b.name.is_empty() {
                refuse(format!("{at}.name"), "a backend needs a name")?;
            }
            if !backends.insert(b.name.as_str()) {
                refuse(
                    format!("{at}.name"),
                    format!("another backend is named {:?}", b.name),
                )?;
            }
            match (b.servers.is_empty(), &b.dns) {
                (true, None) => {
                    refuse(format!("{at}.servers"), "give servers, or dns to find them")?
                }
                (false, Some(_)) => refuse(format!("{at}.dns"), "give servers or dns, not both")?,
                _ => {}
            }
            for (j, s) in b.servers.iter().enumerate() {
                if !is_host_port(&s.address) {
                    refuse(
                        format!("{at}.servers[{j}].address"),
                        format!("{:?} is not HOST:PORT", s.address),
                    )?;
                }
            }
            if b.servers.iter().all(|s| s.weight == 0) && !b.servers.is_empty() {
                refuse(format!("{at}.servers"), "every weight is 0")?;
            }
            if let Some(check) = &b.health_check {
                if !check.path.starts_with('/') {
                    refuse(
                        format!("{at}.healthCheck.path"),
                        format!("{:?} must start with /", check.path),
                    )?;
                }
                if check.healthy_threshold == 0 || check.unhealthy_threshold == 0 {
                    refuse(format!("{at}.healthCheck"), "thresholds must be at least 1")?;
                }
                if check.interval.is_zero() || check.timeout.is_zero() {
                    refuse(
                        format!("{at}.healthCheck"),
                        "interval and timeout must be above 0",
                    )?;
                }
            }
            if let Balance::Hash(HashKey::Header(name)) = &b.balance
                && !is_header_name(name)
            {
                refuse(
                    format!("{at}.balance.hash.header"),
                    format!("{name:?} is not a header name"),
                )?;
            }
            if let Some(outlier) = &b.outlier
                && outlier.max_ejected_percent > 100
            {
                refuse(
                    format!("{at}.outlier.maxEjectedPercent"),
                    "a share in percent, 0 to 100",
                )?;
            }
        }
        let known = |field: String, name: &str| -> Result<(), ConfigError> {
            if backends.contains(name) {
                Ok(())
            } else {
                refuse(field, format!("no backend is named {name:?}"))
            }
        };
        let mut routes = std::collections::BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                refuse(
                    format!("{at}.name"),
                    format!(
                        "{:?} must be letters, digits, - and _ (it names a cookie and metrics)",
                        r.name
                    ),
                )?;
            }
            if !routes.insert(r.name.as_str()) {
                refuse(
                    format!("{at}.name"),
                    format!("another route is named {:?}", r.name),
                )?;
            }
            match (&r.backend, &r.split) {
                (Some(b), None) => known(format!("{at}.backend"), b)?,
                (None, Some(split)) => {
                    if split.arms.is_empty() {
                        refuse(format!("{at}.split.arms"), "a split needs at least one arm")?;
                    }
                    let mut arms = std::collections::BTreeSet::new();
                    for (j, arm) in split.arms.iter().enumerate() {
                        known(format!("{at}.split.arms[{j}].backend"), &arm.backend)?;
                        if arm.name.is_empty()
                            || !arm
                                .name
                                .bytes()
                                .all(|b| b.is_ascii_graphic() && !b";,\\\"".contains(&b))
                        {
                            refuse(
                                format!("{at}.split.arms[{j}].name"),
                                format!(
                                    "{:?} must be printable, without spaces, ';', ',', '\\' or '\"' (it is a cookie value)",
                                    arm.name
                                ),
                            )?;
                        }
                        if !arms.insert(arm.name.as_str()) {
                            refuse(
                                format!("{at}.split.arms[{j}].name"),
                                format!("another arm is named {:?}", arm.name),
                            )?;
                        }
                    }
                    if split.arms.iter().all(|a| a.weight == 0) {
                        refuse(
                            format!("{at}.split.arms"),
                            "every weight is 0: new users would have no arm",
                        )?;
                    }
                }
                (None, None) => refuse(at.as_str(), "give backend or split")?,
                (Some(_), Some(_)) => {
                    refuse(format!("{at}.split"), "give backend or split, not both")?
                }
            }
            if let Some(mirror) = &r.mirror {
                known(format!("{at}.mirror.backend"), &mirror.backend)?;
                if !(0.0..=100.0).contains(&mirror.percent) {
                    refuse(
                        format!("{at}.mirror.percent"),
                        "a share in percent, 0 to 100",
                    )?;
                }
            }
            if let Some(retries) = &r.retries
                && !(0.0..=100.0).contains(&retries.budget_percent)
            {
                refuse(
                    format!("{at}.retries.budgetPercent"),
                    "a share in percent, 0 to 100",
                )?;
            }
            if let Some(limit) = &r.rate_limit
                && !(limit.requests_per_second > 0.0 && limit.requests_per_second.is_finite())
            {
                refuse(
                    format!("{at}.rateLimit.requestsPerSecond"),
                    "must be above 0",
                )?;
            }
            if r.cache && self.cache.is_none() {
                refuse(
                    format!("{at}.cache"),
                    "the file has no cache block to store responses in",
                )?;
            }
            if r.timeout.is_zero() {
                refuse(format!("{at}.timeout"), "must be above 0")?;
            }
        }
        Ok(())
    }
}

/// A token (RFC 9110 §5.6.2), as header names are.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_host_port(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[cfg(test)]
mod tests;
