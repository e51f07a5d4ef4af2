//! Holds: reserving stock, with safe retries through `Idempotency-Key`, and the locked
//! step every reservation shares, single or grouped ([`super::hold_groups`]).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use entity::{
    hold::{self, HoldStatus},
    order, product,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Set,
};

use super::{
    Service,
    cache::Ticket,
    is_unique_violation,
    locks::lock_product,
    now_ms, request_hash,
    sales::{CustomerId, customer_units, may_see},
    stock::{overdue_orders, reclaim_overdue, release_stock, take_stock, take_stock_returning},
    validate_idempotency_key,
};
use crate::{Error, Result, db::WriteTxn, metrics::metrics};

/// Where a hold is in its life, as the service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldState {
    /// Reserves its units until it expires.
    Active,
    /// Became an order, which now has its units.
    Ordered,
    /// Its time ran out unpaid; its units are free again.
    Expired,
    /// Its buyer let it go; its units are free again.
    Released,
}

impl From<HoldStatus> for HoldState {
    fn from(s: HoldStatus) -> Self {
        match s {
            HoldStatus::Active => Self::Active,
            HoldStatus::Ordered => Self::Ordered,
            HoldStatus::Expired => Self::Expired,
            HoldStatus::Released => Self::Released,
        }
    }
}

/// A hold as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldView {
    /// The hold's id.
    pub id: i64,
    /// The product it reserves units of.
    pub product_id: i64,
    /// Units reserved.
    pub qty: i64,
    /// Its state now.
    pub status: HoldState,
    /// When it stops reserving its units unless ordered, in Unix milliseconds.
    pub expires_at_ms: i64,
}

impl HoldView {
    /// The hold's status as of `now_ms`: an overdue unpaid hold is expired even before
    /// anything has marked it so.
    fn current(h: &hold::Model, now_ms: i64) -> Self {
        let status = if is_overdue(h, now_ms) {
            HoldState::Expired
        } else {
            h.status.into()
        };
        Self {
            id: h.id,
            product_id: h.product_id,
            qty: h.qty,
            status,
            expires_at_ms: h.expires_at_ms,
        }
    }

    /// The view of `h` with status `status`, which a change under its lock just gave it.
    pub(super) fn with_status(h: &hold::Model, status: HoldStatus) -> Self {
        Self {
            status: status.into(),
            ..Self::current(h, i64::MIN)
        }
    }

    /// The answer first given when the hold was created.
    pub(super) fn as_created(h: &hold::Model) -> Self {
        Self {
            status: HoldState::Active,
            ..Self::current(h, i64::MIN)
        }
    }
}

/// `true` when the hold says `active` but its time is up and nobody paid for it.
pub fn is_overdue(h: &hold::Model, now_ms: i64) -> bool {
    h.status == HoldStatus::Active && h.expires_at_ms <= now_ms && h.paid_at_ms.is_none()
}

/// A validated request for a hold.
#[derive(Debug)]
pub struct NewHold {
    /// The product to reserve units of.
    pub product_id: i64,
    /// Units to reserve, within the configured bounds.
    pub qty: i64,
    /// Makes retries safe: the same key and request return the same hold. Scoped to the
    /// customer (anonymous callers share one scope).
    pub idempotency_key: Option<String>,
    /// Who asks; `None`: an anonymous shopper.
    pub customer: Option<CustomerId>,
}

/// One request as the locked step of a reservation sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ask<'a> {
    /// Units asked for.
    pub qty: i64,
    /// Who asks.
    pub customer: Option<&'a str>,
}

/// A keyed request's key, the hash of its request, and the scope the key lives in.
#[derive(Clone, Copy, Debug)]
pub(super) struct Keyed<'a> {
    key: &'a str,
    hash: &'a str,
    customer: Option<&'a str>,
}

/// Why the locked step refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Too few units: this many were free when its turn came.
    Short(i64),
    /// The product is limited per customer and the request has no customer.
    TokenRequired,
    /// The customer already has `has` units and the product allows `limit`.
    Limit { limit: i64, has: i64 },
}

