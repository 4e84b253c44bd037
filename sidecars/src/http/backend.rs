//! A backend: its servers, how one is chosen for each attempt, and what each attempt's
//! outcome teaches about a server.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{HeaderMap, StatusCode};
use rigging_crds::sidecar::http as config;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::metrics::{Metrics, ServerMetrics};
use crate::forwarding::{Pool, PoolConfig, PoolStats};

/// What balancing may look at in a request.
pub struct PickContext<'a> {
    /// The client's address.
    pub client_ip: IpAddr,
    /// The request's headers.
    pub headers: &'a HeaderMap,
}

/// Why a backend cannot take a request now.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The backend has no server at all (a DNS name with no records yet).
    #[error("backend {backend:?} has no servers")]
    NoServers {
        /// The backend.
        backend: String,
    },
    /// The backend is at its `limits.maxRequests`.
    #[error("backend {backend:?} is at its limit of {max_requests} requests in flight")]
    Overloaded {
        /// The backend.
        backend: String,
        /// Its limit.
        max_requests: usize,
    },
}

/// How an attempt ended, for balancing, outlier ejection and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with this status.
    Status(StatusCode),
    /// No connection could be made: the request never reached the server.
    ConnectError,
    /// The exchange failed after the request was sent (a reset, a malformed answer).
    Failed,
    /// No answer within the attempt's time.
    TimedOut,
    /// The attempt was abandoned for reasons of the client's (it went away, its body
    /// broke): nothing is learnt about the server.
    Abandoned,
}

/// A backend with its servers.
pub struct Backend {
    /// The backend's name.
    pub name: String,
    config: config::Backend,
    servers: ArcSwap<Vec<Arc<Server>>>,
    next: AtomicUsize,
    weighted: Mutex<Vec<i64>>,
    in_flight: Arc<AtomicUsize>,
    overloaded: prometheus::IntCounter,
    /// Ends the backend's background work.
    stop: CancellationToken,
}

/// One server of a backend.
pub struct Server {
    /// `HOST:PORT`.
    pub address: String,
    /// Its round-robin weight.
    pub weight: u32,
    /// Connections to it.
    pub pool: Pool,
    /// Its series.
    pub metrics: ServerMetrics,
    in_flight: AtomicUsize,
}

impl Backend {
    /// Builds the backend of `config`. Servers of `previous` (the same backend before a
    /// reload) whose address and connection settings are unchanged are kept, with their
    /// connections and state.
    pub fn new(
        config: &config::Backend,
        previous: Option<&Backend>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let pool_config = pool_config(config);
        let kept = |address: &str| {
            previous.and_then(|p| {
                p.servers
                    .load()
                    .iter()
                    .find(|s| s.address == address && previous_pool_matches(p, &pool_config))
                    .cloned()
            })
        };
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .map(|s| match kept(&s.address) {
                Some(server) if server.weight == s.weight => server,
                _ => Arc::new(Server::new(
                    &config.name,
                    &s.address,
                    s.weight,
                    &pool_config,
                    metrics,
                )),
            })
            .collect();
        for server in &servers {
            server.metrics.up.set(1);
        }
        Arc::new(Self {
            name: config.name.clone(),
            config: config.clone(),
            weighted: Mutex::new(vec![0; servers.len()]),
            servers: ArcSwap::from_pointee(servers),
            next: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            overloaded: metrics.overloaded.with_label_values(&[&config.name]),
            stop: CancellationToken::new(),
        })
    }

    /// The config the backend was built from.
    pub fn config(&self) -> &config::Backend {
        &self.config
    }

    /// Starts the backend's background work (health checks, DNS), which runs until
    /// [`Self::retire`].
    pub fn start(self: &Arc<Self>) {
        let _ = &self.stop;
    }

    /// Ends the backend's background work: a reload replaced or removed it. Requests in
    /// flight on it finish.
    pub fn retire(&self) {
        self.stop.cancel();
    }

    /// Lets one request in, or refuses it at the backend's `maxRequests`.
    pub fn admit(&self) -> Result<Admitted, Unavailable> {
        let max = self.config.limits.max_requests;
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(self.in_flight.clone());
        if max > 0 && before >= max {
            self.overloaded.inc();
            return Err(Unavailable::Overloaded {
                backend: self.name.clone(),
                max_requests: max,
            });
        }
        Ok(admitted)
    }

    /// Counts one request refused with a fast 503 because a server's pool was full.
    pub fn count_overloaded(&self) {
        self.overloaded.inc();
    }

