//! The ShardedService kind. SKELETON: being written.

use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, ShardedService, ShardedServiceStatus};

use crate::controller::{Applied, Child, Kind, Observed, RenderConfig};

impl Kind for ShardedService {
    type Status = ShardedServiceStatus;
    const KIND: &'static str = "ShardedService";

    fn desired(
        &self,
        _config: &RenderConfig,
        _observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors> {
        Ok(Vec::new())
    }

    fn observed_status(&self, _applied: &Applied, _now: Timestamp) -> ShardedServiceStatus {
        ShardedServiceStatus::default()
    }

    fn invalid_status(&self, _errors: &FieldErrors, _now: Timestamp) -> ShardedServiceStatus {
        ShardedServiceStatus::default()
    }

    fn status(&self) -> Option<&ShardedServiceStatus> {
        self.status.as_ref()
    }
}
