//! The status a WorkQueue should show, computed without IO from its items, its Jobs as
//! applied, and the results its status already records.
//!
//! The status is the queue's memory: a finished item's result is recorded here before its
//! Job may be deleted, and stays after. So the results of the previous status are carried
//! over, and a Job that is gone does not make its item pending again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use rigging_crds::work_queue::{
    Backups, EXPIRED_LISTED, FailedItem, LAST_FAILURES, Results, STUCK_LISTED, StuckItem,
};
use rigging_crds::{FieldErrors, WorkQueue, WorkQueueStatus};

use super::desired::{self, ITEM_ANNOTATION, Item};
use super::results::{self, Recorded};
use super::speculative::{self, Standing, Which};
use super::{naming, pods};
use crate::controller::conditions;
use crate::controller::conditions::{Cond, cond, truncate};
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

    /// Whether the Job succeeded.
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Succeeded { .. })
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

/// What is recorded of a finished item in a results ConfigMap ([`results`]).
pub fn recorded_value(outcome: &Outcome, item: &str) -> String {
    match outcome {
        Outcome::Succeeded { .. } => results::SUCCEEDED.to_owned(),
        Outcome::Failed {
            reason, message, ..
        } => results::failed_value(
            reason,
            &truncate(message, MAX_FAILURE_MESSAGE),
            &truncate(item, MAX_RECORDED_ITEM),
        ),
    }
}

/// Most bytes of an item kept in `lastFailures`, `stuckItems` and the results: the Job's
/// name already identifies it, and the status must stay small.
const MAX_RECORDED_ITEM: usize = 256;

/// Most bytes of a Job's failure message kept.
const MAX_FAILURE_MESSAGE: usize = 512;

/// Failed items named in a condition message, at most.
const NAMED_IN_MESSAGE: usize = 5;

/// Most bytes of a pod's message kept in `stuckItems`: an image pull error quotes the
/// registry's answer, which can be long, and five of them go into one condition.
const MAX_STUCK_MESSAGE: usize = 512;

/// Least time a result waits on its Job before it is written out because the Job's TTL
/// passed: results of Jobs that finish together go into one results ConfigMap, not one
/// each (`ttlSecondsAfterFinished: 0` deletes a Job this much later).
const MIN_RECORD_DELAY: SignedDuration = SignedDuration::from_secs(10);

/// A Job of an item that this queue does not control.
struct Conflict {
    job: String,
    item: String,
    holder: String,
}

