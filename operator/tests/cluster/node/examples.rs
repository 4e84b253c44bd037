//! Every ReplicatedService example in `examples/` reaches Ready on the node, with every pod
//! Running and Ready, and does what its README says, seen from a client pod. (The sharded
//! and work-queue examples are `node::sharding`'s and `node::work_queue`'s.)

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::Value;

use crate::node::{
    ClientPod, POD_SETTLE, all_pods_ready, apply_tls_secret, node_cluster, self_signed,
    wait_for_condition,
};
use crate::support::{Cluster, eventually};

const CURL: &str = "curlimages/curl:8.10.1";

/// Applies `examples/replicated-service/FILE` in `namespace` and waits until the
/// ReplicatedService `name` is Ready with `pods` pods Running and Ready; their names.
async fn apply_example(
    cluster: &Cluster,
    namespace: &str,
    file: &str,
    name: &str,
    pods: usize,
) -> Vec<String> {
    let path = format!("examples/replicated-service/{file}");
    cluster.kubectl_ok(&["apply", "-n", namespace, "-f", &path]);
    wait_for_condition(
        cluster,
        namespace,
        &format!("replicatedservice/{name}"),
        "Ready",
    );
    let selector = format!("app.kubernetes.io/name={name}");
    all_pods_ready(cluster, namespace, &selector, pods).await
}

/// The addresses the Service `name` sends traffic to: its ready endpoints.
async fn ready_endpoints(cluster: &Cluster, namespace: &str, name: &str) -> Vec<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), namespace);
    let selector = format!("kubernetes.io/service-name={name}");
    let list = slices
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list EndpointSlices");
    let mut addresses: Vec<String> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    addresses.sort();
    addresses
}

async fn pod_ip(cluster: &Cluster, namespace: &str, pod: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    pods.get(pod)
        .await
        .expect("the pod")
        .status
        .and_then(|s| s.pod_ip)
        .expect("a pod IP")
}

#[tokio::test]
async fn the_minimal_replicated_service_serves_through_its_service() {
    let Some(cluster) =
        node_cluster("the_minimal_replicated_service_serves_through_its_service").await
    else {
        return;
    };
    let ns = cluster.namespace("ex-minimal").await;
    apply_example(&cluster, &ns.name, "minimal.yaml", "hello", 1).await;
    let client = ClientPod::start(&cluster, &ns.name, "client", CURL).await;
    let page = client
        .exec_until_ok(&["curl", "-fsS", "--max-time", "10", "http://hello:8080/"])
        .await;
    assert!(page.contains("Welcome to nginx"), "{page}");
}

#[tokio::test]
async fn full_serves_https_through_the_tls_sidecar_by_service_name() {
    let Some(cluster) =
        node_cluster("full_serves_https_through_the_tls_sidecar_by_service_name").await
    else {
        return;
    };
    let ns = cluster.namespace("ex-full").await;
    let names = vec!["web".to_owned(), format!("web.{}.svc", ns.name)];
    let pair = self_signed(&names, "web");
    apply_tls_secret(&cluster, &ns.name, "web-tls", &pair);
    // Two replicas (the autoscaler's minimum; the kit has no metrics server to scale on).
    apply_example(&cluster, &ns.name, "full.yaml", "web", 2).await;
    let client = ClientPod::start(&cluster, &ns.name, "client", CURL).await;
    client.write_file("/tmp/ca.crt", &pair.0);
    // The certificate is checked against the Secret's (the client trusts nothing else),
    // for the Service's name; the app behind the terminator answers.
    for url in ["https://web/", &format!("https://web.{}.svc/", ns.name)] {
        let page = client
            .exec_until_ok(&[
                "curl",
                "-fsS",
                "--max-time",
                "10",
                "--cacert",
                "/tmp/ca.crt",
                url,
            ])
            .await;
        assert!(page.contains("Welcome to nginx"), "{url}: {page}");
    }
    // Plain HTTP to the TLS port is not served as if it were HTTPS.
    let plain = client.exec(&["curl", "-fsS", "--max-time", "10", "http://web:443/"]);
    assert!(
        !plain.status.success(),
        "plain HTTP on the TLS port answered"
    );
}

