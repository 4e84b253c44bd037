//! What every reconcile reaches the world through: one [`Context`], so that tests can
//! hand it a mocked client and prefilled caches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use rigging_crds::ReplicatedService;

use crate::metrics::Metrics;
use crate::replicated_service::desired::{MANAGER, RenderConfig};

/// The operator's settings that reconciles read.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// What the pure halves need (the sidecar image).
    pub render: RenderConfig,
}

/// Watch caches of the children the operator owns, filled by the controller's watches.
/// Comparing against them is what lets an unchanged object cost no API request.
#[derive(Clone)]
pub struct ChildStores {
    /// Deployments labelled `app.kubernetes.io/managed-by=rigging-operator`.
    pub deployments: Store<Deployment>,
    /// Services with that label.
    pub services: Store<Service>,
    /// PodDisruptionBudgets with that label.
    pub pdbs: Store<PodDisruptionBudget>,
    /// HorizontalPodAutoscalers with that label.
    pub hpas: Store<HorizontalPodAutoscaler>,
}

impl ChildStores {
    /// Waits until every cache holds its initial list, so that the first reconciles after
    /// a start (or a change of leader) compare against what exists instead of re-applying
    /// every child. Returns early if a cache's writer is gone (the controller is stopping).
    pub async fn wait_until_ready(&self) {
        let _ = tokio::join!(
            self.deployments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.pdbs.wait_until_ready(),
            self.hpas.wait_until_ready(),
        );
    }
}

/// Shared state of the controllers.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events about the objects being reconciled.
    pub recorder: Recorder,
    /// Reconcile counters and timings.
    pub metrics: Metrics,
    /// Settings.
    pub config: Config,
    /// Watch caches of the children.
    pub stores: ChildStores,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<ReplicatedService>, u32>>,
}

impl Context {
    /// A context whose Events are reported as coming from `instance` (the pod name).
    pub fn new(
        client: Client,
        config: Config,
        metrics: Metrics,
        stores: ChildStores,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            config,
            stores,
            failures: Mutex::default(),
        }
    }

    /// Records one more failure of `obj` and returns how long to wait before retrying.
    pub fn next_backoff(&self, obj: ObjectRef<ReplicatedService>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(obj).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// Forgets the failures of `obj` after it reconciled.
    pub fn reset_backoff(&self, obj: &ObjectRef<ReplicatedService>) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(obj);
    }
}

/// Delay before retry number `failures` (1-based): 5 s doubling up to 5 min, so a broken
/// object never turns into a hot loop against the API server.
pub fn backoff_delay(failures: u32) -> Duration {
    const BASE: u64 = 5;
    const MAX: u64 = 300;
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_secs((BASE << exp).min(MAX))
}

#[cfg(test)]
mod tests {
    use super::backoff_delay;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        let delays: Vec<u64> = (1..=8).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX), Duration::from_secs(300));
    }
}
