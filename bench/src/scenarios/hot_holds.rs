//! hot-holds: every client holds one unit of the same product, with stock that never runs
//! out, at each client count; beside pgbench's conditional `UPDATE` of one hot row.

use super::{Bench, hold};
use crate::{
    CLIENT_COUNTS,
    pgbench::PgBaselines,
    report::{HotCurve, Row},
};

/// Stock enough that no run sells out.
const STOCK: i64 = 1_000_000_000;

/// One row per client count into `rows`; the curve (holds/s, p99 ms) for the chart.
pub(super) async fn run(bench: &Bench, pg: &PgBaselines, rows: &mut Vec<Row>) -> HotCurve {
    let mut hot = HotCurve::new();
    for c in CLIENT_COUNTS {
        let product = bench.app.create_product(STOCK, 100).await;
        let (http, url) = (bench.http.clone(), bench.app.url("/api/holds"));
        let measured = bench
            .measure(&format!("hot-holds, {c} clients"), c, move |_, _| {
                hold(http.clone(), url.clone(), product)
            })
            .await;
        let granted = measured.load.count(201) as i64;
        let left = bench.app.available(product).await;
        let note = if left == STOCK - granted {
            "stock exact".to_owned()
        } else {
            format!("STOCK MISMATCH: {left} left")
        };
        hot.insert(c, (measured.load.rate(), measured.load.pct_ms(0.99)));
        rows.push(bench.row(
            measured,
            &format!("hot-holds, {c} clients"),
            &format!("pgbench UPDATE ×{c}"),
            pg.update[&c].tps,
            note,
        ));
    }
    hot
}
