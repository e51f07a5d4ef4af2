//! Prometheus metrics of this process: HTTP requests, the checkout's events and the
//! worker's jobs. Counters live for the process; `GET /metrics` adds gauges of orders by
//! status read from the database, which are true across processes.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub holds: IntCounterVec,
    pub orders: IntCounterVec,
    pub orders_by_status: IntGaugeVec,
    pub webhooks: IntCounterVec,
    pub replays: IntCounterVec,
    pub refund_required: IntCounter,
    pub jobs: IntCounterVec,
    pub hold_group_size: Histogram,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("flashsale".into()), None).expect("registry");
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_latency.clone()))
            .expect("unique metric");
        let orders_by_status = IntGaugeVec::new(
            Opts::new("orders", "Orders in the database by status"),
            &["status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(orders_by_status.clone()))
            .expect("unique metric");
        let refund_required = IntCounter::new(
            "refund_required_total",
            "Payments that cannot be honoured and must be refunded",
        )
        .expect("valid metric");
        registry
            .register(Box::new(refund_required.clone()))
            .expect("unique metric");
        let hold_group_size = Histogram::with_opts(
            HistogramOpts::new(
                "hold_group_size",
                "Hold requests reserved together in one transaction",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(hold_group_size.clone()))
            .expect("unique metric");
        Self {
            http_requests: counter(
                &registry,
                "http_requests_total",
                "HTTP requests answered",
                &["route", "method", "status"],
            ),
            http_latency,
            holds: counter(
                &registry,
                "holds_total",
                "Hold requests by outcome (created, rejected, expired)",
                &["outcome"],
            ),
            orders: counter(
                &registry,
                "order_events_total",
                "Order transitions made by this process",
                &["event"],
            ),
            orders_by_status,
            webhooks: counter(
                &registry,
                "webhooks_total",
                "Payment events by state (applied, awaiting_order, ignored, refund_required)",
                &["state"],
            ),
            replays: counter(
                &registry,
                "replays_total",
                "Idempotent replays answered",
                &["kind"],
            ),
            refund_required,
            jobs: counter(
                &registry,
                "jobs_total",
                "Worker job runs by job and result",
                &["job", "result"],
            ),
            hold_group_size,
            registry,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text exposition is UTF-8")
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
