//! `rigging-sidecar metrics`: the metrics adapter. Turns an app's native stats (Redis
//! `INFO`, memcached `stats`, nginx `stub_status`, a JSON endpoint through a mapping file)
//! into a Prometheus endpoint, so the platform's Prometheus scrapes every app the same way.
//!
//! The source is asked on request, not on a timer: a scrape that finds the last answer
//! younger than `--interval` gets it again, so a burst of scrapes (two Prometheus replicas,
//! a person with curl) costs the app one request. Scrapes are serialised behind one lock,
//! which also owns the upstream connection and the output buffer: a scrape formats straight
//! into that reused buffer, copying the upstream's number text through. When the source
//! does not answer, `/metrics` still answers 200 with `<source>_up 0`.

pub mod exposition;
pub mod json;
pub mod memcached;
pub mod nginx;
pub mod redis;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::probe::{self, Conn, RedisReply, Target};
use crate::runtime::{self, Lifecycle, admin, reload};

/// Command-line arguments of `rigging-sidecar metrics`: the contract type the operator
/// renders.
pub use rigging_crds::sidecar::metrics::MetricsArgs as Args;

/// Why the metrics adapter could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--source` is not one of the supported forms.
    #[error("--source {url:?}: {reason}")]
    Source {
        /// The flag's value (password masked).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A `redis://` or `memcached://` source URL did not parse.
    #[error("--source: {0}")]
    Url(#[from] probe::Error),
    /// The JSON mapping file is unusable.
    #[error(transparent)]
    Mapping(#[from] json::MappingError),
    /// The admin port or the adapter's own metrics could not be set up.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
}

/// Why one scrape of the source failed (reported as `<source>_up 0` and logged).
#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error(transparent)]
    Probe(#[from] probe::Error),
    #[error("GET {uri}: {message}")]
    Http { uri: Uri, message: String },
}

/// JSON and status pages larger than this are refused.
const MAX_BODY: usize = 16 << 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A parsed `--source`, with everything a scrape needs prepared.
enum Upstream {
    Redis {
        target: Target,
        conn: Option<Conn>,
        request: Vec<u8>,
        scratch: redis::Scratch,
    },
    Memcached {
        target: Target,
        conn: Option<Conn>,
        scratch: memcached::Scratch,
    },
    Nginx {
        uri: Uri,
        client: HttpClient,
    },
    Json {
        uri: Uri,
        client: HttpClient,
        mapping: json::Mapping,
        /// Watched: a changed mapping is loaded without a restart.
        map_file: PathBuf,
    },
}

impl Upstream {
    fn parse(source: &str) -> Result<Upstream, Error> {
        let bad = |reason: &str| Error::Source {
            url: probe::mask_password(source),
            reason: reason.to_owned(),
        };
        let http_uri = |rest: &str| -> Result<Uri, Error> {
            let uri: Uri = rest.parse().map_err(|e| bad(&format!("not a URL: {e}")))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(bad("expected http://HOST:PORT/PATH after the prefix"));
            }
            Ok(uri)
        };
        let client = || Client::builder(TokioExecutor::new()).build_http();
        if source.starts_with("redis://") {
            Ok(Upstream::Redis {
                target: Target::parse(source, "redis", 6379)?,
                conn: None,
                request: probe::encode_command(&[b"INFO", b"ALL"]),
                scratch: redis::Scratch::default(),
            })
        } else if source.starts_with("memcached://") {
            Ok(Upstream::Memcached {
                target: Target::parse(source, "memcached", 11211)?,
                conn: None,
                scratch: memcached::Scratch::default(),
            })
        } else if let Some(rest) = source.strip_prefix("nginx-status+") {
            Ok(Upstream::Nginx {
                uri: http_uri(rest)?,
                client: client(),
            })
        } else if let Some(rest) = source.strip_prefix("json+") {
            let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut map = None;
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.strip_prefix("map=") {
                    Some(file) => {
                        let file = percent_encoding::percent_decode_str(file)
                            .decode_utf8()
                            .map_err(|_| bad("map= is not UTF-8 once decoded"))?;
                        map = Some(PathBuf::from(file.as_ref()));
                    }
                    None => kept.push(pair),
                }
            }
            let map = map.ok_or_else(|| bad("a JSON source needs ?map=FILE (the mapping file)"))?;
            let uri = match kept.is_empty() {
                true => base.to_owned(),
                false => format!("{base}?{}", kept.join("&")),
            };
            Ok(Upstream::Json {
                uri: http_uri(&uri)?,
                client: client(),
                mapping: json::Mapping::load(&map)?,
                map_file: map,
            })
        } else {
            Err(bad(
                "expected redis://, memcached://, nginx-status+http:// or json+http://",
            ))
        }
    }

    /// The `<source>_up` metric's name.
    fn up_metric(&self) -> &str {
        match self {
            Upstream::Redis { .. } => "redis_up",
            Upstream::Memcached { .. } => "memcached_up",
            Upstream::Nginx { .. } => "nginx_up",
            Upstream::Json { mapping, .. } => &mapping.up_metric,
        }
    }

    /// The JSON mapping file, for a JSON source.
    fn mapping_file(&self) -> Option<&Path> {
        match self {
            Upstream::Json { map_file, .. } => Some(map_file),
            _ => None,
        }
    }

    /// What to call the source in logs (no password).
    fn display(&self) -> String {
        match self {
            Upstream::Redis { target, .. } | Upstream::Memcached { target, .. } => {
                target.display.clone()
            }
            Upstream::Nginx { uri, .. } | Upstream::Json { uri, .. } => uri.to_string(),
        }
    }

    /// Asks the source once and writes its families into `out`.
    async fn collect(&mut self, out: &mut Vec<u8>, timeout: Duration) -> Result<(), ScrapeError> {
        match self {
            Upstream::Redis {
                target,
                conn,
                request,
                scratch,
            } => {
                // A kept connection may have died since the last scrape (Redis restarted,
                // idle timeout): one retry on a fresh connection tells that from an outage.
                for attempt in 0..2 {
                    let reused = conn.is_some();
                    if !reused {
                        *conn = Some(Conn::redis_login(target, timeout).await?);
                    }
                    let c = conn.as_mut().expect("set just above");
                    match c.redis_encoded(request, timeout).await {
                        Ok(RedisReply::Bulk(Some(info))) => {
                            redis::render(info, out, scratch);
                            return Ok(());
                        }
                        Ok(other) => {
                            let error = probe::Error::Protocol {
                                addr: target.addr.clone(),
                                message: format!("INFO answered {other:?}, not a bulk string"),
                            };
                            *conn = None;
                            return Err(error.into());
                        }
                        Err(err) => {
                            *conn = None;
                            let stale = matches!(err, probe::Error::Io { .. });
                            if !(reused && stale && attempt == 0) {
                                return Err(err.into());
                            }
                        }
                    }
                }
                unreachable!("the second attempt always returns")
            }
            Upstream::Memcached {
                target,
                conn,
                scratch,
            } => {
                for attempt in 0..2 {
                    let reused = conn.is_some();
                    if !reused {
                        *conn = Some(Conn::connect(&target.addr, timeout).await?);
                    }
                    let c = conn.as_mut().expect("set just above");
                    match c.memcached(b"stats", timeout).await {
                        Ok(stats) => {
                            memcached::render(stats, out, scratch);
                            return Ok(());
                        }
                        Err(err) => {
                            *conn = None;
                            let stale = matches!(err, probe::Error::Io { .. });
                            if !(reused && stale && attempt == 0) {
                                return Err(err.into());
                            }
                        }
                    }
                }
                unreachable!("the second attempt always returns")
            }
            Upstream::Nginx { uri, client } => {
                let page = http_get(client, uri, timeout).await?;
                let status = nginx::parse(&page).map_err(|message| ScrapeError::Http {
                    uri: uri.clone(),
                    message,
                })?;
                nginx::render(&status, out);
                Ok(())
            }
            Upstream::Json {
                uri,
                client,
                mapping,
                ..
            } => {
                let body = http_get(client, uri, timeout).await?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| ScrapeError::Http {
                        uri: uri.clone(),
                        message: format!("body is not JSON: {e}"),
                    })?;
                mapping.render(&doc, out);
                Ok(())
            }
        }
    }
}

