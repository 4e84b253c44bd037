//! A backend: its servers, how one is chosen for each attempt, and what each attempt's
//! outcome teaches about a server. See `docs/sidecars/http-backends.md`.
//!
//! - [`balance`]: the strategies (smooth weighted round robin, least request, peak-EWMA,
//!   a weighted rendezvous hash);
//! - [`check`]: active health checks, one task per server;
//! - [`outlier`]: passive ejection from the outcomes of real attempts;
//! - [`dns`]: the server set of a backend that names a DNS name instead of servers.
//!
//! What is known about a server (attempts in flight, health, ejection, response time) is
//! its [`State`], kept by address across reloads and DNS refreshes; a [`Server`] is that
//! state seen through one backend instance, with the instance's pool and settings.
//!
//! A server is *taken* when it is healthy by its checks (or has no checks) and not
//! ejected. When no server is taken, servers not checked yet are used (start-up); when
//! none of those is left either, every server is used: panic mode.

mod balance;
mod check;
mod dns;
mod outlier;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderMap, StatusCode};
use prometheus::IntGauge;
use rigging_crds::sidecar::http as config;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::keys;
use super::metrics::{Metrics, ServerMetrics};
use crate::forwarding::{Pool, PoolConfig, PoolStats};
use balance::{Balancer, PeakEwma};
use check::{Health, Verdict};
use outlier::Passive;

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
    pool_config: PoolConfig,
    metrics: Metrics,
    servers: ArcSwap<Vec<Arc<Server>>>,
    balancer: Balancer,
    in_flight: Arc<AtomicUsize>,
    overloaded: prometheus::IntCounter,
    /// Whether the last look found every server out (panic mode), to log transitions once.
    panic: AtomicBool,
    /// Whether the server set is known: false for a DNS backend until its first answer.
    resolved: AtomicBool,
    /// Ejection decisions one at a time, so that two at once cannot pass
    /// `maxEjectedPercent` together.
    ejecting: Mutex<()>,
    /// The running health-check task of each server, by address.
    checks: Mutex<HashMap<String, CancellationToken>>,
    me: Weak<Backend>,
    /// Ends the backend's background work.
    stop: CancellationToken,
}

/// One server of a backend.
pub struct Server {
    /// `HOST:PORT`.
    pub address: String,
    /// Its share of requests, relative to the other servers' weights.
    pub weight: u32,
    /// Connections to it.
    pub pool: Pool,
    /// Its series.
    pub metrics: ServerMetrics,
    /// `keys::stable_hash` of the address, for the consistent hash.
    address_hash: u64,
    state: Arc<State>,
    backend: Weak<Backend>,
}

/// What is known about a server, kept by address across reloads and DNS refreshes.
struct State {
    in_flight: AtomicUsize,
    health: Health,
    passive: Passive,
    ewma: PeakEwma,
    /// `rigging_http_server_up` of the server.
    up: IntGauge,
}

/// Which servers a pick chooses among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Servers that are taken.
    Taken,
    /// No server is taken: servers whose first health check has not finished.
    Unchecked,
    /// No server is taken or unchecked: all of them (panic mode).
    Panic,
}

impl State {
    fn new(up: IntGauge, checked: bool) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            health: Health::new(checked),
            passive: Passive::default(),
            ewma: PeakEwma::default(),
            up,
        }
    }

    /// Healthy by its checks (or without checks) and not ejected.
    fn taken(&self, now: Instant) -> bool {
        self.health.verdict() == Verdict::Up && !self.passive.ejected(now)
    }

    /// Not known to be out: taken, or not checked yet and not ejected.
    fn in_service(&self, now: Instant) -> bool {
        self.health.verdict() != Verdict::Down && !self.passive.ejected(now)
    }

    fn refresh_gauge(&self, now: Instant) {
        self.up.set(i64::from(self.taken(now)));
    }

    fn label(&self, now: Instant) -> &'static str {
        match (self.health.verdict(), self.passive.ejected(now)) {
            (Verdict::Down, _) => "unhealthy",
            (_, true) => "ejected",
            (Verdict::Unchecked, false) => "unchecked",
            (Verdict::Up, false) => "up",
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // The server left the backend (a reload, a DNS refresh) and its last attempt ended.
        self.up.set(0);
    }
}

