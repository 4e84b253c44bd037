//! The CRDs and the examples on a real API server: accepted as written, and every CEL rule
//! refuses its bad case with the message users will read (real cel-go, with its cost
//! limits), which is also the message `render` gives.

use kube::Resource;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use rigging_crds::ReplicatedService;
use rigging_operator::controller::RenderConfig;
use rigging_operator::render;
use serde_json::{Value, json};

use crate::support::{Cluster, SETTLE, cluster, eventually, examples, replicated_service};

/// The cluster, once the CRD of `K` is established (a test may start while the CRDs the
/// suite applied are still being set up).
pub async fn kind_cluster<K: Resource<DynamicType = ()>>(test: &str) -> Option<Cluster> {
    let cluster = cluster(test).await?;
    let crd = format!("crd/{}.{}", K::plural(&()), K::group(&()));
    cluster.kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", &crd]);
    Some(cluster)
}

/// Every example of `examples/<folder>` passes a server-side dry run in `namespace`, and each
/// bad object of kind `K` (a name, the object, the words of the rule it breaks) is refused
/// with those words, by the API server and by `render`.
pub async fn assert_examples_accepted_and_bad_ones_refused<K: Resource<DynamicType = ()>>(
    cluster: &Cluster,
    namespace: &str,
    folder: &str,
    bad: impl IntoIterator<Item = (&'static str, Value, &'static str)>,
) {
    for (path, _) in examples(folder) {
        let out = cluster.kubectl_ok(&["apply", "-n", namespace, "-f", &path, "--dry-run=server"]);
        assert!(out.contains("created"), "{path}: {out}");
    }
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &resource);
    for (name, object, words) in bad {
        assert_refused(&api, name, &object, words).await;
    }
}

/// That the operator refuses `object` (of kind `K`), which the API server accepts, naming
/// `field` in its `Ready` condition (reason `InvalidSpec`) and in a Warning Event.
pub async fn assert_invalid_spec_said<K: Resource<DynamicType = ()>>(
    cluster: &Cluster,
    namespace: &str,
    object: &Value,
    field: &str,
) {
    cluster.apply(object);
    let name = object["metadata"]["name"].as_str().expect("a name");
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &resource);
    let message = eventually("the status says why", SETTLE, || async {
        let object = api.get(name).await.ok()?;
        let conditions = object.data["status"]["conditions"].as_array()?.clone();
        let ready = conditions.into_iter().find(|c| c["type"] == "Ready")?;
        let message = ready["message"].as_str().unwrap_or_default().to_owned();
        (ready["reason"] == "InvalidSpec").then_some(message)
    })
    .await;
    assert!(message.contains(field), "{message}");
    cluster
        .event_containing(namespace, "InvalidSpec", name, field)
        .await;
}

#[tokio::test]
async fn crds_and_every_example_are_accepted() {
    let Some(cluster) = cluster("crds_and_every_example_are_accepted").await else {
        return;
    };
    let ns = cluster.namespace("crds-examples").await;
    // The CRDs were applied with `kubectl apply -f crds/`; applying again is a no-op.
    let out = cluster.kubectl_ok(&["apply", "-f", "crds/"]);
    assert!(out.contains("replicatedservices.rigging.dev"), "{out}");
    for (path, _) in examples("replicated-service") {
        let out = cluster.kubectl_ok(&["apply", "-n", &ns.name, "-f", &path]);
        assert!(out.contains("created"), "{path}: {out}");
    }
    let listed = cluster.kubectl_ok(&["get", "rsvc", "-n", &ns.name, "-o", "name"]);
    assert_eq!(
        listed.lines().count(),
        examples("replicated-service").len(),
        "{listed}"
    );
}

