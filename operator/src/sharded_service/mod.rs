//! The ShardedService kind (book ch. 6): shards with stable names in StatefulSets, a ring
//! of those names in a ConfigMap that sharding ambassadors reload, and either a router
//! Deployment behind the Service clients use or ambassadors in the client pods; a
//! NetworkPolicy keeps clients from going around them.
//!
//! Only what is this kind's own lives here, all of it pure: [`desired`] (the children, and
//! validation) and [`status`]. The shared controller layer does the rest.

pub mod desired;
pub mod status;

use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, ShardedService, ShardedServiceStatus};

use crate::controller::{Applied, Child, Kind, Note, Observed, RenderConfig};

impl Kind for ShardedService {
    type Status = ShardedServiceStatus;
    const KIND: &'static str = "ShardedService";

    fn desired(
        &self,
        config: &RenderConfig,
        _observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors> {
        desired::desired(self, config).map(desired::Children::into_vec)
    }

    fn observed_status(&self, applied: &Applied, now: Timestamp) -> ShardedServiceStatus {
        status::observed(self, applied, now)
    }

    fn invalid_status(&self, errors: &FieldErrors, now: Timestamp) -> ShardedServiceStatus {
        status::invalid(self, errors, now)
    }

    fn status(&self) -> Option<&ShardedServiceStatus> {
        self.status.as_ref()
    }

    fn events(&self, next: &ShardedServiceStatus) -> Vec<Note> {
        status::events(self, next)
    }
}
