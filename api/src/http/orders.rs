//! `POST /api/orders` and `GET /api/orders/{id}`.

use chrono::{DateTime, Utc};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi, param::Path, payload::Json, types::Example,
};
use serde::Deserialize;

use poem::web::Data;

use super::{ApiTags, State, body::JsonBody, customer::Caller, error::operation_errors, replayed};
use service::{
    orders::{OrderState, OrderView},
    to_datetime,
};

/// Lifecycle of an order.
#[derive(Debug, Enum)]
#[oai(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Paid,
    Cancelled,
}

impl From<OrderState> for OrderStatus {
    fn from(s: OrderState) -> Self {
        match s {
            OrderState::Pending => Self::Pending,
            OrderState::Paid => Self::Paid,
            OrderState::Cancelled => Self::Cancelled,
        }
    }
}

/// An order.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Order {
    pub id: i64,
    pub hold_id: i64,
    pub product_id: i64,
    pub qty: i64,
    /// Price times quantity, in cents.
    pub total_cents: i64,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
}

impl From<OrderView> for Order {
    fn from(o: OrderView) -> Self {
        Self {
            id: o.id,
            hold_id: o.hold_id,
            product_id: o.product_id,
            qty: o.qty,
            total_cents: o.total_cents,
            status: o.status.into(),
            created_at: to_datetime(o.created_at_ms),
        }
    }
}

/// A request to turn a hold into an order. Unknown fields are ignored.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct CreateOrder {
    pub hold_id: i64,
}

impl Example for Order {
    fn example() -> Self {
        Self {
            id: 5,
            hold_id: 17,
            product_id: 1,
            qty: 2,
            total_cents: 25_998,
            status: OrderStatus::Pending,
            created_at: to_datetime(1_800_000_030_000),
        }
    }
}

impl Example for CreateOrder {
    fn example() -> Self {
        Self { hold_id: 17 }
    }
}

/// Answers of `POST /api/orders`.
#[derive(ApiResponse)]
pub enum CreateOrderResponse {
    /// The new order, `pending` until its payment arrives.
    #[oai(status = 201)]
    Created(Json<Order>),
    /// The hold already had this order (a retry); nothing changed.
    #[oai(status = 200)]
    Existing(
        Json<Order>,
        #[oai(header = "Idempotent-Replayed")] Option<String>,
    ),
}

/// Answers of `GET /api/orders/{id}`.
#[derive(ApiResponse)]
pub enum GetOrderResponse {
    /// The order.
    #[oai(status = 200)]
    Ok(Json<Order>),
}

operation_errors!(
    /// Errors of `POST /api/orders`.
    CreateOrderError {
        BadRequest = 400, "The body is not JSON (`invalid_json`).";
        Unauthorized = 401, "The customer token is malformed, badly signed, expired or cannot be verified (`invalid_token`).";
        NotFound = 404, "No such hold, or another customer's (`hold_not_found`).";
        Conflict = 409, "The hold expired (`hold_expired`) or was released (`hold_released`) and can never become an order.";
        PayloadTooLarge = 413, "The body is over 64 KiB (`payload_too_large`).";
        Unprocessable = 422, "A field is missing or of the wrong type (`validation_error`).";
    }
);

/// Answers of `POST /api/orders/{id}/cancel`.
#[derive(ApiResponse)]
pub enum CancelOrderResponse {
    /// The order, `cancelled` (again: the same answer).
    #[oai(status = 200)]
    Ok(Json<Order>),
}

operation_errors!(
    /// Errors of `POST /api/orders/{id}/cancel`.
    CancelOrderError {
        BadRequest = 400, "The id is not an integer (`invalid_parameter`).";
        Unauthorized = 401, "The customer token is malformed, badly signed, expired or cannot be verified (`invalid_token`).";
        NotFound = 404, "No such order, or another customer's (`order_not_found`).";
        Conflict = 409, "The order is paid, or its payment is recorded and being applied (`order_paid`).";
    }
);

operation_errors!(
    /// Errors of `GET /api/orders/{id}`.
    GetOrderError {
        BadRequest = 400, "The id is not an integer (`invalid_parameter`).";
        Unauthorized = 401, "The customer token is malformed, badly signed, expired or cannot be verified (`invalid_token`).";
        NotFound = 404, "No such order, or another customer's (`order_not_found`).";
    }
);

/// The orders operations.
pub struct OrdersApi;

#[OpenApi(prefix_path = "/api", tag = "ApiTags::Orders")]
impl OrdersApi {
    /// Turn a hold into an order
    ///
    /// One hold makes at most one order: a retry returns 200 with the same order. An expired
    /// hold never becomes an order (409 `hold_expired`), whether or not it was swept yet,
    /// nor does a released one (409 `hold_released`). An order unpaid after
    /// `ORDER_PAYMENT_TTL_SECS` is cancelled, whether or not it was swept yet.
    /// A customer's hold can be ordered only with that customer's token.
    #[oai(path = "/orders", method = "post", operation_id = "create_order")]
    async fn create_order(
        &self,
        state: Data<&State>,
        caller: Caller,
        body: JsonBody<CreateOrder>,
    ) -> Result<CreateOrderResponse, CreateOrderError> {
        let req = body.parse()?;
        let (order, replay) = state
            .svc
            .create_order(req.hold_id, caller.customer())
            .await?;
        Ok(if replay {
            CreateOrderResponse::Existing(Json(order.into()), replayed(true))
        } else {
            CreateOrderResponse::Created(Json(order.into()))
        })
    }

    /// Get an order
    ///
    /// A customer's order is visible only with that customer's token.
    #[oai(path = "/orders/:id", method = "get", operation_id = "get_order")]
    async fn get_order(
        &self,
        state: Data<&State>,
        caller: Caller,
        id: Path<i64>,
    ) -> Result<GetOrderResponse, GetOrderError> {
        let order = state.svc.order(id.0, caller.customer()).await?;
        Ok(GetOrderResponse::Ok(Json(order.into())))
    }

    /// Cancel an order
    ///
    /// Gives the order's units back at once, before its payment deadline. A payment that
    /// arrives for it afterwards is to be refunded. Cancelling it again answers the same.
    /// A customer's order can be cancelled only with that customer's token.
    #[oai(
        path = "/orders/:id/cancel",
        method = "post",
        operation_id = "cancel_order"
    )]
    async fn cancel_order(
        &self,
        state: Data<&State>,
        caller: Caller,
        id: Path<i64>,
    ) -> Result<CancelOrderResponse, CancelOrderError> {
        let order = state.svc.cancel_order(id.0, caller.customer()).await?;
        Ok(CancelOrderResponse::Ok(Json(order.into())))
    }
}
