//! The terminator's Prometheus metrics. Every labelled series the hot path touches is
//! resolved once here, so counting a request is an atomic add, never a label lookup.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rustls::ProtocolVersion;

/// Handles to every metric the terminator updates.
#[derive(Clone)]
pub struct Metrics {
    /// Connections accepted since start.
    pub connections: IntCounter,
    /// Connections open now (TCP accepted, not yet closed).
    pub connections_open: IntGauge,
    handshakes_ok_tls12: IntCounter,
    handshakes_ok_tls13: IntCounter,
    handshakes_ok_other: IntCounter,
    /// Handshakes that failed (bad client hello, no common version or cipher, refused
    /// client certificate, garbage).
    pub handshakes_failed: IntCounter,
    /// Handshakes cut off by `--handshake-timeout`.
    pub handshakes_timed_out: IntCounter,
    /// Handshakes that resumed an earlier session (ticket or session cache).
    pub handshakes_resumed: IntCounter,
    requests: [IntCounter; 5],
    /// Requests answered by the terminator itself with 502 (app unreachable).
    pub upstream_errors: IntCounter,
    /// Requests the terminator refused as the client's fault (400, 405): no Host, two
    /// Hosts, CONNECT, a broken body.
    pub client_errors: IntCounter,
    /// Time from sending a request to the app until its response headers arrive.
    pub upstream_latency: Histogram,
    /// `notAfter` of the certificate being served, in Unix seconds.
    pub cert_expiry: IntGauge,
    /// Certificate reloads that took effect.
    pub reloads_ok: IntCounter,
    /// Certificate reloads rejected (the previous certificate stays in use).
    pub reloads_failed: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections =
            IntCounter::new("rigging_tls_connections_total", "TCP connections accepted")?;
        let connections_open =
            IntGauge::new("rigging_tls_connections_open", "TCP connections open now")?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "rigging_tls_handshakes_total",
                "TLS handshakes by negotiated version and result",
            ),
            &["version", "result"],
        )?;
        let handshakes_resumed = IntCounter::new(
            "rigging_tls_handshakes_resumed_total",
            "TLS handshakes that resumed a session (ticket or session cache)",
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "rigging_tls_requests_total",
                "HTTP requests by response status class",
            ),
            &["class"],
        )?;
        let upstream_errors = IntCounter::new(
            "rigging_tls_upstream_errors_total",
            "Requests answered 502 because the app could not be reached",
        )?;
        let client_errors = IntCounter::new(
            "rigging_tls_client_errors_total",
            "Requests refused as the client's fault (no or two Host headers, CONNECT, a broken body)",
        )?;
        let upstream_latency = Histogram::with_opts(
            HistogramOpts::new(
                "rigging_tls_upstream_duration_seconds",
                "Time from forwarding a request to the app until its response headers",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )?;
        let cert_expiry = IntGauge::new(
            "rigging_tls_cert_expiry_timestamp_seconds",
            "notAfter of the served certificate, Unix seconds",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "rigging_tls_cert_reloads_total",
                "Certificate reloads by result (failed: the previous certificate stays)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(handshakes.clone()))?;
        registry.register(Box::new(handshakes_resumed.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(client_errors.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(cert_expiry.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        Ok(Self {
            connections,
            connections_open,
            handshakes_ok_tls12: handshakes.with_label_values(&["TLSv1.2", "ok"]),
            handshakes_ok_tls13: handshakes.with_label_values(&["TLSv1.3", "ok"]),
            handshakes_ok_other: handshakes.with_label_values(&["other", "ok"]),
            handshakes_failed: handshakes.with_label_values(&["none", "error"]),
            handshakes_timed_out: handshakes.with_label_values(&["none", "timeout"]),
            handshakes_resumed,
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| requests.with_label_values(&[c])),
            upstream_errors,
            client_errors,
            upstream_latency,
            cert_expiry,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_failed: reloads.with_label_values(&["failed"]),
        })
    }

    /// Counts a completed handshake under its negotiated version.
    pub fn handshake_ok(&self, version: Option<ProtocolVersion>) {
        match version {
            Some(ProtocolVersion::TLSv1_3) => self.handshakes_ok_tls13.inc(),
            Some(ProtocolVersion::TLSv1_2) => self.handshakes_ok_tls12.inc(),
            _ => self.handshakes_ok_other.inc(),
        }
    }

    /// Counts a response by its status class.
    pub fn request(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
    }
}
