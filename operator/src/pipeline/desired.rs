//! A Pipeline's children, computed without IO: the managed broker (a StatefulSet of NATS
//! servers with JetStream, behind a headless Service) unless the pipeline names one, and a
//! Deployment per stage. A built-in stage's pod is the queue sidecar alone; a handler
//! stage's pod is the user's, with the queue sidecar beside it.
//!
//! What the CRD's schema and CEL rules cannot check is checked here, each error naming its
//! field: that every predicate and key is CEL over `message` alone, that no stage feeds
//! itself, and the broker's storage size.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use rigging_crds::pipeline::PipelineStage;
use rigging_crds::sidecar::ports;
use rigging_crds::sidecar::queue::{QueueArgs, Stage};
use rigging_crds::sidecar::spec::{QueueSidecar, Sidecars};
use rigging_crds::sidecar::{SidecarArgs, duration};
use rigging_crds::{FieldError, FieldErrors, Pipeline};

use super::backlog::StageCounts;
use crate::broker;
use crate::controller::{Child, Observed, RenderConfig, child_meta, with_managed};
use crate::sidecars::{self, Placement, QUEUE, resources};

/// The `app.kubernetes.io/name` of every pod a Pipeline runs: not the pipeline's own
/// name, so that no other kind's selector (`name` = its object's name) takes them in.
pub const APP_NAME: &str = "rigging-pipeline";
/// The label that names a pod's stage.
pub const STAGE_LABEL: &str = "rigging.dev/stage";
/// The container port name of the queue sidecar's admin port, which the operator asks.
pub const ADMIN_PORT: &str = sidecars::QUEUE_ADMIN_PORT;

/// The only variable a predicate or key may read.
const MESSAGE: &str = "message";

/// The name of a stage's Deployment.
pub fn stage_name(pipeline: &str, stage: &str) -> String {
    format!("{pipeline}-{stage}")
}

fn selector(p: &Pipeline, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), p.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
    ])
}

/// The labels every stage pod of `p` has: what the operator asks them by.
pub fn stages_selector(p: &Pipeline) -> BTreeMap<String, String> {
    selector(p, "stage")
}

fn stage_selector(p: &Pipeline, stage: &str) -> BTreeMap<String, String> {
    let mut labels = stages_selector(p);
    labels.insert(STAGE_LABEL.into(), stage.into());
    labels
}

/// The stream that holds the pipeline's topics.
pub fn stream(p: &Pipeline) -> String {
    p.spec.broker.stream.clone().unwrap_or_else(|| p.name_any())
}

/// The topics a stage publishes to.
pub fn outputs(stage: &PipelineStage) -> Vec<String> {
    if let Some(copy) = &stage.copy {
        copy.to.clone()
    } else if let Some(filter) = &stage.filter {
        vec![filter.to.clone()]
    } else if let Some(split) = &stage.split {
        let mut topics: Vec<String> = split.when.iter().map(|r| r.to.clone()).collect();
        topics.extend(split.otherwise.clone());
        topics.dedup();
        topics
    } else if let Some(shard) = &stage.shard {
        shard.to.clone()
    } else if let Some(merge) = &stage.merge {
        vec![merge.to.clone()]
    } else {
        stage
            .handler
            .as_ref()
            .map(|h| h.to.clone())
            .unwrap_or_default()
    }
}

