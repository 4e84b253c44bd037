//! The ShardedService on a real API server: the examples are accepted and reconciled into
//! StatefulSets, Services, the ring ConfigMap, the NetworkPolicy and the router
//! Deployment; a smaller shard count changes the ring in place without rolling the routers
//! out; what `render` prints passes a server-side dry run; the CEL rules refuse what they
//! must, with the longest name they allow accepted down to the pods Kubernetes makes.
//!
//! The operator here runs on the host. Pods may run on a node (the kit has one, kind has
//! some) or stay Pending (a control plane alone, or a claim no volume binds): nothing here
//! depends on which. What only pods show — keys on the shards, resharding under load, a
//! shard's pod removed once every router serves the ring without it (which needs the
//! operator to reach the routers, as it does in the cluster) — is `node::sharding`'s.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};
use rigging_crds::ShardedService;
use rigging_crds::sharded_service::MAX_NAME_LEN;
use rigging_operator::controller::{MANAGER, RenderConfig};
use rigging_operator::render;
use serde_json::{Value, json};

use crate::support::{Cluster, SETTLE, cluster, eventually, examples};

/// The sharded examples, as (path, YAML text).
fn sharded_examples() -> Vec<(String, String)> {
    let mut all = examples("sharded-redis");
    all.extend(examples("sharded-http"));
    all
}

/// Waits until the ShardedService CRD is served (the suite applies `crds/` once).
fn wait_for_crd(cluster: &Cluster) {
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/shardedservices.rigging.dev",
    ]);
}

/// Whether `child` is controlled by `owner`, which is what garbage collection follows.
fn controlled_by<K: Resource>(child: &K, owner: &ShardedService) -> bool {
    child.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "ShardedService"
            && Some(&o.uid) == owner.metadata.uid.as_ref()
    })
}

/// `name` once its status describes its generation, with `check` holding.
async fn status_where(
    api: &Api<ShardedService>,
    name: &str,
    what: &str,
    check: impl Fn(&ShardedService) -> bool,
) -> ShardedService {
    eventually(&format!("{name}: {what}"), SETTLE, || async {
        let ss = api.get(name).await.ok()?;
        let status = ss.status.as_ref()?;
        let current = status.observed_generation == ss.metadata.generation
            && status.conditions.len() == 3
            && status
                .conditions
                .iter()
                .all(|c| c.observed_generation == ss.metadata.generation);
        (current && check(&ss)).then_some(ss)
    })
    .await
}

fn condition<'a>(ss: &'a ShardedService, type_: &str) -> (&'a str, &'a str) {
    let c = ss
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap();
    (c.status.as_str(), c.reason.as_str())
}

