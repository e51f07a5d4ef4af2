//! Live stock: one feed per watched product per process, fanned out to every subscriber.
//!
//! A feed is a task that owns the product's latest public view in a `watch` channel.
//! It reloads the view from the database when this process commits a change to the
//! product (at once, but at most once per [`COALESCE`]) and every [`POLL`] otherwise, which
//! brings changes made by other processes and by time alone (a hold passing its expiry, a
//! sale starting). Subscribers only read the channel: they cost no database work, and one
//! that reads slowly skips to the latest view (the stream carries state, not a log).
//! The feed ends when its last subscriber leaves, and every feed and stream ends when the
//! process closes the hub on shutdown.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, stream};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use crate::{Result, Service, metrics::metrics, now_ms, products::ProductView, sales::SaleState};

/// Least time between two loads of one product's feed, so between two events.
pub const COALESCE: Duration = Duration::from_millis(200);
/// Longest time between two loads of a watched product: bounds how late a change made by
/// another process, or by the clock, reaches this process's subscribers.
pub const POLL: Duration = Duration::from_millis(500);

/// What a subscriber sees: the view, and its sale's state when it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveView {
    /// The product as `GET /products/{id}` shows it.
    pub product: ProductView,
    /// Its sale state at the time of the load.
    pub sale_state: SaleState,
}

impl LiveView {
    fn now(product: ProductView) -> Arc<Self> {
        let sale_state = product.sale.state(now_ms());
        Arc::new(Self {
            product,
            sale_state,
        })
    }
}

/// One watched product: its latest view, and the bell this process rings on a change.
struct Feed {
    latest: watch::Sender<Arc<LiveView>>,
    changed: Notify,
}

/// This process's feeds, by product id.
pub struct LiveStock {
    feeds: Mutex<HashMap<i64, Arc<Feed>>>,
    closing: watch::Sender<bool>,
}

impl Default for LiveStock {
    fn default() -> Self {
        Self {
            feeds: Mutex::default(),
            closing: watch::Sender::new(false),
        }
    }
}

impl LiveStock {
    /// Rings product `id`'s feed, if it is watched: a change to it was committed here.
    pub fn changed(&self, id: i64) {
        let feed = self
            .feeds
            .lock()
            .expect("feeds lock poisoned")
            .get(&id)
            .cloned();
        if let Some(feed) = feed {
            feed.changed.notify_one();
        }
    }

    /// Ends every stream and feed, and refuses new ones: the process is shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Subscribes to product `id`'s feed, making it from `first` if it is not watched yet;
    /// a feed made now is returned too: its task must be started.
    fn subscribe(
        &self,
        id: i64,
        first: ProductView,
    ) -> (watch::Receiver<Arc<LiveView>>, Option<Arc<Feed>>) {
        let mut feeds = self.feeds.lock().expect("feeds lock poisoned");
        if let Some(feed) = feeds.get(&id) {
            return (feed.latest.subscribe(), None);
        }
        let feed = Arc::new(Feed {
            latest: watch::Sender::new(LiveView::now(first)),
            changed: Notify::new(),
        });
        feeds.insert(id, feed.clone());
        (feed.latest.subscribe(), Some(feed))
    }

    /// Forgets product `id`'s feed unless someone subscribed again; `true` when it did.
    fn forget_if_unwatched(&self, id: i64, feed: &Feed) -> bool {
        let mut feeds = self.feeds.lock().expect("feeds lock poisoned");
        // Subscribing happens under this lock, so the count cannot grow behind this check.
        let unwatched = feed.latest.receiver_count() == 0;
        if unwatched {
            feeds.remove(&id);
        }
        unwatched
    }
}

/// Counts a subscriber in the `live_subscribers` gauge while it lives.
struct Counted;

impl Counted {
    fn new() -> Self {
        metrics().live_subscribers.inc();
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics().live_subscribers.dec();
    }
}

impl Service {
    /// Product `id`'s views: the current one at once, then one per change, until the
    /// subscriber goes or the process shuts down. 404 before anything else for an unknown
    /// product.
    pub async fn watch_product(
        &self,
        id: i64,
    ) -> Result<impl Stream<Item = Arc<LiveView>> + use<>> {
        let first = self.product(id).await?;
        let (latest, new_feed) = self.live.subscribe(id, first);
        if let Some(feed) = new_feed {
            tokio::spawn(self.clone().run_feed(id, feed));
        }
        let subscriber = (latest, self.live.closing.subscribe(), Counted::new());
        Ok(stream::unfold(
            (subscriber, true),
            |((mut latest, mut closing, counted), first)| async move {
                if !first {
                    tokio::select! {
                        changed = latest.changed() => changed.ok()?,
                        _ = closing.wait_for(|c| *c) => return None,
                    }
                }
                let view = latest.borrow_and_update().clone();
                Some((view, ((latest, closing, counted), false)))
            },
        ))
    }

    /// The task behind product `id`'s feed: reloads on a local change or every [`POLL`], at
    /// most once per [`COALESCE`], and publishes what differs.
    async fn run_feed(self, id: i64, feed: Arc<Feed>) {
        let mut closing = self.live.closing.subscribe();
        let mut loaded_at = Instant::now();
        loop {
            tokio::select! {
                () = feed.changed.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                () = feed.latest.closed() => {
                    if self.live.forget_if_unwatched(id, &feed) {
                        return;
                    }
                    continue;
                }
                _ = closing.wait_for(|c| *c) => return,
            }
            tokio::time::sleep_until(loaded_at + COALESCE).await;
            loaded_at = Instant::now();
            match self.load_product(id).await {
                Ok(Some(product)) => {
                    let view = LiveView::now(product);
                    let published = feed.latest.send_if_modified(|latest| {
                        let differs = **latest != *view;
                        if differs {
                            *latest = view;
                        }
                        differs
                    });
                    if published {
                        metrics().live_events.inc();
                    }
                }
                Ok(None) => tracing::warn!(product_id = id, "a watched product is gone"),
                // The subscribers keep the last view; the next poll tries again.
                Err(e) => tracing::warn!(product_id = id, error = %e, "live stock reload failed"),
            }
        }
    }
}
