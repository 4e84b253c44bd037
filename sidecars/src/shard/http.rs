//! The HTTP front end: the key comes from a header, a path segment or a query parameter;
//! requests go to the key's server on the same ketama ring as Redis and memcached keys
//! (so adding or removing a server moves only that server's keys). A request without a key
//! gets `400`: no shard owns it, and sending it to any one would answer for another's data.
//! Clients may speak HTTP/1.1 (keep-alive) or HTTP/2
//! (cleartext, prior knowledge); servers are spoken to in HTTP/1.1 over the shared core's
//! pooled keep-alive connections ([`crate::forwarding`]).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use super::backend::Pool;
use crate::forwarding::{self, PoolConfig, Pooled};
use crate::runtime::Lifecycle;

/// Where an HTTP request's shard key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardKey {
    /// The value of this header.
    Header(HeaderName),
    /// The Nth path segment, counting from 1 (`/users/42/cart` with N=2 is `42`).
    Path(usize),
    /// The value of this query parameter, as sent (not percent-decoded).
    Query(String),
}

impl FromStr for ShardKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not header:NAME, path:N or query:NAME"))?;
        match kind {
            "header" => HeaderName::from_str(value)
                .map(ShardKey::Header)
                .map_err(|_| format!("{value:?} is not a valid header name")),
            "path" => match value.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(ShardKey::Path(n)),
                _ => Err(format!("path segment {value:?} must be a number from 1")),
            },
            "query" if !value.is_empty() => Ok(ShardKey::Query(value.to_owned())),
            _ => Err(format!("{s:?} is not header:NAME, path:N or query:NAME")),
        }
    }
}

impl ShardKey {
    /// Where the key was looked for, as a client is told when it is missing.
    pub fn missing(&self) -> String {
        match self {
            ShardKey::Header(name) => format!("no header {name}"),
            ShardKey::Path(n) => format!("no path segment {n}"),
            ShardKey::Query(name) => format!("no query parameter {name}"),
        }
    }

    /// The key of `req`, if it has one.
    pub fn extract<'r, B>(&self, req: &'r Request<B>) -> Option<&'r [u8]> {
        match self {
            ShardKey::Header(name) => req.headers().get(name).map(HeaderValue::as_bytes),
            ShardKey::Path(n) => req
                .uri()
                .path()
                .split('/')
                .filter(|s| !s.is_empty())
                .nth(n - 1)
                .map(str::as_bytes),
            ShardKey::Query(name) => req.uri().query()?.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then_some(v.as_bytes())
            }),
        }
    }
}

type Body = Either<Pooled, Full<Bytes>>;

struct Shared {
    pools: Arc<ArcSwap<Pool>>,
    key: ShardKey,
    /// Keep-alive HTTP/1.1 connections per server address, kept across ring reloads.
    connections: std::sync::Mutex<std::collections::HashMap<String, forwarding::Pool>>,
}

impl Shared {
    fn connections_to(
        &self,
        address: &str,
        connect_timeout: std::time::Duration,
    ) -> forwarding::Pool {
        let mut all = self.connections.lock().expect("connection pools lock");
        match all.get(address) {
            Some(pool) => pool.clone(),
            None => {
                let pool = forwarding::Pool::new(
                    address.to_owned(),
                    PoolConfig {
                        connect_timeout,
                        ..PoolConfig::default()
                    },
                );
                all.insert(address.to_owned(), pool.clone());
                pool
            }
        }
    }
}

/// Serves HTTP clients until the lifecycle stops.
pub async fn serve(
    listener: TcpListener,
    pools: Arc<ArcSwap<Pool>>,
    key: ShardKey,
    life: &Lifecycle,
) {
    let shared = Arc::new(Shared {
        pools,
        key,
        connections: Default::default(),
    });
    let builder = Arc::new(forwarding::server_builder(HEADER_TIMEOUT));
    forwarding::accept_loop(&listener, MAX_CONNECTIONS, life, |stream, _, slot| {
        let shared = shared.clone();
        let builder = builder.clone();
        let stop = life.token().clone();
        async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&shared, req).await) }
            });
            let _ = forwarding::serve_connection(&builder, stream, service, &stop).await;
        }
    })
    .await;
}

/// Longest a client may take to send a request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Client connections open at once at most (under the usual open-files limit).
const MAX_CONNECTIONS: usize = 16_384;

