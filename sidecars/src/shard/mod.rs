//! `rigging-sidecar shard`: a sharding ambassador for Redis, memcached and HTTP that puts
//! every key on the server twemproxy (nutcracker) 0.5 would put it on.
//!
//! - [`hash`] and [`ring`]: twemproxy's hash functions and ketama continuum.
//! - [`proxy`]: the pipelined client loop shared by [`redis`] and [`memcached`].
//! - [`backend`]: servers, pooled connections, ejection, metrics.
//! - [`http`]: the HTTP front end.
//! - [`config`]: flags and the reloadable YAML file.

pub mod backend;
pub mod config;
pub mod hash;
pub mod http;
pub mod memcached;
pub mod proxy;
pub mod redis;
pub mod ring;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::Registry;
use tokio::net::TcpListener;

use rigging_crds::sidecar::ports;

use crate::runtime::{self, Lifecycle, admin};
use backend::{Metrics, Pool};
use config::{ProtocolKind, Settings};
use proxy::Protocol;

/// Command-line arguments of `rigging-sidecar shard`. Boxed, so that the binary's
/// subcommand enum stays small.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The flags.
    #[command(flatten)]
    pub flags: Box<Flags>,
}

impl std::ops::Deref for Args {
    type Target = Flags;

    fn deref(&self) -> &Flags {
        &self.flags
    }
}

/// The flags of `rigging-sidecar shard`.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// Protocol spoken by clients and servers.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolKind>,
    /// Address clients connect to [default: 127.0.0.1:22121].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A server in twemproxy syntax, `HOST:PORT:WEIGHT [NAME]`; repeat for each server.
    #[arg(long = "server", value_name = "HOST:PORT:WEIGHT [NAME]")]
    pub servers: Vec<String>,
    /// Key hash function, as twemproxy names them.
    #[arg(long, default_value = "fnv1a_64")]
    pub hash: String,
    /// Key distribution; ketama (twemproxy's consistent hashing) is the one supported.
    #[arg(long, default_value = "ketama")]
    pub distribution: String,
    /// Two characters around the part of a key that is hashed, e.g. "{}".
    #[arg(long)]
    pub hash_tag: Option<String>,
    /// HTTP only: where the key is, `header:NAME`, `path:N` (Nth segment, from 1) or
    /// `query:NAME`.
    #[arg(long)]
    pub shard_key: Option<String>,
    /// Admin address for /healthz, /readyz and /metrics (by default the port the sidecars'
    /// port plan gives the ambassador, so it never meets the TLS terminator's).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::SHARD_ADMIN)))]
    pub admin: SocketAddr,
    /// YAML file with the same settings (snake_case); watched and reloaded on change.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Time for a batch of requests to a server, from write to last reply.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Time to connect to a server.
    #[arg(long, default_value_t = 500)]
    pub connect_timeout_ms: u64,
    /// Take a failing server off the ring (twemproxy's auto_eject_hosts).
    #[arg(long)]
    pub auto_eject_hosts: bool,
    /// Consecutive failures before a server is ejected.
    #[arg(long, default_value_t = 2)]
    pub server_failure_limit: u32,
    /// How long an ejected server stays off the ring.
    #[arg(long, default_value_t = 30_000)]
    pub server_retry_timeout_ms: u64,
    /// Redis password: required from clients (AUTH) and sent to servers.
    #[arg(long, env = "RIGGING_REDIS_AUTH", hide_env_values = true)]
    pub redis_auth: Option<String>,
    /// Connections per server shared by all clients (twemproxy's server_connections).
    #[arg(long, default_value_t = 1)]
    pub server_connections: usize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
}

/// Why the shard sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared runtime failed (bind, config file, metrics).
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// A setting is invalid.
    #[error("{origin}: invalid {field}: {message}")]
    Invalid {
        /// The config file, or "command line".
        origin: PathBuf,
        /// The setting.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Metrics could not be registered.
    #[error("cannot register shard metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Runs the `shard` sidecar until shutdown.
pub async fn run(args: Args) -> Result<(), Error> {
    let settings = config::load(&args)?;
    let life = Lifecycle::new();
    let registry = Registry::new();
    let metrics = Metrics::register(&registry)?;
    admin::spawn(args.admin, registry, life.clone()).await?;
    let listener = runtime::bind(settings.listen).await?;
    let pools = Arc::new(ArcSwap::from_pointee(Pool::new(&settings.pool, &metrics)));
    tracing::info!(
        listen = %settings.listen,
        protocol = ?settings.protocol,
        servers = settings.pool.servers.len(),
        hash = %settings.pool.hash,
        "shard ambassador listening"
    );
    if let Some(path) = args.config.clone() {
        spawn_reload(
            args.clone(),
            path,
            settings.clone(),
            pools.clone(),
            metrics,
            life.clone(),
        );
    }
    life.set_ready(true);
    match settings.protocol {
        ProtocolKind::Redis => {
            let redis = redis::Redis {
                auth: settings.redis_auth.clone(),
            };
            accept_loop(Arc::new(redis), listener, pools, &life).await;
        }
        ProtocolKind::Memcached => {
            accept_loop(Arc::new(memcached::Memcached), listener, pools, &life).await;
        }
        ProtocolKind::Http => {
            let key = settings
                .shard_key
                .clone()
                .expect("resolve requires a shard key for http");
            http::serve(listener, pools, key, &life).await;
        }
    }
    life.drain(Duration::from_millis(args.drain_timeout_ms))
        .await;
    Ok(())
}

async fn accept_loop<P: Protocol>(
    proto: Arc<P>,
    listener: TcpListener,
    pools: Arc<ArcSwap<Pool>>,
    life: &Lifecycle,
) {
    loop {
        let stream = tokio::select! {
            _ = life.stopping() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let task = proxy::serve(proto.clone(), pools.clone(), stream, life.token().clone());
        life.tracker().spawn(task);
    }
}

/// Watches the config file; a changed server list, hash or health setting builds a new
/// pool and ring. Batches in flight finish on the old pool.
fn spawn_reload(
    args: Args,
    path: PathBuf,
    mut current: Settings,
    pools: Arc<ArcSwap<Pool>>,
    metrics: Metrics,
    life: Lifecycle,
) {
    let mut changes = runtime::reload::watch_files(
        vec![path.clone()],
        Duration::from_secs(1),
        life.token().clone(),
    );
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let next = match config::load(&args) {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(error = %err, "config reload failed; keeping the running config");
                    continue;
                }
            };
            if next.listen != current.listen || next.protocol != current.protocol {
                tracing::warn!(file = %path.display(), "listen and protocol changes need a restart; ignored");
            }
            if next.redis_auth != current.redis_auth || next.shard_key != current.shard_key {
                tracing::warn!(file = %path.display(), "redis_auth and shard_key changes need a restart; ignored");
            }
            if next.pool != current.pool {
                pools.store(Arc::new(Pool::new(&next.pool, &metrics)));
                tracing::info!(servers = next.pool.servers.len(), hash = %next.pool.hash, "new ring in service");
            }
            current = next;
        }
    });
}