impl Backend {
    /// Builds the backend of `config`. What is known about the servers of `previous` (the
    /// same backend before a reload) that it still has is kept, by address: requests in
    /// flight, health, ejections and response times; so are their connections when the
    /// connection settings are unchanged. A DNS backend resolving the same name and port
    /// starts with the servers `previous` found.
    pub fn new(
        config: &config::Backend,
        previous: Option<&Backend>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let pool_config = pool_config(config);
        let old: Vec<Arc<Server>> = previous
            .map(|p| p.servers.load().iter().cloned().collect())
            .unwrap_or_default();
        let pools_kept = previous.is_some_and(|p| p.pool_config == pool_config);
        let (specs, resolved): (Vec<(String, u32)>, bool) = match &config.dns {
            None => (
                config
                    .servers
                    .iter()
                    .map(|s| (s.address.clone(), s.weight))
                    .collect(),
                true,
            ),
            Some(dns) => match previous {
                Some(p)
                    if p.resolved.load(Ordering::Acquire)
                        && p.config
                            .dns
                            .as_ref()
                            .is_some_and(|d| d.name == dns.name && d.port == dns.port) =>
                {
                    (old.iter().map(|s| (s.address.clone(), 1)).collect(), true)
                }
                _ => (Vec::new(), false),
            },
        };
        let checked = config.health_check.is_some();
        Arc::new_cyclic(|me: &Weak<Backend>| {
            let servers: Vec<Arc<Server>> = specs
                .iter()
                .map(|(address, weight)| {
                    let before = old.iter().find(|s| &s.address == address);
                    let pool = match before {
                        Some(s) if pools_kept => s.pool.clone(),
                        _ => Pool::new(address.clone(), pool_config.clone()),
                    };
                    let state = before.map(|s| s.state.clone());
                    if let Some(state) = &state
                        && !checked
                    {
                        // Its checks were turned off: nothing says it is unhealthy now.
                        state.health.set_unchecked_up();
                    }
                    Arc::new(Server::new(
                        me.clone(),
                        &config.name,
                        address,
                        *weight,
                        pool,
                        state,
                        checked,
                        metrics,
                    ))
                })
                .collect();
            let now = Instant::now();
            for server in &servers {
                server.state.refresh_gauge(now);
            }
            Backend {
                name: config.name.clone(),
                config: config.clone(),
                pool_config,
                metrics: metrics.clone(),
                servers: ArcSwap::from_pointee(servers),
                balancer: Balancer::new(&config.balance, &config.name),
                in_flight: Arc::new(AtomicUsize::new(0)),
                overloaded: metrics.overloaded.with_label_values(&[&config.name]),
                panic: AtomicBool::new(false),
                resolved: AtomicBool::new(resolved),
                ejecting: Mutex::new(()),
                checks: Mutex::new(HashMap::new()),
                me: me.clone(),
                stop: CancellationToken::new(),
            }
        })
    }

    /// The config the backend was built from.
    pub fn config(&self) -> &config::Backend {
        &self.config
    }

