//! The ShardedService, end to end without a cluster.
//!
//! - Against the mocked API server of [`crate::mock_api`]: each scenario lists the exact
//!   requests expected — method, path and body — and answers them; any other request
//!   stalls the reconcile and fails the test.
//! - Against real processes: the ring ConfigMap the operator renders, its names pointed at
//!   real `redis-server` and `memcached` processes on 127.0.0.1, drives the real shard
//!   sidecar started with the arguments the operator renders; what is written through it
//!   is read back through it, and sits on the server the ring names.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::ports::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child as Process, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use rigging_crds::ShardedService;
use rigging_crds::sidecar::shard::hash::{HashKind, md5};
use rigging_crds::sidecar::shard::ring::{HashTag, Ring, ServerSpec, moved_share};
use rigging_crds::sidecar::shard::{RingReport, ShardArgs, ShardConfig};
use rigging_operator::Context;
use rigging_operator::controller::{Applied, Child, RESYNC, RenderConfig};
use rigging_operator::render;
use rigging_operator::sharded_service::desired::{self, Children};
use rigging_operator::sharded_service::status;
use rigging_sidecar::cli::{Cli, Command as SidecarCommand};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixtures::root;
use crate::mock_api::{condition, config, run_scenario, served};

// ---------------------------------------------------------------------------------------
// The reconcile against a mocked API server.
// ---------------------------------------------------------------------------------------

/// A redis ShardedService `cache` in namespace `shop` as the API server would hand it to
/// the controller, with `extra_spec` laid over the smallest spec.
fn sharded_service(extra_spec: Value) -> ShardedService {
    let metadata = json!({"name": "cache", "namespace": "shop", "uid": "uid-7", "generation": 2, "resourceVersion": "50"});
    let spec = json!({
        "shards": 3,
        "protocol": "redis",
        "port": 6379,
        "template": {"spec": {"containers": [{
            "name": "redis", "image": "redis:7",
            "readinessProbe": {"tcpSocket": {"port": 6379}}
        }]}}
    });
    served(metadata, spec, extra_spec)
}

/// `ss` after a reconcile of `before` applied its children and wrote its status.
fn reconciled(before: &ShardedService, mut ss: ShardedService) -> ShardedService {
    let applied = Applied::new(children(before).into_vec());
    ss.status = Some(status::observed(before, &applied, None, Timestamp::now()));
    ss
}

fn children(ss: &ShardedService) -> Children {
    desired::desired(ss, &config().render).unwrap()
}

fn ring_file(c: &Children) -> String {
    c.ring.data.as_ref().unwrap()["shard.yaml"].clone()
}

/// Servers of weight 1 named `members`, as the continuum sees them.
fn named(members: &[String]) -> Vec<ServerSpec> {
    members
        .iter()
        .map(|m| format!("{m}:1:1 {m}").parse().unwrap())
        .collect()
}

fn unchanged(ctx: &Context, kind: &str) -> u64 {
    ctx.metrics
        .applies
        .with_label_values(&["ShardedService", kind, "unchanged"])
        .get()
}

