//! `rigging-sidecar http`: the HTTP ambassador and application-layer tier (book ch. 3–5):
//! routes that send requests to backends or sticky splits, balancing strategies, health
//! checks and outlier ejection, retries within a budget, a circuit breaker, mirroring to
//! a shadow, a response cache and rate limits. See `docs/sidecars/http.md`.
//!
//! The config file is reloaded when it changes: a new table is compiled beside the one
//! serving and swapped in, so connections are never dropped, and a file that does not
//! compile is refused with the field it got wrong while the old table keeps serving.

mod backend;
mod cache;
mod keys;
mod metrics;
mod proxy;
mod rate_limit;
mod retry;
mod route;
mod rules;
mod split;
mod status;
mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rigging_crds::sidecar::http::{ByteSize, HttpConfig};

use crate::forwarding;
use crate::runtime::{self, Lifecycle, admin, config, reload};
use table::Table;

/// Command-line arguments of `rigging-sidecar http`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The flags themselves.
    #[command(flatten)]
    pub flags: Box<Flags>,
}

/// The flags of `rigging-sidecar http`: the contract type the operator renders.
pub use rigging_crds::sidecar::http::HttpArgs as Flags;

/// Why the ambassador could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound, or the config file could not be read or parsed.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// The config file parsed but cannot work.
    #[error("invalid config file {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The field at fault and why.
        source: rigging_crds::sidecar::http::ConfigError,
    },
    /// A metric could not be registered (a programming error).
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

fn load(
    path: &Path,
    memory_limit: Option<ByteSize>,
    previous: Option<&Table>,
    metrics: &metrics::Metrics,
) -> Result<Table, Error> {
    let file: HttpConfig = config::load_yaml(path)?;
    let fits = memory_limit.map_or(Ok(()), |limit| file.fits_in(limit));
    fits.and_then(|()| Table::compile(&file, previous, metrics))
        .map_err(|source| Error::Config {
            path: path.to_owned(),
            source,
        })
}

/// How long the ambassador waits at start for its DNS backends' first answers before it
/// calls itself ready anyway: the lookups' own timeout.
const FIRST_ANSWERS: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until every backend of `table` knows its servers (a DNS backend: once a lookup
/// answered), at most `within`. Ready before then, the ambassador would answer 502 to a
/// request it could serve a moment later — such as the app's first one: the kubelet
/// starts the app once the ambassador's `/readyz` passes (its startup probe).
async fn first_answers(table: &Table, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let waiting: Vec<&str> = table
            .backends
            .values()
            .filter(|b| !b.is_resolved())
            .map(|b| b.name.as_str())
            .collect();
        if waiting.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                ?waiting,
                "no DNS answer yet for these backends: ready anyway, answering 502 for them until one comes"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Runs the ambassador until SIGTERM/SIGINT, then drains and returns.
pub async fn run(args: Args) -> Result<(), Error> {
    let args = *args.flags;
    let life = Lifecycle::new();
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::register(&registry)?;

    // Watch before the first load, so a change racing start-up is not missed.
    let changes = reload::watch_files(vec![args.config.clone()], args.reload_interval, &life);
    let first = load(&args.config, args.memory_limit, None, &metrics)?;
    first.start(None);
    let table = Arc::new(ArcSwap::from_pointee(first));

    let listener = runtime::bind(args.listen).await?;
    admin::spawn_with_routes(
        args.admin,
        registry.clone(),
        life.clone(),
        Arc::new(status::page(table.clone())),
    )
    .await?;
    let (path, memory_limit, reload_metrics) =
        (args.config.clone(), args.memory_limit, metrics.clone());
    reload::swap_on_change(
        changes,
        table.clone(),
        (metrics.reloads_ok.clone(), metrics.reloads_failed.clone()),
        move |current: &Table| {
            let next = load(&path, memory_limit, Some(current), &reload_metrics)?;
            next.start(Some(current));
            Ok::<_, Error>(next)
        },
        {
            let path = args.config.clone();
            move |current: &Table, next: &Table| {
                current.retire(next);
                tracing::info!(config = %path.display(), routes = next.routes.len(), "config reloaded");
            }
        },
    );

    first_answers(&table.load(), FIRST_ANSWERS).await;
    life.set_ready(true);
    tracing::info!(
        listen = %args.listen,
        config = %args.config.display(),
        routes = table.load().routes.len(),
        backends = table.load().backends.len(),
        "http ambassador ready"
    );
    let limits = forwarding::ClientLimits {
        max_connections: args.max_connections as usize,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
    };
    forwarding::serve_clients(&listener, limits, &life, |peer, peer_ip| {
        let table = table.clone();
        move |req| {
            let table = table.load_full();
            let peer_ip = peer_ip.clone();
            async move { proxy::handle(&table, peer, &peer_ip, req).await }
        }
    })
    .await;
    drop(listener);
    life.drain(args.drain_timeout).await;
    for backend in table.load().backends.values() {
        backend.retire();
    }
    Ok(())
}