    /// Starts the backend's background work (health checks, DNS), which runs until
    /// [`Self::retire`].
    pub fn start(self: &Arc<Self>) {
        if self.config.health_check.is_some() {
            for server in self.servers.load().iter() {
                self.spawn_check(server);
            }
        }
        if let Some(dns) = &self.config.dns {
            tokio::spawn(dns::run(
                Arc::downgrade(self),
                dns.clone(),
                self.stop.clone(),
            ));
        }
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
        let servers = self.servers.load();
        if servers.is_empty() {
            return Err(Unavailable::NoServers {
                backend: self.name.clone(),
            });
        }
        let now = Instant::now();
        let (tier, mut candidates) = candidates(&servers, now);
        self.note_panic(tier == Tier::Panic, &servers, now);
        if candidates.len() > 1 && !tried.is_empty() {
            let untried = |&i: &usize| {
                !tried
                    .iter()
                    .any(|t| Arc::ptr_eq(&t.state, &servers[i].state))
            };
            if candidates.iter().any(untried) {
                candidates.retain(untried);
            }
        }
        // A server of weight 0 takes requests only when no other can.
        if candidates.iter().any(|&i| servers[i].weight > 0) {
            candidates.retain(|&i| servers[i].weight > 0);
        }
        let chosen = self.balancer.pick(&servers, &candidates, ctx, now);
        Ok(servers[chosen].clone())
    }

    /// Logs entering and leaving panic mode, once per transition.
    fn note_panic(&self, panic: bool, servers: &[Arc<Server>], now: Instant) {
        if self.panic.load(Ordering::Relaxed) == panic
            || self.panic.swap(panic, Ordering::AcqRel) == panic
        {
            return;
        }
        if panic {
            let unhealthy = servers
                .iter()
                .filter(|s| s.state.health.verdict() == Verdict::Down)
                .count();
            let ejected = servers
                .iter()
                .filter(|s| s.state.passive.ejected(now))
                .count();
            tracing::warn!(
                backend = %self.name,
                servers = servers.len(),
                unhealthy,
                ejected,
                "every server of the backend is out: panic mode, requests go to all of them"
            );
        } else {
            tracing::info!(backend = %self.name, "a server of the backend is back: panic mode over");
        }
    }

    /// Looks at the servers again after a change no request may see soon (a health check
    /// result), so that panic mode is logged when it begins.
    fn reassess(&self) {
        let servers = self.servers.load();
        if servers.is_empty() {
            return;
        }
        let now = Instant::now();
        let (tier, _) = candidates(&servers, now);
        self.note_panic(tier == Tier::Panic, &servers, now);
    }

    fn spawn_check(&self, server: &Arc<Server>) {
        let Some(check) = &self.config.health_check else {
            return;
        };
        let token = self.stop.child_token();
        if let Some(before) = self
            .checks
            .lock()
            .expect("health-check tasks lock")
            .insert(server.address.clone(), token.clone())
        {
            before.cancel();
        }
        tokio::spawn(check::run(
            server.clone(),
            self.name.clone(),
            check.clone(),
            token,
        ));
    }

    /// Whether the server set is known: always for static servers, and for a DNS backend
    /// once a lookup has answered.
    pub fn is_resolved(&self) -> bool {
        self.resolved.load(Ordering::Acquire)
    }

    /// Replaces the server set with `addresses` (from DNS): servers kept by address keep
    /// everything; new ones start as a new static server does.
    fn set_servers(&self, addresses: &[String]) {
        let current = self.servers.load_full();
        self.resolved.store(true, Ordering::Release);
        if current.len() == addresses.len()
            && current.iter().zip(addresses).all(|(s, a)| &s.address == a)
        {
            return;
        }
        let checked = self.config.health_check.is_some();
        let now = Instant::now();
        let mut added = Vec::new();
        let next: Vec<Arc<Server>> = addresses
            .iter()
            .map(
                |address| match current.iter().find(|s| &s.address == address) {
                    Some(kept) => kept.clone(),
                    None => {
                        let server = Arc::new(Server::new(
                            self.me.clone(),
                            &self.name,
                            address,
                            1,
                            Pool::new(address.clone(), self.pool_config.clone()),
                            None,
                            checked,
                            &self.metrics,
                        ));
                        server.state.refresh_gauge(now);
                        added.push(server.clone());
                        server
                    }
                },
            )
            .collect();
        let removed: Vec<&str> = current
            .iter()
            .filter(|s| !addresses.contains(&s.address))
            .map(|s| s.address.as_str())
            .collect();
        self.servers.store(Arc::new(next));
        {
            let mut checks = self.checks.lock().expect("health-check tasks lock");
            for address in &removed {
                if let Some(token) = checks.remove(*address) {
                    token.cancel();
                }
            }
        }
        if !self.stop.is_cancelled() {
            for server in &added {
                self.spawn_check(server);
            }
        }
        let added: Vec<&str> = added.iter().map(|s| s.address.as_str()).collect();
        tracing::info!(
            backend = %self.name,
            servers = addresses.len(),
            added = ?added,
            removed = ?removed,
            "DNS changed the backend's servers"
        );
    }

