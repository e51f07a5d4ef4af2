//! The worker's loops: an apalis worker for each job in `jobs` (`ExpireHold`,
//! `CheckPendingWebhook`), and the periodic sweep of [`sweep`]. `flashsale-worker run`
//! runs them as their own process; `flashsale-api --with-worker` runs them beside the API
//! in one process.
//!
//! An apalis worker ends when its backend fails (a heartbeat or a fetch that cannot reach
//! the database); the monitor then starts it again, after a backoff that grows while the
//! restarts keep failing. [`Liveness`] records each worker's last heartbeat for `/ready`.

pub mod commands;
mod jobs;
pub mod metrics_server;
pub mod sweep;

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use apalis::{
    layers::retry::{
        BackoffRetryPolicy, RetryPolicy,
        backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff},
    },
    prelude::*,
};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use sea_orm::DbBackend;
use tokio::sync::watch;

use service::{
    Service,
    jobs::{CheckPendingWebhook, ExpireHold, POLL_INTERVAL, Queued},
};

use crate::jobs::Job;

/// Heartbeat of each apalis worker; jobs of a worker silent for three beats (a killed
/// process) are run again by the next worker that polls.
const HEARTBEAT: Duration = Duration::from_secs(2);
const MISSED_HEARTBEATS: usize = 3;
/// In-process retries of a failing job before apalis records the failure; the storage
/// then re-runs it until [`service::jobs::MAX_ATTEMPTS`].
const RETRIES: usize = 3;
/// Restart backoff of a job worker whose backend failed: none for the first restart, then
/// doubling from the minimum up to the maximum while no heartbeat succeeds in between.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The job workers of this process, one per job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobWorker {
    ExpireHold = 0,
    CheckPendingWebhook = 1,
}

impl JobWorker {
    /// The start of its apalis name.
    fn name(self) -> &'static str {
        match self {
            Self::ExpireHold => "expire-hold",
            Self::CheckPendingWebhook => "check-webhook",
        }
    }
}

/// What one job worker did last.
#[derive(Clone, Copy, Debug, Default)]
struct Pulse {
    /// Its last successful heartbeat (it reached its queue); `None` before the first.
    last_beat: Option<Instant>,
    /// Starts since that heartbeat; more than one means restarts that keep failing.
    starts_since_beat: u32,
}

/// Whether the job workers of this process are running: each must have reached its queue
/// within the last [`MISSED_HEARTBEATS`] heartbeats. Cheap to clone; all clones share state.
#[derive(Clone, Debug, Default)]
pub struct Liveness(Arc<Mutex<[Pulse; 2]>>);

impl Liveness {
    /// `true` while every job worker beats.
    pub fn is_up(&self) -> bool {
        let stale = HEARTBEAT * MISSED_HEARTBEATS as u32;
        self.pulses()
            .iter()
            .all(|p| p.last_beat.is_some_and(|t| t.elapsed() <= stale))
    }

    fn pulses(&self) -> std::sync::MutexGuard<'_, [Pulse; 2]> {
        // A panic elsewhere cannot leave a `Pulse` half-written: use it anyway.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn observe(&self, worker: JobWorker, event: &Event) {
        let pulse = &mut self.pulses()[worker as usize];
        match event {
            Event::HeartBeat => {
                pulse.last_beat = Some(Instant::now());
                pulse.starts_since_beat = 0;
            }
            Event::Start => pulse.starts_since_beat += 1,
            _ => {}
        }
    }

    /// How long `worker` waits before its next start.
    fn restart_delay(&self, worker: JobWorker) -> Duration {
        backoff(self.pulses()[worker as usize].starts_since_beat)
    }
}

/// The wait before a start that follows `failed` failed starts in a row.
fn backoff(failed: u32) -> Duration {
    match failed {
        0 => Duration::ZERO,
        n => RESTART_BACKOFF_MIN
            .saturating_mul(1 << (n - 1).min(16))
            .min(RESTART_BACKOFF_MAX),
    }
}

fn retry_policy() -> BackoffRetryPolicy<ExponentialBackoff> {
    let backoff = ExponentialBackoffMaker::new(
        Duration::from_millis(100),
        Duration::from_secs(5),
        0.5,
        apalis::layers::retry::HasherRng::default(),
    )
    .expect("valid backoff bounds")
    .make_backoff();
    RetryPolicy::retries(RETRIES).with_backoff(backoff)
}

/// What every job worker of this process shares.
#[derive(Clone)]
struct Wiring {
    svc: Service,
    /// This process's part of every worker name.
    tag: String,
    liveness: Liveness,
}

