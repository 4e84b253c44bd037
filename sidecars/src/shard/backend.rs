//! The servers behind the ring: shared connections, failure counting, ejection and
//! per-server metrics.
//!
//! Ejection follows twemproxy: with `auto_eject_hosts`, `server_failure_limit` consecutive
//! failures take a server off the ring for `server_retry_timeout`; its keys rehash onto
//! the others only while it is out, and it returns (with its keys) once the time is up.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use tokio::net::TcpStream;

use super::hash::HashKind;
use super::ring::{HashTag, Ring, ServerSpec};

/// twemproxy's `auto_eject_hosts` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eject {
    /// Consecutive failures that eject a server.
    pub failure_limit: u32,
    /// How long an ejected server stays off the ring.
    pub retry_after: Duration,
}

/// Timeouts for talking to servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting (and the protocol handshake on a new connection).
    pub connect: Duration,
    /// One batch of requests, from the write to the last reply.
    pub request: Duration,
}

/// An open connection to a server, with its read buffer and what was negotiated on it.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read from the server and not yet consumed.
    pub rbuf: BytesMut,
    /// Protocol-specific session state (Redis: the RESP version negotiated with HELLO).
    pub session: u8,
}

/// Per-server metrics, resolved once so the hot path never formats a label.
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    /// Requests sent to this server.
    pub requests: IntCounter,
    /// Requests that got an error reply because the server failed or timed out.
    pub errors: IntCounter,
    /// Times the server was ejected from the ring.
    pub ejections: IntCounter,
    /// Round trip of one batch to this server.
    pub latency: Histogram,
}

/// The metric families, registered once per process and shared across reloads.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: IntCounterVec,
    errors: IntCounterVec,
    ejections: IntCounterVec,
    latency: HistogramVec,
}

impl Metrics {
    /// Registers the shard metric families in `registry`.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "rigging_shard_server_requests_total",
                "Requests forwarded to each server",
            ),
            &["server"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "rigging_shard_server_errors_total",
                "Requests answered with an error because the server failed or timed out",
            ),
            &["server"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "rigging_shard_server_ejections_total",
                "Times a server was ejected from the ring",
            ),
            &["server"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "rigging_shard_server_latency_seconds",
                "Round trip of one pipelined batch to a server",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
            ]),
            &["server"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Metrics {
            requests,
            errors,
            ejections,
            latency,
        })
    }

    fn for_server(&self, label: &str) -> ServerMetrics {
        ServerMetrics {
            requests: self.requests.with_label_values(&[label]),
            errors: self.errors.with_label_values(&[label]),
            ejections: self.ejections.with_label_values(&[label]),
            latency: self.latency.with_label_values(&[label]),
        }
    }
}

/// One server: its address, idle connections and health.
#[derive(Debug)]
pub struct Server {
    /// As configured.
    pub spec: ServerSpec,
    /// `host:port`.
    pub address: String,
    /// Open lanes (one shared connection each) by session and slot.
    pub(super) lanes: Mutex<Vec<Lane>>,
    /// Lanes per session (twemproxy's `server_connections`).
    pub connections: usize,
    failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which the server is ejected (0: never).
    ejected_until: AtomicU64,
    /// Its metrics.
    pub metrics: ServerMetrics,
}

/// A shared connection to a server: requests from every client are queued here and sent in
/// batches by one task (see `proxy::lane`).
#[derive(Debug)]
pub(super) struct Lane {
    pub session: u8,
    pub slot: usize,
    pub tx: tokio::sync::mpsc::UnboundedSender<super::proxy::Job>,
}

impl Server {
    /// Opens a connection.
    pub async fn connect(&self, connect_timeout: Duration) -> Result<Conn, String> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| format!("connect timed out after {} ms", connect_timeout.as_millis()))?
            .map_err(|err| format!("connect failed: {err}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            session: 0,
        })
    }
}

