//! `rigging-sidecar gather`: the scatter/gather root (book ch. 7). A client's request goes
//! to one replica of every shard at once; the answers are merged (`concat`, `topK`, `sum`,
//! `first`, or a merger of the app's own) and returned with their coverage. The request
//! has a deadline: at it, the root answers with the shards that answered and cancels the
//! rest, or refuses with 502 when fewer than `minShards` did. A slow shard can be hedged
//! ("The Tail at Scale"): a backup request to another replica, within a budget that is a
//! share of the live traffic. See `docs/sidecars/gather.md`.
//!
//! - `scatter`: the fan-out, failover, hedges, the deadline and cancellation;
//! - `merge`: the JSON merges, pure;
//! - `reply`: results to the client's answer, coverage and refusals;
//! - `table`: the compiled config, reloaded without dropping a request.

mod merge;
mod metrics;
mod reply;
mod scatter;
mod status;
mod table;
mod window;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use rigging_crds::sidecar::gather::{ConfigError, GatherConfig};
use tokio::time::Instant;

use crate::forwarding;
use crate::runtime::{self, Lifecycle, admin, config, reload};
use metrics::Metrics;
use scatter::Outgoing;
use table::{Plan, Table};

/// Command-line arguments of `rigging-sidecar gather`: the contract type the operator
/// renders.
pub use rigging_crds::sidecar::gather::GatherArgs as Args;

/// Why the root could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound, the config file could not be read or parsed, or a
    /// metric could not be registered.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// The config file parsed but cannot work.
    #[error("invalid config file {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The field at fault and why.
        source: ConfigError,
    },
}

/// The share of the deadline kept for the merger when the merge is `merger`: the fan-out
/// stops at 90 % of the deadline so that a shard answering at the last moment does not
/// leave the merger no time at all.
const MERGER_SHARE: f64 = 0.1;

fn load(
    path: &Path,
    previous: Option<&Table>,
    metrics: &Metrics,
    max_leaf_body: usize,
) -> Result<Table, Error> {
    let file: GatherConfig = config::load_yaml(path)?;
    Table::compile(&file, previous, metrics, max_leaf_body).map_err(|source| Error::Config {
        path: path.to_owned(),
        source,
    })
}

/// Runs the root until SIGTERM/SIGINT, then drains and returns.
pub async fn run(args: Args) -> Result<(), Error> {
    let life = Lifecycle::new();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).map_err(runtime::Error::from)?;
    let max_leaf_body = usize::try_from(args.max_leaf_body).unwrap_or(usize::MAX);

    // Watch before the first load, so a change racing start-up is not missed.
    let changes = reload::watch_files(vec![args.config.clone()], args.reload_interval, &life);
    let first = load(&args.config, None, &metrics, max_leaf_body)?;
    let table = Arc::new(ArcSwap::from_pointee(first));

    let listener = runtime::bind(args.listen).await?;
    admin::spawn_with_routes(
        args.admin,
        registry,
        life.clone(),
        Arc::new(status::page(table.clone(), metrics.clone())),
    )
    .await?;
    let (path, shown) = (args.config.clone(), args.config.clone());
    let (reload_metrics, forget) = (metrics.clone(), metrics.clone());
    reload::swap_on_change(
        changes,
        table.clone(),
        (metrics.reloads_ok.clone(), metrics.reloads_failed.clone()),
        move |current: &Table| load(&path, Some(current), &reload_metrics, max_leaf_body),
        move |current: &Table, next: &Table| {
            for gone in next.shards.len()..current.shards.len() {
                forget.forget_shard(gone);
            }
            tracing::info!(config = %shown.display(), shards = next.shards.len(), "config reloaded");
        },
    );

    life.set_ready(true);
    tracing::info!(
        listen = %args.listen,
        config = %args.config.display(),
        shards = table.load().shards.len(),
        merge = table.load().plan.name(),
        "scatter/gather root ready"
    );
    let max_request_body = usize::try_from(args.max_request_body).unwrap_or(usize::MAX);
    let limits = forwarding::ClientLimits {
        max_connections: args.max_connections as usize,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
    };
    forwarding::serve_clients(&listener, limits, &life, |_peer, peer_ip| {
        let (table, metrics) = (table.clone(), metrics.clone());
        move |req| {
            let (table, metrics) = (table.load_full(), metrics.clone());
            let peer_ip = peer_ip.clone();
            async move { handle(&table, &metrics, &peer_ip, max_request_body, req).await }
        }
    })
    .await;
    drop(listener);
    life.drain(args.drain_timeout).await;
    Ok(())
}

/// Answers one client request: reads its body, scatters it, gathers the answers.
async fn handle(
    table: &Table,
    metrics: &Metrics,
    peer_ip: &HeaderValue,
    max_request_body: usize,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let arrived = Instant::now();
    let deadline = arrived + table.deadline;
    let (mut parts, body) = req.into_parts();
    if let Some(problem) = forwarding::host_error(&parts) {
        metrics.outcomes.invalid.inc();
        let status = if parts.method == Method::CONNECT {
            StatusCode::METHOD_NOT_ALLOWED
        } else {
            StatusCode::BAD_REQUEST
        };
        return forwarding::text(status, problem);
    }
    let body = match read_body(body, max_request_body).await {
        Ok(body) => body,
        Err(refusal) => {
            metrics.outcomes.invalid.inc();
            return refusal;
        }
    };
    forwarding::to_origin_form(&mut parts);
    forwarding::strip_hop_by_hop(&mut parts.headers, false);
    // The root has read the body already: a leaf asked to wait for `100 Continue` would
    // only be told what it is getting anyway.
    parts.headers.remove(http::header::EXPECT);
    forwarding::add_forwarded_for(&mut parts.headers, peer_ip);
    let outgoing = Outgoing {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    let fan_out = match table.plan {
        Plan::Merger(_) => table.deadline.mul_f64(1.0 - MERGER_SHARE),
        _ => table.deadline,
    };
    let first = matches!(table.plan, Plan::First);
    let results = scatter::scatter(table, &outgoing, (arrived + fan_out, fan_out), first).await;
    let response = reply::gather(table, metrics, results, deadline).await;
    metrics
        .request_duration
        .observe(arrived.elapsed().as_secs_f64());
    response
}

/// The client's body, read whole; an answer of the root's own when it is too large (413)
/// or broken (400).
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response<Full<Bytes>>> {
    let too_large = || {
        forwarding::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "413 payload too large: the root copies request bodies of at most {limit} bytes to the leaves\n"
            ),
        )
    };
    // A declared length over the limit is refused before a byte of it is read.
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(err) => {
            tracing::debug!(error = %err, "client request body failed");
            Err(forwarding::text(
                StatusCode::BAD_REQUEST,
                "400 bad request: the request body was malformed or cut short\n",
            ))
        }
    }
}
