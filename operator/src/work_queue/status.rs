//! The status a WorkQueue should show, computed without IO from its items, its Jobs as
//! applied, and the results its status already records.
//!
//! The status is the queue's memory: a finished item's result is recorded here before its
//! Job may be deleted, and stays after. So the results of the previous status are carried
//! over, and a Job that is gone does not make its item pending again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use rigging_crds::work_queue::{FailedItem, StuckItem};
use rigging_crds::{FieldErrors, WorkQueue, WorkQueueStatus};

use super::desired::{self, ITEM_ANNOTATION, Item};
use super::{naming, pods};
use crate::controller::conditions;
use crate::controller::conditions::{Cond, cond, finish};
use crate::controller::{Applied, Note};

/// How a Job finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its pod exited 0.
    Succeeded {
        /// When it completed.
        at: Timestamp,
    },
    /// Every try failed, or its deadline passed.
    Failed {
        /// When it failed.
        at: Timestamp,
        /// The Job's reason (`BackoffLimitExceeded`, `DeadlineExceeded`, …).
        reason: String,
        /// The Job's message.
        message: String,
    },
}

impl Outcome {
    fn at(&self) -> Timestamp {
        match self {
            Outcome::Succeeded { at } | Outcome::Failed { at, .. } => *at,
        }
    }
}

/// How `job` finished, or `None` while it runs: its `Complete` or `Failed` condition. The
/// interim conditions (`SuccessCriteriaMet`, `FailureTarget`) do not count: the Job's pods
/// may still be terminating, and they count against `parallelism` until they are gone.
pub fn outcome(job: &Job) -> Option<Outcome> {
    let status = job.status.as_ref()?;
    let holds = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    // A Job without the time it finished (which the Job controller always sets) counts as
    // finished long ago: its TTL, if any, has passed. Its result is recorded either way.
    let time = |t: Option<&Time>| t.map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    if let Some(c) = holds("Complete") {
        let at = status
            .completion_time
            .as_ref()
            .or(c.last_transition_time.as_ref());
        return Some(Outcome::Succeeded { at: time(at) });
    }
    let c = holds("Failed")?;
    Some(Outcome::Failed {
        at: time(c.last_transition_time.as_ref()),
        reason: c.reason.clone().unwrap_or_default(),
        message: c.message.clone().unwrap_or_default(),
    })
}

/// Most bytes of an item kept in `failedItems`: the Job's name already identifies it, and
/// the status must stay small next to the items themselves.
const MAX_RECORDED_ITEM: usize = 256;

/// Failed items named in a condition message, at most.
const NAMED_IN_MESSAGE: usize = 5;

/// Most bytes of a pod's message kept in `stuckItems`: an image pull error quotes the
/// registry's answer, which can be long, and five of them go into one condition.
const MAX_STUCK_MESSAGE: usize = 512;

