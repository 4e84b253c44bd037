//! The operator's admin endpoints: `/healthz` (alive), `/readyz` (started and not
//! shutting down), `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::metrics::Metrics;

/// Whether `/readyz` answers 200: set once the operator has connected to the API server
/// and is either leading or standing by, and until it starts shutting down.
#[derive(Clone, Default)]
pub struct Readiness(Arc<(AtomicBool, AtomicBool)>);

impl Readiness {
    /// Marks the process ready.
    pub fn set_ready(&self) {
        self.0.0.store(true, Ordering::Release);
    }

    /// Marks the process as shutting down: never ready again.
    pub fn set_stopping(&self) {
        self.0.1.store(true, Ordering::Release);
    }

    /// Whether the process is ready (and not shutting down).
    pub fn is_ready(&self) -> bool {
        self.0.0.load(Ordering::Acquire) && !self.is_stopping()
    }

    /// Whether the process is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.0.1.load(Ordering::Acquire)
    }
}

/// Binds `addr` and serves the admin endpoints in the background; returns the bound
/// address.
pub async fn spawn(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "admin endpoints listening");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            };
            let metrics = metrics.clone();
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = respond(&req, &metrics, &readiness);
                    async move { Ok::<_, Infallible>(response) }
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
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n",
            "text/plain; charset=utf-8",
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8"),
        "/readyz" if readiness.is_ready() => {
            text(StatusCode::OK, "ready\n", "text/plain; charset=utf-8")
        }
        "/readyz" if readiness.is_stopping() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n",
            "text/plain; charset=utf-8",
        ),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\n",
            "text/plain; charset=utf-8",
        ),
        "/metrics" => text(
            StatusCode::OK,
            &metrics.encode(),
            "text/plain; version=0.0.4",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
            "text/plain; charset=utf-8",
        ),
    }
}

fn text(status: StatusCode, body: &str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
