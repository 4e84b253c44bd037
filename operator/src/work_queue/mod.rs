//! The WorkQueue kind. SKELETON: being written.

use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, WorkQueue, WorkQueueStatus};

use crate::controller::{Applied, Child, Kind, Observed, RenderConfig};

impl Kind for WorkQueue {
    type Status = WorkQueueStatus;
    const KIND: &'static str = "WorkQueue";

    fn desired(
        &self,
        _config: &RenderConfig,
        _observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors> {
        Ok(Vec::new())
    }

    fn observed_status(&self, _applied: &Applied, _now: Timestamp) -> WorkQueueStatus {
        WorkQueueStatus::default()
    }

    fn invalid_status(&self, _errors: &FieldErrors, _now: Timestamp) -> WorkQueueStatus {
        WorkQueueStatus::default()
    }

    fn status(&self) -> Option<&WorkQueueStatus> {
        self.status.as_ref()
    }
}
