//! Speculative backups of stragglers (MapReduce's backup tasks), pure: how an item with two
//! Jobs stands, what its result records, and when a running item gets a backup.
//!
//! An item's backup is a second Job ([`naming::backup_job_name`]), created once like its
//! first. How the pair stays exactly-once in what the queue reports, across restarts:
//! - the item's result is recorded under its first Job's name, as any result, and says
//!   whether it had a backup and which Job won ([`recorded_value`]); so it is counted once,
//!   and the backup counts come back from the results ConfigMaps after a restart;
//! - once an item is decided, its result is written out at once, and only a recorded item
//!   loses its other Job (the loser is left out of the children, so it is deleted while it
//!   may still run): what decided the item is never lost with it;
//! - a recorded item never gets a Job again, so a deleted loser is not made anew.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use rigging_crds::WorkQueue;
use rigging_crds::work_queue::Speculative;

use super::naming;
use super::status::{self, Outcome};

/// The label of a backup Job and its pods (value `"true"`).
pub const BACKUP_LABEL: &str = "rigging.dev/backup";

/// What a recorded result ends with when the item's backup succeeded first.
pub const BACKUP_WON: &str = "; backup won";
/// What a recorded result ends with when the item had a backup that did not win.
pub const BACKUP_LOST: &str = "; backup lost";

/// One of an item's two Jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Its first Job, named after the item.
    First,
    /// Its backup.
    Backup,
}

impl Which {
    /// This one of a pair listed first Job first.
    pub fn of<T>(self, pair: &[T; 2]) -> &T {
        match self {
            Which::First => &pair[0],
            Which::Backup => &pair[1],
        }
    }
}

/// How an item stands by its Jobs, before its result is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It has no Job.
    Unstarted,
    /// A Job of it runs, and none succeeded.
    Running,
    /// Decided: a Job of it succeeded (the first to, if both did), or every Job it has
    /// failed.
    Finished {
        /// How the Job that decided it finished.
        outcome: Outcome,
        /// That Job.
        winner: Which,
        /// Whether the item has a backup.
        backup: bool,
    },
}

/// The name of `item`'s backup Job in `wq`, which only a queue with `speculative` has: no
/// other pays for the name's hash on every item of every reconcile. (So removing
/// `speculative` from a running queue leaves its backups out, and they are deleted.)
pub fn backup_name(wq: &WorkQueue, item: &str) -> Option<String> {
    wq.spec
        .speculative
        .as_ref()
        .map(|_| naming::backup_job_name(&wq.name_any(), item))
}

/// How an item stands whose first Job is `first` and backup `backup`, as they exist.
pub fn standing(first: Option<&Job>, backup: Option<&Job>) -> Standing {
    if first.is_none() && backup.is_none() {
        return Standing::Unstarted;
    }
    // (which, how it finished: `None` while it runs) of each Job that exists.
    let jobs = [(Which::First, first), (Which::Backup, backup)]
        .map(|(which, job)| job.map(|j| (which, status::outcome(j))));
    let existing = || jobs.iter().flatten();
    // The earliest success wins, the first Job on a tie (`min_by_key` keeps the first).
    let won = existing()
        .filter_map(|(which, o)| match o {
            Some(Outcome::Succeeded { at }) => Some((*at, *which)),
            _ => None,
        })
        .min_by_key(|(at, _)| *at);
    let winner = match won {
        Some((_, which)) => which,
        // None succeeded: failed once every Job that exists failed, as the first says.
        None if existing().any(|(_, o)| o.is_none()) => return Standing::Running,
        None => existing().next().expect("a Job exists").0,
    };
    let (_, outcome) = winner.of(&jobs).clone().expect("the winner exists");
    Standing::Finished {
        outcome: outcome.expect("the winner finished"),
        winner,
        backup: backup.is_some(),
    }
}

/// What is recorded of a decided item: its result ([`status::recorded_value`]), and with
/// a backup, which of the two won.
pub fn recorded_value(outcome: &Outcome, item: &str, winner: Which, backup: bool) -> String {
    let value = status::recorded_value(outcome, item);
    match (backup, winner) {
        (false, _) => value,
        (true, Which::Backup) if outcome.succeeded() => value + BACKUP_WON,
        (true, _) => value + BACKUP_LOST,
    }
}

/// The Job that a recorded value says decided its item, and whether the item had a backup.
pub fn recorded_winner(value: &str) -> (Which, bool) {
    if value.ends_with(BACKUP_WON) {
        (Which::Backup, true)
    } else {
        (Which::First, value.ends_with(BACKUP_LOST))
    }
}

/// How long `job` ran: from its start to its completion, once it succeeded.
pub fn run_time(job: &Job) -> Option<SignedDuration> {
    let status = job.status.as_ref()?;
    let start = status.start_time.as_ref()?.0;
    let end = status.completion_time.as_ref()?.0;
    Some(end.duration_since(start))
}

/// When `job` started, while it runs.
pub fn started(job: &Job) -> Option<Timestamp> {
    if status::outcome(job).is_some() {
        return None;
    }
    Some(job.status.as_ref()?.start_time.as_ref()?.0)
}

/// Which running items get a backup now, and when to look again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// How long an item runs before it gets a backup; `None` while none may.
    pub straggler_after: Option<SignedDuration>,
    /// The items due for a backup: indexes into the candidates, in their order.
    pub due: Vec<usize>,
    /// When the next candidate becomes due.
    pub next_check: Option<Timestamp>,
}