/// The queue sidecar's command line for `stage`.
pub fn stage_args(p: &Pipeline, stage: &PipelineStage) -> QueueArgs {
    let broker = &p.spec.broker;
    let defaults = QueueArgs::new(broker::url(&p.name_any(), broker));
    let parsed = |text: &Option<String>| text.as_deref().and_then(|t| duration::parse(t).ok());
    let mut args = QueueArgs {
        stream: stream(p),
        stream_replicas: if broker::is_managed(broker) {
            broker::replicas(broker).unsigned_abs()
        } else {
            1
        },
        retention: parsed(&broker.retention).unwrap_or(defaults.retention),
        dedup_window: parsed(&broker.dedup_window).unwrap_or(defaults.dedup_window),
        subscribe: stage.from.clone(),
        consumer: Some(stage.name.clone()),
        outputs: outputs(stage),
        max_in_flight: stage.max_in_flight.unwrap_or(defaults.max_in_flight),
        max_deliveries: stage.max_deliveries.unwrap_or(defaults.max_deliveries),
        delivery_timeout: parsed(&stage.delivery_timeout).unwrap_or(defaults.delivery_timeout),
        ..defaults
    };
    if stage.copy.is_some() || stage.merge.is_some() {
        args.stage = Some(Stage::Copy);
    } else if let Some(filter) = &stage.filter {
        args.stage = Some(Stage::Filter);
        args.filter = Some(filter.condition.clone());
    } else if let Some(split) = &stage.split {
        args.stage = Some(Stage::Split);
        args.outputs = Vec::new();
        args.when = split
            .when
            .iter()
            .map(|r| format!("{}={}", r.to, r.condition))
            .collect();
        args.otherwise = split.otherwise.clone();
    } else if let Some(shard) = &stage.shard {
        args.stage = Some(Stage::Shard);
        args.key = Some(shard.key.clone());
    } else if let Some(handler) = &stage.handler {
        args.deliver_to = Some(format!("http://127.0.0.1:{}{}", handler.port, handler.path));
    }
    args
}

/// The CEL expressions of `stage`, each with its field.
fn expressions(stage: &PipelineStage, field: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if let Some(filter) = &stage.filter {
        found.push((format!("{field}.filter.if"), filter.condition.clone()));
    }
    if let Some(split) = &stage.split {
        for (i, route) in split.when.iter().enumerate() {
            found.push((
                format!("{field}.split.when[{i}].if"),
                route.condition.clone(),
            ));
        }
    }
    if let Some(shard) = &stage.shard {
        found.push((format!("{field}.shard.key"), shard.key.clone()));
    }
    found
}

/// Why `expression` cannot run in a stage, if it cannot: it does not parse as CEL, or it
/// reads a variable other than `message` (which the queue sidecar would only find
/// missing at the first message, and dead-letter every one).
pub fn check_expression(expression: &str) -> Result<(), String> {
    let program = cel::Program::compile(expression).map_err(|e| format!("not CEL: {e}"))?;
    let references = program.references();
    let unknown: Vec<&str> = references
        .variables()
        .into_iter()
        .filter(|v| *v != MESSAGE)
        .collect();
    match unknown.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "reads {}: the only variable is `message`, the message's JSON body",
            unknown.join(", ")
        )),
    }
}

/// Every reason the pipeline cannot run that its CRD's rules do not catch.
pub fn validate(p: &Pipeline) -> Result<(), FieldErrors> {
    let mut errors = Vec::new();
    for (i, stage) in p.spec.stages.iter().enumerate() {
        let field = format!("spec.stages[{i}]");
        for (at, expression) in expressions(stage, &field) {
            if let Err(why) = check_expression(&expression) {
                errors.push(FieldError::new(
                    at,
                    format!("stage {}: {expression:?} {why}", stage.name),
                ));
            }
        }
        for topic in outputs(stage) {
            if stage.from.contains(&topic) {
                errors.push(FieldError::new(
                    format!("{field}.from"),
                    format!(
                        "stage {} consumes {topic} and publishes to it: each message would come back to it for ever",
                        stage.name
                    ),
                ));
            }
        }
        if let Some(handler) = &stage.handler {
            let has_container = handler
                .template
                .spec
                .as_ref()
                .is_some_and(|s| !s.containers.is_empty());
            if !has_container {
                errors.push(FieldError::new(
                    format!("{field}.handler.template.spec.containers"),
                    "a handler's pod template needs its container",
                ));
            }
        }
    }
    errors.extend(broker::check(&p.spec.broker, "spec.broker"));
    FieldErrors::into_result(errors)
}