/// Status of a WorkQueue whose children are applied.
pub fn observed(wq: &WorkQueue, applied: &Applied, now: Timestamp) -> WorkQueueStatus {
    let config_map = applied.get::<ConfigMap>(&naming::items_config_map(&wq.name_any()));
    // desired() refused the spec if these had errors; the applied ConfigMap can only be
    // fresher than the cached one it checked, and a key the poller did not write is then
    // left for the next reconcile to report.
    let (items, _) = desired::items(wq, config_map);
    let previous = wq.status.clone().unwrap_or_default();
    let source_mode = wq.spec.source.is_some();

    let mut succeeded: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeMap<String, FailedItem> = BTreeMap::new();
    let (mut pending, mut running) = (0, 0);
    // The Jobs that run, and their items: their pods may be stuck.
    let mut running_jobs: Vec<(String, String)> = Vec::new();
    let mut finished_jobs: Vec<(String, Timestamp)> = Vec::new();
    let recorded_ok: BTreeSet<&str> = previous.succeeded_jobs.iter().map(String::as_str).collect();
    let recorded_failed: BTreeMap<&str, &FailedItem> = previous
        .failed_items
        .iter()
        .map(|f| (f.job.as_str(), f))
        .collect();

    let mut record = |job_name: &str, item: &str, job: Option<&Job>| -> Option<bool> {
        // A recorded result stands: a Job never finishes twice.
        if recorded_ok.contains(job_name) {
            succeeded.insert(job_name.to_owned());
        } else if let Some(f) = recorded_failed.get(job_name) {
            failed.insert(job_name.to_owned(), (*f).clone());
        }
        let result = job.and_then(outcome);
        match (&result, job) {
            (Some(o), Some(job)) => {
                finished_jobs.push((job.name_any(), o.at()));
                if !succeeded.contains(job_name) && !failed.contains_key(job_name) {
                    match o {
                        Outcome::Succeeded { .. } => {
                            succeeded.insert(job_name.to_owned());
                        }
                        Outcome::Failed {
                            reason, message, ..
                        } => {
                            failed.insert(
                                job_name.to_owned(),
                                FailedItem {
                                    job: job_name.to_owned(),
                                    item: truncate(item, MAX_RECORDED_ITEM),
                                    reason: reason.clone(),
                                    message: message.clone(),
                                },
                            );
                        }
                    }
                }
                Some(true)
            }
            _ if succeeded.contains(job_name) || failed.contains_key(job_name) => Some(true),
            (None, Some(_)) => Some(false),
            (_, None) => None,
        }
    };
    // Some(true): finished; Some(false): its Job runs; None: no Job yet.
    let known: BTreeSet<&str> = items.iter().map(|i| i.job.as_str()).collect();
    for Item { item, job, .. } in &items {
        match record(job, item, applied.get::<Job>(job)) {
            Some(true) => {}
            Some(false) => {
                running += 1;
                running_jobs.push((job.clone(), item.clone()));
            }
            None => pending += 1,
        }
    }
    if source_mode {
        // Jobs kept although their item is missing from the ConfigMap (see desired), and
        // results of items the ConfigMap no longer holds: never forgotten.
        for job in applied
            .all::<Job>()
            .filter(|j| !known.contains(j.name_any().as_str()))
        {
            let item = job
                .annotations()
                .get(ITEM_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            if record(&job.name_any(), &item, Some(job)) == Some(false) {
                running += 1;
                running_jobs.push((job.name_any(), item));
            }
        }
        for job in &previous.succeeded_jobs {
            succeeded.insert(job.clone());
        }
        for f in &previous.failed_items {
            failed.entry(f.job.clone()).or_insert_with(|| f.clone());
        }
    }

    // The TTL: a finished Job whose result is recorded in this status, once its TTL has
    // passed, is listed as expired; the next reconcile, reading this status, leaves it out
    // of the desired children and it is deleted. Until then, the soonest deadline.
    let mut expired = Vec::new();
    let mut next_cleanup: Option<Timestamp> = None;
    if let Some(ttl) = wq.spec.ttl_seconds_after_finished {
        let ttl = SignedDuration::from_secs(i64::from(ttl));
        for (job, at) in finished_jobs {
            let deadline = at.checked_add(ttl).unwrap_or(Timestamp::MAX);
            if deadline <= now {
                expired.push(job);
            } else {
                next_cleanup = Some(next_cleanup.map_or(deadline, |n| n.min(deadline)));
            }
        }
    }
    expired.sort();
    expired.dedup();

    let mut stuck: Vec<StuckItem> = running_jobs
        .iter()
        .filter_map(|(name, item)| {
            let job = applied.get::<Job>(name)?;
            applied.pods_of(job).find_map(|pod| {
                let why = pods::stuck(pod)?;
                Some(StuckItem {
                    job: name.clone(),
                    item: truncate(item, MAX_RECORDED_ITEM),
                    pod: pod.name_any(),
                    reason: why.reason,
                    message: truncate(&why.message, MAX_STUCK_MESSAGE),
                })
            })
        })
        .collect();
    stuck.sort_by(|a, b| a.job.cmp(&b.job));

    let failed: Vec<FailedItem> = failed.into_values().collect();
    let generation = wq.metadata.generation;
    let counts = Counts {
        total: items.len(),
        pending,
        running,
        succeeded: succeeded.len(),
    };
    let conds = conditions_for(wq, &counts, &failed, &stuck);
    WorkQueueStatus {
        observed_generation: generation,
        pending,
        running,
        succeeded: count(succeeded.len()),
        failed: count(failed.len()),
        succeeded_jobs: succeeded.into_iter().collect(),
        failed_items: failed,
        stuck_items: stuck,
        expired_jobs: expired,
        next_cleanup_time: next_cleanup.map(Time),
        conditions: finish(previous_conditions(wq), conds, generation, now),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// How many items there are, and how far they got.
struct Counts {
    total: usize,
    pending: i32,
    running: i32,
    succeeded: usize,
}

fn conditions_for(
    wq: &WorkQueue,
    counts: &Counts,
    failed: &[FailedItem],
    stuck: &[StuckItem],
) -> [Cond; 3] {
    let &Counts {
        total,
        pending,
        running,
        succeeded,
    } = counts;
    let source_mode = wq.spec.source.is_some();
    let progressing = if pending + running > 0 {
        cond(
            "Progressing",
            true,
            "Processing",
            &format!(
                "{running} running, {pending} pending; {} of {total} items finished",
                succeeded + failed.len()
            ),
        )
    } else if total == 0 {
        cond(
            "Progressing",
            false,
            "WaitingForItems",
            "the source has listed no items yet",
        )
    } else {
        let so_far = if source_mode { " listed so far" } else { "" };
        cond(
            "Progressing",
            false,
            "Finished",
            &format!(
                "every item{so_far} finished: {succeeded} succeeded, {} failed",
                failed.len()
            ),
        )
    };
    // An item that cannot start comes first: it is what holds the queue up now, and what
    // someone can still fix; the failures follow in the same message.
    let degraded = if !stuck.is_empty() {
        let mut message = stuck_message(stuck);
        if !failed.is_empty() {
            message = format!("{message}; {}", failures_message(failed));
        }
        cond("Degraded", true, "ItemsStuck", &message)
    } else if !failed.is_empty() {
        cond("Degraded", true, "ItemsFailed", &failures_message(failed))
    } else {
        cond(
            "Degraded",
            false,
            "Reconciled",
            "the spec is valid and its objects are applied",
        )
    };
    let ready = if pending + running > 0 {
        cond(
            "Ready",
            false,
            "Processing",
            &format!("{} of {total} items finished", succeeded + failed.len()),
        )
    } else if !failed.is_empty() {
        cond("Ready", false, "ItemsFailed", &failures_message(failed))
    } else if total == 0 {
        cond(
            "Ready",
            true,
            "WaitingForItems",
            "no items yet, none failed",
        )
    } else {
        cond(
            "Ready",
            true,
            "AllSucceeded",
            &format!("all {total} items succeeded"),
        )
    };
    [ready, progressing, degraded]
}

/// `2 items failed every try: "a" (BackoffLimitExceeded), "b" (DeadlineExceeded)`.
fn failures_message(failed: &[FailedItem]) -> String {
    let named: Vec<String> = failed
        .iter()
        .take(NAMED_IN_MESSAGE)
        .map(|f| format!("{:?} ({})", f.item, reason_or_failed(f)))
        .collect();
    let more = failed.len().saturating_sub(NAMED_IN_MESSAGE);
    let tail = if more > 0 {
        format!(" and {more} more (status.failedItems)")
    } else {
        String::new()
    };
    let noun = if failed.len() == 1 { "item" } else { "items" };
    format!("{} {noun} failed: {}{tail}", failed.len(), named.join(", "))
}

/// `1 item cannot start: "a" (pod q-a-…-x7k2p: ImagePullBackOff: container "worker": …)`.
fn stuck_message(stuck: &[StuckItem]) -> String {
    let named: Vec<String> = stuck
        .iter()
        .take(NAMED_IN_MESSAGE)
        .map(|s| format!("{:?} ({})", s.item, why_stuck(s)))
        .collect();
    let more = stuck.len().saturating_sub(NAMED_IN_MESSAGE);
    let tail = if more > 0 {
        format!(" and {more} more (status.stuckItems)")
    } else {
        String::new()
    };
    let noun = if stuck.len() == 1 {
        "item cannot"
    } else {
        "items cannot"
    };
    format!("{} {noun} start: {}{tail}", stuck.len(), named.join(", "))
}

/// `pod P: REASON: MESSAGE`.
fn why_stuck(s: &StuckItem) -> String {
    if s.message.is_empty() {
        format!("pod {}: {}", s.pod, s.reason)
    } else {
        format!("pod {}: {}: {}", s.pod, s.reason, s.message)
    }
}

fn reason_or_failed(f: &FailedItem) -> &str {
    if f.reason.is_empty() {
        "Failed"
    } else {
        &f.reason
    }
}

/// Status of a WorkQueue whose spec is invalid: nothing is applied and no Job is deleted
/// until it is fixed; the counts and results stay as they were, and the conditions say why.
pub fn invalid(wq: &WorkQueue, errors: &FieldErrors, now: Timestamp) -> WorkQueueStatus {
    let generation = wq.metadata.generation;
    let message = errors.to_string();
    let previous = wq.status.clone().unwrap_or_default();
    WorkQueueStatus {
        observed_generation: generation,
        conditions: finish(
            previous_conditions(wq),
            conditions::invalid(&message),
            generation,
            now,
        ),
        ..previous
    }
}

fn previous_conditions(wq: &WorkQueue) -> &[Condition] {
    wq.status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}

/// A Warning Event for every item that `next` records as failed and the current status
/// did not: each failure is told once, also across operator restarts. And one for every
/// item that `next` lists as unable to start and the current status did not: told again
/// only if it got stuck again after it started (a new pod, say).
pub fn events(wq: &WorkQueue, next: &WorkQueueStatus) -> Vec<Note> {
    let mut notes = failure_events(wq, next);
    let before: BTreeSet<&str> = wq
        .status
        .iter()
        .flat_map(|s| s.stuck_items.iter().map(|s| s.job.as_str()))
        .collect();
    notes.extend(
        next.stuck_items
            .iter()
            .filter(|s| !before.contains(s.job.as_str()))
            .map(|s| Note {
                warning: true,
                reason: "ItemStuck",
                message: format!(
                    "item {:?} cannot start: {}; its Job is {}",
                    s.item,
                    why_stuck(s),
                    s.job
                ),
            }),
    );
    notes
}

fn failure_events(wq: &WorkQueue, next: &WorkQueueStatus) -> Vec<Note> {
    let before: BTreeSet<&str> = wq
        .status
        .iter()
        .flat_map(|s| s.failed_items.iter().map(|f| f.job.as_str()))
        .collect();
    next.failed_items
        .iter()
        .filter(|f| !before.contains(f.job.as_str()))
        .map(|f| {
            let retries = wq.spec.retries;
            let why = if f.message.is_empty() {
                reason_or_failed(f).to_owned()
            } else {
                format!("{}: {}", reason_or_failed(f), f.message)
            };
            Note {
                warning: true,
                reason: "ItemFailed",
                message: format!(
                    "item {:?} failed (retries: {retries}): {why}; its Job is {}",
                    f.item, f.job
                ),
            }
        })
        .collect()
}

/// When to look again: once the soonest finished Job's TTL ends.
pub fn requeue_after(status: &WorkQueueStatus, now: Timestamp) -> Option<Duration> {
    let at = status.next_cleanup_time.as_ref()?.0;
    let wait = now.duration_until(at);
    // Never a zero or negative wait: that would be a hot loop on a clock skew.
    Some(
        Duration::try_from(wait)
            .unwrap_or_default()
            .max(Duration::from_secs(1)),
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Child;
    use crate::work_queue::fixtures::*;
    use k8s_openapi::api::core::v1::Pod;

    const ITEMS: [&str; 4] = ["a", "b", "c", "d"];

    fn applied(wq: &WorkQueue, jobs: Vec<Job>) -> Applied {
        let mut children = vec![Child::ConfigMap(first(wq).items)];
        children.extend(jobs.into_iter().map(Child::Job));
        Applied::new(children)
    }

    fn with_pods(wq: &WorkQueue, jobs: Vec<Job>, pods: Vec<Pod>) -> Applied {
        applied(wq, jobs).with_pods(pods.into_iter().map(std::sync::Arc::new).collect())
    }

    fn pull_error(item: &str) -> Pod {
        pod_waiting(
            &format!("{}-x7k2p", name(item)),
            &job_uid(&name(item)),
            "worker",
            "ImagePullBackOff",
            "Back-off pulling image \"nope:1\"",
        )
    }

    #[test]
    fn a_pod_that_cannot_start_degrades_the_queue_naming_the_item_and_the_pods_reason() {
        let wq = static_queue(&ITEMS, 2);
        let jobs = vec![active(job_of(&wq, "a")), active(job_of(&wq, "b"))];
        let unschedulable = pod_unschedulable(
            "b-pod",
            &job_uid(&name("b")),
            "0/1 nodes are available: 1 Insufficient cpu.",
        );
        let status = observed(
            &wq,
            &with_pods(&wq, jobs, vec![pull_error("a"), unschedulable]),
            at(1),
        );
        assert_eq!(
            status.stuck_items,
            [
                StuckItem {
                    job: name("a"),
                    item: "a".into(),
                    pod: format!("{}-x7k2p", name("a")),
                    reason: "ImagePullBackOff".into(),
                    message: "container \"worker\": Back-off pulling image \"nope:1\"".into(),
                },
                StuckItem {
                    job: name("b"),
                    item: "b".into(),
                    pod: "b-pod".into(),
                    reason: "Unschedulable".into(),
                    message: "0/1 nodes are available: 1 Insufficient cpu.".into(),
                },
            ]
        );
        assert_eq!((status.running, status.pending), (2, 2), "still running");
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ItemsStuck")
        );
        assert_eq!(
            degraded.message,
            format!(
                "2 items cannot start: \"a\" (pod {}-x7k2p: ImagePullBackOff: container \"worker\": Back-off pulling image \"nope:1\"), \"b\" (pod b-pod: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.)",
                name("a")
            )
        );
        assert_eq!(condition(&status, "Progressing").reason, "Processing");
    }

    #[test]
    fn the_report_clears_once_the_pod_starts() {
        let mut wq = static_queue(&ITEMS, 1);
        let a = active(job_of(&wq, "a"));
        let jobs = || vec![a.clone()];
        wq.status = Some(observed(
            &wq,
            &with_pods(&wq, jobs(), vec![pull_error("a")]),
            at(1),
        ));
        let mut running = pull_error("a");
        running.status.as_mut().unwrap().phase = Some("Running".into());
        running
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .state = Some(k8s_openapi::api::core::v1::ContainerState {
            running: Some(Default::default()),
            ..Default::default()
        });
        let status = observed(&wq, &with_pods(&wq, jobs(), vec![running]), at(2));
        assert!(status.stuck_items.is_empty());
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("False", "Reconciled")
        );
        // Its pod gone (the watch holds only unfinished pods): nothing stuck either.
        let status = observed(&wq, &with_pods(&wq, jobs(), vec![]), at(3));
        assert!(status.stuck_items.is_empty());
    }

    #[test]
    fn only_the_pods_of_running_jobs_of_this_queue_count() {
        let wq = static_queue(&ITEMS, 2);
        // a's Job finished: a pod of it that the cache still holds says nothing now.
        // b's pod belongs to another Job of the same name (an earlier one): not its own.
        let jobs = vec![succeeded(job_of(&wq, "a"), at(0)), active(job_of(&wq, "b"))];
        let mut other = pull_error("b");
        other.metadata.owner_references.as_mut().unwrap()[0].uid = "an-earlier-job".into();
        let status = observed(
            &wq,
            &with_pods(&wq, jobs, vec![pull_error("a"), other]),
            at(1),
        );
        assert!(status.stuck_items.is_empty(), "{:?}", status.stuck_items);
        assert_eq!(condition(&status, "Degraded").status, "False");
    }

    #[test]
    fn a_stuck_item_is_named_before_the_failed_ones() {
        let wq = static_queue(&ITEMS, 2);
        let jobs = vec![failed(job_of(&wq, "a"), at(0)), active(job_of(&wq, "b"))];
        let status = observed(&wq, &with_pods(&wq, jobs, vec![pull_error("b")]), at(1));
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded.reason, "ItemsStuck");
        assert!(
            degraded
                .message
                .starts_with("1 item cannot start: \"b\" (pod "),
            "{}",
            degraded.message
        );
        assert!(
            degraded
                .message
                .ends_with("; 1 item failed: \"a\" (BackoffLimitExceeded)"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn an_item_that_cannot_start_is_told_once_in_a_warning() {
        let mut wq = static_queue(&ITEMS, 1);
        let a = active(job_of(&wq, "a"));
        let jobs = || vec![a.clone()];
        let next = observed(&wq, &with_pods(&wq, jobs(), vec![pull_error("a")]), at(1));
        let notes = events(&wq, &next);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].warning);
        assert_eq!(notes[0].reason, "ItemStuck");
        assert_eq!(
            notes[0].message,
            format!(
                "item \"a\" cannot start: pod {0}-x7k2p: ImagePullBackOff: container \"worker\": Back-off pulling image \"nope:1\"; its Job is {0}",
                name("a")
            )
        );
        wq.status = Some(next);
        // Still stuck, now with the other pull reason: not told again.
        let mut again = pull_error("a");
        let waiting = again
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .state
            .as_mut()
            .unwrap()
            .waiting
            .as_mut()
            .unwrap();
        waiting.reason = Some("ErrImagePull".into());
        let next = observed(&wq, &with_pods(&wq, jobs(), vec![again]), at(2));
        assert_eq!(next.stuck_items[0].reason, "ErrImagePull");
        assert_eq!(events(&wq, &next), []);
    }

    fn condition<'a>(status: &'a WorkQueueStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn name(item: &str) -> String {
        naming::job_name("thumbs", item)
    }

    #[test]
    fn counts_come_from_the_jobs_and_a_failed_item_is_recorded_with_its_reason() {
        let wq = static_queue(&ITEMS, 3);
        let jobs = vec![
            succeeded(job_of(&wq, "a"), at(0)),
            failed(job_of(&wq, "b"), at(0)),
            active(job_of(&wq, "c")),
        ];
        let status = observed(&wq, &applied(&wq, jobs), at(10));
        assert_eq!(
            (
                status.pending,
                status.running,
                status.succeeded,
                status.failed
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(status.succeeded_jobs, [name("a")]);
        assert_eq!(
            status.failed_items,
            [FailedItem {
                job: name("b"),
                item: "b".into(),
                reason: "BackoffLimitExceeded".into(),
                message: "Job has reached the specified backoff limit".into(),
            }]
        );
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(
            condition(&status, "Progressing").message,
            "1 running, 1 pending; 2 of 4 items finished"
        );
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ItemsFailed")
        );
        assert_eq!(
            degraded.message,
            "1 item failed: \"b\" (BackoffLimitExceeded)"
        );
        assert_eq!(condition(&status, "Ready").status, "False");
        assert!(
            status.expired_jobs.is_empty() && status.next_cleanup_time.is_none(),
            "no TTL"
        );
    }

    #[test]
    fn a_result_stays_recorded_after_its_job_is_gone() {
        let mut wq = static_queue(&ITEMS, 4);
        let jobs = ITEMS
            .iter()
            .map(|i| succeeded(job_of(&wq, i), at(0)))
            .collect();
        wq.status = Some(observed(&wq, &applied(&wq, jobs), at(10)));
        // Every Job deleted (TTL, or by hand): nothing becomes pending again.
        let status = observed(&wq, &applied(&wq, vec![]), at(20));
        assert_eq!(
            (status.pending, status.running, status.succeeded),
            (0, 0, 4)
        );
        let ready = condition(&status, "Ready");
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("True", "AllSucceeded", "all 4 items succeeded")
        );
        assert_eq!(condition(&status, "Progressing").reason, "Finished");
    }

    #[test]
    fn a_finished_job_expires_once_its_ttl_has_passed_and_the_queue_wakes_up_for_it() {
        let mut wq = static_queue(&ITEMS, 4);
        wq.spec.ttl_seconds_after_finished = Some(60);
        let jobs = || {
            vec![
                succeeded(job_of(&wq, "a"), at(0)),
                failed(job_of(&wq, "b"), at(30)),
            ]
        };
        let early = observed(&wq, &applied(&wq, jobs()), at(40));
        assert!(early.expired_jobs.is_empty());
        assert_eq!(early.next_cleanup_time, Some(Time(at(60))));
        assert_eq!(requeue_after(&early, at(40)), Some(Duration::from_secs(20)));

        let later = observed(&wq, &applied(&wq, jobs()), at(75));
        assert_eq!(
            later.expired_jobs,
            [name("a")],
            "recorded in the same status as its result"
        );
        assert_eq!(later.succeeded_jobs, [name("a")]);
        assert_eq!(later.next_cleanup_time, Some(Time(at(90))));
        // Late: never a zero wait.
        assert_eq!(requeue_after(&later, at(95)), Some(Duration::from_secs(1)));
        let none = observed(&static_queue(&ITEMS, 4), &applied(&wq, jobs()), at(75));
        assert_eq!(requeue_after(&none, at(75)), None);
    }

    #[test]
    fn a_ttl_of_zero_expires_a_job_in_the_status_that_records_its_result() {
        let mut wq = static_queue(&ITEMS, 4);
        wq.spec.ttl_seconds_after_finished = Some(0);
        let status = observed(
            &wq,
            &applied(&wq, vec![succeeded(job_of(&wq, "a"), at(0))]),
            at(0),
        );
        assert_eq!(status.succeeded_jobs, [name("a")]);
        assert_eq!(status.expired_jobs, [name("a")]);
    }

    #[test]
    fn an_expired_job_drops_out_of_the_list_once_it_is_deleted_but_its_result_stays() {
        let mut wq = static_queue(&ITEMS, 4);
        wq.spec.ttl_seconds_after_finished = Some(0);
        wq.status = Some(observed(
            &wq,
            &applied(&wq, vec![succeeded(job_of(&wq, "a"), at(0))]),
            at(0),
        ));
        let status = observed(&wq, &applied(&wq, vec![]), at(1));
        assert!(status.expired_jobs.is_empty());
        assert_eq!(status.succeeded_jobs, [name("a")]);
    }

    #[test]
    fn a_failure_is_told_once_in_a_warning_naming_the_item() {
        let mut wq = static_queue(&ITEMS, 4);
        let next = observed(
            &wq,
            &applied(&wq, vec![failed(job_of(&wq, "b"), at(0))]),
            at(1),
        );
        let notes = events(&wq, &next);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].warning);
        assert_eq!(notes[0].reason, "ItemFailed");
        assert_eq!(
            notes[0].message,
            format!(
                "item \"b\" failed (retries: 2): BackoffLimitExceeded: Job has reached the specified backoff limit; its Job is {}",
                name("b")
            )
        );
        wq.status = Some(next.clone());
        assert_eq!(
            events(&wq, &next),
            [],
            "already recorded, as after a restart"
        );
    }

    #[test]
    fn an_invalid_spec_keeps_the_counts_and_results() {
        let mut wq = static_queue(&ITEMS, 4);
        wq.status = Some(observed(
            &wq,
            &applied(&wq, vec![succeeded(job_of(&wq, "a"), at(0))]),
            at(1),
        ));
        let errors = FieldErrors(vec![rigging_crds::FieldError::new("spec.x", "bad")]);
        let status = invalid(&wq, &errors, at(2));
        assert_eq!((status.pending, status.succeeded), (3, 1));
        assert_eq!(status.succeeded_jobs, [name("a")]);
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (
                degraded.status.as_str(),
                degraded.reason.as_str(),
                degraded.message.as_str()
            ),
            ("True", "InvalidSpec", "spec.x: bad")
        );
    }

    #[test]
    fn only_the_complete_and_failed_conditions_finish_a_job() {
        let wq = static_queue(&ITEMS, 4);
        let mut job = failed(job_of(&wq, "a"), at(0));
        // FailureTarget alone: the pods are still terminating.
        job.status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .truncate(1);
        assert_eq!(outcome(&job), None);
        let status = observed(&wq, &applied(&wq, vec![job]), at(1));
        assert_eq!((status.running, status.failed), (1, 0));
    }

    #[test]
    fn long_items_are_cut_in_the_record_and_many_failures_are_summed_up() {
        let long = "é".repeat(300);
        let items: Vec<String> = (0..7).map(|i| format!("{i}{long}")).collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        let wq = static_queue(&refs, 7);
        let jobs = refs
            .iter()
            .map(|i| {
                let mut all = wq.clone();
                all.spec.parallelism = 7;
                let job = first(&all)
                    .jobs
                    .into_iter()
                    .find(|j| {
                        j.metadata.name.as_deref() == Some(naming::job_name("thumbs", i).as_str())
                    })
                    .unwrap();
                failed(job, at(0))
            })
            .collect();
        let status = observed(&wq, &applied(&wq, jobs), at(1));
        assert!(
            status
                .failed_items
                .iter()
                .all(|f| f.item.len() <= MAX_RECORDED_ITEM + "…".len() && f.item.ends_with('…'))
        );
        assert!(
            condition(&status, "Degraded")
                .message
                .ends_with(" and 2 more (status.failedItems)")
        );
        assert!(
            condition(&status, "Degraded")
                .message
                .starts_with("7 items failed: ")
        );
    }
}