/// Status of a WorkQueue whose children are applied.
///
/// Each item costs a lookup in the caches (its Job by name, its result in the results
/// ConfigMaps); only unfinished Jobs and finished ones whose result is not yet recorded
/// cost more. Nothing is copied.
pub fn observed(wq: &WorkQueue, applied: &Applied, now: Timestamp) -> WorkQueueStatus {
    let queue = wq.name_any();
    let cache = applied.cache();
    // In source mode the items are the poller's keys, which the cache has (the operator
    // applies none); a static list is the spec's.
    let live_items = cache.and_then(|c| c.get::<ConfigMap>(&naming::items_config_map(&queue)));
    let (items, _) = desired::items(wq, live_items.as_deref());
    let previous = wq.status.clone().unwrap_or_default();
    let recorded = Recorded::read(wq, cache);
    // A results ConfigMap written in this reconcile counts once the cache has it: the
    // Jobs whose results it holds are not deleted before.
    let written = applied
        .all::<ConfigMap>()
        .filter(|cm| cm.immutable == Some(true) && cm.data.is_some())
        .filter_map(|cm| cm.metadata.name.clone())
        .find(|n| results::parse_chunk_name(&queue, n).is_some());

    let ttl = wq
        .spec
        .ttl_seconds_after_finished
        .map(|t| SignedDuration::from_secs(i64::from(t)));
    let (mut pending, mut running, mut succeeded, mut failed) = (0usize, 0, 0usize, 0usize);
    let mut unrecorded = 0;
    let mut new_failures: Vec<FailedItem> = Vec::new();
    let mut running_jobs: Vec<(Arc<Job>, String)> = Vec::new();
    let mut conflicts: Vec<Conflict> = Vec::new();
    let mut expired: Vec<String> = Vec::new();
    let mut next_cleanup: Option<Timestamp> = None;
    let mut deadline = |job: &str, at: Timestamp, wait: SignedDuration| {
        let end = at.checked_add(wait).unwrap_or(Timestamp::MAX);
        if end <= now {
            expired.push(job.to_owned());
        } else {
            next_cleanup = Some(next_cleanup.map_or(end, |n: Timestamp| n.min(end)));
        }
    };

    // Speculative backups: started and won, how far the queue got, and the start of each
    // running item without a backup.
    let (mut started, mut won) = (0usize, 0usize);
    let mut run_times = Vec::new();
    let mut candidates: Vec<Timestamp> = Vec::new();
    // A Job created in this reconcile is not in the cache yet.
    let lookup = |name: &str| -> Option<Arc<Job>> {
        let live = match cache {
            Some(c) => c.get::<Job>(name),
            None => applied.get::<Job>(name).cloned().map(Arc::new),
        };
        live.or_else(|| applied.get::<Job>(name).cloned().map(Arc::new))
    };
    let mut consider = |job_name: &str, item: &str| {
        let first = lookup(job_name);
        let foreign = first
            .as_ref()
            .filter(|j| cache.is_some_and(|c| !c.controls(&***j)));
        if let Some(j) = foreign {
            conflicts.push(Conflict {
                job: job_name.to_owned(),
                item: truncate(item, MAX_RECORDED_ITEM),
                holder: holder(j),
            });
            pending += 1;
            return;
        }
        let backup_name = speculative::backup_name(wq, item);
        let backup = backup_name
            .as_deref()
            .and_then(lookup)
            .filter(|j| cache.is_none_or(|c| c.controls(&**j)));
        let pair = [
            (first, job_name),
            (backup, backup_name.as_deref().unwrap_or_default()),
        ];
        if let Some(value) = recorded.get(job_name) {
            let (winner, had_backup) = speculative::recorded_winner(value);
            started += usize::from(had_backup);
            won += usize::from(winner == Which::Backup);
            let (live, name) = winner.of(&pair);
            let outcome = live.as_deref().and_then(outcome);
            // A recorded result stands: a Job never finishes twice.
            if results::succeeded(value) {
                succeeded += 1;
                run_times.extend(live.as_deref().and_then(speculative::run_time));
            } else {
                failed += 1;
                // Recorded in the reconcile that first saw it fail, it was never listed:
                // listed now while its Job is there to say why. Listed before, it stays
                // once; pushed out by newer failures, it is older than them and stays out.
                new_failures.extend(
                    outcome
                        .as_ref()
                        .and_then(|o| failed_item(job_name, item, o)),
                );
            }
            // Only a Job the queue keeps: one left out (expired) is deleted in this
            // reconcile, although the cache may still hold it.
            let kept = applied.get::<Job>(name).is_some();
            if let (Some(ttl), Some(o), true) = (ttl, &outcome, kept) {
                deadline(name, o.at(), ttl);
            }
            return;
        }
        let has_backup = pair[1].0.is_some();
        started += usize::from(has_backup);
        match speculative::standing(pair[0].0.as_deref(), pair[1].0.as_deref()) {
            Standing::Finished {
                outcome: o, winner, ..
            } => {
                unrecorded += 1;
                won += usize::from(winner == Which::Backup && o.succeeded());
                match failed_item(job_name, item, &o) {
                    None => {
                        succeeded += 1;
                        let (live, _) = winner.of(&pair);
                        run_times.extend(live.as_deref().and_then(speculative::run_time));
                    }
                    Some(failure) => {
                        failed += 1;
                        new_failures.push(failure);
                    }
                }
                // Not recorded yet: due once its TTL has passed, and not before a short
                // while, so that results that finish together are written together.
                if let Some(ttl) = ttl {
                    deadline(winner.of(&pair).1, o.at(), ttl.max(MIN_RECORD_DELAY));
                }
            }
            Standing::Running => {
                running += 1;
                for (live, _) in &pair {
                    if let Some(job) = live.as_ref().filter(|j| outcome(j).is_none()) {
                        running_jobs.push((job.clone(), item.to_owned()));
                    }
                }
                if !has_backup {
                    candidates.extend(pair[0].0.as_deref().and_then(speculative::started));
                }
            }
            Standing::Unstarted => pending += 1,
        }
    };
    for Item { item, job, .. } in &items {
        consider(job, item);
    }
    if wq.spec.source.is_some() {
        // Jobs kept although their item is missing from the ConfigMap (see desired).
        let known: std::collections::HashSet<&str> = items.iter().map(|i| i.job.as_str()).collect();
        let kept: Vec<Arc<Job>> = match cache {
            Some(c) => c
                .in_namespace::<Job>()
                .into_iter()
                .filter(|j| c.controls(&**j))
                .collect(),
            None => applied.all::<Job>().cloned().map(Arc::new).collect(),
        };
        for job in kept {
            let name = job.name_any();
            if !known.contains(name.as_str()) && !desired::is_backup(&job) {
                let item = job
                    .annotations()
                    .get(ITEM_ANNOTATION)
                    .cloned()
                    .unwrap_or_default();
                consider(&name, &item);
            }
        }
    }
    expired.sort();
    expired.dedup();
    expired.truncate(EXPIRED_LISTED);

    let mut stuck: Vec<StuckItem> = running_jobs
        .iter()
        .filter_map(|(job, item)| {
            applied.pods_of(job).find_map(|pod| {
                let why = pods::stuck(pod)?;
                Some(StuckItem {
                    job: job.name_any(),
                    item: truncate(item, MAX_RECORDED_ITEM),
                    pod: pod.name_any(),
                    reason: why.reason,
                    message: truncate(&why.message, MAX_STUCK_MESSAGE),
                })
            })
        })
        .collect();
    stuck.sort_by(|a, b| a.job.cmp(&b.job));
    let stuck_total = stuck.len();
    stuck.truncate(STUCK_LISTED);
    conflicts.sort_by(|a, b| a.job.cmp(&b.job));

    let last_failures = last_failures(&previous.last_failures, new_failures);
    let mut config_maps = recorded.names();
    config_maps.extend(written);
    let generation = wq.metadata.generation;
    let counts = Counts {
        total: items.len(),
        pending: count(pending),
        running: count(running),
        succeeded,
        failed,
    };
    let failures = Failures {
        failed,
        named: &last_failures,
    };
    let conds = conditions_for(wq, &counts, &failures, &stuck, stuck_total, &conflicts);
    let backups = wq.spec.speculative.as_ref().map(|spec| {
        let progress = speculative::Progress {
            items: items.len(),
            unstarted: pending,
            succeeded,
            run_times,
        };
        let plan = speculative::plan(spec, progress, &candidates, now);
        Backups {
            started: count(started),
            won: count(won),
            straggler_seconds: plan.straggler_after.map(|d| d.as_secs()),
            next_check_time: plan.next_check.map(Time),
        }
    });
    WorkQueueStatus {
        observed_generation: generation,
        pending: count(pending),
        running: count(running),
        succeeded: count(succeeded),
        failed: count(failed),
        last_failures,
        results: Some(Results {
            config_maps,
            selector: results::selector(&queue),
            recorded: count(recorded.len()),
            unrecorded: count(unrecorded),
        }),
        stuck_items: stuck,
        expired_jobs: expired,
        next_cleanup_time: next_cleanup.map(Time),
        backups,
        conditions: conditions::of(wq, conds, now),
    }
}

