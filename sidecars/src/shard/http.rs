//! The HTTP front end: the key comes from a header, a path segment or a query parameter;
//! requests go to the key's server on the same ketama ring as Redis and memcached keys
//! (so adding or removing a server moves only that server's keys). Requests without a key
//! go to any live server, round robin. Clients may speak HTTP/1.1 (keep-alive) or HTTP/2
//! (cleartext, prior knowledge); servers are spoken to in HTTP/1.1 over pooled
//! keep-alive connections.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::backend::Pool;
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

type Body = Either<Incoming, Full<Bytes>>;

struct Shared {
    pools: Arc<ArcSwap<Pool>>,
    key: ShardKey,
    /// Keep-alive HTTP/1.1 connections per server address. A sender goes back on the
    /// list as soon as its request is sent and is picked again once it is ready, i.e. once
    /// that response has been read to the end.
    idle: std::sync::Mutex<std::collections::HashMap<String, Vec<SendRequest<Incoming>>>>,
    next: AtomicUsize,
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
        idle: Default::default(),
        next: AtomicUsize::new(0),
    });
    loop {
        let stream = tokio::select! {
            _ = life.stopping() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let life2 = life.clone();
        life.tracker().spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&shared, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = life2.stopping() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Sends `req` on an idle keep-alive connection to `address`, or a new one.
async fn send(
    shared: &Shared,
    address: &str,
    connect_timeout: std::time::Duration,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, String> {
    let ready = {
        let mut idle = shared.idle.lock().expect("idle connections lock");
        if !idle.contains_key(address) {
            idle.insert(address.to_owned(), Vec::new());
        }
        let list = idle.get_mut(address).expect("inserted above");
        list.retain(|s| !s.is_closed());
        list.iter()
            .position(SendRequest::is_ready)
            .map(|i| list.swap_remove(i))
    };
    let mut sender = match ready {
        Some(sender) => sender,
        None => {
            let stream =
                tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address))
                    .await
                    .map_err(|_| {
                        format!("connect timed out after {} ms", connect_timeout.as_millis())
                    })?
                    .map_err(|err| format!("connect failed: {err}"))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|err| format!("handshake failed: {err}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
        }
    };
    let response = sender.send_request(req);
    if let Some(list) = shared
        .idle
        .lock()
        .expect("idle connections lock")
        .get_mut(address)
    {
        list.push(sender);
    }
    response.await.map_err(|err| err.to_string())
}

/// Bodies up to this size are read whole before the response is written, so that headers
/// and body leave in one write instead of two.
const WHOLE_BODY: u64 = 64 * 1024;

async fn small_body_whole(resp: Response<Incoming>, limit: std::time::Duration) -> Response<Body> {
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
    match tokio::time::timeout(limit, body.collect()).await {
        Ok(Ok(collected)) => {
            Response::from_parts(parts, Either::Right(Full::new(collected.to_bytes())))
        }
        Ok(Err(err)) => {
            let msg = format!("server response body failed: {err}\n");
            error(StatusCode::BAD_GATEWAY, msg)
        }
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "server response body timed out\n".into(),
        ),
    }
}

fn error(status: StatusCode, msg: String) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(msg))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn route(shared: &Shared, mut req: Request<Incoming>) -> Response<Body> {
    let pool = shared.pools.load_full();
    let server = match shared.key.extract(&req) {
        Some(key) => pool.ring().server_for(key),
        None => pool.any_live(shared.next.fetch_add(1, Ordering::Relaxed)),
    };
    let Some(index) = server else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no live servers on the ring\n".into(),
        );
    };
    let backend = &pool.servers[index];
    // HTTP/1.1 to the server: the request target in origin form.
    let uri = match req.uri().path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        req.headers_mut().remove(hop);
    }
    backend.metrics.requests.inc();
    let started = Instant::now();
    let result = tokio::time::timeout(
        pool.timeouts.request,
        send(shared, &backend.address, pool.timeouts.connect, req),
    )
    .await;
    backend
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(resp)) => {
            pool.success(index);
            small_body_whole(resp, pool.timeouts.request).await
        }
        Ok(Err(why)) => {
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
