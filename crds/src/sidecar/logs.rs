//! `rigging-sidecar logs`: the log adapter's command line.

use std::net::SocketAddr;

use serde::Serialize;

use super::SidecarArgs;
use super::http::ByteSize;

/// The formats `--format` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// nginx `combined` (or `common`) access log.
    Nginx,
    /// Apache `combined` (or `common`) access log.
    Apache,
    /// Redis server log.
    Redis,
    /// `key=value` pairs.
    Logfmt,
    /// One JSON object per record.
    Json,
    /// `--pattern` with named capture groups.
    Regex,
}

/// The flags of `rigging-sidecar logs`.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct LogsArgs {
    /// The format of the input's records.
    #[arg(long, value_enum)]
    pub format: Format,
    /// With `--format regex`: a regex whose named groups `(?P<name>…)` become fields.
    #[arg(long, value_name = "RE")]
    pub pattern: Option<String>,
    /// A regex matching the first line of a record; other lines are joined to the record
    /// before them (stack traces).
    #[arg(long, value_name = "RE")]
    pub multiline_start: Option<String>,
    /// The log file to read, or `-` for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub input: String,
    /// Keep reading as the file grows, across rotation (like `tail -F`).
    #[arg(long)]
    pub follow: bool,
    /// With `--follow`: once this much of the file has been read, give its disk space
    /// back (punch a hole in what was read; truncate the file where holes are not
    /// supported), so that a file nothing rotates stays small. `0`: never.
    #[arg(long, value_name = "SIZE", default_value = "16Mi")]
    pub reclaim_after: ByteSize,
    /// Where records go: `-` for stdout, or a file (appended to).
    #[arg(long, value_name = "-|FILE", default_value = "-")]
    pub output: String,
    /// Admin address for /healthz, /readyz and /metrics (none when not given).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
}

impl SidecarArgs for LogsArgs {
    const SUBCOMMAND: &'static str = "logs";
}
