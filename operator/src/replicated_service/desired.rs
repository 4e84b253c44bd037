//! The pure half of the ReplicatedService controller: the objects a ReplicatedService
//! stands for, computed without IO. `render` prints them; `reconcile` applies them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use rigging_crds::replicated_service::TLS_ADMIN_PORT;
use rigging_crds::{FieldError, FieldErrors, ReplicatedService};

use crate::fingerprint;

/// Name of the TLS terminator sidecar, of its Secret volume, and of its port.
pub const TLS_SIDECAR_NAME: &str = "rigging-tls";
/// Where the TLS Secret is mounted in the sidecar.
pub const TLS_MOUNT_PATH: &str = "/etc/rigging/tls";
/// Numeric user the sidecar runs as (the "nonroot" user of distroless images).
pub const SIDECAR_USER: i64 = 65532;
/// The field manager of every server-side apply, and the `managed-by` label value.
pub const MANAGER: &str = "rigging-operator";

/// What the pure half needs to know that is not in the ReplicatedService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// Image of `rigging-sidecar`, for the sidecars the operator adds.
    pub sidecar_image: String,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self {
            sidecar_image: default_sidecar_image(),
        }
    }
}

/// `rigging-sidecar:<version of this operator>`: the sidecar released with it.
pub fn default_sidecar_image() -> String {
    format!("rigging-sidecar:{}", env!("CARGO_PKG_VERSION"))
}

/// The children of one ReplicatedService, in the order they are applied and rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// Runs the pods.
    pub deployment: Deployment,
    /// Load-balances over the ready pods.
    pub service: Service,
    /// Present when `disruptionBudget` is set.
    pub pdb: Option<PodDisruptionBudget>,
    /// Present when `autoscaling` is set.
    pub hpa: Option<HorizontalPodAutoscaler>,
}

impl Children {
    /// Every child as JSON, in apply order.
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        let mut out = vec![
            serde_json::to_value(&self.deployment)?,
            serde_json::to_value(&self.service)?,
        ];
        if let Some(pdb) = &self.pdb {
            out.push(serde_json::to_value(pdb)?);
        }
        if let Some(hpa) = &self.hpa {
            out.push(serde_json::to_value(hpa)?);
        }
        Ok(out)
    }
}

/// The labels that select this ReplicatedService's pods. Deployment selectors are
/// immutable, so this set never grows.
pub fn selector_labels(rs: &ReplicatedService) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), rs.name_any()),
        ("app.kubernetes.io/instance".to_owned(), rs.name_any()),
    ])
}

/// Labels of every child and pod: the selector labels plus who manages them.
pub fn labels(rs: &ReplicatedService) -> BTreeMap<String, String> {
    let mut labels = selector_labels(rs);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels.insert("app.kubernetes.io/part-of".into(), "rigging".into());
    labels
}

/// Computes the children, or every reason the spec is invalid.
pub fn desired(rs: &ReplicatedService, config: &RenderConfig) -> Result<Children, FieldErrors> {
    rs.spec.validate()?;
    check_reserved_names(rs)?;
    let mut children = Children {
        deployment: deployment(rs, config),
        service: service(rs),
        pdb: pdb(rs),
        hpa: hpa(rs),
    };
    fingerprint::stamp(&mut children.deployment.metadata, &children.deployment.spec);
    fingerprint::stamp(&mut children.service.metadata, &children.service.spec);
    if let Some(pdb) = children.pdb.as_mut() {
        fingerprint::stamp(&mut pdb.metadata, &pdb.spec);
    }
    if let Some(hpa) = children.hpa.as_mut() {
        fingerprint::stamp(&mut hpa.metadata, &hpa.spec);
    }
    Ok(children)
}

/// The sidecar's names must not collide with what the user already put in the pod.
fn check_reserved_names(rs: &ReplicatedService) -> Result<(), FieldErrors> {
    if rs.spec.tls.is_none() {
        return Ok(());
    }
    let Some(pod) = rs.spec.template.spec.as_ref() else {
        return Ok(());
    };
    let mut errors = Vec::new();
    let containers = pod.containers.iter().map(|c| ("containers", &c.name));
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", &c.name));
    for (i, (list, name)) in containers.chain(init).enumerate() {
        if name == TLS_SIDECAR_NAME {
            errors.push(FieldError::new(
                format!("spec.template.spec.{list}"),
                format!("container #{i} is named \"{TLS_SIDECAR_NAME}\", a name Rigging reserves for its TLS sidecar"),
            ));
        }
    }
    for v in pod.volumes.iter().flatten() {
        if v.name == TLS_SIDECAR_NAME {
            errors.push(FieldError::new(
                "spec.template.spec.volumes",
                format!("volume \"{TLS_SIDECAR_NAME}\" is reserved for the TLS Secret"),
            ));
        }
    }
    FieldErrors::into_result(errors)
}

