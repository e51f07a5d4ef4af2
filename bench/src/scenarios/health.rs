//! `GET /health` at 256 clients: the HTTP ceiling of the server, the baseline of the
//! scenarios that barely touch the database.

use super::{Bench, status};
use crate::report::Row;

/// Measures the ceiling; the row has no baseline of its own.
pub(super) async fn run(bench: &Bench) -> Row {
    let sdk = bench.sdk.clone();
    let health = bench
        .measure("GET /health, 256 clients", 256, move |_, _| {
            let sdk = sdk.clone();
            async move { status(sdk.health().send().await) }
        })
        .await;
    let ceiling = health.load.rate();
    bench.row(
        health,
        "GET /health (HTTP ceiling), 256 clients",
        "—",
        ceiling,
        String::new(),
    )
}