/// Sends `req` on the pooled connections to `address`. A client's broken body is
/// told apart from a server's failure: only the latter counts against the server.
async fn send(
    shared: &Shared,
    address: &str,
    connect_timeout: std::time::Duration,
    req: Request<Incoming>,
) -> Result<Response<Pooled>, Failure> {
    let pool = shared.connections_to(address, connect_timeout);
    pool.send(req.map(Either::Left)).await.map_err(|failed| {
        if failed.error.is_client_body_error() {
            Failure::Client
        } else {
            Failure::Server(failed.error.to_string())
        }
    })
}

enum Failure {
    /// The client's request body was malformed or cut short.
    Client,
    /// The server failed.
    Server(String),
}

/// Bodies up to this size are read whole before the response is written, so that headers
/// and body leave in one write instead of two.
const WHOLE_BODY: u64 = 64 * 1024;

async fn small_body_whole(resp: Response<Pooled>) -> Response<Body> {
    use http_body_util::BodyExt;
    let small = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= WHOLE_BODY);
    if !small {
        return resp.map(Either::Left);
    }
    let (parts, body) = resp.into_parts();
    match body.collect().await {
        Ok(collected) => {
            Response::from_parts(parts, Either::Right(Full::new(collected.to_bytes())))
        }
        Err(err) => {
            let msg = format!("server response body failed: {err}\n");
            error(StatusCode::BAD_GATEWAY, msg)
        }
    }
}

fn error(status: StatusCode, msg: String) -> Response<Body> {
    forwarding::text(status, msg).map(Either::Right)
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    if let Some(why) = forwarding::host_error(&parts) {
        return error(StatusCode::BAD_REQUEST, why.into());
    }
    forwarding::to_origin_form(&mut parts);
    forwarding::strip_hop_by_hop(&mut parts.headers, false);
    let req = Request::from_parts(parts, body);
    let Some(key) = shared.key.extract(&req) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the request has no shard key: {}\n", shared.key.missing()),
        );
    };
    let pool = shared.pools.load_full();
    let Some(index) = pool.ring().server_for(key) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no live servers on the ring\n".into(),
        );
    };
    let backend = &pool.servers[index];
    backend.metrics.requests.inc();
    let started = Instant::now();
    // One timer for the whole exchange: the response head and a small body that is read
    // whole fall under the same request timeout.
    let result = tokio::time::timeout(pool.timeouts.request, async {
        let mut resp = send(shared, &backend.address, pool.timeouts.connect, req).await?;
        forwarding::strip_hop_by_hop(resp.headers_mut(), false);
        let resp = small_body_whole(resp).await;
        // Only now: a server that stalls mid-body and times out is a failure, not both.
        pool.success(index);
        Ok(resp)
    })
    .await;
    backend
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(Failure::Client)) => error(
            StatusCode::BAD_REQUEST,
            "the request body was malformed or cut short\n".into(),
        ),
        Ok(Err(Failure::Server(why))) => {
            pool.failure(index, 1, &why);
            error(
                StatusCode::BAD_GATEWAY,
                format!("server {} unavailable: {why}\n", backend.address),
            )
        }
        Err(_) => {
            let why = format!(
                "no response within {} ms",
                pool.timeouts.request.as_millis()
            );
            pool.failure(index, 1, &why);
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("server {} unavailable: {why}\n", backend.address),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header("x-key", "abc")
            .body(())
            .unwrap()
    }

    #[test]
    fn keys_come_from_header_path_or_query() {
        let header: ShardKey = "header:X-Key".parse().unwrap();
        assert_eq!(header.extract(&req("/a")), Some(&b"abc"[..]));
        let path: ShardKey = "path:2".parse().unwrap();
        assert_eq!(path.extract(&req("/users/42/cart")), Some(&b"42"[..]));
        assert_eq!(path.extract(&req("/users")), None);
        let query: ShardKey = "query:id".parse().unwrap();
        assert_eq!(query.extract(&req("/x?a=1&id=7")), Some(&b"7"[..]));
        assert_eq!(query.extract(&req("/x?a=1")), None);
        for bad in [
            "header",
            "path:0",
            "path:x",
            "query:",
            "cookie:a",
            "header:bad name",
        ] {
            assert!(bad.parse::<ShardKey>().is_err(), "{bad}");
        }
    }
}
