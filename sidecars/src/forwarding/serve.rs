//! Serving client connections: the accept loop with its connection limit, and one
//! connection served until it ends or the sidecar drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::idle::{IdleIo, InFlight, Tracked};
use crate::runtime::Lifecycle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A server builder for client connections: HTTP/1.1 keep-alive with a header-read
/// timeout, and HTTP/2 with a stream limit.
pub fn server_builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    builder
}

/// Accepts connections until the lifecycle stops, at most `max_connections` open at once,
/// and hands each to `serve` in a tracked task (so a drain waits for it). Waiting for a
/// slot before accepting leaves excess clients in the kernel's backlog instead of
/// accepting and dropping them.
pub async fn accept_loop<F, Fut>(
    listener: &TcpListener,
    max_connections: usize,
    life: &Lifecycle,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let slot = tokio::select! {
            _ = life.stopping() => return,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = life.stopping() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, mostly: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        life.tracker().spawn(serve(tcp, peer, slot));
    }
}

/// Serves one client connection with `service` until it ends; when `stop` fires, what is
/// in flight finishes and no new request is taken (HTTP/2: GOAWAY; HTTP/1.1: close after
/// the current response). Upgrades (WebSocket) are allowed.
pub async fn serve_connection<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    stop: &CancellationToken,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// The limits of a sidecar's client connections (its flags).
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Connections open at once at most.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

/// Serves HTTP clients on `listener` until the lifecycle stops: [`accept_loop`], then each
/// connection served with the idle and header timeouts of [`IdleIo`], every request of it
/// answered by the handler `per_connection` makes for the client's address (given also
/// as a header value, for `X-Forwarded-For`). A request counts as in flight (its
/// connection is not idle) until its response body has been written.
pub async fn serve_clients<M, H, Fut, B>(
    listener: &TcpListener,
    limits: ClientLimits,
    life: &Lifecycle,
    per_connection: M,
) where
    M: Fn(SocketAddr, HeaderValue) -> H,
    H: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = Arc::new(server_builder(limits.header_timeout));
    accept_loop(listener, limits.max_connections, life, |tcp, peer, slot| {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string())
            .expect("an IP address is a valid header value");
        let handle = per_connection(peer, peer_ip);
        let builder = builder.clone();
        let stop = life.token().clone();
        async move {
            let _slot = slot;
            let in_flight = Arc::new(InFlight::default());
            let io = IdleIo::new(
                tcp,
                limits.idle_timeout,
                limits.header_timeout,
                in_flight.clone(),
            );
            let service = hyper::service::service_fn(move |req| {
                let busy = in_flight.enter();
                let response = handle(req);
                async move {
                    Ok::<_, std::convert::Infallible>(
                        response.await.map(|body| Tracked::new(body, busy)),
                    )
                }
            });
            if let Err(err) = serve_connection(&builder, io, service, &stop).await {
                tracing::debug!(%peer, error = %err, "client connection ended with an error");
            }
        }
    })
    .await
}

/// The answer hyper sent by itself when a client connection ended with `err`: `400` for a
/// request it could not parse, `431` for headers over its limit. Those never reach a
/// service, so a sidecar that counts every response counts them from here.
pub fn answered_by_hyper(err: &BoxError) -> Option<http::StatusCode> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
    while let Some(e) = source {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_parse_too_large() {
                return Some(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            if hyper.is_parse() && !hyper.is_parse_version_h2() {
                return Some(http::StatusCode::BAD_REQUEST);
            }
            return None;
        }
        source = e.source();
    }
    None
}
