//! `sidecars.elect` on a real API server, with the operator holding the chart's rights and
//! nothing more (it runs with its ServiceAccount's token): RBAC's escalation checks accept
//! the ServiceAccount, Role and RoleBinding it makes; the pods' ServiceAccount can then do
//! exactly the Lease verbs of its election, in its own namespace (`kubectl auth can-i
//! --as`); an election sidecar holding only that token elects; the pods the
//! controller-manager creates run as that account with the sidecar's own token mount; and
//! removing the block removes all three.

use std::process::{Child, Command, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::support::{
    Cluster, Operator, Release, SETTLE, cluster, eventually, free_port, http_get,
    replicated_service, root,
};

/// A `rigging-sidecar elect` process; killed on drop.
struct Sidecar {
    child: Child,
    admin: String,
}

impl Sidecar {
    /// Starts the election sidecar with the credentials of `kubeconfig` and `args`.
    fn start(kubeconfig: &std::path::Path, args: &[&str]) -> Self {
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(sidecar_binary())
            .arg("elect")
            .args(args)
            .args(["--admin", &admin])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rigging-sidecar elect");
        Self { child, admin }
    }

    /// `GET path` as JSON, once the API answers.
    async fn get(&self, path: &str) -> Option<Value> {
        let body = http_get(&self.admin, path).await?;
        serde_json::from_str(&body).ok()
    }

    /// Sends SIGTERM and returns the exit code.
    fn stop(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().ok()?.code()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rigging-sidecar`, built for this test when it is not (the operator's tests only link
/// its library).
fn sidecar_binary() -> std::path::PathBuf {
    let operator = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rigging-operator"));
    let binary = operator.with_file_name("rigging-sidecar");
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "rigging-sidecar",
            "--bin",
            "rigging-sidecar",
        ])
        .current_dir(root())
        .status()
        .expect("cargo runs");
    assert!(built.success(), "cargo build -p rigging-sidecar");
    assert!(binary.exists(), "{} is built", binary.display());
    binary
}

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
        &["--no-leader-election", "--resync-period", "1s"],
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
    for name in ["sched-elect", "jobs-elect"] {
        eventually(
            &format!("the Role and RoleBinding {name} (operator log: {log})"),
            SETTLE,
            || async {
                let role = roles.get_opt(name).await.ok()??;
                let binding = bindings.get_opt(name).await.ok()??;
                Some((role, binding))
            },
        )
        .await;
    }
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

    // A sidecar holding only the pods' token elects, and hands over on SIGTERM.
    let as_pods = cluster.kubeconfig_as(&apps.name, "sched-elect");
    let timing = [
        "--lease-duration",
        "4s",
        "--renew-deadline",
        "3s",
        "--retry-period",
        "500ms",
    ];
    let mut leader = Sidecar::start(
        &as_pods,
        &[
            &[
                "--election",
                "sched",
                "--identity",
                "sched-a",
                "--namespace",
                ns,
            ],
            &timing[..],
        ]
        .concat(),
    );
    let view = eventually("the sidecar leads as sched-elect", SETTLE, || async {
        let view = leader.get("/leader").await?;
        (view["isLeader"] == true).then_some(view)
    })
    .await;
    assert_eq!(view["leader"], "sched-a");
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), ns);
    let lease = leases.get("sched").await.expect("the election's Lease");
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("sched-a")
    );
    assert_eq!(leader.stop(), Some(0), "SIGTERM: released, exit 0");
    let released = leases.get("sched").await.unwrap().spec.unwrap();
    assert_eq!(released.holder_identity.as_deref().unwrap_or_default(), "");
    // With items, as the account the pods of `jobs` name: members and items, listed and
    // cleaned up.
    let as_workers = cluster.kubeconfig_as(ns, "worker");
    let mut owner = Sidecar::start(
        &as_workers,
        &[
            &[
                "--election",
                "work",
                "--identity",
                "jobs-0",
                "--namespace",
                ns,
                "--items",
                "4",
            ],
            &timing[..],
        ]
        .concat(),
    );
    eventually("the worker owns all 4 items", SETTLE, || async {
        let owned = owner.get("/owned").await?;
        (owned["items"].as_array()?.len() == 4).then_some(())
    })
    .await;
    assert_eq!(owner.stop(), Some(0));
    let members = leases
        .list(&ListParams::default().labels("rigging.dev/elect-role=member"))
        .await
        .unwrap();
    assert!(
        members.items.is_empty(),
        "its membership Lease is deleted on SIGTERM"
    );

    // The pods the ReplicaSet controller creates run as that account, and the sidecar
    // keeps its own token mount (the ServiceAccount admission plugin adds none over it).
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
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
        let body = http_get(&operator.admin, "/metrics")
            .await
            .unwrap_or_default();
        body.lines()
            .filter(|l| {
                l.starts_with("rigging_operator_applies_total{")
                    && l.contains("outcome=\"applied\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
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
        roles.get_opt("jobs-elect").await.unwrap().is_some(),
        "the other object's access stays"
    );
}
