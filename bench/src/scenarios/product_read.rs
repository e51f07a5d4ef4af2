//! product-read: 256 clients reading the sold-out product, which the server answers from
//! its cache; beside the HTTP ceiling.

use super::{Bench, get};
use crate::report::Row;

/// Reads `product` at 256 clients.
pub(super) async fn run(bench: &Bench, ceiling: f64, product: i64) -> Row {
    let (http, url) = (
        bench.http.clone(),
        bench.app.url(&format!("/api/products/{product}")),
    );
    let read = bench
        .measure("product-read, 256 clients", 256, move |_, _| {
            get(http.clone(), url.clone())
        })
        .await;
    bench.row(
        read,
        "product-read, 256 clients",
        "GET /health ×256",
        ceiling,
        String::new(),
    )
}
