//! The lock order, written once: product row, then hold row, then order row. Every
//! transaction that takes more than one of these locks takes them through here, so two
//! transactions can never wait on each other. On SQLite every writing transaction holds
//! the database write lock for its whole life, and these row locks are no-ops.
//!
//! Every row lock is NO KEY UPDATE, not FOR UPDATE: the foreign-key checks of concurrent
//! inserts (a hold naming its product, an order or a payment naming its hold) take KEY
//! SHARE, which FOR UPDATE would block.

use entity::{hold, order, product};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, sea_query::LockType,
};

use crate::{Result, Service, db::WriteTxn};

/// Locks product `id`'s row and returns it; `None`: no such product.
/// Every transaction that locks a product takes this lock first (the global lock order:
/// product, hold, order). On SQLite the transaction's write lock already covers it.
pub async fn lock_product(conn: &impl ConnectionTrait, id: i64) -> Result<Option<product::Model>> {
    Ok(product::Entity::find_by_id(id)
        .lock(LockType::NoKeyUpdate)
        .one(conn)
        .await?)
}

/// Locks hold `id`'s row and returns it; `None`: no such hold. Second in the lock order:
/// a transaction that also changes stock has locked the hold's product first.
pub async fn lock_hold(conn: &impl ConnectionTrait, id: i64) -> Result<Option<hold::Model>> {
    Ok(hold::Entity::find_by_id(id)
        .lock(LockType::NoKeyUpdate)
        .one(conn)
        .await?)
}

/// Locks the order of hold `hold_id`, if it has one, and returns it. Last in the lock
/// order: the caller has locked the hold (and, where stock may move, the product) first.
pub async fn lock_order_of_hold(
    conn: &impl ConnectionTrait,
    hold_id: i64,
) -> Result<Option<order::Model>> {
    Ok(order::Entity::find()
        .filter(order::Column::HoldId.eq(hold_id))
        .lock(LockType::NoKeyUpdate)
        .one(conn)
        .await?)
}

impl Service {
    /// Begins a write transaction holding what a change to hold `hold_id` needs, locked in
    /// the global order: its product's row, then the hold's. `None`: no such hold.
    pub(crate) async fn begin_on_hold(
        &self,
        hold_id: i64,
    ) -> Result<Option<(WriteTxn, entity::hold::Model)>> {
        self.begin_on_hold_if(hold_id, |_| true)
            .await
            .map(|found| found.map(|(txn, h, _)| (txn, h)))
    }

    /// Begins a write transaction holding what a change to order `order_id` needs, locked
    /// in the global order: its product's row, its hold's, then its own. `None`: no such
    /// order.
    pub(crate) async fn begin_on_order(
        &self,
        order_id: i64,
    ) -> Result<Option<(WriteTxn, hold::Model, order::Model)>> {
        // An order's product and hold never change, so they can be read before the locks.
        let Some(o) = order::Entity::find_by_id(order_id)
            .one(&self.db.conn)
            .await?
        else {
            return Ok(None);
        };
        let txn = self.db.begin_write().await?;
        lock_product(&*txn, o.product_id).await?;
        let h = lock_hold(&*txn, o.hold_id)
            .await?
            .expect("holds are never deleted");
        let o = lock_order_of_hold(&*txn, o.hold_id)
            .await?
            .expect("orders are never deleted");
        Ok(Some((txn, h, o)))
    }

    /// [`begin_on_hold`](Self::begin_on_hold), locking the product only when
    /// `needs_product` says so of the hold as read before the locks. A change that cannot
    /// touch stock skips the product row, which every hold of a hot product contends for;
    /// taking only the hold's lock keeps to the global order. The third value says whether
    /// the product is locked.
    pub(crate) async fn begin_on_hold_if(
        &self,
        hold_id: i64,
        needs_product: impl Fn(&entity::hold::Model) -> bool,
    ) -> Result<Option<(WriteTxn, entity::hold::Model, bool)>> {
        // A hold's product never changes, so it can be read before the locks.
        let Some(h) = hold::Entity::find_by_id(hold_id).one(&self.db.conn).await? else {
            return Ok(None);
        };
        let product_locked = needs_product(&h);
        let txn = self.db.begin_write().await?;
        if product_locked {
            lock_product(&*txn, h.product_id).await?;
        }
        let h = lock_hold(&*txn, hold_id)
            .await?
            .expect("holds are never deleted");
        Ok(Some((txn, h, product_locked)))
    }
}
