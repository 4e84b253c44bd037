//! `/status` on the admin port: every shard's replicas, latencies, failures and hedges,
//! the stragglers, and how client requests ended, as JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::metrics::Metrics;
use super::table::Table;
use super::window;
use crate::forwarding::PoolStats;
use crate::runtime::admin::JsonPage;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    merge: &'static str,
    deadline_ms: f64,
    leaf_timeout_ms: f64,
    min_shards: usize,
    shards: Vec<ShardStatus>,
    /// Shards whose p95 is more than twice the median shard's.
    stragglers: Vec<usize>,
    /// Client requests by outcome.
    coverage: Outcomes,
    #[serde(skip_serializing_if = "Option::is_none")]
    hedge: Option<HedgeStatus>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShardStatus {
    shard: usize,
    replicas: Vec<ReplicaStatus>,
    latency_ms: Latency,
    requests: u64,
    timeouts: u64,
    failures: u64,
    hedges_sent: u64,
    hedges_won: u64,
    hedges_refused: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplicaStatus {
    address: String,
    /// Failed within the last few seconds: passed over for first attempts.
    failing: bool,
    connections: PoolStats,
}

#[derive(Serialize)]
struct Latency {
    samples: usize,
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Outcomes {
    full: u64,
    partial: u64,
    refused: u64,
    merger_failed: u64,
    invalid: u64,
}

#[derive(Serialize)]
struct HedgeStatus {
    after: String,
    budget: String,
    tokens: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The status of `table`, as JSON.
pub fn render(table: &Table, metrics: &Metrics) -> Vec<u8> {
    let now = Instant::now();
    let mut p95s = Vec::with_capacity(table.shards.len());
    let shards = table
        .shards
        .iter()
        .map(|shard| {
            let (samples, [p50, p95, p99]) = {
                let window = shard.stats.window.lock().expect("window lock");
                (window.len(), window.quantiles([50.0, 95.0, 99.0]))
            };
            p95s.push(p95.filter(|_| samples >= window::MIN_SAMPLES));
            let m = &shard.stats.metrics;
            ShardStatus {
                shard: shard.index,
                replicas: shard
                    .replicas
                    .iter()
                    .map(|r| ReplicaStatus {
                        address: r.address.clone(),
                        failing: r.failing(now),
                        connections: r.pool.stats(),
                    })
                    .collect(),
                latency_ms: Latency {
                    samples,
                    p50: p50.map(ms),
                    p95: p95.map(ms),
                    p99: p99.map(ms),
                },
                requests: m.requests.get(),
                timeouts: m.timeouts.get(),
                failures: m.failures.get(),
                hedges_sent: m.hedges_sent.get(),
                hedges_won: m.hedges_won.get(),
                hedges_refused: m.hedges_refused.get(),
            }
        })
        .collect();
    let o = &metrics.outcomes;
    let status = Status {
        merge: table.plan.name(),
        deadline_ms: ms(table.deadline),
        leaf_timeout_ms: ms(table.leaf_timeout),
        min_shards: table.min_shards,
        shards,
        stragglers: window::stragglers(&p95s),
        coverage: Outcomes {
            full: o.full.get(),
            partial: o.partial.get(),
            refused: o.refused.get(),
            merger_failed: o.merger_failed.get(),
            invalid: o.invalid.get(),
        },
        hedge: table
            .hedge
            .as_ref()
            .zip(table.config.hedge.as_ref())
            .map(|(h, config)| HedgeStatus {
                after: config.after.to_string(),
                budget: config.budget.to_string(),
                tokens: h.tokens(),
            }),
    };
    serde_json::to_vec_pretty(&status).expect("the status serializes")
}

/// `/status`, rendered from the table serving at the time of the request.
pub fn page(
    table: Arc<ArcSwap<Table>>,
    metrics: Metrics,
) -> JsonPage<impl Fn() -> Vec<u8> + Send + Sync + 'static> {
    JsonPage::new("/status", move || render(&table.load(), &metrics))
}
