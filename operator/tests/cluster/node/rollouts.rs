//! ReplicatedServices through their pods' lives on the node: a certificate renewed in its
//! Secret and served without a restart, a rollout under a steady client that fails no
//! request, and an app whose first request through its ambassador never finds it absent.

use std::io::BufRead as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::node::{
    ClientPod, POD_SETTLE, all_pods_ready, apply_tls_secret, node_cluster, self_signed,
    wait_for_condition,
};
use crate::support::{Cluster, eventually};

/// The pods of the ReplicatedService `web` of examples/replicated-service/full.yaml.
const WEB_PODS: &str = "app.kubernetes.io/name=web";

/// A self-signed certificate for the names the clients use (`web`, the Service, and
/// `web.NAMESPACE.svc`) whose subject says `generation`: its PEM and its key's.
fn certificate(namespace: &str, generation: u32) -> (String, String) {
    self_signed(
        &["web".to_owned(), format!("web.{namespace}.svc")],
        &format!("web generation {generation}"),
    )
}

/// full.yaml in `namespace` with the Secret holding `first`, Ready with both pods; their
/// names and addresses.
async fn full_example(
    cluster: &Cluster,
    namespace: &str,
    first: &(String, String),
) -> Vec<(String, String)> {
    apply_tls_secret(cluster, namespace, "web-tls", first);
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        namespace,
        "-f",
        "examples/replicated-service/full.yaml",
    ]);
    wait_for_condition(cluster, namespace, "replicatedservice/web", "Ready");
    let names = all_pods_ready(cluster, namespace, WEB_PODS, 2).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let mut out = Vec::new();
    for name in names {
        let pod = pods.get(&name).await.expect("the pod");
        let ip = pod.status.and_then(|s| s.pod_ip).expect("a pod IP");
        out.push((name, ip));
    }
    out
}

/// What `curl -v` says of one HTTPS request from `client` to `url` trusting only `ca`
/// (a file in the pod), with `resolve` (`host:port:address`) if given: whether it
/// succeeded, and the server certificate's subject as curl printed it.
fn https(client: &ClientPod, ca: &str, url: &str, resolve: Option<&str>) -> (bool, String) {
    let mut command = vec!["curl", "-v", "-sS", "-o", "/dev/null", "--max-time", "10"];
    command.extend(["--cacert", ca]);
    if let Some(resolve) = resolve {
        command.extend(["--resolve", resolve]);
    }
    command.push(url);
    let out = client.exec(&command);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let subject = stderr
        .lines()
        .find_map(|l| l.split_once("subject: ").map(|(_, s)| s.trim().to_owned()))
        .unwrap_or_default();
    (out.status.success(), subject)
}

#[tokio::test]
async fn a_tls_secret_updated_with_kubectl_is_served_without_a_restart() {
    let Some(cluster) =
        node_cluster("a_tls_secret_updated_with_kubectl_is_served_without_a_restart").await
    else {
        return;
    };
    let ns = cluster.namespace("tls-renew").await;
    let first = certificate(&ns.name, 1);
    let second = certificate(&ns.name, 2);
    let pods = full_example(&cluster, &ns.name, &first).await;
    let client = ClientPod::start(&cluster, &ns.name, "client", "curlimages/curl:8.10.1").await;
    let (first_ca, second_ca) = ("/tmp/first.pem", "/tmp/second.pem");
    client.write_file(first_ca, &first.0);
    client.write_file(second_ca, &second.0);

    // Each pod's terminator serves the first certificate.
    for (name, ip) in &pods {
        let resolve = format!("web:8443:{ip}");
        let (ok, subject) = https(&client, first_ca, "https://web:8443/", Some(&resolve));
        assert!(
            ok && subject.contains("web generation 1"),
            "{name}: {subject}"
        );
    }

    // `kubectl apply` of the renewed Secret; the kubelet swaps the mounted files in each
    // pod in its own time, and each terminator serves the new pair from then on.
    apply_tls_secret(&cluster, &ns.name, "web-tls", &second);
    for (name, ip) in &pods {
        let resolve = format!("web:8443:{ip}");
        let subject = eventually(
            &format!("{name} serving the second certificate"),
            POD_SETTLE,
            || async {
                let (ok, subject) = https(&client, second_ca, "https://web:8443/", Some(&resolve));
                ok.then_some(subject)
            },
        )
        .await;
        assert!(subject.contains("web generation 2"), "{name}: {subject}");
        let (ok, _) = https(&client, first_ca, "https://web:8443/", Some(&resolve));
        assert!(!ok, "{name} still serves the first certificate");
    }
    let (ok, subject) = https(&client, second_ca, "https://web/", None);
    assert!(
        ok && subject.contains("web generation 2"),
        "through the Service: {subject}"
    );

    // The same pods, their terminators never restarted: the files changed under them.
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    for (name, _) in &pods {
        let pod = api.get(name).await.expect("the same pod");
        let tls = pod
            .status
            .and_then(|s| s.init_container_statuses)
            .into_iter()
            .flatten()
            .find(|c| c.name == "rigging-tls")
            .expect("the terminator's status");
        assert_eq!(tls.restart_count, 0, "{name}");
    }
}

