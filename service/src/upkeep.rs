//! What the worker does, as plain service calls: expire holds, apply payments that came
//! before their order, cancel orders left unpaid, and the sweep that does all of it from
//! the data alone. Every call re-checks state in its own transaction, so running it twice,
//! or in two processes at once, changes nothing the second time.

use entity::{
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    payment::{self, PaymentOutcome},
};
use sea_orm::{
    ActiveEnum, ColumnTrait, Condition, EntityTrait, JoinType, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, RelationTrait, sea_query::Expr,
};

use super::{
    Service,
    holds::is_overdue,
    locks::{lock_order_of_hold, lock_product},
    now_ms,
    orders::insert_order,
    settlement::{
        cancel_pending, is_lapsed, log_refunds, settle_recorded, settle_recorded_without_order,
        unapplied_payments,
    },
    stock::{self, reclaim_overdue_holds, reclaim_overdue_holds_among},
};
use crate::{Result, metrics::metrics};

/// Most rows of each kind one sweep pass handles; the next pass takes the rest.
pub const SWEEP_BATCH: u64 = 500;

/// What [`Service::expire_holds_if_due`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A hold was overdue: it is now `expired` and its units are back.
    Expired,
    /// Ordered, paid, already expired or gone.
    NothingToDo,
    /// A hold is still live by this process's clock (the job ran early, or clocks differ).
    NotYetDue,
}

/// What [`Service::settle_recorded_payments`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// This many recorded payments were settled (0: none waiting, or the hold is live).
    Payments(usize),
    /// The hold is paid and live: its order is made once its time is up, if none comes.
    NotYetDue,
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Units given back by holds marked expired.
    pub expired_hold_units: i64,
    /// Payments recorded before their order and now applied, ignored or flagged.
    pub settled_payments: usize,
    /// Orders cancelled for non-payment.
    pub cancelled_orders: usize,
    /// Payments that must be refunded, all time.
    pub refund_required: u64,
    /// Hold idempotency keys forgotten after their retention.
    pub pruned_keys: u64,
    /// Items that failed this pass (logged; the next pass retries them).
    pub errors: usize,
}

impl SweepReport {
    /// Records one item's failure and goes on: one bad row must not stall the sweep.
    fn failed(&mut self, e: crate::Error, what: &str, id: i64) {
        tracing::warn!(error = %e, id, "sweep: {what} failed");
        self.errors += 1;
    }

    /// `true` when the pass found nothing to do.
    pub fn is_idle(&self) -> bool {
        self.expired_hold_units == 0 && self.settled_payments == 0 && self.cancelled_orders == 0
    }
}

impl Service {
    /// Marks those of `hold_ids` that are overdue expired and gives their units back, one
    /// transaction per product. `Expired` when any expired; `NotYetDue` when any is still
    /// live by this process's clock (the others are done, and running it again changes
    /// nothing for them).
    pub async fn expire_holds_if_due(&self, hold_ids: &[i64]) -> Result<Expiry> {
        let holds = hold::Entity::find()
            .filter(hold::Column::Id.is_in(hold_ids.to_vec()))
            .all(&self.db.conn)
            .await?;
        let mut products: Vec<i64> = holds.iter().map(|h| h.product_id).collect();
        products.sort_unstable();
        products.dedup();
        let mut expired_units = 0;
        for product_id in products {
            let txn = self.db.begin_write().await?;
            lock_product(&*txn, product_id).await?;
            let ids: Vec<i64> = holds
                .iter()
                .filter(|h| h.product_id == product_id)
                .map(|h| h.id)
                .collect();
            let units = reclaim_overdue_holds_among(&*txn, product_id, &ids, now_ms()).await?;
            self.commit_changing(txn, (units > 0).then_some(product_id))
                .await?;
            if units > 0 {
                tracing::info!(product_id, units, "holds expired");
            }
            expired_units += units;
        }
        // Read after the updates: what is still live now was not due when they ran.
        let now = now_ms();
        let still_live = hold::Entity::find()
            .filter(hold::Column::Id.is_in(hold_ids.to_vec()))
            .filter(hold::Column::Status.eq(HoldStatus::Active))
            .filter(hold::Column::PaidAtMs.is_null())
            .filter(hold::Column::ExpiresAtMs.gt(now))
            .count(&self.db.conn)
            .await?;
        Ok(if still_live > 0 {
            Expiry::NotYetDue
        } else if expired_units > 0 {
            Expiry::Expired
        } else {
            Expiry::NothingToDo
        })
    }

