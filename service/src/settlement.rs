//! Settlement: what a hold's payment events do to its order. An event that arrives before
//! the order is recorded without an outcome; once the order exists, or can never exist,
//! the events still waiting are settled here, oldest first, and each gets its outcome.
//! Every function runs inside the caller's transaction, which holds the hold's lock and
//! the order's (see [`crate::locks`]), and the product's wherever stock may move.

use entity::{
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    payment::{self, PaymentOutcome, PaymentStatus},
};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr,
};

use crate::{
    Result,
    metrics::metrics,
    stock::{expire_hold, release_stock},
};

/// A recorded or arriving payment event taking part in a settlement.
pub(crate) struct Candidate {
    /// The event's idempotency key.
    pub key: String,
    /// What the provider said.
    pub status: PaymentStatus,
}

/// What settling an order's payments did.
pub(crate) struct Settlement {
    /// The order's status afterwards.
    pub order_status: OrderStatus,
    /// One per candidate, in the same order.
    pub outcomes: Vec<PaymentOutcome>,
    /// The order was cancelled and its units given back.
    pub stock_released: bool,
}

/// What an event comes to when it decides no order: its order is final already, or there
/// is none and never will be. A `paid` took money that buys nothing and must be refunded;
/// a `failed` changes nothing.
pub fn outcome_unapplied(status: PaymentStatus) -> PaymentOutcome {
    match status {
        PaymentStatus::Paid => PaymentOutcome::RefundRequired,
        PaymentStatus::Failed => PaymentOutcome::Ignored,
    }
}

/// [`outcome_unapplied`] of each candidate.
fn outcomes_unapplied(candidates: &[Candidate]) -> Vec<PaymentOutcome> {
    candidates
        .iter()
        .map(|c| outcome_unapplied(c.status))
        .collect()
}

/// Decides the order's fate from the events not yet applied, oldest first. A `paid` wins
/// over any `failed`; a second `paid` is a double charge; anything after the order is final
/// changes nothing. The caller holds the product, hold and order locks.
pub(crate) async fn settle(
    conn: &impl ConnectionTrait,
    o: &order::Model,
    candidates: &[Candidate],
    now: i64,
) -> Result<Settlement> {
    let mut outcomes = outcomes_unapplied(candidates);
    let mut order_status = o.status;
    let mut stock_released = false;
    if o.status == OrderStatus::Pending {
        let winner = candidates
            .iter()
            .position(|c| c.status == PaymentStatus::Paid)
            .or(if candidates.is_empty() { None } else { Some(0) });
        if let Some(winner) = winner {
            order_status = match candidates[winner].status {
                PaymentStatus::Paid => OrderStatus::Paid,
                PaymentStatus::Failed => OrderStatus::Cancelled,
            };
            finish_order(conn, o, order_status, now).await?;
            if order_status == OrderStatus::Cancelled {
                release_stock(conn, o.product_id, o.qty).await?;
                stock_released = true;
            }
            outcomes[winner] = PaymentOutcome::Applied;
        }
    }
    Ok(Settlement {
        order_status,
        outcomes,
        stock_released,
    })
}

/// [`settle`]s recorded events against their order and stores every outcome.
pub(crate) async fn settle_recorded(
    conn: &impl ConnectionTrait,
    o: &order::Model,
    recorded: &[Candidate],
    now: i64,
) -> Result<Settlement> {
    let settled = settle(conn, o, recorded, now).await?;
    record_outcomes(conn, recorded, &settled.outcomes, Some(o.id), now).await?;
    Ok(settled)
}

/// Settles recorded events of hold `h`, whose order can never come (it expired, or is
/// overdue): expires the hold if it still says `active`, and gives each event its
/// [`outcome_unapplied`]. Returns the outcomes and whether stock was given back.
pub(crate) async fn settle_recorded_without_order(
    conn: &impl ConnectionTrait,
    h: &hold::Model,
    recorded: &[Candidate],
    now: i64,
) -> Result<(Vec<PaymentOutcome>, bool)> {
    let stock_released = end_orderless_hold(conn, h).await?;
    let outcomes = outcomes_unapplied(recorded);
    record_outcomes(conn, recorded, &outcomes, None, now).await?;
    Ok((outcomes, stock_released))
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

/// Stores the outcomes of recorded events settled, one per candidate.
pub(crate) async fn record_outcomes(
    conn: &impl ConnectionTrait,
    candidates: &[Candidate],
    outcomes: &[PaymentOutcome],
    order_id: Option<i64>,
    now: i64,
) -> Result<()> {
    for (c, outcome) in candidates.iter().zip(outcomes) {
        if *outcome == PaymentOutcome::RefundRequired {
            metrics().refund_required.inc();
        }
        payment::Entity::update_many()
            .col_expr(payment::Column::Outcome, Expr::value(outcome.to_value()))
            .col_expr(payment::Column::OrderId, Expr::value(order_id))
            .col_expr(payment::Column::AppliedAtMs, Expr::value(now))
            .filter(payment::Column::IdempotencyKey.eq(c.key.as_str()))
            .filter(payment::Column::Outcome.is_null())
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// Logs each recorded event of `hold_id` whose outcome is a refund.
pub(crate) fn log_refunds(candidates: &[Candidate], outcomes: &[PaymentOutcome], hold_id: i64) {
    for (c, o) in candidates.iter().zip(outcomes) {
        if *o == PaymentOutcome::RefundRequired {
            tracing::warn!(idempotency_key = %c.key, hold_id, "payment cannot be honoured: refund required");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_that_decides_no_order_is_refunded_when_paid_and_ignored_when_failed() {
        assert_eq!(
            outcome_unapplied(PaymentStatus::Paid),
            PaymentOutcome::RefundRequired
        );
        assert_eq!(
            outcome_unapplied(PaymentStatus::Failed),
            PaymentOutcome::Ignored
        );
    }
}
