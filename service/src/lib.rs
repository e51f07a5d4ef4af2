//! flashsale's rules and every transaction that applies them. The API and the worker both
//! depend on this crate, so both processes apply exactly the same rules; it knows no HTTP.
//!
//! Every transaction that takes more than one row lock takes them in the order
//! [`locks`] writes down; every move of stock is in [`stock`].

pub mod audit;
mod cache;
pub mod config;
pub mod db;
pub mod error;
pub mod groups;
pub mod hold_groups;
pub mod holds;
pub mod jobs;
pub mod letting_go;
pub mod live;
pub mod locks;
pub mod metrics;
pub mod order_groups;
pub mod orders;
pub mod payment_groups;
pub mod payments;
pub mod products;
pub mod refunds;
pub mod sales;
pub mod settlement;
pub mod stock;
pub mod upkeep;

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::{config::RulesConfig, db::Db, jobs::JobQueue};

pub use cache::ProductCache;
pub use error::{Error, Result};

/// Idempotency keys longer than this are refused.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Everything a service call needs; cheap to clone.
#[derive(Clone)]
pub struct Service {
    /// The database.
    pub db: Db,
    /// The business rules in force.
    pub rules: Arc<RulesConfig>,
    /// This process's cache of product answers and sold-out evidence.
    pub cache: Arc<ProductCache>,
    /// The push side of the job queue.
    pub jobs: JobQueue,
    /// Unkeyed hold requests waiting for their product's next group.
    hold_groups: Arc<groups::Groups<hold_groups::HoldGroup>>,
    /// Order requests waiting for the next order group.
    order_groups: Arc<groups::Groups<order_groups::OrderGroup>>,
    /// `paid` events waiting for the next payment group.
    payment_groups: Arc<groups::Groups<payment_groups::PaymentGroup>>,
    /// This process's memory of every product's sale settings.
    pub sales: Arc<sales::SaleMemory>,
    /// This process's live stock feeds.
    pub live: Arc<live::LiveStock>,
}

impl Service {
    /// A service over `db` applying `rules`, with an empty cache.
    pub fn new(db: Db, rules: RulesConfig) -> Self {
        Self {
            jobs: JobQueue::new(&db),
            db,
            rules: Arc::new(rules),
            cache: Arc::new(ProductCache::default()),
            hold_groups: Arc::default(),
            order_groups: Arc::default(),
            payment_groups: Arc::default(),
            sales: Arc::default(),
            live: Arc::default(),
        }
    }

    /// The same service serving at most `max_subscribers` live stock streams at once.
    pub fn with_live_limit(mut self, max_subscribers: usize) -> Self {
        self.live = Arc::new(live::LiveStock::new(max_subscribers));
        self
    }

    /// How long a new hold reserves its units, in milliseconds.
    fn hold_ttl_ms(&self) -> i64 {
        i64::try_from(self.rules.hold_ttl_secs).expect("bounded by config") * 1000
    }

    /// Commits `txn`. `changed`: the products whose public view it changed (stock, or a
    /// hold that counts as free or not), whose cached answers are invalidated after the
    /// commit, even when this future is dropped half way, and whose live feeds are rung.
    async fn commit_changing(
        &self,
        txn: crate::db::WriteTxn,
        changed: impl IntoIterator<Item = i64>,
    ) -> crate::Result<()> {
        let _changed: Vec<ChangedOnDrop<'_>> = changed
            .into_iter()
            .map(|id| ChangedOnDrop {
                _invalidate: self.cache.invalidate_on_drop(id),
                live: &self.live,
                id,
            })
            .collect();
        txn.commit().await?;
        Ok(())
    }

    /// Queues jobs with `push` on a task of its own, off the request's path: the answer
    /// need not wait for the job's commit. A push that is lost (the process stops first)
    /// is caught by the sweep, like any failed push.
    fn push_later<F>(&self, push: impl FnOnce(Service) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(push(self.clone()));
    }

    /// How long a pending order may wait for its payment, in milliseconds.
    pub(crate) fn order_payment_ttl_ms(&self) -> i64 {
        i64::try_from(self.rules.order_payment_ttl_secs).expect("bounded by config") * 1000
    }

    /// The payment cutoff at `now_ms`: an order made at or before it and still unpaid is
    /// past its payment deadline.
    pub(crate) fn payment_cutoff_ms(&self, now_ms: i64) -> i64 {
        now_ms - self.order_payment_ttl_ms()
    }
}

/// Taken just before the commit of a change to a product: once the commit is done, or its
/// future dropped half way (a client that went away), invalidates the product's cached
/// answer and rings its live feed. Doing so after a commit that failed is harmless.
struct ChangedOnDrop<'a> {
    _invalidate: cache::InvalidateOnDrop<'a>,
    live: &'a live::LiveStock,
    id: i64,
}

impl Drop for ChangedOnDrop<'_> {
    fn drop(&mut self) {
        self.live.changed(self.id);
    }
}

/// Now, in Unix milliseconds: the one clock every rule is evaluated against.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Converts stored Unix milliseconds to a timestamp for the API.
pub fn to_datetime(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).expect("stored timestamps are in range")
}

/// Hex SHA-256 of the request fields that define "the same request" for an idempotency key.
fn request_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Checks an idempotency key: 1 to 255 visible ASCII characters.
fn validate_idempotency_key(field: &str, key: &str) -> crate::Result<()> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(crate::Error::validation(
            field,
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters long"),
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(crate::Error::validation(
            field,
            "must contain only visible ASCII characters",
        ));
    }
    Ok(())
}

/// `true` when a unique constraint refused the statement.
fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
