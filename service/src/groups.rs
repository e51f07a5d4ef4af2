//! Grouping: concurrent requests of one kind share one transaction, and each caller is
//! handed its own answer. Holds are grouped per product ([`crate::hold_groups`]), orders
//! ([`crate::order_groups`]) and `paid` payment events ([`crate::payment_groups`]) per
//! process.
//!
//! A commit costs an fsync and every statement a round trip, whatever it carries; the rate
//! of requests is the rate of group transactions times the requests per group. Each key
//! (a product, or the whole process) with waiting requests has one leader task. The
//! leader takes everything that queued while the previous group ran and runs it as the
//! next group, so the groups grow with the crowd by themselves and nobody waits for a
//! timer. Several API processes stay correct because every decision is still made in the
//! database, under the rows' locks.
//!
//! A group's transaction decides each request's fate under the locks before it writes, so
//! one request cannot abort the others, and a request answered with an error leaves
//! nothing behind.

use std::{
    collections::{HashMap, hash_map::Entry},
    panic::AssertUnwindSafe,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::FutureExt;
use sea_orm::DbBackend;
use tokio::sync::oneshot;

use crate::{Error, Result, Service, metrics::metrics};

/// Most requests in one transaction; the rest wait for the next group. Bounds how long one
/// transaction holds its locks.
pub const MAX_GROUP: usize = 512;

/// Most requests one key may have waiting for a place in a group. While the key is stuck
/// (its rows held by another transaction), requests beyond this are refused at once, so
/// the queue's memory stays bounded whatever the crowd.
pub const MAX_QUEUED: usize = 8 * MAX_GROUP;

/// A group's transaction may take this many `DB_WAIT_SECS` in all (each of its waits is
/// bounded by one) before it is abandoned.
const GROUP_DEADLINE_WAITS: u32 = 4;

/// The longest a grouped request may take, given `DB_WAIT_SECS`: its wait for a place in a
/// group, then its group's deadline. A connection cut before that (an HTTP request
/// timeout) would leave its client unaware of a change that may still commit.
pub fn longest_grouped_wait_secs(db_wait_secs: u64) -> u64 {
    (1 + u64::from(GROUP_DEADLINE_WAITS)) * db_wait_secs
}

/// A kind of request that is run in groups.
pub(crate) trait Grouped: Sized + Send + Sync + 'static {
    /// One request as its group carries it.
    type Request: Send + Sync + 'static;
    /// A request's answer when it succeeds.
    type Answer: Send + 'static;
    /// Names the kind in messages and in the group size metric.
    const KIND: &'static str;

    /// This kind's queues in `svc`.
    fn groups(svc: &Service) -> &Groups<Self>;

    /// One group's transaction for `key`: an answer per request, in order. An error fails
    /// the whole group; it is handed to [`failed`](Self::failed).
    fn run(
        svc: &Service,
        key: i64,
        group: &[Self::Request],
    ) -> impl Future<Output = Result<Vec<Result<Self::Answer>>>> + Send;

    /// The answers of a group of `n` requests whose transaction failed with `e`, nothing
    /// of it written (or, for [`Error::OutcomeUnknown`], perhaps all of it).
    fn failed(e: Error, n: usize) -> Vec<Result<Self::Answer>>;
}

/// A request waiting to join its key's next group.
struct Waiting<G: Grouped> {
    /// Identifies the request in its queue, so that it can leave it.
    id: u64,
    request: G::Request,
    reply: oneshot::Sender<Result<G::Answer>>,
}

/// The key's queue is full.
#[derive(Debug, PartialEq, Eq)]
struct QueueFull;

/// The requests of kind `G` waiting per key. A key has an entry exactly while its leader
/// task runs.
pub(crate) struct Groups<G: Grouped> {
    waiting: Mutex<HashMap<i64, Vec<Waiting<G>>>>,
    next_id: AtomicU64,
}

impl<G: Grouped> Default for Groups<G> {
    fn default() -> Self {
        Self {
            waiting: Mutex::default(),
            next_id: AtomicU64::default(),
        }
    }
}

