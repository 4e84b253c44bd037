//! What every cluster test needs: the cluster, a namespace of its own, kubectl, an
//! operator process, and waiting for the API server to show something.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Client, Config, discovery};
use rigging_operator::controller::MANAGER;
use serde_json::Value;

#[path = "../../../testing/ports.rs"]
mod ports;
pub use ports::free_port;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A connection to the cluster under test.
pub struct Cluster {
    /// Client with the kubeconfig's (cluster-admin) credentials.
    pub client: Client,
    kubeconfig: PathBuf,
}

/// The cluster of `RIGGING_KUBECONFIG`, with Rigging's CRDs applied (`kubectl apply -f
/// crds/`, once per run), or `None` (after saying so) when no cluster is given. For the
/// tests that start their own operators: it refuses a cluster where the chart's operator
/// already reconciles every namespace (`node::` tests install it; they run afterwards).
pub async fn cluster(test: &str) -> Option<Cluster> {
    let cluster = connect(test).await?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::all(cluster.client.clone());
    let chart = ListParams::default().labels("app.kubernetes.io/name=rigging");
    let cluster_wide: Vec<String> = deployments
        .list(&chart)
        .await
        .expect("list Deployments")
        .items
        .into_iter()
        .filter(|d| {
            let env = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.containers.first())
                .and_then(|c| c.env.as_ref());
            !env.is_some_and(|env| env.iter().any(|e| e.name == "RIGGING_WATCH_NAMESPACE"))
        })
        .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
        .collect();
    assert!(
        cluster_wide.is_empty(),
        "{test}: the chart's operator {cluster_wide:?} reconciles every namespace and would \
         fight this test's own; run these tests before the node:: ones (-- --skip node::), or \
         helm uninstall it"
    );
    Some(cluster)
}

/// [`cluster`], whatever operator the cluster already runs.
pub async fn connect(test: &str) -> Option<Cluster> {
    let Some(kubeconfig) = std::env::var_os("RIGGING_KUBECONFIG").map(PathBuf::from) else {
        if std::env::var("RIGGING_CLUSTER_REQUIRE").as_deref() == Ok("1") {
            panic!("{test}: RIGGING_KUBECONFIG is not set and RIGGING_CLUSTER_REQUIRE=1");
        }
        // Straight to the terminal, past the test harness's capture: a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "cluster suite: {test} SKIPPED (set RIGGING_KUBECONFIG to run it)"
        );
        return None;
    };
    let options = KubeConfigOptions::default();
    let config = Kubeconfig::read_from(&kubeconfig).expect("RIGGING_KUBECONFIG is a kubeconfig");
    let config = Config::from_custom_kubeconfig(config, &options)
        .await
        .expect("usable kubeconfig");
    let cluster = Cluster {
        client: Client::try_from(config).expect("client"),
        kubeconfig,
    };
    static CRDS: OnceLock<()> = OnceLock::new();
    CRDS.get_or_init(|| {
        cluster.kubectl_ok(&["apply", "-f", "crds/"]);
        cluster.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/replicatedservices.rigging.dev",
        ]);
    });
    Some(cluster)
}

