//! Every move of stock: take, release, reclaim, expire. Each runs inside the caller's
//! transaction, which already holds the product's lock (see [`crate::locks`]), and keeps
//! `total_stock = available + held + ordered` true when it commits.

use entity::{
    hold::{self, HoldStatus},
    product,
};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, UpdateMany,
    sea_query::{Alias, Expr, ExprTrait, Func},
};

use crate::{Result, metrics::metrics};

/// The conditional decrement: `available -= qty` where at least `qty` is available.
fn decrement(product_id: i64, qty: i64) -> UpdateMany<product::Entity> {
    product::Entity::update_many()
        .col_expr(
            product::Column::Available,
            Expr::col(product::Column::Available).sub(qty),
        )
        .filter(product::Column::Id.eq(product_id))
        .filter(product::Column::Available.gte(qty))
}

/// `available -= qty` if at least `qty` is available; `false` when not (or no such product).
pub async fn take_stock(conn: &impl ConnectionTrait, product_id: i64, qty: i64) -> Result<bool> {
    let res = decrement(product_id, qty).exec(conn).await?;
    Ok(res.rows_affected == 1)
}

/// [`take_stock`], returning the product's row as the UPDATE left it: `None` when fewer
/// than `qty` units are available (or no such product).
pub async fn take_stock_returning(
    conn: &impl ConnectionTrait,
    product_id: i64,
    qty: i64,
) -> Result<Option<product::Model>> {
    let mut rows = decrement(product_id, qty).exec_with_returning(conn).await?;
    Ok(rows.pop())
}

/// Gives `units` back to product `product_id`'s available stock.
pub async fn release_stock(conn: &impl ConnectionTrait, product_id: i64, units: i64) -> Result<()> {
    assert!(units > 0, "release of {units} units");
    let res = product::Entity::update_many()
        .col_expr(
            product::Column::Available,
            Expr::col(product::Column::Available).add(units),
        )
        .filter(product::Column::Id.eq(product_id))
        .exec(conn)
        .await?;
    assert_eq!(res.rows_affected, 1, "product {product_id} vanished");
    Ok(())
}

/// Conditions of a hold that still says `active` but reserves nothing any more.
fn overdue_holds(product_id: i64, now_ms: i64) -> sea_orm::Condition {
    overdue(now_ms).add(hold::Column::ProductId.eq(product_id))
}

/// Conditions of a hold of any product that still says `active` but reserves nothing any
/// more: past its expiry, and no payment recorded for it.
pub fn overdue(now_ms: i64) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(hold::Column::Status.eq(HoldStatus::Active))
        .add(hold::Column::ExpiresAtMs.lte(now_ms))
        .add(hold::Column::PaidAtMs.is_null())
}

/// Units held by overdue holds of `product_id`.
pub async fn overdue_hold_qty(
    conn: &impl ConnectionTrait,
    product_id: i64,
    now_ms: i64,
) -> Result<i64> {
    // SUM(bigint) is NUMERIC on PostgreSQL: cast it back so it decodes as i64 on both back ends.
    let sum = Expr::from(Func::cast_as(
        Func::sum(Expr::col(hold::Column::Qty)),
        Alias::new("BIGINT"),
    ));
    let total: Option<Option<i64>> = hold::Entity::find()
        .select_only()
        .column_as(sum, "qty")
        .filter(overdue_holds(product_id, now_ms))
        .into_tuple()
        .one(conn)
        .await?;
    Ok(total.flatten().unwrap_or(0))
}

/// Marks the overdue holds of `product_id` expired and returns their units to `available`.
/// Returns the units given back. The caller must already hold the product's row lock
/// (lock order: product before holds).
pub async fn reclaim_overdue_holds(
    conn: &impl ConnectionTrait,
    product_id: i64,
    now_ms: i64,
) -> Result<i64> {
    reclaim(conn, product_id, overdue_holds(product_id, now_ms)).await
}

/// [`reclaim_overdue_holds`] for the holds `hold_ids` of `product_id` only.
pub async fn reclaim_overdue_holds_among(
    conn: &impl ConnectionTrait,
    product_id: i64,
    hold_ids: &[i64],
    now_ms: i64,
) -> Result<i64> {
    let among = overdue_holds(product_id, now_ms).add(hold::Column::Id.is_in(hold_ids.to_vec()));
    reclaim(conn, product_id, among).await
}

/// Marks the holds matching `overdue` expired and gives their units back.
async fn reclaim(
    conn: &impl ConnectionTrait,
    product_id: i64,
    overdue: sea_orm::Condition,
) -> Result<i64> {
    let reclaimed = hold::Entity::update_many()
        .col_expr(
            hold::Column::Status,
            Expr::value(HoldStatus::Expired.to_value()),
        )
        .filter(overdue)
        .exec_with_returning(conn)
        .await?;
    let units: i64 = reclaimed.iter().map(|h| h.qty).sum();
    metrics()
        .holds
        .with_label_values(&["expired"])
        .inc_by(reclaimed.len() as u64);
    if units > 0 {
        release_stock(conn, product_id, units).await?;
    }
    Ok(units)
}

/// Marks an overdue hold expired and gives its units back.
pub async fn expire_hold(conn: &impl ConnectionTrait, h: &hold::Model) -> Result<()> {
    end_active_hold(conn, h.id, HoldStatus::Expired).await?;
    metrics().holds.with_label_values(&["expired"]).inc();
    release_stock(conn, h.product_id, h.qty).await
}

/// Marks the active hold `h` ordered: its units pass from the hold to its order, and
/// `available` does not change.
pub async fn order_hold(conn: &impl ConnectionTrait, h: &hold::Model) -> Result<()> {
    end_active_hold(conn, h.id, HoldStatus::Ordered).await
}

/// Moves hold `hold_id`, which its caller has locked and found active, to `status`.
async fn end_active_hold(
    conn: &impl ConnectionTrait,
    hold_id: i64,
    status: HoldStatus,
) -> Result<()> {
    let res = hold::Entity::update_many()
        .col_expr(hold::Column::Status, Expr::value(status.to_value()))
        .filter(hold::Column::Id.eq(hold_id))
        .filter(hold::Column::Status.eq(HoldStatus::Active))
        .exec(conn)
        .await?;
    assert_eq!(
        res.rows_affected, 1,
        "hold {hold_id} changed under its lock"
    );
    Ok(())
}