#[tokio::test]
async fn frontend_answers_from_its_cache() {
    let Some(cluster) = node_cluster("frontend_answers_from_its_cache").await else {
        return;
    };
    let ns = cluster.namespace("ex-frontend").await;
    apply_example(&cluster, &ns.name, "frontend.yaml", "products", 3).await;
    all_pods_ready(
        &cluster,
        &ns.name,
        "app.kubernetes.io/name=products-frontend",
        2,
    )
    .await;
    let client = ClientPod::start(&cluster, &ns.name, "client", CURL).await;
    let frontend = "http://products-frontend/";
    client
        .exec_until_ok(&[
            "curl",
            "-fsS",
            "--max-time",
            "10",
            "-H",
            "X-Api-Key: e2e",
            frontend,
        ])
        .await;
    // Each of the two frontend pods keeps its own cache: of six requests, only the first
    // that reaches each pod can miss. An answer from the cache carries `Age`.
    let mut from_cache = 0;
    for _ in 0..6 {
        let headers = client.exec_ok(&[
            "curl",
            "-fsS",
            "--max-time",
            "10",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "X-Api-Key: e2e",
            frontend,
        ]);
        if headers
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("age:"))
        {
            from_cache += 1;
        }
    }
    assert!(
        from_cache >= 4,
        "{from_cache} of 6 answers came from a cache"
    );
}

#[tokio::test]
async fn adapters_write_json_logs_and_serve_prometheus_metrics() {
    let Some(cluster) = node_cluster("adapters_write_json_logs_and_serve_prometheus_metrics").await
    else {
        return;
    };
    let ns = cluster.namespace("ex-adapters").await;
    let pods = apply_example(&cluster, &ns.name, "adapters.yaml", "shop", 2).await;
    let client = ClientPod::start(&cluster, &ns.name, "client", CURL).await;
    let marker = "/adapters-e2e-marker";
    let pod_api: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    // nginx answers 404 for the path and logs it; its log adapter writes the line as JSON
    // on its stdout. Asked again until one is seen, whichever pod the Service chose.
    let line: Value = eventually(
        "the request in a log adapter's JSON",
        POD_SETTLE,
        || async {
            let status = client.exec(&[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://shop:8080{marker}"),
            ]);
            if String::from_utf8_lossy(&status.stdout) != "404" {
                return None;
            }
            let current = pod_api
                .list(&ListParams::default().labels("app.kubernetes.io/name=shop"))
                .await
                .ok()?;
            current
                .items
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .find_map(|pod| {
                    let out = cluster.kubectl(&["logs", "-n", &ns.name, pod, "-c", "rigging-logs"]);
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|l| l.contains(marker))
                        .find_map(|l| serde_json::from_str::<Value>(l).ok())
                })
        },
    )
    .await;
    assert!(line.is_object(), "{line}");
    let text = line.to_string();
    assert!(text.contains("404") && text.contains("GET"), "{text}");

    // Redis INFO as Prometheus text on the port named `metrics` of each pod.
    let ip = pod_ip(&cluster, &ns.name, &pods[0]).await;
    let metrics = client.exec_ok(&[
        "curl",
        "-fsS",
        "--max-time",
        "10",
        &format!("http://{ip}:9121/metrics"),
    ]);
    assert!(metrics.contains("# TYPE "), "{metrics}");
    let up = metrics
        .lines()
        .find(|l| l.starts_with("redis_up "))
        .unwrap_or_else(|| panic!("no redis_up: {metrics}"));
    assert!(up.ends_with(" 1"), "{up}");
}

