//! Letting go: a buyer releases a hold or cancels an order, and its units are free at
//! once. Each runs under the product's lock, then the hold's (and the order's), like every
//! move of stock, so a release racing an order of the same hold, or a payment, ends one
//! way only: whichever takes the hold's lock first decides, and the other finds its result.

use entity::{
    hold::{HoldStatus, Model as Hold},
    order::OrderStatus,
};

use super::{
    Service,
    holds::{HoldView, is_overdue},
    now_ms,
    orders::OrderView,
    sales::CustomerId,
    settlement::{
        cancel_pending, end_orderless_hold, log_refunds, settle_recorded_without_order,
        unapplied_payments,
    },
    stock::release_hold,
};
use crate::{Error, Result, metrics::metrics};

impl Service {
    /// Releases hold `id` on behalf of `caller`, who must be allowed to see it: its units
    /// are free at once. A released hold answers the same again; an expired one answers
    /// with its status, `expired`.
    pub async fn release_hold(&self, id: i64, caller: Option<&CustomerId>) -> Result<HoldView> {
        // Checked before the locks (a hold's owner never changes), so that a caller who
        // may not see the hold does not queue for its product's lock.
        self.hold(id, caller).await?;
        let (txn, h) = self
            .begin_on_hold(id)
            .await?
            .expect("holds are never deleted");
        let now = now_ms();
        let refused = match h.status {
            HoldStatus::Ordered => Some(Error::HoldOrdered(id)),
            HoldStatus::Active if h.paid_at_ms.is_some() => Some(Error::HoldPaid(id)),
            _ => None,
        };
        if let Some(refused) = refused {
            txn.rollback().await?;
            return Err(refused);
        }
        let status = match h.status {
            HoldStatus::Active if is_overdue(&h, now) => {
                end_orderless_hold(&*txn, &h).await?;
                HoldStatus::Expired
            }
            HoldStatus::Active => {
                release_hold(&*txn, &h).await?;
                settle_released(&*txn, &h, now).await?;
                HoldStatus::Released
            }
            ended => {
                txn.rollback().await?;
                return Ok(HoldView::with_status(&h, ended));
            }
        };
        self.commit_changing(txn, Some(h.product_id)).await?;
        if status == HoldStatus::Released {
            tracing::debug!(
                hold_id = id,
                product_id = h.product_id,
                qty = h.qty,
                "hold released"
            );
        }
        Ok(HoldView::with_status(&h, status))
    }

    /// Cancels order `id` on behalf of `caller`, who must be allowed to see it: its units
    /// are free at once. A cancelled order answers the same again; a paid one, or one whose
    /// payment is recorded and waits to be applied, cannot be cancelled.
    pub async fn cancel_order(&self, id: i64, caller: Option<&CustomerId>) -> Result<OrderView> {
        // Checked before the locks (an order's owner never changes), as for a release.
        self.order(id, caller).await?;
        let (txn, h, o) = self
            .begin_on_order(id)
            .await?
            .expect("orders are never deleted");
        let paid = o.status == OrderStatus::Paid || h.paid_at_ms.is_some();
        if paid || o.status == OrderStatus::Cancelled {
            txn.rollback().await?;
            return if paid {
                Err(Error::OrderPaid(id))
            } else {
                Ok(OrderView::current(o, false))
            };
        }
        let now = now_ms();
        let status = cancel_pending(&*txn, &o, now).await?;
        assert_eq!(
            status,
            OrderStatus::Cancelled,
            "an unpaid hold's events cancel"
        );
        self.commit_changing(txn, Some(o.product_id)).await?;
        metrics()
            .orders
            .with_label_values(&["cancelled_by_buyer"])
            .inc();
        tracing::debug!(
            order_id = id,
            hold_id = h.id,
            "order cancelled by its buyer"
        );
        Ok(OrderView::current(o, true))
    }
}

/// Settles the events recorded for hold `h`, just released (`h` as read before): none can
/// be applied now. They are `failed` ones (a recorded `paid` forbids the release), so
/// they are ignored.
async fn settle_released(conn: &impl sea_orm::ConnectionTrait, h: &Hold, now: i64) -> Result<()> {
    let recorded = unapplied_payments(conn, h.id).await?;
    if recorded.is_empty() {
        return Ok(());
    }
    let released = Hold {
        status: HoldStatus::Released,
        ..h.clone()
    };
    let (verdicts, _) = settle_recorded_without_order(conn, &released, &recorded, now).await?;
    log_refunds(&recorded, &verdicts, h.id);
    Ok(())
}