impl Refusal {
    /// The error answered to a request for `qty` units of `product_id`.
    pub(super) fn into_error(self, product_id: i64, qty: i64) -> Error {
        match self {
            Self::Short(left) => Error::insufficient_stock(product_id, qty, left),
            Self::TokenRequired => Error::CustomerTokenRequired(product_id),
            Self::Limit { limit, has } => Error::CustomerLimitReached {
                product_id,
                limit,
                has,
                requested: qty,
            },
        }
    }
}

/// What the locked step of a reservation decided for its requests.
pub(super) enum Reserved {
    /// The units of every request not refused are taken and the transaction goes on.
    /// `refusals[i]` says why request `i` was refused, if it was. `limit`: the product's
    /// limit per customer the grants were decided under.
    Taken {
        txn: WriteTxn,
        refusals: Vec<Option<Refusal>>,
        limit: Option<i64>,
    },
    /// Every request refused; the transaction is over (committed when it reclaimed
    /// overdue holds).
    Refused(Vec<Refusal>),
    /// No such product; rolled back.
    NoProduct,
    /// A hold stored with the request's key: the request is a retry. Rolled back.
    Replay(HoldView),
}

impl Service {
    /// Checks a hold request against the configured bounds.
    pub fn parse_hold(
        &self,
        product_id: i64,
        qty: i64,
        key: Option<String>,
        customer: Option<CustomerId>,
    ) -> Result<NewHold> {
        let max = self.rules.max_qty_per_hold;
        if !(1..=max).contains(&qty) {
            return Err(Error::validation(
                "qty",
                format!("must be between 1 and {max}"),
            ));
        }
        if let Some(key) = &key {
            validate_idempotency_key("Idempotency-Key", key)?;
        }
        Ok(NewHold {
            product_id,
            qty,
            idempotency_key: key,
            customer,
        })
    }

    /// Reserves stock. Returns the hold and whether it is a replay of an earlier request
    /// with the same idempotency key.
    pub async fn create_hold(&self, req: NewHold) -> Result<(HoldView, bool)> {
        let hash = req
            .idempotency_key
            .as_ref()
            .map(|_| request_hash(&["hold", &req.product_id.to_string(), &req.qty.to_string()]));
        let keyed = req
            .idempotency_key
            .as_deref()
            .zip(hash.as_deref())
            .map(|(key, hash)| Keyed {
                key,
                hash,
                customer: req.customer.as_ref().map(CustomerId::as_str),
            });
        let result = match self.admit_hold(&req, keyed).await {
            Ok(None) => self.reserve_admitted(&req, keyed).await,
            Ok(Some(replay)) => Ok((replay, true)),
            Err(refused) => Err(refused),
        };
        let result = match (result, keyed) {
            // Another request with the same key committed first.
            (Err(Error::Database(e)), Some(keyed)) if is_unique_violation(&e) => {
                replay(&self.db.conn, keyed)
                    .await?
                    .map(|replay| (replay, true))
                    .ok_or(Error::Database(e))
            }
            (other, _) => other,
        };
        count_outcome(result.as_ref().map(|(_, replayed)| *replayed));
        result
    }

    /// What the sale's settings, in this process's memory, say of `req` before any
    /// transaction: refused (the sale is not open, or a token is missing), the hold a
    /// retry made before the sale ended, or `None`: go on and reserve.
    async fn admit_hold(
        &self,
        req: &NewHold,
        keyed: Option<Keyed<'_>>,
    ) -> Result<Option<HoldView>> {
        let settings = self
            .sale_settings(req.product_id)
            .await?
            .ok_or(Error::ProductNotFound(req.product_id))?;
        match settings.admit(req.product_id, now_ms(), req.customer.as_ref()) {
            Ok(()) => Ok(None),
            // A retry of a hold made before the end still finds its hold.
            Err(ended @ Error::SaleEnded { .. }) => match keyed {
                Some(keyed) => replay(&self.db.conn, keyed).await?.map(Some).ok_or(ended),
                None => Err(ended),
            },
            Err(refused) => Err(refused),
        }
    }

