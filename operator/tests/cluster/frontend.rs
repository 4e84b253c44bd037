//! A ReplicatedService's frontend tier on a real API server: its ConfigMap, Deployment and
//! Service `<name>-frontend` accepted and owned, pods the ReplicaSet controller can create
//! and that the app's Service never selects, a config change that rolls no pod, and every
//! child gone with the field.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use rigging_crds::ReplicatedService;
use rigging_crds::sidecar::http::{ByteSize, HttpConfig, StickyKey};
use serde_json::json;

use crate::node::POD_SETTLE;
use crate::support::{SETTLE, cluster, eventually, replicated_service};

fn controlled_by<K: Resource>(child: &K, owner: &ReplicatedService) -> bool {
    child.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "ReplicatedService"
            && Some(&o.uid) == owner.metadata.uid.as_ref()
    })
}

/// The config file the frontend's ConfigMap holds, as the sidecar reads it.
fn http_config(cm: &ConfigMap) -> HttpConfig {
    let text = &cm.data.as_ref().expect("data")["http.yaml"];
    let config: HttpConfig = serde_norway::from_str(text).expect("the sidecar's type reads it");
    config.validate().expect("the sidecar takes it");
    config
}

#[tokio::test]
async fn a_frontend_tier_is_applied_in_front_of_the_service_and_removed_with_the_field() {
    let Some(cluster) =
        cluster("a_frontend_tier_is_applied_in_front_of_the_service_and_removed_with_the_field")
            .await
    else {
        return;
    };
    let ns = cluster.namespace("frontend").await;
    let _operator = cluster.operator(&ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object = replicated_service(
        "shop",
        &ns.name,
        json!({
            "frontend": {
                "cache": {"maxSize": "16Mi", "defaultTtl": "1m"},
                "rateLimit": {"requestsPerSecond": 10, "key": "Header", "header": "X-Api-Key"}
            }
        }),
    );
    let rs = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(object).unwrap(),
        )
        .await
        .expect("the API server accepts a frontend");
    assert_eq!(
        rs.spec.frontend.as_ref().map(|f| (f.replicas, f.port)),
        Some((2, 80)),
        "the CRD's defaults"
    );

    let cm = eventually("the ConfigMap shop-frontend", SETTLE, || async {
        config_maps.get_opt("shop-frontend").await.ok().flatten()
    })
    .await;
    assert!(controlled_by(&cm, &rs), "ConfigMap owner");
    let config = http_config(&cm);
    let dns = config.backends[0].dns.clone().expect("a dns backend");
    assert_eq!(
        (dns.name, dns.port),
        (format!("shop.{}.svc", ns.name), 8080),
        "the app's Service"
    );
    assert_eq!(config.cache.as_ref().unwrap().max_size, ByteSize(16 << 20));
    let limit = config.routes[0].rate_limit.clone().unwrap();
    assert_eq!(
        (limit.requests_per_second, limit.key),
        (10.0, StickyKey::Header("X-Api-Key".into()))
    );

    let deployment = eventually("the Deployment shop-frontend", SETTLE, || async {
        deployments.get_opt("shop-frontend").await.ok().flatten()
    })
    .await;
    assert!(controlled_by(&deployment, &rs), "Deployment owner");
    let spec = deployment.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod_spec = spec.template.spec.clone().unwrap();
    let ambassador = &pod_spec.containers[0];
    let args = ambassador.args.clone().unwrap().join(" ");
    assert!(
        args.starts_with("http ") && args.contains("--listen 0.0.0.0:8080"),
        "{args}"
    );
    let volume = pod_spec.volumes.clone().unwrap().remove(0);
    assert_eq!(volume.config_map.unwrap().name, "shop-frontend");

    let service = eventually("the Service shop-frontend", SETTLE, || async {
        svcs.get_opt("shop-frontend").await.ok().flatten()
    })
    .await;
    assert!(controlled_by(&service, &rs), "Service owner");
    let port = &service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (
            80,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
        )
    );

    // The ReplicaSet controller creates the frontend's pods, and the app's selector does
    // not take them for its own.
    let frontend_pods = eventually("the frontend's pods", SETTLE, || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=shop-frontend"))
            .await
            .ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    let app_selector = svcs
        .get("shop")
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap();
    for pod in &frontend_pods {
        let labels = pod.labels();
        assert!(
            !app_selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{}: the app's Service selects a frontend pod",
            pod.name_any()
        );
    }

    // On the node the app's pods and the frontend's run: the status counts both ready.
    eventually(
        "Ready, with both frontend pods ready",
        POD_SETTLE,
        || async {
            let rs = services.get("shop").await.ok()?;
            let status = rs.status?;
            let current = status.observed_generation == rs.metadata.generation;
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let frontend = status.frontend?.ready_replicas == Some(2);
            (current && ready && frontend).then_some(())
        },
    )
    .await;

    // A new rate limit reaches the file; the pods are left alone (the sidecar reloads).
    let generation = deployment.metadata.generation;
    services
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"frontend": {"rateLimit": {"requestsPerSecond": 25}}}})),
        )
        .await
        .unwrap();
    eventually("the new rate limit in the ConfigMap", SETTLE, || async {
        let cm = config_maps.get("shop-frontend").await.ok()?;
        let limit = http_config(&cm).routes[0].rate_limit.clone()?;
        (limit.requests_per_second == 25.0).then_some(())
    })
    .await;
    let after = deployments.get("shop-frontend").await.unwrap();
    assert_eq!(
        after.metadata.generation, generation,
        "a config change rolls no frontend pod"
    );

    // Without the field, the frontend's children go; the app's stay.
    services
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/spec/frontend"}]))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    eventually("the frontend's children deleted", SETTLE, || async {
        let gone = matches!(deployments.get_opt("shop-frontend").await, Ok(None))
            && matches!(svcs.get_opt("shop-frontend").await, Ok(None))
            && matches!(config_maps.get_opt("shop-frontend").await, Ok(None));
        gone.then_some(())
    })
    .await;
    assert!(deployments.get_opt("shop").await.unwrap().is_some());
    assert!(svcs.get_opt("shop").await.unwrap().is_some());
    eventually("a status without the frontend", SETTLE, || async {
        let rs = services.get("shop").await.ok()?;
        let status = rs.status?;
        let current = status.observed_generation == rs.metadata.generation;
        (current && status.frontend.is_none()).then_some(())
    })
    .await;
}
