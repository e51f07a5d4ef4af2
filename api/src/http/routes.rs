//! The route table: the OpenAPI service assembled from one `#[OpenApi]` struct per tag,
//! every route of the server with its middleware, and the route templates that metrics
//! and `405 Allow` answers are keyed by.

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Response, Route};
use poem_openapi::{OpenApiService, Tags};

use crate::demo::{self, Demo};

use super::{State, error, holds, middleware, ops, orders, payments, products, refunds, spec};

/// The tags the operations are grouped by in the OpenAPI document.
#[derive(Tags)]
pub(crate) enum ApiTags {
    /// Products and their available stock.
    Products,
    /// Reserving stock.
    Holds,
    /// Turning holds into orders.
    Orders,
    /// The payment provider's webhook.
    Payments,
    /// Payments that must be refunded (admin).
    Refunds,
    /// Health and readiness probes.
    Operations,
}

/// The OpenAPI service of the whole API (it needs no state: handlers get it as data).
pub fn openapi() -> OpenApiService<
    (
        products::ProductsApi,
        holds::HoldsApi,
        orders::OrdersApi,
        payments::PaymentsApi,
        refunds::RefundsApi,
        ops::OpsApi,
    ),
    (),
> {
    OpenApiService::new(
        (
            products::ProductsApi,
            holds::HoldsApi,
            orders::OrdersApi,
            payments::PaymentsApi,
            refunds::RefundsApi,
            ops::OpsApi,
        ),
        "flashsale",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Checkout back end for flash sales: holds, orders and payment webhooks that never oversell.")
}

/// Every route of the server; `demo`: demo mode's storefront and its routes.
pub fn routes(state: State, demo: Option<Arc<Demo>>) -> impl Endpoint<Output = Response> {
    let route = spec::serve(Route::new(), state.svc.rules.max_qty_per_hold).nest("/", openapi());
    demo::serve(route, demo)
        .around(middleware::refuse_while_database_down)
        .data(state)
        .catch_all_error(error::catch_all)
        .around(middleware::observe)
}

/// The OpenAPI path template serving `path` and its methods, read from the OpenAPI
/// document; `None` for paths outside it (`/docs`, `/openapi.yaml`, unknown routes).
pub(crate) fn route_of(path: &str) -> Option<&'static (String, Vec<String>, String)> {
    static TABLE: std::sync::OnceLock<Vec<(String, Vec<String>, String)>> =
        std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let spec: serde_json::Value =
            serde_json::from_str(&openapi().spec()).expect("the spec is JSON");
        spec["paths"]
            .as_object()
            .expect("the spec has paths")
            .iter()
            .map(|(template, ops)| {
                let segments = template.split('/').map(str::to_owned).collect();
                let template = template.clone();
                let methods = ops
                    .as_object()
                    .expect("path item")
                    .keys()
                    .map(|m| m.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join(", ");
                (template, segments, methods)
            })
            .collect()
    });
    let segments: Vec<&str> = path.split('/').collect();
    table.iter().find(|(_, template, _)| {
        template.len() == segments.len()
            && template
                .iter()
                .zip(&segments)
                .all(|(t, s)| t.starts_with('{') || t == s)
    })
}

/// The methods served at `path` (paths outside the OpenAPI document serve GET only, but
/// the demo's few that take POST).
pub(crate) fn allowed_methods(path: &str) -> &'static str {
    let outside = if demo::POST_PATHS.contains(&path) {
        "POST"
    } else {
        "GET"
    };
    route_of(path).map_or(outside, |(_, _, methods)| methods.as_str())
}