impl Cluster {
    /// The kubeconfig, for processes the test starts.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `kubectl` (from `PATH`) on this cluster, from the workspace root.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_input(args, None)
    }

    /// Runs `kubectl` with `input` on its stdin.
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        run_tool("kubectl", args, input, &self.kubeconfig)
    }

    /// Applies `object` as a user would (`kubectl apply -f -`); panics with kubectl's
    /// stderr if it fails.
    pub fn apply(&self, object: &Value) {
        let out = self.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()));
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The messages of the Events of `reason` in `namespace` (about `object`, when not
    /// empty), space-separated, once one of them contains `needle`.
    ///
    /// It waits because the controller publishes a reconcile's Events after it writes the
    /// status: a test that saw the status change can still be ahead of the Event.
    pub async fn event_containing(
        &self,
        namespace: &str,
        reason: &str,
        object: &str,
        needle: &str,
    ) -> String {
        eventually(
            &format!("a {reason} Event containing {needle:?}"),
            SETTLE,
            || async {
                let messages = self.event_messages(namespace, reason, object);
                messages.contains(needle).then_some(messages)
            },
        )
        .await
    }

    /// The messages of the Events of `reason` in `namespace` (about `object`, when not
    /// empty), space-separated: empty when there are none.
    fn event_messages(&self, namespace: &str, reason: &str, object: &str) -> String {
        let mut selector = format!("reason={reason}");
        if !object.is_empty() {
            selector.push_str(&format!(",involvedObject.name={object}"));
        }
        self.kubectl_ok(&[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &selector,
            "-o",
            "jsonpath={.items[*].message}",
        ])
    }

    /// Runs `kubectl` and returns its stdout; panics with its stderr if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `helm` (from `PATH`) on this cluster.
    pub fn helm(&self, args: &[&str]) -> Output {
        run_tool("helm", args, None, &self.kubeconfig)
    }

    /// A fresh namespace named after the test; deleted when the guard drops.
    pub async fn namespace(&self, test: &str) -> TestNamespace {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!(
            "{test}-{:x}{:x}",
            nanos % 0x10000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("rigging.dev/test".to_owned(), test.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the test namespace");
        TestNamespace {
            name,
            kubeconfig: self.kubeconfig.clone(),
        }
    }

    /// The API of the kind `api_version`/`kind` in `namespace`, found by discovery.
    pub async fn dynamic_api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Api<DynamicObject> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, _) = discovery::pinned_kind(&self.client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discovering {api_version} {kind}: {e}"));
        Api::namespaced_with(self.client.clone(), namespace, &resource)
    }

    /// Server-side dry-run applies each object into `namespace`: the API server's
    /// refusals, each naming its object.
    pub async fn dry_run(&self, namespace: &str, objects: &[Value]) -> Vec<String> {
        let mut refused = Vec::new();
        for object in objects {
            let mut object = object.clone();
            object["metadata"]["namespace"] = Value::from(namespace);
            let api_version = object["apiVersion"].as_str().unwrap().to_owned();
            let kind = object["kind"].as_str().unwrap().to_owned();
            let name = object["metadata"]["name"].as_str().unwrap().to_owned();
            let api = self.dynamic_api(&api_version, &kind, namespace).await;
            let params = PatchParams::apply(MANAGER).force().dry_run();
            if let Err(e) = api.patch(&name, &params, &Patch::Apply(&object)).await {
                refused.push(format!("{kind} {name}: {e}"));
            }
        }
        refused
    }

    /// A kubeconfig that authenticates as the ServiceAccount `account` of `namespace`, with
    /// a bound token from the TokenRequest API (`kubectl create token`, an hour long): for
    /// a process that must hold exactly that account's rights and no more. The file is
    /// removed when the returned path is dropped.
    pub fn kubeconfig_as(&self, namespace: &str, account: &str) -> tempfile::TempPath {
        let token = self.kubectl_ok(&[
            "create",
            "token",
            account,
            "-n",
            namespace,
            "--duration",
            "1h",
        ]);
        let admin: Value = serde_json::from_str(&self.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ]))
        .expect("kubectl config view prints JSON");
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": account, "user": {"token": token.trim()}}],
            "contexts": [{"name": account, "context": {
                "cluster": admin["clusters"][0]["name"], "user": account, "namespace": namespace,
            }}],
            "current-context": account,
        });
        let mut file = tempfile::Builder::new()
            .prefix(&format!("rigging-kubeconfig-{namespace}-{account}-"))
            .tempfile()
            .expect("a kubeconfig file");
        std::io::Write::write_all(&mut file, config.to_string().as_bytes())
            .expect("write the kubeconfig");
        file.into_temp_path()
    }

    /// Whether `user` may `verb` the `resource` (`leases`, `leases/NAME`, or
    /// `deployments.apps`) in `namespace`, as the API server's authorizer answers
    /// `kubectl auth can-i --as`.
    pub fn can_i(&self, user: &str, verb: &str, resource: &str, namespace: &str) -> bool {
        let out = self.kubectl(&[
            "auth", "can-i", "--as", user, "-n", namespace, verb, resource,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    }

    /// Starts `rigging-operator run` for the resources of `namespace`, with leader election
    /// off. See [`Operator::start_with`] for the general form.
    pub fn operator(&self, namespace: &str) -> Operator {
        Operator::start_with(self, namespace, "operator", &["--no-leader-election"])
    }
}

fn run_tool(tool: &str, args: &[&str], input: Option<&str>, kubeconfig: &Path) -> Output {
    let mut child = Command::new(tool)
        .args(args)
        .current_dir(root())
        .env("KUBECONFIG", kubeconfig)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} must be on PATH: {e}"));
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("tool output")
}

/// A namespace for one test. Deleting it on drop (without waiting) takes every object of
/// the test with it, pass or fail.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("RIGGING_CLUSTER_KEEP").as_deref() == Ok("1") {
            return;
        }
        let _ = run_tool(
            "kubectl",
            &["delete", "namespace", &self.name, "--wait=false"],
            None,
            &self.kubeconfig,
        );
    }
}

/// An installed Helm release; uninstalled on drop, so that its cluster-wide RBAC objects
/// do not outlive a failed test (the namespace's deletion takes only what is namespaced).
pub struct Release<'a> {
    /// The cluster it is installed on.
    pub cluster: &'a Cluster,
    /// The release's name.
    pub name: String,
    /// The release's namespace.
    pub namespace: String,
    /// Whether it is still installed.
    pub installed: bool,
}

