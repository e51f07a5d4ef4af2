//! Background jobs, their queue, and pushing them. The job types live here, in the crate
//! both processes share, because apalis names a queue after its job type.
//!
//! Jobs are pushed after the transaction that calls for them commits, on a task of their
//! own so that no answer waits for them (`ExpireHold` within a quarter second, one job for
//! all the holds due in the same second): apalis pushes through its own connection, not
//! ours, so a crash between commit and push can lose a push. Nothing depends on it: expiry
//! is enforced by every query, and the periodic sweep finds overdue holds and waiting
//! payments from the data itself.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use apalis::prelude::{Task, TaskBuilder, TaskSink};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use sea_orm::DbBackend;
use serde::{Deserialize, Serialize};

use crate::db::Db;

/// Marks holds `expired` once their time is up, unless they were ordered or paid. One job
/// covers the holds reserved together, which all expire at the same moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ExpireHoldStored")]
pub struct ExpireHold {
    /// The holds reserved together.
    pub hold_ids: Vec<i64>,
}

/// `ExpireHold` as stored: jobs queued by earlier versions name a single hold.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpireHoldStored {
    Holds { hold_ids: Vec<i64> },
    Hold { hold_id: i64 },
}

impl From<ExpireHoldStored> for ExpireHold {
    fn from(stored: ExpireHoldStored) -> Self {
        match stored {
            ExpireHoldStored::Holds { hold_ids } => Self { hold_ids },
            ExpireHoldStored::Hold { hold_id } => Self {
                hold_ids: vec![hold_id],
            },
        }
    }
}

/// Applies payments recorded for a hold before its order existed: queued when the order
/// is created, and when a `paid` pins the hold, due when the hold would have expired (if no
/// order came by then, the job makes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckPendingWebhook {
    /// The hold whose payments are to be applied.
    pub hold_id: i64,
}

/// A job payload and the apalis queue it is stored under.
pub trait Queued {
    /// The queue's name in apalis's tables. Written out rather than left to apalis's
    /// default, the payload type's path, which changes whenever the type moves and would
    /// strand the jobs already queued under the old name.
    const QUEUE: &'static str;
}

impl Queued for ExpireHold {
    const QUEUE: &'static str = "api::jobs::ExpireHold";
}

impl Queued for CheckPendingWebhook {
    const QUEUE: &'static str = "api::jobs::CheckPendingWebhook";
}

/// Attempts a job gets before apalis stops re-running it; the sweep covers the rest.
pub const MAX_ATTEMPTS: usize = 10;

/// The apalis storages of this database, one per job.
#[derive(Clone)]
pub struct JobQueue {
    expire: Storage<ExpireHold>,
    check: Storage<CheckPendingWebhook>,
    /// Holds whose expiry is yet to be scheduled, by the second their job is due.
    expiring: Arc<Mutex<BTreeMap<u64, Vec<i64>>>>,
}

/// How long holds gather before their expiry is scheduled: every hold that expires in one
/// second shares one job, instead of each group of holds pushing its own (a transaction
/// of its own, as many as the groups).
const EXPIRY_BATCH: Duration = Duration::from_millis(250);

/// Most holds in one `ExpireHold` job: the job names them all in one statement.
const MAX_HOLDS_PER_JOB: usize = 512;

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobQueue")
    }
}

/// Seconds after `expires_at` at which an `ExpireHold` runs: apalis schedules in whole
/// seconds and may start a job up to a second early.
const EXPIRY_SLACK_SECS: u64 = 1;

impl JobQueue {
    /// The storages of `db`'s back end; apalis's tables are set up by [`setup`].
    pub fn new(db: &Db) -> Self {
        Self {
            expire: Storage::new(db),
            check: Storage::new(db),
            expiring: Arc::default(),
        }
    }

    /// Schedules the expiry of holds `hold_ids`, all due at `expires_at_ms`, within
    /// [`EXPIRY_BATCH`], together with the other holds due in the same second.
    pub fn expire_holds(&self, db: &Db, hold_ids: Vec<i64>, expires_at_ms: i64) {
        let first = {
            let mut expiring = self.expiring.lock().unwrap_or_else(PoisonError::into_inner);
            let first = expiring.is_empty();
            expiring
                .entry(due_at(expires_at_ms))
                .or_default()
                .extend(hold_ids);
            first
        };
        // The first holds of a batch start its push; the others join it meanwhile.
        if first {
            let (queue, db) = (self.clone(), db.clone());
            tokio::spawn(async move {
                tokio::time::sleep(EXPIRY_BATCH).await;
                queue.push_expiring(&db).await;
            });
        }
    }

    /// Pushes one `ExpireHold` job per due second (and per [`MAX_HOLDS_PER_JOB`]) for the
    /// holds gathered so far.
    async fn push_expiring(&self, db: &Db) {
        let batch =
            std::mem::take(&mut *self.expiring.lock().unwrap_or_else(PoisonError::into_inner));
        for (due, hold_ids) in batch {
            for chunk in hold_ids.chunks(MAX_HOLDS_PER_JOB) {
                self.push_expiry(db, chunk.to_vec(), due).await;
            }
        }
    }

