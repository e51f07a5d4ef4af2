//! Group payment: concurrent `paid` events of this process share one transaction — one
//! locking read of their holds and one of their orders, one read of the payments their keys
//! and holds already have, one INSERT of the new payments, one UPDATE of the orders they pay
//! — and each caller is handed its own answer.
//!
//! The group takes only the common case, a `paid` event for an ordered hold whose order is
//! not past its payment deadline, and decides each event under the locks, in arrival order,
//! before it writes: the first `paid` of a pending order applies, a later one with another
//! key is a double charge, one for a cancelled order buys nothing; a key already stored, or
//! seen earlier in the group, replays its first answer (or is 409 with another body).
//! Everything else runs alone, one per transaction, in [`super::payments`]: an event whose
//! hold is not ordered, is not there, or has events recorded before its order; an order
//! past its deadline (cancelling it gives stock back, which needs the product's lock); and
//! every later event of such a hold or key, so that they keep their order. The locking
//! reads skip what the group does not take, and rows another transaction has locked, whose
//! events run alone too. No product row is locked: paying an order never changes
//! `available`.

use std::collections::{BTreeSet, HashMap, HashSet};

use entity::{
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    payment::{self, PaymentStatus, RefundReason},
};
use sea_orm::{ActiveEnum, ConnectionTrait, DbBackend, FromQueryResult, Statement};

use super::{
    Service,
    groups::{
        Grouped, Groups, alone_unless_unavailable, among, among_text, filter, json_param,
        placeholders,
    },
    now_ms,
    payments::{Decision, PaymentEvent, WebhookReply, count_webhook, new_payment, stored_reply},
    settlement::{Ledger, Verdict, is_lapsed},
};
use crate::{Error, Result, metrics::metrics};

/// A `paid` event as a group carries it.
pub(crate) struct Request {
    event: PaymentEvent,
    /// The event's request hash.
    hash: String,
}

/// An event's answer, or `None`: the event runs alone.
type Answer = Option<WebhookReply>;

/// `paid` events, grouped per process (key 0): their products need no lock.
pub(crate) struct PaymentGroup;

impl Grouped for PaymentGroup {
    type Request = Request;
    type Answer = Answer;
    const KIND: &'static str = "payment";

    fn groups(svc: &Service) -> &Groups<Self> {
        &svc.payment_groups
    }

    async fn run(svc: &Service, _: i64, group: &[Request]) -> Result<Vec<Result<Answer>>> {
        svc.payment_group(group).await
    }

    fn failed(e: Error, n: usize) -> Vec<Result<Answer>> {
        alone_unless_unavailable(e, n)
    }
}

impl Service {
    /// Records and applies the `paid` event `event`, whose request hash is `hash`, as part
    /// of the next payment group; `None`: the event is to run alone.
    pub(super) async fn pay_in_group(&self, event: &PaymentEvent, hash: &str) -> Result<Answer> {
        debug_assert_eq!(event.status, PaymentStatus::Paid);
        let request = Request {
            event: event.clone(),
            hash: hash.to_owned(),
        };
        self.in_group::<PaymentGroup>(0, request).await
    }

