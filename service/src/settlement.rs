//! Settlement: what a hold's payment events do to its order. An event that arrives before
//! the order is recorded without an outcome; once the order exists, or can never exist,
//! the events still waiting are settled here, oldest first, and each gets its outcome.
//! Every function runs inside the caller's transaction, which holds the hold's lock and
//! the order's (see [`crate::locks`]), and the product's wherever stock may move.

use entity::{
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    payment::{self, PaymentOutcome, PaymentStatus, RefundReason},
    product,
};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr,
};

use crate::{
    Result,
    metrics::metrics,
    stock::{cancel_order, expire_hold},
};

/// A recorded or arriving payment event taking part in a settlement.
pub(crate) struct Candidate {
    /// The event's idempotency key.
    pub key: String,
    /// What the provider said.
    pub status: PaymentStatus,
}

/// What one event came to, and why it must be refunded when it must.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Its outcome.
    pub outcome: PaymentOutcome,
    /// Set when the outcome is `refund_required`.
    pub reason: Option<RefundReason>,
}

impl Verdict {
    /// The event decided its order's status.
    pub const APPLIED: Self = Self {
        outcome: PaymentOutcome::Applied,
        reason: None,
    };

    /// What an event comes to when it decides no order, for the reason `why`: its order
    /// is final already, or there is none and never will be. A `paid` took money that buys
    /// nothing and must be refunded; a `failed` changes nothing.
    pub fn unapplied(status: PaymentStatus, why: RefundReason) -> Self {
        match status {
            PaymentStatus::Paid => Self {
                outcome: PaymentOutcome::RefundRequired,
                reason: Some(why),
            },
            PaymentStatus::Failed => Self {
                outcome: PaymentOutcome::Ignored,
                reason: None,
            },
        }
    }
}

/// What a final order makes of an event that comes after it: a second payment of a paid
/// order is a double charge; a payment of a cancelled one buys nothing.
fn reason_after(order_status: OrderStatus) -> RefundReason {
    match order_status {
        OrderStatus::Paid => RefundReason::DoubleCharge,
        OrderStatus::Cancelled | OrderStatus::Pending => RefundReason::OrderCancelled,
    }
}

/// Why a hold without an order can take no payment.
pub(crate) fn reason_without_order(h: &hold::Model) -> RefundReason {
    match h.status {
        HoldStatus::Released => RefundReason::HoldReleased,
        _ if h.paid_at_ms.is_some() => RefundReason::DoubleCharge,
        _ => RefundReason::HoldExpired,
    }
}

/// What settling an order's payments did.
pub(crate) struct Settlement {
    /// The order's status afterwards.
    pub order_status: OrderStatus,
    /// One per candidate, in the same order.
    pub verdicts: Vec<Verdict>,
    /// The order was cancelled and its units given back.
    pub stock_released: bool,
}

/// `true` when order `o` of hold `h` is past its payment deadline at `now_ms`: pending,
/// created at least `ttl_ms` ago, and no payment recorded for the hold before the order
/// (that payment wins). Such an order is cancelled in every respect, whether or not
/// anything has marked it so; see [`crate::stock::overdue_orders`], the same rule in SQL.
pub fn is_lapsed(o: &order::Model, h: &hold::Model, now_ms: i64, ttl_ms: i64) -> bool {
    o.status == OrderStatus::Pending && o.created_at_ms + ttl_ms <= now_ms && h.paid_at_ms.is_none()
}

