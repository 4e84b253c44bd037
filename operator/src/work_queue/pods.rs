//! What a worker pod shows that its Job does not: that it cannot start. A pod whose image
//! cannot be pulled, or that no node can take, stays `Pending` and its Job active, with no
//! condition of the Job saying so (until `activeDeadlineSeconds`, if set, fails it). Only
//! the pod tells: the scheduler's `PodScheduled` condition, and the kubelet's waiting
//! reason of each container. Pure: the pods come from the watch cache.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Waiting reasons of a container that will not start until someone changes something:
/// the image cannot be pulled or is not a valid name (the kubelet's image errors), or the
/// container's configuration names a ConfigMap or Secret (key) that does not exist. A
/// transient `ErrImagePull` counts too: it is what the pod shows while it lasts, and the
/// report clears as soon as the pull succeeds.
pub const STUCK_WAITING_REASONS: [&str; 7] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "ImageInspectError",
    "RegistryUnavailable",
    "CreateContainerConfigError",
];

/// Why a pod cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// `Unschedulable`, or the container's waiting reason.
    pub reason: String,
    /// The scheduler's message, or the kubelet's naming the container.
    pub message: String,
}

/// Why `pod` cannot start now, or `None` if nothing says it cannot (it runs, it is being
/// started, it finished, or it is being deleted).
pub fn stuck(pod: &Pod) -> Option<Stuck> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    // Only `Unschedulable`: a pod held by a scheduling gate (`SchedulingGated`) is held on
    // purpose.
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return Some(Stuck {
            reason: "Unschedulable".into(),
            message: c.message.clone().unwrap_or_default(),
        });
    }
    // Init containers first: the worker waits for them (native sidecars start before it).
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers.filter_map(waiting_stuck).next()
}

fn waiting_stuck(container: &ContainerStatus) -> Option<Stuck> {
    let waiting = container.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    if !STUCK_WAITING_REASONS.contains(&reason) {
        return None;
    }
    let message = match waiting.message.as_deref() {
        Some(m) if !m.is_empty() => format!("container {:?}: {m}", container.name),
        _ => format!("container {:?}", container.name),
    };
    Some(Stuck {
        reason: reason.to_owned(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work_queue::fixtures::{pod_unschedulable, pod_waiting};

    #[test]
    fn an_image_that_cannot_be_pulled_is_named_with_its_container() {
        let pod = pod_waiting(
            "p",
            "uid",
            "worker",
            "ImagePullBackOff",
            "Back-off pulling image \"nope:1\"",
        );
        assert_eq!(
            stuck(&pod),
            Some(Stuck {
                reason: "ImagePullBackOff".into(),
                message: "container \"worker\": Back-off pulling image \"nope:1\"".into(),
            })
        );
        for reason in [
            "ErrImagePull",
            "InvalidImageName",
            "CreateContainerConfigError",
        ] {
            let pod = pod_waiting("p", "uid", "worker", reason, "");
            assert_eq!(
                stuck(&pod).map(|s| (s.reason, s.message)),
                Some((reason.to_owned(), "container \"worker\"".to_owned()))
            );
        }
    }

    #[test]
    fn a_pod_that_is_only_starting_is_not_stuck() {
        for reason in ["ContainerCreating", "PodInitializing"] {
            assert_eq!(stuck(&pod_waiting("p", "uid", "worker", reason, "")), None);
        }
    }

    #[test]
    fn an_unschedulable_pod_carries_the_schedulers_message() {
        let pod = pod_unschedulable("p", "uid", "0/1 nodes are available: 1 Insufficient cpu.");
        assert_eq!(
            stuck(&pod),
            Some(Stuck {
                reason: "Unschedulable".into(),
                message: "0/1 nodes are available: 1 Insufficient cpu.".into(),
            })
        );
    }

    #[test]
    fn a_sidecar_that_cannot_start_is_named_before_the_worker_that_waits_for_it() {
        let mut pod = pod_waiting("p", "uid", "worker", "PodInitializing", "");
        let status = pod.status.as_mut().unwrap();
        let mut sidecar = status.container_statuses.clone().unwrap()[0].clone();
        sidecar.name = "rigging-logs".into();
        let waiting = sidecar.state.as_mut().unwrap().waiting.as_mut().unwrap();
        waiting.reason = Some("ErrImagePull".into());
        status.init_container_statuses = Some(vec![sidecar]);
        assert_eq!(
            stuck(&pod).map(|s| s.message),
            Some("container \"rigging-logs\"".into())
        );
    }

    #[test]
    fn a_pod_being_deleted_or_finished_is_not_stuck() {
        let mut pod = pod_waiting("p", "uid", "worker", "ImagePullBackOff", "");
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                crate::work_queue::fixtures::at(0),
            ));
        assert_eq!(stuck(&pod), None);
        let mut pod = pod_waiting("p", "uid", "worker", "ImagePullBackOff", "");
        pod.status.as_mut().unwrap().phase = Some("Failed".into());
        assert_eq!(stuck(&pod), None);
    }
}
