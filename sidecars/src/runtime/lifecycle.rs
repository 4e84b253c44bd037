use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A sidecar's life: ready or not, running or stopping, and the in-flight work that a
/// graceful shutdown waits for. Cheap to clone; every clone sees the same state.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ready: AtomicBool,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Lifecycle {
    /// A new lifecycle: not ready, running, and listening for SIGTERM and SIGINT.
    ///
    /// Must be called inside a tokio runtime.
    pub fn new() -> Self {
        let life = Self::default();
        let on_signal = life.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received, draining");
            on_signal.stop();
        });
        life
    }

    /// Marks the sidecar ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Ready and not stopping: what `/readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire) && !self.is_stopping()
    }

    /// Starts a graceful shutdown: `/readyz` turns 503 and [`Self::stopping`] resolves.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// Whether a shutdown has started.
    pub fn is_stopping(&self) -> bool {
        self.inner.stop.is_cancelled()
    }

    /// Resolves once a shutdown has started; accept loops select on it.
    pub async fn stopping(&self) {
        self.inner.stop.cancelled().await
    }

    /// The token behind [`Self::stopping`], for code that wants a child token.
    pub fn token(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// Tracks in-flight work (connections, requests) that [`Self::drain`] waits for.
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// Waits for tracked work to finish, at most `deadline`. Returns whether everything
    /// finished in time; work still running after the deadline is abandoned when the
    /// process exits.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.inner.tracker.close();
        let finished = tokio::time::timeout(deadline, self.inner.tracker.wait())
            .await
            .is_ok();
        if finished {
            tracing::info!("drained, exiting");
        } else {
            tracing::warn!(
                in_flight = self.inner.tracker.len(),
                deadline_ms = deadline.as_millis() as u64,
                "drain deadline passed with work still in flight"
            );
        }
        finished
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the default action (exit) still applies; waiting forever
        // here just means no graceful drain, which is logged.
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(error = %err, "cannot install signal handlers; no graceful shutdown");
            std::future::pending::<()>().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopping_turns_readiness_off() {
        let life = Lifecycle::default();
        life.set_ready(true);
        assert!(life.is_ready());
        life.stop();
        assert!(!life.is_ready());
        life.stopping().await;
    }

    #[tokio::test]
    async fn drain_waits_for_tracked_work_until_the_deadline() {
        let life = Lifecycle::default();
        life.tracker()
            .spawn(tokio::time::sleep(Duration::from_millis(20)));
        assert!(life.drain(Duration::from_secs(5)).await);

        let stuck = Lifecycle::default();
        stuck
            .tracker()
            .spawn(tokio::time::sleep(Duration::from_secs(60)));
        assert!(!stuck.drain(Duration::from_millis(20)).await);
    }
}
