//! The WorkQueue kind (book ch. 10): every item, of a static list or of what a source
//! container lists, is processed by a worker pod in a Job of its own, at most
//! `parallelism` at once, retried up to `retries` times.
//!
//! Only what is this kind's own lives here: [`naming`] (the deterministic names),
//! [`desired`] (the children, and validation), [`status`] (the counts, the recorded results,
//! conditions and Events) with [`pods`] (what a worker pod shows that its Job does not: that
//! it cannot start) and [`speculative`] (backups of stragglers), all pure, and [`source`]
//! (the poller of source mode, which does IO of its own). The shared controller layer does the rest.
//!
//! How the pieces keep an item from running twice or being forgotten, across restarts:
//! - a Job's name comes from the item alone, and Jobs are only ever created (never updated
//!   or re-created), so a second create of the same item is refused by the API server;
//! - a finished item's result is recorded in the status, and only an item recorded as
//!   finished may lose its Job (its TTL passed); desired never gives such an item a Job;
//! - in source mode the items live in a ConfigMap to which the poller only adds.

pub mod desired;
pub mod naming;
pub mod pods;
pub mod results;
pub mod source;
pub mod speculative;
pub mod status;

#[cfg(test)]
mod fixtures;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, WorkQueue, WorkQueueStatus};

use crate::controller::{Applied, Child, Kind, Note, Observed, RenderConfig};

impl Kind for WorkQueue {
    const KIND: &'static str = "WorkQueue";

    fn desired(
        &self,
        config: &RenderConfig,
        observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors> {
        desired::desired(self, config, observed).map(desired::Children::into_vec)
    }

    fn observed_status(&self, applied: &Applied, now: Timestamp) -> WorkQueueStatus {
        status::observed(self, applied, now)
    }

    fn invalid_status(&self, errors: &FieldErrors, now: Timestamp) -> WorkQueueStatus {
        status::invalid(self, errors, now)
    }

    fn events(&self, next: &WorkQueueStatus) -> Vec<Note> {
        status::events(self, next)
    }

    fn requeue_after(&self, status: &WorkQueueStatus, now: Timestamp) -> Option<Duration> {
        status::requeue_after(status, now)
    }
}
