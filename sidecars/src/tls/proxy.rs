//! The HTTP half: every request a client sends over TLS is forwarded to the app over the
//! shared core's pooled keep-alive HTTP/1.1 connections, with `X-Forwarded-*` added,
//! bodies streamed in both directions, and upgrades (WebSocket) turned into a byte tunnel.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use super::metrics::Metrics;
use crate::forwarding::idle::{InFlight, Tracked};
use crate::forwarding::{self, Pool, PoolConfig, Pooled};

/// What the terminator sends back: the app's streamed body, or a short body of its own.
pub type Body = Either<Tracked<forwarding::ResponseBody>, Full<Bytes>>;

static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The app behind the terminator and the pool of connections to it.
pub struct Upstream {
    pool: Pool,
    authority: Authority,
    host: HeaderValue,
    bad_gateway: Bytes,
    metrics: Metrics,
    tunnels: TaskTracker,
}

impl Upstream {
    /// A pool of keep-alive connections to `authority`. `tunnels` tracks upgraded
    /// connections so that a graceful shutdown waits for them (up to its deadline).
    pub fn new(
        authority: Authority,
        pool: PoolConfig,
        metrics: Metrics,
        tunnels: TaskTracker,
    ) -> Self {
        let bad_gateway = Bytes::from(format!(
            "502 bad gateway: the app at {authority} cannot be reached\n"
        ));
        Self {
            pool: Pool::new(authority.to_string(), pool),
            host: HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value"),
            authority,
            bad_gateway,
            metrics,
            tunnels,
        }
    }
}

/// What a request needs to know about the connection it came on.
pub struct Conn {
    /// The pool and the app's address.
    pub upstream: Arc<Upstream>,
    /// The client's IP as a header value, formatted once per connection.
    pub peer_ip: HeaderValue,
    /// Requests in flight on this connection (for the idle timeout).
    pub in_flight: Arc<InFlight>,
}

impl Conn {
    /// Forwards one request and returns the app's response, or an answer of the
    /// terminator's own: 400 for a request that cannot be forwarded as it is or whose body
    /// the client broke, 502 when the app cannot be reached.
    pub async fn handle(&self, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let _busy = self.in_flight.enter();
        let up = &*self.upstream;
        let client_upgrade = forwarding::wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if let Some(why) = forwarding::host_error(&parts) {
            up.metrics.client_errors.inc();
            let status = if parts.method == http::Method::CONNECT {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                StatusCode::BAD_REQUEST
            };
            up.metrics.request(status);
            return Ok(own(forwarding::text(status, why)));
        }
        forwarding::to_origin_form(&mut parts);
        if !parts.headers.contains_key(header::HOST) {
            // HTTP/1.0 without Host: the app gets its own address, as a direct client
            // would have sent.
            parts.headers.insert(header::HOST, up.host.clone());
        }
        forwarding::strip_hop_by_hop(&mut parts.headers, client_upgrade.is_some());
        forwarding::add_forwarded_for(&mut parts.headers, &self.peer_ip);
        forwarding::set_forwarded_proto_and_host(&mut parts.headers, &HTTPS);

        let started = Instant::now();
        let request = Request::from_parts(parts, Either::Left(body));
        let mut response = match up.pool.send(request).await {
            Ok(response) => response,
            Err(failed) if failed.error.is_client_body_error() => {
                let err = failed.error;
                // The client's body was broken (a bad chunk, an aborted upload): its own
                // fault, not an app outage.
                up.metrics.client_errors.inc();
                up.metrics.request(StatusCode::BAD_REQUEST);
                tracing::debug!(error = %forwarding::error_chain(&err), "client request body failed");
                return Ok(own(forwarding::text(
                    StatusCode::BAD_REQUEST,
                    "400 bad request: the request body was malformed or cut short\n",
                )));
            }
            Err(failed) => {
                let err = failed.error;
                up.metrics.upstream_errors.inc();
                up.metrics.request(StatusCode::BAD_GATEWAY);
                tracing::warn!(upstream = %up.authority, error = %forwarding::error_chain(&err), "app unreachable, answering 502");
                return Ok(own(forwarding::text(
                    StatusCode::BAD_GATEWAY,
                    up.bad_gateway.clone(),
                )));
            }
        };
        up.metrics
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        up.metrics.request(response.status());

        match client_upgrade {
            Some(client_side) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let app_side = hyper::upgrade::on(&mut response);
                let tunnel_busy = self.in_flight.enter();
                up.tunnels.spawn(async move {
                    let _busy = tunnel_busy;
                    match tokio::try_join!(client_side, app_side) {
                        Ok((client, app)) => {
                            let mut client = TokioIo::new(client);
                            let mut app = TokioIo::new(app);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
                        }
                        Err(err) => tracing::debug!(error = %err, "upgrade failed"),
                    }
                });
            }
            _ => forwarding::strip_hop_by_hop(response.headers_mut(), false),
        }
        let busy = self.in_flight.enter();
        Ok(response.map(|body: Pooled| Either::Left(Tracked::new(Either::Left(body), busy))))
    }
}

fn own(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(Either::Right)
}
