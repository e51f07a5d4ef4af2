//! Every move of stock: take, release, reclaim, expire, let go, restock. Each runs inside
//! the caller's transaction, which already holds the product's lock (see [`crate::locks`]),
//! and keeps `total_stock = available + held + ordered` true when it commits.

use std::collections::HashMap;

use entity::{
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    product,
};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, UpdateMany,
    sea_query::{Alias, Expr, ExprTrait, Func, Query},
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

/// Conditions of an order that still says `pending` but is cancelled in every respect: it
/// was created at or before `cutoff_ms` (its payment deadline has passed) and no payment
/// was recorded for its hold before it existed (such a payment wins when it is applied).
pub fn overdue_orders(cutoff_ms: i64) -> sea_orm::Condition {
    let paid_early = Query::select()
        .expr(Expr::val(1))
        .from(hold::Entity)
        .and_where(
            Expr::col((hold::Entity, hold::Column::Id))
                .equals((order::Entity, order::Column::HoldId)),
        )
        .and_where(Expr::col((hold::Entity, hold::Column::PaidAtMs)).is_not_null())
        .to_owned();
    sea_orm::Condition::all()
        .add(order::Column::Status.eq(OrderStatus::Pending))
        .add(order::Column::CreatedAtMs.lte(cutoff_ms))
        .add(Expr::exists(paid_early).not())
}

/// `SUM(qty)` as a BIGINT: SUM(bigint) is NUMERIC on PostgreSQL, cast back so that it
/// decodes as i64 on both back ends.
fn sum_qty(qty: impl sea_orm::IntoSimpleExpr) -> Expr {
    Expr::from(Func::cast_as(
        Func::sum(qty.into_simple_expr()),
        Alias::new("BIGINT"),
    ))
}

/// Units of each of `product_ids` that still count as held or ordered in the stored data
/// but are free in every respect at `now_ms`: those of overdue holds, and of orders made at
/// or before `cutoff_ms` and still unpaid (see [`overdue_orders`]). Products with none are
/// absent.
pub async fn free_again(
    conn: &impl ConnectionTrait,
    product_ids: &[i64],
    now_ms: i64,
    cutoff_ms: i64,
) -> Result<HashMap<i64, i64>> {
    let holds: Vec<(i64, Option<i64>)> = hold::Entity::find()
        .select_only()
        .column(hold::Column::ProductId)
        .column_as(sum_qty(hold::Column::Qty), "qty")
        .filter(overdue(now_ms))
        .filter(hold::Column::ProductId.is_in(product_ids.to_vec()))
        .group_by(hold::Column::ProductId)
        .into_tuple()
        .all(conn)
        .await?;
    let orders: Vec<(i64, Option<i64>)> = order::Entity::find()
        .select_only()
        .column(order::Column::ProductId)
        .column_as(sum_qty(order::Column::Qty), "qty")
        .filter(overdue_orders(cutoff_ms))
        .filter(order::Column::ProductId.is_in(product_ids.to_vec()))
        .group_by(order::Column::ProductId)
        .into_tuple()
        .all(conn)
        .await?;
    let mut free = HashMap::new();
    for (product_id, qty) in holds.into_iter().chain(orders) {
        *free.entry(product_id).or_default() += qty.unwrap_or(0);
    }
    Ok(free)
}

/// Marks the overdue orders of `product_id` (created at or before `cutoff_ms`, see
/// [`overdue_orders`]) cancelled and gives their units back. Returns the units given back.
/// The caller holds the product's lock; the orders' rows are locked by this update (the
/// lock order allows skipping the holds). A payment applied concurrently makes its order
/// `paid` first, and the update then passes over it.
pub async fn reclaim_overdue_orders(
    conn: &impl ConnectionTrait,
    product_id: i64,
    cutoff_ms: i64,
    now_ms: i64,
) -> Result<i64> {
    let cancelled = order::Entity::update_many()
        .col_expr(
            order::Column::Status,
            Expr::value(OrderStatus::Cancelled.to_value()),
        )
        .col_expr(order::Column::UpdatedAtMs, Expr::value(now_ms))
        .filter(order::Column::ProductId.eq(product_id))
        .filter(overdue_orders(cutoff_ms))
        .exec_with_returning(conn)
        .await?;
    let units: i64 = cancelled.iter().map(|o| o.qty).sum();
    metrics()
        .orders
        .with_label_values(&["cancelled"])
        .inc_by(cancelled.len() as u64);
    if units > 0 {
        release_stock(conn, product_id, units).await?;
    }
    Ok(units)
}

/// Everything of `product_id` that is overdue at `now_ms` given back: overdue holds are
/// marked expired and orders made at or before `cutoff_ms` and still unpaid cancelled
/// ([`reclaim_overdue_holds`], [`reclaim_overdue_orders`]). Returns the units given back.
pub async fn reclaim_overdue(
    conn: &impl ConnectionTrait,
    product_id: i64,
    now_ms: i64,
    cutoff_ms: i64,
) -> Result<i64> {
    Ok(reclaim_overdue_holds(conn, product_id, now_ms).await?
        + reclaim_overdue_orders(conn, product_id, cutoff_ms, now_ms).await?)
}

/// Changes product `p`'s `total_stock` to `total` and its `available` by the same amount.
/// The caller holds the product's lock and has checked that `available` stays >= 0.
pub async fn restock(conn: &impl ConnectionTrait, p: &product::Model, total: i64) -> Result<()> {
    let delta = total - p.total_stock;
    let res = product::Entity::update_many()
        .col_expr(product::Column::TotalStock, Expr::value(total))
        .col_expr(
            product::Column::Available,
            Expr::col(product::Column::Available).add(delta),
        )
        .filter(product::Column::Id.eq(p.id))
        .exec(conn)
        .await?;
    assert_eq!(res.rows_affected, 1, "product {} vanished", p.id);
    if delta != 0 {
        let direction = if delta > 0 { "up" } else { "down" };
        metrics().restocks.with_label_values(&[direction]).inc();
    }
    Ok(())
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

/// Marks the active hold `h` released by its buyer and gives its units back.
pub async fn release_hold(conn: &impl ConnectionTrait, h: &hold::Model) -> Result<()> {
    end_active_hold(conn, h.id, HoldStatus::Released).await?;
    metrics().holds.with_label_values(&["released"]).inc();
    release_stock(conn, h.product_id, h.qty).await
}

/// Marks the pending order `o` cancelled and gives its units back.
pub async fn cancel_order(
    conn: &impl ConnectionTrait,
    o: &order::Model,
    now_ms: i64,
) -> Result<()> {
    crate::settlement::finish_order(conn, o, OrderStatus::Cancelled, now_ms).await?;
    release_stock(conn, o.product_id, o.qty).await
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
