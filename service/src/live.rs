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
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt, stream};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use crate::{
    Error, Result, Service, metrics::metrics, now_ms, products::ProductView, sales::SaleState,
};

/// Least time between two loads of one product's feed, so between two events.
pub const COALESCE: Duration = Duration::from_millis(200);
/// Longest time between two loads of a watched product: bounds how late a change made by
/// another process, or by the clock, reaches this process's subscribers.
pub const POLL: Duration = Duration::from_millis(500);
/// Default of `LIVE_MAX_SUBSCRIBERS`.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 20_000;

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

/// One watched product: its latest view, the bell this process rings on a change, and
/// whether the next load must be published even if it equals the latest view.
struct Feed {
    latest: watch::Sender<Arc<LiveView>>,
    changed: Notify,
    /// Set when a subscriber joined with a view of its own that differs from the latest:
    /// one of the two is older, and only the next load tells which.
    republish: AtomicBool,
}

/// This process's feeds, by product id, and its count of subscribers.
pub struct LiveStock {
    feeds: Mutex<HashMap<i64, Arc<Feed>>>,
    closing: watch::Sender<bool>,
    /// Open streams. A stream lives as long as its client wants: bounded, so that streams
    /// cannot take every descriptor the rest of the API needs.
    subscribers: AtomicUsize,
    max_subscribers: usize,
}

impl Default for LiveStock {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SUBSCRIBERS)
    }
}

impl LiveStock {
    /// A hub serving at most `max_subscribers` streams at once.
    pub fn new(max_subscribers: usize) -> Self {
        Self {
            feeds: Mutex::default(),
            closing: watch::Sender::new(false),
            subscribers: AtomicUsize::new(0),
            max_subscribers,
        }
    }

    /// The feeds; a panic elsewhere while holding the lock leaves the map usable (every
    /// change to it is one insert or one remove).
    fn feeds(&self) -> MutexGuard<'_, HashMap<i64, Arc<Feed>>> {
        self.feeds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rings product `id`'s feed, if it is watched: a change to it was committed here.
    pub fn changed(&self, id: i64) {
        let feed = self.feeds().get(&id).cloned();
        if let Some(feed) = feed {
            feed.changed.notify_one();
        }
    }

    /// Ends every stream and feed, and refuses new ones: the process is shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Subscribes to product `id`'s feed with `first`, the view the subscriber is shown
    /// first, making the feed from it if the product is not watched yet; a feed made now
    /// is returned too: its task must be started. Refused when the process serves as many
    /// streams as it may, or is shutting down.
    fn subscribe(
        self: &Arc<Self>,
        id: i64,
        first: &Arc<LiveView>,
    ) -> Result<(Subscriber, Option<Arc<Feed>>)> {
        if *self.closing.borrow() {
            return Err(Error::Unavailable("the server is shutting down"));
        }
        let counted = Counted::new(self)?;
        let mut feeds = self.feeds();
        if let Some(feed) = feeds.get(&id) {
            if **feed.latest.borrow() != **first {
                feed.republish.store(true, Ordering::Release);
                feed.changed.notify_one();
            }
            return Ok(((feed.latest.subscribe(), counted), None));
        }
        let feed = Arc::new(Feed {
            latest: watch::Sender::new(first.clone()),
            changed: Notify::new(),
            republish: AtomicBool::new(false),
        });
        // A change committed after `first` was read rang no feed: load once soon.
        feed.changed.notify_one();
        feeds.insert(id, feed.clone());
        Ok(((feed.latest.subscribe(), counted), Some(feed)))
    }

    /// Forgets product `id`'s feed unless someone subscribed again; `true` when it did.
    fn forget_if_unwatched(&self, id: i64, feed: &Arc<Feed>) -> bool {
        let mut feeds = self.feeds();
        // Subscribing happens under this lock, so the count cannot grow behind this check.
        let unwatched = feed.latest.receiver_count() == 0;
        if unwatched {
            forget(&mut feeds, id, feed);
        }
        unwatched
    }
}

