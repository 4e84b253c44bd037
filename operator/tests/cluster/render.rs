//! What `render` prints is what the API server accepts: every object of every example, and
//! of awkward but valid names, passes a server-side dry-run apply. Names the API server
//! would refuse are refused by `render` first, naming the field.

use kube::Api;
use kube::api::DynamicObject;
use kube::core::ApiResource;
use rigging_crds::ReplicatedService;
use rigging_operator::controller::RenderConfig;
use rigging_operator::render;
use serde_json::{Value, json};

use crate::support::{cluster, examples, replicated_service};

fn yaml(value: &Value) -> String {
    serde_norway::to_string(value).unwrap()
}

#[tokio::test]
async fn every_rendered_object_passes_a_server_side_dry_run() {
    let Some(cluster) = cluster("every_rendered_object_passes_a_server_side_dry_run").await else {
        return;
    };
    let ns = cluster.namespace("render").await;
    let longest = "a".repeat(62) + "z";
    let mut inputs = examples("replicated-service");
    inputs.extend(examples("scatter-gather"));
    inputs.extend(examples("vote-tally"));
    // Unscheduled, a MapReduce's first render holds its first run: a WorkQueue whose worker
    // template carries the output sidecar, which the WorkQueue schema must take.
    let tally =
        std::fs::read_to_string(crate::support::root().join("examples/vote-tally/tally.yaml"))
            .unwrap();
    let unscheduled = tally
        .split_once("  schedule:")
        .map(|(head, tail)| format!("{head}{}", &tail[tail.find("  map:").unwrap()..]))
        .unwrap();
    inputs.push(("vote-tally unscheduled".to_owned(), unscheduled));
    for name in [longest.as_str(), "web-v2", "x"] {
        let tls = json!({"tls": {"secretName": "t"}, "disruptionBudget": {"minAvailable": 1}, "autoscaling": {"maxReplicas": 3}});
        inputs.push((
            name.to_owned(),
            yaml(&replicated_service(name, &ns.name, tls)),
        ));
    }
    for (source, text) in inputs {
        let objects = render::render_values(&source, &text, &RenderConfig::default())
            .unwrap_or_else(|e| panic!("{source}: render refused it: {e}"));
        assert!(!objects.is_empty(), "{source}");
        let refused = cluster.dry_run(&ns.name, &objects).await;
        assert!(refused.is_empty(), "{source}: {refused:#?}");
    }
}

#[tokio::test]
async fn names_the_api_server_refuses_are_refused_by_render_first() {
    let Some(cluster) = cluster("names_the_api_server_refuses_are_refused_by_render_first").await
    else {
        return;
    };
    let ns = cluster.namespace("render-names").await;
    let resource = ApiResource::erase::<ReplicatedService>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, &resource);
    let seventy = "b".repeat(70);
    // Whether this API server refuses a Service of that name too. Recent Kubernetes
    // accepts Service names that start with a digit; the older versions Rigging supports
    // refuse them, so Rigging keeps to DNS-1035 labels, which every version accepts.
    let names = [
        ("web.v2", true),
        (seventy.as_str(), true),
        ("trailing-", true),
        ("9lives", false),
    ];
    for (name, service_refused) in names {
        let object = replicated_service(name, &ns.name, json!({}));
        let refusal = render::render_values(name, &yaml(&object), &RenderConfig::default())
            .expect_err("render refuses the name")
            .to_string();
        assert!(
            refusal.contains("document 1: metadata.name must be a DNS-1035 label"),
            "{name}: {refusal}"
        );
        // Without Rigging's rule, the API server would accept the ReplicatedService and
        // refuse its Service: show that, then that the rule refuses it first.
        if service_refused {
            let service = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name},
                "spec": {"ports": [{"port": 80}]}
            });
            let refused = cluster.dry_run(&ns.name, &[service]).await;
            assert_eq!(
                refused.len(),
                1,
                "{name}: the API server refuses such a Service"
            );
        }
        let dynamic: DynamicObject = serde_json::from_value(object).unwrap();
        let err = api
            .create(&Default::default(), &dynamic)
            .await
            .expect_err("the API server refuses the ReplicatedService");
        assert!(
            err.to_string()
                .contains("metadata.name must be a DNS-1035 label"),
            "{name}: {err}"
        );
    }
}
