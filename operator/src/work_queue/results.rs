//! Where a WorkQueue keeps the result of every finished item, out of its own object: in
//! results ConfigMaps `<queue>-results-<n>`, one key per item (its Job's name), each
//! ConfigMap under [`CHUNK_BYTES`] and immutable, written once.
//!
//! A finished item's result is first only on its Job (its `Complete` or `Failed`
//! condition). The operator copies the results of finished Jobs into a new results
//! ConfigMap in batches ([`should_record`]): a batch of [`BATCH`], the queue having nothing
//! left to run, or a Job whose `ttlSecondsAfterFinished` has passed. Only a result in a
//! results ConfigMap the cache holds lets its Job be deleted, so a result is always on its
//! Job, in a ConfigMap, or both — across restarts too, since both are read back from the
//! caches.
//!
//! Why immutable ConfigMaps written once, and not one applied again as results arrive:
//! comparing and applying a ConfigMap of thousands of keys on every reconcile would make
//! each reconcile cost as much as all the results so far. A new batch goes into a new
//! ConfigMap; when the newest one still has room, the new one holds its keys too and
//! names it in [`REPLACES_ANNOTATION`], and the older one is deleted once the cache shows
//! the new one (never in the reconcile that writes it: a create refused after a stale
//! cache must not lose the older one).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use rigging_crds::WorkQueue;

use super::desired::{QUEUE_LABEL, labels};
use crate::controller::children::CacheView;

/// Most bytes of keys and values in one results ConfigMap: with its metadata and
/// `managedFields`, each stays under 256 KiB.
pub const CHUNK_BYTES: usize = 200 * 1024;
/// Results waiting on their Jobs that make the operator write them out at once.
pub const BATCH: usize = 500;
/// Annotation of a results ConfigMap that holds every key of an older one (named), which
/// is then deleted.
pub const REPLACES_ANNOTATION: &str = "rigging.dev/replaces";
/// The `app.kubernetes.io/component` of results ConfigMaps.
pub const COMPONENT: &str = "results";
/// The recorded value of an item that succeeded.
pub const SUCCEEDED: &str = "Succeeded";
/// The prefix of the recorded value of an item that failed.
pub const FAILED_PREFIX: &str = "Failed";

/// The name of the `seq`th results ConfigMap of `queue`.
pub fn chunk_name(queue: &str, seq: u64) -> String {
    format!("{queue}-results-{seq}")
}

/// The sequence number of a results ConfigMap of `queue`, from its name.
pub fn parse_chunk_name(queue: &str, name: &str) -> Option<u64> {
    let seq = name.strip_prefix(queue)?.strip_prefix("-results-")?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

/// The label selector of `queue`'s results ConfigMaps.
pub fn selector(queue: &str) -> String {
    format!("{QUEUE_LABEL}={queue},app.kubernetes.io/component={COMPONENT}")
}

/// What is recorded for a failed item: `Failed: <reason>: <message>; item: "<item>"`.
pub fn failed_value(reason: &str, message: &str, item: &str) -> String {
    let reason = if reason.is_empty() { "Failed" } else { reason };
    format!("{FAILED_PREFIX}: {reason}: {message}; item: {item:?}")
}

/// Whether a recorded value says the item succeeded: `Succeeded`, and with a speculative
/// backup `Succeeded; backup won` or `Succeeded; backup lost`.
pub fn succeeded(value: &str) -> bool {
    value
        .strip_prefix(SUCCEEDED)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(';'))
}

/// The results ConfigMaps of one queue, as the cache holds them.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The queue's own, not replaced by a newer one, oldest first.
    live: Vec<Arc<ConfigMap>>,
    /// The queue's own that a newer one replaces: deleted (left out of the children).
    replaced: usize,
    /// One more than the highest sequence number any ConfigMap of a results name has,
    /// whoever controls it: a new one never takes the name of one that exists.
    next_seq: u64,
}

impl Recorded {
    /// Reads `wq`'s results ConfigMaps from `cache` (none without a cache: `render`).
    pub fn read(wq: &WorkQueue, cache: Option<&CacheView>) -> Self {
        let Some(cache) = cache else {
            return Self::default();
        };
        let queue = wq.name_any();
        let mut ours: Vec<(u64, Arc<ConfigMap>)> = Vec::new();
        let mut next_seq = 0;
        for cm in cache.in_namespace::<ConfigMap>() {
            let Some(seq) = parse_chunk_name(&queue, &cm.name_any()) else {
                continue;
            };
            next_seq = next_seq.max(seq + 1);
            let results = cm
                .labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some(COMPONENT);
            if results && cache.controls(&*cm) {
                ours.push((seq, cm));
            }
        }
        ours.sort_by_key(|(seq, _)| *seq);
        let replaced: HashSet<String> = ours
            .iter()
            .filter_map(|(_, cm)| cm.annotations().get(REPLACES_ANNOTATION).cloned())
            .collect();
        let before = ours.len();
        let live: Vec<Arc<ConfigMap>> = ours
            .into_iter()
            .map(|(_, cm)| cm)
            .filter(|cm| !replaced.contains(&cm.name_any()))
            .collect();
        Self {
            replaced: before - live.len(),
            live,
            next_seq,
        }
    }

