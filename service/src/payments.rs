//! The payment provider's webhook: record every event once, apply it to its order when
//! that exists, and answer every retry with the first answer. What an event does to its
//! order is decided in [`crate::settlement`].

use entity::{
    hold::{self, HoldStatus},
    order,
    payment::{self, PaymentOutcome, PaymentStatus},
};
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel,
    QueryFilter, sea_query::Expr,
};
use serde::{Deserialize, Serialize};

use super::{
    Service,
    holds::is_overdue,
    is_unique_violation,
    locks::lock_order_of_hold,
    now_ms, request_hash,
    settlement::{
        Candidate, Ledger, Verdict, end_orderless_hold, is_lapsed, reason_without_order,
        record_verdicts, settle, unapplied_payments,
    },
    validate_idempotency_key,
};
use crate::{Error, Result, metrics::metrics};

/// What the payment provider says happened to the charge, as the service's callers name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// The customer was charged.
    Paid,
    /// The charge did not go through.
    Failed,
}

impl From<Charge> for PaymentStatus {
    fn from(charge: Charge) -> Self {
        match charge {
            Charge::Paid => Self::Paid,
            Charge::Failed => Self::Failed,
        }
    }
}

/// A validated payment event.
#[derive(Clone, Debug)]
pub struct PaymentEvent {
    /// The provider's unique id of this event.
    pub idempotency_key: String,
    /// The hold paid for.
    pub hold_id: i64,
    /// What the provider says happened.
    pub(crate) status: PaymentStatus,
}

/// The JSON body of a webhook answer, stored so that retries get it byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookBody {
    /// The event's idempotency key.
    pub idempotency_key: String,
    /// The hold paid for.
    pub hold_id: i64,
    /// The order the event was applied to; `None` while it awaits the order.
    pub order_id: Option<i64>,
    /// The payment's status, except for `ignored`, where it is the order's current status.
    pub status: String,
    /// `applied`, `awaiting_order`, `ignored` or `refund_required`.
    pub state: String,
}

/// What an event came to when it first arrived. Retries are answered with the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Settled on arrival: applied to its order, ignored, or a refund is required.
    Settled,
    /// Recorded; applied once the hold's order exists.
    AwaitingOrder,
}

impl WebhookOutcome {
    /// The stored encoding of the outcome, in `payments.response_status`: 200 for
    /// `Settled`, 202 for `AwaitingOrder`, the values every stored row has.
    fn to_stored(self) -> i32 {
        match self {
            Self::Settled => 200,
            Self::AwaitingOrder => 202,
        }
    }

    /// Reads the stored encoding written by [`to_stored`](Self::to_stored).
    fn from_stored(stored: i32) -> Self {
        match stored {
            200 => Self::Settled,
            202 => Self::AwaitingOrder,
            other => panic!("stored webhook outcome {other} is neither 200 nor 202"),
        }
    }
}

/// A webhook answer: the outcome, the body, and whether it replays an earlier answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookReply {
    /// What the event came to when it first arrived.
    pub outcome: WebhookOutcome,
    /// The answer's body, byte for byte the first one's on a replay.
    pub body: WebhookBody,
    /// `true` when this answers a retry.
    pub replayed: bool,
}

impl PaymentEvent {
    /// Checks the event's fields. `header_key` is the `Idempotency-Key` header, if sent.
    pub fn parse(
        body_key: Option<String>,
        header_key: Option<String>,
        hold_id: i64,
        charge: Charge,
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
            status: charge.into(),
        })
    }

    /// Hash of the fields that make two deliveries of one key the same event.
    pub(crate) fn hash(&self) -> String {
        request_hash(&[
            "payment",
            &self.idempotency_key,
            &self.hold_id.to_string(),
            &self.status.to_value(),
        ])
    }
}

impl Service {
    /// Records and, when possible, applies one payment event. A `paid` event for an
    /// ordered hold is applied in a group ([`crate::payment_groups`]); anything else runs
    /// alone.
    pub async fn receive_payment(&self, event: PaymentEvent) -> Result<WebhookReply> {
        let hash = event.hash();
        if event.status == PaymentStatus::Paid
            && let Some(reply) = self.pay_in_group(&event, &hash).await?
        {
            return Ok(reply);
        }
        self.receive_payment_alone(event, hash).await
    }

