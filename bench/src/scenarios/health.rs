//! `GET /health` at 256 clients: the HTTP ceiling of the server, the baseline of the
//! scenarios that barely touch the database.

use super::{Bench, get};
use crate::report::Row;

/// Measures the ceiling; the row has no baseline of its own.
pub(super) async fn run(bench: &Bench) -> Row {
    let (http, url) = (bench.http.clone(), bench.app.url("/health"));
    let health = bench
        .measure("GET /health, 256 clients", 256, move |_, _| {
            get(http.clone(), url.clone())
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
