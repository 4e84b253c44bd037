//! The Lease backend on a real API server: the cluster suite's convention
//! (`operator/tests/cluster/support.rs`): it runs when `RIGGING_KUBECONFIG` names a
//! cluster (`scripts/test.sh` starts the control-plane kit, `e2e/controlplane/up.sh`),
//! says it skipped otherwise, and fails instead when `RIGGING_CLUSTER_REQUIRE=1`. Each test
//! gets a namespace of its own, deleted afterwards unless `RIGGING_CLUSTER_KEEP=1`.
//!
//! Faults: the leader's API access cut (a proxy in front of the API server that stops
//! forwarding), the leader stopped (SIGSTOP) for longer than the lease, and SIGTERM.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::checker::Checker;
use super::{Replica, SLACK, timings, wait_for, wait_new_leader};

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);

/// The kubeconfig of `RIGGING_KUBECONFIG`, or `None` (after saying so) when none is given.
fn cluster(test: &str) -> Option<PathBuf> {
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
    Some(kubeconfig)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let config = Kubeconfig::read_from(kubeconfig).expect("RIGGING_KUBECONFIG is a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    kube::Client::try_from(config).expect("a client")
}

/// A namespace for one test, deleted (without waiting) when dropped.
struct TestNamespace {
    name: String,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    fn create(kubeconfig: &Path, test: &str) -> TestNamespace {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!("{test}-{:x}", nanos % 0x100000);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("rigging.dev/test".to_owned(), test.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        runtime().block_on(async {
            Api::<Namespace>::all(client(kubeconfig).await)
                .create(&PostParams::default(), &namespace)
                .await
                .expect("create the test namespace")
        });
        TestNamespace {
            name,
            kubeconfig: kubeconfig.to_owned(),
        }
    }

    fn lease(&self, name: &str) -> Lease {
        runtime().block_on(async {
            Api::<Lease>::namespaced(client(&self.kubeconfig).await, &self.name)
                .get(name)
                .await
                .expect("the Lease")
        })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("RIGGING_CLUSTER_KEEP").as_deref() == Ok("1") {
            return;
        }
        let _ = runtime().block_on(async {
            Api::<Namespace>::all(client(&self.kubeconfig).await)
                .delete(&self.name, &DeleteParams::default())
                .await
        });
    }
}

/// A TCP proxy in front of the API server that can stop forwarding: connections open,
/// bytes go nowhere, as when a node loses its route to the control plane.
struct CutProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl CutProxy {
    fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let cut: Arc<AtomicBool> = Arc::default();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cutting, opened) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming().flatten() {
                if cutting.load(Ordering::Relaxed) {
                    // Accepted, never answered.
                    held.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut open = opened.lock().unwrap();
                for stream in [&client, &server] {
                    open.push(stream.try_clone().expect("clone a stream"));
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CutProxy { addr, cut, open }
    }

    /// Stops forwarding: open connections are closed, new ones hang.
    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

/// The API server's address in `kubeconfig`, and a copy of it pointing at `proxy`.
fn through_proxy(
    kubeconfig: &Path,
    dir: &Path,
) -> (SocketAddr, impl FnOnce(SocketAddr) -> PathBuf) {
    let text = std::fs::read_to_string(kubeconfig).expect("read the kubeconfig");
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .map(|s| s.trim().trim_matches('"').to_owned())
        .expect("a server in the kubeconfig");
    let host_port = server
        .strip_prefix("https://")
        .expect("an https API server")
        .trim_end_matches('/')
        .to_owned();
    let target = host_port
        .to_socket_addrs()
        .expect("the API server's address")
        .next()
        .expect("an address");
    let path = dir.join("kubeconfig-through-proxy");
    let rewrite = move |proxy: SocketAddr| {
        // The serving certificate names 127.0.0.1, which is where the proxy listens.
        let text = text.replace(&server, &format!("https://{proxy}"));
        std::fs::write(&path, text).expect("write the proxied kubeconfig");
        path
    };
    (target, rewrite)
}

fn lease_args(namespace: &str, election: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--election".to_owned(),
        election.into(),
        "--namespace".into(),
        namespace.into(),
    ];
    args.extend(timings(LEASE, RENEW, RETRY));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn leases_elect_one_leader_through_cut_access_pauses_and_handoff() {
    let Some(kubeconfig) = cluster("elect-leases") else {
        return;
    };
    let namespace = TestNamespace::create(&kubeconfig, "elect-leases");
    let dir = tempfile::tempdir().unwrap();
    let (api_server, rewrite) = through_proxy(&kubeconfig, dir.path());
    let proxy = CutProxy::start(api_server);
    let proxied = rewrite(proxy.addr);
    let args = lease_args(&namespace.name, "leader", &[]);
    let direct = kubeconfig.display().to_string();
    let via_proxy = proxied.display().to_string();
    let bound = LEASE + RETRY + SLACK;

    // "a" reaches the API server through the proxy, and leads first.
    let a = Replica::start("a", &args, &[("KUBECONFIG", &via_proxy)]);
    let (_, token, _) = wait_new_leader(&[&a], 0, Duration::from_secs(20));
    let mut replicas = vec![
        a,
        Replica::start("b", &args, &[("KUBECONFIG", &direct)]),
        Replica::start("c", &args, &[("KUBECONFIG", &direct)]),
    ];
    let mut checker = Checker::new();
    for replica in &replicas {
        checker.watch_leader(replica);
    }
    std::thread::sleep(2 * RETRY);
    assert_eq!(
        replicas[0].leads(),
        Some(token),
        "a still leads with b and c there"
    );

    // Its API access cut: it stops claiming at its renew deadline, and another takes
    // over once the lease has expired for it.
    proxy.cut();
    let cut = Instant::now();
    wait_for(RENEW + SLACK, "a to step down", || {
        (replicas[0].leader().ok()?["isLeader"] == false).then_some(())
    });
    let stepped_down = cut.elapsed();
    let (_, token, _) = wait_new_leader(&[&replicas[1], &replicas[2]], token, bound);
    let took = cut.elapsed();
    eprintln!(
        "elect leases: cut off, a stepped down after {stepped_down:?}; a new leader after {took:?}"
    );
    assert!(took < bound, "a new leader {took:?} after the cut");
    // The checker holds the finer claim: nobody claimed the new term before a stopped.
    proxy.restore();
    wait_for(bound, "a to see the new leader", || {
        let view = replicas[0].leader().ok()?;
        (view["term"] == token && view["isLeader"] == false).then_some(())
    });

    // The leader stopped for twice the lease: a new leader, and the old one, resumed,
    // does not claim its old term.
    let leader = (0..3)
        .find(|i| replicas[*i].leads().is_some())
        .expect("a leader");
    replicas[leader].signal("STOP");
    let others: Vec<&Replica> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| &replicas[i])
        .collect();
    let (_, token, took) = wait_new_leader(&others, token, bound);
    eprintln!(
        "elect leases: {} stopped, a new leader after {took:?}",
        replicas[leader].name
    );
    std::thread::sleep(2 * LEASE - took.min(2 * LEASE));
    replicas[leader].signal("CONT");
    let view = replicas[leader]
        .leader()
        .expect("the resumed sidecar answers");
    assert_eq!(view["isLeader"], false, "resumed old leader: {view}");

    // SIGTERM: released, so the next one starts without waiting for expiry.
    let leader = (0..3)
        .find(|i| replicas[*i].leads().is_some())
        .expect("a leader");
    replicas[leader].signal("TERM");
    let others: Vec<&Replica> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| &replicas[i])
        .collect();
    let (next, token, took) = wait_new_leader(&others, token, bound);
    let successor = others[next].name.clone();
    eprintln!("elect leases: SIGTERM, a new leader after {took:?}");
    assert!(took < LEASE, "a handoff, not an expiry: {took:?}");
    assert_eq!(
        replicas[leader].proc.wait_exit(Duration::from_secs(10)),
        Some(0)
    );

    // The Lease says what the sidecars say.
    let lease = namespace.lease("leader");
    let spec = lease.spec.expect("a spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(successor.as_str()));
    assert_eq!(spec.lease_transitions, Some(token as i32));
    assert_eq!(spec.lease_duration_seconds, Some(LEASE.as_secs() as i32));
    std::thread::sleep(Duration::from_millis(300));
    checker.verify();
}

#[test]
fn leases_share_items_and_hand_them_over() {
    let Some(kubeconfig) = cluster("elect-lease-items") else {
        return;
    };
    let namespace = TestNamespace::create(&kubeconfig, "elect-lease-items");
    let args = lease_args(&namespace.name, "items", &["--items", "5"]);
    let env = [("KUBECONFIG", kubeconfig.to_str().expect("a UTF-8 path"))];
    let replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|name| Replica::start(name, &args, &env))
        .collect();
    let mut checker = Checker::new();
    for replica in &replicas {
        checker.watch_owned(replica);
    }
    let settled = |replicas: &[&Replica], share: usize| {
        let owned: Vec<Vec<u64>> = replicas
            .iter()
            .map(|r| {
                r.owned()
                    .ok()
                    .map(|o| o.into_iter().map(|(i, _)| i).collect())
            })
            .collect::<Option<_>>()?;
        let mut all: Vec<u64> = owned.iter().flatten().copied().collect();
        all.sort_unstable();
        (owned.iter().all(|o| o.len() <= share) && all == [0, 1, 2, 3, 4]).then_some(owned)
    };
    let owned = wait_for(Duration::from_secs(30), "5 items over 3 replicas", || {
        settled(&[&replicas[0], &replicas[1], &replicas[2]], 2)
    });
    eprintln!("elect lease items: {owned:?}");
    replicas[2].signal("TERM");
    let owned = wait_for(LEASE + SLACK, "5 items over 2 replicas", || {
        settled(&[&replicas[0], &replicas[1]], 3)
    });
    eprintln!("elect lease items: after SIGTERM {owned:?}");
    checker.verify();
}