impl<G: Grouped> Groups<G> {
    /// The map. Its critical sections cannot leave it half changed, so a panic elsewhere
    /// while it was held does not make it unusable.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<Waiting<G>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a request; returns its id, and `true` when no leader runs for this key (the
    /// caller must start one).
    fn enqueue(
        &self,
        key: i64,
        request: G::Request,
        reply: oneshot::Sender<Result<G::Answer>>,
    ) -> Result<(u64, bool), QueueFull> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting { id, request, reply };
        let mut map = self.lock();
        match map.entry(key) {
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

    /// Takes request `id` out of its key's queue. `false`: it is no longer queued, so it is
    /// part of a group whose transaction has begun or is about to.
    fn withdraw(&self, key: i64, id: u64) -> bool {
        let mut map = self.lock();
        let Some(queue) = map.get_mut(&key) else {
            return false;
        };
        let before = queue.len();
        queue.retain(|w| w.id != id);
        queue.len() < before
    }

    /// The next group, oldest first; `None` when nobody waits, in which case the leader's
    /// entry is gone and the next request starts a new leader. Requests whose caller has
    /// gone (client disconnected, or gave up waiting) are dropped, not run.
    fn next_group(&self, key: i64) -> Option<Vec<Waiting<G>>> {
        let mut map = self.lock();
        let queue = map.get_mut(&key).expect("a leader has its entry");
        queue.retain(|w| !w.reply.is_closed());
        if queue.is_empty() {
            map.remove(&key);
            return None;
        }
        let n = queue.len().min(MAX_GROUP);
        Some(queue.drain(..n).collect())
    }
}

/// Removes a leader's entry if the leader stops before it is done (a failed assertion, or
/// its task dropped), so that the requests still queued get an error instead of waiting
/// forever and the next request starts a new leader.
struct LeaderGuard<'a, G: Grouped> {
    groups: &'a Groups<G>,
    key: i64,
    /// Set when `next_group` found nobody waiting and removed the entry itself.
    finished: bool,
}

impl<G: Grouped> Drop for LeaderGuard<'_, G> {
    fn drop(&mut self) {
        // Until `finished`, the entry is this leader's: nobody else removes or replaces it.
        if !self.finished {
            self.groups.lock().remove(&self.key);
        }
    }
}

impl Service {
    /// Runs `request` as part of `key`'s next group of kind `G`.
    ///
    /// A request waits for a place in a group at most `DB_WAIT_SECS`; then it leaves the
    /// queue and is answered 503, nothing of it written. Once its group's transaction has
    /// begun, the transaction's outcome is its answer, whatever it takes: answering 503
    /// while the transaction may still commit would leave a change nobody knows of. The
    /// transaction's own waits (for a connection, a lock, SQLite's write lock) are bounded
    /// by the same setting, and it rolls back when one runs out.
    pub(crate) async fn in_group<G: Grouped>(
        &self,
        key: i64,
        request: G::Request,
    ) -> Result<G::Answer> {
        let (reply, mut answer) = oneshot::channel();
        let (id, lead) = G::groups(self)
            .enqueue(key, request, reply)
            .map_err(|QueueFull| Error::Unavailable("too many requests wait for a group"))?;
        if lead {
            let svc = self.clone();
            // A task of its own: a client that disconnects must not cancel a group's
            // transaction half way.
            tokio::spawn(async move { svc.lead_groups::<G>(key).await });
        }
        let decided = match tokio::time::timeout(self.db.wait(), &mut answer).await {
            Ok(decided) => decided,
            Err(_) if G::groups(self).withdraw(key, id) => {
                return Err(Error::Unavailable("the group queue did not move in time"));
            }
            Err(_) => answer.await,
        };
        // Err: the leader's task was dropped (the runtime is shutting down).
        decided.unwrap_or_else(|_| {
            Err(Error::OutcomeUnknown(format!(
                "the {} group was dropped",
                G::KIND
            )))
        })
    }

