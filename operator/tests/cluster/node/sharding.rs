//! The sharded examples on a node: every pod Running and Ready, each key (or user) on the
//! shard the ring names, and resharding under a steady load through the routers.
//!
//! "The shard the ring names" is computed from the ring ConfigMap the operator wrote, with
//! the project's own ketama code (`rigging_crds::sidecar::shard::ring`), and checked on the
//! shards themselves: `kubectl exec` into each Redis shard, the access log of each nginx
//! shard. Clients are pods. The kit's network plugin (bridge) does not enforce
//! NetworkPolicy, so nothing here shows that the shards refuse other clients.
//!
//! These tests run one at a time: router.yaml is five pods, replicated.yaml fifteen, and
//! the node has two cores.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use rigging_crds::ShardedService;
use rigging_crds::sidecar::shard::hash::{HashKind, md5};
use rigging_crds::sidecar::shard::ring::{HashTag, Ring, ServerSpec};
use rigging_crds::sidecar::shard::{RING_PATH, RingReport, ShardConfig};
use serde_json::json;
use tokio::sync::Mutex;

use crate::node::{ClientPod, POD_SETTLE, all_pods_ready, node_cluster, wait_for_condition};
use crate::support::{Cluster, TestNamespace, eventually};

/// One of these tests at a time on the node.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The ring of the ConfigMap `<service>-ring`, as the routers load it: the ring, and each
/// server's name (the shard's stable name) by index.
struct RingFile {
    ring: Ring,
    names: Vec<String>,
    version: String,
}

impl RingFile {
    async fn of(cluster: &Cluster, namespace: &str, service: &str) -> RingFile {
        let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
        let map = maps
            .get(&format!("{service}-ring"))
            .await
            .expect("the ring");
        let text = map.data.unwrap_or_default()["shard.yaml"].clone();
        let file: ShardConfig = serde_norway::from_str(&text).expect("the ring file parses");
        let specs: Vec<ServerSpec> = file
            .servers
            .iter()
            .flatten()
            .map(|s| s.parse().expect("a server the sidecar parses"))
            .collect();
        let hash: HashKind = file.hash.as_deref().unwrap_or("fnv1a_64").parse().unwrap();
        let tag = file.hash_tag.as_deref().and_then(HashTag::parse);
        RingFile {
            ring: Ring::new(&specs, &[], hash, tag),
            names: specs.iter().map(ServerSpec::ring_name).collect(),
            version: rigging_crds::sidecar::shard::ring_version(&text),
        }
    }

    /// The shard `key` belongs on.
    fn owner(&self, key: &str) -> &str {
        let i = self.ring.server_for(key.as_bytes()).expect("a live server");
        &self.names[i]
    }
}

