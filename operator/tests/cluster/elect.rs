//! `sidecars.elect` on a real API server, with the operator holding the chart's rights and
//! nothing more (it runs with its ServiceAccount's token): it binds itself the chart's
//! ClusterRole of Lease verbs in the pods' namespace, and RBAC's escalation checks then
//! accept the ServiceAccount, Role and RoleBinding it makes; the pods' ServiceAccount can then do
//! exactly the Lease verbs of its election, in its own namespace (`kubectl auth can-i
//! --as`); the pods' election sidecars, holding only that token, elect on the node; the
//! pods run as that account with the sidecar's own token mount; and removing the block
//! removes all three.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::node::POD_SETTLE;
use crate::support::{Cluster, Operator, Release, SETTLE, cluster, eventually, replicated_service};

/// The name of the ServiceAccount the chart made in `namespace`.
fn chart_account(cluster: &Cluster, namespace: &str) -> String {
    let accounts = cluster.kubectl_ok(&["get", "serviceaccounts", "-n", namespace, "-o", "name"]);
    accounts
        .lines()
        .filter_map(|l| l.strip_prefix("serviceaccount/"))
        .find(|a| *a != "default")
        .unwrap_or_else(|| panic!("the chart creates a ServiceAccount: {accounts}"))
        .to_owned()
}