    /// Ejects `server` when the backend's limits allow it; called by an attempt that
    /// reached an outlier threshold.
    fn eject(
        &self,
        server: &Server,
        outlier: &config::Outlier,
        why: outlier::Reason,
        now: Instant,
    ) {
        let _one_at_a_time = self.ejecting.lock().expect("ejection lock");
        let servers = self.servers.load();
        if !servers.iter().any(|s| Arc::ptr_eq(&s.state, &server.state)) {
            return;
        }
        let ejected = servers
            .iter()
            .filter(|s| s.state.passive.ejected(now))
            .count();
        let others_in_service = servers
            .iter()
            .filter(|s| !Arc::ptr_eq(&s.state, &server.state) && s.state.in_service(now))
            .count();
        let within_share =
            (ejected + 1) * 100 <= outlier.max_ejected_percent as usize * servers.len();
        if !within_share || others_in_service == 0 {
            tracing::debug!(
                backend = %self.name,
                server = %server.address,
                reason = %why,
                ejected,
                "not ejected: maxEjectedPercent, or it is the last server in service"
            );
            server.state.passive.spare();
            return;
        }
        let time = server.state.passive.eject(outlier, now);
        server.metrics.ejections.inc();
        server.state.refresh_gauge(now);
        tracing::warn!(
            backend = %self.name,
            server = %server.address,
            reason = %why,
            time = %humantime::format_duration(time),
            "server ejected"
        );
        if tokio::runtime::Handle::try_current().is_ok() {
            let state = server.state.clone();
            let (backend, address) = (self.name.clone(), server.address.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until((now + time).into()).await;
                let now = Instant::now();
                state.refresh_gauge(now);
                if !state.passive.ejected(now) {
                    tracing::info!(%backend, server = %address, "server back from ejection");
                }
            });
        }
    }

    /// The backend's state for `/status`.
    pub fn status(&self) -> BackendStatus {
        let servers = self.servers.load();
        let now = Instant::now();
        let (tier, _) = candidates(&servers, now);
        BackendStatus {
            name: self.name.clone(),
            balance: match &self.config.balance {
                config::Balance::RoundRobin => "roundRobin",
                config::Balance::LeastRequest => "leastRequest",
                config::Balance::PeakEwma => "peakEwma",
                config::Balance::Hash(_) => "hash",
            },
            in_flight: self.in_flight.load(Ordering::Relaxed),
            panic: !servers.is_empty() && tier == Tier::Panic,
            resolved: self.resolved.load(Ordering::Acquire),
            servers: servers.iter().map(|s| s.status(now)).collect(),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The servers a pick chooses among, by index, and which tier they are.
fn candidates(servers: &[Arc<Server>], now: Instant) -> (Tier, Vec<usize>) {
    let taken: Vec<usize> = (0..servers.len())
        .filter(|&i| servers[i].state.taken(now))
        .collect();
    if !taken.is_empty() {
        return (Tier::Taken, taken);
    }
    let unchecked: Vec<usize> = (0..servers.len())
        .filter(|&i| servers[i].state.in_service(now))
        .collect();
    if !unchecked.is_empty() {
        return (Tier::Unchecked, unchecked);
    }
    (Tier::Panic, (0..servers.len()).collect())
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

/// One request let into a backend, until dropped.
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    #[allow(clippy::too_many_arguments)]
    fn new(
        backend: Weak<Backend>,
        backend_name: &str,
        address: &str,
        weight: u32,
        pool: Pool,
        state: Option<Arc<State>>,
        checked: bool,
        metrics: &Metrics,
    ) -> Self {
        let metrics = metrics.server(backend_name, address);
        let state = state.unwrap_or_else(|| Arc::new(State::new(metrics.up.clone(), checked)));
        Self {
            address: address.to_owned(),
            weight,
            pool,
            metrics,
            address_hash: keys::stable_hash(&[address.as_bytes()]),
            state,
            backend,
        }
    }

    /// Starts an attempt on this server.
    pub fn begin(self: &Arc<Self>) -> Attempt {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        Attempt {
            server: self.clone(),
            started: Instant::now(),
            finished: false,
        }
    }

    fn status(&self, now: Instant) -> ServerStatus {
        let state = &self.state;
        let passive = state.passive.snapshot(now);
        let check = state.health.snapshot();
        ServerStatus {
            address: self.address.clone(),
            weight: self.weight,
            state: state.label(now),
            in_flight: state.in_flight.load(Ordering::Relaxed),
            connections: self.pool.stats(),
            consecutive_5xx: passive.consecutive_5xx,
            consecutive_errors: passive.consecutive_errors,
            ejections: passive.ejections,
            ejected_until: passive.until.map(|until| {
                let wall = SystemTime::now() + until.saturating_duration_since(now);
                humantime::format_rfc3339_millis(wall).to_string()
            }),
            check_failures: check.failures,
            check_error: check.error,
            ewma_ms: state
                .ewma
                .estimate(now)
                .map(|ns| (ns / 1e4).round() / 100.0),
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
    /// Records how the attempt ended: in the server's metrics and response time, and in
    /// its outlier counts, which may eject it.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        let server = &self.server;
        let state = &server.state;
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Outcome::Status(status) => {
                server.metrics.duration.observe(elapsed.as_secs_f64());
                server.metrics.response(status);
                state.ewma.observe(elapsed, now);
            }
            Outcome::ConnectError | Outcome::Failed | Outcome::TimedOut => {
                server.metrics.errors.inc();
                // A server that fails fast must not look fast.
                state
                    .ewma
                    .observe(elapsed.max(balance::FAILURE_PENALTY), now);
            }
            Outcome::Abandoned => return,
        }
        let Some(backend) = server.backend.upgrade() else {
            return;
        };
        if let Some(outlier) = &backend.config.outlier
            && let Some(why) = state.passive.record(outcome, outlier, now)
        {
            backend.eject(server, outlier, why, now);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // Dropped unfinished: the request was cancelled (the client went away, the route
        // timed out); the server is not blamed.
        if !self.finished {
            self.server.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A backend in `/status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// Its name.
    pub name: String,
    /// Its balancing strategy: `roundRobin`, `leastRequest`, `peakEwma` or `hash`.
    pub balance: &'static str,
    /// Requests in flight to it.
    pub in_flight: usize,
    /// Every server is unhealthy or ejected, so requests go to all of them.
    pub panic: bool,
    /// The server set is known (false for a DNS backend before its first answer).
    pub resolved: bool,
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
    /// `up`, `unhealthy` (failing its health checks), `ejected` (by outlier detection)
    /// or `unchecked` (its first health check has not finished).
    pub state: &'static str,
    /// Attempts in flight on it.
    pub in_flight: usize,
    /// Its connections.
    pub connections: PoolStats,
    /// 5xx answers in a row.
    pub consecutive_5xx: u32,
    /// Attempts in a row that got no answer (connect errors, resets, timeouts).
    pub consecutive_errors: u32,
    /// Ejections in a row (the next lasts `ejectionTime` times one more).
    pub ejections: u32,
    /// When its ejection ends (RFC 3339), while it is ejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_until: Option<String>,
    /// Health checks failed in a row.
    pub check_failures: u32,
    /// Why its last health check failed, while they fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_error: Option<String>,
    /// Its peak-EWMA response time in milliseconds, once an attempt has been measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ewma_ms: Option<f64>,
}

#[cfg(test)]
mod tests;
