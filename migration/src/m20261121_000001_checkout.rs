//! Products, holds, orders and payments, with the constraints that back the stock invariant:
//! `available` can never leave `0..=total_stock` and a hold can have at most one order.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    Name,
    PriceCents,
    TotalStock,
    Available,
    CreatedAtMs,
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
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    HoldId,
    ProductId,
    Qty,
    TotalCents,
    Status,
    CreatedAtMs,
    UpdatedAtMs,
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    IdempotencyKey,
    HoldId,
    Status,
    RequestHash,
    ResponseStatus,
    ResponseBody,
    Outcome,
    OrderId,
    AppliedAtMs,
    CreatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Products::Table)
                .if_not_exists()
                .col(big_pk_auto(Products::Id))
                .col(string_len(Products::Name, 200))
                .col(big_integer(Products::PriceCents))
                .col(big_integer(Products::TotalStock))
                .col(big_integer(Products::Available))
                .col(big_integer(Products::CreatedAtMs))
                .check(Expr::col(Products::PriceCents).gte(0))
                .check(Expr::col(Products::TotalStock).gte(0))
                .check(Expr::col(Products::Available).gte(0))
                .check(Expr::col(Products::Available).lte(Expr::col(Products::TotalStock)))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Holds::Table)
                .if_not_exists()
                .col(big_pk_auto(Holds::Id))
                .col(big_integer(Holds::ProductId))
                .col(big_integer(Holds::Qty))
                .col(string_len(Holds::Status, 16))
                .col(big_integer(Holds::ExpiresAtMs))
                .col(big_integer_null(Holds::PaidAtMs))
                .col(string_len_null(Holds::IdempotencyKey, 255).unique_key())
                .col(string_len_null(Holds::RequestHash, 64))
                .col(big_integer(Holds::CreatedAtMs))
                .check(Expr::col(Holds::Qty).gt(0))
                .foreign_key(
                    ForeignKey::create()
                        .from(Holds::Table, Holds::ProductId)
                        .to(Products::Table, Products::Id),
                )
                .to_owned(),
        )
        .await?;
        // Reclaiming overdue holds and computing a product's free stock scan exactly this.
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("idx_holds_product_status_expiry")
                .table(Holds::Table)
                .col(Holds::ProductId)
                .col(Holds::Status)
                .col(Holds::ExpiresAtMs)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("idx_holds_status_expiry")
                .table(Holds::Table)
                .col(Holds::Status)
                .col(Holds::ExpiresAtMs)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Orders::Table)
                .if_not_exists()
                .col(big_pk_auto(Orders::Id))
                .col(big_integer_uniq(Orders::HoldId))
                .col(big_integer(Orders::ProductId))
                .col(big_integer(Orders::Qty))
                .col(big_integer(Orders::TotalCents))
                .col(string_len(Orders::Status, 16))
                .col(big_integer(Orders::CreatedAtMs))
                .col(big_integer(Orders::UpdatedAtMs))
                .check(Expr::col(Orders::Qty).gt(0))
                .check(Expr::col(Orders::TotalCents).gte(0))
                .foreign_key(
                    ForeignKey::create()
                        .from(Orders::Table, Orders::HoldId)
                        .to(Holds::Table, Holds::Id),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(Orders::Table, Orders::ProductId)
                        .to(Products::Table, Products::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("idx_orders_status_created")
                .table(Orders::Table)
                .col(Orders::Status)
                .col(Orders::CreatedAtMs)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Payments::Table)
                .if_not_exists()
                .col(string_len(Payments::IdempotencyKey, 255).primary_key())
                .col(big_integer(Payments::HoldId))
                .col(string_len(Payments::Status, 16))
                .col(string_len(Payments::RequestHash, 64))
                .col(integer(Payments::ResponseStatus))
                .col(text(Payments::ResponseBody))
                .col(string_len_null(Payments::Outcome, 24))
                .col(big_integer_null(Payments::OrderId))
                .col(big_integer_null(Payments::AppliedAtMs))
                .col(big_integer(Payments::CreatedAtMs))
                .foreign_key(
                    ForeignKey::create()
                        .from(Payments::Table, Payments::HoldId)
                        .to(Holds::Table, Holds::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("idx_payments_hold")
                .table(Payments::Table)
                .col(Payments::HoldId)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Payments::Table.into_iden(),
            Orders::Table.into_iden(),
            Holds::Table.into_iden(),
            Products::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