#[tokio::test]
async fn the_health_monitor_takes_a_pod_out_of_the_service_while_its_redis_is_down() {
    let Some(cluster) =
        node_cluster("the_health_monitor_takes_a_pod_out_of_the_service_while_its_redis_is_down")
            .await
    else {
        return;
    };
    let ns = cluster.namespace("ex-health").await;
    let pods = apply_example(&cluster, &ns.name, "health-monitor.yaml", "catalog", 2).await;
    let (sick, well) = (&pods[0], &pods[1]);
    let (sick_ip, well_ip) = (
        pod_ip(&cluster, &ns.name, sick).await,
        pod_ip(&cluster, &ns.name, well).await,
    );
    let mut both = vec![sick_ip.clone(), well_ip.clone()];
    both.sort();
    assert_eq!(ready_endpoints(&cluster, &ns.name, "catalog").await, both);

    let sick_redis = |command: &[&str]| {
        let mut args = vec![
            "exec",
            "-n",
            &ns.name,
            sick,
            "-c",
            "redis",
            "--",
            "redis-cli",
        ];
        args.extend(command);
        cluster.kubectl_ok(&args);
    };
    // The sick pod's Redis stops answering (every client paused, PING included) for long
    // enough to fail the monitor's check by its thresholds.
    sick_redis(&["CLIENT", "PAUSE", "120000", "ALL"]);
    eventually("the sick pod out of the Service", POD_SETTLE, || async {
        (ready_endpoints(&cluster, &ns.name, "catalog").await == [well_ip.clone()]).then_some(())
    })
    .await;
    let client = ClientPod::start(&cluster, &ns.name, "client", CURL).await;
    for _ in 0..5 {
        client.exec_ok(&["curl", "-fsS", "--max-time", "10", "http://catalog:8080/"]);
    }

    // Redis answers again: the pod is back.
    sick_redis(&["CLIENT", "UNPAUSE"]);
    eventually("the pod back in the Service", POD_SETTLE, || async {
        (ready_endpoints(&cluster, &ns.name, "catalog").await == both).then_some(())
    })
    .await;
}

#[tokio::test]
async fn active_passive_has_one_ready_leader_and_a_new_one_when_its_pod_goes() {
    let Some(cluster) =
        node_cluster("active_passive_has_one_ready_leader_and_a_new_one_when_its_pod_goes").await
    else {
        return;
    };
    let ns = cluster.namespace("ex-active").await;
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/replicated-service/active-passive.yaml",
    ]);
    wait_for_condition(&cluster, &ns.name, "replicatedservice/scheduler", "Ready");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &ns.name);
    // Both pods run; only the leader's is ready, and it holds the Lease.
    let ready_pods = || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=scheduler"))
            .await
            .ok()?
            .items;
        let running = list
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        let ready: Vec<String> = list
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        Some((running, ready))
    };
    let leader = eventually("two pods running, one ready", POD_SETTLE, || async {
        let (running, ready) = ready_pods().await?;
        (running == 2 && ready.len() == 1).then(|| ready[0].clone())
    })
    .await;
    let lease = leases.get("scheduler").await.expect("the Lease");
    let spec = lease.spec.expect("a Lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(leader.as_str()));
    let duration = i64::from(spec.lease_duration_seconds.expect("a lease duration"));
    let client = ClientPod::start(&cluster, &ns.name, "client", CURL).await;
    let first = client
        .exec_until_ok(&["curl", "-fsS", "--max-time", "10", "http://scheduler:8080/"])
        .await;
    assert!(
        first.starts_with(&format!("{leader} leads; its writes carry fencing token")),
        "{first}"
    );

    // The leader's pod goes: its sidecar hands the Lease over as it stops, so the other
    // pod leads before the lease would have run out, turns ready, and the Service follows.
    pods.delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader's pod");
    let deleted_at = pods
        .get_opt(&leader)
        .await
        .ok()
        .flatten()
        .and_then(|p| p.metadata.deletion_timestamp)
        .map(|t| t.0.as_second());
    let next = eventually("a new leader's pod ready", POD_SETTLE, || async {
        let (_, ready) = ready_pods().await?;
        ready.into_iter().find(|p| *p != leader)
    })
    .await;
    let spec = leases.get("scheduler").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(next.as_str()));
    if let (Some(deleted_at), Some(acquired)) = (deleted_at, spec.acquire_time) {
        let waited = acquired.0.as_second() - deleted_at;
        assert!(
            waited <= duration,
            "{next} took the Lease {waited}s after {leader} was deleted: it waited out the \
             lease ({duration}s) instead of being handed it"
        );
    }
    let page = eventually(
        "the Service answers from the new leader",
        POD_SETTLE,
        || async {
            let out = client.exec(&["curl", "-fsS", "--max-time", "5", "http://scheduler:8080/"]);
            let page = String::from_utf8_lossy(&out.stdout).into_owned();
            page.starts_with(&format!("{next} leads")).then_some(page)
        },
    )
    .await;
    assert!(
        fencing_token(&page) > fencing_token(&first),
        "a new term, a greater token: {first} then {page}"
    );
}

