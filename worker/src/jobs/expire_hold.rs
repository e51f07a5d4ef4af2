//! `ExpireHold`: marks holds `expired` once their time is up and gives their units back.

use apalis::prelude::BoxDynError;
use service::{Service, jobs::ExpireHold, upkeep::Expiry};

use super::{Job, count};
use crate::JobWorker;

impl Job for ExpireHold {
    const NAME: &'static str = "expire_hold";
    const WORKER: JobWorker = JobWorker::ExpireHold;

    #[tracing::instrument(name = "ExpireHold", skip_all, fields(hold_ids = ?self.hold_ids))]
    async fn run(self, svc: &Service) -> Result<(), BoxDynError> {
        let outcome = svc.expire_holds_if_due(&self.hold_ids).await;
        count(
            Self::NAME,
            match &outcome {
                Ok(Expiry::NotYetDue) => "not_due",
                Ok(_) => "ok",
                Err(_) => "error",
            },
        );
        match outcome? {
            // Fail so that the retry policy runs it again a little later.
            Expiry::NotYetDue => {
                Err(format!("holds {:?} are not all due yet", self.hold_ids).into())
            }
            outcome => {
                tracing::debug!(hold_ids = ?self.hold_ids, ?outcome, "ExpireHold done");
                Ok(())
            }
        }
    }
}
