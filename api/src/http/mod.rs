//! The HTTP surface: one `#[OpenApi]` struct per tag with thin handlers (`holds`, `orders`,
//! `payments`, `products`, `refunds`, `ops`), the one error mapping (`error`), the shared state
//! (`state`), the middleware every request passes (`middleware`), the route table
//! (`routes`) and the served OpenAPI document (`spec`).

pub mod body;
pub(crate) mod customer;
pub mod error;
mod holds;
pub mod middleware;
mod ops;
mod orders;
mod payments;
mod products;
mod refunds;
pub mod routes;
pub mod signature;
pub mod spec;
pub mod state;

pub use payments::WebhookResponse;
pub(crate) use routes::ApiTags;
pub use routes::{openapi, routes};
pub use state::{AppState, State};

/// The `Idempotent-Replayed` header value.
fn replayed(yes: bool) -> Option<String> {
    yes.then(|| "true".to_owned())
}

#[cfg(test)]
mod tests {
    /// The committed `openapi.yaml` is what the code generates. To update it:
    /// `cargo run --bin flashsale-api -- openapi > openapi.yaml`.
    #[test]
    fn committed_openapi_yaml_matches_the_code() {
        let committed = include_str!("../../../openapi.yaml");
        let generated = super::spec::yaml(service::config::DEFAULT_MAX_QTY_PER_HOLD);
        assert!(
            committed == generated,
            "openapi.yaml is out of date: run `cargo run --bin flashsale-api -- openapi > openapi.yaml`"
        );
    }
}
