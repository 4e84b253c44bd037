//! The injection webhook called by the real API server: `rigging-operator webhook` on
//! 127.0.0.1 behind a MutatingWebhookConfiguration. A labelled Deployment's pods, created
//! by the controller-manager, carry the sidecars; an unlabelled one's do not; a bad
//! annotation fails a pod's creation with the webhook's message; and a certificate
//! rotation while pods are being created refuses none of them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use serde_json::{Value, json};

use crate::support::{Cluster, SETTLE, cluster, eventually, free_port};

/// A CA and the files of a serving certificate for 127.0.0.1 it signs.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = CertifiedIssuer::self_signed(params, key).unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        pki.issue();
        pki
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes a fresh serving certificate (new key) over the files, as a rotation does:
    /// to temporary names first, then renamed into place.
    fn issue(&self) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let write = |path: &Path, text: String| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        };
        write(&self.key(), key.serialize_pem());
        write(&self.cert(), cert.pem());
    }
}

/// `rigging-operator webhook` on a free port; killed on drop.
struct Webhook {
    child: Child,
    port: u16,
}

impl Webhook {
    fn start(pki: &Pki) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_rigging-operator"))
            .args(["webhook", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--sidecar-image",
                "rigging-sidecar:test",
            ])
            .arg("--tls-cert")
            .arg(pki.cert())
            .arg("--tls-key")
            .arg(pki.key())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rigging-operator webhook");
        Self { child, port }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The MutatingWebhookConfiguration of one test, limited to its namespace (so that no
/// other test's pods ever meet it); deleted on drop.
struct Registration<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl<'a> Registration<'a> {
    async fn create(cluster: &'a Cluster, namespace: &str, port: u16, ca: Option<&str>) -> Self {
        let in_namespace = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![namespace.to_owned()]),
            }]),
            ..LabelSelector::default()
        };
        let config = MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: "inject.rigging.dev".into(),
                admission_review_versions: vec!["v1".into()],
                side_effects: "None".into(),
                failure_policy: Some("Fail".into()),
                reinvocation_policy: Some("IfNeeded".into()),
                timeout_seconds: Some(10),
                namespace_selector: Some(in_namespace),
                object_selector: Some(LabelSelector {
                    match_labels: Some(
                        [("rigging.dev/inject".to_owned(), "enabled".to_owned())].into(),
                    ),
                    ..LabelSelector::default()
                }),
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    resources: Some(vec!["pods".into()]),
                    operations: Some(vec!["CREATE".into()]),
                    scope: Some("Namespaced".into()),
                }]),
                client_config: WebhookClientConfig {
                    url: Some(format!("https://127.0.0.1:{port}/inject")),
                    ca_bundle: ca.map(|ca| ByteString(ca.as_bytes().to_vec())),
                    service: None,
                },
                ..MutatingWebhook::default()
            }]),
        };
        Api::<MutatingWebhookConfiguration>::all(cluster.client.clone())
            .create(&PostParams::default(), &config)
            .await
            .expect("register the webhook");
        Self {
            cluster,
            name: namespace.to_owned(),
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // kubectl, not the client: Drop cannot await on the test's runtime.
        let _ = self.cluster.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            &self.name,
            "--wait=false",
        ]);
    }
}

/// A Deployment of one pod whose template carries `labels` and `annotations`.
fn deployment(name: &str, labels: serde_json::Value, annotations: serde_json::Value) -> String {
    let mut all_labels = json!({"app": name});
    all_labels
        .as_object_mut()
        .unwrap()
        .extend(labels.as_object().unwrap().clone());
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": all_labels, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "redis:7", "ports": [{"containerPort": 6379}]}]}
            }
        }
    })
    .to_string()
}

fn init_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| c.name.clone())
        .collect()
}