/// Decides the order's fate from the events not yet applied, oldest first. A `paid` wins
/// over any `failed`; a second `paid` is a double charge; anything after the order is final
/// changes nothing. An order past its payment deadline (`lapsed`) is cancelled first. The
/// caller holds the product, hold and order locks.
pub(crate) async fn settle(
    conn: &impl ConnectionTrait,
    o: &order::Model,
    candidates: &[Candidate],
    lapsed: bool,
    now: i64,
) -> Result<Settlement> {
    let mut order_status = o.status;
    let mut stock_released = false;
    let mut winner = None;
    if lapsed {
        cancel_order(conn, o, now).await?;
        (order_status, stock_released) = (OrderStatus::Cancelled, true);
    } else if o.status == OrderStatus::Pending && !candidates.is_empty() {
        let first_paid = candidates
            .iter()
            .position(|c| c.status == PaymentStatus::Paid);
        let w = first_paid.unwrap_or(0);
        order_status = match candidates[w].status {
            PaymentStatus::Paid => OrderStatus::Paid,
            PaymentStatus::Failed => OrderStatus::Cancelled,
        };
        match order_status {
            OrderStatus::Cancelled => cancel_order(conn, o, now).await?,
            _ => finish_order(conn, o, order_status, now).await?,
        }
        stock_released = order_status == OrderStatus::Cancelled;
        winner = Some(w);
    }
    let verdicts = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| match winner {
            Some(w) if w == i => Verdict::APPLIED,
            _ => Verdict::unapplied(c.status, reason_after(order_status)),
        })
        .collect();
    Ok(Settlement {
        order_status,
        verdicts,
        stock_released,
    })
}

/// [`settle`]s recorded events against their order and stores every verdict.
pub(crate) async fn settle_recorded(
    conn: &impl ConnectionTrait,
    o: &order::Model,
    recorded: &[Candidate],
    lapsed: bool,
    now: i64,
) -> Result<Settlement> {
    let settled = settle(conn, o, recorded, lapsed, now).await?;
    let ledger = Ledger {
        order_id: Some(o.id),
        value_cents: o.total_cents,
    };
    record_verdicts(conn, recorded, &settled.verdicts, ledger, now).await?;
    Ok(settled)
}

/// Settles recorded events of hold `h`, whose order can never come (it expired, is
/// overdue, or was released): expires the hold if it still says `active`, and gives each
/// event its [`Verdict::unapplied`]. Returns the verdicts and whether stock was given back.
pub(crate) async fn settle_recorded_without_order(
    conn: &impl ConnectionTrait,
    h: &hold::Model,
    recorded: &[Candidate],
    now: i64,
) -> Result<(Vec<Verdict>, bool)> {
    let stock_released = end_orderless_hold(conn, h).await?;
    let why = reason_without_order(h);
    let verdicts: Vec<Verdict> = recorded
        .iter()
        .map(|c| Verdict::unapplied(c.status, why))
        .collect();
    let ledger = Ledger::of_hold(conn, h).await?;
    record_verdicts(conn, recorded, &verdicts, ledger, now).await?;
    Ok((verdicts, stock_released))
}

/// Cancels the pending order `o`, its product, hold and order locked: the events recorded
/// for its hold before it existed decide first (a recorded `paid` wins; the first
/// `failed` cancels it). Returns the order's status afterwards.
pub(crate) async fn cancel_pending(
    conn: &impl ConnectionTrait,
    o: &order::Model,
    now: i64,
) -> Result<OrderStatus> {
    let recorded = unapplied_payments(conn, o.hold_id).await?;
    if recorded.is_empty() {
        cancel_order(conn, o, now).await?;
        return Ok(OrderStatus::Cancelled);
    }
    let settled = settle_recorded(conn, o, &recorded, false, now).await?;
    log_refunds(&recorded, &settled.verdicts, o.hold_id);
    Ok(settled.order_status)
}

/// Ends hold `h`, whose order can never come: marks it expired and gives its units back if
/// it still says `active`. `true` when stock was given back.
pub(crate) async fn end_orderless_hold(
    conn: &impl ConnectionTrait,
    h: &hold::Model,
) -> Result<bool> {
    if h.status != HoldStatus::Active {
        return Ok(false);
    }
    expire_hold(conn, h).await?;
    Ok(true)
}

/// Moves a pending order to `status`.
pub(crate) async fn finish_order(
    conn: &impl ConnectionTrait,
    o: &order::Model,
    status: OrderStatus,
    now: i64,
) -> Result<()> {
    let res = order::Entity::update_many()
        .col_expr(order::Column::Status, Expr::value(status.to_value()))
        .col_expr(order::Column::UpdatedAtMs, Expr::value(now))
        .filter(order::Column::Id.eq(o.id))
        .filter(order::Column::Status.eq(OrderStatus::Pending))
        .exec(conn)
        .await?;
    assert_eq!(
        res.rows_affected, 1,
        "order {} changed under its lock",
        o.id
    );
    let event = match status {
        OrderStatus::Paid => "paid",
        OrderStatus::Cancelled => "cancelled",
        OrderStatus::Pending => "pending",
    };
    metrics().orders.with_label_values(&[event]).inc();
    Ok(())
}

