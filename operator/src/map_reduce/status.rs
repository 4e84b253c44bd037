//! The status of a MapReduce: its runs (newest first) as their WorkQueues, reduce Jobs and
//! the result ConfigMap show them, the conditions, and the Events of a run started,
//! skipped, failed or reduced.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use rigging_crds::map_reduce::{RUN_NOW_ANNOTATION, RunPhase, RunStatus};
use rigging_crds::{FieldErrors, MapReduce, MapReduceStatus, WorkQueue};

use super::desired::{
    Run, due, reduce_job_name, result_name, results_bucket, run_name, run_number, run_of,
};
use super::schedule;
use crate::controller::conditions::{self, Cond, cond, truncate};
use crate::controller::{Applied, Note};

/// Longest summary kept in a run's status.
const SUMMARY_MAX: usize = 1024;

/// Status of a MapReduce whose children are applied.
pub fn observed(mr: &MapReduce, applied: &Applied, now: Timestamp) -> MapReduceStatus {
    let name = mr.name_any();
    let previous = mr.status.clone().unwrap_or_default();
    let result = applied.get::<ConfigMap>(&result_name(&name));
    let mut runs: Vec<(Run, Option<Time>)> = applied
        .all::<WorkQueue>()
        .filter_map(|queue| {
            let number = run_number(&name, queue)?;
            let reduce = applied.get::<Job>(&reduce_job_name(&name, number));
            let run = run_of(mr, number, queue, reduce);
            Some((run, queue.metadata.creation_timestamp.clone()))
        })
        .collect();
    runs.sort_by_key(|(run, _)| std::cmp::Reverse(run.number));
    let newest = runs.first().map(|(run, _)| run);
    let last_run = previous.last_run.max(newest.map_or(0, |r| r.number));
    // A new run-now value was acted on by this reconcile: a run started, or skipped.
    let last_run_now = mr
        .annotations()
        .get(RUN_NOW_ANNOTATION)
        .cloned()
        .or(previous.last_run_now.clone());
    // The time of the schedule this reconcile acted on: the newest run's, or one due now
    // that a run going made it skip (the desired state decided at the same `now`).
    let last_schedule_time = [
        previous.last_schedule_time.as_ref().map(|t| t.0),
        newest.and_then(|r| r.scheduled_for),
        due(mr, newest, Some(now)),
    ]
    .into_iter()
    .flatten()
    .max()
    .map(Time);
    let next_schedule_time = mr
        .spec
        .schedule
        .as_ref()
        .and_then(|s| schedule::compile(s).ok())
        .and_then(|c| c.next(now))
        .map(Time);
    let runs: Vec<RunStatus> = runs
        .into_iter()
        .map(|(run, started_at)| run_status(mr, run, started_at, result))
        .collect();
    MapReduceStatus {
        observed_generation: mr.metadata.generation,
        conditions: conditions::of(mr, conditions_for(&runs), now),
        runs,
        last_run,
        last_schedule_time,
        next_schedule_time,
        last_run_now,
    }
}

/// What the status says of `run`: its counts, and where its result is once it has one
/// (the reducer's summary while the result ConfigMap holds this run's).
fn run_status(
    mr: &MapReduce,
    run: Run,
    started_at: Option<Time>,
    result: Option<&ConfigMap>,
) -> RunStatus {
    let name = mr.name_any();
    let number = run.number;
    let summary = result
        .and_then(|cm| cm.data.as_ref())
        .filter(|data| data.get("run") == Some(&number.to_string()))
        .and_then(|data| data.get("summary.json"))
        .map(|s| truncate(s, SUMMARY_MAX));
    RunStatus {
        number,
        name: run_name(&name, number),
        phase: run.phase,
        items: run.items,
        succeeded: run.succeeded,
        failed: run.failed,
        min_succeeded: run.need,
        started_at,
        scheduled_for: run.scheduled_for.map(Time),
        run_now: run.run_now,
        result: (run.phase == RunPhase::Succeeded).then(|| {
            format!(
                "ConfigMap {} (while it is the newest), and object {number} of the broker's object store {}",
                result_name(&name),
                results_bucket(mr)
            )
        }),
        summary,
        message: run.message,
    }
}

