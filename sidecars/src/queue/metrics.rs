//! The queue sidecar's metrics, per topic: what a stage's conservation is counted from.
//! Of the messages delivered for the first time, each ends acked (with its outputs
//! published), filtered, dead-lettered, or still in flight.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Counters and gauges, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// Messages published, by topic and result (`stored`, `duplicate`, `error`).
    pub published: IntCounterVec,
    /// Deliveries taken from the broker, redeliveries included.
    pub delivered: IntCounterVec,
    /// Deliveries that were not the message's first.
    pub redelivered: IntCounterVec,
    /// Messages handled: the app answered 2xx, or a stage routed them, and their outputs
    /// were published.
    pub acked: IntCounterVec,
    /// Messages a filter or split dropped on purpose.
    pub filtered: IntCounterVec,
    /// Deliveries that failed and will come again.
    pub failed: IntCounterVec,
    /// Messages moved to their dead-letter topic.
    pub dead_lettered: IntCounterVec,
    /// Messages this stage published downstream, by the topic they came from.
    pub out: IntCounterVec,
    /// Messages delivered to this pod and not yet settled.
    pub in_flight: IntGauge,
    /// Messages of a topic this consumer has not finished, in every replica: not yet
    /// delivered plus delivered and unsettled.
    pub lag: IntGaugeVec,
    /// How long the app took to answer a delivery.
    pub delivery_duration: HistogramVec,
    /// This pod's deliveries and how each ended, as one consistent whole.
    pub accounting: Accounting,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(counter.clone()))?;
            Ok::<_, prometheus::Error>(counter)
        };
        let published = counter(
            "rigging_queue_published_total",
            "Messages published, by topic and result (stored, duplicate, error).",
            &["topic", "result"],
        )?;
        let by_topic = |name: &str, help: &str| counter(name, help, &["topic"]);
        let delivered = by_topic(
            "rigging_queue_delivered_total",
            "Deliveries taken from the broker, redeliveries included.",
        )?;
        let redelivered = by_topic(
            "rigging_queue_redelivered_total",
            "Deliveries that were not the message's first.",
        )?;
        let acked = by_topic(
            "rigging_queue_acked_total",
            "Messages handled and acknowledged, their outputs published.",
        )?;
        let filtered = by_topic(
            "rigging_queue_filtered_total",
            "Messages a filter or split dropped on purpose.",
        )?;
        let failed = by_topic(
            "rigging_queue_failed_total",
            "Deliveries that failed and will come again.",
        )?;
        let dead_lettered = by_topic(
            "rigging_queue_dead_lettered_total",
            "Messages moved to their dead-letter topic.",
        )?;
        let out = by_topic(
            "rigging_queue_out_total",
            "Messages published downstream, by the topic of the message they came from.",
        )?;
        let in_flight = IntGauge::new(
            "rigging_queue_in_flight",
            "Messages delivered to this pod and not yet settled.",
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "rigging_queue_lag",
                "Messages of the topic the consumer has not finished, in every replica.",
            ),
            &["topic"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        let delivery_duration = HistogramVec::new(
            HistogramOpts::new(
                "rigging_queue_delivery_duration_seconds",
                "Time the app took to answer a delivery.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["topic"],
        )?;
        registry.register(Box::new(delivery_duration.clone()))?;
        let accounting = Accounting::new()?;
        registry.register(Box::new(accounting.clone()))?;
        Ok(Metrics {
            published,
            delivered,
            redelivered,
            acked,
            filtered,
            failed,
            dead_lettered,
            out,
            in_flight,
            lag,
            delivery_duration,
            accounting,
        })
    }
}

/// How a delivery ended, for [`Accounting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Acknowledged, its outputs published.
    Out,
    /// Dropped on purpose by a filter or split.
    Filtered,
    /// Moved to its dead-letter topic.
    DeadLettered,
    /// Failed; the broker delivers it again.
    Retried,
}

