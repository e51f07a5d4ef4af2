//! `POST /api/holds` and `GET /api/holds/{id}`.

use chrono::{DateTime, Utc};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path},
    payload::Json,
    types::Example,
};
use serde::Deserialize;

use poem::web::Data;

use super::{ApiTags, State, body::JsonBody, customer::Caller, error::operation_errors, replayed};
use service::{
    holds::{HoldState, HoldView},
    to_datetime,
};

/// Lifecycle of a hold.
#[derive(Debug, Enum)]
#[oai(rename_all = "lowercase")]
pub enum HoldStatus {
    Active,
    Ordered,
    Expired,
    Released,
}

impl From<HoldState> for HoldStatus {
    fn from(s: HoldState) -> Self {
        match s {
            HoldState::Active => Self::Active,
            HoldState::Ordered => Self::Ordered,
            HoldState::Expired => Self::Expired,
            HoldState::Released => Self::Released,
        }
    }
}

/// A reservation of stock until `expires_at`.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Hold {
    pub hold_id: i64,
    pub product_id: i64,
    pub qty: i64,
    pub status: HoldStatus,
    pub expires_at: DateTime<Utc>,
}

impl From<HoldView> for Hold {
    fn from(h: HoldView) -> Self {
        Self {
            hold_id: h.id,
            product_id: h.product_id,
            qty: h.qty,
            status: h.status.into(),
            expires_at: to_datetime(h.expires_at_ms),
        }
    }
}

/// A request to reserve stock. Unknown fields are ignored.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct CreateHold {
    pub product_id: i64,
    /// 1 to `MAX_QTY_PER_HOLD`, the server's setting (10 by default): `maximum` states it.
    #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
    pub qty: i64,
}

impl Example for Hold {
    fn example() -> Self {
        Self {
            hold_id: 17,
            product_id: 1,
            qty: 2,
            status: HoldStatus::Active,
            expires_at: to_datetime(1_800_000_120_000),
        }
    }
}

impl Example for CreateHold {
    fn example() -> Self {
        Self {
            product_id: 1,
            qty: 2,
        }
    }
}

/// Answers of `POST /api/holds`.
#[derive(ApiResponse)]
pub enum CreateHoldResponse {
    /// The hold. With `Idempotent-Replayed: true`, an earlier request with the same key made it.
    #[oai(status = 201)]
    Created(
        Json<Hold>,
        #[oai(header = "Idempotent-Replayed")] Option<String>,
    ),
}

/// Answers of `GET /api/holds/{id}`.
#[derive(ApiResponse)]
pub enum GetHoldResponse {
    /// The hold with its current status.
    #[oai(status = 200)]
    Ok(Json<Hold>),
}

operation_errors!(
    /// Errors of `POST /api/holds`.
    CreateHoldError {
        BadRequest = 400, "The body is not JSON (`invalid_json`).";
        Unauthorized = 401, "The customer token is malformed, badly signed, expired or cannot be verified (`invalid_token`), or the product is limited per customer and no token was sent (`customer_token_required`).";
        NotFound = 404, "No such product (`product_not_found`).";
        Conflict = 409, "Not enough stock (`insufficient_stock`); the sale has not started (`sale_not_started`) or has ended (`sale_ended`); the customer would pass the product's limit (`customer_limit_reached`); or the Idempotency-Key was used with another body (`idempotency_key_reused`).";
        PayloadTooLarge = 413, "The body is over 64 KiB (`payload_too_large`).";
        Unprocessable = 422, "A field is missing, of the wrong type or out of range, e.g. qty (`validation_error`).";
    }
);

/// Answers of `DELETE /api/holds/{id}`.
#[derive(ApiResponse)]
pub enum ReleaseHoldResponse {
    /// The hold, `released` (again: the same answer), or `expired` when its time had run out.
    #[oai(status = 200)]
    Ok(Json<Hold>),
}

operation_errors!(
    /// Errors of `DELETE /api/holds/{id}`.
    ReleaseHoldError {
        BadRequest = 400, "The id is not an integer (`invalid_parameter`).";
        Unauthorized = 401, "The customer token is malformed, badly signed, expired or cannot be verified (`invalid_token`).";
        NotFound = 404, "No such hold, or another customer's (`hold_not_found`).";
        Conflict = 409, "The hold became an order (`hold_ordered`; cancel the order instead), or a payment is recorded for it (`hold_paid`).";
    }
);

operation_errors!(
    /// Errors of `GET /api/holds/{id}`.
    GetHoldError {
        BadRequest = 400, "The id is not an integer (`invalid_parameter`).";
        Unauthorized = 401, "The customer token is malformed, badly signed, expired or cannot be verified (`invalid_token`).";
        NotFound = 404, "No such hold, or another customer's (`hold_not_found`).";
    }
);

/// The holds operations.
pub struct HoldsApi;

#[OpenApi(prefix_path = "/api", tag = "ApiTags::Holds")]
impl HoldsApi {
    /// Reserve stock
    ///
    /// Reserves `qty` units until `expires_at`. A retry with the same `Idempotency-Key`
    /// returns the same hold; the same key with a different body is 409. Keys are scoped to
    /// the customer (anonymous callers share one scope). With a customer token the hold
    /// is the customer's alone; a product limited per customer requires one.
    #[oai(path = "/holds", method = "post", operation_id = "create_hold")]
    async fn create_hold(
        &self,
        state: Data<&State>,
        caller: Caller,
        /// Makes retries safe: the same key and body return the same hold.
        #[oai(
            name = "Idempotency-Key",
            validator(min_length = 1, max_length = 255, pattern = "^[!-~]+$")
        )]
        idempotency_key: Header<Option<String>>,
        body: JsonBody<CreateHold>,
    ) -> Result<CreateHoldResponse, CreateHoldError> {
        let req = body.parse()?;
        let new = state
            .svc
            .parse_hold(req.product_id, req.qty, idempotency_key.0, caller.0)?;
        let (hold, replay) = state.svc.create_hold(new).await?;
        Ok(CreateHoldResponse::Created(
            Json(hold.into()),
            replayed(replay),
        ))
    }

    /// Get a hold
    ///
    /// `status` is current: a hold past `expires_at` without a payment shows `expired`.
    /// A customer's hold is visible only with that customer's token.
    #[oai(path = "/holds/:id", method = "get", operation_id = "get_hold")]
    async fn get_hold(
        &self,
        state: Data<&State>,
        caller: Caller,
        id: Path<i64>,
    ) -> Result<GetHoldResponse, GetHoldError> {
        let hold = state.svc.hold(id.0, caller.customer()).await?;
        Ok(GetHoldResponse::Ok(Json(hold.into())))
    }

    /// Release a hold
    ///
    /// Gives the hold's units back at once: the buyer changed their mind. A released hold
    /// can never become an order, and a payment that arrives for it is to be refunded.
    /// Releasing it again answers the same; a hold whose time ran out answers `expired`.
    /// A customer's hold can be released only with that customer's token.
    #[oai(path = "/holds/:id", method = "delete", operation_id = "release_hold")]
    async fn release_hold(
        &self,
        state: Data<&State>,
        caller: Caller,
        id: Path<i64>,
    ) -> Result<ReleaseHoldResponse, ReleaseHoldError> {
        let hold = state.svc.release_hold(id.0, caller.customer()).await?;
        Ok(ReleaseHoldResponse::Ok(Json(hold.into())))
    }
}
