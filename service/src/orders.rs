//! Orders: turning a live hold into exactly one order.

use entity::{
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    payment, product,
};
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QuerySelect, Set,
};

use super::{
    Service,
    holds::is_overdue,
    locks::lock_hold,
    now_ms,
    sales::{CustomerId, may_see},
    settlement::is_lapsed,
    stock::order_hold,
};
use crate::{Error, Result, metrics::metrics};

/// Where an order is in its life, as the service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderState {
    /// Waits for its payment.
    Pending,
    /// Paid for.
    Paid,
    /// Cancelled: its payment failed or never came.
    Cancelled,
}

impl From<OrderStatus> for OrderState {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Pending => Self::Pending,
            OrderStatus::Paid => Self::Paid,
            OrderStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// An order as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderView {
    /// The order's id.
    pub id: i64,
    /// The hold it was made from.
    pub hold_id: i64,
    /// The product ordered.
    pub product_id: i64,
    /// Units ordered.
    pub qty: i64,
    /// Price times quantity, in cents.
    pub total_cents: i64,
    /// Its state now.
    pub status: OrderState,
    /// When it was created, in Unix milliseconds.
    pub created_at_ms: i64,
}

impl OrderView {
    /// The view of `o`; `cancelled`: cancelled in every respect whatever its stored status
    /// says (its payment deadline passed, see [`is_lapsed`], or it was just cancelled).
    pub(crate) fn current(o: order::Model, cancelled: bool) -> Self {
        let status = if cancelled {
            OrderState::Cancelled
        } else {
            o.status.into()
        };
        Self {
            id: o.id,
            hold_id: o.hold_id,
            product_id: o.product_id,
            qty: o.qty,
            total_cents: o.total_cents,
            status,
            created_at_ms: o.created_at_ms,
        }
    }
}

impl Service {
    /// Creates the order for `hold_id` on behalf of `caller`, who must be allowed to see
    /// the hold. Returns it and `true` when the hold already had one (a retry), in which
    /// case nothing changed. A live hold is ordered in a group
    /// ([`crate::order_groups`]); anything else runs alone.
    pub async fn create_order(
        &self,
        hold_id: i64,
        caller: Option<&CustomerId>,
    ) -> Result<(OrderView, bool)> {
        match self.order_in_group(hold_id, caller).await? {
            Some(ordered) => Ok(ordered),
            None => self.create_order_alone(hold_id, caller).await,
        }
    }

    /// [`create_order`](Self::create_order) in a transaction of its own.
    async fn create_order_alone(
        &self,
        hold_id: i64,
        caller: Option<&CustomerId>,
    ) -> Result<(OrderView, bool)> {
        let txn = self.db.begin_write().await?;
        // The hold's row lock serialises every attempt to order it.
        let found = lock_hold(&*txn, hold_id).await?;
        let Some(h) = found.filter(|h| may_see(h.customer_id.as_deref(), caller)) else {
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
                let lapsed = is_lapsed(&existing, &h, now, self.order_payment_ttl_ms());
                return Ok((OrderView::current(existing, lapsed), true));
            }
            HoldStatus::Released => {
                txn.rollback().await?;
                return Err(Error::HoldReleased(hold_id));
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
        let o = insert_order(&*txn, &h, now).await?;
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
            let hold_id = h.id;
            self.push_later(
                |svc| async move { svc.jobs.check_pending_webhook(&svc.db, hold_id).await },
            );
        }
        metrics().orders.with_label_values(&["created"]).inc();
        tracing::debug!(order_id = o.id, hold_id = h.id, "order created");
        Ok((OrderView::current(o, false), false))
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

    /// Order `id`, if `caller` may see it: a customer's order is theirs alone, and to
    /// anyone else it does not exist.
    pub async fn order(&self, id: i64, caller: Option<&CustomerId>) -> Result<OrderView> {
        let o = order::Entity::find_by_id(id)
            .one(&self.db.conn)
            .await?
            .filter(|o| may_see(o.customer_id.as_deref(), caller))
            .ok_or(Error::OrderNotFound(id))?;
        let now = now_ms();
        let ttl = self.order_payment_ttl_ms();
        // Only an order past its deadline needs its hold: a payment recorded first wins.
        let lapsed = if o.status == OrderStatus::Pending && o.created_at_ms + ttl <= now {
            let h = hold::Entity::find_by_id(o.hold_id)
                .one(&self.db.conn)
                .await?
                .expect("an order's hold exists");
            is_lapsed(&o, &h, now, ttl)
        } else {
            false
        };
        Ok(OrderView::current(o, lapsed))
    }
}

/// Inserts the pending order of the active hold `h`, locked by the caller, and marks the
/// hold ordered.
pub(crate) async fn insert_order(
    conn: &impl ConnectionTrait,
    h: &hold::Model,
    now_ms: i64,
) -> Result<order::Model> {
    let p = product::Entity::find_by_id(h.product_id)
        .one(conn)
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
        created_at_ms: Set(now_ms),
        updated_at_ms: Set(now_ms),
        customer_id: Set(h.customer_id.clone()),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    order_hold(conn, h).await?;
    Ok(o)
}