fn conditions_for(runs: &[RunStatus]) -> [Cond; 3] {
    let newest = runs.first();
    let finished = runs
        .iter()
        .find(|r| matches!(r.phase, RunPhase::Succeeded | RunPhase::Failed));
    let going = newest.filter(|r| matches!(r.phase, RunPhase::Mapping | RunPhase::Reducing));
    let progressing = match going {
        Some(r) if r.phase == RunPhase::Mapping => cond(
            "Progressing",
            true,
            "Mapping",
            &format!(
                "run {}: {} of {} items succeeded, {} failed; the barrier needs {}",
                r.number, r.succeeded, r.items, r.failed, r.min_succeeded
            ),
        ),
        Some(r) => cond(
            "Progressing",
            true,
            "Reducing",
            &format!(
                "run {}: the barrier passed, the outputs are being reduced",
                r.number
            ),
        ),
        None => cond("Progressing", false, "Idle", "no run is going"),
    };
    let (ready, degraded) = match finished {
        Some(r) if r.phase == RunPhase::Succeeded => (
            cond(
                "Ready",
                true,
                "ResultStored",
                &format!(
                    "run {}: {}",
                    r.number,
                    r.result.as_deref().unwrap_or_default()
                ),
            ),
            cond(
                "Degraded",
                false,
                "RunSucceeded",
                &format!("run {} succeeded", r.number),
            ),
        ),
        Some(r) => {
            let message = format!(
                "run {} failed: {}",
                r.number,
                r.message.as_deref().unwrap_or_default()
            );
            (
                cond("Ready", false, "RunFailed", &message),
                cond("Degraded", true, "RunFailed", &message),
            )
        }
        None => (
            cond("Ready", false, "NoResultYet", "no run has finished yet"),
            cond(
                "Degraded",
                false,
                "Reconciled",
                "the spec is valid and its objects are applied",
            ),
        ),
    };
    [ready, progressing, degraded]
}

/// Status of a MapReduce whose spec is invalid: its runs as they were, and why.
pub fn invalid(mr: &MapReduce, errors: &FieldErrors, now: Timestamp) -> MapReduceStatus {
    let generation = mr.metadata.generation;
    let previous = mr.status.clone().unwrap_or_default();
    MapReduceStatus {
        observed_generation: generation,
        conditions: conditions::of(mr, conditions::invalid(&errors.to_string()), now),
        ..previous
    }
}

