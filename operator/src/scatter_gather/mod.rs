//! The ScatterGather kind (book ch. 7): leaves holding shards, each shard a StatefulSet of
//! replicas (the [`ShardSet`](crate::shard_set::ShardSet) ShardedService builds on too),
//! and a root Deployment of `rigging-sidecar gather` behind the Service clients use,
//! configured by a ConfigMap it reloads.
//!
//! Only what is this kind's own lives here, all of it pure: [`desired`] (the children,
//! and validation with the root's own checks) and [`status`].

pub mod desired;
pub mod status;

use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, ScatterGather, ScatterGatherStatus};

use crate::controller::{Applied, Child, Kind, Note, Observed, RenderConfig};

impl Kind for ScatterGather {
    const KIND: &'static str = "ScatterGather";

    fn desired(
        &self,
        config: &RenderConfig,
        _observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors> {
        desired::desired(self, config).map(desired::Children::into_vec)
    }

    fn observed_status(&self, applied: &Applied, now: Timestamp) -> ScatterGatherStatus {
        status::observed(self, applied, now)
    }

    fn invalid_status(&self, errors: &FieldErrors, now: Timestamp) -> ScatterGatherStatus {
        status::invalid(self, errors, now)
    }

    fn events(&self, next: &ScatterGatherStatus) -> Vec<Note> {
        status::events(self, next)
    }
}
