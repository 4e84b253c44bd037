//! `rigging-sidecar tls`: the TLS terminator's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{SidecarArgs, duration};

/// The flags of `rigging-sidecar tls`.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct TlsArgs {
    /// Address to accept TLS connections on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The app, as HOST:PORT; it is spoken to in plain HTTP/1.1.
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: String,
    /// PEM certificate chain, leaf first. Reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// PEM private key matching --cert. Reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// PEM CA bundle: when given, clients must present a certificate it signed.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Admin address for /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Longest a client may take to complete the TLS handshake.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Longest a client may take to send a request's headers (HTTP/1.1).
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    #[arg(long, default_value = "2m", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Longest to wait for the app to accept a connection before answering 502.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// On SIGTERM, how long in-flight requests get to finish before the process exits.
    #[arg(long, default_value = "20s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Idle keep-alive connections to the app kept at most (nginx's `keepalive N`); a
    /// burst past it leaves no more than this many open once it is over.
    #[arg(long, default_value_t = 64)]
    pub max_idle_upstream: usize,
    /// Most client connections open at once; further clients wait in the listen backlog.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Turns off session resumption (tickets and the session cache): every handshake is a
    /// full one. For measuring handshake cost; leave it on in production.
    #[arg(long)]
    pub no_session_resumption: bool,
    /// Sessions kept for TLS 1.2 resumption by session ID.
    #[arg(long, default_value_t = 4096)]
    pub session_cache_size: usize,
    /// How often the certificate files are checked for changes.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

impl SidecarArgs for TlsArgs {
    const SUBCOMMAND: &'static str = "tls";
}

impl TlsArgs {
    /// The terminator with every setting at its default, but for what has none.
    pub fn new(listen: SocketAddr, upstream: String, cert: PathBuf, key: PathBuf) -> Self {
        Self {
            listen,
            upstream,
            cert,
            key,
            client_ca: None,
            admin: None,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(20),
            max_idle_upstream: 64,
            max_connections: 4096,
            no_session_resumption: false,
            session_cache_size: 4096,
            reload_interval: Duration::from_secs(1),
        }
    }
}