/// The children of `p`, or every reason it is invalid. `observed` gives the stages'
/// current replicas and their pods' answers, which an autoscaled stage is sized from.
pub fn desired(
    p: &Pipeline,
    config: &RenderConfig,
    observed: &Observed,
) -> Result<Vec<Child>, FieldErrors> {
    validate(p)?;
    let counts = observed
        .answers()
        .map(super::backlog::counts)
        .unwrap_or_default();
    let mut children = Vec::new();
    if broker::is_managed(&p.spec.broker) {
        let name = broker::name(&p.name_any());
        let selector = selector(p, "broker");
        let meta = child_meta(p, name, with_managed(selector.clone()));
        children.push(Child::Service(broker::service(meta.clone(), &selector)));
        children.push(Child::StatefulSet(broker::statefulset(
            meta,
            &selector,
            &p.name_any(),
            &p.spec.broker,
        )));
    }
    let mut errors = Vec::new();
    for (i, stage) in p.spec.stages.iter().enumerate() {
        let name = stage_name(&p.name_any(), &stage.name);
        let current = observed
            .cache()
            .and_then(|c| c.get::<Deployment>(&name))
            .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas));
        let replicas = replicas(stage, counts.get(&stage.name), current);
        match stage_deployment(p, i, stage, replicas, config) {
            Ok(d) => children.push(Child::Deployment(d)),
            Err(e) => errors.extend(e.0),
        }
    }
    FieldErrors::into_result(errors)?;
    Ok(children)
}

/// The pods a stage should have: `replicas`, or with `autoscale` enough for its backlog,
/// `ceil(lag / targetLag)` within `min` and `max`. A stage none of whose pods answered
/// keeps what it has: no answer is not an empty backlog.
pub fn replicas(stage: &PipelineStage, counts: Option<&StageCounts>, current: Option<i32>) -> i32 {
    let Some(auto) = &stage.autoscale else {
        return stage.replicas.unwrap_or(1);
    };
    let current = current.unwrap_or(auto.min).clamp(auto.min, auto.max);
    match counts.filter(|c| c.pods > 0) {
        None => current,
        Some(c) => {
            let wanted = c
                .lag
                .unsigned_abs()
                .div_ceil(auto.target_lag.unsigned_abs().max(1));
            i32::try_from(wanted)
                .unwrap_or(i32::MAX)
                .clamp(auto.min, auto.max)
        }
    }
}