#[tokio::test]
async fn an_election_on_leases_is_granted_its_leases_and_nothing_more_by_the_operator_itself() {
    let Some(cluster) = cluster(
        "an_election_on_leases_is_granted_its_leases_and_nothing_more_by_the_operator_itself",
    )
    .await
    else {
        return;
    };
    let home = cluster.namespace("elect-op").await;
    let apps = cluster.namespace("elect-apps").await;
    let release = format!("rigging-{}", home.name);
    let out = cluster.helm(&[
        "install",
        &release,
        "charts/rigging",
        "--namespace",
        &home.name,
        "--set",
        "webhook.enabled=false",
        // Its own pods run on the node and reconcile only their (empty) namespace: the
        // operator under test is the one below, with the chart's ServiceAccount token.
        "--set",
        &format!("watchNamespace={}", home.name),
    ]);
    let _installed = Release {
        cluster: &cluster,
        name: release.clone(),
        namespace: home.name.clone(),
        installed: true,
    };
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The operator runs as the chart's ServiceAccount: every Role it writes passes the
    // API server's escalation check against the chart's rights alone.
    let account = chart_account(&cluster, &home.name);
    let as_operator = cluster.kubeconfig_as(&home.name, &account);
    let operator = Operator::start_as(
        &as_operator,
        &apps.name,
        "operator",
        &[
            "--no-leader-election",
            "--resync-period",
            "1s",
            "--elect-grant-role",
            &format!("{release}-elect"),
        ],
    );
    cluster.kubectl_ok(&["create", "serviceaccount", "worker", "-n", &apps.name]);
    let sched = replicated_service(
        "sched",
        &apps.name,
        json!({"replicas": 2, "sidecars": {"elect": {"activePassive": true}}}),
    );
    let jobs = replicated_service(
        "jobs",
        &apps.name,
        json!({
            "sidecars": {"elect": {"election": "work", "items": 4}},
            "template": {"spec": {"serviceAccountName": "worker"}}
        }),
    );
    for object in [&sched, &jobs] {
        let out = cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()));
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let roles: Api<Role> = Api::namespaced(cluster.client.clone(), &apps.name);
    let bindings: Api<RoleBinding> = Api::namespaced(cluster.client.clone(), &apps.name);
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &apps.name);
    let log = operator.log.display().to_string();
    for name in ["sched", "jobs"] {
        eventually(
            &format!("the Role and RoleBinding {name}-elect (operator log: {log})"),
            SETTLE,
            || async {
                let role = roles.get_opt(&format!("{name}-elect")).await.ok()??;
                let binding = bindings.get_opt(&format!("{name}-elect")).await.ok()??;
                Some((role, binding))
            },
        )
        .await;
        // The operator's own grant of the Lease verbs, first, without which the API server
        // refuses the Role.
        let grant = bindings
            .get(&format!("{name}-elect-grant"))
            .await
            .expect("the operator's grant");
        assert_eq!(grant.role_ref.name, format!("{release}-elect"));
        let subject = &grant.subjects.expect("a subject")[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            (account.as_str(), Some(home.name.as_str()))
        );
    }
    // So the operator holds Lease rights here, and still none in a namespace without an
    // election.
    let operator_user = format!("system:serviceaccount:{}:{account}", home.name);
    assert!(cluster.can_i(&operator_user, "update", "leases", &apps.name));
    assert!(!cluster.can_i(&operator_user, "update", "leases", "kube-node-lease"));
    accounts
        .get("sched-elect")
        .await
        .expect("a ServiceAccount for the pods that name none");
    assert!(
        accounts.get_opt("jobs-elect").await.unwrap().is_none(),
        "none for pods that name their own"
    );

    // Exactly the Lease verbs of the election, in the pods' namespace only.
    let user = |sa: &str| format!("system:serviceaccount:{}:{sa}", apps.name);
    let (scheduler, worker) = (user("sched-elect"), user("worker"));
    let (ns, other) = (apps.name.as_str(), home.name.as_str());
    let allowed = [
        (&scheduler, "get", "leases/sched", ns),
        (&scheduler, "update", "leases/sched", ns),
        (&scheduler, "create", "leases", ns),
        (&worker, "get", "leases/work-item-3", ns),
        (&worker, "update", "leases/work-member-jobs-0", ns),
        (&worker, "create", "leases", ns),
        (&worker, "list", "leases", ns),
        (&worker, "delete", "leases/work-member-jobs-0", ns),
    ];
    for (user, verb, resource, namespace) in allowed {
        assert!(
            cluster.can_i(user, verb, resource, namespace),
            "{user} can {verb} {resource} in {namespace}"
        );
    }
    let refused = [
        (&scheduler, "get", "leases/other-election", ns),
        (&scheduler, "update", "leases/other-election", ns),
        (&scheduler, "patch", "leases/sched", ns),
        (&scheduler, "delete", "leases/sched", ns),
        (&scheduler, "list", "leases", ns),
        (&scheduler, "watch", "leases", ns),
        (&scheduler, "create", "leases", other),
        (&scheduler, "get", "pods", ns),
        (&worker, "patch", "leases/work", ns),
        (&worker, "watch", "leases", ns),
        (&worker, "deletecollection", "leases", ns),
        (&worker, "create", "leases", other),
    ];
    for (user, verb, resource, namespace) in refused {
        assert!(
            !cluster.can_i(user, verb, resource, namespace),
            "{user} must not {verb} {resource} in {namespace}"
        );
    }
    let default = user("default");
    assert!(
        !cluster.can_i(&default, "create", "leases", ns),
        "the namespace's default account gains nothing"
    );

    // The pods' own election sidecars, holding only that account's token, elect: one of
    // sched's pods holds its Lease, and jobs' pod holds every item of `work`. (Handing the
    // Lease over on SIGTERM is the active-passive example's test, node::examples.)
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let pod_names = |app: &'static str| {
        let pods = pods.clone();
        async move {
            let selector = format!("app.kubernetes.io/name={app}");
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            Some(
                list.items
                    .into_iter()
                    .filter_map(|p| p.metadata.name)
                    .collect::<Vec<_>>(),
            )
        }
    };
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), ns);
    eventually("one of sched's pods leads", POD_SETTLE, || async {
        let holder = leases.get("sched").await.ok()?.spec?.holder_identity?;
        pod_names("sched").await?.contains(&holder).then_some(())
    })
    .await;
    eventually(
        "jobs' pod holds the 4 items of work",
        POD_SETTLE,
        || async {
            let items = leases
                .list(
                    &ListParams::default()
                        .labels("rigging.dev/election=work,rigging.dev/elect-role=item"),
                )
                .await
                .ok()?
                .items;
            let holders: Vec<String> = items
                .into_iter()
                .filter_map(|l| l.spec?.holder_identity)
                .collect();
            let jobs = pod_names("jobs").await?;
            (holders.len() == 4 && holders.iter().all(|h| jobs.contains(h))).then_some(())
        },
    )
    .await;

    // The pods the ReplicaSet controller creates run as that account, and the sidecar
    // keeps its own token mount (the ServiceAccount admission plugin adds none over it).
    let pod = eventually("a pod of sched", SETTLE, || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=sched"))
            .await
            .ok()?;
        list.items.into_iter().next()
    })
    .await;
    let spec = pod.spec.expect("pod spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("sched-elect"));
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "rigging-elect")
        .expect("the election sidecar");
    let token_mounts: Vec<&str> = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount")
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(token_mounts, ["rigging-elect-token"]);

    // Settled, the children cost no write: what the operator owns (as managedFields say)
    // and still applies is no drift, though keyed items carry server defaults.
    let applied = || async {
        operator
            .applied()
            .await
            .unwrap_or_default()
            .values()
            .sum::<f64>()
    };
    let before = applied().await;
    assert!(before > 0.0, "the operator counts its applies");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(
        applied().await,
        before,
        "resyncs of settled objects apply nothing"
    );

    // Without the block, the three go, and the pods run as the template says again.
    cluster.kubectl_ok(&[
        "patch",
        "replicatedservice",
        "sched",
        "-n",
        ns,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/sidecars"}]"#,
    ]);
    eventually("sched-elect removed with the block", SETTLE, || async {
        let gone = roles.get_opt("sched-elect").await.ok()?.is_none()
            && bindings.get_opt("sched-elect").await.ok()?.is_none()
            && bindings.get_opt("sched-elect-grant").await.ok()?.is_none()
            && accounts.get_opt("sched-elect").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let template = deployments
        .get("sched")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template;
    let pod = template.spec.unwrap();
    assert_eq!(
        (pod.service_account_name, pod.service_account),
        (None, None),
        "fields the operator stops applying are removed by its next apply"
    );
    assert!(
        pod.init_containers.is_none_or(|c| c.is_empty()),
        "and so is the sidecar"
    );
    assert!(
        roles.get_opt("jobs-elect").await.unwrap().is_some()
            && bindings
                .get_opt("jobs-elect-grant")
                .await
                .unwrap()
                .is_some(),
        "the other object's access stays"
    );
}