/// The keys a Redis shard pod holds, read in its own `redis` container.
fn keys_on(cluster: &Cluster, namespace: &str, pod: &str) -> BTreeSet<String> {
    cluster
        .kubectl_ok(&[
            "exec",
            "-n",
            namespace,
            pod,
            "-c",
            "redis",
            "--",
            "redis-cli",
            "--scan",
        ])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `count` ids as apps make them, spread over their space: `<prefix><8 hex digits>`. (Ids
/// that differ only in their last characters hash close together under twemproxy's
/// fnv1a_64, whose 32-bit prime is small, and may all land on one shard.)
fn spread_ids(prefix: &str, count: u32) -> Vec<String> {
    (0..count)
        .map(|i| {
            let id: String = md5(&i.to_le_bytes())[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{prefix}{id}")
        })
        .collect()
}

/// Checks that every key of `keys` is on the shard pod `ring` names for it, and on no
/// other of `pods`; every shard gets some.
fn assert_placed(
    cluster: &Cluster,
    namespace: &str,
    ring: &RingFile,
    pods: &[String],
    keys: &[String],
) {
    let held: BTreeMap<&str, BTreeSet<String>> = pods
        .iter()
        .map(|p| (p.as_str(), keys_on(cluster, namespace, p)))
        .collect();
    for key in keys {
        let owner = ring.owner(key);
        let on: Vec<&str> = held
            .iter()
            .filter(|(_, k)| k.contains(key))
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(on, [owner], "{key} must be on {owner} alone");
    }
    for (pod, held) in &held {
        assert!(
            keys.iter().any(|k| held.contains(k)),
            "{pod} got none of {} keys",
            keys.len()
        );
    }
}

/// Applies `examples/sharded-redis/router.yaml` in `ns` and waits for every pod (the
/// cluster's default StorageClass provisions the shards' volumes).
async fn sessions(cluster: &Cluster, ns: &TestNamespace) {
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/sharded-redis/router.yaml",
    ]);
    wait_for_condition(cluster, &ns.name, "shardedservice/sessions", "Ready");
    all_pods_ready(
        cluster,
        &ns.name,
        "app.kubernetes.io/instance=sessions,app.kubernetes.io/component=shard",
        3,
    )
    .await;
    all_pods_ready(
        cluster,
        &ns.name,
        "app.kubernetes.io/instance=sessions,app.kubernetes.io/component=router",
        2,
    )
    .await;
}

#[tokio::test]
async fn keys_through_the_sharded_redis_router_land_on_the_shard_the_ring_names() {
    let Some(cluster) =
        node_cluster("keys_through_the_sharded_redis_router_land_on_the_shard_the_ring_names")
            .await
    else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = cluster.namespace("shard-router").await;
    sessions(&cluster, &ns).await;
    let client = ClientPod::start(&cluster, &ns.name, "client", "redis:7-alpine").await;
    // Hash tags as the README uses them: one user's keys share a shard.
    let users = spread_ids("user", 40);
    let keys: Vec<String> = users
        .iter()
        .flat_map(|u| [format!("{{{u}}}:cart"), format!("{{{u}}}:orders")])
        .collect();
    let script: String = keys
        .iter()
        .map(|k| format!("redis-cli -h sessions SET '{k}' 'v-{k}'\n"))
        .collect();
    let out = client.exec_ok(&["sh", "-c", &script]);
    assert_eq!(
        out.lines().filter(|l| *l == "OK").count(),
        keys.len(),
        "{out}"
    );
    let key = format!("{{{}}}:orders", users[7]);
    let reads = client.exec_ok(&["redis-cli", "-h", "sessions", "GET", &key]);
    assert_eq!(reads.trim(), format!("v-{key}"));
    let ring = RingFile::of(&cluster, &ns.name, "sessions").await;
    assert_eq!(ring.names, ["sessions-0", "sessions-1", "sessions-2"]);
    let pods: Vec<String> = ring.names.clone();
    assert_placed(&cluster, &ns.name, &ring, &pods, &keys);
    for u in &users {
        assert_eq!(
            ring.owner(&format!("{{{u}}}:cart")),
            ring.owner(&format!("{{{u}}}:orders")),
            "one user's keys share a shard"
        );
    }

    // A rollout of the routers (an upgrade's new sidecar image, say) under a client that
    // connects anew for every request: a stopping router keeps accepting until kube-proxy
    // has taken it out of the Service, so no connection is refused.
    let routers = "app.kubernetes.io/instance=sessions,app.kubernetes.io/component=router";
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let router_names = || async {
        let list = pods.list(&ListParams::default().labels(routers)).await;
        list.map(|l| {
            l.items
                .iter()
                .map(ResourceExt::name_any)
                .collect::<BTreeSet<_>>()
        })
        .unwrap_or_default()
    };
    let before = router_names().await;
    client.exec_ok(&[
        "sh",
        "-c",
        &format!("nohup sh -c '{ROLLOUT_LOAD}' > /dev/null 2>&1 &"),
    ]);
    let answered = || {
        client
            .exec_ok(&["sh", "-c", "wc -l < /tmp/rollout.log"])
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
    };
    eventually("the client's first answers", POD_SETTLE, || async {
        (answered() >= 5).then_some(())
    })
    .await;
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "rollout",
        "restart",
        "deployment/sessions-router",
    ]);
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "rollout",
        "status",
        "deployment/sessions-router",
        &format!("--timeout={}s", POD_SETTLE.as_secs()),
    ]);
    eventually("every old router gone", POD_SETTLE, || async {
        router_names().await.is_disjoint(&before).then_some(())
    })
    .await;
    let sent = answered();
    eventually("more answers from the new routers", POD_SETTLE, || async {
        (answered() >= sent + 10).then_some(())
    })
    .await;
    client.exec_ok(&["touch", "/tmp/stop"]);
    let log = client.exec_ok(&["cat", "/tmp/rollout.log"]);
    let failed: Vec<&str> = log.lines().filter(|l| *l != "OK").collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while the routers rolled: {failed:?}",
        failed.len(),
        log.lines().count()
    );
}