    /// Runs groups of kind `G` for `key` until nobody waits.
    async fn lead_groups<G: Grouped>(&self, key: i64) {
        let groups = G::groups(self);
        let mut guard = LeaderGuard {
            groups,
            key,
            finished: false,
        };
        loop {
            let Some(group) = groups.next_group(key) else {
                guard.finished = true;
                return;
            };
            metrics()
                .group_size
                .with_label_values(&[G::KIND])
                .observe(group.len() as f64);
            let (requests, replies): (Vec<_>, Vec<_>) =
                group.into_iter().map(|w| (w.request, w.reply)).unzip();
            // Each wait inside the transaction is bounded by DB_WAIT_SECS; this bounds a
            // connection that stops answering altogether (no TCP keepalive in the driver),
            // so that the key's queue in this process cannot stall for good. Dropping the
            // future rolls back a transaction whose COMMIT was not sent; after that, the
            // outcome is unknown and answered as an internal error, never as "retry".
            let deadline = GROUP_DEADLINE_WAITS * self.db.wait();
            // A failed assertion inside one group fails that group only, not the requests
            // queued behind it; the panic hook has logged it.
            let run = AssertUnwindSafe(G::run(self, key, &requests)).catch_unwind();
            let ran = match tokio::time::timeout(deadline, run).await {
                Ok(Ok(ran)) => ran,
                Ok(Err(_panic)) => Err(Error::OutcomeUnknown(format!(
                    "a {} group stopped on a failed assertion",
                    G::KIND
                ))),
                Err(_) => Err(Error::OutcomeUnknown(format!(
                    "a {} group did not end within {deadline:?}; its outcome is unknown",
                    G::KIND
                ))),
            };
            let answers = ran.unwrap_or_else(|e| {
                tracing::warn!(error = %e, details = ?e, requests = requests.len(), kind = G::KIND, "group failed");
                G::failed(e, requests.len())
            });
            assert_eq!(answers.len(), replies.len(), "one answer per request");
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may be gone (client disconnected).
                let _ = reply.send(answer);
            }
        }
    }
}

/// One failure of a group's transaction, handed to each of its `n` requests: the first
/// gets the original, the others an equivalent that keeps its meaning (retry later, the
/// outcome is unknown, or an internal error).
pub(crate) fn share_error<A>(e: Error, n: usize) -> Vec<Result<A>> {
    let copy = || match &e {
        e if e.is_unavailable() => {
            Error::Unavailable("the database did not serve this group in time")
        }
        Error::OutcomeUnknown(why) => Error::OutcomeUnknown(why.clone()),
        other => Error::Internal(other.to_string()),
    };
    let mut answers: Vec<Result<A>> = (1..n).map(|_| Err(copy())).collect();
    answers.insert(0, Err(e));
    answers
}

/// For a kind whose requests can also run one per transaction (`Answer = None`: run it
/// alone): the answers of a group whose transaction failed with `e`. When the database is
/// unavailable, or the outcome is unknown, each request is told so; any other failure may
/// be one request's doing (a deadlock, a key another process used at the same moment), so
/// each request runs alone, where its own rules decide it and no other's can fail it.
pub(crate) fn alone_unless_unavailable<A>(e: Error, n: usize) -> Vec<Result<Option<A>>> {
    if e.is_unavailable() || matches!(e, Error::OutcomeUnknown(_)) {
        return share_error(e, n);
    }
    (0..n).map(|_| Ok(None)).collect()
}

/// A statement parameter carrying `values` as one JSON array. Grouped statements take
/// their rows this way rather than as an `IN (…)` or `VALUES` list, so the statement has
/// the same text for every group size and each connection prepares it once.
pub(crate) fn json_param<T: serde::Serialize>(values: &T) -> sea_orm::Value {
    serde_json::to_string(values)
        .expect("integers and strings serialise")
        .into()
}

