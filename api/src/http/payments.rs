//! `POST /api/payments/webhook`: the payment provider's callback.

use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi, param::Header, payload::Json, types::Example,
};
use serde::Deserialize;

use poem::web::Data;

use super::{ApiTags, State, body::JsonBody, error::operation_errors, replayed, signature};
use service::payments::{Charge, PaymentEvent, WebhookBody, WebhookOutcome, WebhookReply};

/// The payment's result.
#[derive(Debug, Enum, Deserialize, Clone, Copy)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    /// The customer was charged.
    Paid,
    /// The charge did not go through.
    Failed,
}

impl From<PaymentStatus> for Charge {
    fn from(s: PaymentStatus) -> Self {
        match s {
            PaymentStatus::Paid => Self::Paid,
            PaymentStatus::Failed => Self::Failed,
        }
    }
}

/// A payment event. Fields other than these are ignored.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct PaymentWebhook {
    /// The provider's unique id of this event (1 to 255 visible ASCII characters); may
    /// come in the `Idempotency-Key` header instead, and must agree with it if both do.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "^[!-~]+$"))]
    #[serde(default, deserialize_with = "present_string")]
    pub idempotency_key: Option<String>,
    pub hold_id: i64,
    pub status: PaymentStatus,
}

/// An optional field may be left out, but not sent as `null`: the schema says string.
fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// What the event did.
#[derive(Debug, Object)]
#[oai(example)]
pub struct WebhookAnswer {
    pub idempotency_key: String,
    pub hold_id: i64,
    /// The order paid for; `null` while the payment awaits its order (202).
    #[oai(nullable)]
    pub order_id: Option<i64>,
    /// The payment's status (`paid`, `failed`); for `ignored`, the order's current status.
    pub status: String,
    /// `applied`, `awaiting_order`, `ignored` or `refund_required`.
    pub state: String,
}

impl From<WebhookBody> for WebhookAnswer {
    fn from(b: WebhookBody) -> Self {
        Self {
            idempotency_key: b.idempotency_key,
            hold_id: b.hold_id,
            order_id: b.order_id,
            status: b.status,
            state: b.state,
        }
    }
}

impl Example for PaymentWebhook {
    fn example() -> Self {
        Self {
            idempotency_key: Some("evt_3PqZ9x".into()),
            hold_id: 17,
            status: PaymentStatus::Paid,
        }
    }
}

impl Example for WebhookAnswer {
    fn example() -> Self {
        Self {
            idempotency_key: "evt_3PqZ9x".into(),
            hold_id: 17,
            order_id: Some(5),
            status: "paid".into(),
            state: "applied".into(),
        }
    }
}

/// The answers of `POST /api/payments/webhook` that record the event.
#[derive(ApiResponse)]
pub enum WebhookResponse {
    /// Applied, ignored or refund required. `Idempotent-Replayed: true` on a retry.
    #[oai(status = 200)]
    Done(
        Json<WebhookAnswer>,
        #[oai(header = "Idempotent-Replayed")] Option<String>,
    ),
    /// Recorded; applied once the hold's order exists.
    #[oai(status = 202)]
    Accepted(
        Json<WebhookAnswer>,
        #[oai(header = "Idempotent-Replayed")] Option<String>,
    ),
}

impl From<WebhookReply> for WebhookResponse {
    fn from(r: WebhookReply) -> Self {
        let header = replayed(r.replayed);
        match r.outcome {
            WebhookOutcome::Settled => Self::Done(Json(r.body.into()), header),
            WebhookOutcome::AwaitingOrder => Self::Accepted(Json(r.body.into()), header),
        }
    }
}

operation_errors!(
    /// Errors of `POST /api/payments/webhook`.
    WebhookError {
        BadRequest = 400, "The body is not JSON (`invalid_json`).";
        Unauthorized = 401, "Missing, malformed, wrong or stale X-Signature (`invalid_signature`); nothing is recorded.";
        NotFound = 404, "No such hold (`hold_not_found`); nothing is recorded.";
        Conflict = 409, "The idempotency key was used with a different event (`idempotency_key_reused`).";
        PayloadTooLarge = 413, "The body is over 64 KiB (`payload_too_large`).";
        Unprocessable = 422, "A field is missing, of the wrong type or out of range, or the body and header keys differ (`validation_error`).";
    }
);

/// The `Payments` operations.
pub struct PaymentsApi;

#[OpenApi(prefix_path = "/api", tag = "ApiTags::Payments")]
impl PaymentsApi {
    /// Receive a payment event
    ///
    /// Each idempotency key is processed once; retries get the first answer again.
    /// When `WEBHOOK_SECRET` is set, `X-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret,
    /// "<t>.<raw body>")>` is required and `t` must be within 300 s of now.
    #[oai(
        path = "/payments/webhook",
        method = "post",
        operation_id = "payment_webhook"
    )]
    async fn webhook(
        &self,
        state: Data<&State>,
        /// The event's idempotency key, if not in the body.
        #[oai(
            name = "Idempotency-Key",
            validator(min_length = 1, max_length = 255, pattern = "^[!-~]+$")
        )]
        idempotency_key: Header<Option<String>>,
        /// `t=<unix seconds>,v1=<hex HMAC-SHA256>`; required when `WEBHOOK_SECRET` is set.
        #[oai(name = "X-Signature")]
        x_signature: Header<Option<String>>,
        body: JsonBody<PaymentWebhook>,
    ) -> Result<WebhookResponse, WebhookError> {
        if !state.webhook_secrets.is_empty() {
            signature::verify(
                &state.webhook_secrets,
                x_signature.0.as_deref(),
                body.raw(),
                chrono::Utc::now().timestamp(),
            )?;
        }
        let req = body.parse()?;
        let event = PaymentEvent::parse(
            req.idempotency_key,
            idempotency_key.0,
            req.hold_id,
            req.status.into(),
        )?;
        Ok(state.svc.receive_payment(event).await?.into())
    }
}
