//! Rigging's sidecars. Each module is one subcommand of the `rigging-sidecar` binary;
//! [`runtime`] is what they all share (admin port, logs, shutdown, reload).

pub mod cli;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod probe;
pub mod runtime;
pub mod shard;
pub mod tls;
