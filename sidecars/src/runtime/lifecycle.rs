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
    /// Bumped on every SIGHUP: "reload now".
    hangups: tokio::sync::watch::Sender<u64>,
}

impl Lifecycle {
    /// A new lifecycle: not ready, running, and handling signals: SIGTERM and SIGINT
    /// start a graceful shutdown, SIGHUP asks for a reload of the config files (what
    /// logrotate recipes for twemproxy send), and SIGUSR1, SIGUSR2, SIGTTIN and SIGTTOU
    /// are logged and ignored: by default they would kill or stop the process.
    ///
    /// Must be called inside a tokio runtime.
    pub fn new() -> Self {
        let life = Self::default();
        let on_signal = life.clone();
        tokio::spawn(async move { handle_signals(on_signal).await });
        life
    }

    /// Changes on every SIGHUP; reloaders treat a change as "reload now".
    pub fn hangups(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.hangups.subscribe()
    }

    /// Asks for a reload, as SIGHUP does.
    pub fn hang_up(&self) {
        self.inner.hangups.send_modify(|n| *n += 1);
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

async fn handle_signals(life: Lifecycle) {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind| match signal(kind) {
        Ok(stream) => Some(stream),
        Err(err) => {
            tracing::warn!(signal = kind.as_raw_value(), error = %err, "cannot install a signal handler");
            None
        }
    };
    let (Some(mut term), Some(mut int)) = (
        install(SignalKind::terminate()),
        install(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) still applies: no graceful drain.
        return;
    };
    let mut hup = install(SignalKind::hangup());
    for (name, kind) in [
        ("SIGUSR1", SignalKind::user_defined1()),
        ("SIGUSR2", SignalKind::user_defined2()),
        ("SIGTTIN", SignalKind::from_raw(SIGTTIN)),
        ("SIGTTOU", SignalKind::from_raw(SIGTTOU)),
    ] {
        // A handler replaces the default action (exit for USR1/USR2, stop for TTIN/TTOU).
        if let Some(mut stream) = install(kind) {
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    tracing::info!(signal = name, "signal ignored");
                }
            });
        }
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(()) = next(&mut hup) => {
                tracing::info!("SIGHUP received: reloading the config files");
                life.hang_up();
            }
        }
    }
    tracing::info!("shutdown signal received, draining");
    life.stop();
}

/// The next delivery of `signal`, or never when it has no handler.
async fn next(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// SIGTTIN and SIGTTOU, which tokio has no names for: the same numbers on every Linux
/// architecture Rigging is built for (x86-64, arm64).
const SIGTTIN: i32 = 21;
const SIGTTOU: i32 = 22;

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
