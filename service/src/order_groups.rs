//! Group ordering: concurrent `POST /orders` of this process, whatever their products,
//! share one transaction — one locking read of their holds, one INSERT of the orders, one
//! UPDATE of the holds — and each caller is handed its own order.
//!
//! The group takes only the common case, a live hold becoming its order, and decides each
//! request under the hold locks before it writes. The locking read skips holds that cannot
//! be ordered (already ordered, released, expired, overdue, or not there) and holds another
//! transaction has locked: their requests run alone, one per transaction, in
//! [`super::orders`], which answers replays, 404s and 409s by the same rules as always.
//! Two requests of one group for one hold are decided in arrival order: the first makes
//! the order, the second replays it. No product row is locked: an order never changes
//! `available`.

use std::collections::{BTreeSet, HashMap};

use entity::{
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
};
use sea_orm::{ActiveEnum, ConnectionTrait, DbBackend, FromQueryResult, Statement};

use super::{
    Service,
    groups::{Grouped, Groups, alone_unless_unavailable, among, filter, json_param, placeholders},
    holds::is_overdue,
    now_ms,
    orders::OrderView,
    sales::{CustomerId, may_see},
};
use crate::{Error, Result, metrics::metrics};

/// An order request as a group carries it.
pub(crate) struct Request {
    /// The hold to order.
    hold_id: i64,
    /// Who asks.
    caller: Option<CustomerId>,
}

/// A request's answer: the order and whether it replays an earlier request, or `None`:
/// the request runs alone.
type Answer = Option<(OrderView, bool)>;

/// Order requests, grouped per process (key 0): their products need no lock.
pub(crate) struct OrderGroup;

impl Grouped for OrderGroup {
    type Request = Request;
    type Answer = Answer;
    const KIND: &'static str = "order";

    fn groups(svc: &Service) -> &Groups<Self> {
        &svc.order_groups
    }

    async fn run(svc: &Service, _: i64, group: &[Request]) -> Result<Vec<Result<Answer>>> {
        svc.order_group(group).await
    }

    fn failed(e: Error, n: usize) -> Vec<Result<Answer>> {
        alone_unless_unavailable(e, n)
    }
}

impl Service {
    /// Orders `hold_id` on behalf of `caller` as part of the next order group; `None`: the
    /// request is to run alone.
    pub(super) async fn order_in_group(
        &self,
        hold_id: i64,
        caller: Option<&CustomerId>,
    ) -> Result<Answer> {
        let caller = caller.cloned();
        self.in_group::<OrderGroup>(0, Request { hold_id, caller })
            .await
    }

    /// The group transaction.
    async fn order_group(&self, group: &[Request]) -> Result<Vec<Result<Answer>>> {
        let backend = self.db.backend();
        let txn = self.db.begin_write().await?;
        let ids: BTreeSet<i64> = group.iter().map(|r| r.hold_id).collect();
        let locked = hold::Model::find_by_statement(lock_live_holds(backend, &ids, now_ms()))
            .all(&*txn)
            .await?;
        // The clock is read under the locks, so time spent waiting counts against a hold.
        let now = now_ms();
        let holds: HashMap<i64, hold::Model> = locked.into_iter().map(|h| (h.id, h)).collect();
        let verdicts = decide(group, &holds, now);
        let ordering: BTreeSet<i64> = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Order(id) => Some(*id),
                _ => None,
            })
            .collect();
        if ordering.is_empty() {
            txn.rollback().await?;
            return Ok(verdicts
                .into_iter()
                .map(|v| v.answer(&HashMap::new()))
                .collect());
        }
        let created = order::Model::find_by_statement(insert_orders(backend, &ordering, now))
            .all(&*txn)
            .await?;
        assert_eq!(created.len(), ordering.len(), "one order per ordered hold");
        let marked = txn.execute_raw(mark_ordered(backend, &ordering)).await?;
        assert_eq!(
            marked.rows_affected(),
            ordering.len() as u64,
            "a locked live hold changed"
        );
        // Webhooks for these holds take their locks too: a payment recorded before the
        // orders is visible now, and one recorded after them finds its order.
        let early: Vec<i64> = hold_ids_with_waiting_payments(&*txn, backend, &ordering).await?;
        let products: BTreeSet<i64> = created.iter().map(|o| o.product_id).collect();
        // The holds' units were counted as free by reads made once they were due: a read
        // between that instant and this commit may have cached them so.
        self.commit_changing(txn, products).await?;
        metrics()
            .orders
            .with_label_values(&["created"])
            .inc_by(created.len() as u64);
        if !early.is_empty() {
            self.push_later(|svc| async move {
                for hold_id in early {
                    svc.jobs.check_pending_webhook(&svc.db, hold_id).await;
                }
            });
        }
        let by_hold: HashMap<i64, order::Model> =
            created.into_iter().map(|o| (o.hold_id, o)).collect();
        Ok(verdicts.into_iter().map(|v| v.answer(&by_hold)).collect())
    }
}

