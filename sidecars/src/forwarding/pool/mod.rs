//! Keep-alive HTTP/1.1 connections to one upstream address.
//!
//! A connection goes back to the idle list when its response body has been read to the
//! end, and is taken again by the next request. Three things a plain pool gets wrong are
//! handled here:
//! - an idle connection the server closed (its keep-alive timeout, a restart) is found
//!   out when a request is handed to it; hyper gives back a request it never wrote, and it
//!   goes on another connection, so a closed idle connection costs the client nothing;
//! - the idle list is capped (nginx's `keepalive N`), so a burst does not leave a thousand
//!   idle sockets behind, and idle connections close after `idle_timeout`;
//! - with `max_connections`, requests past it wait for a connection, at most
//!   `max_pending` of them; the rest fail at once ([`SendError::Overloaded`]): the circuit
//!   breaker's fast 503 instead of an unbounded queue.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::RequestBody;

/// How a pool treats its connections.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Longest to wait for the upstream to accept a connection.
    pub connect_timeout: Duration,
    /// Idle connections kept at most.
    pub max_idle: usize,
    /// An idle connection unused this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once at most; 0 for no limit.
    pub max_connections: usize,
    /// With `max_connections`, requests that may wait for a connection; past them a
    /// request fails at once.
    pub max_pending: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            max_idle: 64,
            idle_timeout: Duration::from_secs(60),
            max_connections: 0,
            max_pending: 0,
        }
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (refused, timed out, or closed before the request was
    /// written): the request never left, so it is always safe to try elsewhere.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The upstream.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// Every connection allowed is busy and too many requests are waiting already.
    #[error(
        "{address} is at its limit of {max_connections} connections and {max_pending} waiting requests"
    )]
    Overloaded {
        /// The upstream.
        address: String,
        /// Its connection limit.
        max_connections: usize,
        /// Its pending limit.
        max_pending: usize,
    },
    /// The request was (at least partly) written and then the exchange failed: the
    /// upstream may have acted on it.
    #[error("{address}: {source}")]
    Upstream {
        /// The upstream.
        address: String,
        /// hyper's error.
        source: hyper::Error,
    },
}

impl SendError {
    /// Whether the upstream may have seen the request: only then is a retry unsafe for a
    /// method that is not idempotent.
    pub fn may_have_been_sent(&self) -> bool {
        matches!(self, SendError::Upstream { .. })
    }

    /// Whether the client's own request body failed (a bad chunk, an aborted upload): the
    /// client's fault, not the upstream's.
    pub fn is_client_body_error(&self) -> bool {
        match self {
            SendError::Upstream { source, .. } => {
                use std::error::Error;
                // hyper reports a failing request body as a user error whose cause is
                // the body's own hyper error (from the server side of the proxy).
                source.is_user()
                    || source
                        .source()
                        .and_then(|cause| cause.downcast_ref::<hyper::Error>())
                        .is_some_and(|inner| {
                            inner.is_parse()
                                || inner.is_incomplete_message()
                                || inner.is_body_write_aborted()
                                || inner.is_canceled()
                        })
            }
            _ => false,
        }
    }
}

/// A request that got no response: why, and the request itself when it never left.
#[derive(Debug)]
pub struct Failed {
    /// Why.
    pub error: SendError,
    /// The request, when no byte of it was written.
    pub unsent: Option<Request<RequestBody>>,
}

impl Failed {
    fn unsent(error: SendError, request: Request<RequestBody>) -> Self {
        Self {
            error,
            unsent: Some(request),
        }
    }

    fn sent(error: SendError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

/// What a pool has now, for `/status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    /// Connections open.
    pub open: usize,
    /// Of them, idle.
    pub idle: usize,
    /// Requests waiting for a connection.
    pub pending: usize,
}

/// A pool of connections to one upstream. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    address: String,
    config: PoolConfig,
    idle: Mutex<Vec<(SendRequest<RequestBody>, Instant)>>,
    /// Woken when a connection goes back on the idle list, for requests waiting on one.
    checked_in: Notify,
    /// One permit per open connection, with `max_connections`.
    slots: Option<Arc<Semaphore>>,
    pending: AtomicUsize,
    /// Held by each connection's task too, so it outlives neither.
    open: Arc<AtomicUsize>,
}

enum Connection {
    Idle(SendRequest<RequestBody>),
    New(Option<OwnedSemaphorePermit>),
}

