//! Group reservation: concurrent holds on one product are reserved together, in one
//! transaction — one conditional UPDATE by their sum, one multi-row INSERT — and each caller
//! is handed its own hold.
//!
//! A hot product's row lock is held through every commit's fsync, so transactions on it
//! never overlap; the rate of holds is the rate of commits times the holds per commit. Each
//! product with waiting requests has one leader task in this process. The leader takes
//! everything that queued while the previous group committed and reserves it as the next
//! group, so the groups grow with the crowd by themselves and nobody waits for a timer.
//! Several API processes stay correct because every decision is still made in the
//! database, under the product's row lock.
//!
//! A group may carry many customers, some of them several times: with a limit per
//! customer, the locked step counts all of their current units in one query and decides
//! the requests in arrival order, in the group's one transaction.
//!
//! Only requests without an `Idempotency-Key` join groups: a keyed request must be checked
//! against the keys already stored under the product lock, and one key refused by the
//! unique index would abort the whole group's INSERT. Keyed requests take the single-hold
//! transaction in [`super::holds`].

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use entity::hold::{self, HoldStatus};
use sea_orm::{ActiveEnum, DbBackend, FromQueryResult, Statement};
use tokio::sync::oneshot;

use super::{
    Service,
    holds::{Ask, HoldView, Refusal, Reserved},
    now_ms,
    sales::CustomerId,
};
use crate::{Error, Result, metrics::metrics};

/// Most holds reserved in one transaction; the rest wait for the next group. Bounds how
/// long one transaction holds the product row.
pub const MAX_GROUP: usize = 512;

/// Most requests one product may have waiting for a place in a group. While the product
/// is stuck (its row held by another transaction), requests beyond this are refused at
/// once, so the queue's memory stays bounded whatever the crowd.
pub const MAX_QUEUED: usize = 8 * MAX_GROUP;

/// A group's transaction may take this many `DB_WAIT_SECS` in all (each of its waits is
/// bounded by one) before it is abandoned.
const GROUP_DEADLINE_WAITS: u32 = 4;

/// The longest an unkeyed hold request may take, given `DB_WAIT_SECS`: its wait for a
/// place in a group, then its group's deadline. A connection cut before that (an HTTP
/// request timeout) would leave its client unaware of a hold that may still commit.
pub fn longest_hold_wait_secs(db_wait_secs: u64) -> u64 {
    (1 + u64::from(GROUP_DEADLINE_WAITS)) * db_wait_secs
}

/// A request waiting to join its product's next group.
struct Waiting {
    /// Identifies the request in its queue, so that it can leave it.
    id: u64,
    /// What it asks for.
    request: Request,
    reply: oneshot::Sender<Result<HoldView>>,
}

/// An unkeyed hold request as a group carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Request {
    /// Units asked for.
    qty: i64,
    /// Who asks.
    customer: Option<CustomerId>,
}

/// The product's queue is full.
#[derive(Debug, PartialEq, Eq)]
struct QueueFull;

/// The requests waiting per product. A product has an entry exactly while its leader task
/// runs.
#[derive(Default)]
pub struct HoldGroups {
    waiting: Mutex<HashMap<i64, Vec<Waiting>>>,
    next_id: AtomicU64,
}

impl HoldGroups {
    /// The map. Its critical sections cannot leave it half changed, so a panic elsewhere
    /// while it was held does not make it unusable.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<Waiting>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a request; returns its id, and `true` when no leader runs for
    /// this product (the caller must start one).
    fn enqueue(
        &self,
        product_id: i64,
        request: Request,
        reply: oneshot::Sender<Result<HoldView>>,
    ) -> Result<(u64, bool), QueueFull> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting { id, request, reply };
        let mut map = self.lock();
        match map.entry(product_id) {
            Entry::Occupied(mut e) => {
                let queue = e.get_mut();
                if queue.len() >= MAX_QUEUED {
                    queue.retain(|w| !w.reply.is_closed());
                    if queue.len() >= MAX_QUEUED {
                        return Err(QueueFull);
                    }
                }
                queue.push(waiting);
                Ok((id, false))
            }
            Entry::Vacant(e) => {
                e.insert(vec![waiting]);
                Ok((id, true))
            }
        }
    }

    /// Takes request `id` out of its product's queue. `false`: it is no longer queued, so
    /// it is part of a group whose transaction has begun or is about to.
    fn withdraw(&self, product_id: i64, id: u64) -> bool {
        let mut map = self.lock();
        let Some(queue) = map.get_mut(&product_id) else {
            return false;
        };
        let before = queue.len();
        queue.retain(|w| w.id != id);
        queue.len() < before
    }

    /// The next group, oldest first; `None` when nobody waits, in which case the leader's
    /// entry is gone and the next request starts a new leader. Requests whose caller has
    /// gone (client disconnected, or gave up waiting) are dropped, not reserved.
    fn next_group(&self, product_id: i64) -> Option<Vec<Waiting>> {
        let mut map = self.lock();
        let queue = map.get_mut(&product_id).expect("a leader has its entry");
        queue.retain(|w| !w.reply.is_closed());
        if queue.is_empty() {
            map.remove(&product_id);
            return None;
        }
        let n = queue.len().min(MAX_GROUP);
        Some(queue.drain(..n).collect())
    }
}