/// A client that connects anew for each request (a `SET` through the Service `sessions`),
/// until /tmp/stop exists; one line per request, `OK` or what went wrong.
const ROLLOUT_LOAD: &str = "i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); \
out=$(timeout 5 redis-cli -h sessions SET {roll$i}:k $i 2>&1); echo $out; \
sleep 0.05; done > /tmp/rollout.log";

#[tokio::test]
async fn the_storefront_ambassador_on_localhost_reaches_the_cache_shards() {
    let Some(cluster) =
        node_cluster("the_storefront_ambassador_on_localhost_reaches_the_cache_shards").await
    else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = cluster.namespace("shard-ambassador").await;
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/sharded-redis/ambassador.yaml",
    ]);
    wait_for_condition(&cluster, &ns.name, "shardedservice/cache", "Ready");
    wait_for_condition(&cluster, &ns.name, "replicatedservice/storefront", "Ready");
    all_pods_ready(
        &cluster,
        &ns.name,
        "app.kubernetes.io/instance=cache,app.kubernetes.io/component=shard",
        4,
    )
    .await;
    let storefront = all_pods_ready(&cluster, &ns.name, "rigging.dev/shard-client=cache", 2).await;
    let ring = RingFile::of(&cluster, &ns.name, "cache").await;
    let mut keys = Vec::new();
    for (n, pod) in storefront.iter().enumerate() {
        // What the app sees: redis://127.0.0.1:6379, from inside its own pod (a debug
        // container of the Redis image shares the pod's network, as the app does).
        cluster.kubectl_ok(&[
            "debug",
            "-n",
            &ns.name,
            pod,
            "--image=redis:7-alpine",
            "--container=redis-client",
            "--profile=general",
            "--",
            "sleep",
            "86400",
        ]);
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
        eventually(
            &format!("the debug container of {pod} running"),
            POD_SETTLE,
            || async {
                let p = pods.get(pod).await.ok()?;
                let statuses = p.status?.ephemeral_container_statuses?;
                statuses
                    .iter()
                    .any(|s| {
                        s.name == "redis-client"
                            && s.state.as_ref().is_some_and(|st| st.running.is_some())
                    })
                    .then_some(())
            },
        )
        .await;
        let mine = spread_ids(&format!("product:{n}:"), 30);
        let script: String = mine
            .iter()
            .map(|k| format!("redis-cli -h 127.0.0.1 -p 6379 SET {k} price-{k}\n"))
            .collect();
        let out = cluster.kubectl_ok(&[
            "exec",
            "-n",
            &ns.name,
            pod,
            "-c",
            "redis-client",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        assert_eq!(
            out.lines().filter(|l| *l == "OK").count(),
            mine.len(),
            "{pod}: {out}"
        );
        keys.extend(mine);
    }
    let shards: Vec<String> = (0..4).map(|i| format!("cache-{i}")).collect();
    assert_eq!(ring.names, shards);
    assert_placed(&cluster, &ns.name, &ring, &shards, &keys);

    // Three shards: cache-3's pod goes once the ambassadors in both storefront pods, which
    // the operator asks on their admin port, serve the ring without it.
    let services: Api<ShardedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    services
        .patch(
            "cache",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"shards": 3}})),
        )
        .await
        .expect("patch shards");
    let statefulsets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    eventually("the StatefulSet at three", POD_SETTLE, || async {
        let sts = statefulsets.get("cache").await.ok()?;
        (sts.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    let three = RingFile::of(&cluster, &ns.name, "cache").await;
    let removed = eventually("a ShardsRemoved Event", POD_SETTLE, || async {
        events_of(&cluster, &ns.name, "cache")
            .await
            .into_iter()
            .find(|(reason, _)| reason == "ShardsRemoved")
    })
    .await;
    assert_eq!(
        removed.1,
        format!(
            "cache-3 removed: every client pod's ambassador serves ring version {}, which does not name it; its keys were not copied to another shard",
            three.version
        )
    );
}

/// The reasons and notes of the Events about the ShardedService `name`.
async fn events_of(cluster: &Cluster, namespace: &str, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), namespace);
    let list = events.list(&ListParams::default()).await.unwrap().items;
    list.iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| Some((e.reason.clone()?, e.note.clone()?)))
        .collect()
}

