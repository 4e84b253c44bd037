//! The pure half of the ScatterGather controller: the objects a ScatterGather stands for,
//! computed without IO. `render` prints them; `reconcile` applies them.
//!
//! The leaves are a [`ShardSet`] with one StatefulSet per shard, so that every leaf is
//! told its shard in its environment and has a stable DNS name through the headless
//! Service. The root's config file lists those names: a leaf that is not ready does not
//! resolve, and the root asks another replica of its shard.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use rigging_crds::scatter_gather::MergeSpec;
use rigging_crds::sidecar::gather::{
    ConfigError, GatherConfig, Hedge, HedgeAfter, Merge, Merger, Percent, Shard,
};
use rigging_crds::sidecar::{duration, ports};
use rigging_crds::{FieldError, FieldErrors, ScatterGather};

use crate::controller::with_managed;
use crate::controller::{Child, RenderConfig, owner_references};
use crate::shard_set::{ShardSet, match_labels, service_port};
use crate::sidecars;
use crate::sidecars::elect::ElectAccess;

/// The label that tells a ScatterGather's leaf pods from its root pods.
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// The name of the port the leaves and the root serve on.
const PORT_NAME: &str = "http";

/// The root's admin port's name: its `/status` and `/metrics`.
pub const ADMIN_PORT_NAME: &str = "gather-admin";

/// What a child is part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The leaves: their StatefulSets and headless Service.
    Leaf,
    /// The root: its ConfigMap, Deployment and the Service clients use.
    Root,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Component::Leaf => "leaf",
            Component::Root => "root",
        }
    }
}

/// The labels that select one component's pods.
pub fn selector_labels(sg: &ScatterGather, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), sg.name_any()),
        ("app.kubernetes.io/instance".to_owned(), sg.name_any()),
        (COMPONENT_LABEL.to_owned(), component.as_str().to_owned()),
    ])
}

/// The headless Service that names every leaf.
pub fn headless_name(sg: &ScatterGather) -> String {
    format!("{}-leaves", sg.name_any())
}

/// The root Deployment.
pub fn root_name(sg: &ScatterGather) -> String {
    format!("{}-root", sg.name_any())
}

/// The root's ConfigMap.
pub fn config_map_name(sg: &ScatterGather) -> String {
    format!("{}-gather", sg.name_any())
}

/// The leaves, as the machinery ScatterGather shares with ShardedService builds them.
pub fn leaves(sg: &ScatterGather) -> ShardSet<'_> {
    ShardSet {
        name: sg.name_any(),
        meta: ObjectMeta {
            namespace: sg.namespace(),
            owner_references: owner_references(sg),
            ..ObjectMeta::default()
        },
        selector: selector_labels(sg, Component::Leaf),
        headless: headless_name(sg),
        port: service_port(PORT_NAME, sg.spec.port),
        template: &sg.spec.template,
        volume_claim_templates: &sg.spec.volume_claim_templates,
        sidecars: sg.spec.sidecars.as_ref(),
        shard_env: Some(sg.spec.shards),
    }
}

