//! `rigging-sidecar health`: the health monitor. Runs deep checks of an app and what it
//! depends on (HTTP status and body, TCP, Redis `PING`, memcached `version`, a PostgreSQL
//! query, a command) in the background, and serves the verdict as `/readyz` and `/healthz`
//! for kubelet probes — the book's health adapter, for apps that have no probe of their own.
//!
//! - `/readyz` (readiness): 200 when every required check passes (all checks unless
//!   marked `optional`), 503 otherwise and while shutting down.
//! - `/healthz` (liveness): 200 unless the monitor itself is stuck (a check has not
//!   finished a run for far longer than its interval and deadline allow) or a check marked
//!   `liveness` has failed `--failure-threshold` times in a row. Dependencies are not
//!   liveness by default: restarting an app because its database is down does not bring
//!   the database back, it only adds a restart storm.
//!
//! Both answer a JSON body naming each failing check and its error.

pub mod exec;
pub mod http;
pub mod memcached;
pub mod postgres;
pub mod redis;
pub mod spec;
pub mod state;
pub mod tcp;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;

use crate::probe;
use crate::runtime::{self, Lifecycle, admin};
use spec::{Check, Probe};
use state::{CheckState, Thresholds};

/// Command-line arguments of `rigging-sidecar health`: the contract type the operator
/// renders.
pub use rigging_crds::sidecar::health::HealthArgs as Args;

/// Why the health monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--check` value is unusable.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// Two checks have the same name.
    #[error("two checks are named {0:?}: give one a different name with #name=…")]
    DuplicateName(String),
    /// The admin port or the metrics could not be set up.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
}

/// Why one run of a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No result within the deadline.
    #[error("no result within {0:?}")]
    Timeout(Duration),
    /// A TCP connection was refused or failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The request failed before a status arrived.
    #[error("{0}")]
    Http(String),
    /// An unexpected HTTP status.
    #[error("status {got}, expected {want}")]
    Status {
        /// What came back.
        got: u16,
        /// What passes.
        want: String,
    },
    /// The body did not match `body=`.
    #[error("body does not match {pattern:?}")]
    Body {
        /// The regex.
        pattern: String,
    },
    /// Redis or memcached failed or answered wrongly.
    #[error(transparent)]
    Probe(#[from] probe::Error),
    /// A reply that is valid but not the healthy one.
    #[error("{0}")]
    Unexpected(String),
    /// PostgreSQL refused the connection or the query.
    #[error("postgres: {}", postgres_message(.0))]
    Postgres(tokio_postgres::Error),
    /// The command could not be started.
    #[error("cannot run sh: {0}")]
    Spawn(std::io::Error),
    /// The command exited non-zero.
    #[error("{status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Exit {
        /// How it exited.
        status: String,
        /// The last line it wrote to stderr.
        stderr: String,
    },
}

/// tokio-postgres's Display says only "db error"; the server's message is underneath.
fn postgres_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        },
    }
}

/// Per-check metrics.
struct Metrics {
    up: IntGaugeVec,
    duration: HistogramVec,
    failures: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let up = IntGaugeVec::new(
            Opts::new(
                "rigging_health_check_up",
                "Whether the check passes, by the failure and success thresholds.",
            ),
            &["check"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "rigging_health_check_duration_seconds",
                "Time one run of the check took.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["check"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "rigging_health_check_failures_total",
                "Runs of the check that failed.",
            ),
            &["check"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Metrics {
            up,
            duration,
            failures,
        })
    }
}

/// One check with where it stands.
struct Entry {
    check: Check,
    state: Mutex<CheckState>,
    /// When the last run finished (or the monitor started), for the stuck-monitor test.
    last_finished: Mutex<Instant>,
}

/// The monitor: checks, their states and the verdicts served on the admin port.
struct Monitor {
    entries: Vec<Entry>,
    thresholds: Thresholds,
    interval: Duration,
    timeout: Duration,
    life: Lifecycle,
    metrics: Metrics,
    http: http::HttpClient,
}

/// One check in a JSON body.
#[derive(Serialize)]
struct CheckReport<'a> {
    check: &'a str,
    required: bool,
    liveness: bool,
    #[serde(flatten)]
    state: &'a CheckState,
}

/// A failing check in a JSON body.
#[derive(Serialize)]
struct Failing<'a> {
    check: &'a str,
    error: String,
}

/// The `/healthz` and `/readyz` body.
#[derive(Serialize)]
struct Verdict<'a> {
    status: &'static str,
    failing: Vec<Failing<'a>>,
    checks: Vec<CheckReport<'a>>,
}

/// Which endpoint is asking.
#[derive(Clone, Copy)]
enum Probing {
    Liveness,
    Readiness,
}

impl Monitor {
    fn deadline(&self, check: &Check) -> Duration {
        check.timeout.unwrap_or(self.timeout)
    }