/// How a failed item is listed in `lastFailures`; `None` for an item that succeeded.
fn failed_item(job: &str, item: &str, outcome: &Outcome) -> Option<FailedItem> {
    let Outcome::Failed {
        at,
        reason,
        message,
    } = outcome
    else {
        return None;
    };
    Some(FailedItem {
        job: job.to_owned(),
        item: truncate(item, MAX_RECORDED_ITEM),
        reason: reason.clone(),
        message: truncate(message, MAX_FAILURE_MESSAGE),
        finished_at: Some(Time(*at)),
    })
}

/// `controller WorkQueue other`, or `no controller`: who holds a Job that is not ours.
fn holder(job: &Job) -> String {
    job.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map_or("no controller".to_owned(), |o| {
            format!("controller {} {}", o.kind, o.name)
        })
}

/// The newest [`LAST_FAILURES`] of the failures listed before and those seen now, newest
/// first. A failure pushed out by newer ones never comes back: each is told once.
fn last_failures(before: &[FailedItem], new: Vec<FailedItem>) -> Vec<FailedItem> {
    let mut all: Vec<FailedItem> = before.to_vec();
    for f in new {
        if !all.iter().any(|b| b.job == f.job) {
            all.push(f);
        }
    }
    let at = |f: &FailedItem| {
        f.finished_at
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
    };
    all.sort_by(|a, b| at(b).cmp(&at(a)).then_with(|| a.job.cmp(&b.job)));
    all.truncate(LAST_FAILURES);
    all
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
    failed: usize,
}

/// How many items failed, and the last few of them, which conditions name.
struct Failures<'a> {
    failed: usize,
    named: &'a [FailedItem],
}