    /// The server for one attempt: not one of `tried` when another can be had.
    pub fn pick(
        &self,
        ctx: &PickContext<'_>,
        tried: &[Arc<Server>],
    ) -> Result<Arc<Server>, Unavailable> {
        let _ = ctx;
        let servers = self.servers.load();
        if servers.is_empty() {
            return Err(Unavailable::NoServers {
                backend: self.name.clone(),
            });
        }
        let fresh: Vec<usize> = (0..servers.len())
            .filter(|&i| !tried.iter().any(|t| Arc::ptr_eq(t, &servers[i])))
            .collect();
        let candidates = if fresh.is_empty() {
            (0..servers.len()).collect()
        } else {
            fresh
        };
        Ok(servers[self.round_robin(&servers, &candidates)].clone())
    }

    /// Smooth weighted round robin (nginx's): every pick adds each candidate's weight to
    /// its score and takes the highest, which then gives back the total. Weights 5:1:1
    /// give a a b a c a a, not a a a a a b c.
    fn round_robin(&self, servers: &[Arc<Server>], candidates: &[usize]) -> usize {
        if candidates
            .iter()
            .all(|&i| servers[i].weight == servers[candidates[0]].weight)
        {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            return candidates[n % candidates.len()];
        }
        let mut scores = self.weighted.lock().expect("round-robin lock");
        scores.resize(servers.len(), 0);
        let total: i64 = candidates
            .iter()
            .map(|&i| i64::from(servers[i].weight))
            .sum();
        let mut best = candidates[0];
        for &i in candidates {
            scores[i] += i64::from(servers[i].weight);
            if scores[i] > scores[best] {
                best = i;
            }
        }
        scores[best] -= total;
        best
    }

    /// The backend's state for `/status`.
    pub fn status(&self) -> BackendStatus {
        BackendStatus {
            name: self.name.clone(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            servers: self
                .servers
                .load()
                .iter()
                .map(|s| ServerStatus {
                    address: s.address.clone(),
                    weight: s.weight,
                    state: "up",
                    in_flight: s.in_flight.load(Ordering::Relaxed),
                    connections: s.pool.stats(),
                })
                .collect(),
        }
    }
}

fn pool_config(config: &config::Backend) -> PoolConfig {
    PoolConfig {
        connect_timeout: config.connect_timeout,
        max_idle: config.max_idle_per_server,
        max_connections: config.limits.max_connections,
        max_pending: config.limits.max_pending,
        ..PoolConfig::default()
    }
}

fn previous_pool_matches(previous: &Backend, config: &PoolConfig) -> bool {
    &pool_config(&previous.config) == config
}

/// One request let into a backend, until dropped.
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    fn new(
        backend: &str,
        address: &str,
        weight: u32,
        pool: &PoolConfig,
        metrics: &Metrics,
    ) -> Self {
        Self {
            address: address.to_owned(),
            weight,
            pool: Pool::new(address.to_owned(), pool.clone()),
            metrics: metrics.server(backend, address),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Starts an attempt on this server.
    pub fn begin(self: &Arc<Self>) -> Attempt {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Attempt {
            server: self.clone(),
            started: Instant::now(),
            finished: false,
        }
    }
}

/// One attempt on a server, from sending to its response headers (or failure).
pub struct Attempt {
    server: Arc<Server>,
    started: Instant,
    finished: bool,
}

impl Attempt {
    /// Records how the attempt ended.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let server = &self.server;
        server.in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Outcome::Status(status) => {
                server
                    .metrics
                    .duration
                    .observe(self.started.elapsed().as_secs_f64());
                server.metrics.response(status);
            }
            Outcome::ConnectError | Outcome::Failed | Outcome::TimedOut => {
                server.metrics.errors.inc()
            }
            Outcome::Abandoned => {}
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // Dropped unfinished: the request was cancelled (the client went away, the route
        // timed out); the server is not blamed.
        if !self.finished {
            self.server.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A backend in `/status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// Its name.
    pub name: String,
    /// Requests in flight to it.
    pub in_flight: usize,
    /// Its servers.
    pub servers: Vec<ServerStatus>,
}

/// A server in `/status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    /// `HOST:PORT`.
    pub address: String,
    /// Its weight.
    pub weight: u32,
    /// `up`, `unhealthy` (failing its health checks) or `ejected` (by outlier detection).
    pub state: &'static str,
    /// Attempts in flight on it.
    pub in_flight: usize,
    /// Its connections.
    pub connections: PoolStats,
}
