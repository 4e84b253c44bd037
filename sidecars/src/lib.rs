//! Rigging's sidecars. Each module is one subcommand of the `rigging-sidecar` binary
//! (`batch` is two: `output` and `reduce`); [`runtime`] is what they all share (admin
//! port, logs, shutdown, reload), [`forwarding`] the HTTP data-plane core of `tls`,
//! `shard --protocol http`, `http` and `gather`, [`broker`] the JetStream layer of `queue`
//! and `batch`, and [`json`] the JSON paths and sums of `gather` and `reduce`.

pub mod batch;
pub mod broker;
pub mod cli;
pub mod elect;
pub mod forwarding;
pub mod gather;
pub mod health;
pub mod http;
pub mod json;
pub mod logs;
pub mod metrics;
pub mod probe;
pub mod queue;
pub mod runtime;
pub mod shard;
pub mod tls;