/// The lines a process writes to its stdout, gathered as they come.
struct Lines {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    fn gather(mut child: std::process::Child) -> Self {
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let gathered = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                gathered.lock().expect("lines").push(line);
            }
        });
        Self { child, lines }
    }

    fn count(&self) -> usize {
        self.lines.lock().expect("lines").len()
    }

    /// Waits (at most `within`) for the process to exit; its lines.
    async fn finish(mut self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "the client did not stop");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The reader thread sees the end of the pipe right after the exit.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.lines.lock().expect("lines").clone()
    }
}

/// One HTTPS request after another through the Service `web`, each on a new connection
/// (so each is balanced anew), until /tmp/stop exists in the pod or 6000 were sent: one
/// line each, the status code (`000` when none came) and curl's error.
const CLIENT_LOOP: &str = r#"i=0
while [ ! -f /tmp/stop ] && [ $i -lt 6000 ]; do
  i=$((i+1))
  curl -s -o /dev/null --max-time 5 --cacert /tmp/ca.pem -w '%{http_code} %{errormsg}
' https://web/
  sleep 0.1
done"#;

#[tokio::test]
async fn a_rollout_under_a_steady_client_fails_no_request() {
    let Some(cluster) = node_cluster("a_rollout_under_a_steady_client_fails_no_request").await
    else {
        return;
    };
    let ns = cluster.namespace("tls-rollout").await;
    let first = certificate(&ns.name, 1);
    let before = full_example(&cluster, &ns.name, &first).await;
    let client = ClientPod::start(&cluster, &ns.name, "client", "curlimages/curl:8.10.1").await;
    client.write_file("/tmp/ca.pem", &first.0);
    let requests = Lines::gather(client.spawn(&["sh", "-c", CLIENT_LOOP]));
    eventually("the client's first answers", POD_SETTLE, || async {
        (requests.count() >= 5).then_some(())
    })
    .await;

    cluster.kubectl_ok(&["-n", &ns.name, "rollout", "restart", "deployment/web"]);
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "rollout",
        "status",
        "deployment/web",
        &format!("--timeout={}s", POD_SETTLE.as_secs()),
    ]);
    // The old pods stop after the rollout is done: through their whole stop, and a little
    // after it, the client keeps asking.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    eventually("every old pod gone", POD_SETTLE, || async {
        let now = pods
            .list(&ListParams::default().labels(WEB_PODS))
            .await
            .ok()?;
        let old = now.items.iter().any(|p| {
            before
                .iter()
                .any(|(name, _)| p.metadata.name.as_deref() == Some(name))
        });
        (!old).then_some(())
    })
    .await;
    let sent = requests.count();
    eventually("more answers from the new pods", POD_SETTLE, || async {
        (requests.count() >= sent + 10).then_some(())
    })
    .await;
    client.exec_ok(&["touch", "/tmp/stop"]);
    let lines = requests.finish(Duration::from_secs(30)).await;
    // From the first answer on: before it, kube-proxy may not route the new Service yet,
    // which is no part of the rollout.
    let lines: Vec<&String> = lines
        .iter()
        .skip_while(|l| !l.starts_with("200 "))
        .collect();
    let failed: Vec<&&String> = lines.iter().filter(|l| !l.starts_with("200 ")).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rollout: {failed:?}",
        failed.len(),
        lines.len()
    );
}

