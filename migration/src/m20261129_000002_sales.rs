//! Sales: a product's sale window and limit per customer, and the customer who owns each
//! hold and order. A hold's `Idempotency-Key` becomes unique per customer (all anonymous
//! callers sharing one scope) instead of across every hold, and the count of one
//! customer's units of one product gets its indexes.

use sea_orm_migration::{
    prelude::*,
    schema::*,
    sea_orm::{ConnectionTrait, DbBackend},
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
             ON holds (idempotency_key, COALESCE(customer_id, ''))",
            // One customer's units of one product: their holds, then their orders.
            "CREATE INDEX idx_holds_product_customer \
             ON holds (product_id, customer_id, status) WHERE customer_id IS NOT NULL",
            "CREATE INDEX idx_orders_product_customer \
             ON orders (product_id, customer_id, status) WHERE customer_id IS NOT NULL",
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

/// PostgreSQL: the new columns, and the key's old unique constraint dropped.
async fn add_hold_columns_postgres(m: &SchemaManager<'_>) -> Result<(), DbErr> {
    m.alter_table(
        Table::alter()
            .table(Holds::Table)
            .add_column(string_len_null(Holds::CustomerId, CUSTOMER_ID_LEN))
            .add_column(big_integer_null(Holds::CustomerLimit))
            .to_owned(),
    )
    .await?;
    // The name PostgreSQL gave the column's UNIQUE in the first migration.
    m.get_connection()
        .execute_unprepared("ALTER TABLE holds DROP CONSTRAINT holds_idempotency_key_key")
        .await?;
    Ok(())
}

/// SQLite cannot drop a column's UNIQUE: the table is rebuilt, as SQLite's documentation
/// describes (new table, copy, drop, rename, indexes), on a connection with foreign-key
/// enforcement off, then the foreign keys are checked.
async fn rebuild_holds_sqlite(m: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = m.get_connection();
    m.create_table(holds_table("holds_new")).await?;
    db.execute_unprepared(
        "INSERT INTO holds_new (id, product_id, qty, status, expires_at_ms, paid_at_ms, \
         idempotency_key, request_hash, created_at_ms) \
         SELECT id, product_id, qty, status, expires_at_ms, paid_at_ms, idempotency_key, \
         request_hash, created_at_ms FROM holds",
    )
    .await?;
    db.execute_unprepared("DROP TABLE holds").await?;
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
    let broken = db
        .query_all_raw(sea_orm_migration::sea_orm::Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA foreign_key_check",
        ))
        .await?;
    if !broken.is_empty() {
        return Err(DbErr::Migration(format!(
            "{} rows break a foreign key after rebuilding holds",
            broken.len()
        )));
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
        .col(string_len_null(Holds::IdempotencyKey, 255))
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