/// What the group decided for one request.
#[derive(Debug)]
enum Verdict {
    /// Refused, nothing written for it.
    Refused(Error),
    /// Its hold is ordered by this group.
    Order(i64),
    /// An earlier request of the group orders the same hold: a replay of that order.
    Replay(i64),
    /// Not for the group: runs alone.
    Alone,
}

impl Verdict {
    /// The request's answer, given the orders the group made, by hold.
    fn answer(self, created: &HashMap<i64, order::Model>) -> Result<Answer> {
        let of = |hold_id| OrderView::current(created[&hold_id].clone(), false);
        match self {
            Self::Refused(e) => Err(e),
            Self::Order(hold_id) => Ok(Some((of(hold_id), false))),
            Self::Replay(hold_id) => {
                metrics().replays.with_label_values(&["order"]).inc();
                Ok(Some((of(hold_id), true)))
            }
            Self::Alone => Ok(None),
        }
    }
}

/// Decides each request in arrival order, from the live holds locked (`holds`) at `now`.
fn decide(group: &[Request], holds: &HashMap<i64, hold::Model>, now: i64) -> Vec<Verdict> {
    let mut ordered = BTreeSet::new();
    group
        .iter()
        .map(|r| match holds.get(&r.hold_id) {
            None => Verdict::Alone,
            Some(h) if !may_see(h.customer_id.as_deref(), r.caller.as_ref()) => {
                Verdict::Refused(Error::HoldNotFound(h.id))
            }
            Some(h) if is_overdue(h, now) => Verdict::Refused(Error::HoldExpired(h.id)),
            Some(h) if ordered.insert(h.id) => Verdict::Order(h.id),
            Some(h) => Verdict::Replay(h.id),
        })
        .collect()
}

/// Locks those of holds `ids` that can be ordered at `now` (active, and not overdue) and
/// that no other transaction has locked, in id order, and returns them.
fn lock_live_holds(backend: DbBackend, ids: &BTreeSet<i64>, now: i64) -> Statement {
    let (p, lock) = placeholders(backend);
    let sql = format!(
        "SELECT * FROM holds WHERE {} AND {} = {} \
         AND ({} > {} OR paid_at_ms IS NOT NULL) ORDER BY id{lock}",
        among(backend, "id", p[0]),
        filter(backend, "status"),
        p[1],
        filter(backend, "expires_at_ms"),
        p[2],
    );
    let values = [
        json_param(ids),
        HoldStatus::Active.to_value().into(),
        now.into(),
    ];
    Statement::from_sql_and_values(backend, sql, values)
}

