//! Rigging's sidecars. Each module is one subcommand of the `rigging-sidecar` binary;
//! [`runtime`] is what they all share (admin port, logs, shutdown, reload), and
//! [`forwarding`] the HTTP data-plane core of `tls`, `shard --protocol http`, `http` and
//! `gather`.

pub mod broker;
pub mod cli;
pub mod elect;
pub mod forwarding;
pub mod gather;
pub mod health;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod probe;
pub mod queue;
pub mod runtime;
pub mod shard;
pub mod tls;