    /// Reserves an admitted request: refused at once on this process's fresh evidence that
    /// too few units are free, else a replay, the keyed transaction, or a place in a group.
    async fn reserve_admitted(
        &self,
        req: &NewHold,
        keyed: Option<Keyed<'_>>,
    ) -> Result<(HoldView, bool)> {
        // This process's fresh evidence that the product is sold out, read before the key
        // is looked up: the evidence was taken under the row lock after every commit that
        // took the units it says are gone, so a hold committed with this key before it is
        // visible to the lookup below, and a retry still finds its replay.
        let short = self.cache.known_short(req.product_id, req.qty);
        if let Some(keyed) = keyed
            && let Some(replay) = replay(&self.db.conn, keyed).await?
        {
            return Ok((replay, true));
        }
        // Refused from that evidence: no queueing behind the row lock.
        if let Some(available) = short {
            return Err(Error::insufficient_stock(
                req.product_id,
                req.qty,
                available,
            ));
        }
        match keyed {
            Some(keyed) => self.reserve(req, keyed).await,
            None => self
                .reserve_in_group(req.product_id, req.qty, req.customer.clone())
                .await
                .map(|hold| (hold, false)),
        }
    }

    /// The single-hold reservation transaction, for keyed requests: the locked step
    /// ([`take_units`](Self::take_units)), then, under the product lock, a stored hold
    /// with the key is a replay; otherwise the hold is inserted.
    async fn reserve(&self, req: &NewHold, keyed: Keyed<'_>) -> Result<(HoldView, bool)> {
        let ask = Ask {
            qty: req.qty,
            customer: keyed.customer,
        };
        let reserved = self.take_units(req.product_id, &[ask], Some(keyed)).await?;
        let (txn, limit) = match reserved {
            // A lone request refused ends its transaction as `Refused`.
            Reserved::Taken {
                txn,
                refusals,
                limit,
            } => {
                assert_eq!(refusals, [None], "a lone request taken but refused");
                (txn, limit)
            }
            Reserved::Refused(why) => return Err(why[0].into_error(req.product_id, req.qty)),
            Reserved::NoProduct => return Err(Error::ProductNotFound(req.product_id)),
            Reserved::Replay(replay) => return Ok((replay, true)),
        };
        // Under the product lock now: a concurrent retry on this product has committed.
        if let Some(replay) = replay(&*txn, keyed).await? {
            txn.rollback().await?;
            return Ok((replay, true));
        }
        // Read the clock only now that the locks are held: waiting must not shorten the TTL.
        let now = now_ms();
        let hold = hold::ActiveModel {
            product_id: Set(req.product_id),
            qty: Set(req.qty),
            status: Set(HoldStatus::Active),
            expires_at_ms: Set(now + self.hold_ttl_ms()),
            paid_at_ms: Set(None),
            idempotency_key: Set(Some(keyed.key.to_owned())),
            request_hash: Set(Some(keyed.hash.to_owned())),
            created_at_ms: Set(now),
            customer_id: Set(keyed.customer.map(str::to_owned)),
            customer_limit: Set(keyed.customer.and(limit)),
            ..Default::default()
        }
        .insert(&*txn)
        .await?;
        self.commit_changing(txn, Some(req.product_id)).await?;
        self.jobs
            .expire_holds(&self.db, vec![hold.id], hold.expires_at_ms);
        tracing::debug!(
            hold_id = hold.id,
            product_id = hold.product_id,
            qty = hold.qty,
            "hold created"
        );
        Ok((HoldView::as_created(&hold), false))
    }