async fn http_get(client: &HttpClient, uri: &Uri, timeout: Duration) -> Result<Bytes, ScrapeError> {
    let fail = |message: String| ScrapeError::Http {
        uri: uri.clone(),
        message,
    };
    let request = http::Request::get(uri.clone())
        .header(header::USER_AGENT, "rigging-sidecar-metrics")
        .body(Empty::new())
        .map_err(|e| fail(e.to_string()))?;
    let work = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| fail(format!("{e:#}")))?;
        if !response.status().is_success() {
            return Err(fail(format!("status {}", response.status())));
        }
        Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| fail(format!("reading the body: {e}")))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| fail(format!("no answer within {timeout:?}")))?
}

/// What one scrape shares with the next, behind the adapter's lock.
struct State {
    upstream: Upstream,
    out: Vec<u8>,
    cached: Option<(Instant, Bytes)>,
    last_error: Option<String>,
    /// The adapter's own metrics, encoded, and when.
    own: Vec<u8>,
    own_at: Option<Instant>,
}

/// How long the adapter's own encoded metrics are reused.
const OWN_REFRESH: Duration = Duration::from_secs(1);

/// The adapter: its source, its cache and its own metrics.
struct Adapter {
    state: tokio::sync::Mutex<State>,
    interval: Duration,
    timeout: Duration,
    source: String,
    registry: Registry,
    requests: IntCounter,
    errors: IntCounter,
    duration: Histogram,
}