#[tokio::test]
async fn a_new_sharded_service_gets_every_child_applied_in_order_and_a_status() {
    let ss = sharded_service(json!({}));
    let want = children(&ss);
    let ss2 = ss.clone();
    let (result, _) = run_scenario(ss, [], move |mut api| async move {
        let ns = "/namespaces/shop";
        api.apply(
            &format!("/apis/networking.k8s.io/v1{ns}/networkpolicies/cache"),
            &want.network_policy,
        )
        .await;
        api.apply(&format!("/api/v1{ns}/configmaps/cache-ring"), &want.ring)
            .await;
        api.apply(
            &format!("/api/v1{ns}/services/cache-shards"),
            &want.headless,
        )
        .await;
        api.apply(
            &format!("/apis/apps/v1{ns}/statefulsets/cache"),
            &want.statefulsets[0],
        )
        .await;
        api.apply(
            &format!("/apis/apps/v1{ns}/deployments/cache-router"),
            want.router.as_ref().unwrap(),
        )
        .await;
        api.apply(
            &format!("/api/v1{ns}/services/cache"),
            want.service.as_ref().unwrap(),
        )
        .await;
        let status = api.status(&ss2).await;
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["members"], json!(["cache-0", "cache-1", "cache-2"]));
        assert_eq!(
            status["ringVersion"],
            desired::ring_version(&ring_file(&want))
        );
        assert_eq!(status["readyShards"], 0);
        assert!(
            status.get("movedKeyShare").is_none(),
            "a first ring moved nothing: {status}"
        );
        let summary: Vec<(&str, &str, &str)> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                assert_eq!(c["observedGeneration"], 2);
                (
                    c["type"].as_str().unwrap(),
                    c["status"].as_str().unwrap(),
                    c["reason"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("Ready", "False", "ShardsNotReady"),
                ("Progressing", "True", "RollingOut"),
                ("Degraded", "False", "Reconciled"),
            ]
        );
        // No Event: the ring did not change, it began.
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
}

/// `sts` as its controller reports it: `pods` pods of its current spec, `ready` of them
/// ready.
fn reported(mut sts: StatefulSet, pods: i32, ready: i32) -> StatefulSet {
    sts.metadata.generation = Some(1);
    sts.status = Some(StatefulSetStatus {
        observed_generation: Some(1),
        replicas: pods,
        ready_replicas: Some(ready),
        updated_replicas: Some(pods),
        ..StatefulSetStatus::default()
    });
    sts
}

/// The cache of a ShardedService whose ring is `ring`'s and whose StatefulSet is
/// `pods_of`'s, with `ready` of its pods ready.
fn cached(ring: &ShardedService, pods_of: &ShardedService, ready: i32) -> Vec<Child> {
    let mut all = children(ring);
    let pods = children(pods_of);
    let want = pods.statefulsets[0]
        .spec
        .as_ref()
        .unwrap()
        .replicas
        .unwrap();
    all.statefulsets = vec![reported(pods.statefulsets[0].clone(), want, ready)];
    all.into_vec()
}

const PODS: &str = "/api/v1/namespaces/shop/pods?&labelSelector=app.kubernetes.io%2Fcomponent%3Drouter%2Capp.kubernetes.io%2Finstance%3Dcache%2Capp.kubernetes.io%2Fname%3Dcache";

/// A router's admin port on 127.0.0.1 answering `GET /ring` with `report`; its port.
async fn router_serving(report: RingReport) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = serde_json::to_string(&report).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = vec![0; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]);
                let answer = if head.starts_with("GET /ring HTTP/1.1\r\n") {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// A router pod as the API server lists it: running on 127.0.0.1 with its admin port on
/// `port`.
fn router_pod(name: &str, port: u16) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app.kubernetes.io/component": "router"}},
        "spec": {"nodeName": "node-1", "containers": [{
            "name": "rigging-shard",
            "ports": [{"name": "redis", "containerPort": 6379}, {"name": "shard-admin", "containerPort": port}]
        }]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"}
    })
}

fn pod_list(pods: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": pods})
}

/// What a router serving `ss`'s ring reports.
fn serving(ss: &ShardedService) -> RingReport {
    let c = children(ss);
    RingReport {
        version: Some(desired::ring_version(&ring_file(&c))),
        members: desired::members(ss),
    }
}