fn child_meta(rs: &ReplicatedService) -> ObjectMeta {
    ObjectMeta {
        name: Some(rs.name_any()),
        namespace: rs.namespace(),
        labels: Some(labels(rs)),
        owner_references: rs.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn selector(rs: &ReplicatedService) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(rs)),
        ..LabelSelector::default()
    }
}

fn deployment(rs: &ReplicatedService, config: &RenderConfig) -> Deployment {
    let spec = &rs.spec;
    Deployment {
        metadata: child_meta(rs),
        spec: Some(DeploymentSpec {
            // Left out under autoscaling, so that this field manager never owns it and
            // every apply leaves the HPA's choice alone.
            replicas: spec.autoscaling.is_none().then_some(spec.replicas),
            selector: selector(rs),
            template: pod_template(rs, config),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pod_template(rs: &ReplicatedService, config: &RenderConfig) -> PodTemplateSpec {
    let mut template = rs.spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels(rs));
    if let (Some(tls), Some(pod)) = (&rs.spec.tls, template.spec.as_mut()) {
        pod.init_containers
            .get_or_insert_with(Vec::new)
            .push(tls_sidecar(tls.port, rs.spec.port, &config.sidecar_image));
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: TLS_SIDECAR_NAME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    template
}

/// Rigging's TLS terminator as a native sidecar: an init container that keeps running,
/// so it is up before the app takes traffic and stops after it.
pub fn tls_sidecar(tls_port: i32, app_port: i32, image: &str) -> Container {
    let admin_probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(TLS_ADMIN_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ])
    };
    Container {
        name: TLS_SIDECAR_NAME.into(),
        image: Some(image.into()),
        args: Some(vec![
            "tls".into(),
            "--listen".into(),
            format!("0.0.0.0:{tls_port}"),
            "--upstream".into(),
            format!("127.0.0.1:{app_port}"),
            "--cert".into(),
            format!("{TLS_MOUNT_PATH}/tls.crt"),
            "--key".into(),
            format!("{TLS_MOUNT_PATH}/tls.key"),
            "--admin".into(),
            format!("0.0.0.0:{TLS_ADMIN_PORT}"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some(TLS_SIDECAR_NAME.into()),
                container_port: tls_port,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("rigging-admin".into()),
                container_port: TLS_ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        restart_policy: Some("Always".into()),
        readiness_probe: Some(admin_probe("/readyz")),
        liveness_probe: Some(admin_probe("/healthz")),
        volume_mounts: Some(vec![VolumeMount {
            name: TLS_SIDECAR_NAME.into(),
            mount_path: TLS_MOUNT_PATH.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: Some(hardened_security_context()),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("50m", "32Mi")),
            limits: Some(quantities("500m", "128Mi")),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

/// The security context of every container Rigging adds to a pod.
pub fn hardened_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SIDECAR_USER),
        run_as_group: Some(SIDECAR_USER),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn service(rs: &ReplicatedService) -> Service {
    let spec = &rs.spec;
    Service {
        metadata: child_meta(rs),
        spec: Some(ServiceSpec {
            type_: Some(spec.service.service_type.as_str().into()),
            selector: Some(selector_labels(rs)),
            session_affinity: Some(spec.service.session_affinity.as_str().into()),
            ports: Some(vec![ServicePort {
                name: Some(if spec.tls.is_some() { "https" } else { "http" }.into()),
                port: spec.service_port(),
                target_port: Some(IntOrString::Int(spec.target_port())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn pdb(rs: &ReplicatedService) -> Option<PodDisruptionBudget> {
    let budget = rs.spec.disruption_budget.as_ref()?;
    Some(PodDisruptionBudget {
        metadata: child_meta(rs),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(selector(rs)),
            max_unavailable: budget.max_unavailable.clone(),
            min_available: budget.min_available.clone(),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

fn hpa(rs: &ReplicatedService) -> Option<HorizontalPodAutoscaler> {
    let scaling = rs.spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(rs),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: rs.name_any(),
            },
            min_replicas: Some(scaling.min_replicas),
            max_replicas: scaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        status: None,
    })
}
