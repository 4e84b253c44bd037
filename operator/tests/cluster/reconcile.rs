//! `rigging-operator run` reconciles each example on a real API server: owned children,
//! status conditions for the current generation, printer columns, and a condition plus an
//! Event for input that only the operator can refuse.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use rigging_crds::ReplicatedService;
use serde_json::json;

use crate::node::POD_SETTLE;
use crate::support::{SETTLE, cluster, create, eventually, examples, replicated_service};

/// Whether `child` is controlled by `owner`, which is what garbage collection follows.
fn controlled_by<K: Resource>(child: &K, owner: &ReplicatedService) -> bool {
    child.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "ReplicatedService"
            && Some(&o.uid) == owner.metadata.uid.as_ref()
    })
}

#[tokio::test]
async fn every_example_is_reconciled_into_owned_children_and_a_current_status() {
    let Some(cluster) =
        cluster("every_example_is_reconciled_into_owned_children_and_a_current_status").await
    else {
        return;
    };
    let ns = cluster.namespace("reconcile").await;
    let _operator = cluster.operator(&ns.name);
    for (path, _) in examples("replicated-service") {
        cluster.kubectl_ok(&["apply", "-n", &ns.name, "-f", &path]);
    }
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &ns.name);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(cluster.client.clone(), &ns.name);
    let all = services.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), examples("replicated-service").len());
    for rs in all {
        let name = rs.name_any();
        let rs = eventually(
            &format!("{name}: a status for its generation"),
            SETTLE,
            || async {
                let rs = services.get(&name).await.ok()?;
                let status = rs.status.as_ref()?;
                let current = status.observed_generation == rs.metadata.generation
                    && status.conditions.len() == 3
                    && status
                        .conditions
                        .iter()
                        .all(|c| c.observed_generation == rs.metadata.generation);
                current.then_some(rs)
            },
        )
        .await;
        let conditions = &rs.status.as_ref().unwrap().conditions;
        let condition = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap_or_else(|| panic!("{name}: no {t} condition"))
        };
        // Whether the pods are ready yet is the node's part (node::examples); nothing here
        // is wrong with the spec.
        assert_eq!(condition("Degraded").status, "False", "{name}");

        let deployment = deployments.get(&name).await.expect("the Deployment exists");
        assert!(controlled_by(&deployment, &rs), "{name}: Deployment owner");
        let service = svcs.get(&name).await.expect("the Service exists");
        assert!(controlled_by(&service, &rs), "{name}: Service owner");
        let pdb = pdbs.get_opt(&name).await.unwrap();
        assert_eq!(
            pdb.is_some(),
            rs.spec.disruption_budget.is_some(),
            "{name}: PDB"
        );
        assert!(
            pdb.is_none_or(|p| controlled_by(&p, &rs)),
            "{name}: PDB owner"
        );
        let hpa = hpas.get_opt(&name).await.unwrap();
        assert_eq!(hpa.is_some(), rs.spec.autoscaling.is_some(), "{name}: HPA");
        assert!(
            hpa.is_none_or(|h| controlled_by(&h, &rs)),
            "{name}: HPA owner"
        );
    }

    // The adapters of `shop` are native sidecars in pods the API server accepts: the
    // ReplicaSet controller creates them.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pod = eventually("a pod of shop", SETTLE, || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=shop"))
            .await
            .ok()?;
        list.items.into_iter().next()
    })
    .await;
    let spec = pod.spec.expect("pod spec");
    let sidecars: Vec<(&str, Option<&str>)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.restart_policy.as_deref()))
        .collect();
    assert_eq!(
        sidecars,
        [
            ("rigging-logs", Some("Always")),
            ("rigging-metrics", Some("Always")),
            ("rigging-health", Some("Always"))
        ]
    );
    let app = &spec.containers[0];
    let probe = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref());
    assert_eq!(
        probe.map(|g| (g.path.as_deref(), &g.port)),
        Some((Some("/readyz"), &IntOrString::Int(9102))),
        "the app's readiness is the health monitor's"
    );
    let mounts: Vec<&str> = app
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert!(mounts.contains(&"rigging-logs"), "{mounts:?}");
    let annotations = pod.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("prometheus.io/port").map(String::as_str),
        Some("9121")
    );

    // The printer columns, as `kubectl get` shows them, once the kubelet runs hello's one
    // pod and the status counts it ready.
    let table = eventually("hello's row to count its pod ready", POD_SETTLE, || async {
        let table = cluster.kubectl_ok(&["get", "rsvc", "-n", &ns.name]);
        let row: Vec<String> = table
            .lines()
            .find(|l| l.starts_with("hello "))?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (row[..3] == ["hello", "True", "1"]).then_some(table)
    })
    .await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "REPLICAS", "AGE"], "{table}");
}

#[tokio::test]
async fn input_only_the_operator_can_refuse_gets_a_degraded_condition_and_an_event() {
    let Some(cluster) =
        cluster("input_only_the_operator_can_refuse_gets_a_degraded_condition_and_an_event").await
    else {
        return;
    };
    let ns = cluster.namespace("refused").await;
    let _operator = cluster.operator(&ns.name);
    // The CRD cannot see that a container takes the name of Rigging's TLS sidecar.
    let object = replicated_service(
        "clash",
        &ns.name,
        json!({
            "tls": {"secretName": "clash-tls"},
            "template": {"spec": {"containers": [
                {"name": "app", "image": "nginx:1.27", "readinessProbe": {"tcpSocket": {"port": 8080}}},
                {"name": "rigging-tls", "image": "envoy:1"}
            ]}}
        }),
    );
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    create(&services, object).await;
    let degraded = eventually("a Degraded condition", SETTLE, || async {
        let rs = services.get("clash").await.ok()?;
        let status = rs.status?;
        (status.observed_generation == rs.metadata.generation)
            .then(|| {
                status
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Degraded")
            })
            .flatten()
    })
    .await;
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        degraded
            .message
            .contains("\"rigging-tls\", a name Rigging reserves"),
        "{}",
        degraded.message
    );
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &ns.name);
    let event = eventually("an InvalidSpec Event", SETTLE, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidSpec")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("clash")
        })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.note.as_deref(), Some(degraded.message.as_str()));
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(
        deployments.get_opt("clash").await.unwrap().is_none(),
        "nothing is applied for an invalid spec"
    );

    // A sidecar's memory request above its limit: the CRD takes any quantity, and the API
    // server would refuse the Deployment; the operator refuses first, naming the field.
    let greedy = replicated_service(
        "greedy",
        &ns.name,
        json!({"sidecars": {"http": {
            "configMap": "greedy-http",
            "resources": {"requests": {"memory": "1Gi"}}
        }}}),
    );
    create(&services, greedy).await;
    let message = eventually("greedy is Degraded", SETTLE, || async {
        let status = services.get("greedy").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.reason == "InvalidSpec")
            .map(|c| c.message)
    })
    .await;
    assert!(
        message.contains(
            "spec.sidecars.http.resources.requests.memory: 1Gi is more than the memory limit 256Mi"
        ),
        "{message}"
    );
    assert!(deployments.get_opt("greedy").await.unwrap().is_none());
}
