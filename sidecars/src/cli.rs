//! The command line of `rigging-sidecar`, in the library so that the operator's tests parse
//! the containers it renders with exactly the parser the sidecar runs.

use clap::{Parser, Subcommand};

use crate::{batch, elect, gather, health, http, logs, metrics, queue, shard, tls};

/// `rigging-sidecar`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "rigging-sidecar",
    version,
    about = "Rigging's sidecar containers"
)]
pub struct Cli {
    /// The sidecar to run.
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand per sidecar.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// TLS terminator in front of a local app port.
    Tls(tls::Args),
    /// Sharding ambassador for Redis, memcached and HTTP.
    Shard(shard::Args),
    /// Log adapter: parses an app's log lines into one JSON object per record.
    Logs(logs::Args),
    /// Metrics adapter: exposes an app's native stats as Prometheus metrics.
    Metrics(metrics::Args),
    /// Health monitor: deep checks served as /healthz and /readyz.
    Health(health::Args),
    /// HTTP ambassador: routing, balancing, health checks, retries, splits, cache and
    /// rate limits.
    Http(http::Args),
    /// Leader election and item ownership on Leases or etcd, with fencing tokens, served
    /// on localhost.
    Elect(elect::Args),
    /// Pub/sub ambassador on NATS JetStream: publish and receive messages over HTTP on
    /// localhost, or route them with a built-in pipeline stage.
    Queue(queue::Args),
    /// Scatter/gather root: sends a request to every shard, merges the answers within a
    /// deadline, hedges slow shards.
    Gather(gather::Args),
    /// Batch output: stores a WorkQueue worker's output file in JetStream when the worker
    /// has exited.
    Output(batch::OutputArgs),
    /// Batch reduce: streams a run's outputs through a built-in reducer and stores the
    /// result once.
    Reduce(batch::ReduceArgs),
}