    /// The locked step of every reservation, for `asks` on `product_id` in arrival order.
    /// It begins the transaction and takes the sum of the asks with one conditional
    /// UPDATE, which also locks the product row on PostgreSQL. A product limited per
    /// customer then has the asks decided against each customer's allowance
    /// ([`decide_limited`]). When the UPDATE finds too little, the
    /// decision is made under the row lock by [`take_locked`](Self::take_locked).
    pub(super) async fn take_units(
        &self,
        product_id: i64,
        asks: &[Ask<'_>],
        keyed: Option<Keyed<'_>>,
    ) -> Result<Reserved> {
        let evidence = self.cache.ticket(product_id);
        let txn = self.db.begin_write().await?;
        let sum = asks.iter().map(|a| a.qty).sum();
        match take_stock_returning(&*txn, product_id, sum).await? {
            None => {
                self.take_locked(txn, evidence, product_id, asks, keyed)
                    .await
            }
            Some(p) if p.max_per_customer.is_some() => {
                decide_limited(txn, &p, asks, sum, self.order_payment_ttl_ms()).await
            }
            Some(_) => {
                let refusals = vec![None; asks.len()];
                Ok(Reserved::Taken {
                    txn,
                    refusals,
                    limit: None,
                })
            }
        }
    }

    /// The locked step's decision when the stock looked short, under the product's row
    /// lock: a retry of a keyed request that committed is a replay; overdue holds are
    /// reclaimed; with a limit per customer, the asks' customers' units are counted in one
    /// query; then the asks are granted in arrival order.
    async fn take_locked(
        &self,
        txn: WriteTxn,
        evidence: Ticket,
        product_id: i64,
        asks: &[Ask<'_>],
        keyed: Option<Keyed<'_>>,
    ) -> Result<Reserved> {
        // Both clocks read before the locked read: the evidence is at least this fresh.
        let read_at = (Instant::now(), now_ms());
        let Some(p) = lock_product(&*txn, product_id).await? else {
            txn.rollback().await?;
            return Ok(Reserved::NoProduct);
        };
        // A retry of a request that took the last units is a replay, not a refusal.
        if let Some(keyed) = keyed
            && let Some(replay) = replay(&*txn, keyed).await?
        {
            txn.rollback().await?;
            return Ok(Reserved::Replay(replay));
        }
        let now = now_ms();
        let cutoff = self.payment_cutoff_ms(now);
        let reclaimed = reclaim_overdue(&*txn, p.id, now, cutoff).await?;
        let units = match p.max_per_customer {
            Some(_) => {
                customer_units(&*txn, p.id, &customers_of(asks), now, cutoff)
                    .await?
                    .units
            }
            None => HashMap::new(),
        };
        let (granted, refusals) =
            grant_in_order(p.available + reclaimed, p.max_per_customer, &units, asks);
        if granted == 0 {
            self.end_refused(txn, evidence, &p, reclaimed, read_at)
                .await?;
            let why = refusals.into_iter().map(|r| r.expect("all refused"));
            return Ok(Reserved::Refused(why.collect()));
        }
        assert!(
            take_stock(&*txn, p.id, granted).await?,
            "product {} lost units under its lock",
            p.id
        );
        Ok(Reserved::Taken {
            txn,
            refusals,
            limit: p.max_per_customer,
        })
    }

    /// Ends a reservation transaction that could grant nothing. Overdue holds it reclaimed
    /// are committed; otherwise it rolls back and remembers that `p` had only
    /// `p.available` units free, as read at `read_at` (taken after `evidence`), until the
    /// next unpaid hold could expire (or a release, which drops the note in this process).
    async fn end_refused(
        &self,
        txn: WriteTxn,
        evidence: Ticket,
        p: &product::Model,
        reclaimed: i64,
        (read_at, read_at_ms): (Instant, i64),
    ) -> Result<()> {
        if reclaimed > 0 {
            return self.commit_changing(txn, Some(p.id)).await;
        }
        let next_expiry = next_expiry_ms(&*txn, p.id, self.order_payment_ttl_ms()).await?;
        txn.rollback().await?;
        // Ends a millisecond before the next expiry (the ms clock truncates).
        let valid_ms = next_expiry.map_or(i64::MAX, |at| at - read_at_ms - 1);
        let valid_for = Duration::from_millis(u64::try_from(valid_ms).unwrap_or(0));
        self.cache
            .note_short(evidence, p.available, read_at, valid_for);
        Ok(())
    }

    /// Hold `id` with its current status, if `caller` may see it: a customer's hold is
    /// theirs alone, and to anyone else it does not exist.
    pub async fn hold(&self, id: i64, caller: Option<&CustomerId>) -> Result<HoldView> {
        self.hold_if(id, |owner| may_see(owner, caller)).await
    }

    /// Hold `id` if it is `customer`'s own: an anonymous hold is nobody's here.
    pub async fn own_hold(&self, id: i64, customer: &CustomerId) -> Result<HoldView> {
        self.hold_if(id, |owner| owner == Some(customer.as_str()))
            .await
    }

    /// Hold `id` with its current status if its owner passes `visible`, else not found.
    async fn hold_if(&self, id: i64, visible: impl Fn(Option<&str>) -> bool) -> Result<HoldView> {
        let h = hold::Entity::find_by_id(id)
            .one(&self.db.conn)
            .await?
            .filter(|h| visible(h.customer_id.as_deref()))
            .ok_or(Error::HoldNotFound(id))?;
        Ok(HoldView::current(&h, now_ms()))
    }
}

/// The part of the locked step for a product limited per customer, once the UPDATE has
/// taken `taken` units (the sum of `asks`) and locked the row `p`: the customers' units
/// are counted, and each ask is granted or refused against its customer's allowance, in
/// arrival order; refused units go back at once. The clock is read under the lock.
///
/// Every change that adds to a customer's units (a grant, or a payment that pins a hold
/// so that it no longer expires) holds the product's lock and reads the clock under it;
/// so nothing can add to what this count finds before the transaction ends. Two do not
/// lock the product: an order made as its hold expires, and a payment for an order whose
/// deadline is passing. So when the count passed over anything overdue, the overdue holds
/// and orders are reclaimed first, each under its own row lock (one ordered or paid a
/// moment earlier is left alone), and the customers counted again.
async fn decide_limited(
    txn: WriteTxn,
    p: &product::Model,
    asks: &[Ask<'_>],
    taken: i64,
    order_ttl_ms: i64,
) -> Result<Reserved> {
    let now = now_ms();
    let cutoff = now - order_ttl_ms;
    let customers = customers_of(asks);
    let mut counted = customer_units(&*txn, p.id, &customers, now, cutoff).await?;
    let mut free = p.available + taken;
    if counted.overdue {
        free += reclaim_overdue(&*txn, p.id, now, cutoff).await?;
        counted = customer_units(&*txn, p.id, &customers, now, cutoff).await?;
    }
    let (granted, refusals) = grant_in_order(free, p.max_per_customer, &counted.units, asks);
    if granted == 0 {
        txn.rollback().await?;
        let why = refusals.into_iter().map(|r| r.expect("all refused"));
        return Ok(Reserved::Refused(why.collect()));
    }
    if granted < taken {
        release_stock(&*txn, p.id, taken - granted).await?;
    }
    Ok(Reserved::Taken {
        txn,
        refusals,
        limit: p.max_per_customer,
    })
}

/// The customers of `asks`, anonymous ones left out.
fn customers_of<'a>(asks: &[Ask<'a>]) -> Vec<&'a str> {
    asks.iter().filter_map(|a| a.customer).collect()
}

