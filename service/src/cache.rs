//! In-process cache of `GET /products/{id}` answers.
//!
//! An entry lives at most [`TTL`], well inside the one second in which other processes'
//! changes (and hold expiries) must become visible. A process that changes a product's
//! stock calls [`ProductCache::invalidate`] after commit: that bumps the entry's generation,
//! so a read that began before the change can never store its older value afterwards.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::products::ProductView;

/// How long a cached answer may be served.
pub const TTL: Duration = Duration::from_millis(500);
/// Longest time a sold-out answer may come from memory: other processes' releases must
/// be seen within a second.
pub const SHORT_FOR: Duration = Duration::from_millis(900);
/// Bound on the number of products remembered (ids that do not exist included).
const MAX_ENTRIES: usize = 100_000;

struct Slot {
    /// `epoch` at this product's last invalidation.
    invalidated_at: u64,
    value: Option<(Option<ProductView>, Instant)>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<i64, Slot>,
    /// Products known to have at most `available` units free: (available, when that was
    /// read, until when it may be believed).
    short: HashMap<i64, (i64, Instant, Instant)>,
    /// Counts invalidations, of any product.
    epoch: u64,
    /// Slots evicted to bound memory forgot when they were invalidated: treat them as
    /// invalidated at the eviction's epoch.
    evicted_at: u64,
}

impl Inner {
    fn invalidated_at(&self, id: i64) -> u64 {
        self.slots
            .get(&id)
            .map_or(self.evicted_at, |s| s.invalidated_at)
    }

    /// Makes room by dropping expired entries; `false` when still full.
    fn make_room(&mut self) -> bool {
        if self.slots.len() < MAX_ENTRIES {
            return true;
        }
        self.slots
            .retain(|_, s| s.value.as_ref().is_some_and(|(_, at)| at.elapsed() < TTL));
        self.evicted_at = self.epoch;
        self.slots.len() < MAX_ENTRIES
    }
}

/// Maps product id to its last answer (`None`: no such product).
#[derive(Default)]
pub struct ProductCache {
    inner: Mutex<Inner>,
}

/// A miss: the caller loads the value and hands it back with this ticket.
pub struct Ticket {
    id: i64,
    epoch: u64,
}

impl ProductCache {
    /// A fresh cached answer, or a ticket to store one.
    pub fn get(&self, id: i64) -> Result<Option<ProductView>, Ticket> {
        let inner = self.inner.lock().expect("cache lock poisoned");
        match inner.slots.get(&id).and_then(|s| s.value.as_ref()) {
            Some((value, at)) if at.elapsed() < TTL => Ok(value.clone()),
            _ => Err(Ticket {
                id,
                epoch: inner.epoch,
            }),
        }
    }

    /// Stores a value loaded after [`get`](Self::get) missed, unless the product was
    /// invalidated since the ticket was issued.
    pub fn put(&self, ticket: Ticket, value: Option<ProductView>, loaded_at: Instant) {
        let mut inner = self.inner.lock().expect("cache lock poisoned");
        if ticket.epoch < inner.invalidated_at(ticket.id) {
            return;
        }
        if !inner.slots.contains_key(&ticket.id) && !inner.make_room() {
            return;
        }
        let invalidated_at = inner.invalidated_at(ticket.id);
        inner.slots.insert(
            ticket.id,
            Slot {
                invalidated_at,
                value: Some((value, loaded_at)),
            },
        );
    }

    /// A ticket taken before reading stock, for [`note_short`](Self::note_short).
    pub fn ticket(&self, id: i64) -> Ticket {
        let inner = self.inner.lock().expect("cache lock poisoned");
        Ticket {
            id,
            epoch: inner.epoch,
        }
    }

    /// Remembers that the product had only `available` units free, as read no earlier
    /// than `read_at` (taken after `ticket`), for `valid_for` from `read_at` (capped at
    /// [`SHORT_FOR`]; the caller caps it at the next hold expiry), unless its stock changed
    /// in this process since the ticket. A note read earlier never replaces a later one.
    pub fn note_short(
        &self,
        ticket: Ticket,
        available: i64,
        read_at: Instant,
        valid_for: Duration,
    ) {
        let mut inner = self.inner.lock().expect("cache lock poisoned");
        if ticket.epoch < inner.invalidated_at(ticket.id) {
            return;
        }
        if inner.short.len() >= MAX_ENTRIES {
            let now = Instant::now();
            inner.short.retain(|_, (_, _, until)| now < *until);
            if inner.short.len() >= MAX_ENTRIES {
                return;
            }
        }
        if inner
            .short
            .get(&ticket.id)
            .is_some_and(|&(_, at, _)| at > read_at)
        {
            return;
        }
        let until = read_at + valid_for.min(SHORT_FOR);
        inner.short.insert(ticket.id, (available, read_at, until));
    }

    /// `Some(available)` when the product is known to have fewer than `qty` units free.
    pub fn known_short(&self, id: i64, qty: i64) -> Option<i64> {
        let mut inner = self.inner.lock().expect("cache lock poisoned");
        match inner.short.get(&id) {
            Some(&(available, _, until)) if Instant::now() < until => {
                (qty > available).then_some(available)
            }
            Some(_) => {
                inner.short.remove(&id);
                None
            }
            None => None,
        }
    }

