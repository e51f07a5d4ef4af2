//! The admin's `GET /api/admin/refunds` and `POST /api/admin/refunds/{key}/resolve`.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::Example,
};

use super::{ApiTags, State, error::operation_errors, products::AdminToken};
use service::{
    refunds::{RefundCursor, RefundView},
    to_datetime,
};

/// Why a payment must be refunded.
#[derive(Debug, Enum)]
#[oai(rename_all = "snake_case")]
pub enum RefundReason {
    /// The hold expired unpaid before the payment came.
    HoldExpired,
    /// The buyer released the hold before the payment came.
    HoldReleased,
    /// The order was cancelled (by its buyer, a failed payment, or its payment deadline).
    OrderCancelled,
    /// The hold or its order was already paid under another key.
    DoubleCharge,
}

impl From<service::refunds::RefundReason> for RefundReason {
    fn from(r: service::refunds::RefundReason) -> Self {
        use service::refunds::RefundReason as Stored;
        match r {
            Stored::HoldExpired => Self::HoldExpired,
            Stored::HoldReleased => Self::HoldReleased,
            Stored::OrderCancelled => Self::OrderCancelled,
            Stored::DoubleCharge => Self::DoubleCharge,
        }
    }
}

/// A payment that could not be honoured and must be refunded.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Refund {
    /// The payment event's idempotency key: the provider's reference of the charge.
    pub idempotency_key: String,
    pub hold_id: i64,
    /// The hold's order; null when it had none.
    #[oai(nullable)]
    pub order_id: Option<i64>,
    pub product_id: i64,
    pub qty: i64,
    /// The order's total, or the hold's units at the price when the refund was decided.
    pub amount_cents: i64,
    pub reason: RefundReason,
    /// When the payment was found to need a refund.
    pub recorded_at: DateTime<Utc>,
    /// When the operator marked it refunded; null until then.
    #[oai(nullable)]
    pub resolved_at: Option<DateTime<Utc>>,
}

impl From<RefundView> for Refund {
    fn from(r: RefundView) -> Self {
        Self {
            idempotency_key: r.idempotency_key,
            hold_id: r.hold_id,
            order_id: r.order_id,
            product_id: r.product_id,
            qty: r.qty,
            amount_cents: r.amount_cents,
            reason: r.reason.into(),
            recorded_at: to_datetime(r.recorded_at_ms),
            resolved_at: r.resolved_at_ms.map(to_datetime),
        }
    }
}

impl Example for Refund {
    fn example() -> Self {
        Self {
            idempotency_key: "evt_3PqL9x".into(),
            hold_id: 17,
            order_id: None,
            product_id: 1,
            qty: 2,
            amount_cents: 25_998,
            reason: RefundReason::HoldExpired,
            recorded_at: to_datetime(1_800_000_200_000),
            resolved_at: None,
        }
    }
}

/// A page of refunds, oldest first.
#[derive(Debug, Object)]
pub struct RefundList {
    pub items: Vec<Refund>,
    /// The `after` of the next page; null on the last page.
    #[oai(nullable)]
    pub next_after: Option<String>,
}

/// Answers of `GET /api/admin/refunds`.
#[derive(ApiResponse)]
pub enum ListRefundsResponse {
    /// Unresolved refunds, oldest first.
    #[oai(status = 200)]
    Ok(Json<RefundList>),
}

/// Answers of `POST /api/admin/refunds/{idempotency_key}/resolve`.
#[derive(ApiResponse)]
pub enum ResolveRefundResponse {
    /// The refund with `resolved_at`; resolving it again answers the same.
    #[oai(status = 200)]
    Ok(Json<Refund>),
}

operation_errors!(
    /// Errors of `GET /api/admin/refunds`.
    ListRefundsError {
        Unauthorized = 401, "Missing or wrong admin token, or no `ADMIN_TOKEN` configured (`unauthorized`).";
        Unprocessable = 422, "`after` is not a cursor this server gave, or `limit` is out of range (`validation_error`).";
    }
);

operation_errors!(
    /// Errors of `POST /api/admin/refunds/{idempotency_key}/resolve`.
    ResolveRefundError {
        Unauthorized = 401, "Missing or wrong admin token, or no `ADMIN_TOKEN` configured (`unauthorized`).";
        NotFound = 404, "No payment with this key must be refunded (`refund_not_found`).";
    }
);

/// The refunds operations.
pub struct RefundsApi;

#[OpenApi(prefix_path = "/api", tag = "ApiTags::Refunds")]
impl RefundsApi {
    /// List the refunds to make (admin)
    ///
    /// Every payment that could not be honoured and is not yet marked refunded, oldest
    /// first, `limit` at a time (1 to 500, default 100); `next_after` is the `after` of the
    /// next page.
    #[oai(path = "/admin/refunds", method = "get", operation_id = "list_refunds")]
    async fn list_refunds(
        &self,
        state: Data<&State>,
        auth: AdminToken,
        /// The `next_after` of the previous page.
        #[oai(validator(max_length = 300))]
        after: Query<Option<String>>,
        /// Refunds per page, 1 to 500.
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u64>>,
    ) -> Result<ListRefundsResponse, ListRefundsError> {
        auth.check(&state)?;
        let after = after.0.as_deref().map(RefundCursor::parse).transpose()?;
        let page = state.svc.refunds(after, limit.0.unwrap_or(100)).await?;
        Ok(ListRefundsResponse::Ok(Json(RefundList {
            items: page.items.into_iter().map(Into::into).collect(),
            next_after: page.next_after.map(|c| c.to_text()),
        })))
    }

    /// Mark a refund made (admin)
    ///
    /// Records that the payment with this key was refunded: it leaves the list. Resolving
    /// it again answers the same, with the first `resolved_at`.
    #[oai(
        path = "/admin/refunds/:idempotency_key/resolve",
        method = "post",
        operation_id = "resolve_refund"
    )]
    async fn resolve_refund(
        &self,
        state: Data<&State>,
        auth: AdminToken,
        idempotency_key: Path<String>,
    ) -> Result<ResolveRefundResponse, ResolveRefundError> {
        auth.check(&state)?;
        let refund = state.svc.resolve_refund(&idempotency_key.0).await?;
        Ok(ResolveRefundResponse::Ok(Json(refund.into())))
    }
}