/// Removes a leader's entry if the leader stops before it is done (a failed assertion, or
/// its task dropped), so that the requests still queued get an error instead of waiting
/// forever and the next request starts a new leader.
struct LeaderGuard<'a> {
    groups: &'a HoldGroups,
    product_id: i64,
    /// Set when `next_group` found nobody waiting and removed the entry itself.
    finished: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        // Until `finished`, the entry is this leader's: nobody else removes or replaces it.
        if !self.finished {
            self.groups.lock().remove(&self.product_id);
        }
    }
}

/// What one group transaction decided for each of its requests, in order.
type Decisions = Vec<Result<HoldView>>;

impl Service {
    /// Reserves `qty` units of `product_id` as part of the product's next group.
    ///
    /// A request waits for a place in a group at most `DB_WAIT_SECS`; then it leaves the
    /// queue and is answered 503, having reserved nothing. Once its group's transaction has
    /// begun, the transaction's outcome is its answer, whatever it takes: answering 503
    /// while the transaction may still commit would leave a hold nobody knows of. The
    /// transaction's own waits (for a connection, a lock, SQLite's write lock) are bounded
    /// by the same setting, and it rolls back when one runs out.
    pub(super) async fn reserve_in_group(
        &self,
        product_id: i64,
        qty: i64,
        customer: Option<CustomerId>,
    ) -> Result<HoldView> {
        let (reply, mut answer) = oneshot::channel();
        let request = Request { qty, customer };
        let (id, lead) = self
            .hold_groups
            .enqueue(product_id, request, reply)
            .map_err(|QueueFull| {
                Error::Unavailable("too many hold requests wait for this product")
            })?;
        if lead {
            let svc = self.clone();
            // A task of its own: a client that disconnects must not cancel a group's
            // transaction half way.
            tokio::spawn(async move { svc.lead_groups(product_id).await });
        }
        let decided = match tokio::time::timeout(self.db.wait(), &mut answer).await {
            Ok(decided) => decided,
            Err(_) if self.hold_groups.withdraw(product_id, id) => {
                return Err(Error::Unavailable(
                    "the product's hold queue did not move in time",
                ));
            }
            Err(_) => answer.await,
        };
        // Err: the leader stopped (a failed assertion, logged by the panic hook).
        decided.unwrap_or_else(|_| {
            Err(Error::OutcomeUnknown(format!(
                "the hold group of product {product_id} failed"
            )))
        })
    }

