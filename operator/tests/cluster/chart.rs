//! `helm install` of `charts/rigging` with the real helm, and the operator's
//! ServiceAccount holding exactly the rights its job needs (`kubectl auth can-i --as`).

use crate::support::{Cluster, cluster};

/// An installed release; uninstalled on drop, so that its cluster-wide RBAC objects do
/// not outlive a failed test (the namespace's deletion takes only what is namespaced).
struct Release<'a> {
    cluster: &'a Cluster,
    name: String,
    namespace: String,
    installed: bool,
}

impl Release<'_> {
    fn uninstall(&mut self) -> std::process::Output {
        self.installed = false;
        self.cluster
            .helm(&["uninstall", &self.name, "--namespace", &self.namespace])
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.installed {
            let _ = self.uninstall();
        }
    }
}

#[tokio::test]
async fn helm_install_gives_the_operator_its_rights_and_no_more() {
    let Some(cluster) = cluster("helm_install_gives_the_operator_its_rights_and_no_more").await
    else {
        return;
    };
    let ns = cluster.namespace("chart").await;
    let other = cluster.namespace("chart-apps").await;
    // A release name holding the chart's name is the chart's full name: the Deployment's.
    let release = format!("rigging-{}", ns.name);
    let out = cluster.helm(&[
        "install",
        &release,
        "charts/rigging",
        "--namespace",
        &ns.name,
    ]);
    let mut installed = Release {
        cluster: &cluster,
        name: release.clone(),
        namespace: ns.name.clone(),
        installed: true,
    };
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = cluster.helm(&["status", &release, "--namespace", &ns.name, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("helm status");
    assert_eq!(status["info"]["status"], "deployed");
    let accounts = cluster.kubectl_ok(&["get", "serviceaccounts", "-n", &ns.name, "-o", "name"]);
    let account = accounts
        .lines()
        .filter_map(|l| l.strip_prefix("serviceaccount/"))
        .find(|a| *a != "default")
        .unwrap_or_else(|| panic!("the chart creates a ServiceAccount: {accounts}"))
        .to_owned();
    cluster.kubectl_ok(&["get", "deployment", "-n", &ns.name, &release]);

    let user = format!("system:serviceaccount:{}:{account}", ns.name);
    let can = |verb: &str, resource: &str, namespace: &str| {
        let mut args = vec!["auth", "can-i", "--as", &user, "-n", namespace, verb];
        match resource.split_once('/') {
            Some((resource, subresource)) => args.extend([resource, "--subresource", subresource]),
            None => args.push(resource),
        }
        let out = cluster.kubectl(&args);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let apps = other.name.as_str();
    let home = ns.name.as_str();
    let allowed = [
        ("watch", "replicatedservices.rigging.dev", apps),
        ("patch", "replicatedservices.rigging.dev/status", apps),
        ("watch", "shardedservices.rigging.dev", apps),
        ("patch", "shardedservices.rigging.dev/status", apps),
        ("watch", "workqueues.rigging.dev", apps),
        ("patch", "workqueues.rigging.dev/status", apps),
        ("patch", "deployments.apps", apps),
        ("delete", "statefulsets.apps", apps),
        ("create", "services", apps),
        ("patch", "configmaps", apps),
        ("delete", "networkpolicies.networking.k8s.io", apps),
        ("create", "jobs.batch", apps),
        ("delete", "jobs.batch", apps),
        ("delete", "poddisruptionbudgets.policy", apps),
        ("delete", "horizontalpodautoscalers.autoscaling", apps),
        ("create", "events.events.k8s.io", apps),
        ("patch", "leases.coordination.k8s.io", home),
        ("watch", "leases.coordination.k8s.io", home),
    ];
    for (verb, resource, namespace) in allowed {
        assert!(
            can(verb, resource, namespace),
            "{user} can {verb} {resource} in {namespace}"
        );
    }
    let refused = [
        ("get", "secrets", apps),
        ("get", "secrets", home),
        ("create", "pods", apps),
        ("patch", "replicatedservices.rigging.dev", apps),
        ("patch", "jobs.batch", apps),
        ("delete", "replicatedservices.rigging.dev", apps),
        ("patch", "leases.coordination.k8s.io", apps),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            apps,
        ),
    ];
    for (verb, resource, namespace) in refused {
        assert!(
            !can(verb, resource, namespace),
            "{user} must not {verb} {resource} in {namespace}"
        );
    }
    let out = installed.uninstall();
    assert!(
        out.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
