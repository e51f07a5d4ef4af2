//! The payment provider's webhook: record every event once, apply it to its order when
//! that exists, and answer every retry with the first answer.

use entity::{
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    payment::{self, PaymentOutcome, PaymentStatus},
};
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
    sea_query::{Expr, LockType},
};
use serde::{Deserialize, Serialize};

use super::{
    Service,
    holds::is_overdue,
    is_unique_violation, now_ms, request_hash,
    stock::{expire_hold, release_stock},
    validate_idempotency_key,
};
use crate::{Error, Result, metrics::metrics};

/// A validated payment event.
#[derive(Clone, Debug)]
pub struct PaymentEvent {
    pub idempotency_key: String,
    pub hold_id: i64,
    pub status: PaymentStatus,
}

/// The JSON body of a webhook answer, stored so that retries get it byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookBody {
    pub idempotency_key: String,
    pub hold_id: i64,
    pub order_id: Option<i64>,
    /// The payment's status, except for `ignored`, where it is the order's current status.
    pub status: String,
    /// `applied`, `awaiting_order`, `ignored` or `refund_required`.
    pub state: String,
}

/// A webhook answer: HTTP status, body, and whether it replays an earlier answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookReply {
    pub http_status: u16,
    pub body: WebhookBody,
    pub replayed: bool,
}

impl PaymentEvent {
    /// Checks the event's fields. `header_key` is the `Idempotency-Key` header, if sent.
    pub fn parse(
        body_key: Option<String>,
        header_key: Option<String>,
        hold_id: i64,
        status: PaymentStatus,
    ) -> Result<Self> {
        let key = match (body_key, header_key) {
            (Some(b), Some(h)) if b != h => {
                return Err(Error::validation(
                    "idempotency_key",
                    "differs from the Idempotency-Key header",
                ));
            }
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => {
                return Err(Error::validation(
                    "idempotency_key",
                    "is required, in the body or the Idempotency-Key header",
                ));
            }
        };
        validate_idempotency_key("idempotency_key", &key)?;
        Ok(Self {
            idempotency_key: key,
            hold_id,
            status,
        })
    }

    fn hash(&self) -> String {
        request_hash(&[
            "payment",
            &self.idempotency_key,
            &self.hold_id.to_string(),
            &self.status.to_value(),
        ])
    }
}

impl Service {
    /// Records and, when possible, applies one payment event.
    pub async fn receive_payment(&self, event: PaymentEvent) -> Result<WebhookReply> {
        let hash = event.hash();
        if let Some(reply) = replay(&self.db.conn, &event.idempotency_key, &hash).await? {
            metrics().replays.with_label_values(&["webhook"]).inc();
            return Ok(reply);
        }
        match self.record_payment(&event, hash.clone()).await {
            // One key used concurrently for holds of different products: the locks did not
            // order the two, the primary key did. Answer as a retry would be answered.
            Err(Error::Database(e)) if is_unique_violation(&e) => {
                match replay(&self.db.conn, &event.idempotency_key, &hash).await? {
                    Some(reply) => Ok(reply),
                    None => Err(Error::Database(e)),
                }
            }
            other => other,
        }
    }