    /// Reserves groups for `product_id` until nobody waits.
    async fn lead_groups(&self, product_id: i64) {
        let mut guard = LeaderGuard {
            groups: &self.hold_groups,
            product_id,
            finished: false,
        };
        loop {
            let Some(group) = self.hold_groups.next_group(product_id) else {
                guard.finished = true;
                return;
            };
            metrics().hold_group_size.observe(group.len() as f64);
            // Each wait inside the transaction is bounded by DB_WAIT_SECS; this bounds a
            // connection that stops answering altogether (no TCP keepalive in the driver),
            // so that the product's queue in this process cannot stall for good. Dropping
            // the future rolls back a transaction whose COMMIT was not sent; after that, the
            // outcome is unknown and answered as an internal error, never as "retry".
            let deadline = GROUP_DEADLINE_WAITS * self.db.wait();
            let reserved = tokio::time::timeout(deadline, self.reserve_group(product_id, &group))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::OutcomeUnknown(format!(
                        "the hold group of product {product_id} did not end within {deadline:?}; \
                         its outcome is unknown"
                    )))
                });
            let decisions = match reserved {
                Ok(decisions) => decisions,
                Err(e) => share_error(e, group.len()),
            };
            let mut created = Vec::new();
            for (waiting, decision) in group.into_iter().zip(decisions) {
                if let Ok(view) = &decision {
                    created.push((view.id, view.expires_at_ms));
                }
                // The caller may be gone (client disconnected); its hold expires unused.
                let _ = waiting.reply.send(decision);
            }
            if let Some(&(_, expires_at_ms)) = created.first() {
                let (svc, ids) = (self.clone(), created.iter().map(|(id, _)| *id).collect());
                // Off the leader's path: the next group need not wait for the job's commit.
                tokio::spawn(
                    async move { svc.jobs.expire_holds(&svc.db, ids, expires_at_ms).await },
                );
            }
        }
    }

    /// The group transaction: the locked step ([`take_units`](Self::take_units)) for
    /// every request of the group, then one INSERT of the granted holds.
    async fn reserve_group(&self, product_id: i64, group: &[Waiting]) -> Result<Decisions> {
        let asks: Vec<Ask<'_>> = group
            .iter()
            .map(|w| Ask {
                qty: w.request.qty,
                customer: w.request.customer.as_ref().map(CustomerId::as_str),
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

/// One failure of a group's transaction, handed to each of its `n` requests: the first
/// gets the original, the others an equivalent that keeps its meaning (retry later, the
/// outcome is unknown, or an internal error).
fn share_error(e: Error, n: usize) -> Decisions {
    tracing::warn!(error = %e, details = ?e, requests = n, "hold group failed");
    let copy = || match &e {
        e if e.is_unavailable() => {
            Error::Unavailable("the database did not serve this product's holds in time")
        }
        Error::OutcomeUnknown(why) => Error::OutcomeUnknown(why.clone()),
        other => Error::Internal(other.to_string()),
    };
    let mut decisions: Decisions = (1..n).map(|_| Err(copy())).collect();
    decisions.insert(0, Err(e));
    decisions
}

/// A hold to insert: its quantity, its customer, and the limit it was granted under.
type NewRow<'a> = (i64, Option<&'a str>, Option<i64>);

/// One INSERT of active holds of `product_id`, one per row of `rows`, returning them.
/// Written by hand rather than as a multi-row `VALUES` list: the rows travel as one JSON
/// array, so the statement has the same text for every group size and each connection
/// prepares it once (a `VALUES` list would be a new statement, parsed and planned anew, for
/// each size).
fn insert_holds(
    backend: DbBackend,
    product_id: i64,
    rows: &[NewRow<'_>],
    expires_at_ms: i64,
    now_ms: i64,
) -> Statement {
    let rows = serde_json::to_string(rows).expect("integers and strings serialise");
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
            rows.into(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(qty: i64) -> Request {
        Request {
            qty,
            customer: None,
        }
    }

    fn request(groups: &HoldGroups, qty: i64) -> (u64, bool, oneshot::Receiver<Result<HoldView>>) {
        let (reply, answer) = oneshot::channel();
        let (id, lead) = groups
            .enqueue(1, ask(qty), reply)
            .expect("room in the queue");
        (id, lead, answer)
    }

    #[test]
    fn a_request_that_gives_up_before_its_group_leaves_the_queue() {
        let groups = HoldGroups::default();
        let (first, lead, _a) = request(&groups, 1);
        let (_, second_leads, _b) = request(&groups, 2);
        assert!(lead && !second_leads, "the first request starts the leader");
        assert!(groups.withdraw(1, first));
        let group = groups.next_group(1).expect("one request left");
        assert_eq!(group.iter().map(|w| w.request.qty).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_request_already_in_a_group_cannot_leave_it() {
        let groups = HoldGroups::default();
        let (id, _, _answer) = request(&groups, 1);
        let group = groups.next_group(1).expect("the request");
        assert_eq!(group.len(), 1);
        assert!(
            !groups.withdraw(1, id),
            "its transaction decides its answer"
        );
    }

    #[test]
    fn the_queue_of_one_product_is_bounded() {
        let groups = HoldGroups::default();
        let answers: Vec<_> = (0..MAX_QUEUED).map(|_| request(&groups, 1).2).collect();
        let (reply, _answer) = oneshot::channel();
        assert_eq!(groups.enqueue(1, ask(1), reply).unwrap_err(), QueueFull);
        drop(answers);
        let (reply, _answer) = oneshot::channel();
        assert!(
            groups.enqueue(1, ask(1), reply).is_ok(),
            "requests whose callers left make room"
        );
    }
}
