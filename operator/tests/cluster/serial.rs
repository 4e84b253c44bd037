//! What changes something every other test shares, the CRDs, so it runs alone after them
//! (`-- serial:: --test-threads 1`, as `e2e/run.sh` runs it), on the node with the chart's
//! operator.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use rigging_operator::crdgen;
use serde_json::{Value, json};

use crate::node::{RELEASE, RELEASE_NAMESPACE, node_cluster};
use crate::support::Cluster;

const CRD: &str = "replicatedservices.rigging.dev";

/// Puts back this build's CRD when the test ends, pass or fail: a later run's
/// `kubectl apply -f crds/` would not bring back a property its last-applied copy has.
struct RestoreCrd<'a>(&'a Cluster);

impl Drop for RestoreCrd<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=rigging-test",
            "-f",
            &format!("crds/{CRD}.yaml"),
        ]);
    }
}

/// Replaces the ReplicatedService CRD with this build's, marked as written by `release`,
/// and, unless `with_affinity`, without `spec.service.sessionAffinity`: the CRD of a
/// release before that field.
async fn install_crd(cluster: &Cluster, release: &str, with_affinity: bool) {
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let crd = crdgen::all()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(CRD))
        .expect("the ReplicatedService CRD");
    let mut crd = serde_json::to_value(crd).expect("CRD as JSON");
    crd["metadata"]["annotations"][crdgen::VERSION_ANNOTATION] = json!(release);
    if !with_affinity {
        let service = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["service"];
        for part in ["properties", "default"] {
            let removed = service[part]
                .as_object_mut()
                .and_then(|o| o.remove("sessionAffinity"));
            assert!(removed.is_some(), "service.{part} has sessionAffinity");
        }
    }
    let current = api.get(CRD).await.expect("the CRD is installed");
    crd["metadata"]["resourceVersion"] = json!(current.metadata.resource_version);
    let crd = serde_json::from_value(crd).expect("CRD");
    api.replace(CRD, &PostParams::default(), &crd)
        .await
        .expect("replace the CRD");
}

/// What the API server serves for the CRD: whether its schema has the field, and the
/// release it is marked with.
async fn served(cluster: &Cluster) -> (bool, Option<String>) {
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let crd = serde_json::to_value(api.get(CRD).await.expect("get the CRD")).expect("JSON");
    let affinity = !crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["service"]["properties"]["sessionAffinity"]
        .is_null();
    let release = crd["metadata"]["annotations"][crdgen::VERSION_ANNOTATION]
        .as_str()
        .map(str::to_owned);
    (affinity, release)
}

/// A ReplicatedService with `sessionAffinity: ClientIP`, applied with kubectl's
/// `--validate` set to `validate`; returns what the API server kept of `spec.service`, or
/// kubectl's error.
fn apply_with_affinity(
    cluster: &Cluster,
    namespace: &str,
    validate: &str,
) -> Result<Value, String> {
    let object = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "sticky", "namespace": namespace},
        "spec": {
            "port": 8080,
            "replicas": 0,
            "service": {"sessionAffinity": "ClientIP"},
            "template": {"spec": {"containers": [{
                "name": "app",
                "image": "nginx",
                "readinessProbe": {"tcpSocket": {"port": 8080}},
            }]}},
        },
    });
    let validate = format!("--validate={validate}");
    let out =
        cluster.kubectl_with_input(&["apply", &validate, "-f", "-"], Some(&object.to_string()));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let kept = cluster.kubectl_ok(&[
        "get",
        "rsvc",
        "sticky",
        "-n",
        namespace,
        "-o",
        "jsonpath={.spec.service}",
    ]);
    Ok(serde_json::from_str(&kept).expect("spec.service"))
}

/// `helm upgrade` of the chart's release, which rolls its operator pods; waits for them.
fn helm_upgrade(cluster: &Cluster, restart: &str) {
    let out = cluster.helm(&[
        "upgrade",
        RELEASE,
        "charts/rigging",
        "--namespace",
        RELEASE_NAMESPACE,
        "--reuse-values",
        "--set-string",
        &format!("podAnnotations.rigging\\.dev/test-restart={restart}"),
        "--wait",
        "--timeout",
        "180s",
    ]);
    assert!(
        out.status.success(),
        "helm upgrade: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_helm_upgrade_brings_the_new_fields_of_the_crds_and_never_takes_them_back() {
    let test = "a_helm_upgrade_brings_the_new_fields_of_the_crds_and_never_takes_them_back";
    let Some(cluster) = node_cluster(test).await else {
        return;
    };
    let ns = cluster.namespace("crd-upgrade").await;
    let _restore = RestoreCrd(&cluster);

    // The cluster as a release before `sessionAffinity` left it: kubectl's strict
    // validation refuses the field, and a client that does not ask for it (the API
    // server's default, what controllers and GitOps tools send) loses it.
    install_crd(&cluster, "0.0.1", false).await;
    let refused = apply_with_affinity(&cluster, &ns.name, "strict").unwrap_err();
    assert!(
        refused.contains("unknown field \"spec.service.sessionAffinity\""),
        "{refused}"
    );
    let kept = apply_with_affinity(&cluster, &ns.name, "warn").expect("applied");
    assert!(
        kept.get("sessionAffinity").is_none(),
        "the old CRD prunes the new field: {kept}"
    );

    // helm upgrade: Helm leaves the chart's crds/ alone, and the new operator applies its
    // own at start; the field is kept from then on.
    helm_upgrade(&cluster, &format!("{}-upgrade", ns.name));
    let (affinity, release) = served(&cluster).await;
    assert!(affinity, "the upgraded CRD has the new field");
    assert_eq!(release.as_deref(), Some(crdgen::VERSION));
    let kept = apply_with_affinity(&cluster, &ns.name, "strict").expect("applied");
    assert_eq!(kept["sessionAffinity"], "ClientIP", "{kept}");

    // A rollback to this release, once a newer one wrote the CRD, leaves the CRD alone
    // rather than prune the newer release's fields from every object. Its pods were Ready
    // (helm --wait), and readiness comes only after the CRDs were seen to.
    install_crd(&cluster, "999.0.0", false).await;
    helm_upgrade(&cluster, &format!("{}-rollback", ns.name));
    let (affinity, release) = served(&cluster).await;
    assert!(!affinity, "an older operator rewrote a newer release's CRD");
    assert_eq!(release.as_deref(), Some("999.0.0"));
}