/// The apalis worker factory of job `$job` on storage `$storage` (with its `$config`
/// type) over `$pool`. Each start gets its own name: apalis refuses a name that was alive
/// within the heartbeat window.
macro_rules! job_worker {
    ($storage:ident, $config:path, $pool:expr, $wiring:expr, $job:ty) => {{
        let (pool, wiring) = ($pool.clone(), $wiring.clone());
        move |restarts| {
            let worker = <$job as Job>::WORKER;
            let config = <$config>::default()
                .queue(<$job as Queued>::QUEUE)
                .heartbeat_interval(HEARTBEAT)
                .missed_heartbeats(MISSED_HEARTBEATS);
            let backend = $storage::<$job>::new(&pool).with_config(config);
            let delay = wiring.liveness.restart_delay(worker);
            let liveness = wiring.liveness.clone();
            WorkerBuilder::new(format!("{}-{}-{restarts}", worker.name(), wiring.tag))
                .backend(
                    backend
                        .poll_with_strategy(Strategy::new().interval(POLL_INTERVAL))
                        .before_start(move |_| restart_after(delay)),
                )
                .on_event(move |_, event| liveness.observe(worker, event))
                .data(wiring.svc.clone())
                .retry(retry_policy())
                .build(jobs::handle::<$job>)
        }
    }};
}

/// The apalis monitor of every job worker on storage `$storage`. The two back ends'
/// storages are different types with the same API, hence a macro.
macro_rules! monitor {
    ($storage:ident, $config:path, $pool:expr, $wiring:expr) => {
        Monitor::new()
            .register(job_worker!($storage, $config, $pool, $wiring, ExpireHold))
            .register(job_worker!(
                $storage,
                $config,
                $pool,
                $wiring,
                CheckPendingWebhook
            ))
            .should_restart(should_restart)
    };
}

/// Runs the job workers and the sweep until `shutdown` resolves; jobs in flight finish.
/// A job worker whose database goes away is restarted until it reaches it again;
/// `liveness` tells meanwhile whether they all run.
pub async fn run(
    svc: Service,
    sweep_interval: Duration,
    liveness: Liveness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = tokio::spawn(sweep::sweep_loop(
        svc.clone(),
        sweep_interval,
        stop_rx.clone(),
    ));
    // Unique per process: apalis refuses a worker name seen within the heartbeat window.
    let tag = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        Ok(())
    };
    let wiring = Wiring {
        svc: svc.clone(),
        tag,
        liveness,
    };
    // The same choice of back end as the service's job queue.
    let monitor = match svc.db.backend() {
        DbBackend::Postgres => monitor!(
            PostgresStorage,
            apalis_postgres::Config,
            svc.db.conn.get_postgres_connection_pool(),
            wiring
        ),
        _ => monitor!(
            SqliteStorage,
            apalis_sqlite::Config,
            svc.db.conn.get_sqlite_connection_pool(),
            wiring
        ),
    };
    tracing::info!(
        sweep_interval_secs = sweep_interval.as_secs(),
        "worker started"
    );
    let result = monitor.run_with_signal(signal).await;
    if let Err(e) = sweeper.await {
        tracing::error!(error = %e, "the sweep loop died");
    }
    tracing::info!("worker stopped");
    result.map_err(|e| anyhow::anyhow!("worker monitor: {e}"))
}

/// Waits out a restart backoff before a job worker reaches its queue again.
async fn restart_after<E>(delay: Duration) -> Result<(), E> {
    tokio::time::sleep(delay).await;
    Ok(())
}

/// Restarts a job worker whose backend failed, unless the process is stopping.
fn should_restart(worker: &WorkerContext, error: &WorkerError) -> bool {
    let restart = !worker.is_shutting_down();
    if restart {
        tracing::warn!(worker = worker.name(), %error, "job worker failed; restarting it");
    }
    restart
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_starts_at_zero_doubles_and_is_capped() {
        let delays: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(u32::MAX), RESTART_BACKOFF_MAX);
    }

    #[test]
    fn liveness_needs_a_recent_heartbeat_from_every_worker() {
        let live = Liveness::default();
        assert!(!live.is_up(), "down before the first heartbeat");
        live.observe(JobWorker::ExpireHold, &Event::Start);
        live.observe(JobWorker::ExpireHold, &Event::HeartBeat);
        assert!(!live.is_up(), "one worker still down");
        live.observe(JobWorker::CheckPendingWebhook, &Event::HeartBeat);
        assert!(live.is_up());
        live.pulses()[0].last_beat = Instant::now().checked_sub(HEARTBEAT * 4);
        assert!(!live.is_up(), "a silent worker is down");
    }

    #[test]
    fn failed_starts_in_a_row_grow_the_restart_delay_until_a_heartbeat() {
        let live = Liveness::default();
        let w = JobWorker::CheckPendingWebhook;
        live.observe(w, &Event::Start);
        live.observe(w, &Event::HeartBeat);
        assert_eq!(
            live.restart_delay(w),
            Duration::ZERO,
            "first restart at once"
        );
        live.observe(w, &Event::Start);
        assert_eq!(live.restart_delay(w), Duration::from_secs(1));
        live.observe(w, &Event::Start);
        assert_eq!(live.restart_delay(w), Duration::from_secs(2));
        live.observe(w, &Event::HeartBeat);
        assert_eq!(live.restart_delay(w), Duration::ZERO);
    }
}
