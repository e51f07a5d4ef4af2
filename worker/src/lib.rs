//! The worker's loops: apalis workers for `ExpireHold` and `CheckPendingWebhook`, and the
//! periodic sweep. `flashsale-worker run` runs them as their own process;
//! `flashsale-api --with-worker` runs them beside the API in one process.
//!
//! An apalis worker ends when its backend fails (a heartbeat or a fetch that cannot reach
//! the database); the monitor then starts it again, after a backoff that grows while the
//! restarts keep failing. [`Liveness`] records each worker's last heartbeat for `/ready`.

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
use tokio::sync::watch;

use service::{
    Service,
    jobs::{CheckPendingWebhook, ExpireHold, POLL_INTERVAL},
    upkeep::Expiry,
};

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

/// The job workers of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JobWorker {
    ExpireHold = 0,
    CheckPendingWebhook = 1,
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

fn count(job: &str, result: &str) {
    service::metrics::metrics()
        .jobs
        .with_label_values(&[job, result])
        .inc();
}

async fn expire_hold(job: ExpireHold, svc: Data<Service>) -> Result<(), BoxDynError> {
    let outcome = svc.expire_holds_if_due(&job.hold_ids).await;
    count(
        "expire_hold",
        match &outcome {
            Ok(Expiry::NotYetDue) => "not_due",
            Ok(_) => "ok",
            Err(_) => "error",
        },
    );
    match outcome? {
        // Fail so that the retry policy runs it again a little later.
        Expiry::NotYetDue => Err(format!("holds {:?} are not all due yet", job.hold_ids).into()),
        outcome => {
            tracing::debug!(hold_ids = ?job.hold_ids, ?outcome, "ExpireHold done");
            Ok(())
        }
    }
}

async fn check_pending_webhook(
    job: CheckPendingWebhook,
    svc: Data<Service>,
) -> Result<(), BoxDynError> {
    let settled = svc.settle_recorded_payments(job.hold_id).await;
    count(
        "check_pending_webhook",
        if settled.is_ok() { "ok" } else { "error" },
    );
    let settled = settled?;
    tracing::debug!(hold_id = job.hold_id, settled, "CheckPendingWebhook done");
    Ok(())
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
    let sweeper = tokio::spawn(sweep_loop(svc.clone(), sweep_interval, stop_rx.clone()));
    // Unique per process: apalis refuses a worker name seen within the heartbeat window.
    let tag = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        Ok(())
    };
    // The two back ends' storages are different types with the same API. Each start gets
    // its own name: apalis refuses a name that was alive within the heartbeat window.
    macro_rules! monitor {
        ($storage:ident, $config:path, $pool:expr) => {{
            let (p1, p2) = ($pool.clone(), $pool.clone());
            let (s1, s2, t1, t2) = (svc.clone(), svc.clone(), tag.clone(), tag.clone());
            let (l1, l2) = (liveness.clone(), liveness.clone());
            Monitor::new()
                .register(move |restarts| {
                    let worker = JobWorker::ExpireHold;
                    let config = <$config>::default()
                        .queue(std::any::type_name::<ExpireHold>())
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED_HEARTBEATS);
                    let backend = $storage::<ExpireHold>::new(&p1).with_config(config);
                    let (delay, liveness) = (l1.restart_delay(worker), l1.clone());
                    WorkerBuilder::new(format!("expire-hold-{t1}-{restarts}"))
                        .backend(
                            backend
                                .poll_with_strategy(Strategy::new().interval(POLL_INTERVAL))
                                .before_start(move |_| restart_after(delay)),
                        )
                        .on_event(move |_, event| liveness.observe(worker, event))
                        .data(s1.clone())
                        .retry(retry_policy())
                        .build(expire_hold)
                })
                .register(move |restarts| {
                    let worker = JobWorker::CheckPendingWebhook;
                    let config = <$config>::default()
                        .queue(std::any::type_name::<CheckPendingWebhook>())
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED_HEARTBEATS);
                    let backend = $storage::<CheckPendingWebhook>::new(&p2).with_config(config);
                    let (delay, liveness) = (l2.restart_delay(worker), l2.clone());
                    WorkerBuilder::new(format!("check-webhook-{t2}-{restarts}"))
                        .backend(
                            backend
                                .poll_with_strategy(Strategy::new().interval(POLL_INTERVAL))
                                .before_start(move |_| restart_after(delay)),
                        )
                        .on_event(move |_, event| liveness.observe(worker, event))
                        .data(s2.clone())
                        .retry(retry_policy())
                        .build(check_pending_webhook)
                })
                .should_restart(should_restart)
        }};
    }
    let monitor = match &svc.jobs {
        service::jobs::JobQueue::Sqlite { .. } => monitor!(
            SqliteStorage,
            apalis_sqlite::Config,
            svc.db.conn.get_sqlite_connection_pool()
        ),
        service::jobs::JobQueue::Postgres { .. } => monitor!(
            PostgresStorage,
            apalis_postgres::Config,
            svc.db.conn.get_postgres_connection_pool()
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

async fn sweep_loop(svc: Service, interval: Duration, mut stop: watch::Receiver<bool>) {
    // The first sweep comes one interval after start: the jobs come first, the sweep is the net.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let report = svc.sweep_once().await;
        count("sweep", if report.is_ok() { "ok" } else { "error" });
        match report {
            Ok(report) if report.is_idle() => tracing::debug!(?report, "sweep: nothing to do"),
            Ok(report) => tracing::info!(?report, "sweep"),
            Err(e) => tracing::warn!(error = %e, "sweep failed; retrying at the next interval"),
        }
    }
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
