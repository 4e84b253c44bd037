//! The Pipeline kind (book ch. 11): stages connected by topics on NATS JetStream, each
//! stage a Deployment fed by Rigging's queue sidecar, and the broker a StatefulSet the
//! operator runs unless the pipeline names one.
//!
//! Only what is this kind's own lives here, all of it pure: [`desired`] (the children,
//! validation, and the replicas of a stage scaled on its backlog), [`backlog`] (what the
//! stage pods answer) and [`status`]. The shared controller layer asks the pods and does
//! the rest.

pub mod backlog;
pub mod desired;
pub mod status;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, Pipeline, PipelineStatus};

use crate::controller::{Answers, Applied, Child, Inquiry, Kind, Note, Observed, RenderConfig};

/// How often a pipeline's stage pods are asked for their counts and backlog, whatever
/// else happens: the status and the autoscaled stages follow the traffic at this pace.
pub const LOOK_AGAIN: Duration = Duration::from_secs(15);

impl Kind for Pipeline {
    const KIND: &'static str = "Pipeline";

    fn inquiry(&self, _observed: &Observed) -> Option<Inquiry> {
        Some(Inquiry {
            selector: desired::stages_selector(self),
            port: desired::ADMIN_PORT.into(),
            path: "/metrics".into(),
        })
    }

    fn desired(
        &self,
        config: &RenderConfig,
        observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors> {
        desired::desired(self, config, observed)
    }

    fn observed_status(&self, applied: &Applied, now: Timestamp) -> PipelineStatus {
        status::observed(self, applied, &Answers::default(), now)
    }

    fn observed_status_answered(
        &self,
        applied: &Applied,
        answers: &Answers,
        now: Timestamp,
    ) -> PipelineStatus {
        status::observed(self, applied, answers, now)
    }

    fn invalid_status(&self, errors: &FieldErrors, now: Timestamp) -> PipelineStatus {
        status::invalid(self, errors, now)
    }

    fn events(&self, next: &PipelineStatus) -> Vec<Note> {
        status::events(self, next)
    }

    fn requeue_after(&self, _status: &PipelineStatus, _now: Timestamp) -> Option<Duration> {
        Some(LOOK_AGAIN)
    }
}