/// One INSERT of the pending orders of the locked live holds `hold_ids`, at their
/// products' prices now, returning them.
fn insert_orders(backend: DbBackend, hold_ids: &BTreeSet<i64>, now: i64) -> Statement {
    let (p, _) = placeholders(backend);
    let sql = format!(
        "INSERT INTO orders (hold_id, product_id, qty, total_cents, status, created_at_ms, \
           updated_at_ms, customer_id) \
         SELECT h.id, h.product_id, h.qty, p.price_cents * h.qty, {}, {}, {}, h.customer_id \
         FROM holds h JOIN products p ON p.id = h.product_id WHERE {} RETURNING *",
        p[0],
        p[1],
        p[2],
        among(backend, "h.id", p[3]),
    );
    let values = [
        OrderStatus::Pending.to_value().into(),
        now.into(),
        now.into(),
        json_param(hold_ids),
    ];
    Statement::from_sql_and_values(backend, sql, values)
}

/// Marks the locked live holds `hold_ids` ordered: their units pass to their orders, and
/// `available` does not change.
fn mark_ordered(backend: DbBackend, hold_ids: &BTreeSet<i64>) -> Statement {
    let (p, _) = placeholders(backend);
    let sql = format!(
        "UPDATE holds SET status = {} WHERE {} AND {} = {}",
        p[0],
        among(backend, "id", p[1]),
        filter(backend, "status"),
        p[2],
    );
    let values = [
        HoldStatus::Ordered.to_value().into(),
        json_param(hold_ids),
        HoldStatus::Active.to_value().into(),
    ];
    Statement::from_sql_and_values(backend, sql, values)
}

/// Those of `hold_ids` that have payments recorded and waiting for their order.
async fn hold_ids_with_waiting_payments(
    conn: &impl ConnectionTrait,
    backend: DbBackend,
    hold_ids: &BTreeSet<i64>,
) -> Result<Vec<i64>> {
    let (p, _) = placeholders(backend);
    let sql = format!(
        "SELECT DISTINCT hold_id FROM payments WHERE {} AND outcome IS NULL",
        among(backend, "hold_id", p[0]),
    );
    let stmt = Statement::from_sql_and_values(backend, sql, [json_param(hold_ids)]);
    let rows = conn.query_all_raw(stmt).await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get_by_index::<i64>(0))
        .collect::<std::result::Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(id: i64, customer: Option<&str>, expires_at_ms: i64) -> hold::Model {
        hold::Model {
            id,
            product_id: 1,
            qty: 1,
            status: HoldStatus::Active,
            expires_at_ms,
            paid_at_ms: None,
            idempotency_key: None,
            request_hash: None,
            created_at_ms: 0,
            customer_id: customer.map(str::to_owned),
            customer_limit: None,
        }
    }

    fn ask(hold_id: i64, caller: Option<&str>) -> Request {
        Request {
            hold_id,
            caller: caller.and_then(CustomerId::parse),
        }
    }

    #[test]
    fn a_group_orders_each_live_hold_once_and_replays_it_to_later_requests() {
        let holds = HashMap::from([(1, live(1, None, 100)), (2, live(2, Some("ann"), 100))]);
        let group = [
            ask(1, None),
            ask(2, Some("bob")),
            ask(2, Some("ann")),
            ask(1, None),
            ask(3, None),
        ];
        let verdicts: Vec<String> = decide(&group, &holds, 50)
            .iter()
            .map(|v| format!("{v:?}"))
            .collect();
        assert_eq!(
            verdicts,
            [
                "Order(1)",
                "Refused(HoldNotFound(2))",
                "Order(2)",
                "Replay(1)",
                "Alone",
            ]
        );
    }

    #[test]
    fn a_hold_that_expired_while_the_group_waited_for_its_lock_is_not_ordered() {
        let holds = HashMap::from([(1, live(1, None, 100))]);
        let verdicts = decide(&[ask(1, None)], &holds, 100);
        assert!(matches!(
            verdicts[..],
            [Verdict::Refused(Error::HoldExpired(1))]
        ));
    }
}