/// The fencing token the scheduler's page names.
fn fencing_token(page: &str) -> u64 {
    page.rsplit("fencing token ")
        .next()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fencing token in {page:?}"))
}

#[tokio::test]
async fn http_ambassador_splits_the_apps_requests_as_the_users_config_map_says() {
    let Some(cluster) =
        node_cluster("http_ambassador_splits_the_apps_requests_as_the_users_config_map_says").await
    else {
        return;
    };
    let ns = cluster.namespace("ex-ambassador").await;
    // The ConfigMap the example's README has the user create first.
    let readme = std::fs::read_to_string(
        crate::support::root().join("examples/replicated-service/README.md"),
    )
    .expect("the README");
    let config = readme
        .split("--from-file=http.yaml=/dev/stdin <<'EOF'\n")
        .nth(1)
        .and_then(|rest| rest.split("\nEOF").next())
        .expect("the README's storefront-http config");
    cluster.kubectl_ok(&[
        "create",
        "configmap",
        "storefront-http",
        "-n",
        &ns.name,
        &format!("--from-literal=http.yaml={config}"),
    ]);
    // The two backends the README's split names, each answering with its arm's name.
    for (backend, arm) in [
        ("recommendations", "stable"),
        ("recommendations-next", "next"),
    ] {
        let objects = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": backend},
                "spec": {
                    "selector": {"matchLabels": {"app": backend}},
                    "template": {
                        "metadata": {"labels": {"app": backend}},
                        "spec": {"containers": [{
                            "name": "http", "image": "busybox:1.36",
                            "command": ["sh", "-c", format!(
                                "mkdir -p /www && echo {arm} > /www/index.html && exec httpd -f -p 8080 -h /www"
                            )],
                            "readinessProbe": {"tcpSocket": {"port": 8080}},
                        }]},
                    },
                },
            },
            {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": backend},
                "spec": {"selector": {"app": backend}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ]});
        let out = cluster.kubectl_with_input(
            &["apply", "-n", &ns.name, "-f", "-"],
            Some(&objects.to_string()),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        all_pods_ready(&cluster, &ns.name, &format!("app={backend}"), 1).await;
    }
    let pods = apply_example(&cluster, &ns.name, "http-ambassador.yaml", "storefront", 2).await;
    // The app reaches both through the ambassador on localhost, split by user as the
    // ConfigMap says: a user stays in one arm, and most users are in the bigger one.
    let ask = |user: u32| {
        cluster.kubectl(&[
            "exec",
            "-n",
            &ns.name,
            &pods[0],
            "-c",
            "app",
            "--",
            "curl",
            "-fsS",
            "--max-time",
            "10",
            "-H",
            &format!("x-user-id: {user}"),
            "http://127.0.0.1:9080/",
        ])
    };
    let arm = |user: u32| {
        eventually_sync(|| {
            let out = ask(user);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
    };
    let first = arm(42);
    for _ in 0..4 {
        assert_eq!(arm(42), first, "user 42 changed arms");
    }
    let script = "for u in $(seq 1 200); do curl -fsS --max-time 10 -H \"x-user-id: $u\" http://127.0.0.1:9080/; done";
    let answers = cluster.kubectl_ok(&[
        "exec", "-n", &ns.name, &pods[0], "-c", "app", "--", "sh", "-c", script,
    ]);
    let next = answers.lines().filter(|l| *l == "next").count();
    let stable = answers.lines().filter(|l| *l == "stable").count();
    assert_eq!(next + stable, 200, "{answers}");
    assert!(
        next > 0 && next < stable,
        "{next} users in next, {stable} in stable"
    );
}

/// Retries `check` for a while (the ambassador learns its backends' addresses by DNS);
/// its first `Some`.
fn eventually_sync<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + POD_SETTLE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "never answered");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