impl Release<'_> {
    /// `helm uninstall`.
    pub fn uninstall(&mut self) -> Output {
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

/// A `rigging-operator run` process; killed on drop.
pub struct Operator {
    child: Option<Child>,
    /// Where its `/metrics`, `/healthz` and `/readyz` are served.
    pub admin: String,
    /// Its log file (JSON lines).
    pub log: PathBuf,
}

impl Operator {
    /// Starts `rigging-operator run --namespace NAMESPACE ARGS…` with identity `identity`
    /// (the `POD_NAME` a pod would give it) and a free admin port.
    pub fn start_with(cluster: &Cluster, namespace: &str, identity: &str, args: &[&str]) -> Self {
        Self::start_as(cluster.kubeconfig(), namespace, identity, args)
    }

    /// [`Operator::start_with`], with the credentials of `kubeconfig` (see
    /// [`Cluster::kubeconfig_as`]) instead of the cluster admin's.
    pub fn start_as(kubeconfig: &Path, namespace: &str, identity: &str, args: &[&str]) -> Self {
        let admin = format!("127.0.0.1:{}", free_port());
        let log = std::env::temp_dir().join(format!("rigging-operator-{namespace}-{identity}.log"));
        let log_file = std::fs::File::create(&log).expect("operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rigging-operator"))
            .args(["run", "--namespace", namespace, "--metrics-addr", &admin])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,rigging_operator=debug")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start rigging-operator");
        Self {
            child: Some(child),
            admin,
            log,
        }
    }

    /// Sends `signal` (`-KILL`, `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {signal}");
        }
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "rigging-operator did not exit within {within:?}; log: {}",
            self.log.display()
        );
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of the counter `name` (summed over its labels) on `/metrics`, 0 when the
    /// process has not counted it yet; `None` while the admin port does not answer.
    pub async fn counter(&self, name: &str) -> Option<f64> {
        let body = http_get(&self.admin, "/metrics").await?;
        Some(
            body.lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

impl Operator {
    /// The samples of the metric `name` this process serves, by label set (`{kind="…"}`).
    /// `None` while the admin port does not answer.
    async fn samples(&self, name: &str) -> Option<BTreeMap<String, f64>> {
        let body = http_get(&self.admin, "/metrics").await?;
        Some(
            body.lines()
                .filter_map(|l| {
                    let (labels, value) = l.strip_prefix(name)?.rsplit_once(' ')?;
                    labels.starts_with('{').then_some(())?;
                    Some((labels.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// `rigging_operator_applies_total{outcome="applied"}` by its label set: the children
    /// this process has written, by kind. `None` while the admin port does not answer.
    pub async fn applied(&self) -> Option<BTreeMap<String, f64>> {
        let mut samples = self.samples("rigging_operator_applies_total").await?;
        samples.retain(|labels, _| labels.contains("outcome=\"applied\""));
        Some(samples)
    }

    /// `rigging_operator_status_writes_total{kind}`: the status patches this process has
    /// sent for objects of `kind`. `None` while the admin port does not answer.
    pub async fn status_writes(&self, kind: &str) -> Option<f64> {
        let samples = self.samples("rigging_operator_status_writes_total").await?;
        Some(
            samples
                .get(&format!("{{kind=\"{kind}\"}}"))
                .copied()
                .unwrap_or(0.0),
        )
    }
}

impl Drop for Operator {
    /// Kills the process; its log is removed unless the test is failing, when it is what
    /// tells why.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `GET path` over plain HTTP/1.1 on `addr`; the body, or `None` if nothing answers.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// Polls `check` every 200 ms until it returns `Some`, and returns that; panics naming
/// `what` after `within`. This is a deadline for something to happen at all, not a
/// performance bound.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long the API server and the controllers get to show a change.
pub const SETTLE: Duration = Duration::from_secs(30);

/// The example manifests, as (path relative to the root, YAML text).
pub fn examples(folder: &str) -> Vec<(String, String)> {
    let dir = root().join("examples").join(folder);
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let rel = p
                .strip_prefix(root())
                .expect("under root")
                .display()
                .to_string();
            (rel, std::fs::read_to_string(&p).expect("readable example"))
        })
        .collect();
    out.sort();
    out
}

/// The app image of [`replicated_service`]: an HTTP server on 8080 that the kit's node has
/// (a stand-in, `e2e/images/`) and that kind pulls, so that the pods really run.
pub const APP_IMAGE: &str = "nginxinc/nginx-unprivileged:1.27-alpine";

/// A ReplicatedService named `name` in `namespace` whose spec is `spec` (JSON) laid over
/// the smallest valid one.
pub fn replicated_service(name: &str, namespace: &str, spec: Value) -> Value {
    let mut object = serde_json::json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "port": 8080,
            "template": {"spec": {"containers": [{
                "name": "app",
                "image": APP_IMAGE,
                "readinessProbe": {"tcpSocket": {"port": 8080}}
            }]}}
        }
    });
    merge(&mut object["spec"], &spec);
    object
}

/// Creates `object` (JSON, as a user writes it) through `api`, which must accept it.
pub async fn create<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(object).expect("the object parses as its kind");
    api.create(&PostParams::default(), &typed)
        .await
        .unwrap_or_else(|e| panic!("the API server accepts the object: {e}"))
}

/// JSON merge patch (RFC 7386) of `patch` into `target`.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}
