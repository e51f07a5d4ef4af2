//! Prometheus metrics of this process: HTTP requests, the checkout's events and the
//! worker's jobs. Counters live for the process; `GET /metrics` adds gauges of orders by
//! status read from the database, which are true across processes.

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector,
};

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by route, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency, by route, method and status.
    pub http_latency: HistogramVec,
    /// Hold requests by outcome (created, rejected, expired).
    pub holds: IntCounterVec,
    /// Order transitions made by this process (created, paid, cancelled, and
    /// cancelled_by_buyer for the cancellations a buyer asked for).
    pub orders: IntCounterVec,
    /// Orders in the database by status, set when `GET /metrics` is read.
    pub orders_by_status: IntGaugeVec,
    /// Payment events by state.
    pub webhooks: IntCounterVec,
    /// Idempotent replays answered, by kind.
    pub replays: IntCounterVec,
    /// Payments that cannot be honoured and must be refunded.
    pub refund_required: IntCounter,
    /// Worker job runs by job and result.
    pub jobs: IntCounterVec,
    /// Changes of a product's `total_stock` by the operator, by direction.
    pub restocks: IntCounterVec,
    /// Refunds listed to the operator and resolved by them.
    pub refunds: IntCounterVec,
    /// Requests run together in one transaction, by kind (hold, order, payment).
    pub group_size: HistogramVec,
    /// Open live stock streams.
    pub live_subscribers: IntGauge,
    /// Live stock events published, once per product change, whatever the subscribers.
    pub live_events: IntCounter,
}

/// Registers `metric` with `registry` and returns it.
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// A counter with `labels`, registered.
fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    register(registry, c)
}

/// The HTTP latency histogram, registered.
fn http_latency(registry: &Registry) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let opts = HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
        .buckets(buckets);
    let h = HistogramVec::new(opts, &["route", "method", "status"]).expect("valid metric");
    register(registry, h)
}

/// The histogram of group sizes by kind, registered.
fn group_size(registry: &Registry) -> HistogramVec {
    let opts = HistogramOpts::new(
        "group_size",
        "Requests run together in one transaction, by kind",
    )
    .buckets(vec![
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
    ]);
    register(
        registry,
        HistogramVec::new(opts, &["kind"]).expect("valid metric"),
    )
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("flashsale".into()), None).expect("registry");
        let r = &registry;
        let orders_by_status = IntGaugeVec::new(
            Opts::new("orders", "Orders in the database by status"),
            &["status"],
        )
        .expect("valid metric");
        let refund_required = IntCounter::new(
            "refund_required_total",
            "Payments that cannot be honoured and must be refunded",
        )
        .expect("valid metric");
        let live_subscribers =
            IntGauge::new("live_subscribers", "Open live stock streams").expect("valid metric");
        let live_events = IntCounter::new(
            "live_events_total",
            "Live stock events published (one per product change, whatever the subscribers)",
        )
        .expect("valid metric");
        Self {
            http_requests: counter(
                r,
                "http_requests_total",
                "HTTP requests answered",
                &["route", "method", "status"],
            ),
            http_latency: http_latency(r),
            holds: counter(
                r,
                "holds_total",
                "Hold requests and hold ends by outcome (created, rejected, sale_closed, \
                 customer_limit, expired, released)",
                &["outcome"],
            ),
            orders: counter(
                r,
                "order_events_total",
                "Order transitions made by this process",
                &["event"],
            ),
            orders_by_status: register(r, orders_by_status),
            webhooks: counter(
                r,
                "webhooks_total",
                "Payment events by state (applied, awaiting_order, ignored, refund_required)",
                &["state"],
            ),
            replays: counter(r, "replays_total", "Idempotent replays answered", &["kind"]),
            refund_required: register(r, refund_required),
            jobs: counter(
                r,
                "jobs_total",
                "Worker job runs by job and result",
                &["job", "result"],
            ),
            restocks: counter(
                r,
                "restocks_total",
                "Changes of a product's total stock by the operator (up, down)",
                &["direction"],
            ),
            refunds: counter(
                r,
                "refunds_total",
                "Refunds listed to the operator and resolved (listed, resolved)",
                &["event"],
            ),
            group_size: group_size(r),
            live_subscribers: register(r, live_subscribers),
            live_events: register(r, live_events),
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