/// The app of the ambassador test: its first act is a request through the HTTP ambassador
/// on localhost, whose outcome it logs; then it serves a page on 8080.
const FIRST_REQUEST: &str = r#"if wget -q -O /dev/null http://127.0.0.1:9080/; then
  echo "first request: ok"
else
  echo "first request: failed"
fi
mkdir -p /tmp/www && echo storefront > /tmp/www/index.html
exec httpd -f -p 8080 -h /tmp/www"#;

/// The `first request:` lines of the app containers of the pods `names`.
fn first_requests(cluster: &Cluster, namespace: &str, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let log = cluster.kubectl_ok(&["logs", "-n", namespace, name, "-c", "app"]);
            let line = log
                .lines()
                .find(|l| l.starts_with("first request:"))
                .unwrap_or("no first request logged");
            format!("{name}: {line}")
        })
        .collect()
}

#[tokio::test]
async fn the_apps_first_request_through_its_ambassador_succeeds() {
    let Some(cluster) =
        node_cluster("the_apps_first_request_through_its_ambassador_succeeds").await
    else {
        return;
    };
    let ns = cluster.namespace("ambassador-start").await;
    // What the app calls: a Service of one nginx, ready before the app starts.
    let backend = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "recommendations"},
                "spec": {
                    "selector": {"matchLabels": {"app": "recommendations"}},
                    "template": {
                        "metadata": {"labels": {"app": "recommendations"}},
                        "spec": {"containers": [{
                            "name": "nginx",
                            "image": "nginxinc/nginx-unprivileged:1.27-alpine",
                            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                        }]},
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "recommendations"},
                "spec": {
                    "selector": {"app": "recommendations"},
                    "ports": [{"port": 80, "targetPort": 8080}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "storefront-http"},
                "data": {"http.yaml": "routes:
  - name: recommendations
    backend: recommendations
backends:
  - name: recommendations
    dns: {name: recommendations, port: 80}
"},
            },
        ],
    });
    cluster.kubectl_with_input(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&backend.to_string()),
    );
    wait_for_condition(
        &cluster,
        &ns.name,
        "deployment/recommendations",
        "Available",
    );
    let storefront = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "storefront"},
        "spec": {
            "replicas": 2,
            "port": 8080,
            "sidecars": {"http": {"configMap": "storefront-http", "port": 9080}},
            "template": {"spec": {"containers": [{
                "name": "app",
                "image": "busybox:1.36",
                "command": ["sh", "-c", FIRST_REQUEST],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}},
            }]}},
        },
    });
    cluster.kubectl_with_input(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&storefront.to_string()),
    );
    wait_for_condition(&cluster, &ns.name, "replicatedservice/storefront", "Ready");
    let selector = "app.kubernetes.io/name=storefront";
    let first = all_pods_ready(&cluster, &ns.name, selector, 2).await;
    let mut outcomes = first_requests(&cluster, &ns.name, &first);

    // Two more starts: a rollout replaces both pods.
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "rollout",
        "restart",
        "deployment/storefront",
    ]);
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "rollout",
        "status",
        "deployment/storefront",
        &format!("--timeout={}s", POD_SETTLE.as_secs()),
    ]);
    // Counted once the old pods are gone too: then both are the new ones.
    let second = all_pods_ready(&cluster, &ns.name, selector, 2).await;
    assert!(second.iter().all(|n| !first.contains(n)), "{second:?}");
    outcomes.extend(first_requests(&cluster, &ns.name, &second));
    assert!(
        outcomes.iter().all(|o| o.ends_with("first request: ok")),
        "{outcomes:#?}"
    );
}
