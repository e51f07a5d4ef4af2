//! Sales: a product's sale window and limit per customer, and the customer who owns each
//! hold and order. A hold's `Idempotency-Key` becomes unique per customer (all anonymous
//! callers sharing one scope) instead of across every hold, and the count of one
//! customer's units of one product gets its indexes.
//!
//! The key's column is renamed `scoped_idempotency_key`: a process of the previous version
//! still running on the upgraded database (a rolling deploy) would look keys up across
//! customers and grant holds past a limit it does not know; with the column gone from
//! under it, its every hold statement fails instead, and it can answer nothing wrong.

use sea_orm_migration::{
    prelude::*,
    schema::*,
    sea_orm::{ConnectionTrait, DbBackend, Statement},
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    SaleStartsAtMs,
    SaleEndsAtMs,
    MaxPerCustomer,
}

#[derive(DeriveIden)]
enum Holds {
    Table,
    Id,
    ProductId,
    Qty,
    Status,
    ExpiresAtMs,
    PaidAtMs,
    IdempotencyKey,
    ScopedIdempotencyKey,
    RequestHash,
    CreatedAtMs,
    CustomerId,
    CustomerLimit,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    CustomerId,
}

/// Longest customer id (a token's `sub`), in characters.
const CUSTOMER_ID_LEN: u32 = 128;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction on both back ends: SQLite rebuilds `holds`, and a half-done rebuild
    /// must not be left behind.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            Products::SaleStartsAtMs,
            Products::SaleEndsAtMs,
            Products::MaxPerCustomer,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Products::Table)
                    .add_column(big_integer_null(col))
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(Orders::Table)
                .add_column(string_len_null(Orders::CustomerId, CUSTOMER_ID_LEN))
                .to_owned(),
        )
        .await?;
        match m.get_database_backend() {
            DbBackend::Postgres => add_hold_columns_postgres(m).await?,
            _ => rebuild_holds_sqlite(m).await?,
        }
        let db = m.get_connection();
        for sql in [
            // Anonymous callers share the scope ''; a token's `sub` is never empty.
            "CREATE UNIQUE INDEX idx_holds_key_per_customer \
             ON holds (scoped_idempotency_key, COALESCE(customer_id, ''))",
            // One customer's units of one product: their holds, then their orders. The
            // customer leads, so that no index of the product's competes for the lookup.
            "CREATE INDEX idx_holds_customer \
             ON holds (customer_id, product_id) WHERE customer_id IS NOT NULL",
            "CREATE INDEX idx_orders_customer \
             ON orders (customer_id, product_id) WHERE customer_id IS NOT NULL",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "sales cannot be undone: holds of different customers may share a key".into(),
        ))
    }
}

/// PostgreSQL: the new columns, the key's column renamed, and its unique constraint
/// dropped, whatever its name.
async fn add_hold_columns_postgres(m: &SchemaManager<'_>) -> Result<(), DbErr> {
    m.alter_table(
        Table::alter()
            .table(Holds::Table)
            .add_column(string_len_null(Holds::CustomerId, CUSTOMER_ID_LEN))
            .add_column(big_integer_null(Holds::CustomerLimit))
            .to_owned(),
    )
    .await?;
    // PostgreSQL takes a RENAME alone, not beside other changes.
    m.alter_table(
        Table::alter()
            .table(Holds::Table)
            .rename_column(Holds::IdempotencyKey, Holds::ScopedIdempotencyKey)
            .to_owned(),
    )
    .await?;
    let db = m.get_connection();
    let unique_on_key = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT c.conname AS name FROM pg_constraint c \
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) \
             WHERE c.conrelid = 'holds'::regclass AND c.contype = 'u' \
               AND cardinality(c.conkey) = 1 AND a.attname = 'scoped_idempotency_key'",
        ))
        .await?;
    for row in unique_on_key {
        let name: String = row.try_get("", "name")?;
        let quoted = name.replace('"', "\"\"");
        db.execute_unprepared(&format!("ALTER TABLE holds DROP CONSTRAINT \"{quoted}\""))
            .await?;
    }
    Ok(())
}

/// SQLite cannot drop a column's UNIQUE: the table is rebuilt, as SQLite's documentation
/// describes (new table, copy, drop, rename, indexes), on a connection with foreign-key
/// enforcement off, then the foreign keys are checked.
async fn rebuild_holds_sqlite(m: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = m.get_connection();
    m.create_table(holds_table("holds_new")).await?;
    for sql in [
        "INSERT INTO holds_new (id, product_id, qty, status, expires_at_ms, paid_at_ms, \
         scoped_idempotency_key, request_hash, created_at_ms) \
         SELECT id, product_id, qty, status, expires_at_ms, paid_at_ms, idempotency_key, \
         request_hash, created_at_ms FROM holds",
        // Ids handed out go on from where the old table's AUTOINCREMENT was, even past rows
        // that were deleted: queued jobs name holds by id.
        "DELETE FROM sqlite_sequence WHERE name = 'holds_new'",
        "INSERT INTO sqlite_sequence (name, seq) \
         SELECT 'holds_new', seq FROM sqlite_sequence WHERE name = 'holds'",
        "DROP TABLE holds",
    ] {
        db.execute_unprepared(sql).await?;
    }
    db.execute_unprepared("ALTER TABLE holds_new RENAME TO holds")
        .await?;
    // The first migration's indexes went with the old table.
    for (name, cols) in [
        (
            "idx_holds_product_status_expiry",
            vec![Holds::ProductId, Holds::Status, Holds::ExpiresAtMs],
        ),
        (
            "idx_holds_status_expiry",
            vec![Holds::Status, Holds::ExpiresAtMs],
        ),
    ] {
        let mut index = Index::create();
        index.name(name).table(Holds::Table);
        for col in cols {
            index.col(col);
        }
        m.create_index(index.to_owned()).await?;
    }
    // The tables whose foreign keys the rebuild could break, and only those.
    for table in ["holds", "orders", "payments"] {
        let broken = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("PRAGMA foreign_key_check({table})"),
            ))
            .await?;
        if !broken.is_empty() {
            return Err(DbErr::Migration(format!(
                "{} row(s) of {table} break a foreign key after rebuilding holds",
                broken.len()
            )));
        }
    }
    Ok(())
}

/// `holds` as the first migration made it, without the key's UNIQUE, with the customer.
fn holds_table(name: &str) -> TableCreateStatement {
    Table::create()
        .table(Alias::new(name))
        .col(big_pk_auto(Holds::Id))
        .col(big_integer(Holds::ProductId))
        .col(big_integer(Holds::Qty))
        .col(string_len(Holds::Status, 16))
        .col(big_integer(Holds::ExpiresAtMs))
        .col(big_integer_null(Holds::PaidAtMs))
        .col(string_len_null(Holds::ScopedIdempotencyKey, 255))
        .col(string_len_null(Holds::RequestHash, 64))
        .col(big_integer(Holds::CreatedAtMs))
        .col(string_len_null(Holds::CustomerId, CUSTOMER_ID_LEN))
        .col(big_integer_null(Holds::CustomerLimit))
        .check(Expr::col(Holds::Qty).gt(0))
        .foreign_key(
            ForeignKey::create()
                .from(Alias::new(name), Holds::ProductId)
                .to(Products::Table, Products::Id),
        )
        .to_owned()
}