fn stage_deployment(
    p: &Pipeline,
    index: usize,
    stage: &PipelineStage,
    replicas: i32,
    config: &RenderConfig,
) -> Result<Deployment, FieldErrors> {
    let field = format!("spec.stages[{index}]");
    let args = stage_args(p, stage);
    // The sidecar's own rules, which it would otherwise only apply when its pod starts.
    args.check().map_err(|e| {
        FieldErrors(vec![FieldError::new(
            field.clone(),
            format!("stage {}: {e}", stage.name),
        )])
    })?;
    let budget = resources::resolve(
        QUEUE,
        stage.resources.as_ref(),
        &format!("{field}.resources"),
    )
    .map_err(FieldErrors)?;
    let pod_labels = with_managed(stage_selector(p, &stage.name));
    let template = match &stage.handler {
        None => {
            let mut queue = sidecars::main_container(
                QUEUE,
                &config.sidecar_image,
                &args,
                (ADMIN_PORT, ports::QUEUE_ADMIN),
            );
            queue.env = Some(sidecars::queue_env(p.spec.broker.url_secret.as_ref()));
            queue.resources = Some(budget.requirements());
            PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![queue],
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            }
        }
        Some(handler) => {
            let mut template = handler.template.clone();
            let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
            meta.labels
                .get_or_insert_with(BTreeMap::new)
                .extend(pod_labels.clone());
            // Placed as every kind places the queue sidecar (native or plain, the port
            // plan checked against the handler's ports); its command line is then the
            // stage's, which carries the pipeline's stream settings that a `sidecars.queue`
            // block does not.
            let block = Sidecars {
                queue: Some(QueueSidecar {
                    url: broker::url(&p.name_any(), &p.spec.broker),
                    url_secret: p.spec.broker.url_secret.clone(),
                    ..QueueSidecar::default()
                }),
                ..Sidecars::default()
            };
            let placement = Placement {
                app_port: Some(handler.port),
                tls: None,
                sidecars: Some(&block),
                election: None,
            };
            sidecars::place(&mut template, &placement, config).map_err(|errors| {
                FieldErrors(
                    errors
                        .0
                        .into_iter()
                        .map(|e| FieldError {
                            field: in_stage(&e.field, &field),
                            message: in_stage(&e.message, &field),
                        })
                        .collect(),
                )
            })?;
            let pod = template.spec.get_or_insert_with(PodSpec::default);
            let queue = pod
                .init_containers
                .iter_mut()
                .flatten()
                .chain(pod.containers.iter_mut())
                .find(|c| c.name == QUEUE);
            if let Some(queue) = queue {
                queue.args = Some(args.to_args());
                queue.resources = Some(budget.requirements());
            }
            template
        }
    };
    Ok(Deployment {
        metadata: child_meta(
            p,
            stage_name(&p.name_any(), &stage.name),
            with_managed(stage_selector(p, &stage.name)),
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(stage_selector(p, &stage.name)),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// What `place` says of a kind's fields (`spec.port`, `spec.template`, the
/// `spec.sidecars.queue` block), said of the stage at `field` whose handler it is.
fn in_stage(text: &str, field: &str) -> String {
    text.replace("spec.sidecars.queue", field)
        .replace("spec.port", &format!("{field}.handler.port"))
        .replace("spec.template", &format!("{field}.handler.template"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::assert_child_of;

    fn pipeline(yaml: &str) -> Pipeline {
        let mut p: Pipeline = serde_norway::from_str(yaml).unwrap();
        p.metadata.namespace = Some("bank".into());
        p.metadata.uid = Some("u1".into());
        p
    }

    const BANKING: &str = r#"
apiVersion: rigging.dev/v1alpha1
kind: Pipeline
metadata: {name: banking}
spec:
  stages:
  - name: validate
    from: [transactions]
    split:
      when:
      - {if: "message.amount >= 10000", to: suspicious}
      otherwise: valid
  - name: fraud
    from: [suspicious]
    autoscale: {max: 5, targetLag: 100}
    handler:
      port: 8080
      path: /review
      to: [reviewed]
      template:
        spec:
          containers:
          - {name: api, image: fraud:1, ports: [{containerPort: 8080}]}
"#;

    fn render(p: &Pipeline) -> Vec<Child> {
        desired(p, &RenderConfig::default(), &Observed::nothing()).unwrap()
    }

    fn deployment<'a>(children: &'a [Child], name: &str) -> &'a Deployment {
        children
            .iter()
            .find_map(|c| match c {
                Child::Deployment(d) if d.metadata.name.as_deref() == Some(name) => Some(d),
                _ => None,
            })
            .unwrap()
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn a_managed_broker_and_a_deployment_per_stage_all_owned_by_the_pipeline() {
        let children = render(&pipeline(BANKING));
        let names: Vec<(&str, &str)> = children
            .iter()
            .map(|c| (c.kind(), c.meta().name.as_deref().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("Service", "banking-broker"),
                ("StatefulSet", "banking-broker"),
                ("Deployment", "banking-validate"),
                ("Deployment", "banking-fraud"),
            ]
        );
        for c in &children {
            assert_child_of(c.meta(), "bank", ("Pipeline", "banking", "u1"));
        }
    }

    #[test]
    fn a_built_in_stage_is_the_queue_sidecar_alone_routing_by_its_predicates() {
        let children = render(&pipeline(BANKING));
        let validate = pod(deployment(&children, "banking-validate"));
        assert_eq!(validate.containers.len(), 1);
        let args = validate.containers[0].args.clone().unwrap().join(" ");
        for flag in [
            "--nats nats://banking-broker:4222",
            "--stream banking",
            "--subscribe transactions",
            "--consumer validate",
            "--stage split",
            "--when suspicious=message.amount >= 10000",
            "--otherwise valid",
        ] {
            assert!(args.contains(flag), "{flag} in {args}");
        }
        assert_eq!(validate.automount_service_account_token, Some(false));
    }

    #[test]
    fn a_handler_stage_gets_the_queue_sidecar_delivering_to_its_port_and_path() {
        let children = render(&pipeline(BANKING));
        let fraud = pod(deployment(&children, "banking-fraud"));
        assert_eq!(fraud.containers[0].name, "api");
        let queue = &fraud.init_containers.as_ref().unwrap()[0];
        assert_eq!(queue.name, QUEUE);
        assert_eq!(queue.restart_policy.as_deref(), Some("Always"));
        let args = queue.args.clone().unwrap().join(" ");
        for flag in [
            "--deliver-to http://127.0.0.1:8080/review",
            "--output reviewed",
            "--consumer fraud",
            "--subscribe suspicious",
        ] {
            assert!(args.contains(flag), "{flag} in {args}");
        }
        assert_eq!(
            queue.ports.as_ref().unwrap()[0].name.as_deref(),
            Some(ADMIN_PORT)
        );
    }

    #[test]
    fn three_brokers_form_a_cluster_and_the_stream_is_replicated_on_all() {
        let mut p = pipeline(BANKING);
        p.spec.broker.replicas = Some(3);
        let children = render(&p);
        let sts = children
            .iter()
            .find_map(|c| match c {
                Child::StatefulSet(s) => Some(s),
                _ => None,
            })
            .unwrap();
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let args = spec.template.spec.as_ref().unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(
            args.contains("--routes nats://banking-broker-0.banking-broker:6222,nats://banking-broker-1.banking-broker:6222,nats://banking-broker-2.banking-broker:6222"),
            "{args}"
        );
        let stage = pod(deployment(&children, "banking-validate")).containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(stage.contains("--stream-replicas 3"), "{stage}");
        assert!(
            stage.contains("nats://banking-broker-2.banking-broker:4222"),
            "{stage}"
        );
    }

    #[test]
    fn an_existing_broker_replaces_the_managed_one_and_its_secret_reaches_each_stage() {
        let mut p = pipeline(BANKING);
        p.spec.broker.url_secret = Some(rigging_crds::sidecar::spec::SecretKey {
            name: "nats".into(),
            key: "url".into(),
        });
        let children = render(&p);
        assert!(children.iter().all(|c| c.kind() == "Deployment"));
        let validate = &pod(deployment(&children, "banking-validate")).containers[0];
        let env = validate.env.as_ref().unwrap();
        assert!(env.iter().any(|e| {
            e.name == "RIGGING_NATS_URL"
                && e.value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap()
                    .name
                    == "nats"
        }));
        assert!(
            !validate
                .args
                .clone()
                .unwrap()
                .contains(&"--nats".to_owned())
        );
    }

    #[test]
    fn a_bad_predicate_is_refused_naming_the_stage_and_the_field() {
        let p = pipeline(&BANKING.replace("message.amount >= 10000", "message.amount >="));
        let errors = desired(&p, &RenderConfig::default(), &Observed::nothing()).unwrap_err();
        assert_eq!(errors.0[0].field, "spec.stages[0].split.when[0].if");
        assert!(errors.0[0].message.contains("stage validate"), "{errors}");
        let p = pipeline(&BANKING.replace("message.amount >= 10000", "msg.amount > 1"));
        let errors = validate(&p).unwrap_err();
        assert!(errors.0[0].message.contains("reads msg"), "{errors}");
    }

    #[test]
    fn a_handler_on_the_queue_sidecars_port_is_refused_naming_the_stage() {
        let p = pipeline(&BANKING.replace("8080", "9127"));
        let errors = desired(&p, &RenderConfig::default(), &Observed::nothing()).unwrap_err();
        assert_eq!(errors.0[0].field, "spec.stages[1]");
        assert!(
            errors.0[0].message.contains("spec.stages[1].handler.port"),
            "{errors}"
        );
    }

    #[test]
    fn a_stage_that_feeds_itself_is_refused() {
        let p = pipeline(&BANKING.replace("otherwise: valid", "otherwise: transactions"));
        let errors = validate(&p).unwrap_err();
        assert_eq!(errors.0[0].field, "spec.stages[0].from");
    }

    #[test]
    fn an_autoscaled_stage_follows_its_backlog_within_its_bounds() {
        let p = pipeline(BANKING);
        let fraud = &p.spec.stages[1];
        let counts = |lag| StageCounts {
            pods: 1,
            lag,
            ..StageCounts::default()
        };
        assert_eq!(replicas(fraud, None, None), 1, "min by default");
        assert_eq!(replicas(fraud, None, Some(3)), 3, "no answer: kept");
        assert_eq!(replicas(fraud, Some(&counts(0)), Some(3)), 1);
        assert_eq!(replicas(fraud, Some(&counts(250)), Some(1)), 3);
        assert_eq!(replicas(fraud, Some(&counts(100_000)), Some(1)), 5, "max");
        let validate = &p.spec.stages[0];
        assert_eq!(replicas(validate, Some(&counts(100_000)), Some(1)), 1);
    }
}