#[tokio::test]
async fn the_sharded_http_routers_send_each_user_to_one_shard_and_refuse_no_key() {
    let Some(cluster) =
        node_cluster("the_sharded_http_routers_send_each_user_to_one_shard_and_refuse_no_key")
            .await
    else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = cluster.namespace("shard-http").await;
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/sharded-http/replicated.yaml",
    ]);
    wait_for_condition(&cluster, &ns.name, "shardedservice/profiles", "Ready");
    let shard_pods = "app.kubernetes.io/instance=profiles,app.kubernetes.io/component=shard";
    all_pods_ready(&cluster, &ns.name, shard_pods, 12).await;
    all_pods_ready(
        &cluster,
        &ns.name,
        "app.kubernetes.io/instance=profiles,app.kubernetes.io/component=router",
        3,
    )
    .await;
    let client = ClientPod::start(&cluster, &ns.name, "client", "curlimages/curl:8.10.1").await;
    let no_key = client.exec_ok(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        "http://profiles:8080/",
    ]);
    assert_eq!(no_key, "400", "a request without X-User-Id");
    // Each user three times, over new connections (any router): every request is marked
    // so that the shard pod that served it can be found in the access logs.
    let users: Vec<String> = (0..16).map(|u| format!("user-{u}")).collect();
    let script: String = users
        .iter()
        .flat_map(|u| {
            (0..3).map(move |n| {
                format!(
                    "curl -sS -o /dev/null -w '%{{http_code}}\\n' --max-time 10 -H 'X-User-Id: {u}' 'http://profiles:8080/?probe={u}.{n}'\n"
                )
            })
        })
        .collect();
    let codes = client.exec_ok(&["sh", "-c", &script]);
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        users.len() * 3,
        "{codes}"
    );
    let ring = RingFile::of(&cluster, &ns.name, "profiles").await;
    assert_eq!(
        ring.names,
        ["profiles-0", "profiles-1", "profiles-2", "profiles-3"]
    );
    // Which shard's pods logged each user's requests: `[pod/profiles-2-1/app] … probe=…`.
    let logs = eventually(
        "every marked request in the access logs",
        POD_SETTLE,
        || async {
            let out = cluster.kubectl(&[
                "logs",
                "-n",
                &ns.name,
                "-l",
                shard_pods,
                "-c",
                "app",
                "--prefix",
                "--tail=-1",
                "--max-log-requests=20",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.matches("probe=").count() >= users.len() * 3).then_some(text)
        },
    )
    .await;
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in logs.lines().filter(|l| l.contains("probe=")) {
        let pod = line
            .strip_prefix("[pod/")
            .and_then(|l| l.split('/').next())
            .unwrap_or_else(|| panic!("a log line without its pod: {line}"));
        let shard = pod.rsplit_once('-').map(|(shard, _replica)| shard).unwrap();
        let user = line
            .split("probe=")
            .nth(1)
            .and_then(|r| r.split('.').next())
            .unwrap();
        served
            .entry(user.to_owned())
            .or_default()
            .insert(shard.to_owned());
    }
    for user in &users {
        let shards: Vec<&str> = served[user].iter().map(String::as_str).collect();
        assert_eq!(
            shards,
            [ring.owner(user)],
            "{user}: every request on one shard"
        );
    }
    let used: BTreeSet<&str> = users.iter().map(|u| ring.owner(u)).collect();
    assert!(used.len() > 1, "16 users on one shard: {used:?}");
}

// ---------------------------------------------------------------------------------------
// Resharding under load
// ---------------------------------------------------------------------------------------

/// Two steady clients through the Service `sessions`, until /tmp/stop exists: one opens a
/// connection per request (spread over the routers by the Service), the other sends every
/// request on one connection (which the routers move to each new ring). Each SET has a key
/// of its own, so the load reaches every shard. Errors are whatever is not an `OK`:
/// refused or reset connections, timeouts (5 s), error replies, replies that never came.
const LOAD: &str = r#"
i=0
while [ ! -e /tmp/stop ]; do
  i=$((i+1))
  out=$(timeout 5 redis-cli -h sessions SET "{new$i}:k" "$i" 2>&1)
  if [ "$out" = OK ]; then echo ok; else echo "error $(date +%T) {new$i}: $out" | tr '\n' ' '; echo; fi
  sleep 0.05