impl Pool {
    /// A pool for `address` (`HOST:PORT`). Idle connections are swept in the background
    /// for as long as the pool exists.
    pub fn new(address: String, config: PoolConfig) -> Self {
        let slots =
            (config.max_connections > 0).then(|| Arc::new(Semaphore::new(config.max_connections)));
        let inner = Arc::new(Inner {
            address,
            config,
            idle: Mutex::new(Vec::new()),
            checked_in: Notify::new(),
            slots,
            pending: AtomicUsize::new(0),
            open: Arc::new(AtomicUsize::new(0)),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// The upstream's address.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Connections open, idle and waited for, now.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            open: self.inner.open.load(Ordering::Relaxed),
            idle: self.inner.idle.lock().expect("idle list lock").len(),
            pending: self.inner.pending.load(Ordering::Relaxed),
        }
    }

    /// Sends `req` (in origin form, with its `Host`) and returns the response, whose body
    /// gives the connection back when it has been read to the end. A request that never
    /// left comes back with the error, so that it can go elsewhere whatever its body.
    pub async fn send(&self, mut req: Request<RequestBody>) -> Result<Response<Pooled>, Failed> {
        loop {
            let connection = match self.obtain().await {
                Ok(connection) => connection,
                Err(error) => return Err(Failed::unsent(error, req)),
            };
            match connection {
                Connection::Idle(mut sender) => {
                    if sender.ready().await.is_err() {
                        continue;
                    }
                    match sender.try_send_request(req).await {
                        Ok(response) => return Ok(self.wrap(response, sender)),
                        Err(mut err) => match err.take_message() {
                            // The connection was dead before the request was written:
                            // nothing reached the server, so it goes on another one.
                            Some(unsent) => req = unsent,
                            None => return Err(Failed::sent(self.upstream(err.into_error()))),
                        },
                    }
                }
                Connection::New(permit) => {
                    // Boxed: connecting is rare next to reusing, and its state would
                    // otherwise be part of every request's future.
                    let mut sender = match Box::pin(self.connect(permit)).await {
                        Ok(sender) => sender,
                        Err(error) => return Err(Failed::unsent(error, req)),
                    };
                    return match sender.try_send_request(req).await {
                        Ok(response) => Ok(self.wrap(response, sender)),
                        Err(mut err) => match err.take_message() {
                            Some(unsent) => {
                                let error = SendError::Connect {
                                    address: self.inner.address.clone(),
                                    reason: format!(
                                        "closed before the request was written: {}",
                                        err.error()
                                    ),
                                };
                                Err(Failed::unsent(error, unsent))
                            }
                            None => Err(Failed::sent(self.upstream(err.into_error()))),
                        },
                    };
                }
            }
        }
    }

    fn upstream(&self, source: hyper::Error) -> SendError {
        SendError::Upstream {
            address: self.inner.address.clone(),
            source,
        }
    }

    /// An idle connection, or the right to open one, or a wait for either.
    async fn obtain(&self) -> Result<Connection, SendError> {
        if let Some(sender) = self.checkout() {
            return Ok(Connection::Idle(sender));
        }
        let Some(slots) = &self.inner.slots else {
            return Ok(Connection::New(None));
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Ok(Connection::New(Some(permit)));
        }
        let config = &self.inner.config;
        if self.inner.pending.fetch_add(1, Ordering::AcqRel) >= config.max_pending {
            self.inner.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Overloaded {
                address: self.inner.address.clone(),
                max_connections: config.max_connections,
                max_pending: config.max_pending,
            });
        }
        let _waiting = Waiting(&self.inner.pending);
        loop {
            tokio::select! {
                permit = slots.clone().acquire_owned() => {
                    return Ok(Connection::New(Some(permit.expect("the semaphore is never closed"))));
                }
                _ = self.inner.checked_in.notified() => {
                    if let Some(sender) = self.checkout() {
                        return Ok(Connection::Idle(sender));
                    }
                }
            }
        }
    }

    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.inner.idle.lock().expect("idle list lock");
        // Most recently used first: it is the least likely to have been closed.
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < self.inner.config.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(
        &self,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<SendRequest<RequestBody>, SendError> {
        let address = &self.inner.address;
        let failed = |reason: String| SendError::Connect {
            address: address.clone(),
            reason,
        };
        let timeout = self.inner.config.connect_timeout;
        let stream =
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address.as_str()))
                .await
                .map_err(|_| {
                    failed(format!(
                        "no answer within {}",
                        humantime::format_duration(timeout)
                    ))
                })?
                .map_err(|err| failed(err.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| failed(err.to_string()))?;
        let open = self.inner.open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = connection.with_upgrades().await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(sender)
    }

    fn wrap(
        &self,
        response: Response<Incoming>,
        sender: SendRequest<RequestBody>,
    ) -> Response<Pooled> {
        // An upgraded connection belongs to its tunnel now.
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return response.map(|body| Pooled {
                body,
                checkin: None,
            });
        }
        let mut checkin = Some(Checkin {
            sender,
            pool: self.inner.clone(),
        });
        if response.body().is_end_stream()
            && let Some(checkin) = checkin.take()
        {
            checkin.back();
        }
        response.map(|body| Pooled { body, checkin })
    }
}

/// Counts one request waiting for a connection until it stops waiting.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Checkin {
    sender: SendRequest<RequestBody>,
    pool: Arc<Inner>,
}

impl Checkin {
    fn back(self) {
        let inner = &self.pool;
        {
            let mut idle = inner.idle.lock().expect("idle list lock");
            if idle.len() >= inner.config.max_idle || self.sender.is_closed() {
                return;
            }
            idle.push((self.sender, Instant::now()));
        }
        inner.checked_in.notify_one();
    }
}

/// Closes idle connections past their idle timeout, until the pool is gone.
async fn sweep(pool: Weak<Inner>) {
    let period = match pool.upgrade() {
        Some(inner) => (inner.config.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = pool.upgrade() else { return };
        let timeout = inner.config.idle_timeout;
        inner
            .idle
            .lock()
            .expect("idle list lock")
            .retain(|(sender, since)| !sender.is_closed() && since.elapsed() < timeout);
    }
}

/// An upstream's response body. When it has been read to the end, its connection goes
/// back to the pool; dropped before that, the connection is closed (its state is unknown).
pub struct Pooled {
    body: Incoming,
    checkin: Option<Checkin>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("returns_connection", &self.checkin.is_some())
            .finish()
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => {
                if let Some(checkin) = this.checkin.take() {
                    checkin.back();
                }
            }
            Some(Ok(_)) if this.body.is_end_stream() => {
                if let Some(checkin) = this.checkin.take() {
                    checkin.back();
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => this.checkin = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
