//! `CheckPendingWebhook`: applies the payments recorded for a hold before its order existed.

use apalis::prelude::BoxDynError;
use service::{Service, jobs::CheckPendingWebhook};

use super::{Job, count};
use crate::JobWorker;

impl Job for CheckPendingWebhook {
    const NAME: &'static str = "check_pending_webhook";
    const WORKER: JobWorker = JobWorker::CheckPendingWebhook;

    #[tracing::instrument(name = "CheckPendingWebhook", skip_all, fields(hold_id = self.hold_id))]
    async fn run(self, svc: &Service) -> Result<(), BoxDynError> {
        let settled = svc.settle_recorded_payments(self.hold_id).await;
        count(Self::NAME, if settled.is_ok() { "ok" } else { "error" });
        let settled = settled?;
        tracing::debug!(hold_id = self.hold_id, settled, "CheckPendingWebhook done");
        Ok(())
    }
}