    /// The group transaction.
    async fn payment_group(&self, group: &[Request]) -> Result<Vec<Result<Answer>>> {
        let backend = self.db.backend();
        let txn = self.db.begin_write().await?;
        let hold_ids: BTreeSet<i64> = group.iter().map(|r| r.event.hold_id).collect();
        let holds = hold::Model::find_by_statement(lock_ordered_holds(backend, &hold_ids))
            .all(&*txn)
            .await?;
        let locked: BTreeSet<i64> = holds.iter().map(|h| h.id).collect();
        let cutoff = self.payment_cutoff_ms(now_ms());
        let orders = match locked.is_empty() {
            true => Vec::new(),
            false => {
                order::Model::find_by_statement(lock_open_orders(backend, &locked, cutoff))
                    .all(&*txn)
                    .await?
            }
        };
        let keys: BTreeSet<&str> = group
            .iter()
            .map(|r| r.event.idempotency_key.as_str())
            .collect();
        let stored = payment::Model::find_by_statement(stored_payments(backend, &keys, &locked))
            .all(&*txn)
            .await?;
        // The clock is read under the locks: an order that lapsed while we waited is lapsed.
        let now = now_ms();
        let mut plan = Plan::new(holds, orders, stored, now, self.order_payment_ttl_ms());
        let verdicts: Vec<Planned> = group
            .iter()
            .enumerate()
            .map(|(at, r)| plan.decide(at, r))
            .collect();
        if plan.new.is_empty() {
            txn.rollback().await?;
            return Ok(plan.answers(verdicts));
        }
        let mut rows: Vec<payment::Model> = plan
            .new
            .iter()
            .map(|(at, decision, reply)| {
                let r = &group[*at];
                new_payment(&r.event, r.hash.clone(), decision, reply, now)
            })
            .collect();
        // In key order, as every group inserts: two groups that share keys cannot each wait
        // for the other's.
        rows.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
        if let Err(e) = txn.execute_raw(insert_payments(backend, &rows)).await {
            // A key that another transaction stores at this moment for another hold: the
            // unique index, not the locks, orders the two, and it made this statement wait or
            // fail. Only that member's own rules can settle it, so every member runs alone.
            tracing::warn!(error = %e, events = group.len(), "payment group ran alone");
            txn.rollback().await?;
            return Ok(group.iter().map(|_| Ok(None)).collect());
        }
        if !plan.paying.is_empty() {
            let paid = txn
                .execute_raw(pay_orders(backend, &plan.paying, now))
                .await?;
            assert_eq!(
                paid.rows_affected(),
                plan.paying.len() as u64,
                "a locked pending order changed"
            );
        }
        // Paying an order changes no product's public view.
        self.commit_changing(txn, None).await?;
        metrics()
            .orders
            .with_label_values(&["paid"])
            .inc_by(plan.paying.len() as u64);
        for (row, decision, reply) in &plan.new {
            let event = &group[*row].event;
            count_webhook(event, decision, &reply.body);
        }
        Ok(plan.answers(verdicts))
    }
}

/// What the group decided for one event.
enum Planned {
    /// Refused, nothing written for it.
    Refused(Error),
    /// Answered with the stored or earlier answer of its key.
    Replay(WebhookReply),
    /// Recorded by this group: its index in [`Plan::new`].
    New(usize),
    /// Not for the group: runs alone.
    Alone,
}

/// The group's decisions so far, over what its transaction read under the locks.
struct Plan {
    holds: HashMap<i64, hold::Model>,
    /// The orders locked, by hold, with their status as the group leaves them so far.
    orders: HashMap<i64, order::Model>,
    /// Payments already stored, by key.
    stored: HashMap<String, payment::Model>,
    /// Holds with payments recorded before their order and not yet applied.
    waiting: HashSet<i64>,
    /// Holds and keys whose events run alone, and so must every later one of them.
    alone_holds: HashSet<i64>,
    alone_keys: HashSet<String>,
    /// The events this group records: the request's index, what it came to, its answer.
    new: Vec<(usize, Decision, WebhookReply)>,
    /// The new payments by key: their index in `new` and request hash.
    new_keys: HashMap<String, (usize, String)>,
    /// The orders this group pays.
    paying: BTreeSet<i64>,
    now: i64,
    payment_ttl_ms: i64,
}

impl Plan {
    fn new(
        holds: Vec<hold::Model>,
        orders: Vec<order::Model>,
        stored: Vec<payment::Model>,
        now: i64,
        payment_ttl_ms: i64,
    ) -> Self {
        let waiting = stored
            .iter()
            .filter(|p| p.outcome.is_none())
            .map(|p| p.hold_id)
            .collect();
        Self {
            holds: holds.into_iter().map(|h| (h.id, h)).collect(),
            orders: orders.into_iter().map(|o| (o.hold_id, o)).collect(),
            stored: stored
                .into_iter()
                .map(|p| (p.idempotency_key.clone(), p))
                .collect(),
            waiting,
            alone_holds: HashSet::new(),
            alone_keys: HashSet::new(),
            new: Vec::new(),
            new_keys: HashMap::new(),
            paying: BTreeSet::new(),
            now,
            payment_ttl_ms,
        }
    }