/// What `render` makes of the example at `path` in `namespace`, as the operator would
/// apply it there (without owner references: the object has no uid yet).
fn rendered_in(path: &str, namespace: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(crate::support::root().join(path)).unwrap();
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let mut value: Value = serde::Deserialize::deserialize(doc).unwrap();
        value["metadata"]["namespace"] = json!(namespace);
        docs.push(serde_norway::to_string(&value).unwrap());
    }
    render::render_values(path, &docs.join("---\n"), &RenderConfig::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn the_examples_are_reconciled_into_shards_a_ring_and_routers_and_reshard_in_place() {
    let Some(cluster) = cluster("sharded_examples_reconciled").await else {
        return;
    };
    wait_for_crd(&cluster);
    let ns = cluster.namespace("sharded").await;
    let _operator = cluster.operator(&ns.name);
    let client = cluster.client.clone();
    let services: Api<ShardedService> = Api::namespaced(client.clone(), &ns.name);
    // One ShardedService first, the others once it is reconciled. Reconciles that start
    // together before the operator's child caches are filled wait on them together, and
    // `Store::wait_until_ready` wakes only one of its waiters (kube-runtime's DelayedInit
    // keeps one waker): the others would hang for good. Reported to the lead; until the
    // shared reconcile waits once for every controller, this test starts one at a time.
    let first = "examples/sharded-redis/router.yaml";
    let apply = |path: &str| {
        let out = cluster.kubectl_ok(&["apply", "-n", &ns.name, "-f", path]);
        assert!(out.contains("created"), "{path}: {out}");
    };
    apply(first);
    status_where(&services, "sessions", "a first reconcile", |_| true).await;
    for (path, _) in sharded_examples() {
        if path != first {
            apply(&path);
        }
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // Redis in router mode: one StatefulSet of three pods behind two routers.
    let sessions = status_where(&services, "sessions", "its ring in the status", |ss| {
        ss.status.as_ref().unwrap().ring_version.is_some()
    })
    .await;
    let status = sessions.status.clone().unwrap();
    assert_eq!(status.members, ["sessions-0", "sessions-1", "sessions-2"]);
    assert_eq!(status.moved_key_share, None);
    let ready_shards = status.ready_shards.expect("readyShards");
    let ready = condition(&sessions, "Ready");
    assert!(
        matches!(
            ready,
            ("False", "ShardsNotReady" | "RouterNotReady") | ("True", "ShardsReady")
        ) && (ready.0 == "True") == (ready_shards == 3 && ready.1 == "ShardsReady"),
        "{ready:?} with {ready_shards} ready shards"
    );
    assert_eq!(condition(&sessions, "Degraded"), ("False", "Reconciled"));
    let sts = statefulsets.get("sessions").await.expect("the StatefulSet");
    assert!(controlled_by(&sts, &sessions));
    let sts_spec = sts.spec.clone().unwrap();
    assert_eq!(sts_spec.replicas, Some(3));
    assert_eq!(sts_spec.service_name.as_deref(), Some("sessions-shards"));
    let router = deployments
        .get("sessions-router")
        .await
        .expect("the router");
    assert!(controlled_by(&router, &sessions));
    assert_eq!(router.spec.as_ref().unwrap().replicas, Some(2));
    for name in ["sessions", "sessions-shards"] {
        let svc = svcs.get(name).await.expect("the Service");
        assert!(controlled_by(&svc, &sessions), "{name}");
    }
    let headless = svcs.get("sessions-shards").await.unwrap().spec.unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    let policy = policies.get("sessions").await.expect("the NetworkPolicy");
    assert!(controlled_by(&policy, &sessions));
    // The ring the operator applied is the one `render` prints for this namespace.
    let ring = configmaps.get("sessions-ring").await.expect("the ring");
    assert!(controlled_by(&ring, &sessions));
    let rendered = rendered_in("examples/sharded-redis/router.yaml", &ns.name);
    let want = rendered.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let file = ring.data.clone().unwrap()["shard.yaml"].clone();
    assert_eq!(json!(file), want["data"]["shard.yaml"]);
    assert!(
        file.contains(&format!(
            "sessions-0.sessions-shards.{}.svc:6379:1 sessions-0",
            ns.name
        )),
        "{file}"
    );
    // The StatefulSet controller names the pods as the ring names the shards.
    let names =
        eventually("the shard pods", SETTLE, || async {
            let list = pods
                .list(&ListParams::default().labels(
                    "app.kubernetes.io/instance=sessions,app.kubernetes.io/component=shard",
                ))
                .await
                .ok()?;
            let mut names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
            names.sort();
            (names.len() == 3).then_some(names)
        })
        .await;
    assert_eq!(names, status.members);

    // HTTP with replicated shards: a StatefulSet and a Service per shard.
    let profiles = status_where(&services, "profiles", "its ring in the status", |ss| {
        ss.status.as_ref().unwrap().members.len() == 4
    })
    .await;
    for i in 0..4 {
        let name = format!("profiles-{i}");
        let sts = statefulsets
            .get(&name)
            .await
            .expect("a shard's StatefulSet");
        assert!(controlled_by(&sts, &profiles), "{name}");
        assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(3), "{name}");
        let svc = svcs.get(&name).await.expect("a shard's Service");
        assert!(controlled_by(&svc, &profiles), "{name}");
    }
    assert!(
        deployments
            .get_opt("profiles-router")
            .await
            .unwrap()
            .is_some()
    );

    // Ambassador mode: no router; the client's pods carry the ambassador and the label
    // the NetworkPolicy admits.
    let cache = status_where(&services, "cache", "its ring in the status", |ss| {
        ss.status.as_ref().unwrap().members.len() == 4
    })
    .await;
    assert!(deployments.get_opt("cache-router").await.unwrap().is_none());
    assert!(svcs.get_opt("cache").await.unwrap().is_none());
    assert!(controlled_by(&policies.get("cache").await.unwrap(), &cache));
    let client_pod = eventually("a pod of storefront", SETTLE, || async {
        let list = pods
            .list(&ListParams::default().labels("rigging.dev/shard-client=cache"))
            .await
            .ok()?;
        list.items.into_iter().next()
    })
    .await;
    let sidecars: Vec<(String, Option<String>)> = client_pod
        .spec
        .unwrap()
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.restart_policy))
        .collect();
    assert_eq!(
        sidecars,
        [("rigging-shard".to_owned(), Some("Always".to_owned()))]
    );

    // Two shards: the ring changes in place at once, the routers are not rolled out.
    // (Whether sessions-2's pod goes too depends on the routers answering this operator,
    // which a host cannot always reach: not asserted here.)
    let router_generation = router.metadata.generation;
    services
        .patch(
            "sessions",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"shards": 2}})),
        )
        .await
        .expect("scale to two shards");
    let resharded = status_where(&services, "sessions", "two members", |ss| {
        ss.status.as_ref().unwrap().members.len() == 2
    })
    .await;
    let status = resharded.status.clone().unwrap();
    let share = status
        .moved_key_share
        .expect("the share of keys that moved");
    assert!((0.2..0.45).contains(&share), "sessions-2's third: {share}");
    assert_ne!(status.ring_version, sessions.status.unwrap().ring_version);
    let file = configmaps.get("sessions-ring").await.unwrap().data.unwrap()["shard.yaml"].clone();
    assert!(!file.contains(" sessions-2\n"), "{file}");
    assert!(file.contains(" sessions-1\n"), "{file}");
    let router = deployments.get("sessions-router").await.unwrap();
    assert_eq!(
        router.metadata.generation, router_generation,
        "the router Deployment did not change"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let event = eventually("a RingChanged Event", SETTLE, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("RingChanged")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("sessions")
        })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    let note = event.note.unwrap_or_default();
    assert!(note.contains("3 → 2 members"), "{note}");

    // The printer columns, as `kubectl get` shows them.
    let table = cluster.kubectl_ok(&["get", "shsvc", "-n", &ns.name]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "READY", "SHARDS", "READY", "SHARDS", "PROTOCOL", "MODE", "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("sessions "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(["True", "False"].contains(&row[1]), "{table}");
    assert!(row[3].parse::<i32>().is_ok(), "{table}");
    assert_eq!(
        [row[0], row[2], row[4], row[5]],
        ["sessions", "2", "redis", "Router"],
        "{table}"
    );

    // Another hash function would move almost every key: the API server refuses it.
    let refused = services
        .patch(
            "sessions",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hashing": {"function": "murmur"}}})),
        )
        .await
        .expect_err("hashing is immutable");
    assert!(
        refused.to_string().contains("hashing is immutable"),
        "{refused}"
    );
}