/// Events: a run started, a run-now skipped (`Forbid`), a run failed, a result stored.
pub fn events(mr: &MapReduce, next: &MapReduceStatus) -> Vec<Note> {
    let previous = mr.status.clone().unwrap_or_default();
    let mut notes = Vec::new();
    if next.last_run > previous.last_run {
        let cause = match next.runs.first().filter(|r| r.number == next.last_run) {
            Some(run) if run.scheduled_for.is_some() => format!(
                ", for the schedule's {}",
                run.scheduled_for
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            ),
            Some(run) if run.run_now.is_some() => format!(
                ", by {RUN_NOW_ANNOTATION}={}",
                run.run_now.as_deref().unwrap_or_default()
            ),
            _ => String::new(),
        };
        notes.push(Note {
            warning: false,
            reason: "RunStarted",
            message: format!(
                "run {} started{cause}: WorkQueue {}",
                next.last_run,
                run_name(&mr.name_any(), next.last_run)
            ),
        });
    } else {
        let mut skipped = Vec::new();
        if next.last_run_now != previous.last_run_now {
            skipped.push(format!(
                "{RUN_NOW_ANNOTATION}={}",
                next.last_run_now.as_deref().unwrap_or_default()
            ));
        }
        if next.last_schedule_time != previous.last_schedule_time {
            let at = next.last_schedule_time.as_ref().map(|t| t.0.to_string());
            skipped.push(format!("the schedule's {}", at.unwrap_or_default()));
        }
        if !skipped.is_empty() {
            notes.push(Note {
                warning: true,
                reason: "RunSkipped",
                message: format!(
                    "{} skipped: run {} is still going and the concurrencyPolicy is Forbid",
                    skipped.join(" and "),
                    next.last_run
                ),
            });
        }
    }
    for run in &next.runs {
        let before = previous.runs.iter().find(|r| r.number == run.number);
        if before.is_some_and(|b| b.phase == run.phase) {
            continue;
        }
        match run.phase {
            RunPhase::Failed => notes.push(Note {
                warning: true,
                reason: "RunFailed",
                message: format!(
                    "run {} failed: {}",
                    run.number,
                    run.message.as_deref().unwrap_or_default()
                ),
            }),
            RunPhase::Succeeded => notes.push(Note {
                warning: false,
                reason: "RunSucceeded",
                message: format!(
                    "run {}: {}",
                    run.number,
                    run.result.as_deref().unwrap_or_default()
                ),
            }),
            _ => {}
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use rigging_crds::WorkQueueStatus;

    use super::*;
    use crate::controller::{Child, RenderConfig};
    use crate::map_reduce::desired::{reduce_job, run_queue};

    fn map_reduce(extra: &str) -> MapReduce {
        let yaml = format!(
            r#"
apiVersion: rigging.dev/v1alpha1
kind: MapReduce
metadata: {{name: tally, namespace: votes, uid: u-1, generation: 1}}
spec:
  map:
    items: [a, b, c]
    worker: {{template: {{spec: {{containers: [{{name: w, image: w:1}}]}}}}}}
  reduce: {{reducer: sum}}
{extra}"#
        );
        serde_norway::from_str(&yaml).unwrap()
    }

    fn run(mr: &MapReduce, number: i64, succeeded: i32) -> Child {
        let mut q = run_queue(mr, &RenderConfig::default(), number);
        q.status = Some(WorkQueueStatus {
            succeeded,
            ..WorkQueueStatus::default()
        });
        Child::WorkQueue(q)
    }

    fn complete(mr: &MapReduce, number: i64) -> Child {
        let queue = run_queue(mr, &RenderConfig::default(), number);
        let run = crate::map_reduce::desired::run_of(mr, number, &queue, None);
        let mut job = reduce_job(mr, &RenderConfig::default(), &run);
        job.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        Child::Job(job)
    }

    fn result(run: &str) -> Child {
        Child::ConfigMap(ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some("tally-result".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("run".to_owned(), run.to_owned()),
                ("summary.json".to_owned(), r#"{"outputs":3}"#.to_owned()),
            ])),
            ..ConfigMap::default()
        })
    }

    fn now() -> Timestamp {
        "2026-12-06T10:20:00Z".parse().unwrap()
    }

    fn condition<'a>(status: &'a MapReduceStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn runs_are_listed_newest_first_with_their_counts_result_and_summary() {
        let mr = map_reduce("");
        let applied = Applied::new(vec![
            result("1"),
            run(&mr, 1, 3),
            complete(&mr, 1),
            run(&mr, 2, 1),
        ]);
        let status = observed(&mr, &applied, now());
        let numbers: Vec<i64> = status.runs.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [2, 1]);
        assert_eq!(status.last_run, 2);
        let (newest, done) = (&status.runs[0], &status.runs[1]);
        assert_eq!(
            (newest.phase, newest.succeeded, newest.items),
            (RunPhase::Mapping, 1, 3)
        );
        assert_eq!(done.phase, RunPhase::Succeeded);
        assert_eq!(done.summary.as_deref(), Some(r#"{"outputs":3}"#));
        assert!(
            done.result
                .as_deref()
                .unwrap()
                .contains("object 1 of the broker's object store votes_tally_results")
        );
        assert_eq!(newest.summary, None, "the result ConfigMap holds run 1's");
        assert_eq!(condition(&status, "Ready").reason, "ResultStored");
        assert_eq!(condition(&status, "Progressing").reason, "Mapping");
        assert_eq!(
            condition(&status, "Progressing").message,
            "run 2: 1 of 3 items succeeded, 0 failed; the barrier needs 3"
        );
    }

    #[test]
    fn a_started_run_and_a_skipped_run_now_are_each_told_once() {
        let mut mr = map_reduce("");
        mr.status = Some(MapReduceStatus {
            last_run: 1,
            ..MapReduceStatus::default()
        });
        mr.metadata.annotations = Some(BTreeMap::from([(
            RUN_NOW_ANNOTATION.to_owned(),
            "x".to_owned(),
        )]));
        // A run-now while run 1 maps: nothing started, the value used up.
        let skipped = observed(&mr, &Applied::new(vec![run(&mr, 1, 0)]), now());
        assert_eq!(
            (skipped.last_run, skipped.last_run_now.as_deref()),
            (1, Some("x"))
        );
        let notes = events(&mr, &skipped);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].reason, "RunSkipped");
        assert!(
            notes[0]
                .message
                .contains("rigging.dev/run-now=x skipped: run 1 is still going"),
            "{}",
            notes[0].message
        );
        // Told once: the next status says the same.
        mr.status = Some(skipped.clone());
        assert!(events(&mr, &skipped).is_empty());

        let started = observed(
            &mr,
            &Applied::new(vec![run(&mr, 2, 0), run(&mr, 1, 3)]),
            now(),
        );
        let notes = events(&mr, &started);
        assert_eq!(notes[0].reason, "RunStarted");
        assert!(
            notes[0].message.starts_with("run 2 started"),
            "{}",
            notes[0].message
        );
    }

    #[test]
    fn a_due_schedule_time_is_recorded_once_acted_on_and_the_next_one_is_told() {
        let mut mr = map_reduce("  schedule: {cron: '0 * * * *'}");
        mr.metadata.creation_timestamp = Some(Time("2026-12-06T09:30:00Z".parse().unwrap()));
        let status = observed(&mr, &Applied::new(vec![]), now());
        assert_eq!(
            status
                .last_schedule_time
                .map(|t| t.0.to_string())
                .as_deref(),
            Some("2026-12-06T10:00:00Z")
        );
        assert_eq!(
            status
                .next_schedule_time
                .map(|t| t.0.to_string())
                .as_deref(),
            Some("2026-12-06T11:00:00Z")
        );
    }
}
