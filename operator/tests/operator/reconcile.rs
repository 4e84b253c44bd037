//! The ReplicatedService reconcile against the mocked API server of [`crate::mock_api`]:
//! each scenario lists the exact requests expected — method, path and body — and answers
//! them; any other request fails the test.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use rigging_crds::ReplicatedService;
use rigging_operator::ChildStores;
use rigging_operator::controller::{Child, RESYNC, error_policy, reconcile};
use rigging_operator::replicated_service::desired::{self, Children};
use rigging_operator::replicated_service::status;
use serde_json::{Value, json};

use crate::mock_api::{
    self, APPLY_QUERY, condition, config, context, json_response, run_scenario, served,
};

/// A ReplicatedService as the API server would hand it to the controller.
fn replicated_service(extra_spec: Value) -> ReplicatedService {
    let metadata = json!({"name": "web", "namespace": "shop", "uid": "uid-1", "generation": 3, "resourceVersion": "100"});
    let spec = json!({
        "port": 8080,
        "template": {"spec": {"containers": [{
            "name": "app", "image": "app:1",
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}
        }]}}
    });
    served(metadata, spec, extra_spec)
}

fn with_tls_and_autoscaling() -> ReplicatedService {
    replicated_service(json!({
        "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
        "disruptionBudget": {"minAvailable": 1},
        "tls": {"secretName": "web-tls"},
    }))
}

/// Invalid in a way only the operator can see (the CRD cannot): a container takes the
/// name of Rigging's TLS sidecar.
fn with_a_reserved_container_name() -> ReplicatedService {
    let mut rs = replicated_service(json!({"tls": {"secretName": "web-tls"}}));
    rs.spec.template.spec.as_mut().unwrap().containers[0].name = "rigging-tls".into();
    rs
}

fn children(rs: &ReplicatedService) -> Children {
    desired::desired(rs, &config().render).unwrap()
}

/// Watch caches holding `objects` after their initial list, as the controller's
/// reflectors would.
#[derive(Default)]
struct Cache {
    deployments: Vec<Deployment>,
    children: Option<Children>,
}

impl IntoIterator for Cache {
    type Item = Child;
    type IntoIter = std::vec::IntoIter<Child>;

    /// What the caches hold: the Deployment as given (it carries a status), the other
    /// children as desired.
    fn into_iter(self) -> Self::IntoIter {
        let others = self
            .children
            .iter()
            .flat_map(|c| c.clone().into_vec())
            .filter(|c| !matches!(c, Child::Deployment(_)));
        let deployments = self.deployments.into_iter().map(Child::Deployment);
        deployments.chain(others).collect::<Vec<_>>().into_iter()
    }
}

fn deployment_path() -> &'static str {
    "/apis/apps/v1/namespaces/shop/deployments/web"
}

#[tokio::test]
async fn a_new_replicated_service_gets_every_child_applied_and_a_status() {
    let rs = with_tls_and_autoscaling();
    let want = children(&rs);
    let rs2 = rs.clone();
    let (result, ctx) = run_scenario(rs, Cache::default(), move |mut api| async move {
        api.apply(deployment_path(), &want.deployment).await;
        api.apply("/api/v1/namespaces/shop/services/web", &want.service)
            .await;
        api.apply(
            "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/web",
            want.pdb.as_ref().unwrap(),
        )
        .await;
        api.apply(
            "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/web",
            want.hpa.as_ref().unwrap(),
        )
        .await;
        let status = api.status(&rs2).await;
        assert_eq!(status["observedGeneration"], 3);
        let conditions = status["conditions"].as_array().unwrap();
        let summary: Vec<(String, String, i64)> = conditions
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                    c["observedGeneration"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("Ready".into(), "False".into(), 3),
                ("Progressing".into(), "True".into(), 3),
                ("Degraded".into(), "False".into(), 3),
            ]
        );
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    assert_eq!(
        ctx.metrics
            .reconciliations
            .with_label_values(&["ReplicatedService"])
            .get(),
        1
    );
}

#[tokio::test]
async fn the_deployment_applied_under_autoscaling_carries_no_replicas() {
    let rs = with_tls_and_autoscaling();
    let want = children(&rs);
    let rs2 = rs.clone();
    let (result, _) = run_scenario(
        rs,
        Cache {
            children: Some(want.clone()),
            deployments: vec![],
        },
        move |mut api| async move {
            let (body, send) = api
                .expect(
                    Method::PATCH,
                    &format!("{}{APPLY_QUERY}", deployment_path()),
                )
                .await;
            assert!(body["spec"].get("replicas").is_none(), "{body}");
            assert_eq!(
                body["spec"]["template"]["spec"]["initContainers"][0]["name"],
                "rigging-tls"
            );
            send.send_response(json_response(StatusCode::OK, &body));
            api.status(&rs2).await;
            api
        },
    )
    .await;
    result.unwrap();
}

/// The Deployment as the watch cache holds it once it rolled out: applied with the
/// current fingerprint and all replicas ready.
fn rolled_out(children: &Children) -> Deployment {
    let mut d = children.deployment.clone();
    d.metadata.generation = Some(2);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(2),
        replicas: Some(1),
        ready_replicas: Some(1),
        updated_replicas: Some(1),
        available_replicas: Some(1),
        ..DeploymentStatus::default()
    });
    d
}