/// A ShardedService named `name` with replicated shards, as YAML.
fn replicated(name: &str, shards: i32) -> String {
    format!(
        r#"
apiVersion: rigging.dev/v1alpha1
kind: ShardedService
metadata: {{name: {name}}}
spec:
  shards: {shards}
  replicasPerShard: 2
  protocol: http
  port: 8080
  shardKey: {{query: user}}
  template:
    spec:
      containers:
        - {{name: app, image: nginx:1.27, readinessProbe: {{tcpSocket: {{port: 8080}}}}}}
"#
    )
}

#[tokio::test]
async fn every_rendered_sharded_object_passes_a_server_side_dry_run() {
    let Some(cluster) = cluster("every_rendered_sharded_object_passes_a_server_side_dry_run").await
    else {
        return;
    };
    let ns = cluster.namespace("sharded-render").await;
    for (path, text) in sharded_examples() {
        let objects = render::render_values(&path, &text, &RenderConfig::default())
            .unwrap_or_else(|e| panic!("{path}: render refused it: {e}"));
        assert!(!objects.is_empty(), "{path}");
        let refused = cluster.dry_run(&ns.name, &objects).await;
        assert!(refused.is_empty(), "{path}: {refused:#?}");
    }
    // The longest name, with the most shards: every kind of child, the longest names
    // among them (shard 1023's StatefulSet and Service).
    let longest = "l".repeat(MAX_NAME_LEN);
    let objects = render::render_values(
        "longest",
        &replicated(&longest, 1024),
        &RenderConfig::default(),
    )
    .expect("render takes the longest name");
    let sample: Vec<Value> = objects
        .into_iter()
        .filter(|o| {
            let name = o["metadata"]["name"].as_str().unwrap();
            !name
                .rsplit('-')
                .next()
                .unwrap()
                .chars()
                .all(|c| c.is_ascii_digit())
                || name.ends_with("-1023")
        })
        .collect();
    assert_eq!(sample.len(), 7, "{sample:#?}");
    let refused = cluster.dry_run(&ns.name, &sample).await;
    assert!(refused.is_empty(), "{refused:#?}");
}

