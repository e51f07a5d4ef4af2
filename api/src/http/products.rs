//! `GET /api/products/{id}`, `GET /api/products`, and the admin's `POST /api/admin/products`
//! and `PATCH /api/admin/products/{id}`.

use chrono::{DateTime, Utc};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi, SecurityScheme,
    auth::Bearer,
    param::{Path, Query},
    payload::Json,
    types::{Example, MaybeUndefined},
};
use serde::Deserialize;

use futures::{StreamExt, stream::BoxStream};
use poem::web::{Data, sse::Event};
use poem_openapi::{payload::EventStream, types::ToJSON};

/// How often a live stock stream that has nothing new says so, keeping proxies open.
const STREAM_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

use super::{ApiTags, State, body::JsonBody, error::operation_errors};
use service::{
    Error,
    products::{NewProduct, ProductChange, ProductView},
    sales::{SaleSettings, SaleState as ServiceSaleState},
    to_datetime,
};

/// Where a product's sale is, by the server's clock.
#[derive(Debug, Enum)]
#[oai(rename_all = "lowercase")]
pub enum SaleState {
    /// `sale_starts_at` is ahead: holds get 409 `sale_not_started`.
    Upcoming,
    /// Holds are granted.
    Live,
    /// `sale_ends_at` has passed: holds get 409 `sale_ended`.
    Ended,
}

impl From<ServiceSaleState> for SaleState {
    fn from(s: ServiceSaleState) -> Self {
        match s {
            ServiceSaleState::Upcoming => Self::Upcoming,
            ServiceSaleState::Live => Self::Live,
            ServiceSaleState::Ended => Self::Ended,
        }
    }
}

/// A product and the stock a new hold could take now.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Product {
    pub id: i64,
    pub name: String,
    /// Price in integer minor units (cents).
    pub price_cents: i64,
    pub total_stock: i64,
    pub available_stock: i64,
    /// Before it, holds are refused; null: open from creation.
    #[oai(nullable)]
    pub sale_starts_at: Option<DateTime<Utc>>,
    /// From it on, holds are refused; null: no end.
    #[oai(nullable)]
    pub sale_ends_at: Option<DateTime<Utc>>,
    /// Most units one customer may hold and have ordered at once; null: no limit.
    #[oai(nullable)]
    pub max_per_customer: Option<i64>,
    pub sale_state: SaleState,
}

impl From<ProductView> for Product {
    fn from(p: ProductView) -> Self {
        let sale_state = p.sale_state();
        Self::of(p, sale_state)
    }
}

impl Product {
    /// The answer for `p` with its sale in `sale_state`.
    fn of(p: ProductView, sale_state: ServiceSaleState) -> Self {
        Self {
            sale_state: sale_state.into(),
            sale_starts_at: p.sale.starts_at_ms.map(to_datetime),
            sale_ends_at: p.sale.ends_at_ms.map(to_datetime),
            max_per_customer: p.sale.max_per_customer,
            id: p.id,
            name: p.name,
            price_cents: p.price_cents,
            total_stock: p.total_stock,
            available_stock: p.available_stock,
        }
    }
}

/// A new product. Unknown fields are ignored.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct CreateProduct {
    /// 1 to 200 characters, not only spaces, no control characters.
    #[oai(validator(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    ))]
    pub name: String,
    /// Price in cents, 0 to 1,000,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000")))]
    pub price_cents: i64,
    /// 0 to 1,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub total_stock: i64,
    /// RFC 3339. Before it, holds get 409 `sale_not_started`. May be in the past.
    #[oai(nullable)]
    pub sale_starts_at: Option<DateTime<Utc>>,
    /// RFC 3339, after `sale_starts_at`. From it on, holds get 409 `sale_ended`.
    #[oai(nullable)]
    pub sale_ends_at: Option<DateTime<Utc>>,
    /// 1 to 1,000,000. Holds then need a customer token, and one customer's units never
    /// pass it. Needs a customer key configured on the server (else 422).
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000000")))]
    pub max_per_customer: Option<i64>,
}

impl Example for Product {
    fn example() -> Self {
        Self {
            id: 1,
            name: "Limited sneaker drop".into(),
            price_cents: 12_999,
            total_stock: 100,
            available_stock: 42,
            sale_starts_at: Some(to_datetime(1_800_000_000_000)),
            sale_ends_at: None,
            max_per_customer: Some(2),
            sale_state: SaleState::Live,
        }
    }
}

impl Example for CreateProduct {
    fn example() -> Self {
        Self {
            name: "Limited sneaker drop".into(),
            price_cents: 12_999,
            total_stock: 100,
            sale_starts_at: Some(to_datetime(1_800_000_000_000)),
            sale_ends_at: None,
            max_per_customer: Some(2),
        }
    }
}

