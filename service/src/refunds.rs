//! Refunds: every payment that could not be honoured, why, and what it is worth, until the
//! operator marks it refunded. The outcome is decided in [`crate::settlement`]; this is the
//! operator's view of it.

use std::collections::HashMap;

use entity::{
    hold,
    order::{self, OrderStatus},
    payment::{self, PaymentOutcome},
};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, sea_query::Expr,
};

use super::{
    Service, now_ms,
    settlement::{Ledger, reason_without_order},
};
use crate::{Error, Result, metrics::metrics};

pub use entity::payment::RefundReason;

/// A payment that must be refunded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundView {
    /// The payment's idempotency key.
    pub idempotency_key: String,
    /// The hold it paid for.
    pub hold_id: i64,
    /// The hold's order, if it had one.
    pub order_id: Option<i64>,
    /// The product.
    pub product_id: i64,
    /// Units paid for.
    pub qty: i64,
    /// What to refund, in cents.
    pub amount_cents: i64,
    /// Why it cannot be honoured.
    pub reason: RefundReason,
    /// When the refund was decided, in Unix milliseconds.
    pub recorded_at_ms: i64,
    /// When the operator marked it refunded.
    pub resolved_at_ms: Option<i64>,
}

/// Where a page of refunds starts: after the refund recorded at `at_ms` with `key`. Shown
/// to clients as `<at_ms>.<key>`, opaque to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundCursor {
    at_ms: i64,
    key: String,
}

impl RefundCursor {
    /// Reads a cursor given by a client.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::validation("after", "is not a cursor this server gave");
        let (at, key) = text.split_once('.').ok_or_else(bad)?;
        let at_ms = at.parse().map_err(|_| bad())?;
        if key.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            at_ms,
            key: key.to_owned(),
        })
    }

    /// The cursor as shown to clients.
    pub fn to_text(&self) -> String {
        format!("{}.{}", self.at_ms, self.key)
    }

    /// The refunds after this cursor, in the list's order.
    fn after(&self) -> Condition {
        Condition::any()
            .add(payment::Column::AppliedAtMs.gt(self.at_ms))
            .add(
                Condition::all()
                    .add(payment::Column::AppliedAtMs.eq(self.at_ms))
                    .add(payment::Column::IdempotencyKey.gt(self.key.as_str())),
            )
    }
}

/// A page of refunds, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundPage {
    /// The refunds.
    pub items: Vec<RefundView>,
    /// The cursor of the next page; `None` on the last one.
    pub next_after: Option<RefundCursor>,
}

impl Service {
    /// Up to `limit` unresolved refunds after `after`, oldest first.
    pub async fn refunds(&self, after: Option<RefundCursor>, limit: u64) -> Result<RefundPage> {
        let mut query = payment::Entity::find()
            .filter(payment::Column::Outcome.eq(PaymentOutcome::RefundRequired))
            .filter(payment::Column::ResolvedAtMs.is_null());
        if let Some(cursor) = &after {
            query = query.filter(cursor.after());
        }
        let mut rows = query
            .order_by_asc(payment::Column::AppliedAtMs)
            .order_by_asc(payment::Column::IdempotencyKey)
            .limit(limit + 1)
            .all(&self.db.conn)
            .await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(usize::try_from(limit).expect("bounded by the API"));
        let items = self.refund_views(rows).await?;
        let next_after = more.then(|| items.last()).flatten().map(|r| RefundCursor {
            at_ms: r.recorded_at_ms,
            key: r.idempotency_key.clone(),
        });
        metrics()
            .refunds
            .with_label_values(&["listed"])
            .inc_by(items.len() as u64);
        Ok(RefundPage { items, next_after })
    }

    /// Marks the refund of payment `key` done, once: again, it answers the same.
    pub async fn resolve_refund(&self, key: &str) -> Result<RefundView> {
        let txn = self.db.begin_write().await?;
        let resolved = payment::Entity::update_many()
            .col_expr(payment::Column::ResolvedAtMs, Expr::value(now_ms()))
            .filter(payment::Column::IdempotencyKey.eq(key))
            .filter(payment::Column::Outcome.eq(PaymentOutcome::RefundRequired))
            .filter(payment::Column::ResolvedAtMs.is_null())
            .exec(&*txn)
            .await?
            .rows_affected
            == 1;
        let found = payment::Entity::find_by_id(key)
            .filter(payment::Column::Outcome.eq(PaymentOutcome::RefundRequired))
            .one(&*txn)
            .await?;
        txn.commit().await?;
        let p = found.ok_or_else(|| Error::RefundNotFound(key.to_owned()))?;
        if resolved {
            metrics().refunds.with_label_values(&["resolved"]).inc();
            tracing::info!(
                idempotency_key = key,
                hold_id = p.hold_id,
                "refund resolved"
            );
        }
        let view = self.refund_views(vec![p]).await?;
        Ok(view.into_iter().next().expect("one payment, one view"))
    }

    /// The views of refunded payments `rows`, with their holds' product and units.
    async fn refund_views(&self, rows: Vec<payment::Model>) -> Result<Vec<RefundView>> {
        let hold_ids: Vec<i64> = rows.iter().map(|p| p.hold_id).collect();
        let holds: HashMap<i64, hold::Model> = hold::Entity::find()
            .filter(hold::Column::Id.is_in(hold_ids))
            .all(&self.db.conn)
            .await?
            .into_iter()
            .map(|h| (h.id, h))
            .collect();
        let mut views = Vec::with_capacity(rows.len());
        for p in rows {
            let h = &holds[&p.hold_id];
            let (reason, amount_cents) = match (p.refund_reason, p.refund_cents) {
                (Some(reason), Some(cents)) => (reason, cents),
                _ => self.reason_of_unmarked(&p, h).await?,
            };
            views.push(RefundView {
                hold_id: p.hold_id,
                order_id: p.order_id,
                product_id: h.product_id,
                qty: h.qty,
                amount_cents,
                reason,
                recorded_at_ms: p.applied_at_ms.unwrap_or(p.created_at_ms),
                resolved_at_ms: p.resolved_at_ms,
                idempotency_key: p.idempotency_key,
            });
        }
        Ok(views)
    }

    /// The reason and amount of a refund recorded without them, by a process of the
    /// previous version still running after the upgrade: read from the rows it was
    /// decided on, as the upgrade did for the refunds before it.
    async fn reason_of_unmarked(
        &self,
        p: &payment::Model,
        h: &hold::Model,
    ) -> Result<(RefundReason, i64)> {
        let order = match p.order_id {
            Some(id) => order::Entity::find_by_id(id).one(&self.db.conn).await?,
            None => None,
        };
        let reason = match &order {
            Some(o) if o.status == OrderStatus::Paid => RefundReason::DoubleCharge,
            Some(_) => RefundReason::OrderCancelled,
            None => reason_without_order(h),
        };
        let cents = match order {
            Some(o) => o.total_cents,
            None => Ledger::of_hold(&self.db.conn, h).await?.value_cents,
        };
        Ok((reason, cents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_shows() {
        let cursor = RefundCursor {
            at_ms: 1_700_000_000_123,
            key: "evt.with:dots".into(),
        };
        assert_eq!(RefundCursor::parse(&cursor.to_text()).unwrap(), cursor);
        for bad in ["", "123", "x.key", "123.", ".key", "-"] {
            assert!(RefundCursor::parse(bad).is_err(), "{bad:?}");
        }
    }
}
