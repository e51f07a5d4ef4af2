//! Reaching behind the API into its database: a stuck writer that holds a product's lock,
//! and one-value queries that read what the API stored.

use sea_orm::{
    ConnectionTrait, DbBackend, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};

/// A second session that holds what every writer of a product needs: on PostgreSQL the
/// product's row lock (`SELECT … FOR UPDATE`), on SQLite the database's write lock
/// (`BEGIN IMMEDIATE`). It stands for a stuck transaction; dropped or released, it lets go.
pub struct StuckWriter {
    txn: Option<sea_orm::DatabaseTransaction>,
    conn: sea_orm::DatabaseConnection,
}

impl StuckWriter {
    /// Takes the lock on product `product_id` of the database at `db_url`.
    pub async fn lock_product(db_url: &str, product_id: i64) -> Self {
        let conn = sea_orm::Database::connect(db_url).await.expect("connect");
        let txn = conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
            .expect("begin");
        if conn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!(
                "SELECT id FROM products WHERE id = {product_id} FOR UPDATE"
            ))
            .await
            .expect("lock the product row");
        }
        Self {
            txn: Some(txn),
            conn,
        }
    }

    /// Ends the stuck transaction (rolled back: it wrote nothing).
    pub async fn release(mut self) {
        if let Some(txn) = self.txn.take() {
            txn.rollback().await.expect("rollback");
        }
        let _ = self.conn.clone().close().await;
    }
}

/// Runs one `SELECT` that yields a single integer on the database at `db_url`.
pub async fn query_i64(db_url: &str, sql: &str) -> i64 {
    let row = one_row(db_url, sql.to_owned(), "one row").await;
    row.try_get_by_index(0).expect("an integer")
}

/// The stored `status` column of row `id` of `table` (what the worker keeps true).
pub async fn stored_status(db_url: &str, table: &str, id: i64) -> String {
    let sql = format!("SELECT status FROM {table} WHERE id = {id}");
    let row = one_row(db_url, sql, "row exists").await;
    row.try_get("", "status").expect("status column")
}

/// Runs `sql`, a statement that changes data behind the service's back (a forged state
/// for a check to find), on the database at `db_url`.
pub async fn execute(db_url: &str, sql: &str) {
    let conn = sea_orm::Database::connect(db_url).await.expect("connect");
    let stmt = Statement::from_string(conn.get_database_backend(), sql.to_owned());
    conn.execute_raw(stmt).await.expect("statement");
    conn.close().await.ok();
}

/// The first row `sql` yields on the database at `db_url`; `expected` says why there is one.
async fn one_row(db_url: &str, sql: String, expected: &str) -> sea_orm::QueryResult {
    let conn = sea_orm::Database::connect(db_url).await.expect("connect");
    let stmt = Statement::from_string(conn.get_database_backend(), sql);
    let row = conn
        .query_one_raw(stmt)
        .await
        .expect("query")
        .expect(expected);
    conn.close().await.ok();
    row
}
