//! The jobs the worker runs, one module each. Their payload structs live in
//! [`service::jobs`], because the API pushes them; here each gets its instrumented `run`.
//! Every job re-checks state in its own transaction, so running one twice changes nothing
//! the second time.

mod check_pending_webhook;
mod expire_hold;

use std::future::Future;

use apalis::prelude::{BoxDynError, Data};
use service::Service;

use crate::JobWorker;

/// A job the worker runs: what running it once does, and where it is counted.
pub(crate) trait Job: Send + 'static {
    /// The job's label in the `flashsale_jobs_total` metric.
    const NAME: &'static str;
    /// The apalis worker that runs it.
    const WORKER: JobWorker;

    /// Runs the job once. An error makes apalis run it again later.
    fn run(self, svc: &Service) -> impl Future<Output = Result<(), BoxDynError>> + Send;
}

/// The apalis handler of job `J`.
pub(crate) async fn handle<J: Job>(job: J, svc: Data<Service>) -> Result<(), BoxDynError> {
    job.run(&svc).await
}

/// Counts one run of `job` that ended with `result`.
pub(crate) fn count(job: &str, result: &str) {
    service::metrics::metrics()
        .jobs
        .with_label_values(&[job, result])
        .inc();
}