/// The servers and the ring over the live ones. One `Pool` per configuration: a reload
/// builds a new one, and batches already running finish on the old.
#[derive(Debug)]
pub struct Pool {
    /// The servers, in configuration order (ring indices point here).
    pub servers: Vec<Arc<Server>>,
    ring: ArcSwap<Ring>,
    hash: HashKind,
    tag: Option<HashTag>,
    eject: Option<Eject>,
    /// Timeouts for every server.
    pub timeouts: Timeouts,
    epoch: Instant,
    /// Milliseconds since the epoch when an ejected server is due back (u64::MAX: none).
    next_rebuild: AtomicU64,
    rebuild_lock: Mutex<()>,
}

/// What a [`Pool`] is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// The servers.
    pub servers: Vec<ServerSpec>,
    /// Key hash function.
    pub hash: HashKind,
    /// Optional hash tag.
    pub tag: Option<HashTag>,
    /// Optional auto-ejection.
    pub eject: Option<Eject>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Connections per server (and RESP version), shared by all clients.
    pub connections: usize,
}

impl Pool {
    /// Builds the servers and the initial ring (every server live).
    pub fn new(settings: &PoolSettings, metrics: &Metrics) -> Pool {
        let servers: Vec<Arc<Server>> = settings
            .servers
            .iter()
            .map(|spec| {
                let address = spec.address();
                Arc::new(Server {
                    metrics: metrics.for_server(&address),
                    address,
                    spec: spec.clone(),
                    lanes: Mutex::new(Vec::new()),
                    connections: settings.connections.max(1),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                })
            })
            .collect();
        let ring = Ring::new(&settings.servers, &[], settings.hash, settings.tag);
        Pool {
            servers,
            ring: ArcSwap::from_pointee(ring),
            hash: settings.hash,
            tag: settings.tag,
            eject: settings.eject,
            timeouts: settings.timeouts,
            epoch: Instant::now(),
            next_rebuild: AtomicU64::new(u64::MAX),
            rebuild_lock: Mutex::new(()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The current ring, rebuilt first if an ejected server's retry time has come.
    pub fn ring(&self) -> arc_swap::Guard<Arc<Ring>> {
        if self.next_rebuild.load(Ordering::Relaxed) <= self.now_ms() {
            self.rebuild();
        }
        self.ring.load()
    }

    fn rebuild(&self) {
        let _guard = self.rebuild_lock.lock().expect("rebuild lock");
        let now = self.now_ms();
        let mut next = u64::MAX;
        let live: Vec<bool> = self
            .servers
            .iter()
            .map(|s| {
                let until = s.ejected_until.load(Ordering::Relaxed);
                if until > now {
                    next = next.min(until);
                    false
                } else {
                    true
                }
            })
            .collect();
        let specs: Vec<ServerSpec> = self.servers.iter().map(|s| s.spec.clone()).collect();
        self.ring
            .store(Arc::new(Ring::new(&specs, &live, self.hash, self.tag)));
        self.next_rebuild.store(next, Ordering::Relaxed);
    }

    /// Notes a successful exchange with server `i`.
    pub fn success(&self, i: usize) {
        let server = &self.servers[i];
        if server.failures.load(Ordering::Relaxed) != 0 {
            server.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Notes a failed exchange with server `i` (`requests` of them got error replies) and
    /// ejects it when it reached the failure limit.
    pub fn failure(&self, i: usize, requests: u64, why: &str) {
        let server = &self.servers[i];
        server.metrics.errors.inc_by(requests);
        let failures = server.failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(server = %server.address, failures, error = why, "server failed");
        if let Some(eject) = self.eject
            && failures >= eject.failure_limit
        {
            server.failures.store(0, Ordering::Relaxed);
            let until = self.now_ms() + eject.retry_after.as_millis() as u64;
            server.ejected_until.store(until, Ordering::Relaxed);
            server.metrics.ejections.inc();
            tracing::warn!(
                server = %server.address,
                retry_after_ms = eject.retry_after.as_millis() as u64,
                "server ejected from the ring"
            );
            self.rebuild();
        }
    }
}
