//! What only a node shows: Rigging's pods really run, on a cluster with a Ready node (the
//! kit's, or kind's), against the operator installed as a user installs it.
//!
//! The chart is installed once per run (`helm upgrade --install rigging charts/rigging
//! --namespace rigging-system`, default values, plus `RIGGING_HELM_ARGS` where the images
//! live elsewhere, as on kind), and its operator reconciles every namespace. So these
//! tests run after the rest of the suite, whose tests start their own operators:
//! `cargo test --test cluster -- --skip node::`, then `-- node::` (`e2e/run.sh` does both).
//! Clients are pods too (`ClientPod`), reaching Services by name through cluster DNS and
//! kube-proxy, as users' clients do; nothing here depends on the host reaching the cluster
//! network.

use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::support::{Cluster, connect, eventually};

mod disruption;
mod examples;
mod map_reduce;
mod operator_pods;
mod pipeline;
mod queue;
mod rollouts;
mod scatter_gather;
mod sharding;
mod work_queue;

/// Held by the tests that stop or restart the chart's operator pods, so that one's
/// disruption never lands in another's measurement. Other tests run on through them: the
/// operator is meant to be disrupted without anyone noticing.
pub static OPERATOR_DISRUPTION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The chart's release, as the README installs it.
pub const RELEASE: &str = "rigging";
/// Its namespace.
pub const RELEASE_NAMESPACE: &str = "rigging-system";

/// How long pods get to start, become ready or finish. Image pulls on a real cluster, and
/// the two cores CI has, are what it allows for; it is not a performance bound.
pub const POD_SETTLE: Duration = Duration::from_secs(180);

