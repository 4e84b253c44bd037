//! Active health checks: one task per server GETs `path` every `interval` on a connection
//! of its own, and a 2xx or 3xx answer within `timeout` passes.
//!
//! The check does not use the server's request pool: the pool's `maxConnections` would
//! make checks queue behind requests (and fail the circuit breaker), and a kept-alive
//! pooled connection can hide that the server stopped accepting new ones. A fresh
//! connection meets what the next request's new connection would.
//!
//! A server starts *unchecked* and is taken once its first check passes (Envoy's choice,
//! not HAProxy's): a server added by a reload or by DNS gets no request it cannot answer.
//! Until the first checks end (a round trip), a backend with no server taken yet uses its
//! unchecked ones, so start-up answers at once. After that, `unhealthyThreshold` failures
//! in a row take a server out and `healthyThreshold` passes in a row bring it back.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rigging_crds::sidecar::http::HealthCheck;
use tokio_util::sync::CancellationToken;

use super::Server;

const UNCHECKED: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// What the health checks say of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its first check has not finished.
    Unchecked,
    /// Healthy (or not checked at all).
    Up,
    /// Failing its checks.
    Down,
}

/// A change of verdict, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Healthy now.
    TakenIn,
    /// Unhealthy now.
    TakenOut,
}

/// A server's health: the verdict, read on every pick, and the streak behind it.
pub struct Health {
    verdict: AtomicU8,
    streak: Mutex<Streak>,
}

#[derive(Debug, Default, Clone)]
pub struct Streak {
    /// Passes in a row.
    pub passes: u32,
    /// Failures in a row.
    pub failures: u32,
    /// Why the last check failed, while they fail.
    pub error: Option<String>,
}

impl Health {
    /// A server's health: unchecked when it has checks, else up.
    pub fn new(checked: bool) -> Self {
        Self {
            verdict: AtomicU8::new(if checked { UNCHECKED } else { UP }),
            streak: Mutex::new(Streak::default()),
        }
    }

    /// The verdict now.
    pub fn verdict(&self) -> Verdict {
        match self.verdict.load(Ordering::Acquire) {
            UNCHECKED => Verdict::Unchecked,
            UP => Verdict::Up,
            _ => Verdict::Down,
        }
    }

    /// The server's checks were turned off: it is up.
    pub fn set_unchecked_up(&self) {
        self.verdict.store(UP, Ordering::Release);
        *self.streak.lock().expect("health lock") = Streak::default();
    }

    /// The streak, for `/status`.
    pub fn snapshot(&self) -> Streak {
        self.streak.lock().expect("health lock").clone()
    }

    /// Records one check's result; returns the change of verdict it makes, if any.
    pub fn record(&self, result: Result<(), String>, check: &HealthCheck) -> Option<Transition> {
        let mut streak = self.streak.lock().expect("health lock");
        let passed = result.is_ok();
        match result {
            Ok(()) => {
                streak.passes = streak.passes.saturating_add(1);
                streak.failures = 0;
                streak.error = None;
            }
            Err(error) => {
                streak.failures = streak.failures.saturating_add(1);
                streak.passes = 0;
                streak.error = Some(error);
            }
        }
        let next = match (self.verdict(), passed) {
            // The first check decides.
            (Verdict::Unchecked, true) => Some((UP, Transition::TakenIn)),
            (Verdict::Unchecked, false) => Some((DOWN, Transition::TakenOut)),
            (Verdict::Up, false) if streak.failures >= check.unhealthy_threshold => {
                Some((DOWN, Transition::TakenOut))
            }
            (Verdict::Down, true) if streak.passes >= check.healthy_threshold => {
                Some((UP, Transition::TakenIn))
            }
            _ => None,
        };
        next.map(|(verdict, transition)| {
            self.verdict.store(verdict, Ordering::Release);
            transition
        })
    }
}

/// Checks `server` every `check.interval` until `stop`; the first check runs at once.
pub async fn run(
    server: Arc<Server>,
    backend: String,
    check: HealthCheck,
    stop: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = probe(&server.address, &check) => result,
        };
        let error = result.as_ref().err().cloned();
        let was = server.state.health.verdict();
        if let Some(transition) = server.state.health.record(result, &check) {
            server.state.refresh_gauge(Instant::now());
            match transition {
                Transition::TakenIn if was == Verdict::Unchecked => {
                    tracing::debug!(%backend, server = %server.address, "server passed its first health check")
                }
                Transition::TakenIn => tracing::info!(
                    %backend,
                    server = %server.address,
                    passes = check.healthy_threshold,
                    "server passed its health checks again: taken back in"
                ),
                Transition::TakenOut => tracing::warn!(
                    %backend,
                    server = %server.address,
                    error = error.as_deref().unwrap_or(""),
                    "server failed its health checks: taken out"
                ),
            }
            if let Some(backend) = server.backend.upgrade() {
                backend.reassess();
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}

/// One check: GET `path` on a new connection to `address`, with the address as `Host`.
async fn probe(address: &str, check: &HealthCheck) -> Result<(), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let request = Request::get(check.path.as_str())
            .header(header::HOST, address)
            .header(header::USER_AGENT, "rigging-sidecar-http-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let mut connection = std::pin::pin!(connection);
        let mut send = std::pin::pin!(sender.send_request(request));
        let answered = tokio::select! {
            response = &mut send => Some(response),
            _ = &mut connection => None,
        };
        let response = match answered {
            Some(response) => response,
            // The connection ended first: the request's future says why.
            None => send.await,
        }
        .map_err(|e| crate::forwarding::error_chain(&e))?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn check() -> HealthCheck {
        HealthCheck {
            path: "/status".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    const FAIL: fn() -> Result<(), String> = || Err("answered 503".into());

    #[test]
    fn a_server_without_checks_is_up_and_one_with_checks_waits_for_the_first() {
        assert_eq!(Health::new(false).verdict(), Verdict::Up);
        let health = Health::new(true);
        assert_eq!(health.verdict(), Verdict::Unchecked);
        assert_eq!(health.record(Ok(()), &check()), Some(Transition::TakenIn));
        assert_eq!(health.verdict(), Verdict::Up);
        let health = Health::new(true);
        assert_eq!(health.record(FAIL(), &check()), Some(Transition::TakenOut));
        assert_eq!(health.verdict(), Verdict::Down);
    }

    #[test]
    fn thresholds_in_a_row_take_a_server_out_and_bring_it_back() {
        let (health, check) = (Health::new(true), check());
        health.record(Ok(()), &check);
        assert_eq!(health.record(FAIL(), &check), None);
        assert_eq!(health.record(FAIL(), &check), None);
        // A pass breaks the streak.
        assert_eq!(health.record(Ok(()), &check), None);
        assert_eq!(health.record(FAIL(), &check), None);
        assert_eq!(health.record(FAIL(), &check), None);
        assert_eq!(health.record(FAIL(), &check), Some(Transition::TakenOut));
        assert_eq!(health.snapshot().failures, 3);
        assert_eq!(health.snapshot().error.as_deref(), Some("answered 503"));
        assert_eq!(health.record(Ok(()), &check), None);
        assert_eq!(health.verdict(), Verdict::Down);
        assert_eq!(health.record(Ok(()), &check), Some(Transition::TakenIn));
        assert_eq!(health.snapshot().error, None);
    }
}