/// A change to a product: every field optional. An absent field is left as it is; `null`
/// clears a sale setting (and is refused for the other fields). Unknown fields are ignored.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct UpdateProduct {
    /// 1 to 200 characters, not only spaces, no control characters.
    #[oai(validator(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    ))]
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, deserialize_with = "present")]
    pub name: Option<String>,
    /// Price in cents, 0 to 1,000,000,000,000, for orders made from now on.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000")))]
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, deserialize_with = "present")]
    pub price_cents: Option<i64>,
    /// 0 to 1,000,000,000. `available_stock` changes by as much, at once; a reduction
    /// larger than the units free now is 409 `stock_committed`.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, deserialize_with = "present")]
    pub total_stock: Option<i64>,
    /// RFC 3339, or null for no start.
    #[oai(nullable)]
    #[serde(default)]
    pub sale_starts_at: MaybeUndefined<DateTime<Utc>>,
    /// RFC 3339 after the start, or null for no end.
    #[oai(nullable)]
    #[serde(default)]
    pub sale_ends_at: MaybeUndefined<DateTime<Utc>>,
    /// 1 to 1,000,000, or null for no limit. Setting one needs a customer key configured
    /// on the server (else 422).
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000000")))]
    #[serde(default)]
    pub max_per_customer: MaybeUndefined<i64>,
}

/// Reads a field that may be absent (its `default`) but not `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl UpdateProduct {
    /// The change for the service.
    fn into_change(self) -> ProductChange {
        let ms = |t: Option<Option<DateTime<Utc>>>| t.map(|t| t.map(|t| t.timestamp_millis()));
        ProductChange {
            name: self.name,
            price_cents: self.price_cents,
            total_stock: self.total_stock,
            sale_starts_at_ms: ms(self.sale_starts_at.into()),
            sale_ends_at_ms: ms(self.sale_ends_at.into()),
            max_per_customer: self.max_per_customer.into(),
        }
    }
}

impl Example for UpdateProduct {
    fn example() -> Self {
        Self {
            name: None,
            price_cents: None,
            total_stock: Some(150),
            sale_starts_at: MaybeUndefined::Undefined,
            sale_ends_at: MaybeUndefined::Null,
            max_per_customer: MaybeUndefined::Value(3),
        }
    }
}

/// A page of products in id order.
#[derive(Debug, Object)]
pub struct ProductList {
    pub items: Vec<Product>,
    /// The `after` of the next page; null on the last page.
    #[oai(nullable)]
    pub next_after: Option<i64>,
}

/// The admin bearer token (`ADMIN_TOKEN`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct AdminToken(Bearer);

impl AdminToken {
    /// Refuses the request (401 `unauthorized`) unless the token is the configured one.
    pub fn check(&self, state: &State) -> Result<(), Error> {
        if state.admin_token_matches(&self.0.token) {
            Ok(())
        } else {
            Err(Error::Unauthorized)
        }
    }
}

/// Answers of `GET /api/products/{id}`.
#[derive(ApiResponse)]
pub enum GetProductResponse {
    /// The product.
    #[oai(status = 200)]
    Ok(Json<Product>),
}

/// Answers of `GET /api/products/{id}/stream`.
#[derive(ApiResponse)]
pub enum StreamProductResponse {
    /// Server-sent events named `product`, each carrying the product as `GET
    /// /api/products/{id}` shows it: one at once, then one per change (at most one per
    /// 200 ms, with the latest value), and a comment line every 15 s while nothing changes.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, Product>>),
}

/// Answers of `POST /api/admin/products`.
#[derive(ApiResponse)]
pub enum CreateProductResponse {
    /// Created.
    #[oai(status = 201)]
    Created(Json<Product>),
}

operation_errors!(
    /// Errors of `GET /api/products/{id}`.
    GetProductError {
        BadRequest = 400, "The id is not an integer (`invalid_parameter`).";
        NotFound = 404, "No such product (`product_not_found`).";
    }
);

/// Answers of `GET /api/products`.
#[derive(ApiResponse)]
pub enum ListProductsResponse {
    /// A page of products.
    #[oai(status = 200)]
    Ok(Json<ProductList>),
}

/// Answers of `PATCH /api/admin/products/{id}`.
#[derive(ApiResponse)]
pub enum UpdateProductResponse {
    /// The product as changed.
    #[oai(status = 200)]
    Ok(Json<Product>),
}

operation_errors!(
    /// Errors of `GET /api/products`.
    ListProductsError {
        Unprocessable = 422, "`after` or `limit` out of range (`validation_error`).";
    }
);

operation_errors!(
    /// Errors of `PATCH /api/admin/products/{id}`.
    UpdateProductError {
        BadRequest = 400, "The body is not JSON (`invalid_json`), or the id is not an integer (`invalid_parameter`).";
        Unauthorized = 401, "Missing or wrong admin token, or no `ADMIN_TOKEN` configured (`unauthorized`).";
        NotFound = 404, "No such product (`product_not_found`).";
        Conflict = 409, "The reduction of `total_stock` is larger than the units free now: held and sold units cannot be taken back (`stock_committed`; the message says how many can be removed).";
        PayloadTooLarge = 413, "The body is over 64 KiB (`payload_too_large`).";
        Unprocessable = 422, "A field is of the wrong type, out of range or null where it cannot be (`validation_error`).";
    }
);