/// This pod's deliveries and how each ended, all counted under one lock, so that a scrape
/// reads them as one whole: at every instant `in = out + filtered + dead_lettered +
/// retried + in_flight`. The per-topic counters are updated one by one and a scrape can
/// catch them between two; this is what the operator checks a stage's conservation with
/// (`rigging_queue_accounting{count}`), and a difference is a delivery the sidecar lost
/// track of.
#[derive(Clone)]
pub struct Accounting {
    tally: Arc<Mutex<Tally>>,
    gauges: IntGaugeVec,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    delivered: u64,
    out: u64,
    filtered: u64,
    dead_lettered: u64,
    retried: u64,
    in_flight: u64,
}

impl Accounting {
    fn new() -> Result<Self, prometheus::Error> {
        let gauges = IntGaugeVec::new(
            Opts::new(
                "rigging_queue_accounting",
                "This pod's deliveries (count=in) and how they ended (out, filtered, dead_lettered, retried) or are still in flight (in_flight), read as one whole.",
            ),
            &["count"],
        )?;
        Ok(Accounting {
            tally: Arc::default(),
            gauges,
        })
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        // A panic elsewhere while the lock was held leaves plain numbers: still usable.
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A delivery taken from the broker.
    pub fn delivered(&self) {
        let mut tally = self.tally();
        tally.delivered += 1;
        tally.in_flight += 1;
    }

    /// A delivery taken earlier ended as `how`.
    pub fn settled(&self, how: Settled) {
        let mut tally = self.tally();
        tally.in_flight = tally.in_flight.saturating_sub(1);
        match how {
            Settled::Out => tally.out += 1,
            Settled::Filtered => tally.filtered += 1,
            Settled::DeadLettered => tally.dead_lettered += 1,
            Settled::Retried => tally.retried += 1,
        }
    }
}

impl Collector for Accounting {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Held while the gauges are set and read: two scrapes at once cannot mix.
        let tally = self.tally();
        let counts = [
            ("in", tally.delivered),
            ("out", tally.out),
            ("filtered", tally.filtered),
            ("dead_lettered", tally.dead_lettered),
            ("retried", tally.retried),
            ("in_flight", tally.in_flight),
        ];
        for (count, value) in counts {
            self.gauges
                .with_label_values(&[count])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.gauges.collect()
    }
}

/// The series of one consumed topic, looked up once: the hot path then counts without
/// hashing label values for every message.
#[derive(Clone)]
pub struct TopicMetrics {
    /// `rigging_queue_delivered_total{topic}`.
    pub delivered: IntCounter,
    /// `rigging_queue_redelivered_total{topic}`.
    pub redelivered: IntCounter,
    /// `rigging_queue_acked_total{topic}`.
    pub acked: IntCounter,
    /// `rigging_queue_filtered_total{topic}`.
    pub filtered: IntCounter,
    /// `rigging_queue_failed_total{topic}`.
    pub failed: IntCounter,
    /// `rigging_queue_dead_lettered_total{topic}`.
    pub dead_lettered: IntCounter,
    /// `rigging_queue_out_total{topic}`.
    pub out: IntCounter,
    /// `rigging_queue_delivery_duration_seconds{topic}`.
    pub delivery_duration: Histogram,
}

impl Metrics {
    /// The series of consumed topic `topic`.
    pub fn topic(&self, topic: &str) -> TopicMetrics {
        let label = &[topic];
        TopicMetrics {
            delivered: self.delivered.with_label_values(label),
            redelivered: self.redelivered.with_label_values(label),
            acked: self.acked.with_label_values(label),
            filtered: self.filtered.with_label_values(label),
            failed: self.failed.with_label_values(label),
            dead_lettered: self.dead_lettered.with_label_values(label),
            out: self.out.with_label_values(label),
            delivery_duration: self.delivery_duration.with_label_values(label),
        }
    }
}
