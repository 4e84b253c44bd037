//! The compiled config: the shards with their replicas, the merge, the request's fate and
//! the hedge. A reload compiles a new table beside the one serving and swaps it in;
//! requests in flight keep the table they started with, so a replica that a reload
//! removed finishes the requests it has.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Uri};
use rigging_crds::sidecar::gather::{ConfigError, GatherConfig, HedgeAfter};

use super::merge::JsonMerge;
use super::metrics::{Metrics, ShardMetrics};
use super::window::Window;
use crate::forwarding::{Budget, Pool, PoolConfig};

/// How long a replica that failed (no connection, 5xx, no answer within `leafTimeout`) is
/// passed over for first attempts while its shard has another: long enough that a dead
/// replica costs a failover only now and then, short enough that a restarted one is back
/// within seconds.
pub const FAILING_FOR: Duration = Duration::from_secs(5);

/// Hedges the budget can save up. Hedges are whole requests paid from fractions of a
/// token, so the bucket must hold a few: one request to eight shards may find three of
/// them slow at once. A bigger bucket would let a quiet spell save up hedges that a
/// brownout then spends all at once, doubling the load when it hurts most; ten extra leaf
/// requests are nothing next to any brownout.
pub const HEDGE_BURST: f64 = 10.0;

/// What the root does with the answers.
pub enum Plan {
    /// Merges the JSON answers itself.
    Json(JsonMerge),
    /// Returns the first 2xx answer and cancels the rest.
    First,
    /// Posts every answer to the merger and returns its answer.
    Merger(Arc<MergerTarget>),
}

impl Plan {
    /// The merge's name, as the config file spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Plan::Json(merge) => merge.name(),
            Plan::First => "first",
            Plan::Merger(_) => "merger",
        }
    }
}

/// A compiled config.
pub struct Table {
    /// The shards, in shard order.
    pub shards: Vec<Arc<Shard>>,
    /// What is done with the answers.
    pub plan: Plan,
    /// Longest a request may take.
    pub deadline: Duration,
    /// Longest one leaf request may take.
    pub leaf_timeout: Duration,
    /// Fewest answered shards that make an answer.
    pub min_shards: usize,
    /// The hedge, when the file has one.
    pub hedge: Option<Hedging>,
    /// Largest answer a leaf (or the merger) may give.
    pub max_leaf_body: usize,
    /// The file it was compiled from.
    pub config: GatherConfig,
}

/// The hedge's settings and budget.
pub struct Hedging {
    /// When a shard is slow enough to hedge.
    pub after: HedgeAfter,
    /// Tokens earned by leaf requests, one spent per hedge.
    budget: Arc<Budget>,
    /// The share of leaf requests, in percent, that `budget` earns.
    percent: f64,
    /// `rigging_gather_hedge_budget_tokens`.
    tokens: prometheus::Gauge,
}

impl Hedging {
    /// Records a leaf request that is not a hedge, which earns the budget its share.
    pub fn deposit(&self) {
        self.budget.deposit();
        self.tokens.set(self.budget.tokens());
    }

    /// Hedges the budget allows now.
    pub fn tokens(&self) -> f64 {
        self.budget.tokens()
    }

    /// Takes a token for one hedge, if the budget has one.
    pub fn withdraw(&self) -> bool {
        let paid = self.budget.withdraw();
        self.tokens.set(self.budget.tokens());
        paid
    }
}

/// One shard: its replicas and what is known about its latency.
pub struct Shard {
    /// Its index in the file.
    pub index: usize,
    /// Its replicas, in file order.
    pub replicas: Vec<Arc<Replica>>,
    /// Round robin's position.
    next: AtomicUsize,
    /// Its latency window and series, kept across reloads by index.
    pub stats: Arc<ShardStats>,
}

/// What a shard's requests have shown, kept across reloads.
pub struct ShardStats {
    /// Its recent successful leaf latencies.
    pub window: Mutex<Window>,
    /// Its series.
    pub metrics: ShardMetrics,
}

/// One replica: its connections, and whether it failed lately. Kept across reloads by
/// address.
pub struct Replica {
    /// `HOST:PORT`.
    pub address: String,
    /// Keep-alive connections to it.
    pub pool: Pool,
    failed_at: Mutex<Option<Instant>>,
}

/// Where the merger is.
pub struct MergerTarget {
    /// The URL as the file gives it, for messages.
    pub url: String,
    /// The path and query posted to.
    pub target: Uri,
    /// The `Host` header.
    pub host: HeaderValue,
    /// Connections to it.
    pub pool: Pool,
}