/// What the queue's numbers so far say about backups.
#[derive(Debug, Default)]
pub struct Progress {
    /// Items in the queue.
    pub items: usize,
    /// Items with no Job yet.
    pub unstarted: usize,
    /// Items that succeeded.
    pub succeeded: usize,
    /// How long each succeeded Job that still exists ran.
    pub run_times: Vec<SignedDuration>,
}

/// Which of `candidates` (the start times of running items without a backup, in item
/// order) get a backup at `now`: none until every item has started and half of them have
/// succeeded; then each that has run `after` times the median run time.
pub fn plan(
    spec: &Speculative,
    mut progress: Progress,
    candidates: &[Timestamp],
    now: Timestamp,
) -> Plan {
    let Some(factor) = spec.factor() else {
        return Plan::default();
    };
    if progress.unstarted > 0
        || progress.succeeded * 2 < progress.items
        || progress.run_times.is_empty()
    {
        return Plan::default();
    }
    progress.run_times.sort();
    let median = progress.run_times[progress.run_times.len() / 2];
    let after = SignedDuration::try_from_secs_f64(median.as_secs_f64() * factor)
        .unwrap_or(SignedDuration::MAX)
        .max(SignedDuration::from_secs(1));
    let mut plan = Plan {
        straggler_after: Some(after),
        ..Plan::default()
    };
    for (i, start) in candidates.iter().enumerate() {
        let at = start.checked_add(after).unwrap_or(Timestamp::MAX);
        if at <= now {
            plan.due.push(i);
        } else {
            plan.next_check = Some(plan.next_check.map_or(at, |n: Timestamp| n.min(at)));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work_queue::fixtures::{active_since, at, failed, succeeded};

    fn spec(after: &str) -> Speculative {
        Speculative {
            after: after.into(),
            idempotent: true,
        }
    }

    #[test]
    fn the_first_job_to_succeed_decides_and_a_failure_waits_for_the_other() {
        let run = active_since(Job::default(), at(0));
        let won_early = succeeded(run.clone(), at(10));
        let won_late = succeeded(run.clone(), at(20));
        let bad = failed(Job::default(), at(15));
        let finished = |s: Standing| match s {
            Standing::Finished { winner, backup, .. } => Some((winner, backup)),
            _ => None,
        };
        assert_eq!(standing(None, None), Standing::Unstarted);
        assert_eq!(standing(Some(&run), None), Standing::Running);
        assert_eq!(standing(Some(&run), Some(&run)), Standing::Running);
        assert_eq!(
            finished(standing(Some(&run), Some(&won_early))),
            Some((Which::Backup, true))
        );
        assert_eq!(
            finished(standing(Some(&won_late), Some(&won_early))),
            Some((Which::Backup, true))
        );
        assert_eq!(
            finished(standing(Some(&won_early), Some(&won_late))),
            Some((Which::First, true))
        );
        // A failed first Job waits for its backup, which may still succeed.
        assert_eq!(standing(Some(&bad), Some(&run)), Standing::Running);
        assert_eq!(
            finished(standing(Some(&bad), Some(&won_late))),
            Some((Which::Backup, true))
        );
        assert_eq!(
            finished(standing(Some(&bad), Some(&bad))),
            Some((Which::First, true))
        );
        assert_eq!(
            finished(standing(Some(&bad), None)),
            Some((Which::First, false))
        );
    }

    #[test]
    fn a_recorded_result_says_which_job_won_and_reads_back() {
        let ok = Outcome::Succeeded { at: at(1) };
        let bad = Outcome::Failed {
            at: at(1),
            reason: "BackoffLimitExceeded".into(),
            message: "m".into(),
        };
        let cases = [
            (&ok, Which::First, false, "Succeeded"),
            (&ok, Which::Backup, true, "Succeeded; backup won"),
            (&ok, Which::First, true, "Succeeded; backup lost"),
            (
                &bad,
                Which::First,
                true,
                "Failed: BackoffLimitExceeded: m; item: \"i; backup won\"; backup lost",
            ),
        ];
        for (outcome, winner, backup, want) in cases {
            let value = recorded_value(outcome, "i; backup won", winner, backup);
            assert_eq!(value, want);
            assert_eq!(recorded_winner(&value), (winner, backup), "{value}");
            assert_eq!(
                crate::work_queue::results::succeeded(&value),
                outcome.succeeded(),
                "{value}"
            );
        }
    }

    #[test]
    fn backups_wait_for_every_item_to_start_and_half_to_succeed_then_go_to_stragglers() {
        let progress = |unstarted, succeeded| Progress {
            items: 10,
            unstarted,
            succeeded,
            run_times: [10, 30, 20, 12, 11].map(SignedDuration::from_secs).to_vec(),
        };
        let candidates = [at(0), at(50), at(90)];
        let now = at(100);
        assert_eq!(
            plan(&spec("1.5x"), progress(1, 5), &candidates, now),
            Plan::default()
        );
        assert_eq!(
            plan(&spec("1.5x"), progress(0, 4), &candidates, now),
            Plan::default()
        );
        // Median 12 s; 1.5x: 18 s.
        let p = plan(&spec("1.5x"), progress(0, 5), &candidates, now);
        assert_eq!(p.straggler_after, Some(SignedDuration::from_secs(18)));
        assert_eq!(p.due, vec![0, 1]);
        assert_eq!(p.next_check, Some(at(108)));
        let p = plan(&spec("5x"), progress(0, 5), &candidates, now);
        assert_eq!(p.due, vec![0]);
        assert_eq!(p.next_check, Some(at(110)));
        // No run time left to judge by (every Job deleted): no backup.
        let none = Progress {
            run_times: Vec::new(),
            ..progress(0, 10)
        };
        assert_eq!(plan(&spec("1.5x"), none, &candidates, now), Plan::default());
    }
}
