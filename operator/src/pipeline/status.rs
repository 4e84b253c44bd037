//! The status a Pipeline should show, computed without IO from its broker and stage
//! Deployments as applied, and what its stage pods answered: each stage's pods and
//! accounting, each topic's publishers and consumers, and the conditions, `Conserved`
//! among them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use rigging_crds::pipeline::{StageStatus, TopicStatus};
use rigging_crds::sidecar::queue::DEAD_LETTER_SUFFIX;
use rigging_crds::{FieldErrors, Pipeline, PipelineStatus};

use super::backlog::{self, StageCounts};
use super::desired::{outputs, stage_name};
use crate::broker;
use crate::controller::conditions::{self, Cond, cond};
use crate::controller::{Answers, Applied, Note};

/// Whether a Deployment runs its current template on every pod it asks for, all ready.
fn deployment_ready(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    st.observed_generation >= d.metadata.generation
        && st.updated_replicas.unwrap_or(0) >= want
        && st.ready_replicas.unwrap_or(0) >= want
        && st.replicas.unwrap_or(0) <= want
}

/// The broker's state in words, and whether it is ready.
fn broker_state(p: &Pipeline, applied: &Applied) -> (bool, String) {
    if !broker::is_managed(&p.spec.broker) {
        return (true, "an existing broker".into());
    }
    let Some(sts) = applied.get::<StatefulSet>(&broker::name(&p.name_any())) else {
        return (
            false,
            "the broker's StatefulSet has not been observed yet".into(),
        );
    };
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let current =
        sts.status.as_ref().and_then(|s| s.observed_generation) >= sts.metadata.generation;
    (
        current && ready >= want,
        format!("broker {ready}/{want} ready"),
    )
}

/// Status of a Pipeline whose children are applied, with what its stage pods answered
/// (none yet: every count 0).
pub fn observed(
    p: &Pipeline,
    applied: &Applied,
    answers: &Answers,
    now: Timestamp,
) -> PipelineStatus {
    let generation = p.metadata.generation;
    let counts = backlog::counts(answers);
    let none = StageCounts::default();
    let previous = p.status.as_ref();
    let mut stages = Vec::new();
    let mut not_ready = Vec::new();
    let mut rolling = false;
    for stage in &p.spec.stages {
        let deployment = applied.get::<Deployment>(&stage_name(&p.name_any(), &stage.name));
        let ready = deployment.is_some_and(deployment_ready);
        if !ready {
            not_ready.push(stage.name.as_str());
            rolling = true;
        }
        let c = counts.get(&stage.name).unwrap_or(&none);
        stages.push(StageStatus {
            name: stage.name.clone(),
            replicas: deployment
                .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas))
                .unwrap_or(0),
            ready_replicas: deployment
                .and_then(|d| d.status.as_ref().and_then(|s| s.ready_replicas))
                .unwrap_or(0),
            counted_pods: c.pods,
            delivered: c.delivered,
            out: c.out,
            filtered: c.filtered,
            dead_lettered: c.dead_lettered,
            retried: c.retried,
            in_flight: c.in_flight,
            lag: c.lag,
            unaccounted: c.unaccounted(),
        });
    }
    let (broker_ready, broker_words) = broker_state(p, applied);
    let ready_stages = i32::try_from(stages.len() - not_ready.len()).unwrap_or(i32::MAX);
    let summary = format!(
        "{broker_words}, {ready_stages}/{} stages ready",
        stages.len()
    );
    let ready = if !broker_ready {
        cond("Ready", false, "BrokerNotReady", &summary)
    } else if !not_ready.is_empty() {
        let message = format!("{summary}; not ready: {}", not_ready.join(", "));
        cond("Ready", false, "StagesNotReady", &message)
    } else {
        cond("Ready", true, "StagesReady", &summary)
    };
    let progressing = match rolling || !broker_ready {
        true => cond("Progressing", true, "RollingOut", &summary),
        false => cond(
            "Progressing",
            false,
            "RolledOut",
            "every stage runs its current spec",
        ),
    };
    let conserved = conserved(&stages, previous.map(|s| s.stages.as_slice()));
    let degraded = match conserved.status {
        true => cond(
            "Degraded",
            false,
            "AsExpected",
            "every delivery is accounted for",
        ),
        false => cond("Degraded", true, "Unconserved", &conserved.message),
    };
    let lag = stages.iter().map(|s| s.lag).sum();
    PipelineStatus {
        observed_generation: generation,
        broker: broker::url(&p.name_any(), &p.spec.broker),
        ready_stages,
        lag,
        topics: topics(p, &counts),
        stages,
        conditions: conditions::of(p, [ready, progressing, degraded, conserved], now),
    }
}

