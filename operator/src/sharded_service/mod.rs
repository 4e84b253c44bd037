//! The ShardedService kind (book ch. 6): shards with stable names in StatefulSets, a ring
//! of those names in a ConfigMap that sharding ambassadors reload, and either a router
//! Deployment behind the Service clients use or ambassadors in the client pods; a
//! NetworkPolicy keeps clients from going around them.
//!
//! Only what is this kind's own lives here, all of it pure: [`desired`] (the children, and
//! validation), [`reshard`] (the steps of a change of the shard count: whom to ask, and
//! how far the ring and the pods go) and [`status`]. The shared controller layer does the
//! rest, the asking included.

pub mod desired;
pub mod reshard;
pub mod status;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, ShardedService, ShardedServiceStatus};

use crate::controller::{Answers, Applied, Child, Inquiry, Kind, Note, Observed, RenderConfig};

impl Kind for ShardedService {
    const KIND: &'static str = "ShardedService";

    fn inquiry(&self, observed: &Observed) -> Option<Inquiry> {
        reshard::inquiry(self, observed)
    }

    fn desired(
        &self,
        config: &RenderConfig,
        observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors> {
        desired::observed(self, config, observed).map(desired::Children::into_vec)
    }

    fn observed_status(&self, applied: &Applied, now: Timestamp) -> ShardedServiceStatus {
        status::observed(self, applied, None, now)
    }

    fn observed_status_answered(
        &self,
        applied: &Applied,
        answers: &Answers,
        now: Timestamp,
    ) -> ShardedServiceStatus {
        status::observed(self, applied, Some(answers), now)
    }

    fn invalid_status(&self, errors: &FieldErrors, now: Timestamp) -> ShardedServiceStatus {
        status::invalid(self, errors, now)
    }

    fn events(&self, next: &ShardedServiceStatus) -> Vec<Note> {
        status::events(self, next)
    }

    fn requeue_after(&self, status: &ShardedServiceStatus, _now: Timestamp) -> Option<Duration> {
        status::requeue_after(status)
    }
}