    /// The recorded value of the item whose Job is `job`.
    pub fn get(&self, job: &str) -> Option<&str> {
        self.live
            .iter()
            .rev()
            .find_map(|cm| cm.data.as_ref()?.get(job))
            .map(String::as_str)
    }

    /// How many results the live ConfigMaps hold.
    pub fn len(&self) -> usize {
        self.live
            .iter()
            .map(|cm| cm.data.as_ref().map_or(0, BTreeMap::len))
            .sum()
    }

    /// Whether no result is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the live results ConfigMaps, oldest first.
    pub fn names(&self) -> Vec<String> {
        self.live.iter().map(|cm| cm.name_any()).collect()
    }

    /// How many of the queue's results ConfigMaps a newer one replaces.
    pub fn replaced(&self) -> usize {
        self.replaced
    }

    /// The live results ConfigMaps as children to keep: their names and resourceVersions
    /// only, never created or applied again ([`crate::controller::apply::create_once`]).
    pub fn kept(&self) -> Vec<ConfigMap> {
        self.live
            .iter()
            .map(|cm| ConfigMap {
                metadata: ObjectMeta {
                    name: cm.metadata.name.clone(),
                    namespace: cm.metadata.namespace.clone(),
                    uid: cm.metadata.uid.clone(),
                    resource_version: cm.metadata.resource_version.clone(),
                    ..ObjectMeta::default()
                },
                immutable: Some(true),
                ..ConfigMap::default()
            })
            .collect()
    }

    /// The new results ConfigMap that records `unrecorded` (Job name → value, in the order
    /// given), and how many of them it holds: all that fit in [`CHUNK_BYTES`], the others
    /// wait for the next one. When the newest live one has room, the new one holds its
    /// keys too and replaces it.
    pub fn next_chunk(
        &self,
        wq: &WorkQueue,
        unrecorded: &[(String, String)],
    ) -> (ConfigMap, usize) {
        let size = |(k, v): (&String, &String)| k.len() + v.len();
        let new_bytes: usize = unrecorded.iter().map(|(k, v)| size((k, v))).sum();
        let newest = self.live.last().filter(|cm| {
            let bytes: usize = cm.data.iter().flatten().map(size).sum();
            bytes + new_bytes <= CHUNK_BYTES
        });
        let mut data: BTreeMap<String, String> =
            newest.and_then(|cm| cm.data.clone()).unwrap_or_default();
        let mut bytes: usize = data.iter().map(size).sum();
        let mut taken = 0;
        for (job, value) in unrecorded {
            if bytes + job.len() + value.len() > CHUNK_BYTES {
                break;
            }
            bytes += job.len() + value.len();
            data.insert(job.clone(), value.clone());
            taken += 1;
        }
        let queue = wq.name_any();
        let annotations =
            newest.map(|cm| BTreeMap::from([(REPLACES_ANNOTATION.to_owned(), cm.name_any())]));
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(chunk_name(&queue, self.next_seq)),
                namespace: wq.namespace(),
                labels: Some(labels(wq, COMPONENT)),
                annotations,
                owner_references: crate::controller::owner_references(wq),
                ..ObjectMeta::default()
            },
            data: Some(data),
            immutable: Some(true),
            ..ConfigMap::default()
        };
        (cm, taken)
    }
}

/// Whether the results waiting on their Jobs are written out now: a batch is full, the
/// queue has nothing left to run, or one of them is due (its Job's TTL has passed, so it
/// waits to be deleted).
pub fn should_record(waiting: usize, idle: bool, due: bool) -> bool {
    waiting > 0 && (waiting >= BATCH || idle || due)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_parse_back_only_for_their_queue() {
        assert_eq!(parse_chunk_name("q", &chunk_name("q", 12)), Some(12));
        assert_eq!(parse_chunk_name("q", "q-results-"), None);
        assert_eq!(parse_chunk_name("q", "q-results-1x"), None);
        assert_eq!(parse_chunk_name("q", "qq-results-1"), None);
        assert_eq!(parse_chunk_name("q-results", "q-results-1"), None);
    }

    #[test]
    fn a_failure_is_recorded_with_its_reason_message_and_item() {
        let v = failed_value(
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
            "b.png",
        );
        assert_eq!(
            v,
            "Failed: BackoffLimitExceeded: Job has reached the specified backoff limit; item: \"b.png\""
        );
        assert!(!succeeded(&v) && succeeded(SUCCEEDED));
    }

    #[test]
    fn results_are_written_in_batches_at_the_end_or_when_a_ttl_is_due() {
        assert!(!should_record(0, true, true), "nothing to write");
        assert!(!should_record(BATCH - 1, false, false));
        assert!(should_record(BATCH, false, false));
        assert!(should_record(1, true, false));
        assert!(should_record(1, false, true));
    }
}
