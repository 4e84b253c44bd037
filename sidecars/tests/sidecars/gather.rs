//! `rigging-sidecar gather` as users run it: the real binary in front of test leaves on
//! 127.0.0.1 whose answers and speed each test sets, and which count the requests they
//! started, finished and saw cancelled (their client went away before the answer).
//!
//! Times in these tests are margins, never speeds: "the answer came before the slow leaf
//! would have answered" with seconds to spare, so a slow machine only makes them slower.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::support::{Proc, free_port, http_get, local, metric, sidecar_bin, wait_ready};

/// What a [`Leaf`] saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A leaf's settings and counts, shared with its server task.
#[derive(Default)]
struct LeafState {
    /// Milliseconds to wait before answering.
    delay_ms: AtomicU64,
    status: AtomicU16,
    body: Mutex<String>,
    content_type: Mutex<String>,
    started: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

/// A leaf: an HTTP/1.1 keep-alive server (hyper) on a free port of 127.0.0.1.
#[derive(Clone)]
struct Leaf {
    addr: SocketAddr,
    state: Arc<LeafState>,
}

/// Counts a request as cancelled when its handler is dropped before it answered: hyper
/// drops it when the client's connection closes.
struct Unfinished {
    state: Arc<LeafState>,
    done: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.done {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Leaf {
    /// A leaf answering `200 application/json` with `body`, at once.
    async fn start(body: impl Into<String>) -> Leaf {
        let state = Arc::new(LeafState::default());
        state.status.store(200, Ordering::SeqCst);
        *state.body.lock().unwrap() = body.into();
        *state.content_type.lock().unwrap() = "application/json".into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, hyper::Error>(answer(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Leaf { addr, state }
    }

    fn slow(self, delay: Duration) -> Leaf {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
        self
    }

    fn answering(self, status: u16, content_type: &str) -> Leaf {
        self.state.status.store(status, Ordering::SeqCst);
        *self.state.content_type.lock().unwrap() = content_type.into();
        self
    }

    fn started(&self) -> u64 {
        self.state.started.load(Ordering::SeqCst)
    }

    fn completed(&self) -> u64 {
        self.state.completed.load(Ordering::SeqCst)
    }

    fn cancelled(&self) -> u64 {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn answer(state: Arc<LeafState>, req: Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.started.fetch_add(1, Ordering::SeqCst);
    state.seen.lock().unwrap().push(Seen {
        method: parts.method,
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let mut unfinished = Unfinished {
        state: state.clone(),
        done: false,
    };
    let delay = state.delay_ms.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    unfinished.done = true;
    state.completed.fetch_add(1, Ordering::SeqCst);
    hyper::Response::builder()
        .status(state.status.load(Ordering::SeqCst))
        .header("content-type", state.content_type.lock().unwrap().clone())
        .body(Full::new(Bytes::from(state.body.lock().unwrap().clone())))
        .unwrap()
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    local(free_port())
}

/// A config file with one shard per entry of `shards` (its replicas) and `rest`.
fn config(shards: &[&[SocketAddr]], rest: &str) -> String {
    let mut text = String::from("shards:\n");
    for replicas in shards {
        let replicas: Vec<String> = replicas.iter().map(|r| format!("\"{r}\"")).collect();
        text.push_str(&format!("  - replicas: [{}]\n", replicas.join(", ")));
    }
    text + rest
}

/// `rigging-sidecar gather` on free ports, its config file in a temporary directory.
struct Root {
    proc: Proc,
    listen: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

/// The root's answer to one request.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn coverage(&self) -> &str {
        self.headers
            .get("rigging-coverage")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl Root {
    fn start(config: &str, extra: &[&str]) -> Root {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gather.yaml");
        std::fs::write(&path, config).unwrap();
        let (listen, admin) = (local(free_port()), local(free_port()));
        let flags = [
            ("--config", path.display().to_string()),
            ("--listen", listen.to_string()),
            ("--admin", admin.to_string()),
            ("--reload-interval", "100ms".to_owned()),
        ];
        let args: Vec<&str> = std::iter::once("gather")
            .chain(
                flags
                    .iter()
                    .flat_map(|(flag, value)| [*flag, value.as_str()]),
            )
            .chain(extra.iter().copied())
            .collect();
        let proc = Proc::sidecar(&args);
        wait_ready(admin, Duration::from_secs(10));
        Root {
            proc,
            listen,
            admin,
            config: path,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: dir,
        }
    }

    async fn request(&self, method: Method, path: &str, body: &str) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.listen))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self
            .client
            .request(request)
            .await
            .expect("the root answers");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, "").await
    }

    fn metric(&self, series: &str) -> f64 {
        metric(self.admin, series)
    }

    fn status(&self) -> Value {
        let (code, body) = http_get(self.admin, "/status").expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    fn reloads(&self) -> f64 {
        self.metric(r#"rigging_gather_config_reloads_total{result="ok"}"#)
            + self.metric(r#"rigging_gather_config_reloads_total{result="failed"}"#)
    }

    /// Writes a new config and waits until the root has tried it (taken or refused).
    fn reload(&self, config: &str) {
        let before = self.reloads();
        std::fs::write(&self.config, config).unwrap();
        wait_until(
            "the config change is noticed",
            Duration::from_secs(10),
            || self.reloads() > before,
        );
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concat_joins_every_shards_array_and_every_leaf_gets_the_clients_request() {
    let leaves = [
        Leaf::start(r#"{"hits": [{"id": "a1"}, {"id": "a2"}]}"#).await,
        Leaf::start(r#"{"hits": []}"#).await,
        Leaf::start(r#"{"hits": [{"id": "c1"}], "took": 4}"#).await,
    ];
    let root = Root::start(
        &config(
            &[&[leaves[0].addr], &[leaves[1].addr], &[leaves[2].addr]],
            "merge: {concat: {path: hits}}\n",
        ),
        &[],
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/search?q=rust", root.listen))
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("x-user", "u7")
        .body(Full::new(Bytes::from_static(b"the query")))
        .unwrap();
    let response = root.client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["rigging-coverage"], "3/3");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body,
        json!({
            "hits": [{"id": "a1"}, {"id": "a2"}, {"id": "c1"}],
            "coverage": {"answered": 3, "total": 3, "missing": []},
        })
    );
    for leaf in &leaves {
        let seen = leaf.seen();
        assert_eq!(seen.len(), 1);
        let seen = &seen[0];
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.uri, "/search?q=rust");
        assert_eq!(seen.body, "the query");
        assert_eq!(seen.headers["x-user"], "u7");
        assert!(
            !seen.headers.contains_key("x-hop"),
            "a header named in Connection is hop-by-hop"
        );
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_keeps_the_best_items_across_shards() {
    let a = Leaf::start(r#"{"result": {"docs": [{"id": "a", "m": {"score": 0.9}}, {"id": "b", "m": {"score": 0.2}}]}}"#).await;
    let b = Leaf::start(r#"{"result": {"docs": [{"id": "c", "m": {"score": 0.5}}, {"id": "d", "m": {"score": 0.9}}]}}"#).await;
    let root = Root::start(
        &config(
            &[&[a.addr], &[b.addr]],
            "merge: {topK: {path: result.docs, by: m.score, k: 3}}\n",
        ),
        &[],
    );
    let reply = root.get("/q").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.coverage(), "2/2");
    let body = reply.json();
    let ids: Vec<&str> = body["result"]["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "d", "c"], "ties go to the lower shard");
    assert_eq!(body["coverage"]["answered"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sum_adds_the_shards_vote_tallies() {
    let a = Leaf::start(r#"{"votes": {"seriesA": 10, "seriesB": 3}, "region": "eu"}"#).await;
    let b = Leaf::start(r#"{"votes": {"seriesA": 7, "seriesC": 1}}"#).await;
    let c = Leaf::start(r#"{"votes": {"seriesA": "lots"}}"#).await;
    let root = Root::start(
        &config(
            &[&[a.addr], &[b.addr], &[c.addr]],
            "merge: {sum: {path: votes}}\nminShards: 2\n",
        ),
        &[],
    );
    let reply = root.get("/tally").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.coverage(),
        "2/3",
        "the answer that cannot be summed is out"
    );
    assert_eq!(
        reply.json(),
        json!({
            "votes": {"seriesA": 17, "seriesB": 3, "seriesC": 1},
            "coverage": {"answered": 2, "total": 3, "missing": [2]},
        })
    );
    assert_eq!(
        root.metric(r#"rigging_gather_requests_total{outcome="partial"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_returns_the_first_answer_as_it_came_and_cancels_the_others() {
    let slow = Leaf::start(r#"{"from": "slow"}"#)
        .await
        .slow(Duration::from_secs(5));
    let fast = Leaf::start("fast\n").await.answering(203, "text/plain");
    let root = Root::start(
        &config(
            &[&[slow.addr], &[fast.addr]],
            "merge: {first: {}}\ndeadline: 10s\n",
        ),
        &[],
    );
    let sent = Instant::now();
    let reply = root.get("/lookup").await;
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "the fast answer did not wait for the slow shard"
    );
    assert_eq!(reply.status, 203);
    assert_eq!(reply.headers["content-type"], "text/plain");
    assert_eq!(reply.body, "fast\n");
    assert_eq!(reply.coverage(), "1/2");
    wait_until(
        "the slow shard's request is cancelled",
        Duration::from_secs(3),
        || slow.cancelled() == 1,
    );
    assert_eq!(slow.completed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merger_gets_every_answer_and_the_client_gets_the_mergers() {
    let a = Leaf::start(r#"{"n": 1}"#).await;
    let b = Leaf::start("not here").await.answering(404, "text/plain");
    let merger = Leaf::start("id,n\na,1\n").await.answering(200, "text/csv");
    let root = Root::start(
        &config(
            &[&[a.addr], &[b.addr], &[closed_port()]],
            &format!(
                "merge: {{merger: {{url: 'http://{}/merge'}}}}\nminShards: 2\n",
                merger.addr
            ),
        ),
        &[],
    );
    let reply = root.get("/q").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/csv");
    assert_eq!(reply.body, "id,n\na,1\n");
    assert_eq!(reply.coverage(), "2/3");
    let posted = merger.seen();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].method, Method::POST);
    assert_eq!(posted[0].uri, "/merge");
    let doc: Value = serde_json::from_slice(&posted[0].body).unwrap();
    assert_eq!(
        doc,
        json!({
            "answers": [
                {"shard": 0, "status": 200, "body": {"n": 1}},
                {"shard": 1, "status": 404, "body": "not here"},
            ],
            "coverage": {"answered": 2, "total": 3, "missing": [2]},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merger_that_fails_is_named_in_a_502() {
    let a = Leaf::start(r#"{"n": 1}"#).await;
    let gone = closed_port();
    let root = Root::start(
        &config(
            &[&[a.addr]],
            &format!("merge: {{merger: {{url: 'http://{gone}/merge'}}}}\n"),
        ),
        &[],
    );
    let reply = root.get("/q").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.coverage(), "1/1");
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(&format!(
            "the merger http://{gone}/merge failed: connect failed"
        )),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_past_the_deadline_is_cancelled_and_the_answer_is_partial() {
    let leaves = [
        Leaf::start(r#"{"hits": [0]}"#).await,
        Leaf::start(r#"{"hits": [1]}"#).await,
        Leaf::start(r#"{"hits": [2]}"#)
            .await
            .slow(Duration::from_secs(6)),
        Leaf::start(r#"{"hits": [3]}"#).await,
    ];
    let shards: Vec<[SocketAddr; 1]> = leaves.iter().map(|l| [l.addr]).collect();
    let shards: Vec<&[SocketAddr]> = shards.iter().map(|s| &s[..]).collect();
    let root = Root::start(
        &config(
            &shards,
            "merge: {concat: {path: hits}}\ndeadline: 500ms\nminShards: 3\n",
        ),
        &[],
    );
    let sent = Instant::now();
    let reply = root.get("/q").await;
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "answered at the deadline, not with the slow shard ({took:?})"
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.coverage(), "3/4");
    assert_eq!(
        reply.json(),
        json!({"hits": [0, 1, 3], "coverage": {"answered": 3, "total": 4, "missing": [2]}})
    );
    wait_until(
        "the slow leaf sees its request cancelled",
        Duration::from_secs(3),
        || leaves[2].cancelled() == 1,
    );
    assert_eq!(leaves[2].completed(), 0);
    assert_eq!(
        root.metric(r#"rigging_gather_leaf_timeouts_total{shard="2"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_shards_the_root_refuses_naming_each_missing_shard_and_why() {
    let failing = Leaf::start("{}").await.answering(500, "text/plain");
    let html = Leaf::start("<html>").await.answering(200, "text/html");
    let good = Leaf::start(r#"{"hits": [1]}"#).await;
    let refused = closed_port();
    let root = Root::start(
        &config(
            &[&[failing.addr], &[refused], &[html.addr], &[good.addr]],
            "merge: {concat: {path: hits}}\nminShards: 2\n",
        ),
        &[],
    );
    let reply = root.get("/q").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.coverage(), "1/4");
    let body = reply.json();
    assert_eq!(body["missing"], json!([0, 1, 2]));
    assert_eq!(
        body["coverage"],
        json!({"answered": 1, "total": 4, "missing": [0, 1, 2]})
    );
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("1 of 4 shards answered and 2 are needed"),
        "{error}"
    );
    for expected in [
        format!("shard 0: status 500 from {}", failing.addr),
        format!("shard 1: connect failed: cannot connect to {refused}"),
        format!("shard 2: bad answer from {}: not JSON", html.addr),
    ] {
        assert!(error.contains(&expected), "{expected:?} not in {error}");
    }
    assert_eq!(
        root.metric(r#"rigging_gather_requests_total{outcome="refused"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_refuses_or_fails_gives_way_to_another_of_its_shard() {
    let broken = Leaf::start("{}").await.answering(503, "text/plain");
    let good0 = Leaf::start(r#"{"hits": ["s0"]}"#).await;
    let good1 = Leaf::start(r#"{"hits": ["s1"]}"#).await;
    let root = Root::start(
        &config(
            &[&[closed_port(), good0.addr], &[broken.addr, good1.addr]],
            "merge: {concat: {path: hits}}\n",
        ),
        &[],
    );
    for _ in 0..4 {
        let reply = root.get("/q").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.coverage(), "2/2");
        assert_eq!(reply.json()["hits"], json!(["s0", "s1"]));
    }
    // Once failed, the broken replica is passed over for a while.
    assert_eq!(broken.started(), 1);
    assert_eq!(good1.started(), 4);
    let status = root.status();
    assert_eq!(status["shards"][1]["replicas"][0]["failing"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_is_hedged_the_hedge_wins_and_the_slow_request_is_cancelled() {
    let slow = Leaf::start(r#"{"hits": ["slow"]}"#)
        .await
        .slow(Duration::from_secs(5));
    let fast = Leaf::start(r#"{"hits": ["fast"]}"#).await;
    let root = Root::start(
        &config(
            &[&[slow.addr, fast.addr]],
            "merge: {concat: {path: hits}}\ndeadline: 10s\nhedge: {after: 20ms, budget: 50%}\n",
        ),
        &[],
    );
    for _ in 0..4 {
        let sent = Instant::now();
        let reply = root.get("/q").await;
        assert!(
            sent.elapsed() < Duration::from_secs(4),
            "the answer did not wait for the slow replica"
        );
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["hits"], json!(["fast"]));
    }
    let shard = &root.status()["shards"][0];
    assert!(shard["hedgesSent"].as_u64().unwrap() >= 1, "{shard}");
    assert!(shard["hedgesWon"].as_u64().unwrap() >= 1, "{shard}");
    assert!(slow.started() >= 1);
    wait_until(
        "every request to the slow replica is cancelled",
        Duration::from_secs(3),
        || slow.cancelled() == slow.started(),
    );
    assert_eq!(slow.completed(), 0);
    assert_eq!(
        root.metric(r#"rigging_gather_hedges_total{result="won",shard="0"}"#),
        shard["hedgesWon"].as_f64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_brownout_hedges_stay_within_the_budget() {
    let a = Leaf::start(r#"{"hits": [1]}"#)
        .await
        .slow(Duration::from_millis(150));
    let b = Leaf::start(r#"{"hits": [1]}"#)
        .await
        .slow(Duration::from_millis(150));
    let root = Arc::new(Root::start(
        &config(
            &[&[a.addr, b.addr]],
            "merge: {concat: {path: hits}}\ndeadline: 5s\nhedge: {after: 10ms, budget: 5%}\n",
        ),
        &[],
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (root, next) = (root.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < 80 {
                assert_eq!(root.get("/q").await.status, 200);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let hedges = root.metric(r#"rigging_gather_hedges_total{result="sent",shard="0"}"#);
    let refused = root.metric(r#"rigging_gather_hedges_total{result="refused",shard="0"}"#);
    let leaf_requests = root.metric(r#"rigging_gather_leaf_requests_total{shard="0"}"#);
    let plain = leaf_requests - hedges;
    assert_eq!(
        plain, 80.0,
        "one request per client request, besides hedges"
    );
    // The bucket starts with its burst of 10 and earns 5% of a hedge per leaf request.
    assert!(hedges >= 1.0, "hedging was on");
    assert!(
        hedges <= 0.05 * plain + 10.0 + 1.0,
        "{hedges} hedges for {plain} leaf requests"
    );
    assert!(refused >= 1.0, "the budget refused hedges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_a_leaf_while_requests_flow_and_none_fails() {
    let a = Leaf::start(r#"{"hits": ["a"]}"#)
        .await
        .slow(Duration::from_millis(20));
    let b = Leaf::start(r#"{"hits": ["b"]}"#)
        .await
        .slow(Duration::from_millis(20));
    let c = Leaf::start(r#"{"hits": ["c"]}"#)
        .await
        .slow(Duration::from_millis(20));
    let merge = "merge: {concat: {path: hits}}\n";
    let root = Arc::new(Root::start(&config(&[&[a.addr], &[b.addr]], merge), &[]));
    let stop = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (root, stop) = (root.clone(), stop.clone());
        streams.push(tokio::spawn(async move {
            let mut bodies = Vec::new();
            while stop.load(Ordering::SeqCst) == 0 {
                let reply = root.get("/q").await;
                assert_eq!(reply.status, 200, "{:?}", reply.body);
                assert_eq!(reply.coverage(), "2/2");
                bodies.push(reply.json()["hits"].clone());
            }
            bodies
        }));
    }
    wait_until("requests flow", Duration::from_secs(10), || {
        b.started() >= 10
    });
    {
        let root = root.clone();
        let config = config(&[&[a.addr], &[c.addr]], merge);
        tokio::task::spawn_blocking(move || root.reload(&config))
            .await
            .unwrap();
    }
    wait_until(
        "requests reach the new leaf",
        Duration::from_secs(10),
        || c.started() >= 10,
    );
    stop.store(1, Ordering::SeqCst);
    let mut bodies = Vec::new();
    for stream in streams {
        bodies.extend(stream.await.unwrap());
    }
    assert!(bodies.contains(&json!(["a", "b"])));
    assert_eq!(bodies.last(), Some(&json!(["a", "c"])));
    let b_after = b.started();
    assert_eq!(root.get("/q").await.json()["hits"], json!(["a", "c"]));
    assert_eq!(b.started(), b_after, "the removed leaf gets nothing new");
    assert_eq!(
        root.metric(r#"rigging_gather_config_reloads_total{result="ok"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_naming_the_field_and_the_old_one_keeps_serving() {
    let a = Leaf::start(r#"{"hits": [1]}"#).await;
    let good = config(
        &[&[a.addr]],
        "merge: {topK: {path: hits, by: score, k: 5}}\n",
    );
    let bad = good.replace("k: 5", "k: 0");
    // At start-up: the process exits and says which file and which field.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gather.yaml");
    std::fs::write(&path, &bad).unwrap();
    let out = Command::new(sidecar_bin())
        .args(["gather", "--config", path.to_str().unwrap()])
        .args(["--listen", &local(free_port()).to_string()])
        .args(["--admin", &local(free_port()).to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "invalid config file {}: merge.topK.k: keep at least 1 item",
            path.display()
        )),
        "{stderr}"
    );

    // On a reload: refused, counted, and the old config answers on.
    let concat = config(&[&[a.addr]], "merge: {concat: {path: hits}}\n");
    let root = Root::start(&concat, &[]);
    root.reload(&concat.replace("path: hits", "path: coverage"));
    assert_eq!(
        root.metric(r#"rigging_gather_config_reloads_total{result="failed"}"#),
        1.0
    );
    let reply = root.get("/q").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["hits"], json!([1]));
    assert_eq!(root.status()["merge"], "concat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_gets_413_and_reaches_no_leaf() {
    let a = Leaf::start(r#"{"hits": [1]}"#).await;
    let root = Root::start(
        &config(&[&[a.addr]], "merge: {concat: {path: hits}}\n"),
        &["--max-request-body", "16"],
    );
    let reply = root
        .request(Method::POST, "/q", "a body of more than sixteen bytes")
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(a.started(), 0);
    let reply = root.request(Method::POST, "/q", "small").await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
    let a = Leaf::start(r#"{"hits": [1]}"#)
        .await
        .slow(Duration::from_millis(800));
    let mut root = Root::start(
        &config(
            &[&[a.addr]],
            "merge: {concat: {path: hits}}\ndeadline: 5s\n",
        ),
        &["--drain-timeout", "10s"],
    );
    let request = Request::get(format!("http://{}/q", root.listen))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let in_flight = tokio::spawn(root.client.request(request));
    wait_until("the leaf has the request", Duration::from_secs(5), || {
        a.started() == 1
    });
    root.proc.terminate();
    let response = in_flight.await.unwrap().expect("answered during the drain");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["rigging-coverage"], "1/1");
    assert_eq!(root.proc.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(a.completed(), 1);
}
