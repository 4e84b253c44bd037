//! Idle timeout for a client connection, in both HTTP versions.
//!
//! hyper has a header-read timeout for HTTP/1.1 but nothing that closes a quiet HTTP/2
//! connection, and a plain read timeout would cut a request waiting on a slow app. So the
//! socket is wrapped: a connection is idle when no byte moved for the timeout *and* no
//! request is in flight on it. Before its first request a connection gets only the
//! header timeout: a client that connects and sends nothing must not hold a connection
//! slot for the whole idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests in flight on one connection; shared by the socket wrapper and the service.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicUsize,
    ever: AtomicBool,
}

impl InFlight {
    /// Marks one request (or upgraded tunnel) in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.now.fetch_add(1, Ordering::Relaxed);
        self.ever.store(true, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    fn busy(&self) -> bool {
        self.now.load(Ordering::Relaxed) > 0
    }

    fn started(&self) -> bool {
        self.ever.load(Ordering::Relaxed)
    }
}

/// Ends one in-flight request when dropped.
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its connection's in-flight mark until it ends, so that a
/// response streaming slowly (server-sent events, long downloads with pauses) is not
/// mistaken for an idle connection.
pub struct Tracked<B> {
    body: B,
    _busy: InFlightGuard,
}

impl<B> Tracked<B> {
    /// Wraps `body`, marked busy by `busy`.
    pub fn new(body: B, busy: InFlightGuard) -> Self {
        Self { body, _busy: busy }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket that fails reads with `TimedOut` once the connection has been idle too long.
pub struct IdleIo<T> {
    inner: T,
    in_flight: Arc<InFlight>,
    idle: Duration,
    first_request: Duration,
    /// When the wrapper was made: a TLS connection is wrapped once its handshake is over,
    /// so this is when the client became able to send its first request.
    opened: Instant,
    last_activity: Instant,
    // Boxed once per connection: `Sleep` is `!Unpin` and the wrapper must stay `Unpin`.
    timer: Pin<Box<Sleep>>,
}

impl<T> IdleIo<T> {
    /// Wraps `inner`; `in_flight` is the connection's request counter. Until its first
    /// request, the connection is closed after `first_request` of silence.
    pub fn new(
        inner: T,
        idle: Duration,
        first_request: Duration,
        in_flight: Arc<InFlight>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            in_flight,
            idle,
            first_request,
            opened: now,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + first_request.min(idle))),
        }
    }

    /// The connection itself.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Called when a read would block: resolves only when the connection is really idle.
    /// The timer is re-armed lazily (only when it fires) so that traffic costs one clock
    /// read per I/O call, not a timer-wheel update.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            let deadline = if self.in_flight.busy() {
                now + self.idle
            } else if !self.in_flight.started() {
                // Bytes of a request still coming in (slowly) do not extend this: the
                // header timeout is for the whole head, as nginx's is.
                self.opened + self.first_request.min(self.idle)
            } else {
                self.last_activity + self.idle
            };
            if deadline <= now {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle timeout",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => match this.poll_idle(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.inner).poll_write(cx, buf));
        this.last_activity = Instant::now();
        Poll::Ready(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs));
        this.last_activity = Instant::now();
        Poll::Ready(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Real time with short durations: the assertions are about what happens, never how
    /// fast, so a slow machine only makes the test take longer.
    #[tokio::test]
    async fn a_quiet_connection_times_out_but_not_while_a_request_is_in_flight() {
        let (a, mut b) = tokio::io::duplex(64);
        let in_flight = Arc::new(InFlight::default());
        let mut io = IdleIo::new(
            a,
            Duration::from_millis(50),
            Duration::from_secs(60),
            in_flight.clone(),
        );
        let mut buf = [0u8; 8];

        // A request in flight: ten idle periods of silence are fine, data flows after.
        let guard = in_flight.enter();
        let read = tokio::spawn(async move {
            let n = io.read(&mut buf).await.unwrap();
            (io, n)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.write_all(b"hi").await.unwrap();
        let (mut io, n) = read.await.unwrap();
        assert_eq!(n, 2);
        drop(guard);

        // Nothing in flight: the next read fails once the idle time has passed.
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_connection_that_never_sends_a_request_gets_only_the_first_request_timeout() {
        let (a, _b) = tokio::io::duplex(64);
        let in_flight = Arc::new(InFlight::default());
        let mut io = IdleIo::new(
            a,
            Duration::from_secs(120),
            Duration::from_millis(50),
            in_flight,
        );
        let mut buf = [0u8; 8];
        let err = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
            .await
            .expect("held for the idle timeout, not the first-request one")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