/// Recorded events of `hold_id` still waiting for its order, oldest first.
pub(crate) async fn unapplied_payments(
    conn: &impl ConnectionTrait,
    hold_id: i64,
) -> Result<Vec<Candidate>> {
    Ok(payment::Entity::find()
        .filter(payment::Column::HoldId.eq(hold_id))
        .filter(payment::Column::Outcome.is_null())
        .order_by_asc(payment::Column::CreatedAtMs)
        .order_by_asc(payment::Column::IdempotencyKey)
        .all(conn)
        .await?
        .into_iter()
        .map(|p| Candidate {
            key: p.idempotency_key,
            status: p.status,
        })
        .collect())
}

/// What events settled together are worth and the order they were settled against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ledger {
    /// The order, if there is one.
    pub order_id: Option<i64>,
    /// What a refund of one of them is worth, in cents.
    pub value_cents: i64,
}

impl Ledger {
    /// The ledger of hold `h`, which has no order: its units at the product's price now.
    pub async fn of_hold(conn: &impl ConnectionTrait, h: &hold::Model) -> Result<Self> {
        let price = product::Entity::find_by_id(h.product_id)
            .one(conn)
            .await?
            .expect("a hold's product exists")
            .price_cents;
        Ok(Self {
            order_id: None,
            value_cents: price
                .checked_mul(h.qty)
                .expect("price and quantity bounds keep the total in range"),
        })
    }
}

/// Stores the verdicts of recorded events settled, one per candidate.
pub(crate) async fn record_verdicts(
    conn: &impl ConnectionTrait,
    candidates: &[Candidate],
    verdicts: &[Verdict],
    ledger: Ledger,
    now: i64,
) -> Result<()> {
    for (c, v) in candidates.iter().zip(verdicts) {
        if v.outcome == PaymentOutcome::RefundRequired {
            metrics().refund_required.inc();
        }
        payment::Entity::update_many()
            .col_expr(payment::Column::Outcome, Expr::value(v.outcome.to_value()))
            .col_expr(payment::Column::OrderId, Expr::value(ledger.order_id))
            .col_expr(payment::Column::AppliedAtMs, Expr::value(now))
            .col_expr(
                payment::Column::RefundReason,
                Expr::value(v.reason.map(|r| r.to_value())),
            )
            .col_expr(
                payment::Column::RefundCents,
                Expr::value(v.reason.map(|_| ledger.value_cents)),
            )
            .filter(payment::Column::IdempotencyKey.eq(c.key.as_str()))
            .filter(payment::Column::Outcome.is_null())
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// Logs each recorded event of `hold_id` whose outcome is a refund.
pub(crate) fn log_refunds(candidates: &[Candidate], verdicts: &[Verdict], hold_id: i64) {
    for (c, v) in candidates.iter().zip(verdicts) {
        if let Some(reason) = v.reason {
            tracing::warn!(idempotency_key = %c.key, hold_id, reason = %reason.to_value(), "payment cannot be honoured: refund required");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_that_decides_no_order_is_refunded_when_paid_and_ignored_when_failed() {
        let why = RefundReason::HoldExpired;
        assert_eq!(
            Verdict::unapplied(PaymentStatus::Paid, why),
            Verdict {
                outcome: PaymentOutcome::RefundRequired,
                reason: Some(why)
            }
        );
        assert_eq!(
            Verdict::unapplied(PaymentStatus::Failed, why).outcome,
            PaymentOutcome::Ignored
        );
    }

    #[test]
    fn a_payment_after_a_final_order_is_a_double_charge_or_buys_nothing() {
        assert_eq!(reason_after(OrderStatus::Paid), RefundReason::DoubleCharge);
        assert_eq!(
            reason_after(OrderStatus::Cancelled),
            RefundReason::OrderCancelled
        );
    }
}
