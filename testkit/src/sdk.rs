//! Calls through the SDK generated from `openapi.yaml`, in twins: `hold` answers a
//! [`Reply`] for tests that assert what an error says, `hold_ok` asserts success and
//! answers the SDK's own type ([`client::types::Hold`]).

use std::num::NonZeroU64;

use client::types::{
    CreateHold, CreateOrder, CreateProduct, ErrorBody, Hold, Order, PaymentStatus, PaymentWebhook,
    Product,
};

use crate::{Reply, TestApp};

/// What an SDK call answers: a decoded success, a documented error, or a failure.
pub(crate) type SdkResult<T> = Result<client::ResponseValue<T>, client::Error<ErrorBody>>;

impl TestApp {
    /// Creates a product through the admin API and returns its id.
    pub async fn create_product(&self, stock: i64, price_cents: i64) -> i64 {
        let body = CreateProduct {
            name: "Test sneaker".parse().expect("a valid name"),
            price_cents,
            total_stock: stock,
            sale_starts_at: None,
            sale_ends_at: None,
            max_per_customer: None,
        };
        let sent = self.admin_sdk.create_product().body(body).send().await;
        expect_status(sent, 201, "POST /api/admin/products").id
    }

    /// `GET /api/products/{id}`.
    pub async fn get_product(&self, id: i64) -> Reply {
        Reply::from_sdk(self.sdk.get_product().id(id).send().await)
    }

    /// `GET /api/products/{id}`, answered 200.
    pub async fn get_product_ok(&self, id: i64) -> Product {
        let sent = self.sdk.get_product().id(id).send().await;
        expect_status(sent, 200, "GET /api/products/{id}")
    }

    /// `available_stock` of a product, as served.
    pub async fn available(&self, product_id: i64) -> i64 {
        self.get_product_ok(product_id).await.available_stock
    }

    /// `POST /api/holds`.
    pub async fn hold(&self, product_id: i64, qty: i64) -> Reply {
        Reply::from_sdk(self.send_hold(product_id, qty, None).await)
    }

    /// `POST /api/holds`, answered 201.
    pub async fn hold_ok(&self, product_id: i64, qty: i64) -> Hold {
        let sent = self.send_hold(product_id, qty, None).await;
        expect_status(sent, 201, "POST /api/holds")
    }

    /// `POST /api/holds` with an `Idempotency-Key`.
    pub async fn hold_with_key(&self, product_id: i64, qty: i64, key: &str) -> Reply {
        Reply::from_sdk(self.send_hold(product_id, qty, Some(key)).await)
    }

    /// `POST /api/holds` with an `Idempotency-Key`, answered 201.
    pub async fn hold_with_key_ok(&self, product_id: i64, qty: i64, key: &str) -> Hold {
        let sent = self.send_hold(product_id, qty, Some(key)).await;
        expect_status(sent, 201, "POST /api/holds")
    }

    /// `POST /api/holds`, with `key` as its `Idempotency-Key` if there is one.
    async fn send_hold(&self, product_id: i64, qty: i64, key: Option<&str>) -> SdkResult<Hold> {
        let body = CreateHold {
            product_id,
            qty: sdk_qty(qty),
        };
        let mut request = self.sdk.create_hold().body(body);
        if let Some(key) = key {
            request = request.idempotency_key(key);
        }
        request.send().await
    }

    /// `GET /api/holds/{id}`.
    pub async fn get_hold(&self, id: i64) -> Reply {
        Reply::from_sdk(self.sdk.get_hold().id(id).send().await)
    }

    /// `GET /api/holds/{id}`, answered 200.
    pub async fn get_hold_ok(&self, id: i64) -> Hold {
        let sent = self.sdk.get_hold().id(id).send().await;
        expect_status(sent, 200, "GET /api/holds/{id}")
    }

    /// `POST /api/orders`.
    pub async fn order(&self, hold_id: i64) -> Reply {
        Reply::from_sdk(self.send_order(hold_id).await)
    }

    /// `POST /api/orders`, answered 201: the order is new.
    pub async fn order_ok(&self, hold_id: i64) -> Order {
        expect_status(self.send_order(hold_id).await, 201, "POST /api/orders")
    }

    /// `POST /api/orders` for hold `hold_id`.
    async fn send_order(&self, hold_id: i64) -> SdkResult<Order> {
        let body = CreateOrder { hold_id };
        self.sdk.create_order().body(body).send().await
    }

    /// `GET /api/orders/{id}`.
    pub async fn get_order(&self, id: i64) -> Reply {
        Reply::from_sdk(self.sdk.get_order().id(id).send().await)
    }

    /// `GET /api/orders/{id}`, answered 200.
    pub async fn get_order_ok(&self, id: i64) -> Order {
        let sent = self.sdk.get_order().id(id).send().await;
        expect_status(sent, 200, "GET /api/orders/{id}")
    }

    /// `POST /api/payments/webhook` without a signature; `status` is `paid` or `failed`.
    pub async fn webhook(&self, key: &str, hold_id: i64, status: &str) -> Reply {
        let body = PaymentWebhook {
            idempotency_key: Some(key.parse().expect("a valid key")),
            hold_id,
            status: status
                .parse::<PaymentStatus>()
                .unwrap_or_else(|_| panic!("no payment status {status}")),
        };
        Reply::from_sdk(self.sdk.payment_webhook().body(body).send().await)
    }
}

/// The body of an SDK answer with status `want`; anything else fails the test, naming
/// the call `what`.
fn expect_status<T>(sent: SdkResult<T>, want: u16, what: &str) -> T {
    match sent {
        Ok(rv) if rv.status().as_u16() == want => rv.into_inner(),
        Ok(rv) => panic!("{what}: answered {} instead of {want}", rv.status()),
        Err(client::Error::ErrorResponse(rv)) => {
            panic!("{what}: answered {}: {:?}", rv.status(), rv.into_inner())
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// The SDK types `qty` as it is specified: a positive integer.
fn sdk_qty(qty: i64) -> NonZeroU64 {
    u64::try_from(qty)
        .ok()
        .and_then(NonZeroU64::new)
        .expect("helpers send valid quantities; bad ones go through request_raw")
}