    /// Decides the group's next event, `r`, request `at` of the group.
    fn decide(&mut self, at: usize, r: &Request) -> Planned {
        let (event, key) = (&r.event, r.event.idempotency_key.as_str());
        if self.alone_keys.contains(key) {
            return Planned::Alone;
        }
        if let Some(p) = self.stored.get(key) {
            return replay(stored_reply(p, &r.hash));
        }
        if let Some((at, hash)) = self.new_keys.get(key) {
            return replay(match *hash == r.hash {
                true => Ok(self.new[*at].2.clone()),
                false => Err(Error::IdempotencyKeyReused),
            });
        }
        match self.settle(event) {
            Some(decision) => {
                let reply = decision.reply(event);
                let row = self.new.len();
                self.new_keys.insert(key.to_owned(), (row, r.hash.clone()));
                self.new.push((at, decision, reply));
                Planned::New(row)
            }
            None => {
                self.alone_holds.insert(event.hold_id);
                self.alone_keys.insert(key.to_owned());
                Planned::Alone
            }
        }
    }

    /// What the new `paid` event `event` does to its hold's order; `None`: it runs alone.
    fn settle(&mut self, event: &PaymentEvent) -> Option<Decision> {
        let hold_id = event.hold_id;
        if self.alone_holds.contains(&hold_id) || self.waiting.contains(&hold_id) {
            return None;
        }
        let h = self.holds.get(&hold_id)?;
        let o = self.orders.get_mut(&hold_id)?;
        if is_lapsed(o, h, self.now, self.payment_ttl_ms) {
            return None;
        }
        let verdict = match o.status {
            OrderStatus::Pending => {
                o.status = OrderStatus::Paid;
                self.paying.insert(o.id);
                Verdict::APPLIED
            }
            OrderStatus::Paid => {
                Verdict::unapplied(PaymentStatus::Paid, RefundReason::DoubleCharge)
            }
            OrderStatus::Cancelled => {
                Verdict::unapplied(PaymentStatus::Paid, RefundReason::OrderCancelled)
            }
        };
        Some(Decision {
            verdict: Some(verdict),
            ledger: Ledger {
                order_id: Some(o.id),
                value_cents: o.total_cents,
            },
            shown_status: PaymentStatus::Paid.to_value(),
            stock_released: false,
            pinned: false,
        })
    }

    /// Each event's answer, in order.
    fn answers(&self, planned: Vec<Planned>) -> Vec<Result<Answer>> {
        planned
            .into_iter()
            .map(|p| match p {
                Planned::Refused(e) => Err(e),
                Planned::Replay(reply) => {
                    metrics().replays.with_label_values(&["webhook"]).inc();
                    Ok(Some(reply))
                }
                Planned::New(at) => Ok(Some(self.new[at].2.clone())),
                Planned::Alone => Ok(None),
            })
            .collect()
    }
}

/// A replay's verdict: the first answer, marked replayed, or its refusal.
fn replay(reply: Result<WebhookReply>) -> Planned {
    match reply {
        Ok(mut reply) => {
            reply.replayed = true;
            Planned::Replay(reply)
        }
        Err(e) => Planned::Refused(e),
    }
}

/// Locks those of holds `ids` that are ordered and that no other transaction has locked, in
/// id order, and returns them.
fn lock_ordered_holds(backend: DbBackend, ids: &BTreeSet<i64>) -> Statement {
    let (p, lock) = placeholders(backend);
    let sql = format!(
        "SELECT * FROM holds WHERE {} AND {} = {} ORDER BY id{lock}",
        among(backend, "id", p[0]),
        filter(backend, "status"),
        p[1],
    );
    let values = [json_param(ids), HoldStatus::Ordered.to_value().into()];
    Statement::from_sql_and_values(backend, sql, values)
}

/// Locks the orders of holds `hold_ids` that no other transaction has locked, in hold
/// order, but for pending orders made at or before `cutoff_ms` (past their payment deadline,
/// unless their hold was paid first), and returns them.
fn lock_open_orders(backend: DbBackend, hold_ids: &BTreeSet<i64>, cutoff_ms: i64) -> Statement {
    let (p, lock) = placeholders(backend);
    let sql = format!(
        "SELECT * FROM orders WHERE {} AND NOT ({} = {} AND {} <= {}) \
         ORDER BY hold_id{lock}",
        among(backend, "hold_id", p[0]),
        filter(backend, "status"),
        p[1],
        filter(backend, "created_at_ms"),
        p[2],
    );
    let values = [
        json_param(hold_ids),
        OrderStatus::Pending.to_value().into(),
        cutoff_ms.into(),
    ];
    Statement::from_sql_and_values(backend, sql, values)
}