/// `Conserved`: false when a stage's deliveries did not add up in this look and in the one
/// before (a pod restarting between two looks can make one look differ, never two).
fn conserved(stages: &[StageStatus], previous: Option<&[StageStatus]>) -> Cond {
    let counted: i32 = stages.iter().map(|s| s.counted_pods).sum();
    let before = |name: &str| {
        previous
            .and_then(|p| p.iter().find(|s| s.name == name))
            .map_or(0, |s| s.unaccounted)
    };
    let off: Vec<String> = stages
        .iter()
        .filter(|s| s.unaccounted != 0 && before(&s.name) != 0)
        .map(|s| {
            format!(
                "stage {}: in {} but out {} + filtered {} + dead-lettered {} + retried {} + in flight {} (unaccounted {})",
                s.name, s.delivered, s.out, s.filtered, s.dead_lettered, s.retried, s.in_flight, s.unaccounted
            )
        })
        .collect();
    if !off.is_empty() {
        cond("Conserved", false, "Unaccounted", &off.join("; "))
    } else if counted == 0 {
        cond(
            "Conserved",
            true,
            "NotCounted",
            "no stage pod has answered yet: nothing to account for",
        )
    } else {
        cond(
            "Conserved",
            true,
            "Balanced",
            &format!(
                "in = out + filtered + dead-lettered + retried + in flight in every stage, over {counted} pods"
            ),
        )
    }
}

/// Every topic the stages name, with who publishes and consumes it, and what the stages
/// stored in it.
fn topics(p: &Pipeline, counts: &BTreeMap<String, StageCounts>) -> Vec<TopicStatus> {
    let mut topics: BTreeMap<String, TopicStatus> = BTreeMap::new();
    for stage in &p.spec.stages {
        for topic in &stage.from {
            topics
                .entry(topic.clone())
                .or_insert_with(|| named(topic))
                .consumers
                .push(stage.name.clone());
        }
        for topic in outputs(stage) {
            topics
                .entry(topic.clone())
                .or_insert_with(|| named(&topic))
                .publishers
                .push(stage.name.clone());
        }
    }
    for c in counts.values() {
        for (topic, n) in &c.published {
            if let Some(t) = topics.get_mut(topic) {
                t.published += n;
            }
        }
    }
    topics.into_values().collect()
}

fn named(topic: &str) -> TopicStatus {
    TopicStatus {
        name: topic.to_owned(),
        ..TopicStatus::default()
    }
}

/// The status of a Pipeline whose spec is invalid.
pub fn invalid(p: &Pipeline, errors: &FieldErrors, now: Timestamp) -> PipelineStatus {
    let previous = p.status.clone().unwrap_or_default();
    PipelineStatus {
        observed_generation: p.metadata.generation,
        conditions: conditions::of(p, conditions::invalid(&errors.to_string()), now),
        ..previous
    }
}

