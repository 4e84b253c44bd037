//! The NATS JetStream broker the operator runs for a kind that needs one (a Pipeline's
//! topics, a MapReduce's outputs), unless the object names an existing server: a
//! StatefulSet of 1 or 3 servers with a volume each, behind a headless Service
//! `<owner>-broker`. One copy, whatever kind owns it; the owner supplies the name, labels
//! and owner reference.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rigging_crds::FieldError;
use rigging_crds::pipeline::Broker;

use crate::sidecars::{field_env, hardened_security_context};

/// The managed broker's image when the owner names none.
pub const DEFAULT_BROKER_IMAGE: &str = "nats:2.10";
/// The managed broker's volume when the owner gives no size.
pub const DEFAULT_STORAGE: &str = "1Gi";
/// NATS's ports: clients, cluster routes, monitoring.
const CLIENT_PORT: i32 = 4222;
const ROUTE_PORT: i32 = 6222;
const MONITOR_PORT: i32 = 8222;

/// The name of the broker's StatefulSet and Service.
pub fn name(owner: &str) -> String {
    format!("{owner}-broker")
}

/// Whether the operator runs the broker: its owner names none.
pub fn is_managed(broker: &Broker) -> bool {
    broker.url.is_none() && broker.url_secret.is_none()
}

/// Servers of the managed broker.
pub fn replicas(broker: &Broker) -> i32 {
    broker.replicas.unwrap_or(1)
}

/// The URL clients of `owner`'s broker are given (`None`: from the Secret),
/// comma-separated for a cluster: each server by its own name, so that a client knows
/// every server from the start.
pub fn url(owner: &str, broker: &Broker) -> Option<String> {
    if !is_managed(broker) {
        return broker.url.clone();
    }
    let name = name(owner);
    Some(match replicas(broker) {
        1 => format!("nats://{name}:{CLIENT_PORT}"),
        n => (0..n)
            .map(|i| format!("nats://{name}-{i}.{name}:{CLIENT_PORT}"))
            .collect::<Vec<_>>()
            .join(","),
    })
}

/// What the CRD cannot check of `broker` (at `field`): that its storage is a size.
pub fn check(broker: &Broker, field: &str) -> Option<FieldError> {
    let storage = broker.storage.as_ref()?;
    (!is_quantity(storage)).then(|| {
        FieldError::new(
            format!("{field}.storage"),
            format!("{storage:?} is not a size: a number with a unit, such as 1Gi or 500Mi"),
        )
    })
}

/// A storage size as a PersistentVolumeClaim takes it: digits, an optional fraction and
/// a binary or decimal unit.
fn is_quantity(text: &str) -> bool {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    let units = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    number_ok && units.contains(&unit)
}

/// The headless Service of the managed broker, `meta` its name, labels and owner.
pub fn service(meta: ObjectMeta, selector: &BTreeMap<String, String>) -> Service {
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            // Headless: each server has a name of its own, which the cluster's routes and
            // the clients' server lists use; and the servers must find each other before
            // any is ready.
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector.clone()),
            ports: Some(vec![
                port("client", CLIENT_PORT),
                port("cluster", ROUTE_PORT),
                port("monitor", MONITOR_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The managed broker's servers, `meta` their StatefulSet's name, labels and owner;
/// `cluster` names the JetStream cluster of three.
pub fn statefulset(
    meta: ObjectMeta,
    selector: &BTreeMap<String, String>,
    cluster: &str,
    broker: &Broker,
) -> StatefulSet {
    let name = meta.name.clone().unwrap_or_default();
    let labels = meta.labels.clone();
    let replicas = replicas(broker);
    let mut args: Vec<String> = [
        "--jetstream",
        "--store_dir",
        "/data",
        "--port",
        "4222",
        "--http_port",
        "8222",
        "--server_name",
        "$(POD_NAME)",
    ]
    .map(String::from)
    .to_vec();
    if replicas > 1 {
        let routes = (0..replicas)
            .map(|i| format!("nats://{name}-{i}.{name}:{ROUTE_PORT}"))
            .collect::<Vec<_>>()
            .join(",");
        args.extend([
            "--cluster_name".into(),
            cluster.to_owned(),
            "--cluster".into(),
            format!("nats://0.0.0.0:{ROUTE_PORT}"),
            "--routes".into(),
            routes,
        ]);
    }
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let server = Container {
        name: "nats".into(),
        image: Some(
            broker
                .image
                .clone()
                .unwrap_or_else(|| DEFAULT_BROKER_IMAGE.into()),
        ),
        args: Some(args),
        env: Some(vec![field_env("POD_NAME", "metadata.name")]),
        ports: Some(vec![
            port("client", CLIENT_PORT),
            port("cluster", ROUTE_PORT),
            port("monitor", MONITOR_PORT),
        ]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(CLIENT_PORT),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(2),
            ..Probe::default()
        }),
        resources: Some(broker_resources()),
        // The server writes only to its volume. It runs as the image's user (root in the
        // nats image, whose volumes from hostPath provisioners are root's), without
        // privileges.
        security_context: Some(SecurityContext {
            run_as_non_root: None,
            run_as_user: None,
            run_as_group: None,
            ..hardened_security_context()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            service_name: Some(name),
            replicas: Some(replicas),
            // The servers of a cluster must all run before any has a quorum: started one
            // by one, the first would wait for ever to be ready.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![server],
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(
                                broker
                                    .storage
                                    .clone()
                                    .unwrap_or_else(|| DEFAULT_STORAGE.into()),
                            ),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]),
            // The data is its owner's: it goes with it, not with a scale-in.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// A managed server's CPU and memory: little at rest; JetStream's file store keeps
/// messages on disk, and the limit leaves room for its caches under a burst.
fn broker_resources() -> ResourceRequirements {
    let list = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect::<BTreeMap<_, _>>()
    };
    ResourceRequirements {
        requests: Some(list(&[("cpu", "50m"), ("memory", "64Mi")])),
        limits: Some(list(&[("cpu", "2"), ("memory", "1Gi")])),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_sizes_are_checked() {
        for good in ["1Gi", "500Mi", "10G", "1.5Gi", "1000"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "Gi", "1 Gi", "1GB", "1..5Gi", ".5Gi", "-1Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let broker = Broker {
            storage: Some("1 Gi".into()),
            ..Broker::default()
        };
        assert_eq!(
            check(&broker, "spec.broker").map(|e| e.field),
            Some("spec.broker.storage".into())
        );
    }
}
