//! Group reservation: concurrent holds on one product are reserved together, in one
//! transaction — one conditional UPDATE by their sum, one multi-row INSERT — and each caller
//! is handed its own hold (the queue and its leader are [`crate::groups`]).
//!
//! A hot product's row lock is held through every commit's fsync, so transactions on it
//! never overlap; the rate of holds is the rate of commits times the holds per commit.
//!
//! A group may carry many customers, some of them several times: with a limit per
//! customer, the locked step counts all of their current units in one query and decides
//! the requests in arrival order, in the group's one transaction.
//!
//! Only requests without an `Idempotency-Key` join groups: a keyed request must be checked
//! against the keys already stored under the product lock, and one key refused by the
//! unique index would abort the whole group's INSERT. Keyed requests take the single-hold
//! transaction in [`super::holds`].

use entity::hold::{self, HoldStatus};
use sea_orm::{ActiveEnum, DbBackend, FromQueryResult, Statement};

use super::{
    Service,
    groups::{Grouped, Groups, json_param, share_error},
    holds::{Ask, HoldView, Refusal, Reserved},
    now_ms,
    sales::CustomerId,
};
use crate::{Error, Result};

/// An unkeyed hold request as a group carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Units asked for.
    qty: i64,
    /// Who asks.
    customer: Option<CustomerId>,
}

/// Unkeyed hold requests, grouped per product.
pub(crate) struct HoldGroup;

impl Grouped for HoldGroup {
    type Request = Request;
    type Answer = HoldView;
    const KIND: &'static str = "hold";

    fn groups(svc: &Service) -> &Groups<Self> {
        &svc.hold_groups
    }

    async fn run(svc: &Service, product_id: i64, group: &[Request]) -> Result<Decisions> {
        let decisions = svc.reserve_group(product_id, group).await?;
        let created: Vec<(i64, i64)> = decisions
            .iter()
            .flatten()
            .map(|view| (view.id, view.expires_at_ms))
            .collect();
        if let Some(&(_, expires_at_ms)) = created.first() {
            let ids = created.iter().map(|(id, _)| *id).collect();
            svc.jobs.expire_holds(&svc.db, ids, expires_at_ms);
        }
        Ok(decisions)
    }

    fn failed(e: Error, n: usize) -> Decisions {
        share_error(e, n)
    }
}

impl Service {
    /// Reserves `qty` units of `product_id` as part of the product's next group (see
    /// [`Service::in_group`] for how long it may wait, and why).
    pub(super) async fn reserve_in_group(
        &self,
        product_id: i64,
        qty: i64,
        customer: Option<CustomerId>,
    ) -> Result<HoldView> {
        self.in_group::<HoldGroup>(product_id, Request { qty, customer })
            .await
    }
}

/// What one group transaction decided for each of its requests, in order.
type Decisions = Vec<Result<HoldView>>;

impl Service {
    /// The group transaction: the locked step ([`take_units`](Self::take_units)) for
    /// every request of the group, then one INSERT of the granted holds.
    async fn reserve_group(&self, product_id: i64, group: &[Request]) -> Result<Decisions> {
        let asks: Vec<Ask<'_>> = group
            .iter()
            .map(|r| Ask {
                qty: r.qty,
                customer: r.customer.as_ref().map(CustomerId::as_str),
            })
            .collect();
        let (txn, refusals, limit) = match self.take_units(product_id, &asks, None).await? {
            Reserved::Taken {
                txn,
                refusals,
                limit,
            } => (txn, refusals, limit),
            Reserved::Refused(why) => {
                let refusals = why.into_iter().map(Some).collect::<Vec<_>>();
                return Ok(hand_out(product_id, &asks, &refusals, Vec::new()));
            }
            Reserved::NoProduct => {
                let not_found = |_| Err(Error::ProductNotFound(product_id));
                return Ok(asks.iter().map(not_found).collect());
            }
            Reserved::Replay(_) => unreachable!("a group's requests have no key"),
        };
        // Read the clock only now that the lock is held: waiting must not shorten the TTL.
        let now = now_ms();
        let granted: Vec<NewRow<'_>> = asks
            .iter()
            .zip(&refusals)
            .filter(|(_, refusal)| refusal.is_none())
            .map(|(ask, _)| (ask.qty, ask.customer, ask.customer.and(limit)))
            .collect();
        let insert = insert_holds(
            self.db.backend(),
            product_id,
            &granted,
            now + self.hold_ttl_ms(),
            now,
        );
        let inserted = hold::Model::find_by_statement(insert).all(&*txn).await?;
        assert_eq!(
            inserted.len(),
            granted.len(),
            "one hold per granted request"
        );
        self.commit_changing(txn, Some(product_id)).await?;
        tracing::debug!(
            product_id,
            holds = granted.len(),
            refused = asks.len() - granted.len(),
            "hold group reserved"
        );
        Ok(hand_out(product_id, &asks, &refusals, inserted))
    }
}

/// Each request's answer, in order: its refusal, or its hold among `inserted`.
fn hand_out(
    product_id: i64,
    asks: &[Ask<'_>],
    refusals: &[Option<Refusal>],
    mut inserted: Vec<hold::Model>,
) -> Decisions {
    // The new holds differ only in quantity and customer, so any hold of the right ones is
    // the caller's own; the order RETURNING lists them in does not matter.
    let decisions = asks
        .iter()
        .zip(refusals)
        .map(|(ask, refusal)| match refusal {
            Some(why) => Err(why.into_error(product_id, ask.qty)),
            None => {
                let at = inserted
                    .iter()
                    .position(|h| h.qty == ask.qty && h.customer_id.as_deref() == ask.customer)
                    .expect("one inserted hold per granted request");
                Ok(HoldView::as_created(&inserted.swap_remove(at)))
            }
        })
        .collect();
    assert!(inserted.is_empty(), "a hold was inserted for nobody");
    decisions
}

/// A hold to insert: its quantity, its customer, and the limit it was granted under.
type NewRow<'a> = (i64, Option<&'a str>, Option<i64>);

/// One INSERT of active holds of `product_id`, one per row of `rows` (see [`json_param`]),
/// returning them.
fn insert_holds(
    backend: DbBackend,
    product_id: i64,
    rows: &[NewRow<'_>],
    expires_at_ms: i64,
    now_ms: i64,
) -> Statement {
    let active = HoldStatus::Active.to_value();
    let sql = match backend {
        DbBackend::Postgres => {
            "INSERT INTO holds (product_id, qty, status, expires_at_ms, created_at_ms, \
               customer_id, customer_limit) \
             SELECT $1, (r->>0)::bigint, $2, $3, $4, r->>1, (r->>2)::bigint \
             FROM json_array_elements($5::json) AS r \
             RETURNING *"
        }
        _ => {
            "INSERT INTO holds (product_id, qty, status, expires_at_ms, created_at_ms, \
               customer_id, customer_limit) \
             SELECT ?, json_extract(value, '$[0]'), ?, ?, ?, json_extract(value, '$[1]'), \
               json_extract(value, '$[2]') \
             FROM json_each(?) RETURNING *"
        }
    };
    Statement::from_sql_and_values(
        backend,
        sql,
        [
            product_id.into(),
            active.into(),
            expires_at_ms.into(),
            now_ms.into(),
            json_param(&rows),
        ],
    )
}