    async fn record_payment(&self, event: &PaymentEvent, hash: String) -> Result<WebhookReply> {
        // Lock order: product, hold, order. The product is locked because a failed payment
        // or an overdue hold gives stock back. A `paid` event for an ordered hold never
        // does (a `paid` wins the settlement, and `ordered` is final), so it skips the
        // product's lock: on a hot product that lock is the bottleneck. NO KEY UPDATE
        // everywhere: foreign-key checks of concurrent inserts take KEY SHARE, which FOR
        // UPDATE would block (a deadlock).
        let needs_product = |h: &hold::Model| {
            event.status != PaymentStatus::Paid || h.status != HoldStatus::Ordered
        };
        let Some((txn, h, product_locked)) =
            self.begin_on_hold_if(event.hold_id, needs_product).await?
        else {
            return Err(Error::HoldNotFound(event.hold_id));
        };
        assert!(
            product_locked || !needs_product(&h),
            "hold {} left `ordered`",
            h.id
        );
        // The clock is read under the locks: a hold that expired while we waited is expired.
        let now = now_ms();
        // Concurrent deliveries of one key queue on the locks above; the first has committed.
        if let Some(reply) = replay(&*txn, &event.idempotency_key, &hash).await? {
            txn.rollback().await?;
            return Ok(reply);
        }
        let existing_order = order::Entity::find()
            .filter(order::Column::HoldId.eq(h.id))
            .lock(LockType::NoKeyUpdate)
            .one(&*txn)
            .await?;
        let mut stock_released = false;
        let mut view_changed = false;
        let (http_status, outcome, order_id, shown_status) = match existing_order {
            Some(o) => {
                let mut candidates = unapplied_payments(&*txn, h.id).await?;
                candidates.push(Candidate {
                    key: event.idempotency_key.clone(),
                    status: event.status,
                });
                let settled = settle(&*txn, &o, &candidates, now).await?;
                stock_released = settled.stock_released;
                assert!(
                    product_locked || !stock_released,
                    "stock released without the product lock"
                );
                let (new, earlier) = settled.outcomes.split_last().expect("the new event");
                record_outcomes(&*txn, &candidates, earlier, Some(o.id), now).await?;
                let shown = match new {
                    PaymentOutcome::Ignored => settled.order_status.to_value(),
                    _ => event.status.to_value(),
                };
                (200, Some(*new), Some(o.id), shown)
            }
            None => {
                assert_ne!(
                    h.status,
                    HoldStatus::Ordered,
                    "hold {} ordered without order",
                    h.id
                );
                if h.status == HoldStatus::Expired || is_overdue(&h, now) {
                    if h.status == HoldStatus::Active {
                        expire_hold(&*txn, &h).await?;
                        stock_released = true;
                    }
                    let outcome = match event.status {
                        PaymentStatus::Paid => PaymentOutcome::RefundRequired,
                        PaymentStatus::Failed => PaymentOutcome::Ignored,
                    };
                    (200, Some(outcome), None, event.status.to_value())
                } else if event.status == PaymentStatus::Paid && h.paid_at_ms.is_some() {
                    // A second successful charge for one hold: a double charge.
                    (
                        200,
                        Some(PaymentOutcome::RefundRequired),
                        None,
                        event.status.to_value(),
                    )
                } else {
                    if event.status == PaymentStatus::Paid {
                        pin_paid_hold(&*txn, h.id, now).await?;
                        // A pinned hold never becomes free, but a read after its expiry
                        // and before this commit counted it so.
                        view_changed = true;
                    }
                    (202, None, None, event.status.to_value())
                }
            }
        };
        let body = WebhookBody {
            idempotency_key: event.idempotency_key.clone(),
            hold_id: event.hold_id,
            order_id,
            status: shown_status,
            state: outcome.map_or_else(|| "awaiting_order".to_owned(), |o| o.to_value()),
        };
        payment::ActiveModel {
            idempotency_key: Set(event.idempotency_key.clone()),
            hold_id: Set(event.hold_id),
            status: Set(event.status),
            request_hash: Set(hash),
            response_status: Set(i32::from(http_status)),
            response_body: Set(serde_json::to_string(&body).expect("serialisable")),
            outcome: Set(outcome),
            order_id: Set(order_id),
            applied_at_ms: Set(outcome.map(|_| now)),
            created_at_ms: Set(now),
        }
        .insert(&*txn)
        .await?;
        self.commit_changing(
            txn,
            (stock_released || view_changed).then_some(h.product_id),
        )
        .await?;
        let m = metrics();
        m.webhooks.with_label_values(&[body.state.as_str()]).inc();
        if outcome == Some(PaymentOutcome::RefundRequired) {
            m.refund_required.inc();
            tracing::warn!(
                idempotency_key = %event.idempotency_key,
                hold_id = event.hold_id,
                order_id,
                "payment cannot be honoured: refund required"
            );
        }
        Ok(WebhookReply {
            http_status,
            body,
            replayed: false,
        })
    }
}

/// A recorded or arriving payment event taking part in a settlement.
pub(super) struct Candidate {
    pub key: String,
    pub status: PaymentStatus,
}

/// What settling an order's payments did.
pub(super) struct Settlement {
    pub order_status: OrderStatus,
    /// One per candidate, in the same order.
    pub outcomes: Vec<PaymentOutcome>,
    pub stock_released: bool,
}

/// Decides the order's fate from the events not yet applied, oldest first. A `paid` wins
/// over any `failed`; a second `paid` is a double charge; anything after the order is final
/// changes nothing. The caller holds the product, hold and order locks.
pub(super) async fn settle(
    conn: &impl ConnectionTrait,
    o: &order::Model,
    candidates: &[Candidate],
    now: i64,
) -> Result<Settlement> {
    let mut outcomes: Vec<PaymentOutcome> = candidates
        .iter()
        .map(|c| match c.status {
            PaymentStatus::Paid => PaymentOutcome::RefundRequired,
            PaymentStatus::Failed => PaymentOutcome::Ignored,
        })
        .collect();
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

/// Moves a pending order to `status`.
pub(super) async fn finish_order(
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
pub(super) async fn unapplied_payments(
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

/// Stores the outcomes of recorded events settled along with a newer one.
pub(super) async fn record_outcomes(
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

/// Records that the customer paid: the hold stops expiring.
async fn pin_paid_hold(conn: &impl ConnectionTrait, hold_id: i64, now: i64) -> Result<()> {
    hold::Entity::update_many()
        .col_expr(hold::Column::PaidAtMs, Expr::value(now))
        .filter(hold::Column::Id.eq(hold_id))
        .filter(hold::Column::PaidAtMs.is_null())
        .exec(conn)
        .await?;
    Ok(())
}

/// The stored answer for `key`, or 409 when the key came with a different event.
async fn replay(
    conn: &impl ConnectionTrait,
    key: &str,
    hash: &str,
) -> Result<Option<WebhookReply>> {
    let Some(p) = payment::Entity::find_by_id(key).one(conn).await? else {
        return Ok(None);
    };
    if p.request_hash != hash {
        return Err(Error::IdempotencyKeyReused);
    }
    Ok(Some(WebhookReply {
        http_status: u16::try_from(p.response_status).expect("stored HTTP status"),
        body: serde_json::from_str(&p.response_body).expect("stored answer is valid JSON"),
        replayed: true,
    }))
}