/// One bad case per rule: what is changed from the smallest valid spec, and the words of
/// the rule's message.
fn bad_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "min-over-max",
            json!({"spec": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}),
            "minReplicas must be <= maxReplicas",
        ),
        (
            "two-budgets",
            json!({"spec": {"disruptionBudget": {"maxUnavailable": 1, "minAvailable": 1}}}),
            "set exactly one of maxUnavailable or minAvailable",
        ),
        (
            "regex-without-pattern",
            json!({"spec": {"sidecars": {"logs": {"format": "regex", "file": "/var/log/app/app.log"}}}}),
            "pattern is required with format regex",
        ),
        (
            "exec-check",
            json!({"spec": {"sidecars": {"health": {"checks": ["exec:pg_isready"]}}}}),
            "exec: checks run in the health monitor's own container",
        ),
        (
            "log-file-in-no-directory",
            json!({"spec": {"sidecars": {"logs": {"format": "nginx", "file": "access.log"}}}}),
            "file must be an absolute path to a file inside a directory",
        ),
        (
            "no-probe",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}),
            "container \"web\" (the app container, template.spec.containers[0]) has no readinessProbe",
        ),
        (
            "web.v2",
            json!({}),
            "metadata.name must be a DNS-1035 label",
        ),
        (
            "a-name-of-seventy-characters-is-a-valid-object-name-but-not-a-service",
            json!({}),
            "metadata.name must be a DNS-1035 label",
        ),
        (
            // 55 characters: a Service of its own, but `<name>-frontend` is 64.
            "a-name-of-fifty-five-characters-leaves-no-room-for-fe55",
            json!({"spec": {"frontend": {}}}),
            "metadata.name must be at most 54 characters with spec.frontend",
        ),
        (
            "frontend-over-tls",
            json!({"spec": {"frontend": {}, "tls": {"secretName": "web-tls"}}}),
            "frontend and tls cannot be combined",
        ),
        (
            "cache-size-in-megabytes",
            json!({"spec": {"frontend": {"cache": {"maxSize": "64MB"}}}}),
            "maxSize must be a size",
        ),
        (
            "ttl-without-unit",
            json!({"spec": {"frontend": {"cache": {"defaultTtl": "60"}}}}),
            "defaultTtl must be a duration",
        ),
        (
            "rate-limit-by-an-unnamed-header",
            json!({"spec": {"frontend": {"rateLimit": {"requestsPerSecond": 10, "key": "Header"}}}}),
            "header is required with key Header",
        ),
        (
            "http-ambassador-config-map-not-a-name",
            json!({"spec": {"sidecars": {"http": {"configMap": "Web_HTTP"}}}}),
            "configMap must be the name of a ConfigMap",
        ),
    ]
}

#[tokio::test]
async fn each_cel_rule_refuses_its_bad_case_with_the_message_render_gives() {
    let Some(cluster) =
        cluster("each_cel_rule_refuses_its_bad_case_with_the_message_render_gives").await
    else {
        return;
    };
    let ns = cluster.namespace("cel").await;
    let resource = ApiResource::erase::<ReplicatedService>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, &resource);
    for (name, change, words) in bad_cases() {
        let mut object = replicated_service(name, &ns.name, json!({}));
        crate::support::merge(&mut object, &change);
        assert_refused(&api, name, &object, words).await;
    }
}

/// That the API server refuses `object` (422) saying `words`, and `render` too.
pub async fn assert_refused(api: &Api<DynamicObject>, name: &str, object: &Value, words: &str) {
    let dynamic: DynamicObject = serde_json::from_value(object.clone()).unwrap();
    let refused = match api.create(&PostParams::default(), &dynamic).await {
        Ok(_) => panic!("{name}: the API server accepted it"),
        Err(kube::Error::Api(e)) => e,
        Err(e) => panic!("{name}: {e}"),
    };
    assert_eq!(refused.code, 422, "{name}: {refused:?}");
    assert!(
        refused.message.contains(words),
        "{name}: the API server says {:?}, not {words:?}",
        refused.message
    );
    let yaml = serde_norway::to_string(object).unwrap();
    let rendered = render::render_values(name, &yaml, &RenderConfig::default());
    let refusal = rendered.expect_err("render refuses it too").to_string();
    assert!(
        refusal.contains(words),
        "{name}: render says {refusal:?}, not {words:?}"
    );
}