/// The payments stored under `keys`, and those of `hold_ids` still waiting for an order.
fn stored_payments(
    backend: DbBackend,
    keys: &BTreeSet<&str>,
    hold_ids: &BTreeSet<i64>,
) -> Statement {
    let (p, _) = placeholders(backend);
    let sql = format!(
        "SELECT * FROM payments WHERE {} OR ({} AND outcome IS NULL)",
        among_text(backend, "idempotency_key", p[0]),
        among(backend, "hold_id", p[1]),
    );
    Statement::from_sql_and_values(backend, sql, [json_param(keys), json_param(hold_ids)])
}

/// One INSERT of the payments `rows`, none of them resolved.
fn insert_payments(backend: DbBackend, rows: &[payment::Model]) -> Statement {
    let rows: Vec<_> = rows
        .iter()
        .map(|p| {
            (
                &p.idempotency_key,
                p.hold_id,
                p.status.to_value(),
                &p.request_hash,
                p.response_status,
                &p.response_body,
                p.outcome.map(|o| o.to_value()),
                p.order_id,
                p.applied_at_ms,
                p.created_at_ms,
                p.refund_reason.map(|r| r.to_value()),
                p.refund_cents,
            )
        })
        .collect();
    let columns = "idempotency_key, hold_id, status, request_hash, response_status, \
                   response_body, outcome, order_id, applied_at_ms, created_at_ms, \
                   refund_reason, refund_cents";
    let sql = match backend {
        DbBackend::Postgres => format!(
            "INSERT INTO payments ({columns}) \
             SELECT r->>0, (r->>1)::bigint, r->>2, r->>3, (r->>4)::integer, r->>5, r->>6, \
               (r->>7)::bigint, (r->>8)::bigint, (r->>9)::bigint, r->>10, (r->>11)::bigint \
             FROM json_array_elements($1::json) AS r"
        ),
        _ => {
            let fields: Vec<String> = (0..12)
                .map(|i| format!("json_extract(value, '$[{i}]')"))
                .collect();
            format!(
                "INSERT INTO payments ({columns}) SELECT {} FROM json_each(?1)",
                fields.join(", ")
            )
        }
    };
    Statement::from_sql_and_values(backend, sql, [json_param(&rows)])
}

/// Marks the locked pending orders `order_ids` paid.
fn pay_orders(backend: DbBackend, order_ids: &BTreeSet<i64>, now: i64) -> Statement {
    let (p, _) = placeholders(backend);
    let sql = format!(
        "UPDATE orders SET status = {}, updated_at_ms = {} WHERE {} AND {} = {}",
        p[0],
        p[1],
        among(backend, "id", p[2]),
        filter(backend, "status"),
        p[3],
    );
    let values = [
        OrderStatus::Paid.to_value().into(),
        now.into(),
        json_param(order_ids),
        OrderStatus::Pending.to_value().into(),
    ];
    Statement::from_sql_and_values(backend, sql, values)
}

#[cfg(test)]
mod tests {
    use entity::payment::PaymentOutcome;

    use super::*;
    use crate::payments::Charge;

    const TTL_MS: i64 = 1_000;

    fn ordered(id: i64) -> hold::Model {
        hold::Model {
            id,
            product_id: 1,
            qty: 1,
            status: HoldStatus::Ordered,
            expires_at_ms: 100,
            paid_at_ms: None,
            idempotency_key: None,
            request_hash: None,
            created_at_ms: 0,
            customer_id: None,
            customer_limit: None,
        }
    }

    fn order_of(hold_id: i64, status: OrderStatus, created_at_ms: i64) -> order::Model {
        order::Model {
            id: 10 + hold_id,
            hold_id,
            product_id: 1,
            qty: 1,
            total_cents: 500,
            status,
            created_at_ms,
            updated_at_ms: created_at_ms,
            customer_id: None,
        }
    }

    fn paid(key: &str, hold_id: i64) -> Request {
        let event = PaymentEvent::parse(Some(key.to_owned()), None, hold_id, Charge::Paid)
            .expect("a valid event");
        let hash = event.hash();
        Request { event, hash }
    }

    /// Each event's answer as `state` (`replay:` when replayed), `alone`, or the error's code.
    fn run(plan: &mut Plan, group: &[Request]) -> Vec<String> {
        let planned: Vec<Planned> = group
            .iter()
            .enumerate()
            .map(|(at, r)| plan.decide(at, r))
            .collect();
        plan.answers(planned)
            .into_iter()
            .map(|a| match a {
                Ok(Some(reply)) if reply.replayed => format!("replay:{}", reply.body.state),
                Ok(Some(reply)) => reply.body.state,
                Ok(None) => "alone".to_owned(),
                Err(e) => e.code().to_owned(),
            })
            .collect()
    }

