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

    /// Readiness: 200 when the database answers, 503 when not
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self, state: Data<&State>) -> ReadyResponse {
        if state.svc.db.ping().await {
            ReadyResponse::Ready(PlainText("ready"))
        } else {
            ReadyResponse::NotReady(PlainText("database unavailable"))
        }
    }
}
