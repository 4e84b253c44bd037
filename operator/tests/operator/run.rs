//! `rigging-operator run` as a process against a small fake API server on 127.0.0.1: the
//! controller wiring (watches, reconcile, server-side apply paths) and the admin endpoints.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};

use crate::ports::free_port;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// Requests the fake API server received, as `METHOD path`.
type Log = Arc<Mutex<Vec<String>>>;

/// The fake's one Lease, if it exists.
type LeaseSlot = Arc<Mutex<Option<Value>>>;

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/rigging-system/leases";

type Body =
    Either<Full<Bytes>, StreamBody<futures::stream::Pending<Result<Frame<Bytes>, Infallible>>>>;

fn replicated_service() -> Value {
    json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "web", "namespace": "shop", "uid": "uid-1", "generation": 1, "resourceVersion": "5"},
        "spec": {
            "port": 8080,
            "replicas": 2,
            "template": {"spec": {"containers": [{
                "name": "app", "image": "app:1",
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}
            }]}}
        }
    })
}

fn json_body(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(value.to_string()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// JSON merge patch (RFC 7386), which is what the lease manager's patches amount to.
fn merge(target: &mut Value, patch: &Value) {
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

fn lease_answer(
    method: &Method,
    path: &str,
    body: &[u8],
    lease: &LeaseSlot,
) -> Option<Response<Body>> {
    if !path.starts_with(LEASE_PATH) {
        return None;
    }
    let mut slot = lease.lock().unwrap();
    let not_found = || {
        json_body(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        )
    };
    Some(match (method, slot.as_mut()) {
        (&Method::GET, Some(l)) => json_body(StatusCode::OK, l),
        (&Method::GET, None) => not_found(),
        (&Method::POST, _) => {
            let mut created: Value = serde_json::from_slice(body).unwrap_or_default();
            created["metadata"]["resourceVersion"] = json!("1");
            *slot = Some(created.clone());
            json_body(StatusCode::CREATED, &created)
        }
        (&Method::PATCH, Some(l)) => {
            let patch: Value = serde_json::from_slice(body).unwrap_or_default();
            merge(&mut l["spec"], &patch["spec"]);
            json_body(StatusCode::OK, l)
        }
        _ => not_found(),
    })
}

/// The rigging.dev API resources, as discovery lists them.
fn rigging_resources() -> Value {
    let kinds = [
        "ReplicatedService",
        "ShardedService",
        "WorkQueue",
        "Pipeline",
        "ScatterGather",
        "MapReduce",
    ];
    Value::Array(
        kinds
            .iter()
            .map(|kind| {
                let singular = kind.to_lowercase();
                json!({"name": format!("{singular}s"), "singularName": singular,
                       "namespaced": true, "kind": kind,
                       "verbs": ["get", "list", "watch", "patch"]})
            })
            .collect(),
    )
}

/// What the fake API server serves, as a test sets it.
struct Served {
    /// Whether the rigging.dev API is served (its CRDs are installed).
    crds: AtomicBool,
    /// A path the fake does not serve well, and how.
    fault: Option<(&'static str, Fault)>,
}

/// How the fake fails the requests of one path.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// A GET fails with a 500, as an API server's that cannot reach etcd.
    Fails,
    /// Any request is never answered.
    Hangs,
}

impl Served {
    fn new(crds: bool, fault: Option<(&'static str, Fault)>) -> Arc<Self> {
        Arc::new(Self {
            crds: AtomicBool::new(crds),
            fault,
        })
    }

    fn fault(&self, path: &str) -> Option<Fault> {
        self.fault.filter(|(p, _)| *p == path).map(|(_, f)| f)
    }
}

async fn answer(
    req: Request<Incoming>,
    log: Log,
    lease: LeaseSlot,
    served: Arc<Served>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_owned();
    if !agent.starts_with("rigging-operator/") {
        log.lock().unwrap().push(format!("USER-AGENT {agent}"));
    }
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    log.lock().unwrap().push(format!("{method} {path}"));
    if served.fault(&path) == Some(Fault::Hangs) {
        return std::future::pending().await;
    }
    if let Some(response) = lease_answer(&method, &path, &body, &lease) {
        return response;
    }
    if method == Method::GET && query.contains("watch=true") {
        // An idle cluster: the watch stays open with nothing to say.
        return Response::new(Either::Right(StreamBody::new(futures::stream::pending())));
    }
    match method {
        Method::GET if served.fault(&path) == Some(Fault::Fails) => json_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500}),
        ),
        Method::GET
            if path == "/apis/rigging.dev/v1alpha1" && served.crds.load(Ordering::SeqCst) =>
        {
            json_body(
                StatusCode::OK,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "rigging.dev/v1alpha1",
                        "resources": rigging_resources()}),
            )
        }
        Method::GET if path == "/apis/rigging.dev/v1alpha1" => json_body(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
        ),
        Method::GET if path == "/apis/rigging.dev/v1alpha1/replicatedservices" => json_body(
            StatusCode::OK,
            &json!({"apiVersion": "rigging.dev/v1alpha1", "kind": "ReplicatedServiceList",
                    "metadata": {"resourceVersion": "5"}, "items": [replicated_service()]}),
        ),
        Method::GET => json_body(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "5"}, "items": []}),
        ),
        Method::PATCH if path.ends_with("/status") => {
            let mut rs = replicated_service();
            let patch: Value = serde_json::from_slice(&body).unwrap_or_default();
            rs["status"] = patch["status"].clone();
            json_body(StatusCode::OK, &rs)
        }
        Method::PATCH | Method::POST => {
            let value: Value = serde_json::from_slice(&body).unwrap_or_default();
            json_body(StatusCode::OK, &value)
        }
        _ => json_body(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
        ),
    }
}

