//! The HTTP data-plane core that `tls`, `shard --protocol http`, `http` and `gather` share: one
//! treatment of hop-by-hop and forwarding headers, one pool of keep-alive connections to
//! an upstream, one way to serve a client connection with header, idle and shutdown
//! handling, one budget for extra requests. A sidecar adds only what is its own (TLS, a
//! ring, routes, a fan-out).

mod budget;
mod headers;
pub mod idle;
mod pool;
mod serve;

pub use crate::runtime::error_chain;
pub use budget::Budget;
pub use headers::{
    add_forwarded_for, host_error, set_forwarded_proto_and_host, strip_hop_by_hop, to_origin_form,
    wants_upgrade,
};
pub use pool::{Failed, Pool, PoolConfig, PoolStats, Pooled, SendError};
pub use serve::{
    ClientLimits, accept_loop, answered_by_hyper, serve_clients, serve_connection, server_builder,
};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// What is sent upstream: the client's body as it streams in, or a buffered copy (a body
/// kept so that the request can be retried or mirrored).
pub type RequestBody = Either<Incoming, Full<Bytes>>;

/// What a client gets: an upstream's body streamed through (holding its pooled
/// connection until the end), or a short body of the proxy's own.
pub type ResponseBody = Either<Pooled, Full<Bytes>>;

/// A plain-text answer of the proxy's own (an error, mostly).
pub fn text(status: StatusCode, message: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(message.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