    /// Pushes the `ExpireHold` job of holds `hold_ids`, due at `due` (Unix seconds).
    async fn push_expiry(&self, db: &Db, hold_ids: Vec<i64>, due: u64) {
        let Some(&hold_id) = hold_ids.first() else {
            return;
        };
        let task = TaskBuilder::new(ExpireHold { hold_ids })
            .run_at_timestamp(due)
            // A hold is in one job only, so its first hold names the job.
            .idempotency_key(format!("expire-holds-{hold_id}"))
            .max_attempts(MAX_ATTEMPTS)
            .build();
        let result = in_turn(db, self.expire.push(task)).await;
        report("ExpireHold", hold_id, result);
    }

    /// Asks the worker to apply any payment recorded for `hold_id` before its order.
    pub async fn check_pending_webhook(&self, db: &Db, hold_id: i64) {
        let task = TaskBuilder::new(CheckPendingWebhook { hold_id })
            .idempotency_key(format!("check-webhook-{hold_id}"))
            .max_attempts(MAX_ATTEMPTS)
            .build();
        let result = in_turn(db, self.check.push(task)).await;
        report("CheckPendingWebhook", hold_id, result);
    }

    /// Asks the worker to make the order of the paid hold `hold_id` if none exists by the
    /// time it would have expired (`expires_at_ms`), and to apply its payments.
    pub async fn complete_paid_hold(&self, db: &Db, hold_id: i64, expires_at_ms: i64) {
        let task = TaskBuilder::new(CheckPendingWebhook { hold_id })
            .run_at_timestamp(due_at(expires_at_ms))
            .idempotency_key(format!("complete-paid-hold-{hold_id}"))
            .max_attempts(MAX_ATTEMPTS)
            .build();
        let result = in_turn(db, self.check.push(task)).await;
        report("CheckPendingWebhook", hold_id, result);
    }
}

/// When a job due at `at_ms` is scheduled, in Unix seconds: apalis schedules in whole
/// seconds and may start a job up to a second early.
fn due_at(at_ms: i64) -> u64 {
    let due_secs = (at_ms + 999) / 1000;
    u64::try_from(due_secs).unwrap_or(0) + EXPIRY_SLACK_SECS
}

/// The storage of job `J` in this database's back end. The two back ends' storages are
/// different types with the same API.
#[derive(Clone)]
enum Storage<J> {
    Sqlite(SqliteStorage<J>),
    Postgres(PostgresStorage<J>),
}

impl<J: Queued> Storage<J> {
    fn new(db: &Db) -> Self {
        match db.backend() {
            DbBackend::Postgres => Self::Postgres(
                PostgresStorage::new(db.conn.get_postgres_connection_pool())
                    .with_config(apalis_postgres::Config::default().queue(J::QUEUE)),
            ),
            _ => Self::Sqlite(
                SqliteStorage::new(db.conn.get_sqlite_connection_pool())
                    .with_config(apalis_sqlite::Config::default().queue(J::QUEUE)),
            ),
        }
    }

    /// Queues `task`. `K`, the storages' kind, is apalis's: rustc infers it.
    async fn push<K>(&self, task: Task<J>) -> Result<(), String>
    where
        SqliteStorage<J>: TaskSink<J, K, Error: std::fmt::Display> + Clone,
        PostgresStorage<J>: TaskSink<J, K, Error: std::fmt::Display> + Clone,
    {
        // The two arms' errors are different types.
        match self {
            Self::Sqlite(storage) => storage
                .clone()
                .push_task(task)
                .await
                .map_err(|e| e.to_string()),
            Self::Postgres(storage) => storage
                .clone()
                .push_task(task)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// Runs `push` in this process's turn to write (SQLite). A push that cannot get its turn
/// in time is lost like any failed push: the sweep catches what it would have done.
async fn in_turn(db: &Db, push: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    let _gate = db.write_gate().await.map_err(|e| e.to_string())?;
    push.await
}

/// Logs how pushing job `job` for `hold_id` went.
fn report(job: &str, hold_id: i64, result: Result<(), String>) {
    match result {
        Ok(()) => tracing::debug!(job, hold_id, "job queued"),
        // PostgreSQL refuses a second job with the same key; SQLite ignores it. Either way
        // the job is queued already.
        Err(e) if e.contains("duplicate key") || e.contains("unique") => {
            tracing::debug!(job, hold_id, "job already queued");
        }
        Err(e) => {
            tracing::warn!(job, hold_id, error = %e, "could not queue job; the sweep will do its work")
        }
    }
}

/// Creates or upgrades apalis's own tables.
pub async fn setup(db: &Db) -> Result<(), sea_orm::DbErr> {
    let result = match db.backend() {
        DbBackend::Postgres => {
            // sqlx's migrator takes its own advisory lock on PostgreSQL.
            PostgresStorage::migrations()
                .run(db.conn.get_postgres_connection_pool())
                .await
        }
        // Not `SqliteStorage::setup`: it would set `synchronous = OFF` on a shared connection.
        _ => {
            SqliteStorage::migrations()
                .run(db.conn.get_sqlite_connection_pool())
                .await
        }
    };
    result.map_err(|e| sea_orm::DbErr::Custom(format!("job queue setup: {e}")))
}

/// How often the worker polls for due jobs.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expire_hold_reads_both_stored_shapes() {
        let new: ExpireHold = serde_json::from_str(r#"{"hold_ids":[3,4]}"#).unwrap();
        assert_eq!(new.hold_ids, [3, 4]);
        let old: ExpireHold = serde_json::from_str(r#"{"hold_id":7}"#).unwrap();
        assert_eq!(old.hold_ids, [7]);
        let round_trip: ExpireHold =
            serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(round_trip, new);
    }
}
