//! The root's Prometheus metrics. The `shard` label is the shard's index in the config
//! file, so the series are bounded by it; each shard resolves its series once, and the
//! hot path does atomic adds. `/status` reads its counts from the same series.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

const LEAF_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const COVERAGE_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0];

/// Every metric family of the root, registered once at start.
#[derive(Clone)]
pub struct Metrics {
    /// Client requests by how they ended.
    pub outcomes: Outcomes,
    /// Arrival to answer.
    pub request_duration: Histogram,
    /// Answered shards over all shards, per answer.
    pub coverage: Histogram,
    /// Tokens in the hedge budget.
    pub hedge_tokens: Gauge,
    /// Config reloads that took effect.
    pub reloads_ok: IntCounter,
    /// Config reloads refused (the previous config keeps serving).
    pub reloads_failed: IntCounter,
    leaf_requests: IntCounterVec,
    leaf_duration: HistogramVec,
    leaf_timeouts: IntCounterVec,
    leaf_failures: IntCounterVec,
    hedges: IntCounterVec,
}

/// `rigging_gather_requests_total`, one series per outcome.
#[derive(Clone)]
pub struct Outcomes {
    /// Every shard answered (for `first`: one did).
    pub full: IntCounter,
    /// Some did not, and at least `minShards` did.
    pub partial: IntCounter,
    /// Fewer than `minShards` answered: 502.
    pub refused: IntCounter,
    /// The merger failed: 502.
    pub merger_failed: IntCounter,
    /// The client's request could not be sent on (400, 405, 413).
    pub invalid: IntCounter,
}

/// One shard's series, resolved once.
#[derive(Clone)]
pub struct ShardMetrics {
    /// Leaf requests sent, hedges included.
    pub requests: IntCounter,
    /// Time from sending a leaf request to its whole answer.
    pub duration: Histogram,
    /// Leaf requests with no answer within `leafTimeout` or by the deadline.
    pub timeouts: IntCounter,
    /// Leaf requests that failed otherwise: no connection, 5xx, a bad answer.
    pub failures: IntCounter,
    /// Hedged requests sent.
    pub hedges_sent: IntCounter,
    /// Hedged requests whose answer was taken.
    pub hedges_won: IntCounter,
    /// Hedges due but not sent: the budget was spent.
    pub hedges_refused: IntCounter,
}

impl Metrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let requests = counter(
            "rigging_gather_requests_total",
            "Client requests by outcome: full, partial, refused (below minShards), merger_failed, invalid",
            &["outcome"],
        )?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "rigging_gather_request_duration_seconds",
                "Time from a client request's arrival to its answer",
            )
            .buckets(LEAF_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let coverage = Histogram::with_opts(
            HistogramOpts::new(
                "rigging_gather_coverage_ratio",
                "Shards that answered over all shards, per client request",
            )
            .buckets(COVERAGE_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(coverage.clone()))?;
        let hedge_tokens = Gauge::new(
            "rigging_gather_hedge_budget_tokens",
            "Hedged requests the budget allows now",
        )?;
        registry.register(Box::new(hedge_tokens.clone()))?;
        let leaf_duration = HistogramVec::new(
            HistogramOpts::new(
                "rigging_gather_leaf_duration_seconds",
                "Time from sending a leaf request to its whole answer, by shard",
            )
            .buckets(LEAF_BUCKETS.to_vec()),
            &["shard"],
        )?;
        registry.register(Box::new(leaf_duration.clone()))?;
        let reloads = counter(
            "rigging_gather_config_reloads_total",
            "Config reloads by result (failed: the previous config keeps serving)",
            &["result"],
        )?;
        let outcome = |name: &str| requests.with_label_values(&[name]);
        Ok(Self {
            outcomes: Outcomes {
                full: outcome("full"),
                partial: outcome("partial"),
                refused: outcome("refused"),
                merger_failed: outcome("merger_failed"),
                invalid: outcome("invalid"),
            },
            request_duration,
            coverage,
            hedge_tokens,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_failed: reloads.with_label_values(&["failed"]),
            leaf_requests: counter(
                "rigging_gather_leaf_requests_total",
                "Leaf requests sent, hedges included, by shard",
                &["shard"],
            )?,
            leaf_duration,
            leaf_timeouts: counter(
                "rigging_gather_leaf_timeouts_total",
                "Leaf requests with no answer within leafTimeout or by the deadline, by shard",
                &["shard"],
            )?,
            leaf_failures: counter(
                "rigging_gather_leaf_failures_total",
                "Leaf requests that failed (no connection, 5xx, a bad answer), by shard",
                &["shard"],
            )?,
            hedges: counter(
                "rigging_gather_hedges_total",
                "Hedged requests by shard and result: sent, won, refused (over the budget)",
                &["shard", "result"],
            )?,
        })
    }

    /// The series of shard `index`.
    pub fn shard(&self, index: usize) -> ShardMetrics {
        let shard = index.to_string();
        let shard = shard.as_str();
        ShardMetrics {
            requests: self.leaf_requests.with_label_values(&[shard]),
            duration: self.leaf_duration.with_label_values(&[shard]),
            timeouts: self.leaf_timeouts.with_label_values(&[shard]),
            failures: self.leaf_failures.with_label_values(&[shard]),
            hedges_sent: self.hedges.with_label_values(&[shard, "sent"]),
            hedges_won: self.hedges.with_label_values(&[shard, "won"]),
            hedges_refused: self.hedges.with_label_values(&[shard, "refused"]),
        }
    }

    /// Drops the series of shard `index`, which a reload removed.
    pub fn forget_shard(&self, index: usize) {
        let shard = index.to_string();
        let shard = shard.as_str();
        let _ = self.leaf_requests.remove_label_values(&[shard]);
        let _ = self.leaf_duration.remove_label_values(&[shard]);
        let _ = self.leaf_timeouts.remove_label_values(&[shard]);
        let _ = self.leaf_failures.remove_label_values(&[shard]);
        for result in ["sent", "won", "refused"] {
            let _ = self.hedges.remove_label_values(&[shard, result]);
        }
    }
}
