//! `GET /health` and `GET /ready`.

use poem_openapi::{ApiResponse, OpenApi, payload::PlainText};

use poem::web::Data;

use super::{ApiTags, State};

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers.
    #[oai(status = 200)]
    Ready(PlainText<&'static str>),
    /// The database does not answer.
    #[oai(status = 503)]
    NotReady(PlainText<&'static str>),
}

pub struct OpsApi;

#[OpenApi(tag = "ApiTags::Operations")]
impl OpsApi {
    /// Liveness: 200 while the process runs
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> PlainText<&'static str> {
        PlainText("ok")
    }

    /// Prometheus metrics
    ///
    /// Text exposition: `flashsale_http_requests_total` and
    /// `flashsale_http_request_duration_seconds` by route, method and status;
    /// `flashsale_holds_total` by outcome (created, rejected, expired);
    /// `flashsale_order_events_total` (created, paid, cancelled) and `flashsale_orders` by
    /// status (from the database); `flashsale_webhooks_total` by state;
    /// `flashsale_replays_total` by kind; `flashsale_refund_required_total`;
    /// `flashsale_jobs_total` by job and result.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, state: Data<&State>) -> PlainText<String> {
        let m = service::metrics::metrics();
        match state.svc.orders_by_status().await {
            Ok(counts) => {
                for (status, n) in counts {
                    m.orders_by_status
                        .with_label_values(&[status.as_str()])
                        .set(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot count orders"),
        }
        PlainText(m.render())
    }

    /// Readiness: 200 when the database answers, 503 when not
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self, state: Data<&State>) -> ReadyResponse {
        if !state.svc.db.is_down() && state.svc.db.ping().await {
            ReadyResponse::Ready(PlainText("ready"))
        } else {
            ReadyResponse::NotReady(PlainText("database unavailable"))
        }
    }
}