#[tokio::test]
async fn the_longest_name_is_accepted_down_to_its_pods_and_one_more_character_is_refused() {
    let Some(cluster) = cluster("the_longest_name_is_accepted_down_to_its_pods").await else {
        return;
    };
    wait_for_crd(&cluster);
    let ns = cluster.namespace("sharded-names").await;
    let resource = ApiResource::erase::<ShardedService>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, &resource);
    let longest = "n".repeat(MAX_NAME_LEN);
    let object = |name: &str| -> DynamicObject {
        let mut value: Value = serde_norway::from_str(&replicated(name, 2)).unwrap();
        value["metadata"]["namespace"] = json!(ns.name);
        serde_json::from_value(value).unwrap()
    };
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api.create(&dry, &object(&longest))
        .await
        .expect("the longest name is accepted");
    let too_long = format!("{longest}n");
    let refused = match api.create(&dry, &object(&too_long)).await {
        Ok(_) => panic!("a name of {} characters was accepted", too_long.len()),
        Err(kube::Error::Api(e)) => e,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(refused.code, 422, "{refused:?}");
    assert!(
        refused.message.contains(&format!(
            "DNS-1035 label of at most {MAX_NAME_LEN} characters"
        )),
        "{}",
        refused.message
    );

    // The longest shard StatefulSet the name allows, made for real: the StatefulSet
    // controller labels its pod with the StatefulSet's name and a revision hash, and the
    // API server takes that pod.
    let objects = render::render_values(
        "longest",
        &replicated(&longest, 1024),
        &RenderConfig::default(),
    )
    .unwrap();
    let sts = objects
        .iter()
        .find(|o| {
            o["kind"] == "StatefulSet" && o["metadata"]["name"].as_str().unwrap().ends_with("-1023")
        })
        .unwrap()
        .clone();
    let sts_name = sts["metadata"]["name"].as_str().unwrap().to_owned();
    let statefulsets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    statefulsets
        .patch(
            &sts_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&sts),
        )
        .await
        .expect("the longest StatefulSet name is accepted");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pod = eventually("the pod of the longest StatefulSet", SETTLE, || async {
        pods.get_opt(&format!("{sts_name}-0")).await.ok().flatten()
    })
    .await;
    let revision = pod.labels()["controller-revision-hash"].clone();
    assert!(
        revision.starts_with(&format!("{sts_name}-")) && revision.len() <= 63,
        "{revision}"
    );
}