impl Adapter {
    fn new(upstream: Upstream, args: &Args, registry: Registry) -> Result<Adapter, Error> {
        let requests = IntCounter::new(
            "rigging_metrics_source_requests_total",
            "Requests the metrics adapter made to its source.",
        )
        .map_err(runtime::Error::from)?;
        let errors = IntCounter::new(
            "rigging_metrics_source_errors_total",
            "Requests to the source that failed (the scrape then reports <source>_up 0).",
        )
        .map_err(runtime::Error::from)?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "rigging_metrics_source_request_duration_seconds",
                "Time to ask the source and format its answer.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
            ]),
        )
        .map_err(runtime::Error::from)?;
        registry
            .register(Box::new(requests.clone()))
            .map_err(runtime::Error::from)?;
        registry
            .register(Box::new(errors.clone()))
            .map_err(runtime::Error::from)?;
        registry
            .register(Box::new(duration.clone()))
            .map_err(runtime::Error::from)?;
        Ok(Adapter {
            source: upstream.display(),
            state: tokio::sync::Mutex::new(State {
                upstream,
                out: Vec::with_capacity(64 << 10),
                cached: None,
                last_error: None,
                own: Vec::with_capacity(4096),
                own_at: None,
            }),
            interval: args.interval,
            timeout: args.timeout,
            registry,
            requests,
            errors,
            duration,
        })
    }

    /// One `/metrics` body: the cached one if young enough, else a fresh one.
    async fn scrape(&self) -> Bytes {
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        // Checked under the lock: scrapes that queued behind a refresh reuse its answer.
        if let Some((at, body)) = &state.cached
            && at.elapsed() < self.interval
        {
            return body.clone();
        }
        let out = &mut state.out;
        out.clear();
        let started = Instant::now();
        self.requests.inc();
        let result = state.upstream.collect(out, self.timeout).await;
        self.duration.observe(started.elapsed().as_secs_f64());
        let up = match result {
            Ok(()) => {
                if state.last_error.take().is_some() {
                    tracing::info!(source = %self.source, "source answers again");
                }
                1.0
            }
            Err(err) => {
                out.clear();
                self.errors.inc();
                let message = err.to_string();
                // Logged when it changes, not on every scrape of a long outage.
                if state.last_error.as_deref() != Some(&message) {
                    tracing::warn!(source = %self.source, error = %message, "source does not answer");
                }
                state.last_error = Some(message);
                0.0
            }
        };
        let help = "Whether the last request to the source succeeded.";
        let up_metric = state.upstream.up_metric();
        exposition::single(out, up_metric, help, exposition::Kind::Gauge, up);
        // The adapter's own families (process CPU, RSS, fds, its request counters) go
        // through the prometheus crate, whose gather reads /proc: that costs more than
        // formatting all of Redis's INFO, so it is refreshed at most once per OWN_REFRESH.
        if state.own_at.is_none_or(|at| at.elapsed() >= OWN_REFRESH) {
            state.own.clear();
            if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut state.own) {
                tracing::warn!(error = %err, "cannot encode the adapter's own metrics");
            }
            state.own_at = Some(Instant::now());
        }
        let out = &mut state.out;
        out.extend_from_slice(&state.own);
        let body = Bytes::copy_from_slice(out);
        if !self.interval.is_zero() {
            state.cached = Some((Instant::now(), body.clone()));
        }
        body
    }
}

