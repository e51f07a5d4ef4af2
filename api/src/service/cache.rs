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
/// Bound on the number of products remembered (ids that do not exist included).
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
struct Slot {
    generation: u64,
    value: Option<(Option<ProductView>, Instant)>,
}

/// Maps product id to its last answer (`None`: no such product).
#[derive(Default)]
pub struct ProductCache {
    slots: Mutex<HashMap<i64, Slot>>,
}

/// A miss: the caller loads the value and hands it back with this ticket.
pub struct Ticket {
    id: i64,
    generation: u64,
}

impl ProductCache {
    /// A fresh cached answer, or a ticket to store one.
    pub fn get(&self, id: i64) -> Result<Option<ProductView>, Ticket> {
        let mut slots = self.slots.lock().expect("cache lock poisoned");
        let slot = slots.entry(id).or_default();
        match &slot.value {
            Some((value, at)) if at.elapsed() < TTL => Ok(value.clone()),
            _ => Err(Ticket {
                id,
                generation: slot.generation,
            }),
        }
    }

    /// Stores a value loaded after [`get`](Self::get) missed, unless the product changed since.
    pub fn put(&self, ticket: Ticket, value: Option<ProductView>, loaded_at: Instant) {
        let mut slots = self.slots.lock().expect("cache lock poisoned");
        if slots.len() >= MAX_ENTRIES {
            slots.retain(|_, s| s.value.as_ref().is_some_and(|(_, at)| at.elapsed() < TTL));
            if slots.len() >= MAX_ENTRIES {
                return;
            }
        }
        let slot = slots.entry(ticket.id).or_default();
        if slot.generation == ticket.generation {
            slot.value = Some((value, loaded_at));
        }
    }

    /// Forgets product `id`; reads that started earlier will not store their value.
    pub fn invalidate(&self, id: i64) {
        let mut slots = self.slots.lock().expect("cache lock poisoned");
        let slot = slots.entry(id).or_default();
        slot.generation += 1;
        slot.value = None;
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
    fn an_old_value_expires() {
        let cache = ProductCache::default();
        let ticket = cache.get(1).unwrap_err();
        cache.put(ticket, Some(view(7)), Instant::now() - TTL);
        assert!(cache.get(1).is_err());
    }
}
