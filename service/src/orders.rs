//! Orders: turning a live hold into exactly one order.

use entity::{
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    payment, product,
};
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QuerySelect, Set,
    sea_query::{Expr, LockType},
};

use super::{Service, holds::is_overdue, now_ms};
use crate::{Error, Result, metrics::metrics};

/// An order as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderView {
    pub id: i64,
    pub hold_id: i64,
    pub product_id: i64,
    pub qty: i64,
    pub total_cents: i64,
    pub status: OrderStatus,
    pub created_at_ms: i64,
}

impl From<order::Model> for OrderView {
    fn from(o: order::Model) -> Self {
        Self {
            id: o.id,
            hold_id: o.hold_id,
            product_id: o.product_id,
            qty: o.qty,
            total_cents: o.total_cents,
            status: o.status,
            created_at_ms: o.created_at_ms,
        }
    }
}

impl Service {
    /// Creates the order for `hold_id`. Returns it and `true` when the hold already had one
    /// (a retry), in which case nothing changed.
    pub async fn create_order(&self, hold_id: i64) -> Result<(OrderView, bool)> {
        let txn = self.db.begin_write().await?;
        // The hold's row lock serialises every attempt to order it. (NO KEY UPDATE: the
        // foreign-key checks of other transactions' inserts take KEY SHARE and must not wait.)
        let Some(h) = hold::Entity::find_by_id(hold_id)
            .lock(LockType::NoKeyUpdate)
            .one(&*txn)
            .await?
        else {
            txn.rollback().await?;
            return Err(Error::HoldNotFound(hold_id));
        };
        // The clock is read under the lock, so time spent waiting counts against the hold.
        let now = now_ms();
        match h.status {
            HoldStatus::Ordered => {
                let existing = order::Entity::find()
                    .filter(order::Column::HoldId.eq(hold_id))
                    .one(&*txn)
                    .await?
                    .expect("an ordered hold has an order");
                txn.rollback().await?;
                metrics().replays.with_label_values(&["order"]).inc();
                return Ok((existing.into(), true));
            }
            HoldStatus::Expired => {
                txn.rollback().await?;
                return Err(Error::HoldExpired(hold_id));
            }
            HoldStatus::Active if is_overdue(&h, now) => {
                txn.rollback().await?;
                return Err(Error::HoldExpired(hold_id));
            }
            HoldStatus::Active => {}
        }
        let p = product::Entity::find_by_id(h.product_id)
            .one(&*txn)
            .await?
            .expect("a hold's product exists");
        let total_cents = p
            .price_cents
            .checked_mul(h.qty)
            .expect("price and quantity bounds keep the total in range");
        let o = order::ActiveModel {
            hold_id: Set(h.id),
            product_id: Set(h.product_id),
            qty: Set(h.qty),
            total_cents: Set(total_cents),
            status: Set(OrderStatus::Pending),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            ..Default::default()
        }
        .insert(&*txn)
        .await?;
        let res = hold::Entity::update_many()
            .col_expr(
                hold::Column::Status,
                Expr::value(HoldStatus::Ordered.to_value()),
            )
            .filter(hold::Column::Id.eq(h.id))
            .filter(hold::Column::Status.eq(HoldStatus::Active))
            .exec(&*txn)
            .await?;
        assert_eq!(res.rows_affected, 1, "hold {} changed under its lock", h.id);
        // Webhooks for this hold take its lock too, so a payment recorded before this order
        // is visible here, and one recorded after it finds the order and applies itself.
        let early_payment = payment::Entity::find()
            .filter(payment::Column::HoldId.eq(h.id))
            .filter(payment::Column::Outcome.is_null())
            .one(&*txn)
            .await?
            .is_some();
        // The hold's units were counted as free by reads made once it was due: a read
        // between that instant and this commit may have cached them so.
        self.commit_changing(txn, Some(h.product_id)).await?;
        if early_payment {
            self.jobs.check_pending_webhook(&self.db, h.id).await;
        }
        metrics().orders.with_label_values(&["created"]).inc();
        tracing::debug!(order_id = o.id, hold_id = h.id, "order created");
        Ok((o.into(), false))
    }

    /// Number of orders in each status, every status listed.
    pub async fn orders_by_status(&self) -> Result<Vec<(String, i64)>> {
        let counts: Vec<(OrderStatus, i64)> = order::Entity::find()
            .select_only()
            .column(order::Column::Status)
            .column_as(order::Column::Id.count(), "n")
            .group_by(order::Column::Status)
            .into_tuple()
            .all(&self.db.conn)
            .await?;
        Ok([
            OrderStatus::Pending,
            OrderStatus::Paid,
            OrderStatus::Cancelled,
        ]
        .into_iter()
        .map(|s| {
            let n = counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
            (s.to_value(), n)
        })
        .collect())
    }

    /// Order `id`.
    pub async fn order(&self, id: i64) -> Result<OrderView> {
        order::Entity::find_by_id(id)
            .one(&self.db.conn)
            .await?
            .map(Into::into)
            .ok_or(Error::OrderNotFound(id))
    }
}
