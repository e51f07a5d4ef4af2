//! limited-sale: 256 clients hold one unit at a time of a product limited to 2 units per
//! customer, with stock that never runs out; beside pgbench's conditional `UPDATE` of one
//! hot row at 256 clients. Every client is a stream of customers with tokens (client `i`
//! buys as `c{i}-0`, then `c{i}-1`, …), moving on once its customer has 2 holds or is
//! refused with `customer_limit_reached`. Afterwards the database must show no customer
//! over the limit, or the bench fails; the holds and the stock must match the 201s.

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use reqwest::header::HeaderValue;
use sea_orm::ConnectionTrait;

use super::{Bench, hold_as};
use crate::{pgbench::PgBaselines, report::Row};

/// Closed-loop clients, one customer at a time each.
pub(super) const CLIENTS: usize = 256;

/// The product's `max_per_customer`.
const LIMIT: u64 = 2;

/// Stock enough that no run sells out: only the limit refuses.
const STOCK: i64 = 1_000_000_000;

/// The customer a client buys as now.
struct Customer {
    /// The client it belongs to.
    client: usize,
    /// Which of the client's customers it is: its `sub` is `c{client}-{n}`.
    n: u64,
    /// Holds granted to it so far.
    granted: u64,
    /// `Bearer <its token>`.
    bearer: HeaderValue,
}

impl Customer {
    /// Customer `n` of `client`, with a fresh token.
    // Minting is an HMAC over a few bytes, once per two holds: a few µs beside a request's
    // milliseconds, so it stays on the client's path rather than in a precomputed pool
    // whose size would depend on the rate being measured.
    fn new(client: usize, n: u64) -> Self {
        let token = testkit::customer_token(&format!("c{client}-{n}"));
        let bearer = HeaderValue::from_str(&testkit::bearer(&token)).expect("a JWT is ASCII");
        Self {
            client,
            n,
            granted: 0,
            bearer,
        }
    }

    /// Moves on to the client's next customer.
    fn next(&mut self) {
        *self = Self::new(self.client, self.n + 1);
    }
}

/// Runs the sale; the check queries the holds the database kept.
pub(super) async fn run(bench: &Bench, pg: &PgBaselines) -> anyhow::Result<Row> {
    let product = bench
        .app
        .create_sale_product(serde_json::json!({
            "total_stock": STOCK,
            "max_per_customer": LIMIT,
        }))
        .await;
    // One slot per client, only ever locked by its own client: never contended.
    let customers: Arc<[Mutex<Customer>]> = (0..CLIENTS)
        .map(|c| Mutex::new(Customer::new(c, 0)))
        .collect();
    let (http, url) = (bench.http.clone(), bench.app.url("/api/holds"));
    let measured = bench
        .measure("limited-sale, 256 clients", CLIENTS, move |client, _| {
            buy(
                http.clone(),
                url.clone(),
                product,
                customers.clone(),
                client,
            )
        })
        .await;
    let granted = measured.load.count(201) as i64;
    let kept = Kept::query(&bench.db.url, product).await?;
    if !kept.over_limit.is_empty() {
        let worst: Vec<String> = kept
            .over_limit
            .iter()
            .take(5)
            .map(|(sub, units)| format!("{sub}: {units}"))
            .collect();
        bail!(
            "{} limited-sale: {} customer(s) hold more than {LIMIT} units of product {product} \
             (customer: units, worst first: {})",
            bench.name,
            kept.over_limit.len(),
            worst.join(", ")
        );
    }
    let holds = if kept.holds == granted && kept.units == granted && kept.anonymous == 0 {
        "every 201 a distinct hold".to_owned()
    } else {
        format!(
            "HOLDS MISMATCH: {} holds ({} anonymous) of {} units for {granted} 201s",
            kept.holds, kept.anonymous, kept.units
        )
    };
    let left = bench.app.available(product).await;
    let stock = if left == STOCK - granted {
        "stock exact".to_owned()
    } else {
        format!("STOCK MISMATCH: {left} left")
    };
    Ok(bench.row(
        measured,
        &format!("limited-sale (max {LIMIT} per customer), {CLIENTS} clients"),
        &format!("pgbench UPDATE ×{CLIENTS}"),
        pg.update[&CLIENTS].tps,
        format!(
            "{} customers, none over {LIMIT}; {holds}; {stock}",
            kept.customers
        ),
    ))
}

/// One hold of one unit as the client's current customer, who is replaced by the next one
/// once it has its `LIMIT` or is refused for it; the HTTP status.
async fn buy(
    http: reqwest::Client,
    url: String,
    product_id: i64,
    customers: Arc<[Mutex<Customer>]>,
    client: usize,
) -> reqwest::Result<u16> {
    let bearer = customers[client].lock().expect("customer").bearer.clone();
    let (status, code) = hold_as(http, url, product_id, Some(bearer)).await?;
    let mut customer = customers[client].lock().expect("customer");
    if status == 201 {
        customer.granted += 1;
    }
    // A refusal means a grant whose answer was lost (a timeout): this customer is done too.
    if customer.granted >= LIMIT || code.as_deref() == Some("customer_limit_reached") {
        customer.next();
    }
    Ok(status)
}

/// What the database kept of the sale's holds.
struct Kept {
    /// Holds of the product.
    holds: i64,
    /// Their units.
    units: i64,
    /// Those without a customer (there must be none: the product needs a token).
    anonymous: i64,
    /// Distinct customers with a hold.
    customers: i64,
    /// Every customer whose active holds add up to more than `LIMIT` units, with those
    /// units, most first.
    over_limit: Vec<(String, i64)>,
}

impl Kept {
    /// Reads it straight from the database at `db_url`, behind the API's back.
    async fn query(db_url: &str, product: i64) -> anyhow::Result<Self> {
        let conn = sea_orm::Database::connect(db_url)
            .await
            .context("connect to the bench's database")?;
        let backend = conn.get_database_backend();
        let sql = |s: String| sea_orm::Statement::from_string(backend, s);
        // CAST: PostgreSQL sums a bigint into a numeric.
        let totals = conn
            .query_one_raw(sql(format!(
                "SELECT COUNT(*) AS holds, CAST(COALESCE(SUM(qty), 0) AS BIGINT) AS units, \
                 COUNT(*) - COUNT(customer_id) AS anonymous, \
                 COUNT(DISTINCT customer_id) AS customers \
                 FROM holds WHERE product_id = {product}"
            )))
            .await?
            .context("one row of totals")?;
        // No orders are made, so a customer's units are its active holds.
        let over = conn
            .query_all_raw(sql(format!(
                "SELECT customer_id, CAST(SUM(qty) AS BIGINT) AS units FROM holds \
                 WHERE product_id = {product} AND status = 'active' \
                 AND customer_id IS NOT NULL \
                 GROUP BY customer_id HAVING SUM(qty) > {LIMIT} ORDER BY units DESC"
            )))
            .await?;
        let kept = Self {
            holds: totals.try_get("", "holds")?,
            units: totals.try_get("", "units")?,
            anonymous: totals.try_get("", "anonymous")?,
            customers: totals.try_get("", "customers")?,
            over_limit: over
                .iter()
                .map(|r| Ok((r.try_get("", "customer_id")?, r.try_get("", "units")?)))
                .collect::<Result<_, sea_orm::DbErr>>()?,
        };
        conn.close().await?;
        Ok(kept)
    }
}