#[tokio::test]
async fn an_unchanged_object_with_a_current_status_costs_no_request() {
    let mut rs = replicated_service(json!({"disruptionBudget": {"maxUnavailable": 1}}));
    let want = children(&rs);
    let deployment = rolled_out(&want);
    rs.status = Some(status::observed(
        &rs,
        Some(&deployment),
        None,
        Timestamp::now(),
    ));
    assert_eq!(
        rs.status.as_ref().unwrap().conditions[0].status,
        "True",
        "fixture is ready"
    );
    let (result, ctx) = run_scenario(
        rs,
        Cache {
            deployments: vec![deployment],
            children: Some(want),
        },
        |api| async move { api },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    let unchanged = ctx
        .metrics
        .applies
        .with_label_values(&["ReplicatedService", "Deployment", "unchanged"])
        .get();
    assert_eq!(unchanged, 1);
}

#[tokio::test]
async fn a_reconcile_that_starts_before_the_watch_has_its_status_write_does_not_write_it_again() {
    let rs = replicated_service(json!({}));
    let want = children(&rs);
    let cache = Cache {
        deployments: vec![rolled_out(&want)],
        children: Some(want),
    };
    let (client, mut api) = mock_api::pair("shop");
    let ctx = context(client, ChildStores::prefilled(cache));
    let writes = || {
        ctx.metrics
            .status_writes
            .with_label_values(&["ReplicatedService"])
            .get()
    };
    let first = tokio::spawn(reconcile(Arc::new(rs.clone()), ctx.clone()));
    let written = api.status(&rs).await;
    first.await.unwrap().unwrap();
    assert_eq!(writes(), 1);
    // A child's change starts the next reconcile while the cache still holds the object
    // as it was before that write (resourceVersion 100, no status).
    tokio::time::timeout(
        Duration::from_secs(30),
        reconcile(Arc::new(rs.clone()), ctx.clone()),
    )
    .await
    .expect("it made a request, and nobody answers")
    .unwrap();
    api.expect_no_request("the status it wrote is current")
        .await;
    assert_eq!(writes(), 1);
    // Once the watch has the write (resourceVersion 101), the cache is the truth again:
    // someone else's change since shows, and is set right.
    let mut delivered = rs.clone();
    delivered.metadata.resource_version = Some("101".into());
    delivered.status = Some(serde_json::from_value(written).unwrap());
    delivered.status.as_mut().unwrap().conditions.clear();
    let third = tokio::spawn(reconcile(Arc::new(delivered.clone()), ctx.clone()));
    api.status(&delivered).await;
    third.await.unwrap().unwrap();
    assert_eq!(writes(), 2);
}

#[tokio::test]
async fn a_child_that_drifted_in_the_cache_is_the_only_one_applied() {
    let mut rs = replicated_service(json!({}));
    let want = children(&rs);
    let mut deployment = rolled_out(&want);
    rs.status = Some(status::observed(
        &rs,
        Some(&deployment),
        None,
        Timestamp::now(),
    ));
    // An edit by hand: the cached Service targets another port. Fields the operator does
    // not apply (an annotation of someone else's) are not drift.
    let mut drifted = want.clone();
    drifted
        .service
        .spec
        .as_mut()
        .unwrap()
        .ports
        .as_mut()
        .unwrap()[0]
        .target_port = Some(IntOrString::Int(9999));
    deployment.metadata.annotations = Some([("by-hand".to_owned(), "kept".to_owned())].into());
    let service = want.service.clone();
    let (result, _) = run_scenario(
        rs,
        Cache {
            deployments: vec![deployment],
            children: Some(drifted),
        },
        move |mut api| async move {
            api.apply("/api/v1/namespaces/shop/services/web", &service)
                .await;
            api
        },
    )
    .await;
    result.unwrap();
}

#[tokio::test]
async fn an_invalid_spec_gets_an_event_and_a_degraded_status_and_nothing_applied() {
    let rs = with_a_reserved_container_name();
    let rs2 = rs.clone();
    let (result, _) = run_scenario(rs, Cache::default(), move |mut api| async move {
        let event = api.event().await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "InvalidSpec");
        assert_eq!(event["regarding"]["kind"], "ReplicatedService");
        assert_eq!(event["regarding"]["name"], "web");
        let note = event["note"].as_str().unwrap();
        assert!(
            note.contains("\"rigging-tls\", a name Rigging reserves"),
            "{note}"
        );
        let status = api.status(&rs2).await;
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["reason"], "InvalidSpec");
        assert_eq!(degraded["observedGeneration"], 3);
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn an_invalid_spec_already_reported_costs_no_request() {
    let mut rs = with_a_reserved_container_name();
    let errors = desired::desired(&rs, &config().render).unwrap_err();
    rs.status = Some(status::invalid(&rs, &errors, Timestamp::now()));
    let (result, _) = run_scenario(rs, Cache::default(), |api| async move { api }).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_server_error_is_reported_and_retried_with_growing_backoff() {
    let rs = replicated_service(json!({}));
    let rs_for_policy = Arc::new(rs.clone());
    let (result, ctx) = run_scenario(rs, Cache::default(), |mut api| async move {
        api.answer(
            Method::PATCH,
            &format!("{}{APPLY_QUERY}", deployment_path()),
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500}),
        )
        .await;
        let event = api.event().await;
        assert_eq!(event["reason"], "ApplyFailed");
        assert!(event["note"].as_str().unwrap().contains("Deployment shop/web"), "{event}");
        api
    })
    .await;
    let error = result.expect_err("a 500 fails the reconcile");
    assert_eq!(error.metric_label(), "apply");
    let first = error_policy(rs_for_policy.clone(), &error, ctx.clone());
    let second = error_policy(rs_for_policy, &error, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    assert_eq!(second, Action::requeue(Duration::from_secs(10)));
    assert_eq!(
        ctx.metrics
            .errors
            .with_label_values(&["ReplicatedService", "apply"])
            .get(),
        2
    );
}

#[tokio::test]
async fn after_a_restart_the_reconcile_waits_for_the_caches_instead_of_reapplying() {
    let mut rs = replicated_service(json!({}));
    let want = children(&rs);
    let deployment = rolled_out(&want);
    rs.status = Some(status::observed(
        &rs,
        Some(&deployment),
        None,
        Timestamp::now(),
    ));

    // Caches whose initial list has not arrived yet, as right after a start.
    let (stores, fill) = ChildStores::unfilled();
    let (client, _api) = mock_api::pair("shop");
    let ctx = context(client, stores);
    let reconciling = tokio::spawn(reconcile(Arc::new(rs), ctx));
    // On this single-threaded runtime the reconcile now runs until it waits: on the
    // caches, or — if it did not wait — on an apply nobody answers.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    fill.fill([
        Child::Deployment(deployment),
        Child::Service(want.service.clone()),
    ]);
    let result = tokio::time::timeout(Duration::from_secs(30), reconciling)
        .await
        .expect("reconcile stalled: it applied instead of waiting for the caches")
        .unwrap();
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
}