/// Counts a hold request's outcome: `Ok(replayed)` or its error.
fn count_outcome(result: std::result::Result<bool, &Error>) {
    let outcome = match result {
        Ok(true) => return metrics().replays.with_label_values(&["hold"]).inc(),
        Ok(false) => "created",
        Err(Error::InsufficientStock { .. }) => "rejected",
        Err(Error::SaleNotStarted { .. } | Error::SaleEnded { .. }) => "sale_closed",
        Err(Error::CustomerLimitReached { .. } | Error::CustomerTokenRequired(_)) => {
            "customer_limit"
        }
        Err(_) => return,
    };
    metrics().holds.with_label_values(&[outcome]).inc();
}

/// Grants `asks` in arrival order while `free` units last. With a `limit` per customer,
/// an ask needs a customer, and is granted only if its customer's units (`units` now, plus
/// what earlier asks of the same customer were granted) stay within the limit. Returns the
/// units granted and, for each ask, why it was refused, if it was.
fn grant_in_order(
    free: i64,
    limit: Option<i64>,
    units: &HashMap<String, i64>,
    asks: &[Ask<'_>],
) -> (i64, Vec<Option<Refusal>>) {
    let mut left = free;
    let mut has: HashMap<&str, i64> = HashMap::new();
    let refusals = asks
        .iter()
        .map(|ask| {
            let customer = match (limit, ask.customer) {
                (Some(_), None) => return Some(Refusal::TokenRequired),
                (Some(limit), Some(c)) => {
                    let had = *has
                        .entry(c)
                        .or_insert_with(|| units.get(c).copied().unwrap_or(0));
                    if had + ask.qty > limit {
                        return Some(Refusal::Limit { limit, has: had });
                    }
                    Some(c)
                }
                (None, _) => None,
            };
            if ask.qty > left {
                return Some(Refusal::Short(left));
            }
            left -= ask.qty;
            if let Some(c) = customer {
                *has.get_mut(c).expect("counted above") += ask.qty;
            }
            None
        })
        .collect();
    (free - left, refusals)
}

/// When the next unpaid active hold of `product_id` expires, or the next pending order's
/// payment deadline (`order_ttl_ms` after it was made) passes, whichever comes first.
async fn next_expiry_ms(
    conn: &impl ConnectionTrait,
    product_id: i64,
    order_ttl_ms: i64,
) -> Result<Option<i64>> {
    let next_hold: Option<Option<i64>> = hold::Entity::find()
        .select_only()
        .column_as(hold::Column::ExpiresAtMs.min(), "next")
        .filter(hold::Column::ProductId.eq(product_id))
        .filter(hold::Column::Status.eq(HoldStatus::Active))
        .filter(hold::Column::PaidAtMs.is_null())
        .into_tuple()
        .one(conn)
        .await?;
    // The pending orders that can lapse: all but those whose hold was paid first.
    let oldest_order: Option<Option<i64>> = order::Entity::find()
        .select_only()
        .column_as(order::Column::CreatedAtMs.min(), "oldest")
        .filter(order::Column::ProductId.eq(product_id))
        .filter(overdue_orders(i64::MAX))
        .into_tuple()
        .one(conn)
        .await?;
    let next_order = oldest_order.flatten().map(|at| at + order_ttl_ms);
    Ok(next_hold.flatten().into_iter().chain(next_order).min())
}

/// The earlier answer for the key in its customer's scope, or 409 when it was made for a
/// different request.
async fn replay(conn: &impl ConnectionTrait, keyed: Keyed<'_>) -> Result<Option<HoldView>> {
    let scope = match keyed.customer {
        Some(customer) => hold::Column::CustomerId.eq(customer),
        None => hold::Column::CustomerId.is_null(),
    };
    let Some(h) = hold::Entity::find()
        .filter(hold::Column::IdempotencyKey.eq(keyed.key))
        .filter(scope)
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    if h.request_hash.as_deref() != Some(keyed.hash) {
        return Err(Error::IdempotencyKeyReused);
    }
    Ok(Some(HoldView::as_created(&h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(qty: i64, customer: Option<&str>) -> Ask<'_> {
        Ask { qty, customer }
    }

    #[test]
    fn requests_are_granted_in_arrival_order_while_units_last() {
        let none = HashMap::new();
        let asks = [ask(2, None), ask(4, None), ask(3, None)];
        let short = |left| Some(Refusal::Short(left));
        assert_eq!(
            grant_in_order(5, None, &none, &asks),
            (5, vec![None, short(3), None])
        );
        let asks = [ask(2, None), ask(3, None)];
        assert_eq!(
            grant_in_order(1, None, &none, &asks),
            (0, vec![short(1), short(1)])
        );
        assert_eq!(grant_in_order(9, None, &none, &asks[..1]).0, 2);
    }

    #[test]
    fn a_limit_counts_what_the_customer_has_and_what_the_group_gave_them() {
        let units = HashMap::from([("a".to_owned(), 1)]);
        let asks = [
            ask(1, Some("a")),
            ask(1, Some("a")),
            ask(2, Some("b")),
            ask(1, Some("b")),
            ask(1, None),
        ];
        let (granted, refusals) = grant_in_order(100, Some(2), &units, &asks);
        assert_eq!(granted, 3);
        assert_eq!(
            refusals,
            vec![
                None,
                Some(Refusal::Limit { limit: 2, has: 2 }),
                None,
                Some(Refusal::Limit { limit: 2, has: 2 }),
                Some(Refusal::TokenRequired),
            ]
        );
    }

    #[test]
    fn a_customer_refused_for_stock_keeps_their_allowance() {
        let none = HashMap::new();
        let asks = [ask(3, Some("a")), ask(1, Some("a"))];
        let (granted, refusals) = grant_in_order(2, Some(3), &none, &asks);
        assert_eq!(granted, 1);
        assert_eq!(refusals, vec![Some(Refusal::Short(2)), None]);
    }
}