impl admin::Routes for Adapter {
    fn route(self: Arc<Self>, path: &str) -> Option<admin::RouteFuture> {
        if path != "/metrics" {
            return None;
        }
        // The scrape runs in its own task: a client that hangs up (a Prometheus scrape
        // timeout) must not cancel it halfway through reading a reply, which would leave
        // the kept upstream connection out of step with its requests.
        let scrape = tokio::spawn(async move { self.scrape().await });
        Some(Box::pin(async move {
            let body = match scrape.await {
                Ok(body) => body,
                Err(err) => {
                    tracing::error!(error = %err, "scrape task failed");
                    let response = Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(Full::new(Bytes::from_static(b"scrape failed\n")))
                        .expect("static response parts are valid");
                    return response;
                }
            };
            Response::builder()
                .status(StatusCode::OK)
                .header(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .body(Full::new(body))
                .expect("static response parts are valid")
        }))
    }
}

/// Runs the metrics adapter until SIGTERM: `/metrics` answers from the source, `/healthz`
/// and `/readyz` say the adapter itself is up (an unreachable source is `<source>_up 0`,
/// not an unready adapter: restarting it would not bring the source back).
pub async fn run(args: Args) -> Result<(), Error> {
    let upstream = Upstream::parse(&args.source)?;
    let life = Lifecycle::new();
    let registry = Registry::new();
    let source = upstream.display();
    let map_file = upstream.mapping_file().map(Path::to_owned);
    let adapter = Arc::new(Adapter::new(upstream, &args, registry.clone())?);
    if let Some(path) = map_file {
        let reloads = IntCounterVec::new(
            Opts::new(
                "rigging_metrics_mapping_reloads_total",
                "Changes of the JSON mapping file seen, by whether the new file was used.",
            ),
            &["result"],
        )
        .map_err(runtime::Error::from)?;
        registry
            .register(Box::new(reloads.clone()))
            .map_err(runtime::Error::from)?;
        tokio::spawn(reload_mapping(adapter.clone(), path, reloads, life.clone()));
    }
    let addr = admin::spawn_with_routes(args.admin, registry, life.clone(), adapter).await?;
    tracing::info!(%addr, %source, interval = ?args.interval, "metrics adapter serving /metrics");
    life.set_ready(true);
    life.stopping().await;
    Ok(())
}

/// How often the mapping file is looked at for changes.
const MAPPING_POLL: Duration = Duration::from_secs(1);

/// Loads the JSON mapping file again whenever it changes (a ConfigMap is updated in place).
/// A file that does not load is logged and the previous mapping kept.
async fn reload_mapping(
    adapter: Arc<Adapter>,
    path: PathBuf,
    reloads: IntCounterVec,
    life: Lifecycle,
) {
    let mut changes = reload::watch_files(vec![path.clone()], MAPPING_POLL, &life);
    while changes.changed().await.is_ok() {
        match json::Mapping::load(&path) {
            Ok(new) => {
                let mut state = adapter.state.lock().await;
                if let Upstream::Json { mapping, .. } = &mut state.upstream {
                    *mapping = new;
                }
                state.cached = None;
                reloads.with_label_values(&["ok"]).inc();
                tracing::info!(file = %path.display(), "mapping file reloaded");
            }
            Err(err) => {
                reloads.with_label_values(&["error"]).inc();
                tracing::warn!(
                    error = %err,
                    "mapping file changed but cannot be used; keeping the previous mapping"
                )
            }
        }
    }
}
