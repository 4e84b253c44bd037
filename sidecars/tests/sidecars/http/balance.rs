//! Backends under load: balancing strategies, health checks, outlier ejection, panic
//! mode and DNS, against real nginx and test backends on 127.0.0.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::support::{Ambassador, Client, Nginx, TestBackend, one_backend, spread};

/// `servers` as a backend's YAML list, with weights.
fn weighted(servers: &[(SocketAddr, u32)]) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(s, w)| format!("{{address: \"{s}\", weight: {w}}}"))
        .collect();
    format!(
        "routes:\n  - name: main\n    backend: pool\nbackends:\n  - name: pool\n    servers: [{}]\n",
        servers.join(", ")
    )
}

/// Waits until `done` holds, for at most `within`; returns how long it took.
fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn share(counts: &HashMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

/// The backend `pool` in `/status`.
fn pool(ambassador: &Ambassador) -> serde_json::Value {
    ambassador.status()["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "pool")
        .expect("backend pool in /status")
        .clone()
}

fn ejections(ambassador: &Ambassador, server: SocketAddr) -> f64 {
    ambassador.metric(&format!(
        r#"rigging_http_ejections_total{{backend="pool",server="{server}"}}"#
    ))
}

fn up(ambassador: &Ambassador, server: SocketAddr) -> f64 {
    ambassador.metric(&format!(
        r#"rigging_http_server_up{{backend="pool",server="{server}"}}"#
    ))
}

/// `clients` threads sending `each` GETs of `/` at once; counts replies by body (or
/// status when not 200).
fn concurrent(addr: SocketAddr, clients: usize, each: usize) -> HashMap<String, usize> {
    let threads: Vec<_> = (0..clients)
        .map(|_| std::thread::spawn(move || spread(addr, each, &[])))
        .collect();
    let mut total = HashMap::new();
    for thread in threads {
        for (k, v) in thread.join().unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

#[test]
fn round_robin_weights_3_1_1_give_shares_3_1_1() {
    let (a, b, c) = (Nginx::start("a"), Nginx::start("b"), Nginx::start("c"));
    let ambassador = Ambassador::start(&weighted(&[(a.addr, 3), (b.addr, 1), (c.addr, 1)]));
    let got = spread(ambassador.listen, 1000, &[]);
    assert_eq!(got.values().sum::<usize>(), 1000);
    for (name, expected) in [("a", 600), ("b", 200), ("c", 200)] {
        let n = share(&got, name);
        assert!(n.abs_diff(expected) <= 30, "{name}: {n} of 1000, {got:?}");
    }
}

#[test]
fn least_request_sends_a_slow_server_fewer_requests_than_round_robin_would() {
    let fast = [TestBackend::start("fast1"), TestBackend::start("fast2")];
    let slow = TestBackend::start("slow");
    slow.delay_ms.store(50, Ordering::SeqCst);
    let ambassador = Ambassador::start(&one_backend(
        &[fast[0].addr, fast[1].addr, slow.addr],
        "",
        "    balance: leastRequest\n",
    ));
    let got = concurrent(ambassador.listen, 8, 60);
    let total: usize = got.values().sum();
    assert_eq!(
        share(&got, "fast1") + share(&got, "fast2") + share(&got, "slow"),
        total,
        "{got:?}"
    );
    // Round robin would give it a third.
    assert!(share(&got, "slow") < total / 6, "{got:?}");
}

#[test]
fn peak_ewma_sends_a_slow_server_fewer_requests_than_round_robin_would() {
    let fast = [TestBackend::start("fast1"), TestBackend::start("fast2")];
    let slow = TestBackend::start("slow");
    slow.delay_ms.store(50, Ordering::SeqCst);
    let ambassador = Ambassador::start(&one_backend(
        &[fast[0].addr, fast[1].addr, slow.addr],
        "",
        "    balance: peakEwma\n",
    ));
    let got = spread(ambassador.listen, 300, &[]);
    assert_eq!(
        share(&got, "fast1") + share(&got, "fast2") + share(&got, "slow"),
        300,
        "{got:?}"
    );
    assert!(share(&got, "slow") < 300 / 6, "{got:?}");
    // Both fast servers share the rest: nothing herds onto one.
    assert!(
        share(&got, "fast1") > 50 && share(&got, "fast2") > 50,
        "{got:?}"
    );
    let status = pool(&ambassador);
    let slow_ewma = status["servers"][2]["ewmaMs"].as_f64().unwrap();
    assert!(slow_ewma >= 20.0, "{status}");
}

#[test]
fn a_hashed_header_keeps_its_server_and_a_removed_server_moves_only_its_keys() {
    let (a, b, c) = (Nginx::start("a"), Nginx::start("b"), Nginx::start("c"));
    let extra = "    balance: {hash: {header: x-user}}\n";
    let ambassador = Ambassador::start(&one_backend(&[a.addr, b.addr, c.addr], "", extra));
    let mut client = Client::new(ambassador.listen);
    let mut place = |user: &str| {
        let reply = client.get("/", &[("x-user", user)]).unwrap();
        assert_eq!(reply.status, 200);
        reply.text().trim().to_owned()
    };
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let before: Vec<String> = users.iter().map(|u| place(u)).collect();
    for (user, at) in users.iter().zip(&before) {
        assert_eq!(&place(user), at, "{user} changed server");
    }
    for name in ["a", "b", "c"] {
        let n = before.iter().filter(|at| *at == name).count();
        assert!(n > 50, "{name} has {n} of 300 keys");
    }
    // Without the header: round robin.
    let got = spread(ambassador.listen, 30, &[]);
    assert_eq!(
        (share(&got, "a"), share(&got, "b"), share(&got, "c")),
        (10, 10, 10)
    );

    ambassador.reload(&one_backend(&[a.addr, b.addr], "", extra));
    let mut client = Client::new(ambassador.listen);
    let mut stayed = 0;
    for (user, at) in users.iter().zip(&before) {
        let reply = client.get("/", &[("x-user", user.as_str())]).unwrap();
        let now = reply.text().trim().to_owned();
        if at == "c" {
            assert!(now == "a" || now == "b", "{user}: {now}");
        } else {
            assert_eq!(&now, at, "{user} moved though its server stayed");
            stayed += 1;
        }
    }
    assert!(stayed > 150, "only {stayed} of 300 keys stayed");
}

#[test]
fn a_killed_server_is_taken_out_by_health_checks_and_back_in_with_no_client_error() {
    let a = Nginx::start("a");
    let mut b = Nginx::start("b");
    let c = Nginx::start("c");
    let (interval, unhealthy, healthy) = (Duration::from_millis(200), 2, 2);
    let ambassador = Ambassador::start(&one_backend(
        &[a.addr, b.addr, c.addr],
        "    retries: {attempts: 2}\n",
        &format!(
            "    healthCheck: {{path: /status, interval: 200ms, timeout: 200ms, unhealthyThreshold: {unhealthy}, healthyThreshold: {healthy}}}\n"
        ),
    ));
    let b_addr = b.addr;
    wait_until(Duration::from_secs(5), "first checks", || {
        ambassador.server_state("pool", b_addr) == "up"
    });

    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let load = {
        let (stop, replies, addr) = (stop.clone(), replies.clone(), ambassador.listen);
        std::thread::spawn(move || {
            let mut client = Client::new(addr);
            while !stop.load(Ordering::SeqCst) {
                let got = match client.get("/", &[]) {
                    Ok(reply) if reply.status == 200 => reply.text().trim().to_owned(),
                    Ok(reply) => format!("{} {}", reply.status, reply.text().trim()),
                    Err(err) => format!("error {err}"),
                };
                replies.lock().unwrap().push((Instant::now(), got));
                // A steady load a default retry budget covers while b is down.
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    b.kill();
    let slack = Duration::from_secs(2);
    let taken_out = wait_until(interval * unhealthy + slack, "b taken out", || {
        ambassador.server_state("pool", b_addr) == "unhealthy"
    });
    wait_until(Duration::from_secs(1), "server_up 0.0", || {
        up(&ambassador, b_addr) == 0.0
    });
    assert!(pool(&ambassador)["servers"][1]["checkError"].is_string());
    std::thread::sleep(Duration::from_millis(500));

    let b = Nginx::start_on("b", b_addr.port());
    let back = Instant::now();
    wait_until(interval * healthy + slack, "b back in", || {
        ambassador.server_state("pool", b_addr) == "up"
    });
    wait_until(Duration::from_secs(1), "server_up 1.0", || {
        up(&ambassador, b_addr) == 1.0
    });
    wait_until(Duration::from_secs(5), "b serving again", || {
        replies
            .lock()
            .unwrap()
            .iter()
            .any(|(at, got)| *at > back && got == "b")
    });
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();

    let replies = replies.lock().unwrap();
    let failed: Vec<&String> = replies
        .iter()
        .map(|(_, got)| got)
        .filter(|got| !["a", "b", "c"].contains(&got.as_str()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed (b out after {taken_out:?}): {failed:?}",
        failed.len(),
        replies.len()
    );
    drop((a, b, c));
}

#[test]
fn a_server_answering_503_is_ejected_counted_and_returns_after_the_ejection_time() {
    let (a, b) = (Nginx::start("a"), Nginx::start("b"));
    let bad = TestBackend::start("bad");
    bad.status.store(503, Ordering::SeqCst);
    let ambassador = Ambassador::start(&one_backend(
        &[a.addr, b.addr, bad.addr],
        "",
        "    outlier: {consecutive5xx: 3, ejectionTime: 2s, maxEjectedPercent: 50}\n",
    ));
    let mut client = Client::new(ambassador.listen);
    while bad.hits() < 3 {
        client.get("/", &[]).unwrap();
    }
    let ejected = Instant::now();
    assert_eq!(ambassador.server_state("pool", bad.addr), "ejected");
    assert_eq!(ejections(&ambassador, bad.addr), 1.0);
    assert_eq!(up(&ambassador, bad.addr), 0.0);
    let status = pool(&ambassador);
    assert!(status["servers"][2]["ejectedUntil"].is_string(), "{status}");

    // While it is out, a and b answer everything.
    let got = spread(ambassador.listen, 40, &[]);
    assert_eq!(share(&got, "a") + share(&got, "b"), 40, "{got:?}");
    assert_eq!(bad.hits(), 3);

    wait_until(Duration::from_secs(5), "back from ejection", || {
        ambassador.server_state("pool", bad.addr) == "up"
    });
    assert!(ejected.elapsed() >= Duration::from_secs(2));
    // The gauge follows within a timer tick.
    wait_until(Duration::from_secs(1), "up again in metrics", || {
        up(&ambassador, bad.addr) == 1.0
    });
    // Back in, it gets requests again; failing again, it is ejected again, for longer.
    let mut client = Client::new(ambassador.listen);
    while bad.hits() < 6 {
        client.get("/", &[]).unwrap();
    }
    assert_eq!(ambassador.server_state("pool", bad.addr), "ejected");
    assert_eq!(ejections(&ambassador, bad.addr), 2.0);
    assert_eq!(pool(&ambassador)["servers"][2]["ejections"], 2);
}

#[test]
fn max_ejected_percent_keeps_servers_in_even_when_all_fail() {
    let servers: Vec<TestBackend> = ["x", "y", "z"].map(TestBackend::start).into();
    for s in &servers {
        s.status.store(503, Ordering::SeqCst);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let outlier = |percent: u32| {
        format!(
            "    outlier: {{consecutive5xx: 2, ejectionTime: 30s, maxEjectedPercent: {percent}}}\n"
        )
    };
    // 50% of 3 servers is one.
    let ambassador = Ambassador::start(&one_backend(&addrs, "", &outlier(50)));
    let got = spread(ambassador.listen, 60, &[]);
    assert_eq!(share(&got, "503"), 60);
    let states: Vec<String> = addrs
        .iter()
        .map(|a| ambassador.server_state("pool", *a))
        .collect();
    assert_eq!(
        states.iter().filter(|s| *s == "ejected").count(),
        1,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "up").count(),
        2,
        "{states:?}"
    );

    // Even 100% never ejects the last server.
    let ambassador = Ambassador::start(&one_backend(&addrs[..2], "", &outlier(100)));
    let got = spread(ambassador.listen, 40, &[]);
    assert_eq!(share(&got, "503"), 40);
    let states: Vec<String> = addrs[..2]
        .iter()
        .map(|a| ambassador.server_state("pool", *a))
        .collect();
    assert_eq!(
        states.iter().filter(|s| *s == "ejected").count(),
        1,
        "{states:?}"
    );
    let hits: Vec<u64> = servers[..2].iter().map(TestBackend::hits).collect();
    let again = spread(ambassador.listen, 10, &[]);
    assert_eq!(share(&again, "503"), 10);
    let more: u64 = servers[..2].iter().map(TestBackend::hits).sum();
    assert_eq!(more, hits.iter().sum::<u64>() + 10);
}

#[test]
fn when_every_server_fails_its_checks_requests_still_go_to_them() {
    // Checks time out (50 ms) on servers that answer in 300 ms: a check that fails
    // everywhere, while the servers do serve.
    let servers = [TestBackend::start("x"), TestBackend::start("y")];
    for s in &servers {
        s.delay_ms.store(300, Ordering::SeqCst);
    }
    let ambassador = Ambassador::start(&one_backend(
        &[servers[0].addr, servers[1].addr],
        "",
        "    healthCheck: {path: /status, interval: 100ms, timeout: 50ms, unhealthyThreshold: 1}\n",
    ));
    wait_until(Duration::from_secs(5), "both unhealthy", || {
        servers
            .iter()
            .all(|s| ambassador.server_state("pool", s.addr) == "unhealthy")
    });
    assert_eq!(pool(&ambassador)["panic"], true);
    let got = spread(ambassador.listen, 4, &[]);
    assert_eq!(share(&got, "x") + share(&got, "y"), 4, "{got:?}");
    assert_eq!((share(&got, "x"), share(&got, "y")), (2, 2));

    // One passes again: panic mode ends and it takes everything.
    servers[0].delay_ms.store(0, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "x back", || {
        ambassador.server_state("pool", servers[0].addr) == "up"
    });
    assert_eq!(pool(&ambassador)["panic"], false);
    let got = spread(ambassador.listen, 4, &[]);
    assert_eq!(share(&got, "x"), 4, "{got:?}");
}

#[test]
fn a_dns_backend_reaches_the_servers_its_name_resolves_to() {
    let nginx = Nginx::start("by-name");
    let port = nginx.addr.port();
    let config = format!(
        "routes:\n  - name: main\n    backend: pool\n    retries: {{attempts: 2, budgetPercent: 100}}\n\
         backends:\n  - name: pool\n    dns: {{name: localhost, port: {port}, refresh: 1s}}\n\
         \x20   healthCheck: {{path: /status, interval: 200ms, timeout: 200ms}}\n"
    );
    let ambassador = Ambassador::start(&config);
    let ipv4 = format!("127.0.0.1:{port}");
    wait_until(
        Duration::from_secs(10),
        "localhost resolved and checked",
        || {
            let status = pool(&ambassador);
            status["resolved"] == true
                && status["servers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["address"] == ipv4.as_str() && s["state"] == "up")
        },
    );
    // localhost may also resolve to ::1, where nothing listens: its checks fail.
    let got = spread(ambassador.listen, 20, &[]);
    assert_eq!(share(&got, "by-name"), 20, "{got:?}");
}
