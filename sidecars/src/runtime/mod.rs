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
/// `RIGGING_WORKER_THREADS` caps the worker threads; by default tokio uses one per core,
/// which is what a pod's CPU limit usually wants. `RIGGING_WORKER_THREADS=1` runs everything
/// on the main thread (tokio's current-thread scheduler): with one worker, the
/// multi-thread scheduler's cross-thread machinery only costs CPU.
pub fn build_tokio() -> std::io::Result<tokio::runtime::Runtime> {
    let threads = std::env::var("RIGGING_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0);
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().thread_name("rigging-worker");
    if let Some(n) = threads.filter(|n| *n > 1) {
        builder.worker_threads(n);
    }
    builder.build()
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}
