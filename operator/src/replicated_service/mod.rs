//! The ReplicatedService kind (book ch. 5): a Deployment behind a Service, with an
//! optional PodDisruptionBudget, HorizontalPodAutoscaler, TLS terminator and frontend
//! tier (cache and rate limits) in front of the Service.
//!
//! Only what is this kind's own lives here, all of it pure: [`desired`] (the children, and
//! validation) and [`status`]. The shared controller layer does the rest.

pub mod desired;
pub mod frontend;
pub mod status;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use rigging_crds::{FieldErrors, ReplicatedService, ReplicatedServiceStatus};

use crate::controller::RenderConfig;
use crate::controller::{Applied, Child, Kind, Observed};

impl Kind for ReplicatedService {
    const KIND: &'static str = "ReplicatedService";

    fn desired(
        &self,
        config: &RenderConfig,
        _observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors> {
        desired::desired(self, config).map(desired::Children::into_vec)
    }

    fn observed_status(&self, applied: &Applied, now: Timestamp) -> ReplicatedServiceStatus {
        let frontend = self
            .spec
            .frontend
            .as_ref()
            .map(|_| applied.get::<Deployment>(&frontend::name(self)));
        status::observed(
            self,
            applied.get::<Deployment>(&self.name_any()),
            frontend,
            now,
        )
    }

    fn invalid_status(&self, errors: &FieldErrors, now: Timestamp) -> ReplicatedServiceStatus {
        status::invalid(self, errors, now)
    }
}
