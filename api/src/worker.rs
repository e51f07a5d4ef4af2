//! The worker's loops: apalis workers for `ExpireHold` and `CheckPendingWebhook`, and the
//! periodic sweep. `flashsale-worker run` runs them as their own process;
//! `flashsale-api --with-worker` runs them beside the API in one process.

use std::{future::Future, time::Duration};

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

use crate::{
    jobs::{CheckPendingWebhook, ExpireHold, POLL_INTERVAL},
    service::{Service, upkeep::Expiry},
};

/// Heartbeat of each apalis worker; jobs of a worker silent for three beats (a killed
/// process) are run again by the next worker that polls.
const HEARTBEAT: Duration = Duration::from_secs(2);
const MISSED_HEARTBEATS: usize = 3;
/// In-process retries of a failing job before apalis records the failure; the storage
/// then re-runs it until [`crate::jobs::MAX_ATTEMPTS`].
const RETRIES: usize = 3;

fn count(job: &str, result: &str) {
    crate::metrics::metrics()
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
pub async fn run(
    svc: Service,
    sweep_interval: Duration,
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
    // The two back ends' storages are different types with the same API.
    macro_rules! monitor {
        ($storage:ident, $config:path, $pool:expr) => {{
            let (p1, p2) = ($pool.clone(), $pool.clone());
            let (s1, s2, t1, t2) = (svc.clone(), svc.clone(), tag.clone(), tag.clone());
            Monitor::new()
                .register(move |_| {
                    let config = <$config>::default()
                        .queue(std::any::type_name::<ExpireHold>())
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED_HEARTBEATS);
                    let backend = $storage::<ExpireHold>::new(&p1).with_config(config);
                    WorkerBuilder::new(format!("expire-hold-{t1}"))
                        .backend(
                            backend.poll_with_strategy(Strategy::new().interval(POLL_INTERVAL)),
                        )
                        .data(s1.clone())
                        .retry(retry_policy())
                        .build(expire_hold)
                })
                .register(move |_| {
                    let config = <$config>::default()
                        .queue(std::any::type_name::<CheckPendingWebhook>())
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED_HEARTBEATS);
                    let backend = $storage::<CheckPendingWebhook>::new(&p2).with_config(config);
                    WorkerBuilder::new(format!("check-webhook-{t2}"))
                        .backend(
                            backend.poll_with_strategy(Strategy::new().interval(POLL_INTERVAL)),
                        )
                        .data(s2.clone())
                        .retry(retry_policy())
                        .build(check_pending_webhook)
                })
        }};
    }
    let monitor = match &svc.jobs {
        crate::jobs::JobQueue::Sqlite { .. } => monitor!(
            SqliteStorage,
            apalis_sqlite::Config,
            svc.db.conn.get_sqlite_connection_pool()
        ),
        crate::jobs::JobQueue::Postgres { .. } => monitor!(
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
