//! `rigging-sidecar shard`: a sharding ambassador for Redis, memcached and HTTP that puts
//! every key on the server twemproxy (nutcracker) 0.5 would put it on.
//!
//! - [`hash`] and [`ring`]: twemproxy's hash functions and ketama continuum, from
//!   `rigging_crds::sidecar::shard` (the operator computes with the same code).
//! - [`proxy`]: the pipelined client loop shared by [`redis`] and [`memcached`].
//! - [`backend`]: servers, pooled connections, ejection, metrics.
//! - [`http`]: the HTTP front end.
//! - [`config`]: flags and the reloadable YAML file ([`Args`], [`ShardConfig`]: the
//!   contract types of `rigging_crds::sidecar::shard`) resolved into settings.
//!
//! The admin port also answers [`RING_PATH`] with the ring in service ([`RingReport`]):
//! what the operator waits on before it removes a shard.

pub mod backend;
pub mod config;
pub mod http;
pub mod memcached;
pub mod proxy;
pub mod redis;

pub use rigging_crds::sidecar::shard::{hash, ring};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Response, header};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::runtime::{self, Lifecycle, admin};
use backend::{Metrics, Pool};
use config::Settings;

/// Command-line arguments of `rigging-sidecar shard`: the contract type the operator
/// renders.
pub use rigging_crds::sidecar::shard::ShardArgs as Args;
/// The wire protocol, and the YAML config file (`--config`, what the operator is to write).
pub use rigging_crds::sidecar::shard::{Protocol, ShardConfig};
/// The ring in service as the admin port reports it, where, and the file version it names.
pub use rigging_crds::sidecar::shard::{RING_PATH, RingReport, ring_version};

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
    let report = Arc::new(RingPage(ArcSwap::from_pointee(report_of(&settings))));
    admin::spawn_with_routes(args.admin, registry, life.clone(), report.clone()).await?;
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
            report,
            metrics,
            life.clone(),
        );
    }
    life.set_ready(true);
    match settings.protocol {
        Protocol::Redis => {
            let redis = redis::Redis {
                auth: settings.redis_auth.clone(),
            };
            accept_loop(Arc::new(redis), listener, pools, &life).await;
        }
        Protocol::Memcached => {
            accept_loop(Arc::new(memcached::Memcached), listener, pools, &life).await;
        }
        Protocol::Http => {
            let key = settings
                .shard_key
                .clone()
                .expect("resolve requires a shard key for http");
            http::serve(listener, pools, key, &life).await;
        }
    }
    life.drain(args.drain_timeout).await;
    Ok(())
}

async fn accept_loop<P: proxy::Protocol>(
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

/// The ring in service, answered on [`RING_PATH`].
struct RingPage(ArcSwap<RingReport>);

impl admin::Routes for RingPage {
    fn route(self: Arc<Self>, path: &str) -> Option<admin::RouteFuture> {
        (path == RING_PATH).then(|| {
            let body = serde_json::to_vec(&**self.0.load()).expect("the report serializes");
            Box::pin(async move {
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response parts are valid")
            }) as admin::RouteFuture
        })
    }
}

/// What [`RING_PATH`] says of `settings` once they are in service.
fn report_of(settings: &Settings) -> RingReport {
    RingReport {
        version: settings.version.clone(),
        members: settings
            .pool
            .servers
            .iter()
            .map(ring::ServerSpec::ring_name)
            .collect(),
    }
}

/// Watches the config file; a changed server list, hash or health setting builds a new
/// pool and ring. Batches in flight finish on the old pool, and the new ring is reported
/// once they have: after the old pool's connect and request timeouts, the longest a batch
/// planned on it can still reach one of its servers.
fn spawn_reload(
    args: Args,
    path: PathBuf,
    mut current: Settings,
    pools: Arc<ArcSwap<Pool>>,
    report: Arc<RingPage>,
    metrics: Metrics,
    life: Lifecycle,
) {
    let mut changes =
        runtime::reload::watch_files(vec![path.clone()], Duration::from_secs(1), &life);
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let next = match config::load(&args) {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(error = %err, "config reload failed; keeping the running config");
                    continue;
                }
            };
            // Compared with what runs, not with the previous file: a restart-only change
            // is reported on every reload until the process restarts.
            for (setting, changed) in [
                ("listen", next.listen != current.listen),
                ("protocol", next.protocol != current.protocol),
                ("redis_auth", next.redis_auth != current.redis_auth),
                ("shard_key", next.shard_key != current.shard_key),
            ] {
                if changed {
                    tracing::warn!(file = %path.display(), setting, "this setting changed in the file but needs a restart; still running with the old value");
                }
            }
            if next.pool != current.pool {
                pools.store(Arc::new(Pool::new(&next.pool, &metrics)));
                tracing::info!(servers = next.pool.servers.len(), hash = %next.pool.hash, version = next.version.as_deref().unwrap_or_default(), "new ring in service");
                let drain = current.pool.timeouts.connect + current.pool.timeouts.request;
                current.pool = next.pool;
                tokio::select! {
                    _ = life.stopping() => return,
                    _ = tokio::time::sleep(drain) => {}
                }
            } else {
                tracing::info!(file = %path.display(), "config reloaded; the ring is unchanged");
            }
            current.version = next.version;
            report.0.store(Arc::new(report_of(&current)));
        }
    });
}
