//! The sweep, the net under the jobs: it finds from the data alone what they would have
//! done. [`sweep_loop`] runs a pass every interval inside `run`; [`sweep_until_idle`] runs
//! the passes of the one-shot `sweep` command.

use std::time::Duration;

use service::{Service, upkeep::SweepReport};
use tokio::sync::watch;

use crate::jobs::count;

/// Bound on the passes of one `sweep` command.
const MAX_SWEEP_PASSES: usize = 1000;

/// Sweeps every `interval` until `stop` changes.
pub(crate) async fn sweep_loop(svc: Service, interval: Duration, mut stop: watch::Receiver<bool>) {
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

/// Sweeps pass after pass until one finds nothing to do (at most [`MAX_SWEEP_PASSES`]),
/// and returns what they did together; `refund_required` is the last pass's count.
pub async fn sweep_until_idle(svc: &Service) -> service::Result<SweepReport> {
    let mut total = SweepReport::default();
    for _ in 0..MAX_SWEEP_PASSES {
        let report = svc.sweep_once().await?;
        total.expired_hold_units += report.expired_hold_units;
        total.settled_payments += report.settled_payments;
        total.cancelled_orders += report.cancelled_orders;
        total.refund_required = report.refund_required;
        total.errors += report.errors;
        if report.is_idle() {
            break;
        }
    }
    Ok(total)
}