/// Events once `next` replaces the status `p` carries: dead letters, autoscaling, and
/// conservation lost.
pub fn events(p: &Pipeline, next: &PipelineStatus) -> Vec<Note> {
    let previous = p.status.clone().unwrap_or_default();
    let mut notes = Vec::new();
    let before = |name: &str| previous.stages.iter().find(|s| s.name == name);
    for (stage, spec) in next.stages.iter().zip(&p.spec.stages) {
        let Some(was) = before(&stage.name) else {
            continue;
        };
        if stage.dead_lettered > was.dead_lettered {
            let topics: Vec<String> = spec
                .from
                .iter()
                .map(|t| format!("{t}{DEAD_LETTER_SUFFIX}"))
                .collect();
            notes.push(Note {
                warning: true,
                reason: "DeadLettered",
                message: format!(
                    "stage {}: {} more messages dead-lettered ({} counted), see {}",
                    stage.name,
                    stage.dead_lettered - was.dead_lettered,
                    stage.dead_lettered,
                    topics.join(", ")
                ),
            });
        }
        if spec.autoscale.is_some() && stage.replicas != was.replicas && was.replicas > 0 {
            notes.push(Note {
                warning: false,
                reason: "Scaled",
                message: format!(
                    "stage {}: {} → {} pods for a backlog of {}",
                    stage.name, was.replicas, stage.replicas, stage.lag
                ),
            });
        }
    }
    let is_false = |s: &PipelineStatus| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Conserved" && c.status == "False")
    };
    if is_false(next) && !is_false(&previous) {
        let message = next
            .conditions
            .iter()
            .find(|c| c.type_ == "Conserved")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        notes.push(Note {
            warning: true,
            reason: "Unconserved",
            message,
        });
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::PodAnswer;
    use crate::pipeline::desired::{self, STAGE_LABEL};
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn pipeline() -> Pipeline {
        let mut p: Pipeline = serde_norway::from_str(
            r#"
apiVersion: rigging.dev/v1alpha1
kind: Pipeline
metadata: {name: shop, namespace: s, uid: u, generation: 2}
spec:
  broker: {url: "nats://nats:4222"}
  stages:
  - {name: keep, from: [orders], filter: {if: "message.n > 1", to: big}}
  - name: scale
    from: [big]
    autoscale: {max: 4, targetLag: 10}
    handler:
      port: 8080
      template: {spec: {containers: [{name: app, image: app:1}]}}
"#,
        )
        .unwrap();
        p.metadata.generation = Some(2);
        p
    }

    fn ready_children(p: &Pipeline) -> Applied {
        let children = desired::desired(
            p,
            &crate::controller::RenderConfig::default(),
            &crate::controller::Observed::nothing(),
        )
        .unwrap()
        .into_iter()
        .map(|c| match c {
            Child::Deployment(mut d) => {
                d.metadata.generation = Some(1);
                d.status = Some(DeploymentStatus {
                    observed_generation: Some(1),
                    replicas: Some(1),
                    updated_replicas: Some(1),
                    ready_replicas: Some(1),
                    available_replicas: Some(1),
                    ..DeploymentStatus::default()
                });
                Child::Deployment(d)
            }
            other => other,
        })
        .collect();
        Applied::new(children)
    }

    fn pod(stage: &str, accounting: [i64; 6], lag: i64) -> PodAnswer {
        let names = [
            "in",
            "out",
            "filtered",
            "dead_lettered",
            "retried",
            "in_flight",
        ];
        let mut text: String = names
            .iter()
            .zip(accounting)
            .map(|(n, v)| format!("rigging_queue_accounting{{count=\"{n}\"}} {v}\n"))
            .collect();
        text.push_str(&format!("rigging_queue_lag{{topic=\"t\"}} {lag}\n"));
        text.push_str("rigging_queue_published_total{result=\"stored\",topic=\"big\"} 7\n");
        PodAnswer {
            pod: format!("{stage}-1"),
            labels: [(STAGE_LABEL.to_owned(), stage.to_owned())].into(),
            reply: Ok(text),
        }
    }

    fn condition<'a>(status: &'a PipelineStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    use crate::controller::Child;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    #[test]
    fn ready_stages_count_and_the_accounting_of_each_stage_shows() {
        let p = pipeline();
        let answers = Answers(vec![pod("keep", [10, 7, 2, 1, 0, 0], 3)]);
        let status = observed(&p, &ready_children(&p), &answers, Timestamp::now());
        assert_eq!(status.ready_stages, 2);
        assert_eq!(condition(&status, "Ready").status, "True");
        let keep = &status.stages[0];
        assert_eq!(
            (
                keep.delivered,
                keep.out,
                keep.filtered,
                keep.dead_lettered,
                keep.lag
            ),
            (10, 7, 2, 1, 3)
        );
        assert_eq!(condition(&status, "Conserved").reason, "Balanced");
        assert_eq!(status.lag, 3);
        let big = status.topics.iter().find(|t| t.name == "big").unwrap();
        assert_eq!(big.publishers, ["keep"]);
        assert_eq!(big.consumers, ["scale"]);
        assert_eq!(big.published, 7);
        assert_eq!(status.broker.as_deref(), Some("nats://nats:4222"));
    }

    #[test]
    fn an_imbalance_in_two_looks_in_a_row_makes_conserved_false_and_warns_once() {
        let mut p = pipeline();
        let applied = ready_children(&p);
        let off = Answers(vec![pod("keep", [10, 7, 2, 0, 0, 0], 0)]);
        let first = observed(&p, &applied, &off, Timestamp::now());
        assert_eq!(first.stages[0].unaccounted, 1);
        assert_eq!(
            condition(&first, "Conserved").status,
            "True",
            "one look may catch a pod restarting"
        );
        p.status = Some(first);
        let second = observed(&p, &applied, &off, Timestamp::now());
        let conserved = condition(&second, "Conserved");
        assert_eq!(
            (conserved.status.as_str(), conserved.reason.as_str()),
            ("False", "Unaccounted")
        );
        assert!(
            conserved.message.contains("stage keep: in 10"),
            "{}",
            conserved.message
        );
        assert_eq!(condition(&second, "Degraded").status, "True");
        let notes = events(&p, &second);
        assert!(notes.iter().any(|n| n.reason == "Unconserved" && n.warning));
        p.status = Some(second.clone());
        assert!(
            events(&p, &second)
                .iter()
                .all(|n| n.reason != "Unconserved"),
            "once"
        );
    }

    #[test]
    fn new_dead_letters_and_autoscaling_are_events() {
        let mut p = pipeline();
        let applied = ready_children(&p);
        let before = Answers(vec![pod("keep", [10, 9, 0, 1, 0, 0], 0)]);
        p.status = Some(observed(&p, &applied, &before, Timestamp::now()));
        let after = Answers(vec![pod("keep", [13, 9, 0, 4, 0, 0], 0)]);
        let mut next = observed(&p, &applied, &after, Timestamp::now());
        next.stages[1].replicas = 3;
        let notes = events(&p, &next);
        let dead = notes.iter().find(|n| n.reason == "DeadLettered").unwrap();
        assert!(
            dead.message.contains("stage keep: 3 more")
                && dead.message.contains("orders.dead-letter"),
            "{}",
            dead.message
        );
        let scaled = notes.iter().find(|n| n.reason == "Scaled").unwrap();
        assert!(
            scaled.message.contains("stage scale: 1 → 3"),
            "{}",
            scaled.message
        );
    }
}
