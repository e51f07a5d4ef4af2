//! `CheckPendingWebhook`: applies the payments recorded for a hold before its order existed,
//! and makes the order of a paid hold whose time ran out without one.

use apalis::prelude::BoxDynError;
use service::{Service, jobs::CheckPendingWebhook, upkeep::Settled};

use super::{Job, count};
use crate::JobWorker;

impl Job for CheckPendingWebhook {
    const NAME: &'static str = "check_pending_webhook";
    const WORKER: JobWorker = JobWorker::CheckPendingWebhook;

    #[tracing::instrument(name = "CheckPendingWebhook", skip_all, fields(hold_id = self.hold_id))]
    async fn run(self, svc: &Service) -> Result<(), BoxDynError> {
        let settled = svc.settle_recorded_payments(self.hold_id).await;
        count(
            Self::NAME,
            match &settled {
                Ok(Settled::NotYetDue) => "not_due",
                Ok(_) => "ok",
                Err(_) => "error",
            },
        );
        match settled? {
            // Fail so that the retry policy runs it again a little later.
            Settled::NotYetDue => Err(format!("paid hold {} is still live", self.hold_id).into()),
            Settled::Payments(n) => {
                tracing::debug!(
                    hold_id = self.hold_id,
                    settled = n,
                    "CheckPendingWebhook done"
                );
                Ok(())
            }
        }
    }
}
