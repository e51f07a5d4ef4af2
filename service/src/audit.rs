//! The stock audit: checks the invariant of every product from the stored data.
//!
//! Stored form of the invariant, for every product:
//! `total_stock = available + Σ qty(holds with status active) + Σ qty(orders pending or paid)`,
//! every term >= 0. An `active` hold past its expiry still counts as held here until it is
//! reclaimed; the API counts it as available already, which is the same stock seen earlier.

use sea_orm::{ConnectionTrait, FromQueryResult, Statement};

use crate::Result;

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