/// The first positional parameters of `backend`'s SQL, and the clause that locks the rows a
/// `SELECT` returns (none on SQLite, whose writing transaction holds the database's lock).
/// NO KEY UPDATE, as in [`crate::locks`]; SKIP LOCKED, so that a group never waits for a
/// row another transaction holds: that row's requests run alone instead, one busy row
/// cannot stall the whole queue, and a group can never be part of a deadlock over rows.
pub(crate) fn placeholders(backend: DbBackend) -> ([&'static str; 6], &'static str) {
    match backend {
        DbBackend::Postgres => (
            ["$1", "$2", "$3", "$4", "$5", "$6"],
            " FOR NO KEY UPDATE SKIP LOCKED",
        ),
        _ => (["?1", "?2", "?3", "?4", "?5", "?6"], ""),
    }
}

/// `column` is in the JSON array of integers in parameter `param`, in `backend`'s SQL.
pub(crate) fn among(backend: DbBackend, column: &str, param: &str) -> String {
    match backend {
        // An array, not `IN (SELECT …)`: the planner cannot see how many rows a function
        // returns, and for `IN` may scan the whole table; `= ANY` of an array is an index
        // lookup per element.
        DbBackend::Postgres => format!(
            "{column} = ANY(ARRAY(SELECT value::bigint FROM json_array_elements_text({param}::json)))"
        ),
        _ => format!("{column} IN (SELECT value FROM json_each({param}))"),
    }
}

/// `column` as a grouped statement filters on it, never searches by it. SQLite's planner,
/// which has no statistics, would otherwise search a status index and read every active
/// hold instead of the few rows the group names; `+` keeps it on those rows' keys.
pub(crate) fn filter(backend: DbBackend, column: &str) -> String {
    match backend {
        DbBackend::Postgres => column.to_owned(),
        _ => format!("+{column}"),
    }
}

/// `column` is in the JSON array of strings in parameter `param`, in `backend`'s SQL.
pub(crate) fn among_text(backend: DbBackend, column: &str, param: &str) -> String {
    match backend {
        DbBackend::Postgres => format!(
            "{column} = ANY(ARRAY(SELECT value FROM json_array_elements_text({param}::json)))"
        ),
        _ => format!("{column} IN (SELECT value FROM json_each({param}))"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind for the queue's own tests: it never runs.
    struct Probe;

    impl Grouped for Probe {
        type Request = i64;
        type Answer = ();
        const KIND: &'static str = "probe";
        fn groups(_: &Service) -> &Groups<Self> {
            unreachable!("the queue tests run no service")
        }
        async fn run(_: &Service, _: i64, _: &[i64]) -> Result<Vec<Result<()>>> {
            unreachable!("the queue tests run no group")
        }
        fn failed(e: Error, n: usize) -> Vec<Result<()>> {
            share_error(e, n)
        }
    }

    fn request(groups: &Groups<Probe>, qty: i64) -> (u64, bool, oneshot::Receiver<Result<()>>) {
        let (reply, answer) = oneshot::channel();
        let (id, lead) = groups.enqueue(1, qty, reply).expect("room in the queue");
        (id, lead, answer)
    }

    #[test]
    fn a_request_that_gives_up_before_its_group_leaves_the_queue() {
        let groups = Groups::<Probe>::default();
        let (first, lead, _a) = request(&groups, 1);
        let (_, second_leads, _b) = request(&groups, 2);
        assert!(lead && !second_leads, "the first request starts the leader");
        assert!(groups.withdraw(1, first));
        let group = groups.next_group(1).expect("one request left");
        assert_eq!(group.iter().map(|w| w.request).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_request_already_in_a_group_cannot_leave_it() {
        let groups = Groups::<Probe>::default();
        let (id, _, _answer) = request(&groups, 1);
        let group = groups.next_group(1).expect("the request");
        assert_eq!(group.len(), 1);
        assert!(
            !groups.withdraw(1, id),
            "its transaction decides its answer"
        );
    }

    #[test]
    fn the_queue_of_one_key_is_bounded() {
        let groups = Groups::<Probe>::default();
        let answers: Vec<_> = (0..MAX_QUEUED).map(|_| request(&groups, 1).2).collect();
        let (reply, _answer) = oneshot::channel();
        assert_eq!(groups.enqueue(1, 1, reply).unwrap_err(), QueueFull);
        drop(answers);
        let (reply, _answer) = oneshot::channel();
        assert!(
            groups.enqueue(1, 1, reply).is_ok(),
            "requests whose callers left make room"
        );
    }

    #[test]
    fn a_group_that_failed_for_a_member_runs_each_member_alone() {
        let deadlock = Error::Database(sea_orm::DbErr::Custom("deadlock detected".into()));
        let answers = alone_unless_unavailable::<()>(deadlock, 3);
        assert!(answers.iter().all(|a| matches!(a, Ok(None))));
        let unknown = Error::OutcomeUnknown("commit failed".into());
        let answers = alone_unless_unavailable::<()>(unknown, 2);
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Err(Error::OutcomeUnknown(_))))
        );
    }
}
