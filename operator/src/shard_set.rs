//! The pods of a sharded workload, which ShardedService and ScatterGather share: shards
//! with stable names `<name>-<shard>`, in one StatefulSet of every shard or one per shard
//! (its replicas), behind one headless Service that gives every pod a stable DNS name.
//! A kind describes its set with a [`ShardSet`] and adds only what is its own (a ring, a
//! router, a root).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    EnvVar, PersistentVolumeClaim, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rigging_crds::FieldErrors;
use rigging_crds::sidecar::gather::{SHARD_ENV, SHARDS_ENV};
use rigging_crds::sidecar::spec::Sidecars;

use crate::controller::{RenderConfig, with_managed};
use crate::sidecars;
use crate::sidecars::elect::ElectAccess;

/// The label that tells one shard's pods from another's, and selects them for a
/// shard's own Service.
pub const SHARD_LABEL: &str = "rigging.dev/shard";

/// The namespace of an object rendered without one, as `kubectl apply` would place it:
/// the pods' DNS names are in it.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One sharded set of pods, as its kind describes it.
#[derive(Debug, Clone)]
pub struct ShardSet<'a> {
    /// The owner's name: shard `i` is `<name>-<i>`.
    pub name: String,
    /// The metadata every child starts from: namespace and owner references.
    pub meta: ObjectMeta,
    /// The labels that select every pod of the set (and no other pod of the owner).
    pub selector: BTreeMap<String, String>,
    /// The headless Service that names the pods and governs the StatefulSets.
    pub headless: String,
    /// The app's port, as the Services name it.
    pub port: ServicePort,
    /// The pods' template; its first container is the app.
    pub template: &'a PodTemplateSpec,
    /// Storage of every pod, kept across restarts.
    pub volume_claim_templates: &'a [PersistentVolumeClaim],
    /// Rigging's sidecars beside the app.
    pub sidecars: Option<&'a Sidecars>,
    /// Whether every container of the app learns its shard and the shard count from
    /// [`SHARD_ENV`] and [`SHARDS_ENV`] (only with one StatefulSet per shard, where the
    /// shard is fixed per template).
    pub shard_env: Option<i32>,
}

impl ShardSet<'_> {
    /// The stable name of shard `shard`: its pod's (one StatefulSet of every shard) or its
    /// StatefulSet's and Service's.
    pub fn shard_name(&self, shard: i32) -> String {
        format!("{}-{shard}", self.name)
    }

    /// The labels that select the pods of shard `shard` alone.
    pub fn shard_selector(&self, shard: i32) -> BTreeMap<String, String> {
        let mut labels = self.selector.clone();
        labels.insert(SHARD_LABEL.to_owned(), shard.to_string());
        labels
    }

    /// The namespace the pods are named in.
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// `HOST` of pod `pod` through the headless Service: it resolves while the pod is
    /// ready.
    pub fn pod_host(&self, pod: &str) -> String {
        format!("{pod}.{}.{}.svc", self.headless, self.namespace())
    }

    /// A child's metadata: the set's namespace and owners, `name`, `labels`.
    pub fn child_meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            ..self.meta.clone()
        }
    }

    /// The headless Service of every pod of the set.
    pub fn headless(&self) -> Service {
        Service {
            metadata: self.child_meta(self.headless.clone(), with_managed(self.selector.clone())),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                selector: Some(self.selector.clone()),
                // A pod's name resolves once it is ready, never to a pod that cannot
                // serve: the default, so left out. The API server drops a `false`, and a
                // field it drops would read as drift on every reconcile.
                ports: Some(vec![self.port.clone()]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// The ClusterIP Service `<name>-<shard>` of one shard's replicas.
    pub fn shard_service(&self, shard: i32) -> Service {
        let labels = with_managed(self.shard_selector(shard));
        Service {
            metadata: self.child_meta(self.shard_name(shard), labels),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(self.shard_selector(shard)),
                ports: Some(vec![self.port.clone()]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// The StatefulSet of every shard (`shard: None`, one pod per shard) or of one shard
    /// (its replicas), with `replicas` pods.
    pub fn statefulset(
        &self,
        config: &RenderConfig,
        elect: Option<&ElectAccess>,
        shard: Option<i32>,
        replicas: i32,
    ) -> Result<StatefulSet, FieldErrors> {
        let (name, selector) = match shard {
            None => (self.name.clone(), self.selector.clone()),
            Some(i) => (self.shard_name(i), self.shard_selector(i)),
        };
        Ok(StatefulSet {
            metadata: self.child_meta(name, with_managed(selector.clone())),
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                selector: match_labels(selector.clone()),
                service_name: Some(self.headless.clone()),
                // Shards are independent: none waits for another to start or stop.
                pod_management_policy: Some("Parallel".into()),
                template: self.template(config, elect, shard, with_managed(selector))?,
                volume_claim_templates: (!self.volume_claim_templates.is_empty())
                    .then(|| self.volume_claim_templates.to_vec()),
                ..StatefulSetSpec::default()
            }),
            status: None,
        })
    }

    fn template(
        &self,
        config: &RenderConfig,
        elect: Option<&ElectAccess>,
        shard: Option<i32>,
        labels: BTreeMap<String, String>,
    ) -> Result<PodTemplateSpec, FieldErrors> {
        let mut template = self.template.clone();
        if let Some(access) = elect {
            access.assign(&mut template);
        }
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        meta.labels.get_or_insert_with(BTreeMap::new).extend(labels);
        if let (Some(count), Some(shard), Some(pod)) =
            (self.shard_env, shard, template.spec.as_mut())
        {
            for container in &mut pod.containers {
                let env = container.env.get_or_insert_with(Vec::new);
                env.retain(|e| e.name != SHARD_ENV && e.name != SHARDS_ENV);
                env.extend([value_env(SHARD_ENV, shard), value_env(SHARDS_ENV, count)]);
            }
        }
        let placement = sidecars::Placement {
            app_port: Some(self.port.port),
            tls: None,
            sidecars: self.sidecars,
            election: Some(&self.name),
        };
        sidecars::place(&mut template, &placement, config)?;
        Ok(template)
    }
}

fn value_env(name: &str, value: i32) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

/// A Service port `name` on `port`, to the same port of the pods.
pub fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// A selector of exactly `labels`.
pub fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}
