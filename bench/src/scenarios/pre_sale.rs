//! pre-sale: 256 anonymous clients holding one unit of a product whose sale starts in ten
//! years, the crowd that refreshes before the start; beside the HTTP ceiling. Every answer
//! must be 409 `sale_not_started` (anything else counts as an error) and no hold may be
//! written: the server decides it from memory.

use std::sync::{Arc, OnceLock};

use super::{Bench, hold_as};
use crate::report::Row;

/// Closed-loop clients.
const CLIENTS: usize = 256;

/// Stock enough that a hold wrongly let through would be granted, and show.
const STOCK: i64 = 1_000_000_000;

/// How far ahead the sale starts.
const STARTS_IN_SECS: i64 = 10 * 365 * 86_400;

/// Runs the crowd; the check is the answers and the untouched stock.
pub(super) async fn run(bench: &Bench, ceiling: f64) -> Row {
    let starts_at = testkit::rfc3339(testkit::unix_now() + STARTS_IN_SECS);
    let product = bench
        .app
        .create_sale_product(serde_json::json!({
            "total_stock": STOCK,
            "sale_starts_at": starts_at,
        }))
        .await;
    // The first answer that was not the expected one, for the check.
    let unexpected = Arc::new(OnceLock::<String>::new());
    let (http, url, first) = (
        bench.http.clone(),
        bench.app.url("/api/holds"),
        unexpected.clone(),
    );
    let measured = bench
        .measure("pre-sale, 256 clients", CLIENTS, move |_, _| {
            let (http, url, first) = (http.clone(), url.clone(), first.clone());
            async move {
                let answer = hold_as(http, url, product, None).await;
                match answer {
                    Ok((409, Some(code))) if code == "sale_not_started" => Ok(409),
                    other => {
                        let what = match other {
                            Ok((status, code)) => format!("{status} {}", code.unwrap_or_default()),
                            Err(e) => e.to_string(),
                        };
                        first.get_or_init(|| what.clone());
                        Err(what)
                    }
                }
            }
        })
        .await;
    let left = bench.app.available(product).await;
    let answers = match unexpected.get() {
        None => "every answer 409 sale_not_started".to_owned(),
        Some(first) => format!(
            "{} UNEXPECTED ANSWERS, the first: {first}",
            measured.load.errors
        ),
    };
    let stock = if left == STOCK {
        "stock untouched"
    } else {
        "STOCK TAKEN"
    };
    bench.row(
        measured,
        &format!("pre-sale (409 sale_not_started), {CLIENTS} clients"),
        &format!("GET /health ×{CLIENTS}"),
        ceiling,
        format!("{answers}; {stock}"),
    )
}