#[tokio::test]
async fn the_api_server_calls_the_webhook_for_labelled_pods_only() {
    let Some(cluster) = cluster("the_api_server_calls_the_webhook_for_labelled_pods_only").await
    else {
        return;
    };
    let ns = cluster.namespace("webhook").await;
    let pki = Pki::new();
    let webhook = Webhook::start(&pki);
    let _registration =
        Registration::create(&cluster, &ns.name, webhook.port, Some(&pki.ca.pem())).await;
    let labelled = deployment(
        "injected",
        json!({"rigging.dev/inject": "enabled"}),
        json!({"rigging.dev/sidecars": "health,metrics",
               "rigging.dev/health-checks": "redis://127.0.0.1:6379",
               "rigging.dev/metrics-source": "redis://127.0.0.1:6379",
               "rigging.dev/metrics-memory-limit": "96Mi"}),
    );
    let plain = deployment(
        "plain",
        json!({}),
        json!({"rigging.dev/sidecars": "health"}),
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    // The webhook may take a moment to listen: until then the API server refuses labelled
    // pods (failurePolicy Fail) and the ReplicaSet retries, as it would in a cluster.
    cluster.kubectl_with_input(&["apply", "-n", &ns.name, "-f", "-"], Some(&labelled));
    cluster.kubectl_with_input(&["apply", "-n", &ns.name, "-f", "-"], Some(&plain));
    let of = |app: &'static str| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .ok()?;
            list.items.into_iter().next()
        }
    };
    let injected = eventually("the labelled Deployment's pod", SETTLE, || of("injected")).await;
    assert_eq!(init_names(&injected), ["rigging-metrics", "rigging-health"]);
    let annotations = injected.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations["rigging.dev/injected"], "metrics,health");
    // Each sidecar's resources as the API server stored the pod: the annotation's value
    // for the metrics adapter, the defaults for the rest.
    let limits = |name: &str| {
        let sidecar = injected
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .iter()
            .flatten();
        let limits = sidecar
            .filter(|c| c.name == name)
            .find_map(|c| c.resources.as_ref()?.limits.clone())
            .unwrap_or_default();
        ["cpu", "memory"].map(|r| limits.get(r).map(|q| q.0.clone()).unwrap_or_default())
    };
    assert_eq!(limits("rigging-metrics"), ["200m", "96Mi"]);
    assert_eq!(limits("rigging-health"), ["200m", "64Mi"]);
    let app = &injected.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        app.readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|h| h.path.clone()),
        Some(Some("/readyz".to_owned())),
        "the app's readiness comes from the health monitor"
    );
    let untouched = eventually("the unlabelled Deployment's pod", SETTLE, || of("plain")).await;
    assert!(
        init_names(&untouched).is_empty(),
        "{:?}",
        init_names(&untouched)
    );

    // A pod created directly with bad annotations is refused with the webhook's message.
    let refused = |name: &str, annotations: Value| {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"rigging.dev/inject": "enabled"},
                         "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "redis:7"}]}
        });
        let out = cluster.kubectl_with_input(
            &["create", "-n", &ns.name, "-f", "-"],
            Some(&pod.to_string()),
        );
        assert!(!out.status.success(), "the {name} pod was created");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused("bad", json!({"rigging.dev/sidecars": "health,sharding"}));
    assert!(
        stderr.contains("metadata.annotations[rigging.dev/sidecars]: unknown sidecar \"sharding\""),
        "{stderr}"
    );
    // And one whose sidecar would ask for more memory than its limit, which the API
    // server itself would refuse of the pod, naming the field; the webhook names the
    // annotation.
    let stderr = refused(
        "greedy",
        json!({"rigging.dev/sidecars": "health",
               "rigging.dev/health-checks": "tcp://127.0.0.1:6379",
               "rigging.dev/health-memory-request": "1Gi"}),
    );
    assert!(
        stderr.contains("metadata.annotations[rigging.dev/health-memory-request]: 1Gi is more than the memory limit 64Mi"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_certificate_rotation_while_pods_are_created_refuses_none() {
    let Some(cluster) = cluster("a_certificate_rotation_while_pods_are_created_refuses_none").await
    else {
        return;
    };
    let ns = cluster.namespace("webhook-rotation").await;
    let pki = Pki::new();
    let webhook = Webhook::start(&pki);
    let _registration =
        Registration::create(&cluster, &ns.name, webhook.port, Some(&pki.ca.pem())).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pod = |i: usize| -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "labels": {"rigging.dev/inject": "enabled"},
                         "annotations": {"rigging.dev/sidecars": "health",
                                         "rigging.dev/health-checks": "tcp://127.0.0.1:6379"}},
            "spec": {"containers": [{"name": "app", "image": "redis:7"}]}
        }))
        .unwrap()
    };
    // Until the webhook listens, creations are refused: wait for the first to pass.
    eventually("the webhook to answer", SETTLE, || {
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &pod(0)).await.ok() }
    })
    .await;
    // Pods keep coming while the certificate is replaced twice (the webhook re-reads it
    // every 5 s); every creation must pass through the webhook and be injected.
    for i in 1..=24 {
        if i % 8 == 0 {
            pki.issue();
        }
        let created = pods
            .create(&PostParams::default(), &pod(i))
            .await
            .unwrap_or_else(|e| panic!("pod {i} refused during the rotation: {e}"));
        assert_eq!(init_names(&created), ["rigging-health"], "pod {i}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A labelled pod named `name` asking for the health monitor.
fn health_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"rigging.dev/inject": "enabled"},
                     "annotations": {"rigging.dev/sidecars": "health",
                                     "rigging.dev/health-checks": "tcp://127.0.0.1:6379"}},
        "spec": {"containers": [{"name": "app", "image": "redis:7"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn run_serves_the_webhook_with_a_ca_it_keeps_across_restarts() {
    let Some(cluster) = cluster("run_serves_the_webhook_with_a_ca_it_keeps_across_restarts").await
    else {
        return;
    };
    let ns = cluster.namespace("webhook-run").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--no-leader-election",
        "--webhook-listen",
        &listen,
        "--webhook-namespace",
        &ns.name,
        "--webhook-secret",
        "rigging-webhook-ca",
        "--webhook-configuration",
        &ns.name,
        "--webhook-host",
        "127.0.0.1",
    ];
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client.clone(), &ns.name);
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let ca_of =
        |secret: k8s_openapi::api::core::v1::Secret| secret.data.unwrap()["ca.crt"].0.clone();
    let bundle = || async {
        let live = configurations.get(&ns.name).await.ok()?;
        live.webhooks?[0]
            .client_config
            .ca_bundle
            .clone()
            .map(|b| b.0)
    };

    // Helm creates the configuration after the operator's Deployment, so the operator
    // can start before it exists; it then publishes the CA once it does.
    let first = crate::support::Operator::start_with(&cluster, &ns.name, "first", &args);
    eventually("the operator to find no configuration", SETTLE, || async {
        first
            .log()
            .contains("MutatingWebhookConfiguration not found")
            .then_some(())
    })
    .await;
    // Registered without a caBundle, as the chart installs it: the operator publishes it.
    let _registration = Registration::create(&cluster, &ns.name, port, None).await;
    let published = eventually("the operator to publish its CA as caBundle", SETTLE, bundle).await;
    let ca = ca_of(
        secrets
            .get("rigging-webhook-ca")
            .await
            .expect("the CA Secret is made"),
    );
    assert_eq!(published, ca, "the caBundle is the CA of the Secret");
    let created = eventually("a labelled pod to be created", SETTLE, || {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &health_pod("before"))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(init_names(&created), ["rigging-health"]);
    drop(first);

    // A new operator (a restart, an upgrade) keeps the CA: the caBundle stays valid.
    let _second = crate::support::Operator::start_with(&cluster, &ns.name, "second", &args);
    let created = eventually("a labelled pod after the restart", SETTLE, || {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &health_pod("after"))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(init_names(&created), ["rigging-health"]);
    let kept = ca_of(secrets.get("rigging-webhook-ca").await.unwrap());
    assert_eq!(kept, ca, "the CA Secret is reused, not replaced");
    assert_eq!(bundle().await, Some(ca), "the caBundle is unchanged");
}

#[tokio::test]
async fn run_serves_certificates_someone_else_issues_and_makes_no_ca() {
    let Some(cluster) =
        cluster("run_serves_certificates_someone_else_issues_and_makes_no_ca").await
    else {
        return;
    };
    let ns = cluster.namespace("webhook-certdir").await;
    let pki = Pki::new();
    let port = free_port();
    let _registration = Registration::create(&cluster, &ns.name, port, Some(&pki.ca.pem())).await;
    let (listen, dir) = (
        format!("127.0.0.1:{port}"),
        pki.dir.path().display().to_string(),
    );
    let args = [
        "--no-leader-election",
        "--webhook-listen",
        &listen,
        "--webhook-namespace",
        &ns.name,
        "--webhook-cert-dir",
        &dir,
    ];
    let _operator = crate::support::Operator::start_with(&cluster, &ns.name, "certdir", &args);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let created = eventually("a labelled pod to be created", SETTLE, || {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &health_pod("issued"))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(init_names(&created), ["rigging-health"]);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(
        secrets
            .get_opt("rigging-webhook-ca")
            .await
            .unwrap()
            .is_none(),
        "with a certificate directory the operator makes no CA of its own"
    );
}
