//! What every sidecar shares: JSON logs, the admin port (`/healthz`, `/readyz`,
//! `/metrics`), graceful shutdown, config files and hot reload.
//!
//! A sidecar's `run` typically looks like:
//!
//! ```no_run
//! # async fn demo() -> Result<(), rigging_sidecar::runtime::Error> {
//! use rigging_sidecar::runtime::{admin, Lifecycle};
//! let life = Lifecycle::new();
//! let registry = prometheus::Registry::new();
//! admin::spawn("127.0.0.1:9901".parse().unwrap(), registry.clone(), life.clone()).await?;
//! life.set_ready(true);
//! // ... accept connections, each one spawned with `life.tracker().spawn(..)`,
//! // stopping when `life.stopping()` resolves ...
//! life.drain(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod config;
mod lifecycle;
pub mod reload;
pub mod telemetry;

pub use lifecycle::Lifecycle;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the shared runtime. Every variant names the file or address involved, so the
/// message alone tells an operator what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A YAML config file did not parse into the expected shape.
    #[error("invalid config file {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column where known.
        message: String,
    },
    /// A metric could not be registered (a programming error: duplicate names).
    #[error("cannot register metric: {0}")]
    Metric(#[from] prometheus::Error),
}

/// The tokio runtime every sidecar runs on.
///
/// Worker threads: `RIGGING_WORKER_THREADS` when set, else one per CPU the process may use
/// (`available_parallelism` follows the container's CPU set and CPU quota, so a sidecar
/// with a CPU limit of 1 or less gets one). With one thread the sidecar runs on tokio's
/// current-thread scheduler: on one CPU the multi-thread scheduler's cross-thread
/// machinery buys nothing and cost the TLS terminator about a quarter more CPU per request
/// (docs/benchmarks.md).
pub fn build_tokio() -> std::io::Result<tokio::runtime::Runtime> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = worker_threads(
        std::env::var("RIGGING_WORKER_THREADS").ok().as_deref(),
        available,
    );
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut multi = tokio::runtime::Builder::new_multi_thread();
        multi.worker_threads(threads);
        multi
    };
    builder.enable_all().thread_name("rigging-worker");
    builder.build()
}

/// `RIGGING_WORKER_THREADS` when it is a positive number, else the CPUs available.
fn worker_threads(env: Option<&str>, available: usize) -> usize {
    env.and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(available)
        .max(1)
}

/// An error with its causes, `outer: inner: innermost`, for one log field or the line a
/// person reads. A cause whose text the message before it already holds is not repeated:
/// most errors here name their cause in their own message (`cannot listen on ADDR:
/// CAUSE`) and also return it as `source()`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_names_is_said_once() {
        let err = Error::Bind {
            addr: "0.0.0.0:9901".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let text = error_chain(&err);
        assert_eq!(text.matches("address in use").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot listen on 0.0.0.0:9901: "),
            "{text}"
        );
    }

    #[test]
    fn worker_threads_follow_the_cpus_unless_the_env_says_otherwise() {
        assert_eq!(worker_threads(None, 1), 1);
        assert_eq!(worker_threads(None, 4), 4);
        assert_eq!(worker_threads(Some("2"), 1), 2);
        assert_eq!(worker_threads(Some("1"), 8), 1);
        // Nonsense falls back to the CPUs rather than refusing to start.
        assert_eq!(worker_threads(Some("0"), 3), 3);
        assert_eq!(worker_threads(Some("many"), 3), 3);
        assert_eq!(worker_threads(None, 0), 1);
    }
}