#[tokio::test]
async fn a_new_shard_gets_its_pod_at_once_and_joins_the_ring_once_every_pod_is_ready() {
    let three = sharded_service(json!({}));
    let four = reconciled(&three, sharded_service(json!({"shards": 4})));
    let want = children(&four);
    let four2 = four.clone();
    let four_pods = want.statefulsets[0].clone();
    // The pods of three shards are ready; the spec asks for four.
    let (result, ctx) = run_scenario(
        four.clone(),
        cached(&three, &three, 3),
        move |mut api| async move {
            api.apply(
                "/apis/apps/v1/namespaces/shop/statefulsets/cache",
                &four_pods,
            )
            .await;
            let status = api.status(&four2).await;
            assert_eq!(
                status["members"],
                json!(["cache-0", "cache-1", "cache-2"]),
                "the ring waits for the new shard"
            );
            let progressing = condition(&status, "Progressing");
            assert_eq!(progressing["reason"], "ShardsJoining");
            assert_eq!(
                progressing["message"],
                "the ring names cache-3 once every shard pod is ready (0/4 shards ready)"
            );
            api
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    assert_eq!(unchanged(&ctx, "ConfigMap"), 1, "the ring stays as it is");

    // Four pods, all ready: the ring names the new shard; the routers reload it from the
    // ConfigMap, so their Deployment is not touched and no client connection drops.
    let joining = reconciled(&three, sharded_service(json!({"shards": 4})));
    let before = joining.status.clone().unwrap();
    let expected_share = moved_share(&named(&before.members), &named(&desired::members(&joining)));
    let joining2 = joining.clone();
    let (result, ctx) = run_scenario(
        joining,
        cached(&three, &four, 4),
        move |mut api| async move {
            api.apply("/api/v1/namespaces/shop/configmaps/cache-ring", &want.ring)
                .await;
            let status = api.status(&joining2).await;
            assert_eq!(
                status["members"],
                json!(["cache-0", "cache-1", "cache-2", "cache-3"])
            );
            let version = desired::ring_version(&ring_file(&want));
            assert_eq!(status["ringVersion"], version);
            assert_ne!(Some(version.as_str()), before.ring_version.as_deref());
            assert_eq!(status["movedKeyShare"], expected_share);
            assert_ne!(condition(&status, "Progressing")["reason"], "ShardsJoining");
            let event = api.event().await;
            assert_eq!(event["type"], "Normal");
            assert_eq!(event["reason"], "RingChanged");
            assert_eq!(event["regarding"]["name"], "cache");
            let note = event["note"].as_str().unwrap();
            assert!(
                note.contains(&format!(
                    "3 → 4 members, {:.1}% of the key space moved",
                    expected_share * 100.0
                )),
                "{note}"
            );
            api
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    // Consistent hashing: about one shard's worth of keys moved, not a reshuffle.
    assert!((0.15..0.35).contains(&expected_share), "{expected_share}");
    assert_eq!(unchanged(&ctx, "StatefulSet"), 1);
    assert_eq!(unchanged(&ctx, "Deployment"), 1);
    assert_eq!(unchanged(&ctx, "NetworkPolicy"), 1);
}

#[tokio::test]
async fn a_removed_shard_leaves_the_ring_first_and_its_pod_waits_for_every_router() {
    let four = sharded_service(json!({"shards": 4}));
    let three = reconciled(&four, sharded_service(json!({})));
    let want = children(&three);
    let new_ring = serving(&three);
    let version = new_ring.version.clone().unwrap();
    let loaded = router_serving(new_ring.clone()).await;
    let lagging = router_serving(serving(&four)).await;
    let old_version = serving(&four).version.unwrap();
    let three2 = three.clone();
    let version2 = version.clone();
    let (result, ctx) = run_scenario(three, cached(&four, &four, 4), move |mut api| async move {
        let version = version2;
        api.answer(
            Method::GET,
            PODS,
            StatusCode::OK,
            pod_list(vec![router_pod("cache-router-a", loaded), router_pod("cache-router-b", lagging)]),
        )
        .await;
        api.apply("/api/v1/namespaces/shop/configmaps/cache-ring", &want.ring)
            .await;
        // The StatefulSet keeps its fourth pod: no apply.
        let status = api.status(&three2).await;
        assert_eq!(status["members"], json!(["cache-0", "cache-1", "cache-2"]));
        assert_eq!(status["leavingShards"], json!(["cache-3"]));
        assert_eq!(status["ringVersion"], version);
        let progressing = condition(&status, "Progressing");
        assert_eq!(progressing["reason"], "ShardsLeaving");
        assert_eq!(
            progressing["message"],
            format!(
                "the ring no longer names cache-3 (version {version}); its pods are removed once every router serves that version: cache-router-b serves ring version {old_version} (cache-0, cache-1, cache-2, cache-3)"
            )
        );
        let changed = api.event().await;
        assert_eq!(changed["reason"], "RingChanged");
        assert!(changed["note"].as_str().unwrap().contains("4 → 3 members"));
        let leaving = api.event().await;
        assert_eq!(leaving["reason"], "ShardsLeaving");
        assert_eq!(
            leaving["note"],
            format!(
                "the ring no longer names cache-3 (version {version}); its pods are removed once every router serves that version"
            )
        );
        api
    })
    .await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(status::LEAVING_RECHECK),
        "no watch event tells when a router loads the ring: asked again soon"
    );
    assert_eq!(unchanged(&ctx, "StatefulSet"), 1);

    // Both routers serve the new ring: the fourth pod goes.
    let waiting = leaving_three();
    let caught_up = router_serving(new_ring).await;
    let waiting2 = waiting.clone();
    let want = children(&waiting);
    let (result, _) = run_scenario(waiting, cached(&waiting2, &four, 4), move |mut api| async move {
        api.answer(
            Method::GET,
            PODS,
            StatusCode::OK,
            pod_list(vec![router_pod("cache-router-a", loaded), router_pod("cache-router-b", caught_up)]),
        )
        .await;
        api.apply(
            "/apis/apps/v1/namespaces/shop/statefulsets/cache",
            &want.statefulsets[0],
        )
        .await;
        let status = api.status(&waiting2).await;
        assert!(status.get("leavingShards").is_none(), "{status}");
        let removed = api.event().await;
        assert_eq!(removed["reason"], "ShardsRemoved");
        assert_eq!(
            removed["note"],
            format!(
                "cache-3 removed: every router serves ring version {version}, which does not name it; its keys were not copied to another shard"
            )
        );
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
}

/// Three shards, after a reconcile took the fourth off the ring and left its pod waiting
/// for the routers.
fn leaving_three() -> ShardedService {
    let three = sharded_service(json!({}));
    let mut ss = reconciled(&three, three.clone());
    ss.status.as_mut().unwrap().leaving_shards = vec!["cache-3".into()];
    ss
}

#[tokio::test]
async fn a_router_that_cannot_be_asked_holds_the_removal_and_a_failed_list_is_retried() {
    let four = sharded_service(json!({"shards": 4}));
    let three = leaving_three();
    let three2 = three.clone();
    let mut no_ip = router_pod("cache-router-new", 1);
    no_ip["status"] = json!({"phase": "Pending"});
    let (result, _) = run_scenario(
        three.clone(),
        cached(&three, &four, 4),
        move |mut api| async move {
            api.answer(Method::GET, PODS, StatusCode::OK, pod_list(vec![no_ip]))
                .await;
            let status = api.status(&three2).await;
            let message = condition(&status, "Progressing")["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                message.ends_with(": cache-router-new did not answer (no pod IP yet)"),
                "{message}"
            );
            api
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(status::LEAVING_RECHECK));

    let (result, _) = run_scenario(three.clone(), cached(&three, &four, 4), move |mut api| async move {
        let refused = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "etcd is down"});
        api.answer(Method::GET, PODS, StatusCode::INTERNAL_SERVER_ERROR, refused)
            .await;
        api
    })
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.metric_label(), "list_pods");
    assert!(
        error
            .to_string()
            .starts_with("listing pods app.kubernetes.io/component=router,"),
        "{error}"
    );
}

#[tokio::test]
async fn a_removed_replicated_shard_keeps_its_objects_until_the_routers_serve_the_ring_without_it()
{
    let spec = json!({"replicasPerShard": 2});
    let three = sharded_service(spec.clone());
    let mut two_spec = spec;
    two_spec["shards"] = json!(2);
    let two = reconciled(&three, sharded_service(two_spec));
    let want = children(&two);
    let new_ring = router_serving(serving(&two)).await;
    let two2 = two.clone();
    let (result, _) = run_scenario(
        two,
        children(&three).into_vec(),
        move |mut api| async move {
            api.answer(
                Method::GET,
                PODS,
                StatusCode::OK,
                pod_list(vec![router_pod("cache-router-a", new_ring)]),
            )
            .await;
            // The ring without shard 2 first, then what served shard 2 goes.
            api.apply("/api/v1/namespaces/shop/configmaps/cache-ring", &want.ring)
                .await;
            api.delete("/apis/apps/v1/namespaces/shop/statefulsets/cache-2")
                .await;
            api.delete("/api/v1/namespaces/shop/services/cache-2").await;
            let status = api.status(&two2).await;
            assert_eq!(status["members"], json!(["cache-0", "cache-1"]));
            let share = status["movedKeyShare"].as_f64().unwrap();
            assert!(
                (0.2..0.45).contains(&share),
                "shard 2's third moved: {share}"
            );
            assert_eq!(api.event().await["reason"], "RingChanged");
            api
        },
    )
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_router_port_on_the_admin_port_gets_an_event_and_a_degraded_status_and_nothing_applied() {
    let ss = sharded_service(json!({"router": {"port": 9122}}));
    let ss2 = ss.clone();
    let (result, _) = run_scenario(ss, [], move |mut api| async move {
        let event = api.event().await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "InvalidSpec");
        let note = event["note"].as_str().unwrap();
        assert!(note.starts_with("spec.router.port: port 9122"), "{note}");
        let status = api.status(&ss2).await;
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (&degraded["status"], &degraded["reason"]),
            (&json!("True"), &json!("InvalidSpec"))
        );
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
}

// ---------------------------------------------------------------------------------------
// The rendered ring and sidecar arguments against real servers and the real sidecar.
// ---------------------------------------------------------------------------------------

/// The full path of a tool `scripts/test.sh` installs; panics with a hint when absent.
fn require_tool(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: run scripts/test.sh, which installs the test tools")
        })
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until something accepts connections on `addr`.
fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server process on 127.0.0.1, killed when dropped.
struct Server {
    process: Process,
    addr: SocketAddr,
}

impl Server {
    fn start(tool: &str, args: &[&str], port: u16) -> Server {
        let process = Command::new(require_tool(tool))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {tool}: {e}"));
        let addr = local(port);
        wait_port(addr);
        Server { process, addr }
    }

    fn redis() -> Server {
        let port = free_port();
        let p = port.to_string();
        let args = [
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        Server::start("redis-server", &args, port)
    }

    fn memcached() -> Server {
        let port = free_port();
        let p = port.to_string();
        // As `nobody`: memcached refuses to run as root.
        let args = [
            "-l",
            "127.0.0.1",
            "-p",
            &p,
            "-U",
            "0",
            "-u",
            "nobody",
            "-m",
            "32",
        ];
        Server::start("memcached", &args, port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A line-oriented connection: RESP and the memcached text protocol both are.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a reply line");
        assert!(line.ends_with("\r\n"), "truncated reply {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    /// Sends a RESP command; returns its reply, a bulk string as `Some`, nil as `None`,
    /// a status or integer as its text.
    fn redis(&mut self, args: &[&str]) -> Option<String> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.writer.write_all(out.as_bytes()).unwrap();
        let line = self.line();
        match line.split_at(1) {
            ("$", "-1") => None,
            ("$", n) => {
                let mut data = vec![0; n.parse::<usize>().unwrap() + 2];
                self.reader.read_exact(&mut data).unwrap();
                data.truncate(data.len() - 2);
                Some(String::from_utf8(data).unwrap())
            }
            ("+" | ":", text) => Some(text.to_owned()),
            _ => panic!("{args:?}: {line}"),
        }
    }

    fn mc_set(&mut self, key: &str, value: &str) {
        let cmd = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        self.writer.write_all(cmd.as_bytes()).unwrap();
        assert_eq!(self.line(), "STORED", "set {key}");
    }

    fn mc_get(&mut self, key: &str) -> Option<String> {
        self.writer
            .write_all(format!("get {key}\r\n").as_bytes())
            .unwrap();
        let first = self.line();
        if first == "END" {
            return None;
        }
        assert!(first.starts_with(&format!("VALUE {key} ")), "{first}");
        let value = self.line();
        assert_eq!(self.line(), "END");
        Some(value)
    }
}

/// What `render` makes of `manifest` (YAML), as JSON objects.
fn rendered(manifest: &str) -> Vec<Value> {
    render::render_values("test.yaml", manifest, &RenderConfig::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("render made no {kind} {name}"))
}

/// The ring file of the ConfigMap `name`, parsed with the sidecar's own type.
fn ring_of(objects: &[Value], name: &str) -> ShardConfig {
    let text = object(objects, "ConfigMap", name)["data"]["shard.yaml"]
        .as_str()
        .unwrap();
    serde_norway::from_str(text).expect("the ring file parses as the sidecar's ShardConfig")
}

/// The args of the `rigging-shard` container in the pod template of `workload`, parsed
/// by the sidecar's own command line.
fn shard_args_of(workload: &Value) -> ShardArgs {
    let pod = &workload["spec"]["template"]["spec"];
    let container = ["containers", "initContainers"]
        .iter()
        .flat_map(|list| pod[list].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == "rigging-shard")
        .expect("a rigging-shard container");
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    let argv = std::iter::once("rigging-sidecar".to_owned()).chain(args);
    match Cli::try_parse_from(argv)
        .expect("the sidecar parses what the operator renders")
        .command
    {
        SidecarCommand::Shard(args) => args,
        other => panic!("not the shard sidecar: {other:?}"),
    }
}

/// `ring` with every server's HOST:PORT replaced by the process its NAME stands for here,
/// keeping the NAME, which alone places keys.
fn pointed_at(ring: &ShardConfig, servers: &BTreeMap<String, SocketAddr>) -> ShardConfig {
    let repointed = ring
        .servers
        .iter()
        .flatten()
        .map(|s| {
            let mut spec: ServerSpec = s.parse().unwrap();
            let name = spec.name.clone().expect("every server is named");
            let addr = servers[&name];
            (spec.host, spec.port) = (addr.ip().to_string(), addr.port());
            spec.to_string()
        })
        .collect();
    ShardConfig {
        servers: Some(repointed),
        ..ring.clone()
    }
}

/// The ring the file describes, and its servers' names in order.
fn ring(file: &ShardConfig) -> (Ring, Vec<String>) {
    let specs: Vec<ServerSpec> = file
        .servers
        .iter()
        .flatten()
        .map(|s| s.parse().unwrap())
        .collect();
    let hash: HashKind = file.hash.as_deref().unwrap().parse().unwrap();
    let tag = file.hash_tag.as_deref().and_then(HashTag::parse);
    let names = specs.iter().map(ServerSpec::ring_name).collect();
    (Ring::new(&specs, &[], hash, tag), names)
}

/// Writes `file` where the sidecar reads it, in one rename (as the kubelet swaps a
/// ConfigMap volume's files), so that it never reads half a file.
fn write_ring(path: &Path, file: &ShardConfig) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_norway::to_string(file).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Starts the real shard sidecar in this process with the `rendered` arguments, on free
/// loopback ports and with the ring file at `ring`; returns where clients connect.
fn start_sidecar(mut args: ShardArgs, ring: &Path) -> SocketAddr {
    args.listen = local(free_port());
    args.admin = local(free_port());
    args.config = Some(ring.to_owned());
    let listen = args.listen;
    tokio::spawn(async move {
        if let Err(e) = rigging_sidecar::shard::run(args).await {
            panic!("the shard sidecar stopped: {e}");
        }
    });
    wait_port(listen);
    listen
}

fn example_with_shards(shards: i32) -> String {
    let text = std::fs::read_to_string(root().join("examples/sharded-redis/router.yaml")).unwrap();
    let mut doc: Value = serde_norway::from_str(&text).unwrap();
    doc["spec"]["shards"] = json!(shards);
    serde_norway::to_string(&doc).unwrap()
}

// Blocking clients run on the test's own thread; the sidecar runs on the runtime's
// workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_ring_routes_redis_keys_through_the_real_router_and_reloads_in_place() {
    let objects = rendered(&example_with_shards(3));
    let file = ring_of(&objects, "sessions-ring");
    let args = shard_args_of(object(&objects, "Deployment", "sessions-router"));
    let mut servers: Vec<Server> = (0..3).map(|_| Server::redis()).collect();
    let by_name = |servers: &[Server]| -> BTreeMap<String, SocketAddr> {
        (0..servers.len())
            .map(|i| (format!("sessions-{i}"), servers[i].addr))
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.yaml");
    let here = pointed_at(&file, &by_name(&servers));
    write_ring(&path, &here);
    let router = start_sidecar(args, &path);

    // Every key written through the router reads back through it…
    let mut client = Conn::open(router);
    // Keys as apps make them: ids spread over their space. (Keys that differ only in
    // their last characters hash close together under twemproxy's fnv1a_64, whose 32-bit
    // prime is tiny, and would measure a few arcs of the continuum, not the key space.)
    let mut keys: Vec<String> = (0..600u32)
        .map(|i| {
            let id: String = md5(&i.to_le_bytes())[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("session:{id}")
        })
        .collect();
    keys.extend((0..20).flat_map(|u| [format!("{{user{u}}}:cart"), format!("{{user{u}}}:orders")]));
    for key in &keys {
        assert_eq!(
            client.redis(&["SET", key, &format!("v-{key}")]).as_deref(),
            Some("OK")
        );
    }
    for key in &keys {
        assert_eq!(
            client.redis(&["GET", key]),
            Some(format!("v-{key}")),
            "{key}"
        );
    }
    // …and sits on the server the ring names, and on no other.
    let (old_ring, names) = ring(&here);
    let mut direct: Vec<Conn> = servers.iter().map(|s| Conn::open(s.addr)).collect();
    let mut per_shard = [0; 3];
    for key in &keys {
        let owner = old_ring.server_for(key.as_bytes()).unwrap();
        assert_eq!(names[owner], format!("sessions-{owner}"));
        per_shard[owner] += 1;
        for (i, conn) in direct.iter_mut().enumerate() {
            let held = conn.redis(&["EXISTS", key]).unwrap();
            assert_eq!(
                held == "1",
                i == owner,
                "{key} on server {i}; the ring says {owner}"
            );
        }
    }
    assert!(
        per_shard.iter().all(|&n| n > 100),
        "keys spread over the shards: {per_shard:?}"
    );
    // The hash tag keeps one user's keys together.
    for u in 0..20 {
        let cart = old_ring.server_for(format!("{{user{u}}}:cart").as_bytes());
        assert_eq!(
            cart,
            old_ring.server_for(format!("{{user{u}}}:orders").as_bytes())
        );
    }

    // A fourth shard: the operator renders the new ring; the router reloads it with the
    // client's connection open.
    let resharded = rendered(&example_with_shards(4));
    assert_eq!(
        object(&resharded, "Deployment", "sessions-router"),
        object(&objects, "Deployment", "sessions-router"),
        "the routers are not rolled out for a new ring"
    );
    servers.push(Server::redis());
    let next = pointed_at(&ring_of(&resharded, "sessions-ring"), &by_name(&servers));
    write_ring(&path, &next);
    let (new_ring, new_names) = ring(&next);
    let probe = (0..)
        .map(|i| format!("probe:{i}"))
        .find(|k| new_ring.server_for(k.as_bytes()) == Some(3))
        .unwrap();
    let mut fourth = Conn::open(servers[3].addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(client.redis(&["SET", &probe, "x"]).as_deref(), Some("OK"));
        if fourth.redis(&["EXISTS", &probe]).as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router never loaded the new ring"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // On the same connection: a key reads back where it stayed, and misses where it moved
    // (to a shard that never held it) — exactly the keys the rings disagree on.
    let mut moved = 0;
    for key in &keys {
        let before = &names[old_ring.server_for(key.as_bytes()).unwrap()];
        let after = &new_names[new_ring.server_for(key.as_bytes()).unwrap()];
        let read = client.redis(&["GET", key]);
        if before == after {
            assert_eq!(read, Some(format!("v-{key}")), "{key} stayed on {before}");
        } else {
            assert_eq!(after, "sessions-3", "{key} moved from {before} to {after}");
            assert_eq!(read, None, "{key} moved to {after}");
            moved += 1;
        }
    }
    // The share the status reports is the share of keys that moved.
    let share = moved_share(&named(&names), &named(&new_names));
    let seen = moved as f64 / keys.len() as f64;
    assert!(
        (seen - share).abs() < 0.05,
        "{seen} of the keys moved; the status says {share}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ambassador_of_a_client_pod_routes_memcached_keys_by_the_rendered_ring() {
    let manifest = r#"
apiVersion: rigging.dev/v1alpha1
kind: ShardedService
metadata: {name: memo}
spec:
  shards: 3
  protocol: memcached
  port: 11211
  router: {mode: Ambassador}
  template:
    spec:
      containers:
        - {name: memcached, image: memcached:1.6, readinessProbe: {tcpSocket: {port: 11211}}}
---
apiVersion: rigging.dev/v1alpha1
kind: ReplicatedService
metadata: {name: web}
spec:
  port: 8080
  sidecars: {shard: {service: memo, port: 11211}}
  template:
    spec:
      containers:
        - {name: app, image: app:1, readinessProbe: {tcpSocket: {port: 8080}}}
"#;
    let objects = rendered(manifest);
    let file = ring_of(&objects, "memo-ring");
    // The ambassador as the client's pod runs it: no protocol flag, the ring file says.
    let args = shard_args_of(object(&objects, "Deployment", "web"));
    assert_eq!(args.protocol, None);
    let servers: Vec<Server> = (0..3).map(|_| Server::memcached()).collect();
    let by_name: BTreeMap<String, SocketAddr> = (0..3)
        .map(|i| (format!("memo-{i}"), servers[i].addr))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.yaml");
    let here = pointed_at(&file, &by_name);
    write_ring(&path, &here);
    let ambassador = start_sidecar(args, &path);

    let mut client = Conn::open(ambassador);
    let keys: Vec<String> = (0..300).map(|i| format!("page:{i}")).collect();
    for key in &keys {
        client.mc_set(key, &format!("v-{key}"));
    }
    for key in &keys {
        assert_eq!(client.mc_get(key), Some(format!("v-{key}")), "{key}");
    }
    let (ring, _) = ring(&here);
    let mut direct: Vec<Conn> = servers.iter().map(|s| Conn::open(s.addr)).collect();
    for key in &keys {
        let owner = ring.server_for(key.as_bytes()).unwrap();
        for (i, conn) in direct.iter_mut().enumerate() {
            let held = conn.mc_get(key);
            assert_eq!(
                held.is_some(),
                i == owner,
                "{key} on server {i}; the ring says {owner}"
            );
        }
    }
}
