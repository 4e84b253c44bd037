//! Prometheus metrics of the controllers, served on `/metrics`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::error::Error;

/// The operator's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    /// Where every metric below is registered (plus process metrics).
    pub registry: Registry,
    /// `rigging_operator_reconciliations_total{kind}`.
    pub reconciliations: IntCounterVec,
    /// `rigging_operator_reconcile_errors_total{kind,error}`.
    pub errors: IntCounterVec,
    /// `rigging_operator_reconcile_duration_seconds{kind}`.
    pub duration: HistogramVec,
    /// `rigging_operator_applies_total{kind,child,outcome}`: `applied` or `unchanged`.
    pub applies: IntCounterVec,
    /// `rigging_operator_status_writes_total{kind}`: status patches sent.
    pub status_writes: IntCounterVec,
    /// `rigging_webhook_admissions_total{outcome}`: `injected`, `untouched`, `denied` or
    /// `invalid`.
    pub admissions: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "rigging_operator_reconciliations_total",
                "Reconciliations started",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let errors = IntCounterVec::new(
            Opts::new(
                "rigging_operator_reconcile_errors_total",
                "Reconciliations that failed, by error",
            ),
            &["kind", "error"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "rigging_operator_reconcile_duration_seconds",
                "Time one reconciliation took",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind"],
        )
        .expect("static metric definition");
        let applies = IntCounterVec::new(
            Opts::new(
                "rigging_operator_applies_total",
                "Children compared with their desired state, by outcome",
            ),
            &["kind", "child", "outcome"],
        )
        .expect("static metric definition");
        let status_writes = IntCounterVec::new(
            Opts::new(
                "rigging_operator_status_writes_total",
                "Status patches sent, one per change of an object's status",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let admissions = IntCounterVec::new(
            Opts::new(
                "rigging_webhook_admissions_total",
                "Pods the injection webhook was asked about, by outcome",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        for c in [
            &reconciliations,
            &errors,
            &applies,
            &status_writes,
            &admissions,
        ] {
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
        }
        registry
            .register(Box::new(duration.clone()))
            .expect("metric registered once");
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        Self {
            registry,
            reconciliations,
            errors,
            duration,
            applies,
            status_writes,
            admissions,
        }
    }

    /// Counts a failed reconciliation of `kind`.
    pub fn count_error(&self, kind: &str, error: &Error) {
        self.errors
            .with_label_values(&[kind, error.metric_label()])
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}