/// Serves the fake API on a thread of its own; returns its address and request log.
fn fake_api_server(lease: LeaseSlot, served: Arc<Served>) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let server_log = log.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = server_log.clone();
                let lease = lease.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (log, lease, served) = (log.clone(), lease.clone(), served.clone());
                        async move { Ok::<_, Infallible>(answer(req, log, lease, served).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    (addr, log)
}

/// Kills the operator when the test ends, pass or fail.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Operator {
    /// Sends SIGTERM and waits (up to 60 s) for the process to exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM delivered");
        let mut exit = None;
        eventually("the operator to exit after SIGTERM", || {
            exit = self.0.try_wait().unwrap();
            exit.is_some()
        });
        exit.unwrap()
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

/// Polls `check` every 50 ms for up to 60 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Starts the operator against a fake API server; returns the admin address, the fake's
/// request log and its Lease, and the process guard.
fn start(
    extra_args: &[&str],
    lease: Option<Value>,
) -> (SocketAddr, Log, LeaseSlot, Operator, tempfile::TempDir) {
    start_with(extra_args, lease, Served::new(true, None))
}

/// [`start`], with the fake serving as `served` says.
fn start_with(
    extra_args: &[&str],
    lease: Option<Value>,
    served: Arc<Served>,
) -> (SocketAddr, Log, LeaseSlot, Operator, tempfile::TempDir) {
    let lease = LeaseSlot::new(Mutex::new(lease));
    let (api, log) = fake_api_server(lease.clone(), served);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{api}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_rigging-operator"))
            .args(["run", "--metrics-addr", &admin.to_string()])
            .args(extra_args)
            .args(["--sidecar-image", "rigging-sidecar:test"])
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", "operator-0")
            .env("POD_NAMESPACE", "rigging-system")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (admin, log, lease, operator, dir)
}

/// Index of the first request in `log` equal to `request`.
fn first(log: &Log, request: &str) -> Option<usize> {
    log.lock().unwrap().iter().position(|r| r == request)
}

#[test]
fn run_reconciles_what_it_lists_and_serves_its_admin_endpoints() {
    let (admin, log, _, _operator, _dir) = start(&["--no-leader-election"], None);
    eventually("/readyz to answer 200", || {
        http_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(http_get(admin, "/healthz").map(|(s, _)| s), Some(200));

    let wanted = [
        "PATCH /apis/apps/v1/namespaces/shop/deployments/web",
        "PATCH /api/v1/namespaces/shop/services/web",
        "PATCH /apis/rigging.dev/v1alpha1/namespaces/shop/replicatedservices/web/status",
    ];
    eventually("the children and the status to be applied", || {
        let log = log.lock().unwrap();
        wanted.iter().all(|w| log.iter().any(|l| l == w))
    });
    let requests = log.lock().unwrap().clone();
    let strangers: Vec<_> = requests
        .iter()
        .filter(|r| r.starts_with("USER-AGENT"))
        .collect();
    assert!(
        strangers.is_empty(),
        "every request names the operator: {strangers:?}"
    );
    for watched in [
        "GET /apis/rigging.dev/v1alpha1/replicatedservices",
        "GET /apis/rigging.dev/v1alpha1/shardedservices",
        "GET /apis/rigging.dev/v1alpha1/workqueues",
        "GET /apis/rigging.dev/v1alpha1/pipelines",
        "GET /apis/rigging.dev/v1alpha1/scattergathers",
        "GET /apis/apps/v1/deployments",
        "GET /apis/apps/v1/statefulsets",
        "GET /api/v1/services",
        "GET /api/v1/configmaps",
        "GET /apis/batch/v1/jobs",
        "GET /apis/networking.k8s.io/v1/networkpolicies",
        "GET /apis/policy/v1/poddisruptionbudgets",
        "GET /apis/autoscaling/v2/horizontalpodautoscalers",
    ] {
        assert!(
            requests.iter().any(|r| r == watched),
            "{watched} missing from {requests:?}"
        );
    }
    // Neither a PDB nor an HPA was asked for, so none is applied.
    assert!(!requests.iter().any(|r| r.contains("poddisruptionbudgets/") || r.contains("horizontalpodautoscalers/")));

    let (status, metrics) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("rigging_operator_reconciliations_total{kind=\"ReplicatedService\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("rigging_operator_applies_total{child=\"Deployment\",kind=\"ReplicatedService\",outcome=\"applied\"} 1"), "{metrics}");
}

#[test]
fn readyz_stays_red_and_nothing_starts_until_the_crds_are_installed() {
    let served = Served::new(false, None);
    let (admin, log, _, _operator, _dir) =
        start_with(&["--no-leader-election"], None, served.clone());
    eventually("the operator to look for its CRDs", || {
        first(&log, "GET /apis/rigging.dev/v1alpha1").is_some()
    });
    eventually("/healthz to answer", || {
        http_get(admin, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(http_get(admin, "/readyz").map(|(s, _)| s), Some(503));
    assert_eq!(
        first(&log, LIST_REPLICATED_SERVICES),
        None,
        "no controller started"
    );

    served.crds.store(true, Ordering::SeqCst);
    eventually("/readyz to answer 200 once the CRDs are served", || {
        http_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    eventually("the controller to start", || {
        first(&log, LIST_REPLICATED_SERVICES).is_some()
    });
}

const DEPLOYMENT_APPLY: &str = "PATCH /apis/apps/v1/namespaces/shop/deployments/web";
const LIST_REPLICATED_SERVICES: &str = "GET /apis/rigging.dev/v1alpha1/replicatedservices";

#[test]
fn sigterm_stops_the_operator_even_while_a_kind_cannot_be_listed() {
    // The MapReduce controller never gets its first list, so it has nothing to drain; the
    // others are reconciling. Stopping must wait for neither.
    let failing = Some(("/apis/rigging.dev/v1alpha1/mapreduces", Fault::Fails));
    let (_, log, _, mut operator, _dir) =
        start_with(&["--no-leader-election"], None, Served::new(true, failing));
    eventually("the Deployment to be applied", || {
        first(&log, DEPLOYMENT_APPLY).is_some()
    });
    assert!(first(&log, "GET /apis/rigging.dev/v1alpha1/mapreduces").is_some());
    assert!(operator.terminate().success());
}

#[test]
fn sigterm_stops_the_operator_even_while_a_reconcile_waits_on_the_api_server() {
    // The apply of the Deployment is never answered (kube's client would wait minutes), so
    // a reconcile is running when the signal comes: it is dropped after the drain time.
    let hanging = Some((
        "/apis/apps/v1/namespaces/shop/deployments/web",
        Fault::Hangs,
    ));
    let (_, log, _, mut operator, _dir) =
        start_with(&["--no-leader-election"], None, Served::new(true, hanging));
    eventually("the Deployment's apply to be sent", || {
        first(&log, DEPLOYMENT_APPLY).is_some()
    });
    assert!(operator.terminate().success());
}

#[test]
fn with_leader_election_the_controllers_start_only_once_the_lease_is_held() {
    let (admin, log, lease, mut operator, _dir) = start(&[], None);
    eventually("the Deployment to be applied", || {
        first(&log, DEPLOYMENT_APPLY).is_some()
    });
    let lease_patch = format!("PATCH {LEASE_PATH}/rigging-operator");
    let created = first(&log, &format!("POST {LEASE_PATH}")).expect("the missing Lease is created");
    let acquired = first(&log, &lease_patch).expect("the Lease is taken");
    let watching = first(&log, LIST_REPLICATED_SERVICES).unwrap();
    assert!(
        created < acquired && acquired < watching,
        "{:?}",
        log.lock().unwrap()
    );
    let holder = lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"].clone();
    assert_eq!(holder, "operator-0");
    assert_eq!(http_get(admin, "/readyz").map(|(s, _)| s), Some(200));

    // A leader that stops hands the Lease back rather than letting followers wait it out.
    assert!(operator.terminate().success());
    let spec = lease.lock().unwrap().as_ref().unwrap()["spec"].clone();
    assert!(
        spec.get("holderIdentity").is_none(),
        "Lease still held: {spec}"
    );
}

#[test]
fn a_follower_stops_on_sigterm_without_ever_watching() {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let held = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "rigging-operator", "namespace": "rigging-system", "resourceVersion": "1"},
        "spec": {"holderIdentity": "operator-1", "leaseDurationSeconds": 3600, "acquireTime": now, "renewTime": now},
    });
    let (admin, log, lease, mut operator, _dir) = start(&[], Some(held));
    eventually("/readyz to answer 200", || {
        http_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert!(operator.terminate().success());
    assert_eq!(
        first(&log, LIST_REPLICATED_SERVICES),
        None,
        "a follower never runs the controllers"
    );
    assert_eq!(
        lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"],
        "operator-1"
    );
}

#[test]
fn a_follower_is_ready_waits_for_the_lease_and_takes_over_when_it_expires() {
    // Another replica holds the Lease and has stopped renewing it: it expires in 2 s.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let held = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "rigging-operator", "namespace": "rigging-system", "resourceVersion": "1"},
        "spec": {"holderIdentity": "operator-1", "leaseDurationSeconds": 2, "acquireTime": now, "renewTime": now},
    });
    let (admin, log, lease, _operator, _dir) = start(&[], Some(held));
    eventually("/readyz to answer 200", || {
        http_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    eventually("the Deployment to be applied", || {
        first(&log, DEPLOYMENT_APPLY).is_some()
    });
    let lease_get = format!("GET {LEASE_PATH}/rigging-operator");
    let read = first(&log, &lease_get).expect("the Lease is read");
    let acquired =
        first(&log, &format!("PATCH {LEASE_PATH}/rigging-operator")).expect("the Lease is taken");
    let watching = first(&log, LIST_REPLICATED_SERVICES).unwrap();
    assert!(
        read < acquired && acquired < watching,
        "{:?}",
        log.lock().unwrap()
    );
    assert_eq!(
        first(&log, &format!("POST {LEASE_PATH}")),
        None,
        "an existing Lease is not recreated"
    );
    assert_eq!(
        lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"],
        "operator-0"
    );
}

/// The response headers of `curl --http1.1` GETting `/healthz` from the webhook on `port`,
/// lower-cased.
fn webhook_healthz_headers(port: u16) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--insecure",
            "--http1.1",
            "-o",
            "/dev/null",
            "-D",
            "-",
        ])
        .arg(format!("https://127.0.0.1:{port}/healthz"))
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

#[test]
fn from_sigterm_on_the_webhooks_replies_close_their_connections_while_it_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    let port = free_port();
    let mut webhook = Operator(
        Command::new(env!("CARGO_BIN_EXE_rigging-operator"))
            .args(["webhook", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", "127.0.0.1:0", "--sidecar-image", "s:1"])
            .args(["--shutdown-delay", "3s"])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rigging-operator webhook"),
    );
    eventually("the webhook to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // Serving, a reply keeps its connection for the next review.
    let serving = webhook_healthz_headers(port);
    assert!(serving.starts_with("http/1.1 200"), "{serving}");
    assert!(!serving.contains("connection: close"), "{serving}");

    let sent = Command::new("kill")
        .args(["-TERM", &webhook.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGTERM delivered");
    // Stopping, it still answers (the delay), and leaves no connection to reuse.
    eventually("a reply that closes its connection", || {
        webhook_healthz_headers(port).contains("connection: close")
    });
    let stopping = webhook_healthz_headers(port);
    assert!(stopping.starts_with("http/1.1 200"), "{stopping}");
    let mut exit = None;
    eventually("the webhook to exit after its delay", || {
        exit = webhook.0.try_wait().unwrap();
        exit.is_some()
    });
    assert!(exit.unwrap().success());
}