    /// Settles the payments recorded for `hold_id` that wait for its order: against the
    /// order if it exists; as refunds or ignored if it never can; and for a paid hold
    /// whose time is up without an order, by making its order, which the payment makes
    /// `paid`.
    pub async fn settle_recorded_payments(&self, hold_id: i64) -> Result<Settled> {
        let Some((txn, h)) = self.begin_on_hold(hold_id).await? else {
            return Ok(Settled::Payments(0));
        };
        let candidates = unapplied_payments(&*txn, hold_id).await?;
        if candidates.is_empty() {
            txn.rollback().await?;
            return Ok(Settled::Payments(0));
        }
        let now = now_ms();
        let stock_released = match lock_order_of_hold(&*txn, hold_id).await? {
            Some(o) => {
                let lapsed = is_lapsed(&o, &h, now, self.order_payment_ttl_ms());
                let settled = settle_recorded(&*txn, &o, &candidates, lapsed, now).await?;
                tracing::info!(hold_id, order_id = o.id, order_status = %settled.order_status.to_value(), "recorded payments applied");
                log_refunds(&candidates, &settled.verdicts, hold_id);
                settled.stock_released
            }
            // The order can never come: nothing to apply these to.
            None if h.status != HoldStatus::Active || is_overdue(&h, now) => {
                let (verdicts, stock_released) =
                    settle_recorded_without_order(&*txn, &h, &candidates, now).await?;
                log_refunds(&candidates, &verdicts, hold_id);
                stock_released
            }
            // Paid, and its time is up: the customer paid, so the order is made for them.
            None if h.paid_at_ms.is_some() && h.expires_at_ms <= now => {
                let o = insert_order(&*txn, &h, now).await?;
                let settled = settle_recorded(&*txn, &o, &candidates, false, now).await?;
                metrics().orders.with_label_values(&["created"]).inc();
                tracing::info!(hold_id, order_id = o.id, order_status = %settled.order_status.to_value(), "order of a paid hold made");
                settled.stock_released
            }
            None => {
                txn.rollback().await?;
                let due = h.paid_at_ms.is_some() && h.status == HoldStatus::Active;
                return Ok(if due {
                    Settled::NotYetDue
                } else {
                    Settled::Payments(0)
                });
            }
        };
        self.commit_changing(txn, stock_released.then_some(h.product_id))
            .await?;
        Ok(Settled::Payments(candidates.len()))
    }

    /// Cancels order `order_id` and returns its stock if it is still pending past
    /// `ORDER_PAYMENT_TTL_SECS`, unless a payment recorded for it says it was paid.
    pub async fn cancel_if_unpaid(&self, order_id: i64) -> Result<bool> {
        let Some((txn, h, o)) = self.begin_on_order(order_id).await? else {
            return Ok(false);
        };
        let now = now_ms();
        if o.status != OrderStatus::Pending || now - o.created_at_ms < self.order_payment_ttl_ms() {
            txn.rollback().await?;
            return Ok(false);
        }
        let cancelled = cancel_pending(&*txn, &o, now).await? == OrderStatus::Cancelled;
        self.commit_changing(txn, cancelled.then_some(o.product_id))
            .await?;
        if cancelled {
            tracing::info!(order_id, hold_id = h.id, "unpaid order cancelled");
        }
        Ok(cancelled)
    }

