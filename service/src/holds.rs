//! Holds: reserving stock, with safe retries through `Idempotency-Key`.

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

/// A hold as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldView {
    pub id: i64,
    pub product_id: i64,
    pub qty: i64,
    pub status: HoldStatus,
    pub expires_at_ms: i64,
}

impl HoldView {
    /// The hold's status as of `now_ms`: an overdue unpaid hold is expired even before
    /// anything has marked it so.
    fn current(h: &hold::Model, now_ms: i64) -> Self {
        let status = if is_overdue(h, now_ms) {
            HoldStatus::Expired
        } else {
            h.status
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
            status: HoldStatus::Active,
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
    pub product_id: i64,
    pub qty: i64,
    pub idempotency_key: Option<String>,
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
            Err(Error::InsufficientStock {
                product_id: req.product_id,
                requested: req.qty,
                available,
            })
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

    /// The single-hold reservation transaction, for keyed requests: take the units from
    /// `available` with one conditional UPDATE (which also locks the product row on
    /// PostgreSQL), and only when that finds too little, lock the row, reclaim overdue
    /// holds and try again. Under the product lock, a stored hold with the key is a replay.
    async fn reserve(&self, req: &NewHold, hash: Option<&str>) -> Result<(HoldView, bool)> {
        let evidence = self.cache.ticket(req.product_id);
        let txn = self.db.begin_write().await?;
        if !take_stock(&*txn, req.product_id, req.qty).await? {
            // Both clocks read before the locked read: the evidence is at least this fresh.
            let (read_at, read_at_ms) = (Instant::now(), now_ms());
            let Some(p) = lock_product(&*txn, req.product_id).await? else {
                txn.rollback().await?;
                return Err(Error::ProductNotFound(req.product_id));
            };
            // A retry of a request that took the last units is a replay, not a refusal.
            if let (Some(key), Some(hash)) = (&req.idempotency_key, hash)
                && let Some(replay) = replay(&*txn, key, hash).await?
            {
                txn.rollback().await?;
                return Ok((replay, true));
            }
            let reclaimed = reclaim_overdue_holds(&*txn, p.id, now_ms()).await?;
            if !take_stock(&*txn, p.id, req.qty).await? {
                self.end_refused(txn, evidence, &p, reclaimed, (read_at, read_at_ms))
                    .await?;
                return Err(Error::InsufficientStock {
                    product_id: p.id,
                    requested: req.qty,
                    available: p.available + reclaimed,
                });
            }
        }
        if let (Some(key), Some(hash)) = (&req.idempotency_key, hash) {
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

    /// Ends a reservation transaction that could grant nothing. Overdue holds it reclaimed
    /// are committed; otherwise it rolls back and remembers that `p` had only
    /// `p.available` units free, as read at `read_at` (taken after `evidence`), until the
    /// next unpaid hold could expire (or a release, which drops the note in this process).
    pub(super) async fn end_refused(
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
