//! What every reconcile reaches the world through: one [`Context`], shared by every kind's
//! controller, so that tests can hand it a mocked client and prefilled caches. Nothing in
//! it belongs to one kind.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use super::{ChildStores, MANAGER};
use crate::controller::RenderConfig;
use crate::metrics::Metrics;

/// The operator's settings that reconciles read.
#[derive(Debug, Clone)]
pub struct Config {
    /// What the pure halves need (the sidecar image).
    pub render: RenderConfig,
    /// How often a healthy object is reconciled again when nothing changed.
    pub resync: Duration,
    /// How many objects of one kind are reconciled at once (0: no bound).
    pub concurrency: u16,
    /// How many of the operator's Deployments and StatefulSets may roll at once when it
    /// changes their pod templates (0: no bound); see [`super::rollouts`].
    pub max_rollouts: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            render: RenderConfig::default(),
            resync: super::RESYNC,
            concurrency: DEFAULT_CONCURRENCY,
            max_rollouts: super::rollouts::DEFAULT_MAX_ROLLOUTS,
        }
    }
}

/// How many objects of one kind `run` reconciles at once unless `--concurrency` says.
pub const DEFAULT_CONCURRENCY: u16 = 4;

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
    /// Consecutive failures per object (kind, namespace, name), for exponential backoff.
    failures: Mutex<HashMap<FailureKey, u32>>,
    /// The rollouts started and held back under [`Config::max_rollouts`].
    pub rollouts: super::rollouts::Budget,
    /// Statuses written that the watch may not have delivered yet, by uid
    /// ([`Context::own_view`]).
    written: Mutex<HashMap<String, WrittenStatus>>,
}

/// A status the operator wrote, and the `resourceVersion` of the object it replaced.
struct WrittenStatus {
    over: String,
    status: Box<dyn Any + Send + Sync>,
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
            rollouts: super::rollouts::Budget::default(),
            written: Mutex::default(),
        }
    }

    /// Remembers that `status` was written over `obj` as cached (the write gave the object
    /// `resource_version`).
    pub fn wrote_status<K: super::Kind>(
        &self,
        obj: &K,
        status: &K::Status,
        resource_version: Option<&str>,
    ) {
        let (Some(uid), Some(over)) = (obj.uid(), obj.resource_version()) else {
            return;
        };
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if resource_version == Some(over.as_str()) {
            // Nothing changed: the cache already holds what was written.
            written.remove(&uid);
            return;
        }
        let status = Box::new(status.clone());
        written.insert(uid, WrittenStatus { over, status });
    }

    /// `obj` with the status this operator last wrote, when `obj` is still the version that
    /// write replaced: the watch of the object has not delivered the write yet (a child's
    /// change, seen first, started this reconcile). Without it the reconcile would take the
    /// older status for the truth and write the same status again, or, for a WorkQueue,
    /// decide from a record it has already replaced. `None` when the cache is current.
    pub fn own_view<K: super::Kind>(&self, obj: &K) -> Option<K> {
        let uid = obj.uid()?;
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let entry = written.get(&uid)?;
        if obj.resource_version().as_deref() != Some(entry.over.as_str()) {
            // The cache holds that write, or something newer: it is the truth again.
            written.remove(&uid);
            return None;
        }
        let status = entry.status.downcast_ref::<K::Status>()?.clone();
        let mut fresher = obj.clone();
        *fresher.status_mut() = Some(status);
        Some(fresher)
    }

    /// Records one more failure of `obj` and returns how long to wait before retrying.
    pub fn next_backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(failure_key(obj)).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// Forgets the failures of `obj` after it reconciled.
    pub fn reset_backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&failure_key(obj));
    }
}

type FailureKey = (String, String, String);

fn failure_key<K: Resource<DynamicType = ()>>(obj: &K) -> FailureKey {
    (
        K::kind(&()).into_owned(),
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
    )
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
