//! The admin port every sidecar serves: `/healthz` (the process is alive), `/readyz`
//! (ready and not shutting down) and `/metrics` (Prometheus text format).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::Either;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};

use super::{Error, Lifecycle};

/// Binds `addr` and serves the admin endpoints in the background until the lifecycle
/// stops. Process metrics (CPU, RSS, open files) are added to `registry`.
///
/// Returns the bound address (useful with port 0).
pub async fn spawn(
    addr: SocketAddr,
    registry: Registry,
    life: Lifecycle,
) -> Result<SocketAddr, Error> {
    spawn_with_routes(addr, registry, life, Arc::new(BuiltIn)).await
}

/// A future answering one admin request (boxed: routes are chosen at run time).
pub type RouteFuture = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// A sidecar's own answers on its admin port, tried before the built-in endpoints. The
/// metrics adapter answers `/metrics` with its upstream's stats; the health monitor answers
/// `/healthz` and `/readyz` with its checks.
pub trait Routes: Send + Sync + 'static {
    /// The answer to a GET or HEAD of `path`, or `None` to fall back to the built-in one.
    /// Takes the `Arc` so the answer's future can own a handle to the sidecar's state.
    fn route(self: Arc<Self>, path: &str) -> Option<RouteFuture>;
}

/// No routes of its own: only the built-in endpoints.
struct BuiltIn;

impl Routes for BuiltIn {
    fn route(self: Arc<Self>, _path: &str) -> Option<RouteFuture> {
        None
    }
}

/// A JSON document at one path of the admin port (a sidecar's `/status`), rendered
/// afresh on every GET.
pub struct JsonPage<F> {
    path: &'static str,
    render: F,
}

impl<F: Fn() -> Vec<u8> + Send + Sync + 'static> JsonPage<F> {
    /// `render`'s document at `path`.
    pub fn new(path: &'static str, render: F) -> Self {
        Self { path, render }
    }
}

impl<F: Fn() -> Vec<u8> + Send + Sync + 'static> Routes for JsonPage<F> {
    fn route(self: Arc<Self>, path: &str) -> Option<RouteFuture> {
        (path == self.path).then(|| {
            let body = (self.render)();
            Box::pin(async move {
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response parts are valid")
            }) as RouteFuture
        })
    }
}

/// [`spawn`], with `routes` consulted before the built-in endpoints.
pub async fn spawn_with_routes(
    addr: SocketAddr,
    registry: Registry,
    life: Lifecycle,
    routes: Arc<dyn Routes>,
) -> Result<SocketAddr, Error> {
    register_process_metrics(&registry);
    let listener = super::bind(addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    tracing::info!(%local, "admin endpoints listening");
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = life.stopping() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(error = %err, "admin accept failed");
                        continue;
                    }
                },
            };
            let registry = registry.clone();
            let life = life.clone();
            let routes = routes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let own = (req.method() == Method::GET || req.method() == Method::HEAD)
                        .then(|| routes.clone().route(req.uri().path()))
                        .flatten();
                    let answer = match own {
                        Some(future) => Either::Left(future),
                        None => Either::Right(std::future::ready(respond(&req, &registry, &life))),
                    };
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn respond(
    req: &Request<Incoming>,
    registry: &Registry,
    life: &Lifecycle,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if life.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" if life.is_stopping() => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => metrics(registry),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

/// Encodes `registry` as a Prometheus text-format response.
pub fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let encoder = TextEncoder::new();
    let mut body = Vec::with_capacity(4096);
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => Response::builder()
            .header(header::CONTENT_TYPE, encoder.format_type())
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid"),
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode metrics: {err}\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("static response parts are valid")
}

fn register_process_metrics(registry: &Registry) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    // Registering twice (a sidecar calling spawn twice) is the only failure; ignore it.
    let _ = registry.register(Box::new(collector));
}
