//! The HTTP half: every request a client sends over TLS is forwarded to the app over a
//! pooled keep-alive HTTP/1.1 connection, with `X-Forwarded-*` added, bodies streamed in
//! both directions, and upgrades (WebSocket) turned into a byte tunnel.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use super::idle::{InFlight, InFlightGuard};
use super::metrics::Metrics;

/// What the terminator sends back: the app's streamed body, or a short body of its own.
pub type Body = Either<Streaming, Full<Bytes>>;

/// The app's response body on its way to the client. It holds the connection's in-flight
/// mark until the body ends, so that a response streaming slowly (server-sent events, long
/// downloads with pauses) is not mistaken for an idle connection.
pub struct Streaming {
    body: Incoming,
    _busy: InFlightGuard,
}

impl hyper::body::Body for Streaming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// The app behind the terminator and the pool of connections to it.
pub struct Upstream {
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
    bad_gateway: Bytes,
    metrics: Metrics,
    tunnels: TaskTracker,
}

impl Upstream {
    /// A pool of keep-alive connections to `authority`. `tunnels` tracks upgraded
    /// connections so that a graceful shutdown waits for them (up to its deadline).
    pub fn new(
        authority: Authority,
        connect_timeout: std::time::Duration,
        metrics: Metrics,
        tunnels: TaskTracker,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector);
        let bad_gateway = Bytes::from(format!(
            "502 bad gateway: the app at {authority} cannot be reached\n"
        ));
        Self {
            client,
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
    /// Forwards one request and returns the app's response (or 502).
    pub async fn handle(&self, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let _busy = self.in_flight.enter();
        let up = &*self.upstream;
        let client_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();

        // HTTP/2 carries the host in `:authority`; HTTP/1.1 apps expect `Host`.
        if parts.version == Version::HTTP_2
            && !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        strip_hop_by_hop(&mut parts.headers, client_upgrade.is_some());
        forwarded_headers(&mut parts.headers, &self.peer_ip);

        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(up.authority.clone());
        uri.path_and_query = Some(path);
        parts.uri = Uri::from_parts(uri).expect("scheme, authority and path are all set");
        parts.version = Version::HTTP_11;

        let started = Instant::now();
        let mut response = match up.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(err) => {
                up.metrics.upstream_errors.inc();
                up.metrics.request(StatusCode::BAD_GATEWAY);
                tracing::warn!(upstream = %up.authority, error = %error_chain(&err), "app unreachable, answering 502");
                return Ok(bad_gateway(up.bad_gateway.clone()));
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
            _ => strip_hop_by_hop(response.headers_mut(), false),
        }
        let busy = self.in_flight.enter();
        Ok(response.map(|body| Either::Left(Streaming { body, _busy: busy })))
    }
}

fn bad_gateway(body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An HTTP/1.1 `Connection: upgrade` request with an `Upgrade` header.
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Removes headers that describe one hop, not the message (RFC 9110 §7.6.1): the
/// client's `Connection: close` must not close the pooled connection to the app. On an
/// upgrade, `Connection: upgrade` and `Upgrade` are exactly what must pass.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    if headers.contains_key(header::CONNECTION) {
        // Headers the sender named in `Connection` are hop-by-hop too. Rare: only then
        // is anything collected.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|name| !(upgrading && name == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if upgrading {
        headers.insert(header::CONNECTION, UPGRADE.clone());
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// `X-Forwarded-For` gets the client's address appended (as nginx's
/// `$proxy_add_x_forwarded_for` does); `-Proto` and `-Host` are set by the terminator
/// alone, since only it knows them.
fn forwarded_headers(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    match headers.get(&X_FORWARDED_FOR) {
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        }
        Some(earlier) => {
            let mut joined = Vec::with_capacity(earlier.len() + 2 + peer_ip.len());
            joined.extend_from_slice(earlier.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer_ip.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&joined) {
                headers.insert(X_FORWARDED_FOR.clone(), value);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HTTPS.clone());
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn a_clients_connection_close_and_named_headers_do_not_reach_the_app() {
        let mut h = headers(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn an_upgrade_keeps_connection_upgrade_and_the_upgrade_header() {
        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn forwarded_for_appends_and_proto_and_host_are_overwritten() {
        let mut h = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("host", "shop.example"),
        ]);
        forwarded_headers(&mut h, &HeaderValue::from_static("192.0.2.7"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example");

        let mut spoofed = headers(&[("x-forwarded-host", "evil.example")]);
        forwarded_headers(&mut spoofed, &HeaderValue::from_static("192.0.2.7"));
        assert_eq!(spoofed["x-forwarded-for"], "192.0.2.7");
        assert!(!spoofed.contains_key("x-forwarded-host"));
    }
}
