//! Holds: reserving stock, with safe retries through `Idempotency-Key`, and the locked
//! step every reservation shares, single or grouped ([`super::hold_groups`]).

use std::time::{Duration, Instant};

use entity::{
    hold::{self, HoldStatus},
    product,
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
    stock::{reclaim_overdue_holds, take_stock},
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
}

impl From<HoldStatus> for HoldState {
    fn from(s: HoldStatus) -> Self {
        match s {
            HoldStatus::Active => Self::Active,
            HoldStatus::Ordered => Self::Ordered,
            HoldStatus::Expired => Self::Expired,
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
    /// Makes retries safe: the same key and request return the same hold.
    pub idempotency_key: Option<String>,
}

/// What the locked step of a reservation decided for its requests.
pub(super) enum Reserved {
    /// The units of every request not refused are taken and the transaction goes on.
    /// `refusals[i]` is `Some(left)` when request `i` was refused, `left` units being free
    /// when its turn came.
    Taken {
        txn: WriteTxn,
        refusals: Vec<Option<i64>>,
    },
    /// Every request refused, with the units free when its turn came; the transaction is
    /// over (committed when it reclaimed overdue holds).
    Refused(Vec<i64>),
    /// No such product; rolled back.
    NoProduct,
    /// A hold stored with the request's key: the request is a retry. Rolled back.
    Replay(HoldView),
}

impl Service {
    /// Checks a hold request against the configured bounds.
    pub fn parse_hold(&self, product_id: i64, qty: i64, key: Option<String>) -> Result<NewHold> {
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
        })
    }

    /// Reserves stock. Returns the hold and whether it is a replay of an earlier request
    /// with the same idempotency key.
    pub async fn create_hold(&self, req: NewHold) -> Result<(HoldView, bool)> {
        let hash = req
            .idempotency_key
            .as_ref()
            .map(|_| request_hash(&["hold", &req.product_id.to_string(), &req.qty.to_string()]));
        // This process's fresh evidence that the product is sold out, read before the key
        // is looked up: the evidence was taken under the row lock after every commit that
        // took the units it says are gone, so a hold committed with this key before it is
        // visible to the lookup below, and a retry still finds its replay.
        let short = self.cache.known_short(req.product_id, req.qty);
        if let (Some(key), Some(hash)) = (&req.idempotency_key, &hash)
            && let Some(replay) = replay(&self.db.conn, key, hash).await?
        {
            metrics().replays.with_label_values(&["hold"]).inc();
            return Ok((replay, true));
        }
        // Refused from that evidence: no queueing behind the row lock.
        let result = if let Some(available) = short {
            Err(Error::insufficient_stock(
                req.product_id,
                req.qty,
                available,
            ))
        } else {
            match &hash {
                Some(hash) => self.reserve(&req, Some(hash)).await,
                None => self
                    .reserve_in_group(req.product_id, req.qty)
                    .await
                    .map(|hold| (hold, false)),
            }
        };
        let m = metrics();
        match &result {
            Ok((_, true)) => m.replays.with_label_values(&["hold"]).inc(),
            Ok((_, false)) => m.holds.with_label_values(&["created"]).inc(),
            Err(Error::InsufficientStock { .. }) => m.holds.with_label_values(&["rejected"]).inc(),
            Err(_) => {}
        }
        match result {
            // Another request with the same key committed first.
            Err(Error::Database(e)) if is_unique_violation(&e) => {
                let (Some(key), Some(hash)) = (&req.idempotency_key, &hash) else {
                    return Err(Error::Database(e));
                };
                match replay(&self.db.conn, key, hash).await? {
                    Some(replay) => Ok((replay, true)),
                    None => Err(Error::Database(e)),
                }
            }
            other => other,
        }
    }

    /// The single-hold reservation transaction, for keyed requests: the locked step
    /// ([`take_units`](Self::take_units)), then, under the product lock, a stored hold
    /// with the key is a replay; otherwise the hold is inserted.
    async fn reserve(&self, req: &NewHold, hash: Option<&str>) -> Result<(HoldView, bool)> {
        let key = req.idempotency_key.as_deref().zip(hash);
        let txn = match self.take_units(req.product_id, &[req.qty], key).await? {
            Reserved::Taken { txn, .. } => txn,
            Reserved::Refused(left) => {
                return Err(Error::insufficient_stock(req.product_id, req.qty, left[0]));
            }
            Reserved::NoProduct => return Err(Error::ProductNotFound(req.product_id)),
            Reserved::Replay(replay) => return Ok((replay, true)),
        };
        if let Some((key, hash)) = key {
            // Under the product lock now: a concurrent retry on this product has committed.
            if let Some(replay) = replay(&*txn, key, hash).await? {
                txn.rollback().await?;
                return Ok((replay, true));
            }
        }
        // Read the clock only now that the locks are held: waiting must not shorten the TTL.
        let now = now_ms();
        let hold = hold::ActiveModel {
            product_id: Set(req.product_id),
            qty: Set(req.qty),
            status: Set(HoldStatus::Active),
            expires_at_ms: Set(now + self.hold_ttl_ms()),
            paid_at_ms: Set(None),
            idempotency_key: Set(req.idempotency_key.clone()),
            request_hash: Set(hash.map(str::to_owned)),
            created_at_ms: Set(now),
            ..Default::default()
        }
        .insert(&*txn)
        .await?;
        self.commit_changing(txn, Some(req.product_id)).await?;
        self.jobs
            .expire_holds(&self.db, vec![hold.id], hold.expires_at_ms)
            .await;
        tracing::debug!(
            hold_id = hold.id,
            product_id = hold.product_id,
            qty = hold.qty,
            "hold created"
        );
        Ok((HoldView::as_created(&hold), false))
    }