/// The root's config file: every leaf by its DNS name, and the request's fate. Every
/// field the file names is a field of the spec, so a refusal names `spec.…`.
pub fn gather_config(sg: &ScatterGather) -> Result<GatherConfig, FieldErrors> {
    let spec = &sg.spec;
    let set = leaves(sg);
    let mut errors = Vec::new();
    let mut duration_of = |field: &str, text: Option<&String>| {
        text.and_then(|t| {
            duration::parse(t)
                .map_err(|e| errors.push(FieldError::new(format!("spec.{field}"), e)))
                .ok()
        })
    };
    let deadline = duration_of("deadline", spec.deadline.as_ref());
    let leaf_timeout = duration_of("leafTimeout", spec.leaf_timeout.as_ref());
    let hedge = spec.hedge.as_ref().and_then(|h| {
        let after = HedgeAfter::parse(&h.after)
            .map_err(|e| errors.push(FieldError::new("spec.hedge.after", e)))
            .ok();
        let budget = h.budget.as_deref().map_or(Ok(Percent(5.0)), |b| {
            Percent::parse(b).map_err(|e| errors.push(FieldError::new("spec.hedge.budget", e)))
        });
        Some(Hedge {
            after: after?,
            budget: budget.ok()?,
        })
    });
    let shards = (0..spec.shards)
        .map(|shard| Shard {
            replicas: (0..spec.replicas_per_shard)
                .map(|r| {
                    let pod = format!("{}-{r}", set.shard_name(shard));
                    format!("{}:{}", set.pod_host(&pod), spec.port)
                })
                .collect(),
        })
        .collect();
    let merge = match (&spec.merge, &spec.merger) {
        (Some(m), _) => builtin(m),
        (None, Some(m)) => Merge {
            merger: Some(Merger {
                url: format!("http://127.0.0.1:{}{}", m.port, m.path),
            }),
            ..Merge::default()
        },
        (None, None) => Merge::default(),
    };
    let config = GatherConfig {
        shards,
        merge,
        deadline: deadline.unwrap_or(std::time::Duration::from_secs(1)),
        min_shards: spec.min_shards.and_then(|n| u32::try_from(n).ok()),
        leaf_timeout,
        hedge,
    };
    if !errors.is_empty() {
        return Err(FieldErrors(errors));
    }
    config
        .validate()
        .map_err(|e| FieldErrors(vec![in_spec(sg, e)]))?;
    Ok(config)
}

fn builtin(m: &MergeSpec) -> Merge {
    Merge {
        concat: m.concat.clone(),
        top_k: m.top_k.clone(),
        sum: m.sum.clone(),
        first: m.first.clone(),
        merger: None,
    }
}

/// A refusal of the root's file, named by the spec's field it came from.
fn in_spec(sg: &ScatterGather, e: ConfigError) -> FieldError {
    let field = match e.field.as_str() {
        "merge" if sg.spec.merge.is_none() => "spec.merger".to_owned(),
        "shards" => "spec.shards".to_owned(),
        other if other.starts_with("merge.merger") => "spec.merger".to_owned(),
        other => format!("spec.{other}"),
    };
    FieldError::new(field, e.message)
}

/// The root's file as its ConfigMap holds it.
fn config_text(config: &GatherConfig) -> Result<String, FieldErrors> {
    serde_norway::to_string(config).map_err(|e| {
        FieldErrors(vec![FieldError::new(
            "spec",
            format!("the root's config file cannot be written: {e}"),
        )])
    })
}

