//! Server-side apply as the real API server does it: hand-over of `replicas` to an
//! autoscaler, drift set back, fields of other managers left alone, deleted children
//! recreated, children removed with their owner or when the spec drops them.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use rigging_crds::ReplicatedService;
use rigging_operator::controller::MANAGER;
use serde_json::{Value, json};

use crate::node::POD_SETTLE;
use crate::support::{APP_IMAGE, SETTLE, cluster, create, eventually, replicated_service};

/// Merge-patches the spec of `name`, as `kubectl patch --type merge` would.
async fn patch_spec(api: &Api<ReplicatedService>, name: &str, spec: Value) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .expect("patch the ReplicatedService");
}

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref()?.replicas
}

/// Whether `manager` owns `spec.replicas` of `d`.
fn owns_replicas(d: &Deployment, manager: &str) -> bool {
    d.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    })
}

async fn deployment_where(
    api: &Api<Deployment>,
    name: &str,
    what: &str,
    check: impl Fn(&Deployment) -> bool,
) -> Deployment {
    eventually(what, SETTLE, || async {
        api.get_opt(name).await.ok().flatten().filter(|d| check(d))
    })
    .await
}

#[tokio::test]
async fn autoscaling_takes_over_the_replica_count_without_a_dip_and_hands_it_back() {
    let Some(cluster) =
        cluster("autoscaling_takes_over_the_replica_count_without_a_dip_and_hands_it_back").await
    else {
        return;
    };
    let ns = cluster.namespace("autoscaling").await;
    let _operator = cluster.operator(&ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(cluster.client.clone(), &ns.name);
    create(
        &services,
        replicated_service("web", &ns.name, json!({"replicas": 5})),
    )
    .await;
    deployment_where(&deployments, "web", "5 replicas", |d| {
        replicas(d) == Some(5)
    })
    .await;

    patch_spec(
        &services,
        "web",
        json!({"autoscaling": {"minReplicas": 2, "maxReplicas": 10}}),
    )
    .await;
    eventually("the HPA", SETTLE, || async {
        hpas.get_opt("web").await.ok().flatten()
    })
    .await;
    let handed = deployment_where(&deployments, "web", "replicas handed over", |d| {
        !owns_replicas(d, MANAGER)
    })
    .await;
    assert_eq!(
        replicas(&handed),
        Some(5),
        "the count survives the hand-over"
    );
    // Without a metrics server the HPA never acts, so nothing may move the count: watch it
    // for a while.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let d = deployments.get("web").await.unwrap();
        assert_eq!(
            replicas(&d),
            Some(5),
            "the Deployment keeps 5 until the HPA acts"
        );
    }
    // What the HPA does (through the scale subresource) stays.
    cluster.kubectl_ok(&["scale", "-n", &ns.name, "deployment/web", "--replicas=7"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = deployments.get("web").await.unwrap();
    assert_eq!(
        replicas(&d),
        Some(7),
        "the operator leaves an autoscaled count alone"
    );

    // Autoscaling off: the HPA goes, and the spec's count applies again.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "remove", "path": "/spec/autoscaling"}
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    eventually("the HPA removed", SETTLE, || async {
        matches!(hpas.get_opt("web").await, Ok(None)).then_some(())
    })
    .await;
    let back = deployment_where(&deployments, "web", "spec.replicas again", |d| {
        replicas(d) == Some(5) && owns_replicas(d, MANAGER)
    })
    .await;
    assert_eq!(replicas(&back), Some(5));
}

#[tokio::test]
async fn a_child_edited_by_hand_is_set_back_and_fields_of_other_managers_stay() {
    let Some(cluster) =
        cluster("a_child_edited_by_hand_is_set_back_and_fields_of_other_managers_stay").await
    else {
        return;
    };
    let ns = cluster.namespace("drift").await;
    let _operator = cluster.operator(&ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    create(
        &services,
        replicated_service("web", &ns.name, json!({"replicas": 2})),
    )
    .await;
    deployment_where(&deployments, "web", "the Deployment", |d| {
        replicas(d) == Some(2)
    })
    .await;

    let n = ns.name.as_str();
    cluster.kubectl_ok(&[
        "annotate",
        "-n",
        n,
        "deployment/web",
        "example.com/by-hand=kept",
    ]);
    cluster.kubectl_ok(&[
        "set",
        "image",
        "-n",
        n,
        "deployment/web",
        "app=nginx:0-by-hand",
    ]);
    cluster.kubectl_ok(&["scale", "-n", n, "deployment/web", "--replicas=4"]);
    cluster.kubectl_ok(&[
        "label",
        "-n",
        n,
        "deployment/web",
        "app.kubernetes.io/part-of=by-hand",
        "--overwrite",
    ]);
    let image = |d: &Deployment| {
        d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .image
            .clone()
    };
    let restored = deployment_where(&deployments, "web", "the edits set back", |d| {
        image(d).as_deref() == Some(APP_IMAGE)
            && replicas(d) == Some(2)
            && d.labels()
                .get("app.kubernetes.io/part-of")
                .map(String::as_str)
                == Some("rigging")
    })
    .await;
    assert_eq!(
        restored
            .annotations()
            .get("example.com/by-hand")
            .map(String::as_str),
        Some("kept"),
        "an annotation another manager owns is left alone"
    );
}

#[tokio::test]
async fn a_deleted_child_is_recreated_and_children_go_with_their_owner() {
    let Some(cluster) =
        cluster("a_deleted_child_is_recreated_and_children_go_with_their_owner").await
    else {
        return;
    };
    let ns = cluster.namespace("lifecycle").await;
    let _operator = cluster.operator(&ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    create(&services, replicated_service("web", &ns.name, json!({}))).await;
    let first = eventually("the Service", SETTLE, || async {
        svcs.get_opt("web").await.ok().flatten()
    })
    .await;

    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("the Service recreated", SETTLE, || async {
        svcs.get_opt("web")
            .await
            .ok()
            .flatten()
            .filter(|s| s.meta().uid != first.meta().uid)
    })
    .await;

    // Deleting the owner: the controller-manager's garbage collector removes the children
    // (in the foreground: once the pods are gone too, which wait out their shutdown delay).
    services
        .delete("web", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("the children garbage-collected", POD_SETTLE, || async {
        let gone = matches!(deployments.get_opt("web").await, Ok(None))
            && matches!(svcs.get_opt("web").await, Ok(None));
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
async fn children_the_spec_no_longer_asks_for_are_deleted() {
    let Some(cluster) = cluster("children_the_spec_no_longer_asks_for_are_deleted").await else {
        return;
    };
    let ns = cluster.namespace("orphans").await;
    let _operator = cluster.operator(&ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &ns.name);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(cluster.client.clone(), &ns.name);
    let spec = json!({
        "disruptionBudget": {"maxUnavailable": 1},
        "autoscaling": {"maxReplicas": 3}
    });
    create(&services, replicated_service("web", &ns.name, spec)).await;
    eventually("the PDB and the HPA", SETTLE, || async {
        let both =
            pdbs.get_opt("web").await.ok()?.is_some() && hpas.get_opt("web").await.ok()?.is_some();
        both.then_some(())
    })
    .await;
    patch_spec(
        &services,
        "web",
        json!({"disruptionBudget": null, "autoscaling": null}),
    )
    .await;
    eventually("the PDB and the HPA deleted", SETTLE, || async {
        let gone = matches!(pdbs.get_opt("web").await, Ok(None))
            && matches!(hpas.get_opt("web").await, Ok(None));
        gone.then_some(())
    })
    .await;
}