    /// Runs one check once, under its deadline.
    async fn run_once(&self, check: &Check) -> Result<(), CheckError> {
        let deadline = self.deadline(check);
        let work = async {
            match &check.probe {
                Probe::Http { uri, status, body } => {
                    http::check(&self.http, uri, status, body.as_ref()).await
                }
                Probe::Tcp { addr } => tcp::check(addr).await,
                Probe::Redis(target) => redis::check(target, deadline).await,
                Probe::Memcached(target) => memcached::check(target, deadline).await,
                Probe::Postgres { config, query } => postgres::check(config, query).await,
                Probe::Exec { command } => exec::check(command).await,
            }
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or(Err(CheckError::Timeout(deadline)))
    }

    /// Runs check `index` every interval until shutdown.
    async fn watch(self: Arc<Self>, index: usize) {
        let entry = &self.entries[index];
        let name = entry.check.name.as_str();
        let up = self.metrics.up.with_label_values(&[name]);
        let duration = self.metrics.duration.with_label_values(&[name]);
        let failures = self.metrics.failures.with_label_values(&[name]);
        loop {
            let started = Instant::now();
            let result = self.run_once(&entry.check).await;
            let took = started.elapsed();
            duration.observe(took.as_secs_f64());
            if result.is_err() {
                failures.inc();
            }
            let result = result.map_err(|e| e.to_string());
            {
                let mut state = entry.state.lock().expect("state lock poisoned");
                let was_up = state.up;
                let error = result.as_ref().err().cloned();
                state.record(result, took, self.thresholds);
                up.set(i64::from(state.up));
                if !was_up && state.up {
                    tracing::info!(check = name, "check passes");
                }
                // Logged once per outage: when the failures reach the threshold.
                if state.consecutive_failures == self.thresholds.failure {
                    tracing::warn!(
                        check = name,
                        error = error.as_deref().unwrap_or_default(),
                        "check fails"
                    );
                }
            }
            *entry.last_finished.lock().expect("lock poisoned") = Instant::now();
            tokio::select! {
                _ = self.life.stopping() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// The verdict for one endpoint: status code and JSON body.
    fn verdict(&self, probing: Probing) -> (::http::StatusCode, Vec<u8>) {
        let now = Instant::now();
        let states: Vec<CheckState> = self
            .entries
            .iter()
            .map(|e| e.state.lock().expect("state lock poisoned").clone())
            .collect();
        let mut failing = Vec::new();
        for (entry, state) in self.entries.iter().zip(&states) {
            let name = entry.check.name.as_str();
            let fails = match probing {
                Probing::Readiness => entry.check.required && state.fails_readiness(),
                Probing::Liveness => entry.check.liveness && state.fails_liveness(self.thresholds),
            };
            if fails {
                failing.push(Failing {
                    check: name,
                    error: state.reason(self.thresholds),
                });
            }
            if let Probing::Liveness = probing {
                // A run is bounded by its deadline; one that has not finished in several
                // intervals plus deadlines means the monitor itself is wedged.
                let allowed =
                    (self.interval + self.deadline(&entry.check)) * 3 + Duration::from_secs(5);
                let last = *entry.last_finished.lock().expect("lock poisoned");
                if now.duration_since(last) > allowed {
                    failing.push(Failing {
                        check: name,
                        error: format!("the monitor has not finished a run for {allowed:?}"),
                    });
                }
            }
        }
        let stopping = matches!(probing, Probing::Readiness) && self.life.is_stopping();
        let status = match (stopping, failing.is_empty()) {
            (true, _) => "stopping",
            (false, true) => "ok",
            (false, false) => "fail",
        };
        let verdict = Verdict {
            status,
            failing,
            checks: self
                .entries
                .iter()
                .zip(&states)
                .map(|(e, state)| CheckReport {
                    check: &e.check.name,
                    required: e.check.required,
                    liveness: e.check.liveness,
                    state,
                })
                .collect(),
        };
        let code = match status {
            "ok" => ::http::StatusCode::OK,
            _ => ::http::StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut body = serde_json::to_vec(&verdict).unwrap_or_else(|e| {
            format!("{{\"status\":\"fail\",\"error\":\"cannot encode: {e}\"}}").into_bytes()
        });
        body.push(b'\n');
        (code, body)
    }
}

impl admin::Routes for Monitor {
    fn route(self: Arc<Self>, path: &str) -> Option<admin::RouteFuture> {
        let probing = match path {
            "/healthz" => Probing::Liveness,
            "/readyz" => Probing::Readiness,
            _ => return None,
        };
        let (status, body) = self.verdict(probing);
        let response = ::http::Response::builder()
            .status(status)
            .header(::http::header::CONTENT_TYPE, "application/json")
            .header(::http::header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid");
        Some(Box::pin(std::future::ready(response)))
    }
}

/// Runs the health monitor until SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut entries = Vec::with_capacity(args.checks.len());
    let started = Instant::now();
    for spec in &args.checks {
        let check = spec::parse(spec)?;
        if entries.iter().any(|e: &Entry| e.check.name == check.name) {
            return Err(Error::DuplicateName(check.name));
        }
        entries.push(Entry {
            check,
            state: Mutex::new(CheckState::default()),
            last_finished: Mutex::new(started),
        });
    }
    let life = Lifecycle::new();
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).map_err(runtime::Error::from)?;
    let monitor = Arc::new(Monitor {
        entries,
        thresholds: Thresholds {
            failure: args.failure_threshold,
            success: args.success_threshold,
        },
        interval: args.interval,
        timeout: args.timeout,
        life: life.clone(),
        metrics,
        http: http::client(),
    });
    for (index, entry) in monitor.entries.iter().enumerate() {
        // Present from the start, so a dashboard sees every check before its first run.
        monitor
            .metrics
            .up
            .with_label_values(&[&entry.check.name])
            .set(0);
        tokio::spawn(monitor.clone().watch(index));
    }
    let addr =
        admin::spawn_with_routes(args.admin, registry, life.clone(), monitor.clone()).await?;
    let names: Vec<&str> = monitor
        .entries
        .iter()
        .map(|e| e.check.name.as_str())
        .collect();
    tracing::info!(%addr, checks = ?names, "health monitor serving /healthz and /readyz");
    life.set_ready(true);
    life.stopping().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(specs: &[&str]) -> Monitor {
        let started = Instant::now();
        Monitor {
            entries: specs
                .iter()
                .map(|s| Entry {
                    check: spec::parse(s).unwrap(),
                    state: Mutex::new(CheckState::default()),
                    last_finished: Mutex::new(started),
                })
                .collect(),
            thresholds: Thresholds {
                failure: 2,
                success: 1,
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            life: Lifecycle::default(),
            metrics: Metrics::register(&Registry::new()).unwrap(),
            http: http::client(),
        }
    }

    fn record(m: &Monitor, index: usize, results: &[bool]) {
        let mut state = m.entries[index].state.lock().unwrap();
        for ok in results {
            let result = if *ok { Ok(()) } else { Err("down".to_owned()) };
            state.record(result, Duration::ZERO, m.thresholds);
        }
    }

    fn verdict(m: &Monitor, probing: Probing) -> (u16, serde_json::Value) {
        let (code, body) = m.verdict(probing);
        (code.as_u16(), serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn readiness_counts_required_checks_and_liveness_only_marked_ones() {
        let m = monitor(&[
            "tcp://127.0.0.1:1#name=db",
            "tcp://127.0.0.1:2#name=extra&optional",
            "tcp://127.0.0.1:3#name=app&liveness",
        ]);
        let (code, body) = verdict(&m, Probing::Readiness);
        assert_eq!(code, 503, "nothing has passed yet");
        assert_eq!(body["failing"][0]["error"], "not checked yet");
        assert_eq!(
            verdict(&m, Probing::Liveness).0,
            200,
            "starting is not dead"
        );

        record(&m, 0, &[true]);
        record(&m, 1, &[false, false]);
        record(&m, 2, &[true]);
        assert_eq!(
            verdict(&m, Probing::Readiness).0,
            200,
            "optional failures do not count"
        );
        record(&m, 0, &[false, false]);
        let (code, body) = verdict(&m, Probing::Readiness);
        assert_eq!(
            (code, body["failing"][0]["check"].as_str()),
            (503, Some("db"))
        );
        assert_eq!(
            verdict(&m, Probing::Liveness).0,
            200,
            "db is not a liveness check"
        );
        record(&m, 2, &[false, false]);
        let (code, body) = verdict(&m, Probing::Liveness);
        assert_eq!(code, 503);
        assert_eq!(body["failing"].as_array().unwrap().len(), 1);
        assert_eq!(body["failing"][0]["check"], "app");
    }

    #[tokio::test]
    async fn a_check_that_stops_finishing_runs_fails_liveness() {
        let m = monitor(&["tcp://127.0.0.1:1#name=db"]);
        assert_eq!(verdict(&m, Probing::Liveness).0, 200);
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .expect("the clock has run for a minute");
        *m.entries[0].last_finished.lock().unwrap() = long_ago;
        let (code, body) = verdict(&m, Probing::Liveness);
        assert_eq!(code, 503);
        let error = body["failing"][0]["error"].as_str().unwrap();
        assert!(error.contains("has not finished a run"), "{error}");
    }

    #[tokio::test]
    async fn shutting_down_turns_readiness_off() {
        let m = monitor(&["tcp://127.0.0.1:1"]);
        record(&m, 0, &[true]);
        assert_eq!(verdict(&m, Probing::Readiness).0, 200);
        m.life.stop();
        let (code, body) = verdict(&m, Probing::Readiness);
        assert_eq!((code, body["status"].as_str()), (503, Some("stopping")));
    }
}