    /// The locked step of every reservation, for requests of `qtys` units of `product_id`
    /// in arrival order. It begins the transaction and takes the sum of `qtys` with one
    /// conditional UPDATE (which also locks the product row on PostgreSQL). Only when that
    /// finds too little, it locks the row, checks `key` (key and request hash) for a
    /// replay, reclaims overdue holds, and grants the requests in arrival order while units
    /// last.
    pub(super) async fn take_units(
        &self,
        product_id: i64,
        qtys: &[i64],
        key: Option<(&str, &str)>,
    ) -> Result<Reserved> {
        let evidence = self.cache.ticket(product_id);
        let txn = self.db.begin_write().await?;
        if take_stock(&*txn, product_id, qtys.iter().sum()).await? {
            let refusals = vec![None; qtys.len()];
            return Ok(Reserved::Taken { txn, refusals });
        }
        // Both clocks read before the locked read: the evidence is at least this fresh.
        let read_at = (Instant::now(), now_ms());
        let Some(p) = lock_product(&*txn, product_id).await? else {
            txn.rollback().await?;
            return Ok(Reserved::NoProduct);
        };
        // A retry of a request that took the last units is a replay, not a refusal.
        if let Some((key, hash)) = key
            && let Some(replay) = replay(&*txn, key, hash).await?
        {
            txn.rollback().await?;
            return Ok(Reserved::Replay(replay));
        }
        let reclaimed = reclaim_overdue_holds(&*txn, p.id, now_ms()).await?;
        let (granted, refusals) = grant_in_order(p.available + reclaimed, qtys);
        if granted == 0 {
            self.end_refused(txn, evidence, &p, reclaimed, read_at)
                .await?;
            let left = refusals.into_iter().map(|r| r.expect("all refused"));
            return Ok(Reserved::Refused(left.collect()));
        }
        assert!(
            take_stock(&*txn, p.id, granted).await?,
            "product {} lost units under its lock",
            p.id
        );
        Ok(Reserved::Taken { txn, refusals })
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
        let next_expiry = next_expiry_ms(&*txn, p.id).await?;
        txn.rollback().await?;
        // Ends a millisecond before the next expiry (the ms clock truncates).
        let valid_ms = next_expiry.map_or(i64::MAX, |at| at - read_at_ms - 1);
        let valid_for = Duration::from_millis(u64::try_from(valid_ms).unwrap_or(0));
        self.cache
            .note_short(evidence, p.available, read_at, valid_for);
        Ok(())
    }

    /// Hold `id` with its current status.
    pub async fn hold(&self, id: i64) -> Result<HoldView> {
        let h = hold::Entity::find_by_id(id)
            .one(&self.db.conn)
            .await?
            .ok_or(Error::HoldNotFound(id))?;
        Ok(HoldView::current(&h, now_ms()))
    }
}

/// Grants requests of `qtys` units in arrival order while `free` units last. Returns the
/// units granted, and for each request `Some(left)` when refused, `left` units being free
/// when its turn came.
fn grant_in_order(free: i64, qtys: &[i64]) -> (i64, Vec<Option<i64>>) {
    let mut left = free;
    let refusals = qtys
        .iter()
        .map(|&qty| {
            if qty <= left {
                left -= qty;
                None
            } else {
                Some(left)
            }
        })
        .collect();
    (free - left, refusals)
}

/// When the next unpaid active hold of `product_id` expires, if any.
async fn next_expiry_ms(conn: &impl ConnectionTrait, product_id: i64) -> Result<Option<i64>> {
    let next: Option<Option<i64>> = hold::Entity::find()
        .select_only()
        .column_as(hold::Column::ExpiresAtMs.min(), "next")
        .filter(hold::Column::ProductId.eq(product_id))
        .filter(hold::Column::Status.eq(HoldStatus::Active))
        .filter(hold::Column::PaidAtMs.is_null())
        .into_tuple()
        .one(conn)
        .await?;
    Ok(next.flatten())
}

/// The earlier answer for `key`, or 409 when it was made for a different request.
async fn replay(conn: &impl ConnectionTrait, key: &str, hash: &str) -> Result<Option<HoldView>> {
    let Some(h) = hold::Entity::find()
        .filter(hold::Column::IdempotencyKey.eq(key))
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    if h.request_hash.as_deref() != Some(hash) {
        return Err(Error::IdempotencyKeyReused);
    }
    Ok(Some(HoldView::as_created(&h)))
}

#[cfg(test)]
mod tests {
    use super::grant_in_order;

    #[test]
    fn requests_are_granted_in_arrival_order_while_units_last() {
        assert_eq!(
            grant_in_order(5, &[2, 4, 3]),
            (5, vec![None, Some(3), None])
        );
        assert_eq!(grant_in_order(1, &[2, 3]), (0, vec![Some(1), Some(1)]));
        assert_eq!(grant_in_order(9, &[1, 2]), (3, vec![None, None]));
    }
}