/// The cluster of `RIGGING_KUBECONFIG` once it has a Ready node and the chart is installed
/// (and its operator Deployment rolled out); `None` when the suite is skipped. A cluster
/// with no Ready node fails the test when `RIGGING_CLUSTER_REQUIRE=1`.
pub async fn node_cluster(test: &str) -> Option<Cluster> {
    let cluster = connect(test).await?;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let ready = nodes
        .list(&ListParams::default())
        .await
        .expect("list nodes")
        .items
        .iter()
        .any(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
    if !ready {
        assert!(
            std::env::var("RIGGING_CLUSTER_REQUIRE").as_deref() != Ok("1"),
            "{test}: the cluster has no Ready node (e2e/controlplane/up.sh without --no-node)"
        );
        eprintln!("cluster suite: {test} SKIPPED (no Ready node)");
        return None;
    }
    install_chart(&cluster);
    Some(cluster)
}

/// `helm upgrade --install` of the chart, once per run, waiting for its pods.
fn install_chart(cluster: &Cluster) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let extra = std::env::var("RIGGING_HELM_ARGS").unwrap_or_default();
        let mut args = vec![
            "upgrade",
            "--install",
            RELEASE,
            "charts/rigging",
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
        ];
        args.extend(extra.split_whitespace());
        let out = cluster.helm(&args);
        assert!(
            out.status.success(),
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A pod that sleeps, for running clients inside the cluster with `kubectl exec`; deleted
/// with its namespace.
pub struct ClientPod<'a> {
    cluster: &'a Cluster,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl<'a> ClientPod<'a> {
    /// Starts the pod `name` of `image` (which must have `sleep`) in `namespace`, and
    /// waits until it runs.
    pub async fn start(cluster: &'a Cluster, namespace: &str, name: &str, image: &str) -> Self {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [{
                    "name": "client",
                    "image": image,
                    "command": ["sleep", "86400"],
                }],
            },
        });
        cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&pod.to_string()));
        let client = Self {
            cluster,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        client.cluster.kubectl_ok(&[
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            &format!("pod/{name}"),
            &format!("--timeout={}s", POD_SETTLE.as_secs()),
        ]);
        client
    }

    /// Runs `command` in the pod.
    pub fn exec(&self, command: &[&str]) -> Output {
        let mut args = vec!["exec", "-n", &self.namespace, &self.name, "--"];
        args.extend(command);
        self.cluster.kubectl(&args)
    }

    /// Starts `command` in the pod and returns at once: its stdout and stderr are piped
    /// to the returned process (`kubectl exec`), for a client that runs while the test
    /// does something else.
    pub fn spawn(&self, command: &[&str]) -> std::process::Child {
        std::process::Command::new("kubectl")
            .args(["exec", "-n", &self.namespace, &self.name, "--"])
            .args(command)
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl must be on PATH")
    }

    /// Writes `content` to `path` in the pod (through `sh`, which every client image has).
    pub fn write_file(&self, path: &str, content: &str) {
        self.exec_ok(&[
            "sh",
            "-c",
            "printf '%s' \"$1\" > \"$2\"",
            "sh",
            content,
            path,
        ]);
    }

    /// Runs `command` in the pod until it succeeds (within [`POD_SETTLE`]), and returns its
    /// stdout: for a client's first request to a Service, which kube-proxy may not route
    /// yet when its pods have just turned ready (and on every cluster, not only here).
    pub async fn exec_until_ok(&self, command: &[&str]) -> String {
        let mut last = None;
        let deadline = std::time::Instant::now() + POD_SETTLE;
        while std::time::Instant::now() < deadline {
            let out = self.exec(command);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            last = Some(out);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let out = last.expect("ran at least once");
        panic!(
            "{} in {} never succeeded: {}{}",
            command.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `command` in the pod and returns its stdout; panics with its stderr if it fails.
    pub fn exec_ok(&self, command: &[&str]) -> String {
        let out = self.exec(command);
        assert!(
            out.status.success(),
            "{} in {}: {}{}",
            command.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Waits until `kubectl wait --for=condition=CONDITION` holds for `object` (`kind/name`) in
/// `namespace`, within [`POD_SETTLE`]; panics with what the object says otherwise.
pub fn wait_for_condition(cluster: &Cluster, namespace: &str, object: &str, condition: &str) {
    let out = cluster.kubectl(&[
        "wait",
        "-n",
        namespace,
        &format!("--for=condition={condition}"),
        object,
        &format!("--timeout={}s", POD_SETTLE.as_secs()),
    ]);
    if !out.status.success() {
        let described = cluster.kubectl(&["describe", "-n", namespace, object]);
        let pods = cluster.kubectl(&["get", "pods", "-n", namespace, "-o", "wide"]);
        panic!(
            "{object} in {namespace}: never {condition}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&described.stdout),
            String::from_utf8_lossy(&pods.stdout)
        );
    }
}

/// Every pod of `namespace` matching `selector`, as `(name, phase, ready)`, once there are
/// `count` of them, all Running and Ready.
pub async fn all_pods_ready(
    cluster: &Cluster,
    namespace: &str,
    selector: &str,
    count: usize,
) -> Vec<String> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(cluster.client.clone(), namespace);
    eventually(
        &format!("{count} pods {selector} Running and Ready in {namespace}"),
        POD_SETTLE,
        || async {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?
                .items;
            let ready: Vec<String> = list
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    let status = p.status.as_ref();
                    status.and_then(|s| s.phase.as_deref()) == Some("Running")
                        && status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            (ready.len() == count && list.len() == count).then_some(ready)
        },
    )
    .await
}

/// A self-signed certificate for `dns_names` whose subject is `common_name`: its PEM and
/// its key's. Clients that trust the certificate itself then check it like a CA's.
pub fn self_signed(dns_names: &[String], common_name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let mut params = rcgen::CertificateParams::new(dns_names.to_vec()).expect("names");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let cert = params.self_signed(&key).expect("a certificate");
    (cert.pem(), key.serialize_pem())
}

/// Creates or replaces the `kubernetes.io/tls` Secret `name` in `namespace` with
/// `(cert, key)`, as `kubectl create secret tls` makes it.
pub fn apply_tls_secret(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    (cert, key): &(String, String),
) {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"tls.crt": cert, "tls.key": key},
    });
    let out = cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&secret.to_string()));
    assert!(
        out.status.success(),
        "apply the Secret {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