/// The ports the root's pod serves on, each refused when another holder has it.
fn check_ports(sg: &ScatterGather) -> Result<(), FieldErrors> {
    let spec = &sg.spec;
    let root_field = if spec.root.port.is_some() {
        "spec.root.port"
    } else {
        "spec.port"
    };
    let admin = i32::from(ports::GATHER_ADMIN);
    let mut errors = Vec::new();
    if spec.root_port() == admin {
        errors.push(FieldError::new(
            root_field,
            format!("port {admin} is the root's admin port: set root.port to another port"),
        ));
    }
    if let Some(m) = &spec.merger {
        if m.port == admin || m.port == spec.root_port() {
            errors.push(FieldError::new(
                "spec.merger.port",
                format!(
                    "port {} is taken in the root's pod (the root serves {} and its admin port {admin})",
                    m.port,
                    spec.root_port()
                ),
            ));
        }
        if m.container.name == sidecars::GATHER {
            errors.push(FieldError::new(
                "spec.merger.container.name",
                format!("{:?} is the root's own container", sidecars::GATHER),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(FieldErrors(errors))
    }
}

/// The children of one ScatterGather, in the order they are applied and rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// With `sidecars.elect` on Leases: the leaves' ServiceAccount, Role and RoleBinding.
    pub elect: Option<ElectAccess>,
    /// The headless Service `<name>-leaves`.
    pub headless: Service,
    /// One StatefulSet `<name>-<shard>` per shard.
    pub statefulsets: Vec<StatefulSet>,
    /// The root's config file, `<name>-gather`.
    pub config: ConfigMap,
    /// The root Deployment `<name>-root`.
    pub root: Deployment,
    /// The Service `<name>` clients use.
    pub service: Service,
}

impl Children {
    /// Every child, in apply order: the leaves before the root that asks them.
    pub fn into_vec(self) -> Vec<Child> {
        let mut out = self
            .elect
            .map(ElectAccess::into_children)
            .unwrap_or_default();
        out.push(Child::Service(self.headless));
        out.extend(self.statefulsets.into_iter().map(Child::StatefulSet));
        out.extend([
            Child::ConfigMap(self.config),
            Child::Deployment(self.root),
            Child::Service(self.service),
        ]);
        out
    }
}

/// Computes the children, or every reason the spec is invalid.
pub fn desired(sg: &ScatterGather, config: &RenderConfig) -> Result<Children, FieldErrors> {
    let spec = &sg.spec;
    let file = match (gather_config(sg), check_ports(sg)) {
        (Ok(file), Ok(())) => file,
        (f, p) => {
            let errors = [f.err(), p.err()].into_iter().flatten();
            return Err(FieldErrors(errors.flat_map(|e| e.0).collect()));
        }
    };
    let set = leaves(sg);
    let elect = ElectAccess::for_pods(
        spec.sidecars.as_ref(),
        &spec.template,
        &sg.name_any(),
        set.child_meta(sg.name_any(), with_managed(set.selector.clone())),
        config.elect_grant.as_ref(),
    );
    let statefulsets = (0..spec.shards)
        .map(|i| set.statefulset(config, elect.as_ref(), Some(i), spec.replicas_per_shard))
        .collect::<Result<_, _>>()?;
    Ok(Children {
        elect,
        headless: set.headless(),
        statefulsets,
        config: ConfigMap {
            metadata: set.child_meta(config_map_name(sg), labels(sg, Component::Root)),
            data: Some(BTreeMap::from([(
                sidecars::GATHER_CONFIG_KEY.to_owned(),
                config_text(&file)?,
            )])),
            ..ConfigMap::default()
        },
        root: root_deployment(sg, &set, config)?,
        service: client_service(sg, &set),
    })
}

fn labels(sg: &ScatterGather, component: Component) -> BTreeMap<String, String> {
    with_managed(selector_labels(sg, component))
}

fn root_deployment(
    sg: &ScatterGather,
    set: &ShardSet,
    config: &RenderConfig,
) -> Result<Deployment, FieldErrors> {
    let spec = &sg.spec;
    // Ports are 1..=65535 by the CRD schema.
    let port = u16::try_from(spec.root_port()).unwrap_or_default();
    let mut root = sidecars::serving_container(
        sidecars::GATHER,
        &config.sidecar_image,
        &sidecars::gather_args(SocketAddr::from(([0, 0, 0, 0], port))),
        (ADMIN_PORT_NAME, ports::GATHER_ADMIN),
        (spec.root.resources.as_ref(), "spec.root.resources"),
        (PORT_NAME, spec.root_port()),
    )?;
    root.volume_mounts = Some(vec![sidecars::gather_config_mount()]);
    let mut containers = vec![root];
    containers.extend(spec.merger.as_ref().map(|m| m.container.clone()));
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(sg, Component::Root)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers,
            volumes: Some(vec![sidecars::gather_config_volume(&config_map_name(sg))]),
            // A root talks to leaves, never to the API server.
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
    };
    // Clients reach the roots through a Service: a stopping root serves on until it is
    // out of the Service's endpoints.
    sidecars::delay_shutdown(&mut template);
    Ok(Deployment {
        metadata: set.child_meta(root_name(sg), labels(sg, Component::Root)),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.root.replicas),
            selector: match_labels(selector_labels(sg, Component::Root)),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

fn client_service(sg: &ScatterGather, set: &ShardSet) -> Service {
    Service {
        metadata: set.child_meta(sg.name_any(), labels(sg, Component::Root)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(sg, Component::Root)),
            ports: Some(vec![service_port(PORT_NAME, sg.spec.root_port())]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rigging_crds::sidecar::gather::{HedgeAfter, Percent, SHARD_ENV, SHARDS_ENV};

    use super::*;

    pub(crate) fn scatter_gather(extra: &str) -> ScatterGather {
        serde_norway::from_str(&format!(
            r#"
apiVersion: rigging.dev/v1alpha1
kind: ScatterGather
metadata: {{name: search, namespace: docs, uid: u-1, generation: 2}}
spec:
  shards: 3
  replicasPerShard: 2
  port: 8080
  template:
    spec:
      containers:
        - name: leaf
          image: busybox:1.36
          readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}}}
{extra}"#
        ))
        .expect("test fixture parses")
    }

    #[test]
    fn every_leaf_is_in_the_roots_file_by_its_stable_name_and_learns_its_shard() {
        let sg = scatter_gather(
            "  merge: {topK: {path: hits, by: score, k: 5}}\n  deadline: 300ms\n  minShards: 2\n  hedge: {after: p95}\n",
        );
        let file = gather_config(&sg).unwrap();
        assert_eq!(file.shards.len(), 3);
        assert_eq!(
            file.shards[1].replicas,
            [
                "search-1-0.search-leaves.docs.svc:8080",
                "search-1-1.search-leaves.docs.svc:8080"
            ]
        );
        assert_eq!(file.min_shards(), 2);
        assert_eq!(file.deadline, std::time::Duration::from_millis(300));
        let hedge = file.hedge.unwrap();
        assert_eq!(
            (hedge.after, hedge.budget),
            (HedgeAfter::Quantile(95.0), Percent(5.0))
        );

        let children = desired(&sg, &RenderConfig::default()).unwrap();
        let names: Vec<_> = children.statefulsets.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["search-0", "search-1", "search-2"]);
        let leaf = &children.statefulsets[2]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let env: Vec<_> = leaf
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
            .collect();
        assert!(env.contains(&(SHARD_ENV, "2")), "{env:?}");
        assert!(env.contains(&(SHARDS_ENV, "3")), "{env:?}");
        let text = &children.config.data.as_ref().unwrap()[sidecars::GATHER_CONFIG_KEY];
        let back: GatherConfig = serde_norway::from_str(text).unwrap();
        assert_eq!(back.shards, gather_config(&sg).unwrap().shards);
    }

    #[test]
    fn a_merger_is_a_container_of_the_root_pod_and_the_file_points_at_it() {
        let sg = scatter_gather(
            "  merger:\n    container: {name: merge, image: example/merge:1}\n    port: 9000\n",
        );
        let children = desired(&sg, &RenderConfig::default()).unwrap();
        let pod = children.root.spec.unwrap().template.spec.unwrap();
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [sidecars::GATHER, "merge"]);
        let file = gather_config(&sg).unwrap();
        assert_eq!(
            file.merge.merger.unwrap().url,
            "http://127.0.0.1:9000/merge"
        );
    }

    #[test]
    fn what_the_root_would_refuse_is_refused_naming_the_spec_field() {
        let cases = [
            (
                "  merge: {topK: {path: hits, by: score, k: 0}}\n",
                "spec.merge.topK.k",
            ),
            (
                "  merge: {sum: {}}\n  deadline: 1s\n  leafTimeout: 2s\n",
                "spec.leafTimeout",
            ),
            ("  merge: {first: {}}\n  minShards: 2\n", "spec.minShards"),
            (
                "  merge: {sum: {}}\n  hedge: {after: p100}\n",
                "spec.hedge.after",
            ),
            (
                "  merge: {sum: {}}\n  hedge: {after: p95, budget: 120%}\n",
                "spec.hedge.budget",
            ),
            (
                "  merge: {sum: {}}\n  root: {port: 9128}\n",
                "spec.root.port",
            ),
            (
                "  merger:\n    container: {name: merge, image: m}\n    port: 8080\n",
                "spec.merger.port",
            ),
        ];
        for (extra, field) in cases {
            let errors = desired(&scatter_gather(extra), &RenderConfig::default()).unwrap_err();
            assert!(
                errors.0.iter().any(|e| e.field == field),
                "{extra}: {errors}"
            );
        }
    }
}