    /// A guard that invalidates product `id` when dropped; see [`InvalidateOnDrop`].
    pub fn invalidate_on_drop(&self, id: i64) -> InvalidateOnDrop<'_> {
        InvalidateOnDrop { cache: self, id }
    }

    /// Forgets product `id`; reads that started earlier will not store their value.
    pub fn invalidate(&self, id: i64) {
        let mut inner = self.inner.lock().expect("cache lock poisoned");
        inner.short.remove(&id);
        inner.epoch += 1;
        let epoch = inner.epoch;
        if !inner.slots.contains_key(&id) {
            inner.make_room();
        }
        inner.slots.insert(
            id,
            Slot {
                invalidated_at: epoch,
                value: None,
            },
        );
    }
}

/// Invalidates its product when dropped. Taken just before the commit of a change to the
/// product, it invalidates once the commit is done, and also when the caller's future is
/// dropped while the commit is under way (a client that went away): the invalidation
/// never depends on the request living on. Invalidating after a commit that failed is
/// harmless.
#[must_use = "the product is invalidated when this is dropped"]
pub struct InvalidateOnDrop<'a> {
    cache: &'a ProductCache,
    id: i64,
}

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        self.cache.invalidate(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(available: i64) -> ProductView {
        ProductView {
            id: 1,
            name: "x".into(),
            price_cents: 1,
            total_stock: 10,
            available_stock: available,
            sale: Default::default(),
        }
    }

    #[test]
    fn a_read_that_started_before_an_invalidation_is_not_stored() {
        let cache = ProductCache::default();
        let ticket = cache.get(1).unwrap_err();
        cache.invalidate(1);
        cache.put(ticket, Some(view(9)), Instant::now());
        assert!(cache.get(1).is_err(), "stale value must not be cached");
    }

    #[test]
    fn a_stored_value_is_served_until_invalidated() {
        let cache = ProductCache::default();
        let ticket = cache.get(1).unwrap_err();
        cache.put(ticket, Some(view(7)), Instant::now());
        assert_eq!(
            cache.get(1).ok().flatten().map(|v| v.available_stock),
            Some(7)
        );
        cache.invalidate(1);
        assert!(cache.get(1).is_err());
    }

    #[test]
    fn a_read_of_another_product_is_not_affected_by_an_invalidation() {
        let cache = ProductCache::default();
        let ticket = cache.get(2).unwrap_err();
        cache.invalidate(1);
        cache.put(ticket, Some(view(5)), Instant::now());
        assert!(cache.get(2).is_ok());
    }

    #[test]
    fn eviction_does_not_let_a_stale_read_in() {
        let cache = ProductCache::default();
        let stale = cache.get(1).unwrap_err();
        cache.invalidate(1);
        {
            let mut inner = cache.inner.lock().unwrap();
            for id in 10..(10 + MAX_ENTRIES as i64) {
                inner.slots.insert(
                    id,
                    Slot {
                        invalidated_at: 0,
                        value: None,
                    },
                );
            }
            assert!(inner.make_room());
            assert!(
                !inner.slots.contains_key(&1),
                "the invalidated slot was evicted"
            );
        }
        cache.put(stale, Some(view(9)), Instant::now());
        assert!(
            cache.get(1).is_err(),
            "stale value must not be cached after eviction"
        );
    }

    #[test]
    fn a_sold_out_note_answers_until_the_stock_changes_here() {
        let cache = ProductCache::default();
        cache.note_short(cache.ticket(1), 0, Instant::now(), Duration::from_secs(5));
        assert_eq!(cache.known_short(1, 1), Some(0));
        cache.invalidate(1);
        assert_eq!(cache.known_short(1, 1), None);
    }

    #[test]
    fn a_sold_out_note_taken_before_a_change_is_not_kept() {
        let cache = ProductCache::default();
        let ticket = cache.ticket(1);
        cache.invalidate(1);
        cache.note_short(ticket, 0, Instant::now(), Duration::from_secs(5));
        assert_eq!(cache.known_short(1, 1), None);
    }

    #[test]
    fn a_sold_out_note_expires_and_only_refuses_what_it_cannot_give() {
        let cache = ProductCache::default();
        cache.note_short(cache.ticket(1), 2, Instant::now(), Duration::ZERO);
        assert_eq!(cache.known_short(1, 3), None, "expired at once");
        cache.note_short(cache.ticket(1), 2, Instant::now(), Duration::from_secs(5));
        assert_eq!(cache.known_short(1, 2), None, "2 units may still be free");
        assert_eq!(cache.known_short(1, 3), Some(2));
    }

    #[test]
    fn a_commit_whose_future_is_dropped_still_invalidates() {
        let cache = ProductCache::default();
        let ticket = cache.get(1).unwrap_err();
        cache.put(ticket, Some(view(7)), Instant::now());
        let commit = async {
            let _invalidate = cache.invalidate_on_drop(1);
            std::future::pending::<()>().await;
        };
        // Polled once (the commit is under way), then dropped like a request whose client
        // went away.
        let mut commit = Box::pin(commit);
        let waker = std::task::Waker::noop();
        let _ = commit
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        assert!(cache.get(1).is_ok(), "not yet invalidated");
        drop(commit);
        assert!(cache.get(1).is_err(), "invalidated when dropped");
    }

    #[test]
    fn an_old_value_expires() {
        let cache = ProductCache::default();
        let ticket = cache.get(1).unwrap_err();
        cache.put(ticket, Some(view(7)), Instant::now() - TTL);
        assert!(cache.get(1).is_err());
    }
}
