//! sellout: 256 clients on 1,000 units until they are gone (exactly the stock must be
//! granted), then the same crowd on the sold-out product: the rejection rate, beside the
//! HTTP ceiling.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use super::{Bench, hold};
use crate::{load::load, report::Row};

/// Units on sale.
const STOCK: u64 = 1000;

/// The row of the rejections, whose check is the sellout's; and the sold-out product.
pub(super) async fn run(bench: &Bench, ceiling: f64) -> (Row, i64) {
    let product = bench.app.create_product(STOCK as i64, 100).await;
    let started = Instant::now();
    let last_grant_us = Arc::new(AtomicU64::new(0));
    let (http, url, last) = (
        bench.http.clone(),
        bench.app.url("/api/holds"),
        last_grant_us.clone(),
    );
    let selling = load(
        &format!("{}: sellout, 256 clients on 1,000 units", bench.name),
        256,
        bench.duration,
        move |_, _| {
            let (http, url, last) = (http.clone(), url.clone(), last.clone());
            async move {
                hold(http, url, product).await.inspect(|&status| {
                    if status == 201 {
                        last.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                })
            }
        },
    )
    .await;
    let granted = selling.count(201);
    let sold_out_s = last_grant_us.load(Ordering::Relaxed) as f64 / 1e6;
    // Sold out now: what remains is the rejection rate.
    let (http, url) = (bench.http.clone(), bench.app.url("/api/holds"));
    let rejecting = bench
        .measure("sold out, 256 clients", 256, move |_, _| {
            hold(http.clone(), url.clone(), product)
        })
        .await;
    let check = if granted == STOCK {
        " (exactly the stock)"
    } else {
        " WRONG: must be 1000"
    };
    let row = bench.row(
        rejecting,
        "sellout: 1,000 units, 256 clients, then 409s",
        "GET /health ×256",
        ceiling,
        format!("{granted} granted{check}; sold out in {sold_out_s:.2} s"),
    );
    (row, product)
}
