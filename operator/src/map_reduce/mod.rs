//! The MapReduce kind (book ch. 12, coordinated batch): each run maps every item through a
//! WorkQueue of its own whose workers store an output, waits at a join barrier, then
//! reduces the outputs into one result with `rigging-sidecar reduce`.
//!
//! Only what is this kind's own lives here, all of it pure: [`desired`] (the children,
//! when runs start, and validation) and [`status`]. The broker is the shared
//! [`crate::broker`]; the WorkQueue kind runs each run's items.
//!
//! How a run is done once and no more, across restarts: a run's WorkQueue and reduce Job
//! are named after its number and created once (never updated), so a second create of
//! either is refused by the API server; a run's number comes from the status and the
//! WorkQueues that exist; and the reducer writes nothing for a run whose result it
//! stored already.

pub mod desired;
pub mod schedule;
pub mod status;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, MapReduce, MapReduceStatus};

use crate::controller::{Applied, Child, Kind, Note, Observed, RenderConfig};

impl Kind for MapReduce {
    const KIND: &'static str = "MapReduce";

    fn desired(
        &self,
        config: &RenderConfig,
        observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors> {
        desired::desired(self, config, observed)
    }

    fn observed_status(&self, applied: &Applied, now: Timestamp) -> MapReduceStatus {
        status::observed(self, applied, now)
    }

    fn invalid_status(&self, errors: &FieldErrors, now: Timestamp) -> MapReduceStatus {
        status::invalid(self, errors, now)
    }

    fn events(&self, next: &MapReduceStatus) -> Vec<Note> {
        status::events(self, next)
    }

    /// At the next time of the schedule.
    fn requeue_after(&self, status: &MapReduceStatus, now: Timestamp) -> Option<Duration> {
        let next = status.next_schedule_time.as_ref()?.0;
        let wait = next.duration_since(now);
        // A second late rather than early: a reconcile before the time finds nothing due.
        Some(Duration::try_from(wait).unwrap_or_default() + Duration::from_secs(1))
    }
}