    /// [`receive_payment`](Self::receive_payment) in a transaction of its own.
    async fn receive_payment_alone(
        &self,
        event: PaymentEvent,
        hash: String,
    ) -> Result<WebhookReply> {
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

    /// Records `event`, first under its hold's locks, and applies it when it can.
    async fn record_payment(&self, event: &PaymentEvent, hash: String) -> Result<WebhookReply> {
        match self.record_payment_locked(event, &hash, false).await? {
            Recorded::Reply(reply) => Ok(reply),
            // The order's deadline passed: cancelling it gives stock back.
            Recorded::NeedsProduct => match self.record_payment_locked(event, &hash, true).await? {
                Recorded::Reply(reply) => Ok(reply),
                Recorded::NeedsProduct => unreachable!("the product was locked"),
            },
        }
    }

    /// [`record_payment`](Self::record_payment) in one transaction, the product locked when
    /// `lock_product` says so or the event may give stock back.
    async fn record_payment_locked(
        &self,
        event: &PaymentEvent,
        hash: &str,
        lock_product: bool,
    ) -> Result<Recorded> {
        // Lock order: product, hold, order. The product is locked because a failed payment,
        // an overdue hold or an order past its deadline gives stock back. A `paid` event for
        // an ordered hold does so only when the order's deadline has passed (found under
        // the locks, then retried with the product's), so it skips the product's lock: on a
        // hot product that lock is the bottleneck. NO KEY UPDATE everywhere: foreign-key
        // checks of concurrent inserts take KEY SHARE, which FOR UPDATE would block.
        let needs_product = |h: &hold::Model| {
            lock_product || event.status != PaymentStatus::Paid || h.status != HoldStatus::Ordered
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
        if let Some(reply) = replay(&*txn, &event.idempotency_key, hash).await? {
            txn.rollback().await?;
            return Ok(Recorded::Reply(reply));
        }
        let decision = match lock_order_of_hold(&*txn, h.id).await? {
            Some(o) => {
                let lapsed = is_lapsed(&o, &h, now, self.order_payment_ttl_ms());
                if lapsed && !product_locked {
                    txn.rollback().await?;
                    return Ok(Recorded::NeedsProduct);
                }
                decide_with_order(&*txn, event, &o, lapsed, now).await?
            }
            None => decide_without_order(&*txn, event, &h, now).await?,
        };
        assert!(
            product_locked || !decision.stock_released,
            "stock released without the product lock"
        );
        let reply = decision.reply(event);
        store_payment(&*txn, event, hash.to_owned(), &decision, &reply, now).await?;
        let view_changed = decision.stock_released || decision.pinned;
        self.commit_changing(txn, view_changed.then_some(h.product_id))
            .await?;
        if decision.pinned {
            let (hold_id, due_ms) = (h.id, h.expires_at_ms);
            // If no order comes before the hold would have expired, the worker makes it.
            self.push_later(|svc| async move {
                svc.jobs.complete_paid_hold(&svc.db, hold_id, due_ms).await
            });
        }
        count_webhook(event, &decision, &reply.body);
        Ok(Recorded::Reply(reply))
    }
}

/// How recording an event in one transaction ended.
enum Recorded {
    /// Recorded (or replayed): the answer.
    Reply(WebhookReply),
    /// Nothing done: the event cancels an order past its deadline, which gives stock back
    /// and needs the product's lock.
    NeedsProduct,
}

/// What an arriving event comes to, decided under the locks before anything is stored.
pub(crate) struct Decision {
    /// `None`: it waits for the hold's order.
    pub verdict: Option<Verdict>,
    /// The order it was settled against and what a refund of it is worth.
    pub ledger: Ledger,
    /// The answer's `status`: the event's, or for `ignored` the order's.
    pub shown_status: String,
    /// Units went back to the product.
    pub stock_released: bool,
    /// The event pinned its hold: it no longer expires, and the product's public view
    /// changed without stock moving.
    pub pinned: bool,
}

impl Decision {
    /// The first answer to `event`.
    pub(crate) fn reply(&self, event: &PaymentEvent) -> WebhookReply {
        let outcome = match self.verdict {
            Some(_) => WebhookOutcome::Settled,
            None => WebhookOutcome::AwaitingOrder,
        };
        let body = WebhookBody {
            idempotency_key: event.idempotency_key.clone(),
            hold_id: event.hold_id,
            order_id: self.ledger.order_id,
            status: self.shown_status.clone(),
            state: self
                .verdict
                .map_or_else(|| "awaiting_order".to_owned(), |v| v.outcome.to_value()),
        };
        WebhookReply {
            outcome,
            body,
            replayed: false,
        }
    }
}

/// Settles `event` against its hold's order, along with the events recorded before the
/// order existed (they are older, so they come first). `lapsed`: the order's payment
/// deadline has passed.
async fn decide_with_order(
    conn: &impl ConnectionTrait,
    event: &PaymentEvent,
    o: &order::Model,
    lapsed: bool,
    now: i64,
) -> Result<Decision> {
    let mut candidates = unapplied_payments(conn, o.hold_id).await?;
    candidates.push(Candidate {
        key: event.idempotency_key.clone(),
        status: event.status,
    });
    let settled = settle(conn, o, &candidates, lapsed, now).await?;
    let (new, earlier) = settled.verdicts.split_last().expect("the new event");
    let ledger = Ledger {
        order_id: Some(o.id),
        value_cents: o.total_cents,
    };
    record_verdicts(conn, &candidates, earlier, ledger, now).await?;
    let shown_status = match new.outcome {
        PaymentOutcome::Ignored => settled.order_status.to_value(),
        _ => event.status.to_value(),
    };
    Ok(Decision {
        verdict: Some(*new),
        ledger,
        shown_status,
        stock_released: settled.stock_released,
        pinned: false,
    })
}

/// Decides `event` for hold `h`, which has no order: settled at once when the order can
/// never come or the hold is paid already, else recorded to wait for the order.
async fn decide_without_order(
    conn: &impl ConnectionTrait,
    event: &PaymentEvent,
    h: &hold::Model,
    now: i64,
) -> Result<Decision> {
    assert_ne!(
        h.status,
        HoldStatus::Ordered,
        "hold {} ordered without order",
        h.id
    );
    let mut decision = Decision {
        verdict: None,
        ledger: Ledger {
            order_id: None,
            value_cents: 0,
        },
        shown_status: event.status.to_value(),
        stock_released: false,
        pinned: false,
    };
    let no_order_ever =
        matches!(h.status, HoldStatus::Expired | HoldStatus::Released) || is_overdue(h, now);
    // A second successful charge for one hold is a double charge.
    let double_charge = event.status == PaymentStatus::Paid && h.paid_at_ms.is_some();
    if no_order_ever || double_charge {
        decision.stock_released = no_order_ever && end_orderless_hold(conn, h).await?;
        decision.verdict = Some(Verdict::unapplied(event.status, reason_without_order(h)));
        decision.ledger = Ledger::of_hold(conn, h).await?;
    } else if event.status == PaymentStatus::Paid {
        pin_paid_hold(conn, h.id, now).await?;
        // A pinned hold never becomes free, but a read after its expiry and before this
        // commit counted it so.
        decision.pinned = true;
    }
    Ok(decision)
}

/// Stores `event` with its first answer, so that every retry gets that answer.
async fn store_payment(
    conn: &impl ConnectionTrait,
    event: &PaymentEvent,
    hash: String,
    decision: &Decision,
    reply: &WebhookReply,
    now: i64,
) -> Result<()> {
    new_payment(event, hash, decision, reply, now)
        .into_active_model()
        .reset_all()
        .insert(conn)
        .await?;
    Ok(())
}

/// The row that records `event` with its first answer, `reply`, given what it came to.
pub(crate) fn new_payment(
    event: &PaymentEvent,
    hash: String,
    decision: &Decision,
    reply: &WebhookReply,
    now: i64,
) -> payment::Model {
    payment::Model {
        idempotency_key: event.idempotency_key.clone(),
        hold_id: event.hold_id,
        status: event.status,
        request_hash: hash,
        response_status: reply.outcome.to_stored(),
        response_body: serde_json::to_string(&reply.body).expect("serialisable"),
        outcome: decision.verdict.map(|v| v.outcome),
        order_id: decision.ledger.order_id,
        applied_at_ms: decision.verdict.map(|_| now),
        created_at_ms: now,
        refund_reason: decision.verdict.and_then(|v| v.reason),
        refund_cents: decision
            .verdict
            .and_then(|v| v.reason)
            .map(|_| decision.ledger.value_cents),
        resolved_at_ms: None,
    }
}

/// Counts the webhook by its state, and flags a payment that must be refunded.
pub(crate) fn count_webhook(event: &PaymentEvent, decision: &Decision, body: &WebhookBody) {
    let m = metrics();
    m.webhooks.with_label_values(&[body.state.as_str()]).inc();
    if let Some(reason) = decision.verdict.and_then(|v| v.reason) {
        m.refund_required.inc();
        tracing::warn!(
            idempotency_key = %event.idempotency_key,
            hold_id = event.hold_id,
            order_id = decision.ledger.order_id,
            reason = %reason.to_value(),
            "payment cannot be honoured: refund required"
        );
    }
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
    stored_reply(&p, hash).map(Some)
}

/// The answer to a retry of the stored event `p` with request hash `hash`: its first
/// answer, or 409 when the key came with a different event.
pub(crate) fn stored_reply(p: &payment::Model, hash: &str) -> Result<WebhookReply> {
    if p.request_hash != hash {
        return Err(Error::IdempotencyKeyReused);
    }
    Ok(WebhookReply {
        outcome: WebhookOutcome::from_stored(p.response_status),
        body: serde_json::from_str(&p.response_body).expect("stored answer is valid JSON"),
        replayed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_outcome_is_the_http_status_of_the_first_answer() {
        assert_eq!(WebhookOutcome::Settled.to_stored(), 200);
        assert_eq!(WebhookOutcome::AwaitingOrder.to_stored(), 202);
        for outcome in [WebhookOutcome::Settled, WebhookOutcome::AwaitingOrder] {
            assert_eq!(WebhookOutcome::from_stored(outcome.to_stored()), outcome);
        }
    }
}
