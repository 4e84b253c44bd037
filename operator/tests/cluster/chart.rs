//! `helm install` of `charts/rigging` with the real helm, and the operator's
//! ServiceAccount holding exactly the rights its job needs (`kubectl auth can-i --as`).

use crate::support::{Release, SETTLE, cluster, eventually};

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
    // The release's operator runs on the node: it reconciles and injects only in the
    // namespace of this test, so that other tests' resources and pods never meet it.
    let only_apps = r#"{"matchLabels":{"rigging.dev/test":"chart-apps"}}"#;
    let out = cluster.helm(&[
        "install",
        &release,
        "charts/rigging",
        "--namespace",
        &ns.name,
        "--set-json",
        &format!("webhook.namespaceSelector={only_apps}"),
        "--set",
        &format!("watchNamespace={}", other.name),
        "--wait",
        "--timeout",
        "180s",
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
        ("watch", "mapreduces.rigging.dev", apps),
        ("patch", "mapreduces.rigging.dev/status", apps),
        // A MapReduce's runs.
        ("create", "workqueues.rigging.dev", apps),
        ("delete", "workqueues.rigging.dev", apps),
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
        // The pods of its Jobs (watched), and the routers a ShardedService asks before it
        // removes a shard (listed).
        ("list", "pods", apps),
        ("watch", "pods", apps),
        // The election sidecar's access: the pods' ServiceAccount, Role and RoleBinding.
        // The Lease verbs those Roles grant it binds to itself where it needs them.
        ("patch", "serviceaccounts", apps),
        ("watch", "serviceaccounts", apps),
        ("patch", "roles.rbac.authorization.k8s.io", apps),
        ("delete", "rolebindings.rbac.authorization.k8s.io", apps),
        ("patch", "leases.coordination.k8s.io", home),
        ("watch", "leases.coordination.k8s.io", home),
    ];
    for (verb, resource, namespace) in allowed {
        assert!(
            can(verb, resource, namespace),
            "{user} can {verb} {resource} in {namespace}"
        );
    }
    let by_name = |verb: &str, object: &str, namespace: &str| {
        let out = cluster.kubectl(&[
            "auth", "can-i", "--as", &user, "-n", namespace, verb, object,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let ca_secret = format!("secret/{release}-webhook-ca");
    let hook = format!("mutatingwebhookconfigurations.admissionregistration.k8s.io/{release}");
    assert!(
        by_name("get", &ca_secret, home),
        "{user} reads its webhook CA"
    );
    assert!(
        can("create", "secrets", home),
        "{user} makes its webhook CA when missing"
    );
    assert!(
        by_name("patch", &hook, home),
        "{user} publishes its caBundle"
    );
    // Its own CRDs, upgraded at start by name; no other CRD, and none created or deleted.
    let crd = |name: &str| format!("customresourcedefinitions.apiextensions.k8s.io/{name}");
    for name in [
        "replicatedservices.rigging.dev",
        "workqueues.rigging.dev",
        "scattergathers.rigging.dev",
        "mapreduces.rigging.dev",
    ] {
        assert!(by_name("patch", &crd(name), home), "{user} upgrades {name}");
    }
    assert!(!by_name(
        "patch",
        &crd("certificates.cert-manager.io"),
        home
    ));
    assert!(!by_name("delete", &crd("workqueues.rigging.dev"), home));
    assert!(!can(
        "create",
        "customresourcedefinitions.apiextensions.k8s.io",
        home
    ));
    assert!(!by_name("get", &format!("secret/{release}-other"), home));
    // `bind` on the one ClusterRole of Lease verbs, and on nothing else.
    let cluster_role = |name: &str| format!("clusterroles.rbac.authorization.k8s.io/{name}");
    assert!(by_name(
        "bind",
        &cluster_role(&format!("{release}-elect")),
        apps
    ));
    assert!(!by_name("bind", &cluster_role("cluster-admin"), apps));
    assert!(!by_name("bind", &cluster_role("admin"), apps));
    assert!(!can(
        "patch",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        home
    ));
    assert!(
        !can("create", "secrets", apps),
        "no Secret rights outside its namespace"
    );
    let refused = [
        ("get", "secrets", apps),
        ("get", "secrets", home),
        ("create", "pods", apps),
        ("get", "pods", apps),
        ("get", "pods/proxy", apps),
        ("create", "pods/exec", apps),
        ("patch", "replicatedservices.rigging.dev", apps),
        ("patch", "jobs.batch", apps),
        ("delete", "replicatedservices.rigging.dev", apps),
        // No Lease of any other namespace, the nodes' heartbeats and the control plane's
        // elections included: the operator holds Lease rights only where it bound them to
        // itself.
        ("patch", "leases.coordination.k8s.io", apps),
        ("watch", "leases.coordination.k8s.io", apps),
        ("update", "leases.coordination.k8s.io", apps),
        ("create", "leases.coordination.k8s.io", apps),
        ("delete", "leases.coordination.k8s.io", apps),
        ("update", "leases.coordination.k8s.io", "kube-node-lease"),
        ("delete", "leases.coordination.k8s.io", "kube-node-lease"),
        ("update", "leases.coordination.k8s.io", "kube-system"),
        ("escalate", "roles.rbac.authorization.k8s.io", apps),
        ("bind", "roles.rbac.authorization.k8s.io", apps),
        ("create", "clusterroles.rbac.authorization.k8s.io", apps),
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

    // The operator's pods, with the chart's probes, securityContext and RBAC, ran (helm
    // --wait saw them ready) and published their webhook CA. The caBundle survives
    // `helm upgrade`: helm leaves alone a field that neither the old nor the new manifest
    // has.
    let ca_bundle = || {
        cluster.kubectl_ok(&[
            "get",
            "mutatingwebhookconfiguration",
            &release,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])
    };
    let bundle = eventually("the operator publishes its CA", SETTLE, || async {
        Some(ca_bundle()).filter(|b| !b.is_empty())
    })
    .await;
    let out = cluster.helm(&[
        "upgrade",
        &release,
        "charts/rigging",
        "--namespace",
        &ns.name,
        "--reuse-values",
        "--set",
        "logLevel=debug",
    ]);
    assert!(
        out.status.success(),
        "helm upgrade: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ca_bundle(), bundle, "helm upgrade kept the caBundle");
    let args = cluster.kubectl_ok(&[
        "get",
        "deployment",
        "-n",
        &ns.name,
        &release,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    ]);
    assert!(args.contains("debug"), "the upgrade applied: {args}");

    let out = installed.uninstall();
    assert!(
        out.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = cluster.kubectl(&["get", "mutatingwebhookconfiguration", &release]);
    assert!(
        !gone.status.success(),
        "helm uninstall removes the webhook configuration"
    );
}