impl Replica {
    fn new(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            pool: Pool::new(address.to_owned(), PoolConfig::default()),
            failed_at: Mutex::new(None),
        }
    }

    /// Notes a failure: the replica is passed over for [`FAILING_FOR`].
    pub fn failed(&self) {
        *self.failed_at.lock().expect("replica lock") = Some(Instant::now());
    }

    /// Whether it failed within [`FAILING_FOR`] of `now`.
    pub fn failing(&self, now: Instant) -> bool {
        self.failed_at
            .lock()
            .expect("replica lock")
            .is_some_and(|at| now.saturating_duration_since(at) < FAILING_FOR)
    }
}

impl Shard {
    /// The replica for a request's first attempt: round robin among those not failing,
    /// or among all when every one is.
    pub fn first(&self, now: Instant) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        self.choose(start, &[], now).unwrap_or(0)
    }

    /// A replica not in `tried`, for a failover or a hedge: the next one after the last
    /// tried that is not failing, or the next one at all. `None` when all were tried.
    pub fn another(&self, tried: &[usize], now: Instant) -> Option<usize> {
        let start = tried.last().map_or(0, |last| last + 1);
        self.choose(start, tried, now)
    }

    fn choose(&self, start: usize, tried: &[usize], now: Instant) -> Option<usize> {
        let n = self.replicas.len();
        let mut fallback = None;
        for k in 0..n {
            let i = (start + k) % n;
            if tried.contains(&i) {
                continue;
            }
            if !self.replicas[i].failing(now) {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }
}

impl Table {
    /// Compiles `config`. From `previous` (the table serving before a reload) it keeps the
    /// replicas it still has, by address (their connections and failures), the shards'
    /// latency windows by index, the hedge budget when its share is unchanged and the
    /// merger's connections when its address is.
    pub fn compile(
        config: &GatherConfig,
        previous: Option<&Table>,
        metrics: &Metrics,
        max_leaf_body: usize,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let known: HashMap<&str, &Arc<Replica>> = previous
            .map(|p| {
                p.shards
                    .iter()
                    .flat_map(|s| &s.replicas)
                    .map(|r| (r.address.as_str(), r))
                    .collect()
            })
            .unwrap_or_default();
        let shards = config
            .shards
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                let stats = previous
                    .and_then(|p| p.shards.get(index))
                    .map(|s| s.stats.clone())
                    .unwrap_or_else(|| {
                        Arc::new(ShardStats {
                            window: Mutex::new(Window::default()),
                            metrics: metrics.shard(index),
                        })
                    });
                let replicas = shard
                    .replicas
                    .iter()
                    .map(|address| match known.get(address.as_str()) {
                        Some(same) => Arc::clone(same),
                        None => Arc::new(Replica::new(address)),
                    })
                    .collect();
                Arc::new(Shard {
                    index,
                    replicas,
                    next: AtomicUsize::new(0),
                    stats,
                })
            })
            .collect();
        let hedge = config.hedge.as_ref().map(|h| {
            let kept = previous
                .and_then(|p| p.hedge.as_ref())
                .filter(|old| old.percent == h.budget.0)
                .map(|old| old.budget.clone());
            let ratio = h.budget.0 / 100.0;
            // A budget of 0% sends no hedge at all, not a burst of them.
            let burst = if ratio > 0.0 { HEDGE_BURST } else { 0.0 };
            Hedging {
                after: h.after,
                budget: kept.unwrap_or_else(|| Arc::new(Budget::new(ratio, 0.0, burst))),
                percent: h.budget.0,
                tokens: metrics.hedge_tokens.clone(),
            }
        });
        let plan = match (JsonMerge::new(&config.merge), &config.merge.merger) {
            (Some(merge), _) => Plan::Json(merge),
            (None, _) if config.merge.first.is_some() => Plan::First,
            (None, Some(m)) => {
                let before = previous.and_then(|p| match &p.plan {
                    Plan::Merger(old) if old.url == m.url => Some(old.clone()),
                    _ => None,
                });
                Plan::Merger(match before {
                    Some(same) => same,
                    None => Arc::new(MergerTarget::new(&m.url)?),
                })
            }
            // Refused by the contract's validation already.
            (None, None) => {
                return Err(ConfigError {
                    field: "merge".to_owned(),
                    message: "choose one of concat, topK, sum, first and merger".to_owned(),
                });
            }
        };
        Ok(Self {
            shards,
            plan,
            deadline: config.deadline,
            leaf_timeout: config.leaf_timeout(),
            min_shards: config.min_shards(),
            hedge,
            max_leaf_body,
            config: config.clone(),
        })
    }

    /// How long shard `shard` may take before it is hedged: the fixed wait, or its
    /// latency quantile once its window has enough samples; `None` without a hedge.
    pub fn hedge_delay(&self, shard: &Shard) -> Option<Duration> {
        match self.hedge.as_ref()?.after {
            HedgeAfter::Fixed(wait) => Some(wait),
            HedgeAfter::Quantile(q) => shard
                .stats
                .window
                .lock()
                .expect("window lock")
                .hedge_quantile(q),
        }
    }
}