/// Removes `feed` from `feeds` if it is still product `id`'s.
fn forget(feeds: &mut HashMap<i64, Arc<Feed>>, id: i64, feed: &Arc<Feed>) {
    if feeds.get(&id).is_some_and(|f| Arc::ptr_eq(f, feed)) {
        feeds.remove(&id);
    }
}

/// Removes its feed from the hub when the feed's task ends, however it ends: its sender
/// goes with it, so every stream of the feed ends too (and its clients reconnect) rather
/// than wait for a task that is gone.
struct ForgetOnExit {
    live: Arc<LiveStock>,
    id: i64,
    feed: Arc<Feed>,
}

impl Drop for ForgetOnExit {
    fn drop(&mut self) {
        forget(&mut self.live.feeds(), self.id, &self.feed);
    }
}

/// A subscriber's end of a feed, and its place in the count.
type Subscriber = (watch::Receiver<Arc<LiveView>>, Counted);

/// Counts a subscriber, in the hub and in the `live_subscribers` gauge, while it lives.
struct Counted(Arc<LiveStock>);

impl Counted {
    /// Takes a place for one more subscriber, if there is one left.
    fn new(live: &Arc<LiveStock>) -> Result<Self> {
        let max = live.max_subscribers;
        live.subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Error::TooManySubscribers(max))?;
        metrics().live_subscribers.inc();
        Ok(Self(live.clone()))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::AcqRel);
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
        // From the cache, which a change committed here has already invalidated: never
        // older than what `GET` answers, which the feed may be for up to one load.
        let first = LiveView::now(self.product(id).await?);
        let ((latest, counted), new_feed) = self.live.subscribe(id, &first)?;
        if let Some(feed) = new_feed {
            tokio::spawn(self.clone().run_feed(id, feed));
        }
        let subscriber = (latest, self.live.closing.subscribe(), counted);
        Ok(stream::once(async move { first }).chain(stream::unfold(
            subscriber,
            |(mut latest, mut closing, counted)| async move {
                tokio::select! {
                    changed = latest.changed() => changed.ok()?,
                    _ = closing.wait_for(|c| *c) => return None,
                }
                let view = latest.borrow_and_update().clone();
                Some((view, (latest, closing, counted)))
            },
        )))
    }

    /// The task behind product `id`'s feed: reloads on a local change or every [`POLL`], at
    /// most once per [`COALESCE`], and publishes what differs.
    async fn run_feed(self, id: i64, feed: Arc<Feed>) {
        let _forget = ForgetOnExit {
            live: self.live.clone(),
            id,
            feed: feed.clone(),
        };
        let mut closing = self.live.closing.subscribe();
        // Loads start at least COALESCE apart, and so do publications (a slow load
        // followed by a fast one must not bring two events closer).
        let mut loaded_at = Instant::now();
        let mut published_at = loaded_at;
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
            tokio::time::sleep_until(loaded_at.max(published_at) + COALESCE).await;
            // While PostgreSQL is known to be unreachable, the subscribers keep the last
            // view and no pool slot is spent waiting.
            if self.db.is_down() {
                continue;
            }
            loaded_at = Instant::now();
            match self.load_product(id).await {
                Ok(Some(product)) => {
                    if publish(&feed, LiveView::now(product)) {
                        published_at = Instant::now();
                    }
                }
                Ok(None) => {
                    tracing::warn!(product_id = id, "a watched product is gone");
                    return;
                }
                // The subscribers keep the last view; the next poll tries again.
                Err(e) => tracing::warn!(product_id = id, error = %e, "live stock reload failed"),
            }
        }
    }
}

/// Hands `view` to `feed`'s subscribers if it differs from the latest, or if a subscriber
/// asked for it to be sent again; `true` when it was.
fn publish(feed: &Feed, view: Arc<LiveView>) -> bool {
    let republish = feed.republish.swap(false, Ordering::AcqRel);
    let published = feed.latest.send_if_modified(|latest| {
        let send = republish || **latest != *view;
        if send {
            *latest = view;
        }
        send
    });
    if published {
        metrics().live_events.inc();
    }
    published
}
