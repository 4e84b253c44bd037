//! `rigging-sidecar health`: the health monitor's command line.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::{SidecarArgs, duration, ports};

/// The flags of `rigging-sidecar health`.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct HealthArgs {
    /// A check, repeatable: `http://…`, `tcp://HOST:PORT`, `redis://…`,
    /// `memcached://HOST:PORT`, `postgres://…` or `exec:COMMAND`, with options after `#`
    /// (`name=`, `optional`, `liveness`, `timeout=`, `status=`, `body=`, `query=`).
    #[arg(long = "check", required = true)]
    #[serde(rename = "check")]
    pub checks: Vec<String>,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::HEALTH_ADMIN)))]
    pub admin: SocketAddr,
    /// Time between the end of one run of a check and the start of the next.
    #[arg(long, default_value = "5s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Deadline for one run of a check (overridden per check by `timeout=`).
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Consecutive failures that turn a passing check failing.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub failure_threshold: u32,
    /// Consecutive successes that turn a failing check passing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub success_threshold: u32,
}

impl SidecarArgs for HealthArgs {
    const SUBCOMMAND: &'static str = "health";
}

impl HealthArgs {
    /// A monitor of `checks`, with every other setting at its default.
    pub fn new(checks: Vec<String>) -> Self {
        Self {
            checks,
            admin: SocketAddr::from(([0, 0, 0, 0], ports::HEALTH_ADMIN)),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}