operation_errors!(
    /// Errors of `POST /api/admin/products`.
    CreateProductError {
        BadRequest = 400, "The body is not JSON (`invalid_json`).";
        Unauthorized = 401, "Missing or wrong admin token, or no `ADMIN_TOKEN` configured (`unauthorized`).";
        PayloadTooLarge = 413, "The body is over 64 KiB (`payload_too_large`).";
        Unprocessable = 422, "A field is missing, of the wrong type or out of range (`validation_error`).";
    }
);

/// The products operations.
pub struct ProductsApi;

#[OpenApi(prefix_path = "/api", tag = "ApiTags::Products")]
impl ProductsApi {
    /// Get a product with its available stock
    ///
    /// Served from a cache: a change made through this process is visible at once, a change
    /// made elsewhere (another API process, a hold expiring) within one second.
    #[oai(path = "/products/:id", method = "get", operation_id = "get_product")]
    async fn get_product(
        &self,
        state: Data<&State>,
        id: Path<i64>,
    ) -> Result<GetProductResponse, GetProductError> {
        Ok(GetProductResponse::Ok(Json(
            state.svc.product(id.0).await?.into(),
        )))
    }

    /// Watch a product's stock and sale
    ///
    /// A `text/event-stream` of `product` events: the product at once, then again whenever
    /// its stock, sale state or settings change, whichever process made the change (within
    /// a second), at most one event per 200 ms with the latest value. A client that reads
    /// slowly skips to the latest value. Comment lines keep the connection open while
    /// nothing changes. The stream ends when the server shuts down; reconnect then. A
    /// server already serving `LIVE_MAX_SUBSCRIBERS` streams answers 503
    /// `too_many_subscribers`.
    #[oai(
        path = "/products/:id/stream",
        method = "get",
        operation_id = "stream_product"
    )]
    async fn stream_product(
        &self,
        state: Data<&State>,
        id: Path<i64>,
    ) -> Result<StreamProductResponse, GetProductError> {
        let views = state.svc.watch_product(id.0).await?;
        let products = views.map(|v| Product::of(v.product.clone(), v.sale_state));
        Ok(StreamProductResponse::Ok(
            EventStream::new(products.boxed())
                .keep_alive(STREAM_KEEP_ALIVE)
                .to_event(|p| Event::message(p.to_json_string()).event_type("product")),
        ))
    }

    /// List products
    ///
    /// Products in id order, `limit` at a time (1 to 100, default 20), starting after the
    /// id `after` (default 0); `next_after` is the `after` of the next page.
    #[oai(path = "/products", method = "get", operation_id = "list_products")]
    async fn list_products(
        &self,
        state: Data<&State>,
        /// Only products with a larger id.
        #[oai(validator(minimum(value = "0")))]
        after: Query<Option<i64>>,
        /// Products per page, 1 to 100.
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<u64>>,
    ) -> Result<ListProductsResponse, ListProductsError> {
        let page = state
            .svc
            .products(after.0.unwrap_or(0), limit.0.unwrap_or(20))
            .await?;
        Ok(ListProductsResponse::Ok(Json(ProductList {
            items: page.items.into_iter().map(Into::into).collect(),
            next_after: page.next_after,
        })))
    }

    /// Change a product (admin)
    ///
    /// JSON merge: an absent field is left as it is, `null` clears a sale setting. A new
    /// `total_stock` changes `available_stock` by as much in the same transaction, under
    /// the product's lock, so units added during a sale are each sold once; a reduction
    /// larger than the units free now is 409 `stock_committed`. A new price applies to
    /// orders made afterwards; new sale settings apply at once in this process and within
    /// a second in every other.
    #[oai(
        path = "/admin/products/:id",
        method = "patch",
        operation_id = "update_product"
    )]
    async fn update_product(
        &self,
        state: Data<&State>,
        auth: AdminToken,
        id: Path<i64>,
        body: JsonBody<UpdateProduct>,
    ) -> Result<UpdateProductResponse, UpdateProductError> {
        auth.check(&state)?;
        let change = body.parse()?.into_change().parse()?;
        let customers_known = state.customer_tokens.is_some();
        let product = state
            .svc
            .update_product(id.0, change, customers_known)
            .await?;
        Ok(UpdateProductResponse::Ok(Json(product.into())))
    }

    /// Create a product (admin)
    #[oai(
        path = "/admin/products",
        method = "post",
        operation_id = "create_product"
    )]
    async fn create_product(
        &self,
        state: Data<&State>,
        auth: AdminToken,
        body: JsonBody<CreateProduct>,
    ) -> Result<CreateProductResponse, CreateProductError> {
        auth.check(&state)?;
        let req = body.parse()?;
        let sale = SaleSettings::parse(
            req.sale_starts_at.map(|t| t.timestamp_millis()),
            req.sale_ends_at.map(|t| t.timestamp_millis()),
            req.max_per_customer,
            state.customer_tokens.is_some(),
        )?;
        let new = NewProduct::parse(&req.name, req.price_cents, req.total_stock, sale)?;
        let created = state.svc.create_product(new).await?;
        Ok(CreateProductResponse::Created(Json(created.into())))
    }
}