    fn plan_of(
        holds: Vec<hold::Model>,
        orders: Vec<order::Model>,
        stored: Vec<payment::Model>,
    ) -> Plan {
        Plan::new(holds, orders, stored, 50, TTL_MS)
    }

    #[test]
    fn the_first_key_pays_an_order_and_another_key_is_a_double_charge() {
        let mut plan = plan_of(
            vec![ordered(1)],
            vec![order_of(1, OrderStatus::Pending, 0)],
            vec![],
        );
        let answers = run(&mut plan, &[paid("a", 1), paid("b", 1), paid("a", 1)]);
        assert_eq!(answers, ["applied", "refund_required", "replay:applied"]);
        assert_eq!(plan.paying, BTreeSet::from([11]));
        let (_, decision, _) = &plan.new[1];
        assert_eq!(
            decision.verdict.map(|v| (v.outcome, v.reason)),
            Some((
                PaymentOutcome::RefundRequired,
                Some(RefundReason::DoubleCharge)
            ))
        );
        assert_eq!(plan.new.len(), 2, "a replay records nothing");
    }

    #[test]
    fn a_key_already_used_replays_its_answer_or_is_refused_with_another_event() {
        let mut first = plan_of(
            vec![ordered(1)],
            vec![order_of(1, OrderStatus::Pending, 0)],
            vec![],
        );
        run(&mut first, &[paid("a", 1)]);
        let (at, decision, reply) = &first.new[0];
        let stored = new_payment(&paid("a", 1).event, paid("a", 1).hash, decision, reply, 50);
        assert_eq!(*at, 0);
        let mut plan = plan_of(
            vec![ordered(1), ordered(2)],
            vec![order_of(1, OrderStatus::Paid, 0)],
            vec![stored],
        );
        let answers = run(
            &mut plan,
            &[paid("a", 1), paid("a", 2), paid("c", 2), paid("c", 1)],
        );
        assert_eq!(
            answers,
            ["replay:applied", "idempotency_key_reused", "alone", "alone"],
            "hold 2 has no order locked; key c then runs alone wherever it points"
        );
        assert!(plan.new.is_empty() && plan.paying.is_empty());
    }

    #[test]
    fn events_of_a_hold_that_runs_alone_all_run_alone_after_it() {
        let lapsed = order_of(1, OrderStatus::Pending, 50 - TTL_MS);
        let mut plan = plan_of(vec![ordered(1)], vec![lapsed], vec![]);
        assert_eq!(
            run(&mut plan, &[paid("a", 1), paid("b", 1)]),
            ["alone", "alone"]
        );

        let mut waiting = new_payment(
            &paid("early", 3).event,
            paid("early", 3).hash,
            &Decision {
                verdict: None,
                ledger: Ledger {
                    order_id: None,
                    value_cents: 0,
                },
                shown_status: "paid".to_owned(),
                stock_released: false,
                pinned: true,
            },
            &WebhookReply {
                outcome: crate::payments::WebhookOutcome::AwaitingOrder,
                body: crate::payments::WebhookBody {
                    idempotency_key: "early".to_owned(),
                    hold_id: 3,
                    order_id: None,
                    status: "paid".to_owned(),
                    state: "awaiting_order".to_owned(),
                },
                replayed: false,
            },
            10,
        );
        waiting.outcome = None;
        let mut plan = plan_of(
            vec![ordered(3)],
            vec![order_of(3, OrderStatus::Pending, 0)],
            vec![waiting],
        );
        assert_eq!(
            run(&mut plan, &[paid("late", 3)]),
            ["alone"],
            "the earlier event decides first"
        );
    }

    #[test]
    fn a_payment_for_a_cancelled_order_buys_nothing() {
        let mut plan = plan_of(
            vec![ordered(1)],
            vec![order_of(1, OrderStatus::Cancelled, 0)],
            vec![],
        );
        assert_eq!(run(&mut plan, &[paid("a", 1)]), ["refund_required"]);
        let (_, decision, _) = &plan.new[0];
        assert_eq!(
            decision.verdict.and_then(|v| v.reason),
            Some(RefundReason::OrderCancelled)
        );
        assert!(plan.paying.is_empty());
    }
}