fn conditions_for(
    wq: &WorkQueue,
    counts: &Counts,
    failures: &Failures,
    stuck: &[StuckItem],
    stuck_total: usize,
    conflicts: &[Conflict],
) -> [Cond; 3] {
    let &Counts {
        total,
        pending,
        running,
        succeeded,
        failed,
    } = counts;
    let source_mode = wq.spec.source.is_some();
    let progressing = if pending + running > 0 {
        cond(
            "Progressing",
            true,
            "Processing",
            &format!(
                "{running} running, {pending} pending; {} of {total} items finished",
                succeeded + failed
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
            &format!("every item{so_far} finished: {succeeded} succeeded, {failed} failed"),
        )
    };
    // An item that cannot start comes first: it is what holds the queue up now, and what
    // someone can still fix; then a Job name another object holds; the failures follow in
    // the same message.
    let mut problems: Vec<(&str, String)> = Vec::new();
    if !stuck.is_empty() {
        problems.push(("ItemsStuck", stuck_message(stuck, stuck_total)));
    }
    if !conflicts.is_empty() {
        problems.push(("JobConflict", conflict_message(conflicts)));
    }
    if failed > 0 {
        problems.push(("ItemsFailed", failures_message(failures)));
    }
    let degraded = match problems.first() {
        Some((reason, _)) => {
            let message: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
            cond("Degraded", true, reason, &message.join("; "))
        }
        None => cond(
            "Degraded",
            false,
            "Reconciled",
            "the spec is valid and its objects are applied",
        ),
    };
    let ready = if pending + running > 0 {
        cond(
            "Ready",
            false,
            "Processing",
            &format!("{} of {total} items finished", succeeded + failed),
        )
    } else if failed > 0 {
        cond("Ready", false, "ItemsFailed", &failures_message(failures))
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

/// `2 items failed: "a" (BackoffLimitExceeded), "b" (DeadlineExceeded)`, the newest first,
/// and how many more, with where to find them.
fn failures_message(failures: &Failures) -> String {
    let named: Vec<String> = failures
        .named
        .iter()
        .take(NAMED_IN_MESSAGE)
        .map(|f| format!("{:?} ({})", f.item, reason_or_failed(f)))
        .collect();
    let more = failures.failed.saturating_sub(named.len());
    let tail = if more > 0 {
        format!(" and {more} more (status.results)")
    } else {
        String::new()
    };
    let noun = if failures.failed == 1 {
        "item"
    } else {
        "items"
    };
    format!(
        "{} {noun} failed: {}{tail}",
        failures.failed,
        named.join(", ")
    )
}

/// `1 item cannot get its Job: "a" (Job q-a-…: it exists with no controller, not this
/// WorkQueue: …)`.
fn conflict_message(conflicts: &[Conflict]) -> String {
    let named: Vec<String> = conflicts
        .iter()
        .take(NAMED_IN_MESSAGE)
        .map(|c| format!("{:?} (Job {} exists with {})", c.item, c.job, c.holder))
        .collect();
    let more = conflicts.len().saturating_sub(NAMED_IN_MESSAGE);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let noun = if conflicts.len() == 1 {
        "item waits"
    } else {
        "items wait"
    };
    format!(
        "{} {noun} for a Job name this WorkQueue does not control: {}{tail}; such a Job is never counted as the item's: delete it (or the WorkQueue's results would be another object's)",
        conflicts.len(),
        named.join(", ")
    )
}

/// `1 item cannot start: "a" (pod q-a-…-x7k2p: ImagePullBackOff: container "worker": …)`.
fn stuck_message(stuck: &[StuckItem], total: usize) -> String {
    let named: Vec<String> = stuck
        .iter()
        .take(NAMED_IN_MESSAGE)
        .map(|s| format!("{:?} ({})", s.item, why_stuck(s)))
        .collect();
    let more = total.saturating_sub(named.len());
    let tail = if more > 0 {
        format!(" and {more} more (status.stuckItems)")
    } else {
        String::new()
    };
    let noun = if total == 1 {
        "item cannot"
    } else {
        "items cannot"
    };
    format!("{total} {noun} start: {}{tail}", named.join(", "))
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
        conditions: conditions::of(wq, conditions::invalid(&message), now),
        ..previous
    }
}

/// A Warning Event for every item that `next` records as failed and the current status
/// did not: each failure is told once, also across operator restarts. And one for every
/// item that `next` lists as unable to start and the current status did not: told again
/// only if it got stuck again after it started (a new pod, say).
pub fn events(wq: &WorkQueue, next: &WorkQueueStatus) -> Vec<Note> {
    let mut notes = failure_events(wq, next);
    notes.extend(backup_events(wq, next));
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

/// A Normal Event when backups start, and one when backups win: counted from the results
/// and the Jobs, the counts only grow, so each is told once.
fn backup_events(wq: &WorkQueue, next: &WorkQueueStatus) -> Vec<Note> {
    let Some(now) = next.backups.as_ref() else {
        return Vec::new();
    };
    let before = wq.status.as_ref().and_then(|s| s.backups.as_ref());
    let (started, won) = before.map_or((0, 0), |b| (b.started, b.won));
    let plural = |n: i32, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let mut notes = Vec::new();
    if now.started > started {
        let after = wq
            .spec
            .speculative
            .as_ref()
            .map_or(String::new(), |s| s.after.clone());
        let over = now.straggler_seconds.map_or(String::new(), |secs| {
            format!(" for items running over {secs}s ({after} the median)")
        });
        notes.push(Note {
            warning: false,
            reason: "BackupsStarted",
            message: format!(
                "{} started{over}; {} in all",
                plural(now.started - started, "backup Job", "backup Jobs"),
                now.started
            ),
        });
    }
    if now.won > won {
        notes.push(Note {
            warning: false,
            reason: "BackupsWon",
            message: format!(
                "{} first: {} of {} backups won",
                plural(now.won - won, "backup succeeded", "backups succeeded"),
                now.won,
                now.started
            ),
        });
    }
    notes
}

fn failure_events(wq: &WorkQueue, next: &WorkQueueStatus) -> Vec<Note> {
    let before: BTreeSet<&str> = wq
        .status
        .iter()
        .flat_map(|s| s.last_failures.iter().map(|f| f.job.as_str()))
        .collect();
    let mut notes: Vec<Note> = next
        .last_failures
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
        .collect();
    // A Job name held by another object: told when it starts, or names other Jobs.
    let conflict = |s: &WorkQueueStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.reason == "JobConflict")
            .map(|c| c.message.clone())
    };
    let before = wq.status.as_ref().and_then(conflict);
    if let Some(message) = conflict(next).filter(|m| before.as_ref() != Some(m)) {
        notes.push(Note {
            warning: true,
            reason: "JobConflict",
            message,
        });
    }
    notes
}

/// How soon a queue whose items wait for a Job name another object holds looks again: the
/// deletion of such a Job (which has no owner, or another) reaches no WorkQueue's
/// controller as an event.
const CONFLICT_RECHECK: Duration = Duration::from_secs(10);

/// When to look again: once the soonest finished Job's TTL ends, when the next running
/// item becomes a straggler that gets a backup, and soon while a Job name is taken by a
/// Job the queue does not control.
pub fn requeue_after(status: &WorkQueueStatus, now: Timestamp) -> Option<Duration> {
    let conflict = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.reason == "JobConflict")
        .then_some(CONFLICT_RECHECK);
    let backups = status
        .backups
        .as_ref()
        .and_then(|b| b.next_check_time.as_ref());
    [status.next_cleanup_time.as_ref(), backups]
        .into_iter()
        .flatten()
        .map(|at| {
            // Never a zero or negative wait: that would be a hot loop on a clock skew.
            Duration::try_from(now.duration_until(at.0))
                .unwrap_or_default()
                .max(Duration::from_secs(1))
        })
        .chain(conflict)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Child;
    use crate::work_queue::fixtures::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    const ITEMS: [&str; 4] = ["a", "b", "c", "d"];

    fn applied(jobs: Vec<Job>) -> Applied {
        Applied::new(jobs.into_iter().map(Child::Job).collect())
    }

    fn with_pods(jobs: Vec<Job>, pods: Vec<Pod>) -> Applied {
        applied(jobs).with_pods(
            pods.into_iter()
                .map(std::sync::Arc::new)
                .collect::<Vec<_>>(),
        )
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
            &with_pods(jobs, vec![pull_error("a"), unschedulable]),
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
            &with_pods(jobs(), vec![pull_error("a")]),
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
        let status = observed(&wq, &with_pods(jobs(), vec![running]), at(2));
        assert!(status.stuck_items.is_empty());
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("False", "Reconciled")
        );
        // Its pod gone (the watch holds only unfinished pods): nothing stuck either.
        let status = observed(&wq, &with_pods(jobs(), vec![]), at(3));
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
        let status = observed(&wq, &with_pods(jobs, vec![pull_error("a"), other]), at(1));
        assert!(status.stuck_items.is_empty(), "{:?}", status.stuck_items);
        assert_eq!(condition(&status, "Degraded").status, "False");
    }

    #[test]
    fn a_stuck_item_is_named_before_the_failed_ones() {
        let wq = static_queue(&ITEMS, 2);
        let jobs = vec![failed(job_of(&wq, "a"), at(0)), active(job_of(&wq, "b"))];
        let status = observed(&wq, &with_pods(jobs, vec![pull_error("b")]), at(1));
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
        let next = observed(&wq, &with_pods(jobs(), vec![pull_error("a")]), at(1));
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
        let next = observed(&wq, &with_pods(jobs(), vec![again]), at(2));
        assert_eq!(next.stuck_items[0].reason, "ErrImagePull");
        assert_eq!(events(&wq, &next), []);
    }

    fn condition<'a>(status: &'a WorkQueueStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn name(item: &str) -> String {
        naming::job_name("thumbs", item)
    }

    /// `jobs` applied and cached, with `wq`'s results ConfigMap recording `recorded`.
    fn with_results(wq: &WorkQueue, jobs: Vec<Job>, recorded: &[(String, String)]) -> Applied {
        let mut cached: Vec<Child> = jobs.iter().cloned().map(Child::Job).collect();
        if !recorded.is_empty() {
            cached.push(Child::ConfigMap(results_chunk(wq, 0, recorded)));
        }
        let mut children = Vec::new();
        children.extend(jobs.into_iter().map(Child::Job));
        applied_with_cache(children, cached, vec![])
    }

    #[test]
    fn counts_come_from_the_jobs_and_a_failed_item_is_listed_with_its_reason() {
        let wq = static_queue(&ITEMS, 3);
        let jobs = vec![
            succeeded(job_of(&wq, "a"), at(0)),
            failed(job_of(&wq, "b"), at(0)),
            active(job_of(&wq, "c")),
        ];
        let status = observed(&wq, &applied(jobs), at(10));
        assert_eq!(
            (
                status.pending,
                status.running,
                status.succeeded,
                status.failed
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(
            status.last_failures,
            [FailedItem {
                job: name("b"),
                item: "b".into(),
                reason: "BackoffLimitExceeded".into(),
                message: "Job has reached the specified backoff limit".into(),
                finished_at: Some(Time(at(0))),
            }]
        );
        let results = status.results.as_ref().unwrap();
        assert_eq!(
            (
                results.recorded,
                results.unrecorded,
                results.selector.as_str()
            ),
            (
                0,
                2,
                "rigging.dev/work-queue=thumbs,app.kubernetes.io/component=results"
            )
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
    fn an_item_with_a_backup_counts_once_and_the_backups_started_and_won_survive_their_jobs() {
        let mut wq = static_queue(&ITEMS, 4);
        wq.spec.speculative = Some(rigging_crds::work_queue::Speculative {
            after: "1.5x".into(),
            idempotent: true,
        });
        let done = |i| succeeded(active_since(job_of(&wq, i), at(0)), at(10));
        // a: recorded, its backup won, both Jobs gone. b: its first Job won, unrecorded,
        // its backup still running. c: first Job and backup both run. d: runs, no backup.
        let recorded = [(name("a"), "Succeeded; backup won".to_owned())];
        let jobs = vec![
            done("b"),
            active_since(backup_of(&wq, "b"), at(12)),
            active_since(job_of(&wq, "c"), at(0)),
            active_since(backup_of(&wq, "c"), at(16)),
            active_since(job_of(&wq, "d"), at(5)),
        ];
        let status = observed(&wq, &with_results(&wq, jobs, &recorded), at(17));
        assert_eq!(
            (
                status.pending,
                status.running,
                status.succeeded,
                status.failed
            ),
            (0, 2, 2, 0)
        );
        let results = status.results.as_ref().unwrap();
        assert_eq!((results.recorded, results.unrecorded), (1, 1));
        let backups = status.backups.clone().unwrap();
        assert_eq!((backups.started, backups.won), (3, 1));
        // The median of the run times still on Jobs (b's 10 s), 1.5x: d, started at 5 s,
        // gets one at 20 s; the queue looks again then.
        assert_eq!(backups.straggler_seconds, Some(15));
        assert_eq!(backups.next_check_time, Some(Time(at(20))));
        assert_eq!(requeue_after(&status, at(17)), Some(Duration::from_secs(3)));
        // Told once each: from nothing, then not again for the same counts.
        let told: Vec<(&str, String)> = events(&wq, &status)
            .into_iter()
            .map(|n| (n.reason, n.message))
            .collect();
        assert_eq!(
            told,
            [
                (
                    "BackupsStarted",
                    "3 backup Jobs started for items running over 15s (1.5x the median); 3 in all"
                        .to_owned()
                ),
                (
                    "BackupsWon",
                    "1 backup succeeded first: 1 of 3 backups won".to_owned()
                ),
            ]
        );
        wq.status = Some(status.clone());
        assert_eq!(events(&wq, &status), []);
    }

    #[test]
    fn a_queue_without_speculative_shows_no_backups() {
        let wq = static_queue(&ITEMS, 4);
        let status = observed(&wq, &applied(vec![active(job_of(&wq, "a"))]), at(1));
        assert_eq!(status.backups, None);
    }

    #[test]
    fn a_failure_recorded_as_soon_as_it_is_seen_is_listed_too() {
        let wq = static_queue(&ITEMS, 4);
        let bad = failed(job_of(&wq, "b"), at(0));
        let outcome = outcome(&bad).unwrap();
        let recorded = [recorded_as(&bad, &recorded_value(&outcome, "b"))];
        // Its result went into a results ConfigMap in the reconcile that first saw it
        // fail (the queue had nothing left to run), before any status listed it.
        let status = observed(&wq, &with_results(&wq, vec![bad], &recorded), at(10));
        assert_eq!(status.failed, 1);
        assert_eq!(
            status
                .last_failures
                .iter()
                .map(|f| (f.job.as_str(), f.reason.as_str()))
                .collect::<Vec<_>>(),
            [(name("b").as_str(), "BackoffLimitExceeded")]
        );
    }

    #[test]
    fn a_result_stays_recorded_after_its_job_is_gone() {
        let wq = static_queue(&ITEMS, 4);
        let recorded: Vec<(String, String)> = ITEMS
            .iter()
            .map(|i| recorded_as(&job_of(&wq, i), "Succeeded"))
            .collect();
        // Every Job deleted (TTL, or by hand): nothing becomes pending again.
        let status = observed(&wq, &with_results(&wq, vec![], &recorded), at(20));
        assert_eq!(
            (status.pending, status.running, status.succeeded),
            (0, 0, 4)
        );
        let results = status.results.as_ref().unwrap();
        assert_eq!(results.config_maps, ["thumbs-results-0"]);
        assert_eq!((results.recorded, results.unrecorded), (4, 0));
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
    fn a_recorded_job_expires_once_its_ttl_has_passed_and_the_queue_wakes_up_for_it() {
        let mut wq = static_queue(&ITEMS, 4);
        wq.spec.ttl_seconds_after_finished = Some(60);
        let jobs = || {
            vec![
                succeeded(job_of(&wq, "a"), at(0)),
                failed(job_of(&wq, "b"), at(30)),
            ]
        };
        let recorded = [
            recorded_as(&job_of(&wq, "a"), "Succeeded"),
            recorded_as(&job_of(&wq, "b"), "Failed: BackoffLimitExceeded"),
        ];
        let early = observed(&wq, &with_results(&wq, jobs(), &recorded), at(40));
        assert!(early.expired_jobs.is_empty());
        assert_eq!(early.next_cleanup_time, Some(Time(at(60))));
        assert_eq!(requeue_after(&early, at(40)), Some(Duration::from_secs(20)));

        let later = observed(&wq, &with_results(&wq, jobs(), &recorded), at(75));
        assert_eq!(later.expired_jobs, [name("a")]);
        assert_eq!(later.next_cleanup_time, Some(Time(at(90))));
        // Late: never a zero wait.
        assert_eq!(requeue_after(&later, at(95)), Some(Duration::from_secs(1)));
        let none = observed(&static_queue(&ITEMS, 4), &applied(jobs()), at(75));
        assert_eq!(requeue_after(&none, at(75)), None);
    }

    #[test]
    fn an_unrecorded_job_is_due_a_little_after_its_ttl_so_that_results_go_out_together() {
        let mut wq = static_queue(&ITEMS, 4);
        wq.spec.ttl_seconds_after_finished = Some(0);
        let jobs = || vec![succeeded(job_of(&wq, "a"), at(0))];
        let status = observed(&wq, &applied(jobs()), at(1));
        assert!(status.expired_jobs.is_empty());
        assert_eq!(status.next_cleanup_time, Some(Time(at(10))));
        let status = observed(&wq, &applied(jobs()), at(10));
        assert_eq!(status.expired_jobs, [name("a")]);
        assert_eq!(status.succeeded, 1);
    }

    #[test]
    fn a_failure_is_told_once_in_a_warning_naming_the_item() {
        let mut wq = static_queue(&ITEMS, 4);
        let next = observed(&wq, &applied(vec![failed(job_of(&wq, "b"), at(0))]), at(1));
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
        assert_eq!(events(&wq, &next), [], "already told, as after a restart");
    }

    #[test]
    fn an_invalid_spec_keeps_the_counts_and_results() {
        let mut wq = static_queue(&ITEMS, 4);
        wq.status = Some(observed(
            &wq,
            &applied(vec![succeeded(job_of(&wq, "a"), at(0))]),
            at(1),
        ));
        let errors = FieldErrors(vec![rigging_crds::FieldError::new("spec.x", "bad")]);
        let status = invalid(&wq, &errors, at(2));
        assert_eq!((status.pending, status.succeeded), (3, 1));
        assert!(status.results.is_some());
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
    fn a_job_the_queue_does_not_control_is_a_conflict_never_a_result() {
        let wq = static_queue(&ITEMS, 4);
        let mut orphan = succeeded(job_of(&wq, "a"), at(0));
        orphan.metadata.owner_references = None;
        let applied = applied_with_cache(vec![], vec![Child::Job(orphan)], vec![]);
        let status = observed(&wq, &applied, at(1));
        assert_eq!((status.pending, status.succeeded), (4, 0));
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded.reason, "JobConflict");
        assert!(
            degraded.message.starts_with(&format!(
                "1 item waits for a Job name this WorkQueue does not control: \"a\" (Job {} exists with no controller)",
                name("a")
            )),
            "{}",
            degraded.message
        );
        let notes = events(&wq, &status);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].reason, "JobConflict");
        assert_eq!(notes[0].message, degraded.message);
        // Deleting that Job reaches no WorkQueue as an event: the queue looks again soon.
        assert_eq!(requeue_after(&status, at(1)), Some(CONFLICT_RECHECK));
    }

    #[test]
    fn a_recorded_job_left_out_to_be_deleted_is_no_longer_listed_as_expired() {
        let mut wq = static_queue(&ITEMS, 4);
        wq.spec.ttl_seconds_after_finished = Some(0);
        let a = succeeded(job_of(&wq, "a"), at(0));
        let chunk = results_chunk(&wq, 0, &[recorded_as(&a, "Succeeded")]);
        // The cache still holds a's Job, which this reconcile deletes (not a child).
        let applied =
            applied_with_cache(vec![], vec![Child::Job(a), Child::ConfigMap(chunk)], vec![]);
        let status = observed(&wq, &applied, at(60));
        assert!(status.expired_jobs.is_empty(), "{:?}", status.expired_jobs);
        assert_eq!(status.next_cleanup_time, None);
        assert_eq!(status.succeeded, 1);
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
        let status = observed(&wq, &applied(vec![job]), at(1));
        assert_eq!((status.running, status.failed), (1, 0));
    }

    #[test]
    fn long_items_are_cut_and_only_the_last_failures_are_listed_however_many_failed() {
        let long = "é".repeat(300);
        let items: Vec<String> = (0..30).map(|i| format!("{i:02}{long}")).collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        let wq = static_queue(&refs, 30);
        let jobs = refs
            .iter()
            .zip(0..)
            .map(|(i, n)| {
                let mut all = wq.clone();
                all.spec.parallelism = 30;
                let job = first(&all)
                    .jobs
                    .into_iter()
                    .find(|j| {
                        j.metadata.name.as_deref() == Some(naming::job_name("thumbs", i).as_str())
                    })
                    .unwrap();
                failed(job, at(n))
            })
            .collect();
        let status = observed(&wq, &applied(jobs), at(100));
        assert_eq!(status.failed, 30);
        assert_eq!(status.last_failures.len(), LAST_FAILURES);
        assert!(
            status.last_failures[0].item.starts_with("29"),
            "newest first"
        );
        assert!(
            status
                .last_failures
                .iter()
                .all(|f| f.item.len() <= MAX_RECORDED_ITEM + "…".len() && f.item.ends_with('…'))
        );
        let degraded = condition(&status, "Degraded");
        assert!(
            degraded.message.starts_with("30 items failed: \"29"),
            "{}",
            degraded.message
        );
        assert!(
            degraded.message.ends_with(" and 25 more (status.results)"),
            "{}",
            degraded.message
        );
        assert!(
            serde_json::to_vec(&status).unwrap().len() < 16 * 1024,
            "the status stays small"
        );
    }
}
