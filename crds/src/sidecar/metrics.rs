//! `rigging-sidecar metrics`: the metrics adapter's command line.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::{SidecarArgs, duration, ports};

/// The flags of `rigging-sidecar metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct MetricsArgs {
    /// Where the stats come from: `redis://[[USER]:PASSWORD@]HOST:PORT`,
    /// `memcached://HOST:PORT`, `nginx-status+http://HOST:PORT/PATH` (a `stub_status`
    /// location) or `json+http://HOST:PORT/PATH?map=FILE` (a YAML mapping file).
    #[arg(long, env = "RIGGING_METRICS_SOURCE")]
    pub source: String,
    /// Address serving /metrics (where Prometheus scrapes), /healthz and /readyz.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::METRICS_ADMIN)))]
    pub admin: SocketAddr,
    /// How long an answer from the source is reused for further scrapes; `0s` asks the
    /// source on every scrape.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Deadline for one request to the source (connect included).
    #[arg(long, default_value = "3s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl SidecarArgs for MetricsArgs {
    const SUBCOMMAND: &'static str = "metrics";
}

impl MetricsArgs {
    /// The adapter of `source`, with every other setting at its default.
    pub fn new(source: String) -> Self {
        Self {
            source,
            admin: SocketAddr::from(([0, 0, 0, 0], ports::METRICS_ADMIN)),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}