#[tokio::test]
async fn turning_autoscaling_on_hands_the_replica_count_over_before_dropping_it() {
    let scaled = replicated_service(json!({"replicas": 5}));
    let mut live = rolled_out(&children(&scaled));
    // What the API server records after the operator applied `replicas: 5`.
    live.metadata.managed_fields = Some(vec![
        serde_json::from_value(json!({
            "manager": "rigging-operator",
            "operation": "Apply",
            "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}
        }))
        .unwrap(),
    ]);
    let rs = replicated_service(json!({"replicas": 5, "autoscaling": {"maxReplicas": 9}}));
    let want = children(&rs);
    let rs2 = rs.clone();
    let (result, _) = run_scenario(
        rs,
        Cache {
            deployments: vec![live],
            children: Some(want.clone()),
        },
        move |mut api| async move {
            let (body, send) = api
                .expect(
                    Method::PATCH,
                    &format!(
                        "{}?&fieldManager=rigging-operator-handover",
                        deployment_path()
                    ),
                )
                .await;
            assert_eq!(
                body,
                json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "shop"},
                    "spec": {"replicas": 5}
                })
            );
            send.send_response(json_response(StatusCode::OK, &body));
            // Then the operator's own apply, without replicas, so that it lets go of them.
            api.apply(deployment_path(), &want.deployment).await;
            api.status(&rs2).await;
            api
        },
    )
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_frontend_gets_its_config_map_before_its_pods_and_its_status_reported() {
    let rs = replicated_service(json!({
        "frontend": {"cache": {"maxSize": "32Mi"}, "rateLimit": {"requestsPerSecond": 5}}
    }));
    let want = children(&rs);
    let frontend = want.frontend.clone().expect("a frontend");
    let rs2 = rs.clone();
    let (result, _) = run_scenario(rs, Cache::default(), move |mut api| async move {
        api.apply(deployment_path(), &want.deployment).await;
        api.apply("/api/v1/namespaces/shop/services/web", &want.service)
            .await;
        // The ConfigMap first: the frontend's pods do not start without it.
        api.apply(
            "/api/v1/namespaces/shop/configmaps/web-frontend",
            &frontend.config_map,
        )
        .await;
        api.apply(
            "/apis/apps/v1/namespaces/shop/deployments/web-frontend",
            &frontend.deployment,
        )
        .await;
        api.apply(
            "/api/v1/namespaces/shop/services/web-frontend",
            &frontend.service,
        )
        .await;
        let status = api.status(&rs2).await;
        assert_eq!(
            status["frontend"],
            json!({"replicas": 2, "readyReplicas": 0}),
            "{status}"
        );
        assert_eq!(condition(&status, "Ready")["status"], "False");
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
}

#[tokio::test]
async fn removing_the_frontend_deletes_its_deployment_service_and_config_map() {
    let before = children(&replicated_service(json!({"frontend": {}})));
    let frontend_deployment = before.frontend.as_ref().unwrap().deployment.clone();
    let mut rs = replicated_service(json!({}));
    let want = children(&rs);
    let deployment = rolled_out(&want);
    rs.status = Some(status::observed(
        &rs,
        Some(&deployment),
        None,
        Timestamp::now(),
    ));
    let (result, _) = run_scenario(
        rs,
        Cache {
            deployments: vec![deployment, frontend_deployment],
            children: Some(before),
        },
        |mut api| async move {
            // The app's children are as desired: only the frontend's go, kind by kind.
            api.delete("/apis/apps/v1/namespaces/shop/deployments/web-frontend")
                .await;
            api.delete("/api/v1/namespaces/shop/services/web-frontend")
                .await;
            api.delete("/api/v1/namespaces/shop/configmaps/web-frontend")
                .await;
            api
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
}

#[tokio::test]
async fn an_election_on_leases_gets_its_service_account_role_and_binding_before_its_pods() {
    let rs = replicated_service(json!({"sidecars": {"elect": {"items": 4}}}));
    let want = children(&rs);
    let access = want.elect.clone().expect("Lease access");
    let rs2 = rs.clone();
    let (result, _) = run_scenario(rs, Cache::default(), move |mut api| async move {
        api.apply(
            "/api/v1/namespaces/shop/serviceaccounts/web-elect",
            access.service_account.as_ref().unwrap(),
        )
        .await;
        api.apply(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/web-elect",
            &access.role,
        )
        .await;
        let binding = serde_json::to_value(&access.role_binding).unwrap();
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "web-elect", "namespace": "shop"}])
        );
        api.apply(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/web-elect",
            &access.role_binding,
        )
        .await;
        let role = serde_json::to_value(&access.role).unwrap();
        assert_eq!(
            role["rules"],
            json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "verbs": ["get", "create", "update", "list", "delete"]}])
        );
        // The pods run as that ServiceAccount.
        let pod = &want.deployment.spec.as_ref().unwrap().template.spec;
        assert_eq!(
            pod.as_ref().unwrap().service_account_name.as_deref(),
            Some("web-elect")
        );
        api.apply(deployment_path(), &want.deployment).await;
        api.apply("/api/v1/namespaces/shop/services/web", &want.service)
            .await;
        api.status(&rs2).await;
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
}

#[tokio::test]
async fn removing_the_election_deletes_its_service_account_role_and_binding() {
    let before = children(&replicated_service(json!({"sidecars": {"elect": {}}})));
    assert!(before.elect.is_some());
    let mut rs = replicated_service(json!({}));
    let want = children(&rs);
    let deployment = rolled_out(&want);
    rs.status = Some(status::observed(
        &rs,
        Some(&deployment),
        None,
        Timestamp::now(),
    ));
    let (result, _) = run_scenario(
        rs,
        Cache {
            deployments: vec![deployment],
            children: Some(before),
        },
        |mut api| async move {
            api.delete("/api/v1/namespaces/shop/serviceaccounts/web-elect")
                .await;
            api.delete("/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/web-elect")
                .await;
            api.delete("/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/web-elect")
                .await;
            api
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
}