done > /tmp/per-request.log &
j=0
while [ ! -e /tmp/stop ]; do
  j=$((j+1))
  echo "SET {kept$j}:k $j"
  echo "$j" > /tmp/one-connection.sent
  sleep 0.05
done | redis-cli -h sessions > /tmp/one-connection.log 2>&1 &
wait
touch /tmp/done
"#;

/// What the clients counted so far.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counts {
    /// Requests on connections of their own that got `OK`.
    new_ok: usize,
    /// Those that did not, with what they got.
    new_errors: Vec<String>,
    /// Requests sent on the one connection.
    kept_sent: usize,
    /// Its `OK` replies.
    kept_ok: usize,
    /// Its other replies.
    kept_errors: Vec<String>,
}

impl Counts {
    fn read(client: &ClientPod<'_>) -> Counts {
        let text = client.exec_ok(&[
            "sh",
            "-c",
            "cat /tmp/per-request.log; echo ==; cat /tmp/one-connection.sent 2>/dev/null; echo ==; cat /tmp/one-connection.log",
        ]);
        let mut parts = text.split("==\n");
        let (new, sent, kept) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        Counts {
            new_ok: new.lines().filter(|l| *l == "ok").count(),
            new_errors: new
                .lines()
                .filter(|l| l.starts_with("error"))
                .map(str::to_owned)
                .collect(),
            kept_sent: sent.trim().parse().unwrap_or(0),
            kept_ok: kept.lines().filter(|l| *l == "OK").count(),
            kept_errors: kept
                .lines()
                .filter(|l| *l != "OK" && !l.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    fn errors(&self) -> usize {
        self.new_errors.len() + self.kept_errors.len()
    }
}

/// Waits until both clients got `more` further `OK`s than `since` shows.
async fn more_requests(client: &ClientPod<'_>, since: &Counts, more: usize) -> Counts {
    eventually(
        &format!("{more} more requests through the routers"),
        POD_SETTLE,
        || async {
            let now = Counts::read(client);
            (now.new_ok >= since.new_ok + more && now.kept_ok >= since.kept_ok + more)
                .then_some(now)
        },
    )
    .await
}

/// What every router pod of `sessions` answers on its admin port's `/ring`, asked from the
/// curl pod `asker`.
async fn router_rings(
    cluster: &Cluster,
    ns: &str,
    asker: &ClientPod<'_>,
) -> Vec<(String, RingReport)> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let routers = pods
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/instance=sessions,app.kubernetes.io/component=router"),
        )
        .await
        .expect("list the routers");
    routers
        .items
        .iter()
        .map(|p| {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
            let body = asker.exec_ok(&[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{ip}:9122{RING_PATH}"),
            ]);
            let report = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            (p.name_any(), report)
        })
        .collect()
}

#[tokio::test]
async fn resharding_under_load_through_the_router_loses_no_request_and_removes_a_shard_only_after_every_router()
 {
    let Some(cluster) = node_cluster("resharding_under_load_through_the_router").await else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = cluster.namespace("reshard").await;
    sessions(&cluster, &ns).await;
    let services: Api<ShardedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let statefulsets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let client = ClientPod::start(&cluster, &ns.name, "client", "redis:7-alpine").await;
    let asker = ClientPod::start(&cluster, &ns.name, "asker", "curlimages/curl:8.10.1").await;
    let three = RingFile::of(&cluster, &ns.name, "sessions").await;
    for (router, report) in router_rings(&cluster, &ns.name, &asker).await {
        assert_eq!(report.version.as_ref(), Some(&three.version), "{router}");
        assert_eq!(report.members, three.names, "{router}");
    }
    cluster.kubectl_with_input(
        &[
            "exec",
            "-i",
            "-n",
            &ns.name,
            "client",
            "--",
            "sh",
            "-c",
            "cat > /tmp/load.sh",
        ],
        Some(LOAD),
    );
    client.exec_ok(&["sh", "-c", "nohup sh /tmp/load.sh > /dev/null 2>&1 &"]);
    let started = more_requests(&client, &Counts::default(), 20).await;
    assert_eq!(started.errors(), 0, "before any change: {started:?}");

    // 3 → 4: the new shard joins the ring once it is ready, and every router loads it.
    let patch = |shards: i32| {
        let services = services.clone();
        async move {
            services
                .patch(
                    "sessions",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"shards": shards}})),
                )
                .await
                .expect("patch shards")
        }
    };
    patch(4).await;
    let four = eventually("the ring of four in the status", POD_SETTLE, || async {
        let ss = services.get("sessions").await.ok()?;
        let status = ss.status?;
        (status.members.len() == 4).then_some(status)
    })
    .await;
    let sessions_3 = pods.get("sessions-3").await.expect("the new shard's pod");
    let ready = sessions_3
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(
        ready,
        "the ring names sessions-3 only once its pod is ready"
    );
    let ring_four = RingFile::of(&cluster, &ns.name, "sessions").await;
    assert_eq!(four.ring_version.as_ref(), Some(&ring_four.version));
    eventually(
        "every router serving the ring of four",
        POD_SETTLE,
        || async {
            router_rings(&cluster, &ns.name, &asker)
                .await
                .iter()
                .all(|(_, r)| r.version.as_ref() == Some(&ring_four.version))
                .then_some(())
        },
    )
    .await;
    let joined = Counts::read(&client);
    // Traffic reaches the new shard.
    eventually("keys on sessions-3", POD_SETTLE, || async {
        (!keys_on(&cluster, &ns.name, "sessions-3").is_empty()).then_some(())
    })
    .await;
    let grown = more_requests(&client, &joined, 40).await;
    eprintln!(
        "3 → 4: {} requests on new connections, {} on one connection; errors: {:?} {:?}",
        grown.new_ok + grown.new_errors.len(),
        grown.kept_sent,
        grown.new_errors,
        grown.kept_errors
    );
    assert_eq!(grown.errors(), 0, "3 → 4 under load: {grown:?}");

    // 4 → 3: sessions-3 leaves the ring first; its pod goes only once every router serves
    // the ring without it.
    patch(3).await;
    eventually("the StatefulSet back at three", POD_SETTLE, || async {
        let sts = statefulsets.get("sessions").await.ok()?;
        (sts.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    let ring_three = RingFile::of(&cluster, &ns.name, "sessions").await;
    assert_eq!(ring_three.names, three.names);
    for (router, report) in router_rings(&cluster, &ns.name, &asker).await {
        assert_eq!(
            report.version.as_ref(),
            Some(&ring_three.version),
            "{router} serves the ring of three once sessions-3 is going"
        );
        assert!(!report.members.contains(&"sessions-3".to_owned()));
    }
    eventually("the pod sessions-3 gone", POD_SETTLE, || async {
        pods.get_opt("sessions-3")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let gone = Counts::read(&client);
    let shrunk = more_requests(&client, &gone, 40).await;
    client.exec_ok(&["touch", "/tmp/stop"]);
    eventually("the clients stopped", POD_SETTLE, || async {
        client
            .exec(&["test", "-e", "/tmp/done"])
            .status
            .success()
            .then_some(())
    })
    .await;
    let last = Counts::read(&client);
    eprintln!(
        "4 → 3: {} requests on new connections, {} on one connection; errors: {:?} {:?}",
        last.new_ok + last.new_errors.len() - grown.new_ok - grown.new_errors.len(),
        last.kept_sent - grown.kept_sent,
        &last.new_errors[grown.new_errors.len()..],
        &last.kept_errors[grown.kept_errors.len()..]
    );
    assert!(shrunk.kept_ok <= last.kept_ok);
    assert_eq!(
        last.kept_ok + last.kept_errors.len(),
        last.kept_sent,
        "a reply for every request on the one connection: {last:?}"
    );
    assert_eq!(last.errors(), 0, "4 → 3 under load: {last:?}");

    // The Events say what happened.
    let reasons = events_of(&cluster, &ns.name, "sessions").await;
    let leaving = reasons
        .iter()
        .find(|(r, _)| r == "ShardsLeaving")
        .unwrap_or_else(|| panic!("a ShardsLeaving Event: {reasons:?}"));
    assert!(
        leaving.1.starts_with("the ring no longer names sessions-3"),
        "{leaving:?}"
    );
    let removed = reasons
        .iter()
        .find(|(r, _)| r == "ShardsRemoved")
        .unwrap_or_else(|| panic!("a ShardsRemoved Event: {reasons:?}"));
    assert_eq!(
        removed.1,
        format!(
            "sessions-3 removed: every router serves ring version {}, which does not name it; its keys were not copied to another shard",
            ring_three.version
        )
    );
}
