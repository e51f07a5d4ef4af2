//! The stock audit: checks the invariant of every product from the stored data.
//!
//! Stored form of the invariant, for every product:
//! `total_stock = available + Σ qty(holds with status active) + Σ qty(orders pending or paid)`,
//! every term >= 0; expired and released holds and cancelled orders hold nothing. An
//! `active` hold past its expiry, or a `pending` order past its payment deadline, still
//! counts here until it is reclaimed; the API counts it as available already, which is
//! the same stock seen earlier.
//!
//! And for every customer of a product: their units (what [`crate::sales::COUNTED_HOLD`]
//! and [`crate::sales::counted_order`] count, as for the limit itself) within the limit
//! their latest hold of it was granted under. Units only grow by grants, each of which
//! kept the customer within the limit then in force, so a limit the operator lowered
//! afterwards does not make a breach.

use sea_orm::{ConnectionTrait, FromQueryResult, Statement};

use crate::{
    Result,
    sales::{COUNTED_HOLD, counted_order, counted_values},
};

/// One product's figures.
#[derive(Clone, Debug, PartialEq, Eq, FromQueryResult)]
pub struct AuditRow {
    /// The product's id.
    pub product_id: i64,
    /// The product's name.
    pub name: String,
    /// All the product's units: available, held and ordered.
    pub total_stock: i64,
    /// Units free to hold, as stored.
    pub available: i64,
    /// Units of holds that say `active`, overdue ones included.
    pub held: i64,
    /// Units of orders `pending` or `paid`.
    pub ordered: i64,
}

impl AuditRow {
    /// `true` when this product's stock adds up.
    pub fn holds(&self) -> bool {
        self.available >= 0
            && self.held >= 0
            && self.ordered >= 0
            && self.total_stock == self.available + self.held + self.ordered
    }
}

/// Reads every product's figures in one statement, so they come from one snapshot.
pub async fn audit(conn: &impl ConnectionTrait) -> Result<Vec<AuditRow>> {
    let sql = "SELECT p.id AS product_id, p.name AS name, p.total_stock AS total_stock, \
                 p.available AS available, \
                 CAST(COALESCE((SELECT SUM(h.qty) FROM holds h \
                     WHERE h.product_id = p.id AND h.status = 'active'), 0) AS BIGINT) AS held, \
                 CAST(COALESCE((SELECT SUM(o.qty) FROM orders o \
                     WHERE o.product_id = p.id AND o.status IN ('pending', 'paid')), 0) AS BIGINT) AS ordered \
               FROM products p ORDER BY p.id";
    let stmt = Statement::from_string(conn.get_database_backend(), sql);
    Ok(AuditRow::find_by_statement(stmt).all(conn).await?)
}

/// A customer holding more units of a product than they were granted under.
#[derive(Clone, Debug, PartialEq, Eq, FromQueryResult)]
pub struct LimitBreach {
    /// The product.
    pub product_id: i64,
    /// The customer.
    pub customer_id: String,
    /// Their units now: holds that still reserve, and pending and paid orders.
    pub units: i64,
    /// The limit their latest hold of the product was granted under.
    pub limit: i64,
}

/// Every customer whose units of a product exceed the limit their latest hold of it was
/// granted under, at `now_ms` (orders pending longer than `order_ttl_ms` counting for
/// nothing), in one statement.
pub async fn limit_breaches(
    conn: &impl ConnectionTrait,
    now_ms: i64,
    order_ttl_ms: i64,
) -> Result<Vec<LimitBreach>> {
    #[derive(FromQueryResult)]
    struct Units {
        product_id: i64,
        customer_id: String,
        units: i64,
        granted_under: Option<i64>,
    }
    let counted_order = counted_order();
    let sql = format!(
        "SELECT u.product_id AS product_id, u.customer_id AS customer_id, \
           CAST(SUM(u.qty) AS BIGINT) AS units, \
           (SELECT h.customer_limit FROM holds h \
             WHERE h.product_id = u.product_id AND h.customer_id = u.customer_id \
             ORDER BY h.id DESC LIMIT 1) AS granted_under \
         FROM ( \
           SELECT product_id, customer_id, qty FROM holds \
            WHERE customer_id IS NOT NULL AND {COUNTED_HOLD} \
           UNION ALL \
           SELECT product_id, customer_id, qty FROM orders \
            WHERE customer_id IS NOT NULL AND {counted_order} \
         ) AS u \
         GROUP BY u.product_id, u.customer_id \
         ORDER BY u.product_id, u.customer_id"
    );
    let stmt = Statement::from_sql_and_values(
        conn.get_database_backend(),
        sql,
        counted_values(now_ms, now_ms - order_ttl_ms),
    );
    let rows = Units::find_by_statement(stmt).all(conn).await?;
    Ok(rows
        .into_iter()
        .filter_map(|u| {
            let limit = u.granted_under?;
            (u.units > limit).then_some(LimitBreach {
                product_id: u.product_id,
                customer_id: u.customer_id,
                units: u.units,
                limit,
            })
        })
        .collect())
}