    /// One pass over everything the worker keeps true, at most [`SWEEP_BATCH`] of each kind.
    pub async fn sweep_once(&self) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let now = now_ms();
        self.sweep_overdue_holds(now, &mut report).await?;
        self.sweep_recorded_payments(now, &mut report).await?;
        self.sweep_unpaid_orders(now, &mut report).await?;
        // Hold idempotency keys are forgotten after their retention; payments are the ledger
        // of what the provider told us and keep their keys.
        match self.prune_idempotency_keys(now).await {
            Ok(n) => report.pruned_keys = n,
            Err(e) => report.failed(e, "prune idempotency keys", 0),
        }
        report.refund_required = payment::Entity::find()
            .filter(payment::Column::Outcome.eq(PaymentOutcome::RefundRequired))
            .count(&self.db.conn)
            .await?;
        Ok(report)
    }

    /// Expires the overdue holds of up to [`SWEEP_BATCH`] products.
    async fn sweep_overdue_holds(&self, now: i64, report: &mut SweepReport) -> Result<()> {
        let products: Vec<i64> = hold::Entity::find()
            .select_only()
            .column(hold::Column::ProductId)
            .distinct()
            .filter(stock::overdue(now))
            .limit(SWEEP_BATCH)
            .into_tuple()
            .all(&self.db.conn)
            .await?;
        for product_id in products {
            match self.reclaim(product_id).await {
                Ok(units) => report.expired_hold_units += units,
                Err(e) => report.failed(e, "expire overdue holds of product", product_id),
            }
        }
        Ok(())
    }

    /// Settles the recorded payments of up to [`SWEEP_BATCH`] holds.
    async fn sweep_recorded_payments(&self, now: i64, report: &mut SweepReport) -> Result<()> {
        // Only events that can be settled now: their hold has its order, or will never
        // have one. A live hold's events (paid ones pin it) wait for the order.
        // A paid hold past its expiry gets its order made.
        let settleable = Condition::any()
            .add(hold::Column::Status.ne(HoldStatus::Active))
            .add(hold::Column::ExpiresAtMs.lte(now));
        let waiting: Vec<i64> = payment::Entity::find()
            .select_only()
            .column(payment::Column::HoldId)
            .distinct()
            .join(JoinType::InnerJoin, payment::Relation::Hold.def())
            .filter(payment::Column::Outcome.is_null())
            .filter(settleable)
            .order_by_asc(payment::Column::HoldId)
            .limit(SWEEP_BATCH)
            .into_tuple()
            .all(&self.db.conn)
            .await?;
        for hold_id in waiting {
            match self.settle_recorded_payments(hold_id).await {
                Ok(Settled::Payments(n)) => report.settled_payments += n,
                Ok(Settled::NotYetDue) => {}
                Err(e) => report.failed(e, "settle recorded payments", hold_id),
            }
        }
        Ok(())
    }

    /// Cancels up to [`SWEEP_BATCH`] orders left unpaid past their deadline.
    async fn sweep_unpaid_orders(&self, now: i64, report: &mut SweepReport) -> Result<()> {
        let unpaid: Vec<i64> = order::Entity::find()
            .select_only()
            .column(order::Column::Id)
            .filter(order::Column::Status.eq(OrderStatus::Pending))
            .filter(order::Column::CreatedAtMs.lte(self.payment_cutoff_ms(now)))
            .order_by_asc(order::Column::Id)
            .limit(SWEEP_BATCH)
            .into_tuple()
            .all(&self.db.conn)
            .await?;
        for order_id in unpaid {
            match self.cancel_if_unpaid(order_id).await {
                Ok(cancelled) => report.cancelled_orders += usize::from(cancelled),
                Err(e) => report.failed(e, "cancel unpaid order", order_id),
            }
        }
        Ok(())
    }

    /// Forgets the idempotency keys of holds created longer ago than their retention, one
    /// product at a time under its row lock: the update touches several holds, and a
    /// transaction that locks a product's holds locks the product first (the global lock
    /// order), or it could deadlock with a reclaim.
    async fn prune_idempotency_keys(&self, now: i64) -> Result<u64> {
        let key_ttl_ms =
            i64::try_from(self.rules.idempotency_key_ttl_secs).expect("bounded by config") * 1000;
        let prunable = Condition::all()
            .add(hold::Column::IdempotencyKey.is_not_null())
            .add(hold::Column::CreatedAtMs.lte(now - key_ttl_ms));
        let products: Vec<i64> = hold::Entity::find()
            .select_only()
            .column(hold::Column::ProductId)
            .distinct()
            .filter(prunable.clone())
            .limit(SWEEP_BATCH)
            .into_tuple()
            .all(&self.db.conn)
            .await?;
        let mut pruned = 0;
        for product_id in products {
            let txn = self.db.begin_write().await?;
            lock_product(&*txn, product_id).await?;
            let res = hold::Entity::update_many()
                .col_expr(
                    hold::Column::IdempotencyKey,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(
                    hold::Column::RequestHash,
                    Expr::value(Option::<String>::None),
                )
                .filter(hold::Column::ProductId.eq(product_id))
                .filter(prunable.clone())
                .exec(&*txn)
                .await?;
            txn.commit().await?;
            pruned += res.rows_affected;
        }
        Ok(pruned)
    }

    /// Expires the overdue holds of one product; returns the units given back.
    async fn reclaim(&self, product_id: i64) -> Result<i64> {
        let txn = self.db.begin_write().await?;
        lock_product(&*txn, product_id).await?;
        let units = reclaim_overdue_holds(&*txn, product_id, now_ms()).await?;
        self.commit_changing(txn, (units > 0).then_some(product_id))
            .await?;
        if units > 0 {
            tracing::info!(product_id, units, "overdue holds expired");
        }
        Ok(units)
    }
}