impl MergerTarget {
    /// The merger at `url` (`http://HOST[:PORT]/PATH`).
    fn new(url: &str) -> Result<Self, ConfigError> {
        let refuse = |message: String| ConfigError {
            field: "merge.merger.url".to_owned(),
            message: format!("{url:?}: {message}"),
        };
        let uri: Uri = url
            .parse()
            .map_err(|err| refuse(format!("not a URL: {err}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(refuse("use http://HOST:PORT/PATH".to_owned()));
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| refuse("name the merger's host".to_owned()))?;
        let address = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|err| refuse(format!("not a Host header: {err}")))?;
        let target = uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        Ok(Self {
            url: url.to_owned(),
            target,
            host,
            pool: Pool::new(address, PoolConfig::default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> GatherConfig {
        serde_norway::from_str(yaml).unwrap()
    }

    fn metrics() -> Metrics {
        Metrics::register(&prometheus::Registry::new()).unwrap()
    }

    #[tokio::test]
    async fn a_reload_keeps_the_replicas_it_still_has_and_the_shards_windows() {
        let metrics = metrics();
        let before = Table::compile(
            &config("shards: [{replicas: [a:1, b:1]}, {replicas: [c:1]}]\nmerge: {sum: {}}\n"),
            None,
            &metrics,
            1024,
        )
        .unwrap();
        let after = Table::compile(
            &config("shards: [{replicas: [b:1, d:1]}, {replicas: [c:1]}]\nmerge: {sum: {}}\n"),
            Some(&before),
            &metrics,
            1024,
        )
        .unwrap();
        assert!(Arc::ptr_eq(
            &before.shards[0].replicas[1],
            &after.shards[0].replicas[0]
        ));
        assert!(Arc::ptr_eq(
            &before.shards[1].replicas[0],
            &after.shards[1].replicas[0]
        ));
        assert_eq!(after.shards[0].replicas[1].address, "d:1");
        assert!(Arc::ptr_eq(&before.shards[0].stats, &after.shards[0].stats));
    }

    #[tokio::test]
    async fn first_attempts_go_round_robin_and_skip_a_failing_replica() {
        let table = Table::compile(
            &config("shards: [{replicas: [a:1, b:1, c:1]}]\nmerge: {first: {}}\n"),
            None,
            &metrics(),
            1024,
        )
        .unwrap();
        let shard = &table.shards[0];
        let now = Instant::now();
        let picks: Vec<usize> = (0..4).map(|_| shard.first(now)).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        shard.replicas[1].failed();
        let now = Instant::now();
        let picks: Vec<usize> = (0..3).map(|_| shard.first(now)).collect();
        assert_eq!(picks, [2, 2, 0], "b is passed over while it is failing");
        // Failover and hedges take the next untried one, failing ones last.
        assert_eq!(shard.another(&[0], now), Some(2));
        assert_eq!(shard.another(&[0, 2], now), Some(1));
        assert_eq!(shard.another(&[0, 1, 2], now), None);
        assert!(!shard.replicas[1].failing(now + FAILING_FOR));
    }

    #[tokio::test]
    async fn a_quantile_hedge_waits_for_the_shards_own_latencies() {
        let table = Table::compile(
            &config(
                "shards: [{replicas: [a:1, b:1]}, {replicas: [c:1, d:1]}]\nmerge: {sum: {}}\nhedge: {after: p90}\n",
            ),
            None,
            &metrics(),
            1024,
        )
        .unwrap();
        let (slow, fast) = (&table.shards[0], &table.shards[1]);
        assert_eq!(table.hedge_delay(slow), None, "no samples yet: no hedge");
        for i in 1..=100 {
            slow.stats
                .window
                .lock()
                .unwrap()
                .record(Duration::from_millis(i));
            fast.stats
                .window
                .lock()
                .unwrap()
                .record(Duration::from_micros(i));
        }
        assert_eq!(table.hedge_delay(slow), Some(Duration::from_millis(90)));
        assert_eq!(table.hedge_delay(fast), Some(Duration::from_micros(90)));
    }

    #[tokio::test]
    async fn a_merger_url_is_checked_where_the_file_names_it() {
        let err = Table::compile(
            &config("shards: [{replicas: [a:1]}]\nmerge: {merger: {url: 'http://a b/x'}}\n"),
            None,
            &metrics(),
            1024,
        )
        .err()
        .unwrap();
        assert_eq!(err.field, "merge.merger.url");
        let ok = Table::compile(
            &config("shards: [{replicas: [a:1]}]\nmerge: {merger: {url: 'http://m/merge?v=1'}}\n"),
            None,
            &metrics(),
            1024,
        )
        .unwrap();
        let Plan::Merger(merger) = &ok.plan else {
            panic!("not a merger plan");
        };
        assert_eq!(merger.target, "/merge?v=1");
        assert_eq!(merger.pool.address(), "m:80");
    }
}
